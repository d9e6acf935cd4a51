"""Webhooks: channel and member events posted to an app's own server.

An app lists its hooks in its settings::

    {"webhooks": [{"url": "https://example.com/pusher", "events":
        ["channel_occupied", "channel_vacated", "member_added",
         "member_removed", "client_event", "cache_miss",
         "subscription_count"]}]}

``Webhooks.observe`` is an engine observer (loop thread): it turns engine
events into Pusher webhook events and queues them; ``channel_vacated`` and
``member_removed`` wait 3 s and are dropped, with the event that undoes
them, when the channel or member comes back in that window.  One thread
takes the events that are due and hands each app's to that app's lane:
a pool of senders posts ``{"time_ms", "events"}`` with ``X-Pusher-Key``
and ``X-Pusher-Signature`` (HMAC-SHA256 of the body with the app secret),
one post at a time per app (in order), so an app whose server is slow to
answer delays its own webhooks only (up to ``SENDERS`` such apps at
once).  A failed post is retried with exponential back-off for 5 minutes.
Nothing here ever blocks the loop.
"""

import collections
import concurrent.futures
import heapq
import json
import logging
import threading
import time
import urllib.error
import urllib.request

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

LINGER = 3.0
RETRY_FOR = 300.0
TIMEOUT = 5.0
SENDERS = 8


def check_hooks(hooks):
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
    return None


class Webhooks:
    """Queues engine events as webhooks and posts them, per app in order."""

    def __init__(self, apps, emit=None, linger=LINGER, retry_for=RETRY_FOR):
        self.apps = apps
        self.emit = emit
        self.linger = linger
        self.retry_for = retry_for
        self._pending = {}
        self._queue = []
        self._counter = 0
        self._condition = threading.Condition()
        self._stopped = False
        # app id -> batches waiting while one of the app's is being posted
        self._lanes = {}
        self._senders = concurrent.futures.ThreadPoolExecutor(
            SENDERS, thread_name_prefix="pushi-webhook"
        )
        self._thread = threading.Thread(
            target=self._run, name="pushi-webhooks", daemon=True
        )
        self._thread.start()

    # the engine side (loop thread)

    def observe(self, app_id, kind, details):
        app = self.apps.by_id(app_id)
        hooks = app.limits.get("webhooks") if app else None
        if not hooks:
            return
        channel = details.get("channel")
        if kind == "occupied":
            if self._cancel((app_id, channel)):
                return
            self._add(app, {"name": "channel_occupied", "channel": channel})
        elif kind == "vacated":
            self._linger(
                (app_id, channel), app, {"name": "channel_vacated", "channel": channel}
            )
        elif kind == "member_added":
            key = (app_id, channel, details["user_id"])
            if self._cancel(key):
                return
            self._add(
                app,
                {
                    "name": "member_added",
                    "channel": channel,
                    "user_id": details["user_id"],
                },
            )
        elif kind == "member_removed":
            key = (app_id, channel, details["user_id"])
            event = {
                "name": "member_removed",
                "channel": channel,
                "user_id": details["user_id"],
            }
            self._linger(key, app, event)
        elif kind == "client_event":
            event = {
                "name": "client_event",
                "channel": channel,
                "event": details["event"],
                "data": _text(details["data"]),
                "socket_id": details["socket_id"],
            }
            if details.get("user_id"):
                event["user_id"] = details["user_id"]
            self._add(app, event)
        elif kind == "cache_miss":
            self._add(app, {"name": "cache_miss", "channel": channel})
        elif kind == "subscription_count":
            self._add(
                app,
                {
                    "name": "subscription_count",
                    "channel": channel,
                    "subscription_count": details["subscription_count"],
                },
            )

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

    # the sender thread

    def _run(self):
        while True:
            with self._condition:
                while not self._stopped:
                    now = time.monotonic()
                    if self._queue and self._queue[0][0] <= now:
                        break
                    timeout = self._queue[0][0] - now if self._queue else None
                    self._condition.wait(timeout)
                if self._stopped:
                    return
                ready = collections.OrderedDict()
                while self._queue and self._queue[0][0] <= now:
                    _due, _counter, app_id, event, live = heapq.heappop(self._queue)
                    if not live:
                        continue
                    if event["name"] in ("channel_vacated", "member_removed"):
                        key = (app_id, event["channel"]) + (
                            (event["user_id"],) if "user_id" in event else ()
                        )
                        self._pending.pop(key, None)
                    ready.setdefault(app_id, []).append(event)
            for app_id, events in ready.items():
                self._queue_post(app_id, events)

    def _queue_post(self, app_id, events):
        with self._condition:
            lane = self._lanes.get(app_id)
            if lane is not None:
                lane.append(events)
                return
            self._lanes[app_id] = collections.deque()
        try:
            self._senders.submit(self._send_lane, app_id, events)
        except RuntimeError:
            pass  # stopped meanwhile: the senders are gone

    def _send_lane(self, app_id, events):
        """Posts an app's batches one after the other (a sender thread)."""
        while True:
            try:
                self._deliver(app_id, events)
            except Exception:
                logger.exception("webhooks of app %s failed", app_id)
            with self._condition:
                lane = self._lanes[app_id]
                if not lane or self._stopped:
                    del self._lanes[app_id]
                    return
                events = lane.popleft()

    def _deliver(self, app_id, events):
        app = self.apps.by_id(app_id)
        if app is None:
            return
        # when the webhook was made: its retries keep it, so that the
        # consumer can tell how late one comes (Pusher's time_ms)
        time_ms = int(time.time() * 1000)
        for hook in app.limits.get("webhooks") or ():
            wanted = hook.get("events") or EVENTS
            chosen = [event for event in events if event["name"] in wanted]
            if chosen:
                body = json.dumps({"time_ms": time_ms, "events": chosen}).encode()
                self._post(app, hook["url"], body, len(chosen), time.monotonic())

    def _post(self, app, url, body, count, first, attempt=0):
        if self._stopped:
            # a retry's timer that fires while the server stops
            return
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        request.add_header("X-Pusher-Key", app.key)
        request.add_header(
            "X-Pusher-Signature", auth.webhook_signature(app.secret, body)
        )
        error = None
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                status = response.status
        except urllib.error.HTTPError as failure:
            status, error = failure.code, "HTTP %d" % failure.code
        except Exception as failure:
            status, error = None, failure.__class__.__name__
        if error is None and 200 <= status < 300:
            self._report(
                app.app_id, "webhook_sent", url=url, events=count, status=status
            )
            return
        delay = min(2.0**attempt, 60.0)
        final = time.monotonic() + delay - first > self.retry_for
        self._report(
            app.app_id,
            "webhook_failed",
            url=url,
            events=count,
            error=error,
            final=final,
        )
        if final:
            logger.warning(
                "webhook to app %s dropped after retries: %s", app.app_id, error
            )
            return
        timer = threading.Timer(
            delay, self._post, (app, url, body, count, first, attempt + 1)
        )
        timer.daemon = True
        timer.start()

    def _report(self, app_id, kind, **details):
        if self.emit is not None:
            self.emit(app_id, kind, details)

    def stop(self):
        with self._condition:
            self._stopped = True
            self._condition.notify()
        self._senders.shutdown(wait=False, cancel_futures=True)


def _text(data):
    """Event data as the string a webhook carries."""
    return data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
