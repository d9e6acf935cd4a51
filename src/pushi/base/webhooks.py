"""Webhooks: channel and member events posted to an app's own server.

An app lists its hooks in its settings::

    {"webhooks": [{"url": "https://example.com/pusher", "events":
        ["channel_occupied", "channel_vacated", "member_added",
         "member_removed", "client_event", "cache_miss",
         "subscription_count"]}]}

``Webhooks.observe`` is an engine observer (loop thread): it turns engine
events into Pusher webhook events and queues them; ``channel_vacated`` and
``member_removed`` wait 3 s and are dropped, with the event that undoes
them, when the channel or member comes back in that window (in a
cluster, the nodes keep that window together: ``cluster/linger`` posts
the events it holds, ``lingered``, through ``post``).  One thread
takes the events that are due and puts each in the lane of each hook
that wants it (at most ``MAX_QUEUED`` events wait per hook: the ones
past that are dropped, logged and reported to the console as
``webhook_dropped``).  A pool of senders posts a lane's events in
batches (``{"time_ms", "events"}``, up to ``MAX_BATCH`` events and about
``MAX_BATCH_BYTES``) with ``X-Pusher-Key`` and ``X-Pusher-Signature``
(HMAC-SHA256 of the body with the secret of the app's newest live key,
the one ``X-Pusher-Key`` names), one batch at a time per
hook, so that a hook whose server is slow to answer delays only its
own webhooks.  A failed batch is retried with exponential back-off for
5 minutes, and the hook's later batches wait for it (in order, each
once); the retry holds no thread meanwhile, and stops when the hook is
removed or its app disabled or deleted.  A post has ``TIMEOUT`` seconds
in all (the scheduler thread cuts it then, and ``stop`` cuts every post
under way), follows no redirect and verifies TLS certificates.  Nothing
here ever blocks the loop.
"""

from __future__ import annotations

import collections
import concurrent.futures
import heapq
import http.client
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from pushi.base import threads
from pushi.proto import auth

logger = logging.getLogger("pushi.webhooks")

EVENTS = (
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
)
""" The webhook events an app may ask for (``subscription_count`` comes
only while the app's ``subscription_count_events`` is on, as on Pusher) """

TEST_EVENT = "pushi_test"
""" The name of the one event of a test webhook (``Webhooks.test``): not
one of Pusher's, prefixed so that none of theirs ever clashes with it """

LINGER = 3.0
RETRY_FOR = 300.0
TIMEOUT = 5.0
SENDERS = threads.POOLS["webhook"]
MAX_BATCH = 100
MAX_BATCH_BYTES = 262144
MAX_QUEUED = 10000


def check_hooks(hooks: Any) -> str | None:
    """Validates the ``webhooks`` setting; returns an error or None."""
    if not isinstance(hooks, list):
        return "webhooks must be a list"
    for hook in hooks:
        if not isinstance(hook, dict) or set(hook) - {"url", "events"}:
            return "each webhook is {url, events}"
        url = hook.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return "webhook url must be http:// or https://"
        events = hook.get("events", list(EVENTS))
        if not isinstance(events, list) or any(event not in EVENTS for event in events):
            return "webhook events are among: %s" % ", ".join(EVENTS)
        if not events:
            # an empty list would read as all of them
            return "webhook events: at least one (leave events out for all)"
    return None


class Webhooks:
    """Queues engine events as webhooks and posts them, per app in order."""

    # ``apps`` is an ``AppDirectory`` and ``app`` an ``App``, typed Any:
    # limits imports this module, which imports neither

    def __init__(
        self,
        apps: Any,
        emit: Callable[[str, str, dict[str, Any]], Any] | None = None,
        linger: float = LINGER,
        retry_for: float = RETRY_FOR,
        senders: concurrent.futures.Executor | None = None,
    ) -> None:
        self.apps = apps
        self.emit = emit
        self.linger = linger
        self.retry_for = retry_for
        # the queue entries of the lingering vacated/removed events
        self._pending: dict[tuple[Any, ...], list[Any]] = {}
        # [due, counter, app id, event, live]: the events to post, a heap
        self._queue: list[list[Any]] = []
        self._counter = 0
        self._condition = threading.Condition()
        self._stopped = False
        # (app id, url) -> the lane of events waiting for that hook
        self._lanes: dict[tuple[str, str], _Lane] = {}
        # [due, counter, lane] of the lanes whose batch failed
        self._retries: list[list[Any]] = []
        # the posts under way
        self._flights: set[_Flight] = set()
        # the State's pool, stopped by the State; else one of its own
        self._own_senders = senders is None
        self._senders = threads.new_pool("webhook") if senders is None else senders
        self._thread = threading.Thread(
            target=self._run, name="pushi-webhooks", daemon=True
        )
        self._thread.start()

    # the engine side (loop thread)

    def observe(self, app_id: str, kind: str, details: dict[str, Any]) -> None:
        app = self.apps.by_id(app_id)
        hooks = app.limits.webhooks if app else None
        if not hooks or details.get("lingered"):
            # lingered: a cluster's linger holds it (see ``lingered``)
            return
        event = _event(kind, details)
        if event is None:
            return
        if kind in ("vacated", "member_removed"):
            self._linger(_key(app_id, event), app, event)
        elif kind in ("occupied", "member_added") and self._cancel(_key(app_id, event)):
            return
        else:
            self._add(app, event)

    def post(self, app_id: str, kind: str, details: dict[str, Any]) -> None:
        """Queues the webhook of an engine event now, with no linger: a
        cluster's lingering ``vacated`` or ``member_removed`` once its
        linger is over (``cluster/linger``, loop thread)."""
        app = self.apps.by_id(app_id)
        event = _event(kind, details)
        if app and app.limits.webhooks and event is not None:
            self._add(app, event)

    def _linger(self, key, app, event):
        with self._condition:
            self._counter += 1
            entry = [
                time.monotonic() + self.linger,
                self._counter,
                app.app_id,
                event,
                True,
            ]
            self._pending[key] = entry
            heapq.heappush(self._queue, entry)
            self._condition.notify()

    def _cancel(self, key):
        """Drops a lingering vacated/removed event; True if there was one."""
        with self._condition:
            entry = self._pending.pop(key, None)
            if entry is None or not entry[4]:
                return False
            entry[4] = False
            return True

    def _add(self, app, event):
        with self._condition:
            self._counter += 1
            heapq.heappush(self._queue, [0.0, self._counter, app.app_id, event, True])
            self._condition.notify()

    # the scheduler thread

    def _run(self):
        while True:
            with self._condition:
                while not self._stopped:
                    now = time.monotonic()
                    self._cut(now)
                    due = [heap[0][0] for heap in (self._queue, self._retries) if heap]
                    if due and min(due) <= now:
                        break
                    due += [f.deadline for f in self._flights if f.deadline]
                    self._condition.wait(max(0.0, min(due) - now) if due else None)
                if self._stopped:
                    return
                ready = []
                while self._queue and self._queue[0][0] <= now:
                    entry = heapq.heappop(self._queue)
                    _due, _counter, app_id, event, live = entry
                    if not live:
                        continue
                    key = _key(app_id, event)
                    if self._pending.get(key) is entry:
                        del self._pending[key]
                    ready.extend(self._enqueue(app_id, event))
                while self._retries and self._retries[0][0] <= now:
                    ready.append(heapq.heappop(self._retries)[2])
            for lane in ready:
                self._submit(lane)

    def _enqueue(self, app_id, event):
        """Puts an event in the lane of each of its app's hooks that wants
        it; returns the lanes that now need a sender (lock held)."""
        app = self.apps.by_id(app_id)
        idle = []
        for hook in (app.limits.webhooks or ()) if app else ():
            if event["name"] not in (hook.get("events") or EVENTS):
                continue
            key = (app_id, hook["url"])
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane(app_id, hook["url"])
            if len(lane.events) >= MAX_QUEUED:
                if not lane.dropped:
                    logger.warning(
                        "webhooks of app %s to %s: %d events wait, dropping new ones",
                        app_id,
                        lane.url,
                        MAX_QUEUED,
                    )
                lane.dropped += 1
                continue
            lane.events.append(event)
            if not lane.busy:
                lane.busy = True
                idle.append(lane)
        return idle

    def _submit(self, lane):
        try:
            self._senders.submit(self._send, lane)
        except RuntimeError:
            pass  # stopped meanwhile: the senders are gone

    # the senders

    def _send(self, lane):
        """Posts a lane's next batch, or retries its current one (a sender
        thread); the lane is busy until its batch is through, so that its
        events go out in order and each batch once."""
        with self._condition:
            if self._stopped:
                return
            app = self.apps.by_id(lane.app_id)
            if not _wants(app, lane.url):
                # the hook or its app is gone (or disabled): so are its
                # events and retries
                self._lanes.pop((lane.app_id, lane.url), None)
                lane.busy = False
                return
            dropped, lane.dropped = lane.dropped, 0
            if lane.batch is None:
                lane.batch = _Batch(lane.events)
            batch = lane.batch
        if dropped:
            self._report(lane.app_id, "webhook_dropped", url=lane.url, events=dropped)
        status, error = self._post(app, lane.url, batch.body)
        with self._condition:
            if error is None:
                lane.batch = None
                again = bool(lane.events)
            else:
                delay = min(2.0**batch.attempt, 60.0)
                batch.attempt += 1
                final = time.monotonic() + delay - batch.first > self.retry_for
                if final:
                    lane.batch = None
                    again = bool(lane.events)
                else:
                    self._counter += 1
                    heapq.heappush(
                        self._retries, [time.monotonic() + delay, self._counter, lane]
                    )
                    self._condition.notify()
                    again = None
            if again is False:
                lane.busy = False
                self._lanes.pop((lane.app_id, lane.url), None)
        if error is None:
            self._report(
                lane.app_id,
                "webhook_sent",
                url=lane.url,
                events=batch.count,
                status=status,
            )
        else:
            self._report(
                lane.app_id,
                "webhook_failed",
                url=lane.url,
                events=batch.count,
                error=error,
                final=final,
            )
            if final:
                logger.warning(
                    "webhook to app %s dropped after retries: %s", lane.app_id, error
                )
        if again:
            # behind the other lanes' turns: one busy hook does not hold a
            # sender for good
            self._submit(lane)

    def _post(self, app, url, body):
        """``(status, error)`` of one post; ``error`` None for a 2xx.  The
        post has ``TIMEOUT`` seconds in all (the scheduler cuts one that
        a server drips its answer into); redirects are not followed: the
        receiver's server does not choose where this one posts."""
        # the newest live pair: see ``App.signing_key``
        key, secret = app.signing_key
        flight = _Flight(time.monotonic() + TIMEOUT)
        with self._condition:
            if self._stopped:
                return None, "stopped"
            self._flights.add(flight)
            self._condition.notify()
        try:
            parts = urllib.parse.urlsplit(url)
            connection: http.client.HTTPConnection
            if parts.scheme == "https":
                connection = http.client.HTTPSConnection(
                    parts.hostname,
                    parts.port,
                    timeout=TIMEOUT,
                    context=ssl.create_default_context(),
                )
            else:
                connection = http.client.HTTPConnection(
                    parts.hostname, parts.port, timeout=TIMEOUT
                )
            flight.connection = connection
            connection.request(
                "POST",
                (parts.path or "/") + ("?" + parts.query if parts.query else ""),
                body,
                {
                    "Content-Type": "application/json",
                    "X-Pusher-Key": key,
                    "X-Pusher-Signature": auth.webhook_signature(secret, body),
                },
            )
            status = connection.getresponse().status
            if flight.deadline is None:
                # cut: what came of the answer ends where the socket did
                return None, "timed out"
        except ssl.SSLCertVerificationError as failure:
            return None, "TLS: %s" % failure.verify_message
        except Exception as failure:
            if flight.deadline is None:
                return None, "timed out"
            return None, "%s: %s" % (failure.__class__.__name__, failure)
        finally:
            with self._condition:
                self._flights.remove(flight)
            if flight.connection is not None:
                flight.connection.close()
        if 200 <= status < 300:
            return status, None
        return status, "HTTP %d" % status

    def test(self, app: Any, url: str) -> tuple[int | None, str | None]:
        """Posts one test webhook, ``{"time_ms", "events": [{"name":
        TEST_EVENT}]}``, signed as the app's webhooks are, to ``url`` now
        (blocking, at most ``TIMEOUT`` seconds; never on the loop): returns
        ``(status, error)``, ``error`` None for a 2xx.  Not queued, not
        retried, not counted with the app's webhooks."""
        body = json.dumps(
            {"time_ms": int(time.time() * 1000), "events": [{"name": TEST_EVENT}]}
        ).encode()
        return self._post(app, url, body)

    def _cut(self, now=None):
        """Ends the posts past their time (all of them without ``now``):
        their sockets shut, their senders fail at once (lock held)."""
        for flight in self._flights:
            if flight.deadline is None or (now is not None and flight.deadline > now):
                continue
            connection = flight.connection
            sock = connection.sock if connection is not None else None
            if sock is None and now is not None:
                # still connecting (which has its own timeout): next time
                flight.deadline = now + 0.1
                continue
            flight.deadline = None
            if sock is None:
                continue  # never connected: nothing to shut
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _report(self, app_id, kind, **details):
        if self.emit is not None:
            self.emit(app_id, kind, details)

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._cut()
            self._condition.notify()
        if self._own_senders:
            self._senders.shutdown(wait=False, cancel_futures=True)


class _Lane:
    """The events waiting for one hook of one app, and the batch being
    posted (or waiting for its retry)."""

    __slots__ = ("app_id", "url", "events", "batch", "busy", "dropped")

    def __init__(self, app_id, url):
        self.app_id = app_id
        self.url = url
        self.events: collections.deque[dict[str, Any]] = collections.deque()
        self.batch = None
        self.busy = False
        self.dropped = 0


class _Batch:
    """The body of one post: up to ``MAX_BATCH`` events, and no more than
    ``MAX_BATCH_BYTES`` unless a single event is larger, taken from the
    head of ``events``; its retries post the same body."""

    def __init__(self, events):
        # when the webhook was made: its retries keep it, so that the
        # consumer can tell how late one comes (Pusher's time_ms)
        head = '{"time_ms": %d, "events": [' % int(time.time() * 1000)
        parts: list[str] = []
        size = len(head) + 2
        while events and len(parts) < MAX_BATCH:
            part = json.dumps(events[0])
            if parts and size + len(part) + 2 > MAX_BATCH_BYTES:
                break
            events.popleft()
            parts.append(part)
            size += len(part) + 2
        self.body = (head + ", ".join(parts) + "]}").encode()
        self.count = len(parts)
        self.first = time.monotonic()
        self.attempt = 0


class _Flight:
    """A post under way: when it must end (None once cut), and its
    connection once made."""

    __slots__ = ("deadline", "connection")

    def __init__(self, deadline):
        self.deadline = deadline
        self.connection = None


def _wants(app, url):
    """Whether ``app`` still posts to ``url``."""
    return bool(
        app
        and app.enabled
        and any(hook["url"] == url for hook in app.limits.webhooks or ())
    )


def lingered(held: bool) -> dict[str, Any]:
    """The details an engine event (occupied, vacated, member_added,
    member_removed) carries when a cluster's webhook linger holds it
    (``cluster/linger``): ``{"lingered": True}`` (none otherwise).  Its
    webhook is not the observer's to post or linger: a lingered vacated
    or removed is posted through ``post`` once its linger is over, a
    lingered occupied or added undid one and neither is posted."""
    return {"lingered": True} if held else {}


def _event(kind, details):
    """The webhook event of an engine event (None for the kinds that have
    none)."""
    channel = details.get("channel")
    if kind == "occupied":
        return {"name": "channel_occupied", "channel": channel}
    if kind == "vacated":
        return {"name": "channel_vacated", "channel": channel}
    if kind in ("member_added", "member_removed"):
        return {"name": kind, "channel": channel, "user_id": details["user_id"]}
    if kind == "client_event":
        event = {
            "name": "client_event",
            "channel": channel,
            "event": details["event"],
            "data": _text(details["data"]),
            "socket_id": details["socket_id"],
        }
        if details.get("user_id"):
            event["user_id"] = details["user_id"]
        return event
    if kind == "cache_miss":
        return {"name": "cache_miss", "channel": channel}
    if kind == "subscription_count":
        return {
            "name": "subscription_count",
            "channel": channel,
            "subscription_count": details["subscription_count"],
        }
    return None


def _key(app_id, event):
    """What a lingering event and the one that undoes it share: the
    channel's, or the member's for member events."""
    if event["name"] in ("member_added", "member_removed"):
        return (app_id, event["channel"], event["user_id"])
    return (app_id, event["channel"])


def _text(data):
    """Event data as the string a webhook carries."""
    return data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
