"""The debug console over a cluster: one console, on any node, sees the
whole app (``base/console``'s hub is its local side).

Who watches what: ``pushi:console`` (a sorted set) holds one member
``<origin>:<app_id>`` per node and app a console watches there (``origin``
the node's process, as the control channel's), scored with when it lapses
(Redis's clock, ms).  Every ``LOOK_EVERY`` seconds each node runs
``LOOK_SCRIPT``: it refreshes the node's own members (``WATCH_TTL``: a
dead node's lapse) and reads every member; a node removes its member as
its last watcher of the app goes.

Relaying: while an app is watched on another node, this node's engine
observer publishes the app's entries on ``pushi:console:{<app>}``, and
its history sample each time it takes one (``sampled``); the watching
nodes subscribe that channel and hand what comes from the other nodes to
their hub (what a node emits it shows itself: a node watched only by
itself relays nothing, and drops its own messages).  With no console
watching an app anywhere, no node publishes anything about it and the
engine builds nothing (the timer's one script a second aside).  Messages
are JSON ``{"o": origin, "a": app_id, <what>: ...}``, ``<what>`` one of
``entry`` (a ``console:entry``'s data), ``sample`` and ``history``.

Joining: a node's first watcher of an app subscribes the channel, puts its
member in Redis and asks every node for its samples of the app
(``console_history`` on the control channel, which also makes them relay
the app at once, before their next look); each answers with ``history``,
and the watcher's ``console:watching`` waits for every answer, for
``HISTORY_WAIT`` seconds at most.  The nodes' samples stay here while the
app is watched, for the hub to sum (``console.merge``).  The counters of
``console:stats`` (connections, occupied channels) are read from the
occupancy's keys (``counts``).

Redis pub/sub delivers at most once: what is published while a watching
node's subscription is away is lost to its consoles (a debug view, not a
record).  A node that cannot reach Redis shows its own entries, counts
and samples.

Loop thread only, as ``net/redis``.
"""

import collections
import json
import logging
import numbers
import time

from pushi.net.redis import Script

from . import lua
from .control import Gathering

logger = logging.getLogger("pushi")

WATCHED = "pushi:console"
""" The sorted set of the apps watched, per node """

LOOK_EVERY = 1.0
""" Seconds between two looks at ``WATCHED`` (and refreshes of this node's
members) """

WATCH_TTL = 5.0
""" Seconds a member of ``WATCHED`` lives without a refresh """

HISTORY_WAIT = 1.0
""" Seconds a first watcher's ``console:watching`` waits at most for the
other nodes' samples """

PREFIX = b"pushi:console:"

LOOK_SCRIPT = Script(
    """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[1]), ARGV[i])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)
""" KEYS: ``WATCHED``; ARGV: ``WATCH_TTL`` in ms, then this node's members
to refresh.  Returns every member (lapsed ones removed). """


def channel(app_id):
    """The pub/sub channel of an app's relayed console messages."""
    return "pushi:console:{%s}" % app_id


class ConsoleRelay:
    """The console hub's cluster side (its ``shared``), over the node's
    ``redis`` and ``subscriber`` (``pushi.net.redis``), its ``control``
    channel and ``loop`` (a ``NetiusLoop``).  See the module doc."""

    def __init__(self, hub, engine, redis, subscriber, control, loop):
        self.hub = hub
        self.engine = engine
        self.redis = redis
        self.subscriber = subscriber
        self.control = control
        self.loop = loop
        self.origin = control.origin
        self.here = set()
        """ The apps watched (or being joined) on this node """
        self.remote = set()
        """ The apps watched on another node: relayed """
        self.kept = {}
        """ app_id -> origin -> the samples of that node (apps in ``here``) """
        self._subscribed = set()
        self._waiting = {}
        # app_id -> the look after which a ``console_history`` came
        self._asked = {}
        self._looks = 0
        self._timer = None
        self._next = subscriber.on_message
        subscriber.on_message = self._message
        control.on("console_history", self._on_history)
        hub.shared = self

    # life cycle (loop thread)

    def start(self):
        if self._timer is None:
            self._timer = self.loop.later(LOOK_EVERY, self._tick)

    def stop(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self):
        self._timer = self.loop.later(LOOK_EVERY, self._tick)
        self.look()
        for app_id in self.here - self._subscribed:
            # its subscription failed (Redis away): again
            self._subscribe(app_id)

    def look(self):
        """Refreshes this node's members of ``WATCHED`` and relays the apps
        watched elsewhere."""
        self._looks += 1
        look = self._looks
        members = [self._member(app_id) for app_id in sorted(self.here)]

        def looked(reply):
            if isinstance(reply, Exception):
                # nobody to relay to while Redis is away
                self._relay(set())
                return
            remote = set()
            for member in reply:
                origin, _, app_id = _text(member).partition(":")
                if origin != self.origin:
                    remote.add(app_id)
            for app_id, asked in list(self._asked.items()):
                if asked >= look:
                    # asked after this look was sent: it may not know yet
                    remote.add(app_id)
                else:
                    del self._asked[app_id]
            self._relay(remote)

        self.redis.evalsha(
            looked, LOOK_SCRIPT, (WATCHED,), [int(WATCH_TTL * 1000)] + members
        )

    def _member(self, app_id):
        return "%s:%s" % (self.origin, app_id)

    def _relay(self, remote):
        self.remote = remote
        observers = self.engine.observers
        if remote and self.observe not in observers:
            observers.append(self.observe)
        elif not remote and self.observe in observers:
            observers.remove(self.observe)

    # the hub's side (loop thread)

    def watch(self, app_id, then):
        """A watcher of ``app_id`` joins here: ``then()`` once the other
        nodes' samples are in (at once when the app is watched here
        already, or Redis is away)."""
        waiting = self._waiting.get(app_id)
        if waiting is not None:
            waiting.thens.append(then)
            return
        if app_id in self.here:
            then()
            return
        self.here.add(app_id)
        self.kept[app_id] = {}

        def gathered():
            if self._waiting.get(app_id) is gathering:
                del self._waiting[app_id]

        gathering = self._waiting[app_id] = Gathering(self.loop, HISTORY_WAIT, gathered)
        gathering.thens.append(then)

        def subscribed(error):
            if error is not None or self._waiting.get(app_id) is not gathering:
                gathering.finish()
                return
            # the member is in Redis before the others are asked (one
            # connection, in order): their looks keep relaying the app
            self.look()
            self.control.broadcast(
                "console_history", {"app_id": app_id}, gathering.asked
            )

        self._subscribe(app_id, subscribed)

    def unwatch(self, app_id):
        """No watcher of ``app_id`` is left here."""
        self.here.discard(app_id)
        self.kept.pop(app_id, None)
        gathering = self._waiting.pop(app_id, None)
        if gathering is not None:
            gathering.cancel()
        if app_id in self._subscribed:
            self._subscribed.discard(app_id)
            self.subscriber.unsubscribe(channel(app_id))
        self.redis.call(_ignore, "ZREM", WATCHED, self._member(app_id))

    def counts(self, app_id, then):
        """``then((connections, channels))``: the app's open connections
        and occupied channels over the cluster, or ``then(None)`` when
        Redis does not answer."""
        replies = {}

        def reply(name):
            def got(value):
                replies[name] = value
                if len(replies) < 2:
                    return
                if any(isinstance(value, Exception) for value in replies.values()):
                    then(None)
                else:
                    then((int(replies["connections"] or 0), int(replies["channels"])))

            return got

        self.redis.call(reply("connections"), "GET", lua.app_key(app_id, "connections"))
        self.redis.call(reply("channels"), "HLEN", lua.app_key(app_id, "counts"))

    def samples(self, app_id):
        """The other nodes' samples of ``app_id``: one list per node."""
        return [list(samples) for samples in self.kept.get(app_id, {}).values()]

    def sampled(self, now):
        """The hub took its history samples at ``now``: those of the apps
        watched elsewhere go there."""
        stamp = int(now * 1000)
        for app_id in self.remote:
            last = self.hub.history.last(app_id)
            if last is not None and last[0] == stamp:
                self._publish(app_id, "sample", last)

    def observe(self, app_id, kind, details):
        """The engine observer while an app is watched elsewhere."""
        if app_id in self.remote:
            entry = dict(details, type=kind, time=int(time.time() * 1000))
            self._publish(app_id, "entry", entry)

    # the wire

    def _subscribe(self, app_id, then=None):
        self._subscribed.add(app_id)

        def confirmed(error):
            if error is not None:
                # made again at the next tick while the app is watched
                self._subscribed.discard(app_id)
            if then is not None:
                then(error)

        self.subscriber.subscribe(channel(app_id), confirmed)

    def _publish(self, app_id, what, value):
        message = json.dumps(
            {"o": self.origin, "a": app_id, what: value},
            separators=(",", ":"),
            default=str,
        )
        # lost while Redis is away, as any console message would be
        self.redis.call(_ignore, "PUBLISH", channel(app_id), message)

    def _on_history(self, data, _sender):
        """Another node's first watcher of an app asks for its samples."""
        app_id = data.get("app_id")
        if not isinstance(app_id, str):
            return
        self._asked[app_id] = self._looks
        self._relay(self.remote | {app_id})
        self._publish(app_id, "history", self.hub.history.of(app_id))

    def _message(self, name, data):
        if not name.startswith(PREFIX):
            if self._next is not None:
                self._next(name, data)
            return
        try:
            message = json.loads(data)
            origin, app_id = message["o"], message["a"]
        except (ValueError, TypeError, KeyError):
            logger.warning("An unreadable console message was dropped: %r", data[:200])
            return
        if origin == self.origin or app_id not in self.here:
            return
        entry = message.get("entry")
        if isinstance(entry, dict):
            self.hub.show(app_id, entry)
            return
        sample = message.get("sample")
        if _is_sample(sample):
            self._samples_of(app_id, origin).append(sample)
            return
        history = message.get("history")
        if isinstance(history, list):
            samples = self._samples_of(app_id, origin)
            samples.clear()
            samples.extend(sample for sample in history if _is_sample(sample))
            gathering = self._waiting.get(app_id)
            if gathering is not None:
                gathering.answer(origin)

    def _samples_of(self, app_id, origin):
        kept = self.kept[app_id]
        samples = kept.get(origin)
        if samples is None:
            samples = kept[origin] = collections.deque(maxlen=self.hub.history.size)
        return samples


def _is_sample(value):
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(
            isinstance(item, numbers.Real) and not isinstance(item, bool)
            for item in value
        )
    )


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _ignore(_reply):
    pass
