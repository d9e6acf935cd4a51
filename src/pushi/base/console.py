"""The debug console's server side: live traffic of one app, streamed.

A console is a browser page (``/console`` on the REST port) holding a
WebSocket to ``/console`` on the WebSocket server.  Its first message
names an app and carries a session token from ``POST /login``; once the
token is checked (off the loop), the socket becomes a ``Watcher`` of that
app and receives, as JSON text messages:

* ``console:watching`` once: the app, the counters at that moment and
  ``history``: the app's samples of the last hour (``History``),
* ``console:entry`` for every engine fact of that app (``type`` is the
  engine's kind: connection, disconnection, subscribed, unsubscribed,
  occupied, vacated, member_added, member_removed, api_message,
  client_event, and whatever else the engine emits later, e.g. webhooks),
* ``console:stats`` every ``STATS_EVERY`` seconds: open connections,
  occupied channels, messages in the last minute, and the app's cache
  channels: entries, bytes held, evictions, and ``sample``: the app's
  newest history sample (the page appends it when it is new),
* ``console:error`` then a close (4009) when the sign-in is refused, and
  when the token stops being valid while it streams (expired, ended by
  ``/logout``, by newer logins of the app or by disabling it): checked at
  every stats tick and at once on a logout or a disable.

Why a WebSocket on the loop: the facts are born on the loop thread, so
the stream is written there with no hand-off, and the REST server (one
thread, one netius loop) never holds a request open.

Cost: the hub registers its observer with the engine only while at least
one watcher exists, and runs its stats timer only then; with no console
open the engine builds nothing (``if self.observers``).  An entry is
encoded once per fact and the same frame is written to every watcher of
the app.  A watcher that does not read is closed by its link once more
than ``console_max_buffer`` bytes queue for it (4100): the console is
dropped, never the app's clients.

Cluster: on a node (``PUSHI_REDIS_URL``, ``PUSHI_WORKERS``) the hub's
``shared`` (``cluster/console``) makes one console see the whole app: the
entries of every node, the counters of the cluster (read from Redis), and
the history samples of every node summed (``merge``).  A node that cannot
reach Redis shows its own.

Ownership: every method runs on the WebSocket loop thread, except the
``authenticate`` callable, which runs on a worker (it may read the store).
"""

import collections
import json
import logging
import time

from pushi.proto import messages
from pushi.proto.websocket import text_frame

logger = logging.getLogger("pushi.console")

STATS_EVERY = 2.0
""" Seconds between two ``console:stats`` messages (only while watched) """

AUTH_TIMEOUT = 10.0
""" Seconds a console socket has to send its sign-in message """

REFUSED = 4009
""" Close code of a refused sign-in (Pusher's "unauthorized": do not retry) """

_COUNTED = {"api_message", "client_event"}

HISTORY_EVERY = 10.0
""" Seconds between two history samples (``PUSHI_CONSOLE_HISTORY_EVERY``) """

HISTORY_SIZE = 360
""" Samples kept per app: an hour at the default interval """


def encode(event, data):
    """One console message as a text frame (UTF-8 JSON)."""
    return text_frame(
        json.dumps({"event": event, "data": data}, separators=(",", ":"), default=str)
    )


class MinuteCounter:
    """Messages counted in one-second buckets over the last 60 seconds."""

    __slots__ = ("counts", "seconds")

    def __init__(self):
        self.counts = [0] * 60
        self.seconds = [0] * 60

    def add(self, count, now):
        second = int(now)
        index = second % 60
        if self.seconds[index] != second:
            self.seconds[index] = second
            self.counts[index] = 0
        self.counts[index] += count

    def total(self, now):
        second = int(now)
        return sum(
            count
            for count, stamp in zip(self.counts, self.seconds, strict=True)
            if 0 <= second - stamp < 60
        )


def merge(series, every, until=None):
    """Several nodes' samples (one list per node, each oldest first) summed
    into one series: a sample counts in the ``every``-second slot nearest
    its time (the nodes sample at the same wall-clock instants), stamped
    with the slot's time.  Slots after ``until`` (ms) are left out: the
    other nodes' samples of them may still be on their way."""
    step = every * 1000
    slots: dict[int, list] = {}
    for samples in series:
        mine: dict[int, list] = {}
        for stamp, connections, published, delivered in samples:
            slot = round(stamp / step)
            point = mine.get(slot)
            if point is None:
                mine[slot] = [connections, published, delivered]
            else:
                # two samples of one node in a slot: the later count, the sums
                point[0] = connections
                point[1] += published
                point[2] += delivered
        for slot, point in mine.items():
            total = slots.setdefault(slot, [0, 0, 0])
            for index in range(3):
                total[index] += point[index]
    merged = [[round(slot * step)] + point for slot, point in sorted(slots.items())]
    if until is not None:
        merged = [sample for sample in merged if sample[0] <= until]
    return merged


def next_sample(now, every):
    """Seconds from ``now`` to the next multiple of ``every`` after the one
    nearest ``now``: samples taken on those instants fall in one slot on
    every node (``merge``), whether a timer fires a little early or late."""
    return (round(now / every) + 1) * every - now


class History:
    """The last hour of every app, one sample per ``every`` seconds.

    A sample is ``[time_ms, connections, published, delivered]``: the
    app's open connections at that moment, and the messages published
    (REST events per channel, plus client events) and delivered (event
    frames written) since the sample before.  It reads the counters that
    ``Metrics`` keeps on the loop, so it runs whether or not a console
    watches: a console that signs in sees the hour before it.  Bounded:
    ``size`` samples per app; an app with no connection and no traffic
    over its whole window is forgotten.

    Loop thread only.
    """

    def __init__(self, engine, every=HISTORY_EVERY, size=HISTORY_SIZE):
        self.engine = engine
        self.every = every
        self.size = size
        self.samples = {}
        # counter totals by app at the sample before
        self._totals = {}

    def _counts(self):
        metrics = self.engine.metrics
        totals = {}
        for app_id, count in metrics.published.items():
            totals[app_id] = [count, 0]
        for app_id, count in metrics.client_events.items():
            totals.setdefault(app_id, [0, 0])[0] += count
        for app_id, count in metrics.delivered.items():
            totals.setdefault(app_id, [0, 0])[1] += count
        return totals

    def sample(self, now=None):
        """Takes one sample of every app with connections or traffic."""
        now = time.time() if now is None else now
        stamp = int(now * 1000)
        registry = self.engine.registry
        totals = self._counts()
        before = self._totals
        self._totals = totals
        app_ids = set(self.samples) | set(registry.app_sessions)
        app_ids.update(
            app_id for app_id, counts in totals.items() if counts != before.get(app_id)
        )
        for app_id in app_ids:
            published, delivered = totals.get(app_id, (0, 0))
            last_published, last_delivered = before.get(app_id, (0, 0))
            point = [
                stamp,
                registry.app_count(app_id),
                max(published - last_published, 0),
                max(delivered - last_delivered, 0),
            ]
            samples = self.samples.get(app_id)
            if samples is None:
                samples = self.samples[app_id] = collections.deque(maxlen=self.size)
            samples.append(point)
            if not any(sample[1] or sample[2] or sample[3] for sample in samples):
                del self.samples[app_id]

    def of(self, app_id):
        """An app's samples, oldest first."""
        return list(self.samples.get(app_id, ()))

    def last(self, app_id):
        samples = self.samples.get(app_id)
        return samples[-1] if samples else None


class Watcher:
    """One console socket: waits for its sign-in, then watches one app.

    ``link`` is the network side: ``write(frame)`` and ``close(code,
    reason)``, like a session's transport.
    """

    __slots__ = ("hub", "link", "app_id", "token", "pending", "gone")

    def __init__(self, hub, link):
        self.hub = hub
        self.link = link
        self.app_id = None
        self.token = None
        self.pending = False
        self.gone = False

    def receive(self, text):
        """Handles a text message from the page (only the sign-in counts)."""
        if self.app_id is not None or self.pending:
            return
        try:
            message = messages.loads(text)
        except ValueError:
            message = None
        data = message.get("data") if isinstance(message, dict) else None
        if (
            not isinstance(data, dict)
            or message.get("event") != "console:watch"
            or not isinstance(data.get("app_id"), str)
            or not isinstance(data.get("token"), str)
        ):
            self.refuse("Send console:watch with app_id and token first")
            return
        self.pending = True
        self.token = data["token"]
        self.hub.sign_in(self, data["app_id"], self.token)

    def refuse(self, reason):
        self.link.write(encode("console:error", {"code": REFUSED, "message": reason}))
        self.link.close(REFUSED, reason)

    def closed(self):
        """The socket is gone: stop watching."""
        self.gone = True
        self.hub.detach(self)


class ConsoleHub:
    """Watchers by app, and the engine observer that feeds them.

    ``authenticate(token, app_id)`` returns the app a session token may
    watch, or None (blocking: run through ``offload``); ``is_live(token,
    app_id)`` tells whether that token still holds (from memory);
    ``offload(work, then)`` runs ``work`` on a worker and ``then(result)``
    on the loop; ``schedule(work, seconds)`` runs ``work`` on the loop
    later.
    """

    def __init__(
        self,
        engine,
        authenticate,
        is_live,
        offload,
        schedule,
        max_buffer=262144,
        history_every=HISTORY_EVERY,
    ):
        self.engine = engine
        self.authenticate = authenticate
        self.is_live = is_live
        self.offload = offload
        self.schedule = schedule
        self.max_buffer = max_buffer
        self.watchers = {}
        self.counters = {}
        self.history = History(engine, every=history_every)
        self.shared = None
        """ The cluster's side of the console (``cluster/console``): set on
        a node of a cluster, None for one process """
        self.joining: collections.Counter[str] = collections.Counter()
        """ app_id -> watchers signed in whose ``console:watching`` waits
        for the cluster's answers """
        self._ticking = False
        self._sampling = False

    # sign-in

    def connect(self, link):
        """A new console socket: a watcher that must sign in in time."""
        watcher = Watcher(self, link)
        self.schedule(lambda: self._deadline(watcher), AUTH_TIMEOUT)
        return watcher

    def _deadline(self, watcher):
        if watcher.app_id is None and not watcher.gone:
            watcher.refuse("No sign-in within %d seconds" % AUTH_TIMEOUT)

    def sign_in(self, watcher, app_id, token):
        self.offload(
            lambda: self.authenticate(token, app_id),
            lambda app: self._signed_in(watcher, app),
        )

    def _signed_in(self, watcher, app):
        watcher.pending = False
        if watcher.gone:
            return
        # the token may have ended while the worker loaded the app
        if app is None or not self.is_live(watcher.token, app.app_id):
            watcher.refuse("Invalid or expired token for this app")
            return
        self.attach(watcher, app)

    # watching

    def attach(self, watcher, app):
        """Starts streaming an app's facts to a signed-in watcher (on a
        node, once the cluster's counters and history are in)."""
        app_id = app.app_id
        watcher.app_id = app_id
        shared = self.shared
        if shared is None:
            self._watching(watcher, app, self.stats(app_id))
            return
        self.joining[app_id] += 1

        def counted(counts):
            self.joining[app_id] -= 1
            if not self.joining[app_id]:
                del self.joining[app_id]
            if watcher.gone or not self.is_live(watcher.token, app_id):
                if not watcher.gone:
                    watcher.refuse("Session ended")
                self._release(app_id)
                return
            self._watching(watcher, app, self.stats(app_id, counts))

        shared.watch(app_id, lambda: shared.counts(app_id, counted))

    def _watching(self, watcher, app, stats):
        app_id = app.app_id
        if not self.watchers:
            self.engine.observers.append(self.observe)
        self.watchers.setdefault(app_id, []).append(watcher)
        if app_id not in self.counters:
            self.counters[app_id] = MinuteCounter()
        watcher.link.write(
            encode(
                "console:watching",
                dict(
                    stats,
                    app_id=app_id,
                    name=app.name,
                    stats_every=STATS_EVERY,
                    history={
                        "every": self.history.every,
                        "size": self.history.size,
                        "samples": self.samples(app_id),
                    },
                ),
            )
        )
        if not self._ticking:
            self._ticking = True
            self.schedule(self._tick, STATS_EVERY)

    def recheck(self):
        """Ends the streams whose token no longer holds (expired, signed
        out, ended by newer logins, or its app disabled)."""
        for app_id, watchers in list(self.watchers.items()):
            for watcher in list(watchers):
                if not self.is_live(watcher.token, app_id):
                    # no more entries while the link closes
                    self.detach(watcher)
                    watcher.refuse("Session ended")

    def detach(self, watcher):
        """Stops streaming to a watcher; the last one unhooks the hub."""
        watchers = self.watchers.get(watcher.app_id)
        if not watchers or watcher not in watchers:
            return
        watchers.remove(watcher)
        if not watchers:
            del self.watchers[watcher.app_id]
            self.counters.pop(watcher.app_id, None)
            self._release(watcher.app_id)
        if not self.watchers and self.observe in self.engine.observers:
            self.engine.observers.remove(self.observe)

    def _release(self, app_id):
        """No console watches ``app_id`` here any more: the cluster hears."""
        if (
            self.shared is not None
            and app_id not in self.watchers
            and not self.joining.get(app_id)
        ):
            self.shared.unwatch(app_id)

    def observe(self, app_id, kind, details):
        """The engine observer: one entry to every watcher of the app."""
        if app_id in self.watchers:
            self.show(app_id, dict(details, type=kind, time=int(time.time() * 1000)))

    def show(self, app_id, entry):
        """An entry (of this node, or relayed from another) to every
        watcher of the app."""
        watchers = self.watchers.get(app_id)
        if not watchers:
            return
        if entry.get("type") in _COUNTED:
            channels = entry.get("channels")
            self.counters[app_id].add(
                len(channels) if isinstance(channels, list) and channels else 1,
                time.time(),
            )
        frame = encode("console:entry", entry)
        for watcher in watchers:
            watcher.link.write(frame)

    # counters

    def stats(self, app_id, counts=None):
        """The app's counters: ``counts`` is ``(connections, channels)``
        of the cluster, None for this process's."""
        registry = self.engine.registry
        if counts is None:
            counts = (registry.app_count(app_id), len(registry.channels(app_id)))
        counter = self.counters.get(app_id)
        cache = self.engine.cache.stats(app_id)
        samples = self.samples(app_id) if self.shared is not None else None
        return {
            "connections": counts[0],
            "channels": counts[1],
            "messages_last_minute": counter.total(time.time()) if counter else 0,
            "cache_entries": cache["entries"],
            "cache_bytes": cache["bytes"],
            "cache_evictions": cache["evictions"],
            "sample": (
                self.history.last(app_id)
                if samples is None
                else (samples[-1] if samples else None)
            ),
        }

    def samples(self, app_id):
        """The app's history: this process's, or on a node every node's
        summed (up to a moment ago: see ``merge``)."""
        if self.shared is None:
            return self.history.of(app_id)
        every = self.history.every
        settled = time.time() - min(1.0, every / 2)
        merged = merge(
            [self.history.of(app_id)] + self.shared.samples(app_id),
            every,
            until=int(settled * 1000),
        )
        return merged[-self.history.size :]

    def start_history(self):
        """Starts sampling (loop thread, once the loop runs)."""
        if not self._sampling:
            self._sampling = True
            self.schedule(self._sample, next_sample(time.time(), self.history.every))

    def _sample(self):
        now = time.time()
        self.history.sample(now)
        if self.shared is not None:
            self.shared.sampled(now)
        self.schedule(self._sample, next_sample(now, self.history.every))

    def _tick(self):
        # a token can stop holding with no event to tell (it expires, or
        # newer logins push it out): every tick looks
        self.recheck()
        if not self.watchers:
            self._ticking = False
            return
        shared = self.shared
        for app_id in list(self.watchers):
            if shared is None:
                self._send_stats(app_id, None)
            else:
                shared.counts(
                    app_id,
                    lambda counts, app_id=app_id: self._send_stats(app_id, counts),
                )
        self.schedule(self._tick, STATS_EVERY)

    def _send_stats(self, app_id, counts):
        watchers = self.watchers.get(app_id)
        if not watchers:
            return
        frame = encode("console:stats", self.stats(app_id, counts))
        for watcher in list(watchers):
            watcher.link.write(frame)
