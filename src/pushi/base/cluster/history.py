"""Recovery history and cache channels of a cluster node, in Redis.

The broker's publish script (``cluster/broker``) gives each event its
channel's position and, when the app keeps a history, adds it to the
channel's stream ``pushi:{<app>}:ch:<channel>:hist`` (entry id
``<offset>-0``, fields ``t``, Redis's time, and ``b``, the event's body;
``MAXLEN ~ recovery_history``, the key expiring ``recovery_ttl`` seconds
after its last event); a cache channel's event goes to
``pushi:{<app>}:ch:<channel>:cache`` (30 minutes).  So a socket that comes
back to any node recovers there, and a subscriber on any node gets a cache
channel's last event.

``RedisHistory`` is the history seam (``base/history``) of a node:
``position`` is where this node's order of the channel is (the broker's:
the last event it delivered, or where its subscription started), so a
socket that joins with it gets every event after it; ``recover`` answers
through its continuation, in Centrifuge's order: the channel's bus is
subscribed already (the engine listens first), the events this node
delivers on the channel are tapped from then on, the position and the
history after ``since`` are read in one script, and once this node's
order has reached the position read (the events published before the
read that the subscription still brings), history and tapped events are
merged by offset, each once, and checked to be contiguous from ``since``
to the node's position; the socket then joins in the same turn, so the
next event it gets is the next one.  ``recovered: false`` with the
reasons of ``base/history``.

``RedisCache`` is the cache seam (``base/cache``) of a node: ``fetch``
reads a cache channel's last event on the loop, ``info`` on a REST
thread.  ``max_cache_bytes`` bounds each entry in a cluster (a bigger
event is not cached); what all entries hold together is Redis's memory.

Loop thread only, but ``RedisCache.info`` (REST threads).
"""

import json
import logging
from typing import Any

from pushi.proto import messages
from pushi.proto.websocket import text_frame

from ..cache import Cached
from ..history import EXPIRED, NEW_EPOCH, OFF, TOO_FAR, UNKNOWN, with_position
from .broker import cache_key, redis_of

logger = logging.getLogger("pushi")

CATCH_UP = 2.0
""" Seconds a recovery waits for this node's subscription to bring the
events published before its read; those still missing then are a gap """


class RedisHistory:
    """The recovery history of a cluster node (see the module doc); its
    ``broker`` (a ``RedisBroker``) is set once the node is bound."""

    def __init__(self):
        self.broker: Any = None

    # the seam

    def append(self, app_id, channel, text, limits, now, mid=None):
        """Never used: events have the bus's positions (``Event.position``)
        and the publish script keeps them."""
        return None

    def keep(self, app_id, entry, frame, limits):
        pass

    def position(self, app_id, channel, limits, now):
        """``(epoch, offset)`` of this node's order of the channel, None
        when the app keeps no history or the position is unknown (Redis
        did not answer when the channel was subscribed)."""
        if not limits.recovery_history:
            return None
        return self.broker.position((app_id, channel))

    def recover(self, app_id, channel, epoch, offset, limits, now, then):
        """``then(True, frames)``: the frames of ``channel`` after ``offset``
        of ``epoch`` up to this node's position, oldest first;
        ``then(False, reason)`` when some are not kept; ``then(None,
        error)`` when Redis did not answer."""
        if not limits.recovery_history:
            then(False, OFF)
            return
        if self.broker.position((app_id, channel)) == (epoch, offset):
            then(True, [])
            return
        _Recovery(self.broker, app_id, channel, epoch, offset, limits, then).start()

    def tap(self, app_id, channel, limits):
        """A list that receives (as objects with a ``frame``) every event
        this node delivers on ``channel`` until ``untap``."""
        if not limits.recovery_history:
            return None
        tapped = _Tap()
        self.broker.taps.setdefault((app_id, channel), []).append(tapped.tap)
        return tapped

    def untap(self, app_id, channel, tapped):
        if tapped is not None:
            _untap(self.broker, (app_id, channel), tapped.tap)

    def hold(self, app_id, channel, session, frames, limits):
        """Appends to ``frames`` the events this node delivers on
        ``channel`` until ``session`` is on it (a presence member joins
        once Redis answered, after its position was given): the socket
        gets them after its recovered frames, and misses none.  Ends when
        the socket is on the channel or closed, or past
        ``recovery_history`` events (a refused member)."""
        if not limits.recovery_history:
            return
        key = (app_id, channel)
        most = limits.recovery_history
        recovery = self.broker.engine.recovery

        def tap(offset, epoch, event):
            if session.closed or channel in session.channels or len(frames) > most:
                _untap(self.broker, key, tap)
                return
            if event.name.startswith("pusher_internal:member_"):
                return
            if recovery.sent:
                sent = recovery.sent_to(app_id, channel, (event.extra or {}).get("mid"))
                if sent is not None and session in sent:
                    return  # its recovery sent it from the store
            frames.append(_frame(channel, offset, epoch, event))

        self.broker.taps.setdefault(key, []).append(tap)

    # upkeep: Redis expires what it holds

    def expire(self, now):
        pass

    def stats(self, app_id):
        """What a node holds itself: nothing (the history is Redis's)."""
        return {"streams": 0, "events": 0, "bytes": 0, "evictions": 0}

    def trim(self, app_id, limits):
        pass


class _Recovery:
    """One socket's recovery of one channel (see the module doc)."""

    def __init__(self, broker, app_id, channel, epoch, since, limits, then):
        self.broker = broker
        self.app_id = app_id
        self.channel = channel
        self.key = (app_id, channel)
        self.epoch = epoch
        self.since = since
        self.limits = limits
        self.then = then
        self.tapped = []
        self.top = None
        self.kept: dict[int, tuple | None] = {}
        self.timer = None

    def start(self):
        self.broker.taps.setdefault(self.key, []).append(self.tap)
        self.broker.read(
            self.app_id,
            self.channel,
            self.since,
            self.limits.recovery_history,
            self.read,
        )

    def tap(self, offset, epoch, event):
        self.tapped.append((offset, epoch, event))
        if self.top is not None and self._caught_up():
            self._finish()

    def read(self, reply):
        if isinstance(reply, Exception):
            self._end()
            self.then(None, reply)
            return
        try:
            top, epoch, entries, now = reply
            top, epoch, now = int(top), _text(epoch), int(now)
            reason = self._verdict(top, epoch)
            if reason is None:
                kept, reason = self._kept(entries, now, top)
        except (ValueError, TypeError):
            logger.exception("An unreadable recovery history")
            kept, reason = None, EXPIRED
        if reason is not None:
            self._end()
            self.then(False, reason)
            return
        self.top, self.epoch, self.kept = top, epoch, kept
        if self.broker.position(self.key) is None:
            # this node's order starts here
            self.broker.advance(self.key, epoch, top)
        if self._caught_up():
            self._finish()
            return
        self.timer = self.broker.node.loop.later(CATCH_UP, self._late)

    def _verdict(self, top, epoch):
        """Why the position cannot be recovered from what the read says,
        or None."""
        if epoch != self.epoch:
            return EXPIRED if redis_of(epoch) == redis_of(self.epoch) else NEW_EPOCH
        if self.since > top:
            return UNKNOWN
        if top - self.since > self.limits.recovery_history:
            return TOO_FAR
        return None

    def _kept(self, entries, now, top):
        """``({offset: (name, data, extra) or None for a member event},
        None)`` for the history after ``since``, or ``(None, reason)`` when
        part of it is gone."""
        kept: dict[int, tuple | None] = {}
        ttl = self.limits.recovery_ttl
        for entry_id, fields in entries:
            offset = int(_text(entry_id).split("-", 1)[0])
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
            if not kept and int(fields[b"t"]) + ttl <= now:
                # the first one missed is past its time (so is the rest)
                return None, EXPIRED
            body = fields[b"b"]
            if body:
                _app, _channel, name, data, _exclude, extra = json.loads(body)
                kept[offset] = (name, data, extra)
            else:
                kept[offset] = None
        if top > self.since:
            if not kept:
                # the stream expired
                return None, EXPIRED
            if min(kept) > self.since + 1:
                return None, TOO_FAR
        return kept, None

    def _caught_up(self):
        position = self.broker.position(self.key)
        return (
            position is not None
            and position[0] == self.epoch
            and position[1] >= self.top
        )

    def _late(self):
        """The subscription did not bring every event up to the position
        read: those missing are a gap of this node, dropped if they come."""
        self.timer = None
        self.broker.advance(self.key, self.epoch, self.top)
        self._finish()

    def _finish(self):
        self._end()
        position = self.broker.position(self.key)
        if position is None or position[0] != self.epoch:
            # the channel's order started again meanwhile (Redis restarted)
            self.then(False, NEW_EPOCH)
            return
        epoch, last = position
        events = dict(self.kept)
        for offset, tapped_epoch, event in self.tapped:
            if tapped_epoch == epoch and self.top < offset <= last:
                events[offset] = (
                    None
                    if event.name.startswith("pusher_internal:member_")
                    else (event.name, event.data, event.extra)
                )
        if len(events) != last - self.since or (
            events and (min(events) != self.since + 1 or max(events) != last)
        ):
            # the history or this node's subscription misses some
            self.then(False, TOO_FAR)
            return
        frames = []
        size = 0
        max_bytes = self.limits.max_recovery_bytes
        for offset in range(self.since + 1, last + 1):
            event = events[offset]
            if event is None:
                continue  # a member event: the members are the channel's state
            name, data, extra = event
            frame = text_frame(
                with_position(
                    messages.event(name, self.channel, data, **(extra or {})),
                    offset,
                    epoch,
                )
            )
            size += len(frame)
            if max_bytes and size > max_bytes:
                self.then(False, TOO_FAR)
                return
            frames.append(frame)
        self.then(True, frames)

    def _end(self):
        _untap(self.broker, self.key, self.tap)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Tap(list):
    """The events delivered on a channel during a recovery that reads the
    store (``Recovery._from_store``), as history entries (``frame``)."""

    # the last stored event delivered before the tap: not known here, so
    # the recovery sends every stored event it read, and the delivery here
    # of one still to come skips the socket (``Recovery.sent_to``)
    before = None

    def tap(self, offset, epoch, event):
        if event.name.startswith("pusher_internal:member_"):
            return
        self.append(_Framed(_frame(event.channels[0], offset, epoch, event)))


def _frame(channel, offset, epoch, event):
    """The frame of an event the bus delivered, with its position."""
    return text_frame(
        with_position(
            messages.event(event.name, channel, event.data, **(event.extra or {})),
            offset,
            epoch,
        )
    )


class _Framed:
    __slots__ = ("frame",)

    def __init__(self, frame):
        self.frame = frame


def _untap(broker, key, tap):
    taps = broker.taps.get(key)
    if taps and tap in taps:
        taps.remove(tap)
        if not taps:
            del broker.taps[key]


class RedisCache:
    """Cache channels' last events in Redis (see the module doc):
    ``commands`` the node's command connection, ``reader`` a blocking
    client for the REST threads."""

    def __init__(self, commands, reader):
        self.commands = commands
        self.reader = reader

    def put(self, app_id, channel, cached, max_bytes, now):
        """Nothing: the publish script caches the event."""

    def fetch(self, app_id, channel, now, then):
        """``then(Cached)``: the channel's last event, or ``then(None)``
        (nothing cached, or Redis did not answer)."""

        def got(reply):
            if isinstance(reply, Exception):
                logger.warning("A cache channel's last event not read: %s", reply)
                then(None)
                return
            then(_cached(reply))

        self.commands.call(got, "GET", cache_key(app_id, channel))

    def info(self, app_id, channel, on_loop):
        """``{event, data, ttl}`` of the channel's last event, or None
        (on the calling thread: a REST one)."""
        key = cache_key(app_id, channel)
        pipeline = self.reader.pipeline(transaction=False)
        pipeline.get(key)
        pipeline.ttl(key)
        body, ttl = pipeline.execute()
        cached = _cached(body)
        if cached is None:
            return None
        return dict(cached.event(), ttl=max(int(ttl), 0))

    def trim(self, app_id, max_bytes):
        pass

    def expire(self, now):
        pass

    def stats(self, app_id):
        """What a node holds itself: nothing (the entries are Redis's)."""
        return {"entries": 0, "bytes": 0, "evictions": 0}


def _cached(body):
    if not body:
        return None
    try:
        _app, _channel, name, data, _exclude, extra = json.loads(body)
    except (ValueError, TypeError):
        return None
    return Cached(name, data, extra)


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)
