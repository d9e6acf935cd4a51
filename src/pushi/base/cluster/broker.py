"""The broker seam over Redis: every event of every node through one
script, every delivery from every node's subscription.

Publishing (``publish`` from any thread, ``send`` on the loop) runs
``PUBLISH_SCRIPT`` once per channel of the event, pipelined on the node's
command connection (the calls of one loop turn go out in one write).  The
script, atomic in Redis, gives the event the channel's next ``offset``
(``HINCRBY pushi:{<app>}:ch:<channel>:meta s 1``) and the channel's
``epoch`` (``HGET ... e``, made when missing: a channel seen for the first
time, or after its meta key expired or Redis restarted empty), publishes it
on ``pushi:m:{<app>}:<channel>`` and returns ``{offset, epoch}``; it
also keeps the event in the channel's recovery history when the app keeps
one, and a cache channel's event as its last (``cluster/history``).  The
message is ``<epoch>:<offset>:<body>``, ``body`` the JSON list ``[app_id,
channel, name, data, exclude, extra]`` of the ``Event`` (``data`` a string,
or the member of a member event).  Redis runs the scripts one at a time,
so offset order is bus order.

Delivering: every node, the publishing one included, delivers what its
subscription receives, so every subscriber of a channel on every node sees
one order.  The node checks each channel's order by offset within an
epoch: the next one is delivered; an offset already seen is dropped (a
duplicate); a jump is a gap (events the subscription missed: a
reconnection, or Redis dropping a slow subscriber), counted in
``pushi_cluster_gaps`` and logged, and delivery goes on.  A new epoch
starts the order again.  The frames carry the event's ``offset`` and
``epoch``.

``publish``'s ``done(None)`` runs on the loop when the last channel's
reply came (Redis has then handed the event to every subscribed node, in
order); ``done(error)`` when Redis is down or did not answer within the
command timeout (1 s), or too many replies are awaited: the REST publish
answers 503, nothing is queued.  ``busy`` while ``max_pending`` published
events await their replies.  A ``send`` that fails (a client event while
Redis is down) is counted, logged once per outage, and its sender gets
``pusher:error`` 4305.

``listen`` subscribes the channel's bus and answers once Redis confirmed
(or at once with the error while Redis is down: the engine answers 503; a
channel that has sockets here all the same, which the server joined, is
subscribed as the subscription connection comes back);
for an app that keeps a history, the channel's position is read once
it is subscribed, and this node's order of the channel starts there (so a
socket joining with that position misses nothing and gets nothing twice);
``unlisten`` unsubscribes after ``LINGER`` seconds unless the channel has
subscribers here again by then (sockets that come and go do not churn the
subscription).
"""

import collections
import json
import logging
import os

from prometheus_client import Counter

from pushi.net.redis import Script
from pushi.proto import channels as channels_
from pushi.proto import errors, messages

from ..broker import Event
from ..cache import TTL as CACHE_TTL
from ..presence import added_data

logger = logging.getLogger("pushi")

# a message's body is the UTF-8 JSON text ``body_of`` wrote: scanned as
# such, without what ``json.loads`` does first (an encoding guessed for
# bytes, a decoder's arguments checked, whitespace around it skipped)
_scan = json.JSONDecoder().raw_decode
# a string's JSON text, as ``messages.dumps`` (UTF-8 characters kept) has it
_encode = json.encoder.encode_basestring

LINGER = 2.0
""" Seconds a channel's bus stays subscribed after its last subscriber
here left """

MEMBER_EVENTS = 256
""" Member events a node keeps per presence channel it delivers (the ones
a socket that joins at an earlier position missed: ``delivered_after``) """

SCRIPTED = 10000
""" Channels whose publish script arguments a node keeps (all of them are
forgotten when more are published to) """

META_TTL = 86400
""" Seconds a channel's meta key (offset and epoch) lives after its last
event: a channel quiet for longer starts a new epoch """

PUBLISH_SCRIPT = Script(
    """
local offset = redis.call('HINCRBY', KEYS[1], 's', 1)
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('DEL', KEYS[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[5] ~= '0' then
  local body = ARGV[3]
  if ARGV[8] == '1' then
    body = ''
  end
  local now = redis.call('TIME')[1]
  local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5],
    offset .. '-0', 't', now, 'b', body)
  if type(added) == 'table' and added.err then
    -- a stream left from another epoch: this epoch's starts here
    redis.call('DEL', KEYS[2])
    redis.call('XADD', KEYS[2], offset .. '-0', 't', now, 'b', body)
  end
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
if ARGV[7] == '1' then
  redis.call('SET', KEYS[3], ARGV[3], 'EX', CACHE_TTL)
end
redis.call('PUBLISH', ARGV[1], epoch .. ':' .. offset .. ':' .. ARGV[3])
return {offset, epoch}
""".replace("CACHE_TTL", str(CACHE_TTL))
)
""" KEYS: the channel's meta key, its history stream, its cache key; ARGV:
its bus, a new epoch (used when the channel has none), the event's body,
``META_TTL``, the app's ``recovery_history`` (0: no history), its
``recovery_ttl``, 1 to cache the event (a cache channel's), 1 for a member
event (kept in the history as a place holder: its offset counts, a
recovery does not send it).  Returns ``{offset, epoch}``.  A new epoch
starts a new history stream (its entry ids are the offsets). """

READ_SCRIPT = Script(
    """
local top = redis.call('HGET', KEYS[1], 's')
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  top = '0'
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0)
  redis.call('DEL', KEYS[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
top = tonumber(top)
local since = tonumber(ARGV[3])
local entries = {}
if since >= 0 and since < top and top - since <= tonumber(ARGV[4]) then
  entries = redis.call('XRANGE', KEYS[2], since + 1, '+', 'COUNT', top - since)
end
return {top, epoch, entries, redis.call('TIME')[1]}
"""
)
""" KEYS: a channel's meta key and history stream; ARGV: a new epoch (the
channel's when it has none), ``META_TTL``, the offset after which to read
the history (-1: none), the most entries to read.  Returns ``{top offset,
epoch, entries ({id, {field, value, ...}}), Redis's time in seconds}``;
the entries only when the offset is of the channel's range and within the
most.  The position and the entries come from one step. """


def body_of(app_id, channel, name, data, exclude, extra):
    """A message's body: the JSON text of ``[app_id, channel, name, data,
    exclude, extra]``, as ``messages.dumps`` writes it, its strings encoded
    one by one (without an encoder made for each list)."""
    return "[%s,%s,%s,%s,%s,%s]" % (
        _encode(app_id),
        _encode(channel),
        _encode(name),
        _encode(data) if data.__class__ is str else messages.dumps(data),
        "null" if exclude is None else _encode(exclude),
        "null" if extra is None else messages.dumps(extra),
    )


def redis_of(epoch):
    """What of an epoch names the Redis (its ``run_id``) that made it."""
    return epoch[:4]


def meta_key(app_id, channel):
    """The hash of a channel's ``s`` (top offset) and ``e`` (epoch)."""
    return "pushi:{%s}:ch:%s:meta" % (app_id, channel)


def hist_key(app_id, channel):
    """The stream of a channel's recent events (recovery history)."""
    return "pushi:{%s}:ch:%s:hist" % (app_id, channel)


def cache_key(app_id, channel):
    """A cache channel's last event (its body)."""
    return "pushi:{%s}:ch:%s:cache" % (app_id, channel)


def bus(app_id, channel):
    """The pub/sub channel of a channel's events."""
    return "pushi:m:{%s}:%s" % (app_id, channel)


class RedisBroker:
    """The broker of a cluster node (``Node``): see the module doc."""

    def __init__(self, node, engine, call_soon, metrics, max_pending=1000):
        self.node = node
        self.engine = engine
        self.commands = node.commands
        self.subscriber = node.subscriber
        self.subscriber.on_message = self._message
        self.subscriber.on_resubscribed = self._resubscribed
        self.subscriber.on_up = self._subscriber_up
        self._call_soon = call_soon
        self._max_pending = max_pending
        self._queue: collections.deque = collections.deque()
        self._scheduled = False
        self._awaiting = 0
        # (app_id, channel) -> [epoch, last offset delivered]
        self._positions = {}
        # (app_id, channel) -> the last member events delivered here:
        # deque of (offset, epoch, name, data), and the highest offset
        # that fell out of it
        self._member_events = {}
        # (app_id, channel) -> listens awaiting Redis's confirmation
        self._listening = collections.defaultdict(int)
        self._lingering = {}
        # channels whose subscription failed (Redis down): made again when
        # the subscription is back, if they have subscribers here by then
        self._deaf = set()
        self._epoch_prefix = os.urandom(4).hex()
        self._epochs = 0
        # what of an epoch comes from Redis's run_id and this process
        self._epoch_run_id: object = _UNSET
        self._epoch_base = ""
        # (app_id, channel) -> the publish script's keys, bus, is_cache
        self._scripted = {}
        self._failing = False
        self._gaps_logged = set()
        # (app_id, channel) -> the listens awaiting the channel's position
        self._starting = {}
        self.taps = {}
        """ (app_id, channel) -> callables ``tap(offset, epoch, event)``
        that see each event this node delivers on the channel, after its
        sockets (``cluster/history``) """
        registry = metrics.registry
        self.failures = Counter(
            "pushi_cluster_publish_failures",
            "Events not published to Redis (down, too slow, refusing), by"
            " source: rest (answered 503) or socket (client events, member"
            " events)",
            ("source",),
            registry=registry,
        )
        self.gaps = Counter(
            "pushi_cluster_gaps",
            "Events a channel's order on this node skipped (its Redis"
            " subscription missed them)",
            registry=registry,
        )
        self.duplicates = Counter(
            "pushi_cluster_duplicates",
            "Events received twice on this node's subscription (dropped)",
            registry=registry,
        )

    # publishing

    @property
    def busy(self):
        """True while ``max_pending`` published events wait (for the loop
        or for Redis's reply)."""
        return len(self._queue) + self._awaiting >= self._max_pending

    def publish(self, event, done=None):
        """Publishes ``event`` to Redis; thread-safe.  ``done(error)`` runs
        on the loop once Redis answered for every channel."""
        self._queue.append((event, done))
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self._drain)

    def _drain(self):
        self._scheduled = False
        # the events of the turn go out in one write, in this turn
        self.commands.batch(self._send_queued)

    def _send_queued(self):
        queue = self._queue
        while queue:
            event, done = queue.popleft()
            self._awaiting += 1
            published = self._published(event, done)
            try:
                self._publish(event, published)
            except Exception as error:
                # the others still go, and every publisher hears back
                logger.exception("publishing an event failed")
                published(error)

    def _published(self, event, done):
        def published(reply):
            self._awaiting -= 1
            if isinstance(reply, Exception):
                self._failed(reply, "rest")
                if done is not None:
                    done(reply)
                return
            self._succeeded()
            self.engine.announce(event)
            if done is not None:
                done(None)

        return published

    def send(self, event):
        """Publishes ``event`` emitted on the loop (client and member
        events)."""
        try:
            self._publish(event, self._sent(event))
        except Exception:
            logger.exception("publishing an event failed")

    def _sent(self, event):
        def sent(reply):
            if not isinstance(reply, Exception):
                self._succeeded()
                return
            self._failed(reply, "socket")
            self._tell_sender(event)

        return sent

    def _tell_sender(self, event):
        """A client event Redis did not take: its sender hears so (a member
        event's socket does not: the member's state is the presence's)."""
        if event.exclude is None or event.name.startswith("pusher_internal:"):
            return
        session = self.engine.registry.sessions.get(event.exclude)
        if session is None or session.closed:
            return
        self.engine.metrics.reject("socket", errors.STORE_UNAVAILABLE)
        self.engine.send(
            session,
            messages.error(
                errors.STORE_UNAVAILABLE,
                "Server unavailable: event not delivered",
                event.channels[0],
            ),
        )

    def _publish(self, event, then):
        """Runs the publish script for each channel of ``event``; then
        ``then(reply)`` once every reply came: the first error (an
        exception), else a reply."""
        channels = event.channels
        if len(channels) == 1:
            replied = then
        else:
            # replies still awaited, and the first error
            left = len(channels)
            first: list[Exception] = []

            def replied(reply):
                nonlocal left
                if isinstance(reply, Exception) and not first:
                    first.append(reply)
                left -= 1
                if not left:
                    then(first[0] if first else None)

        app_id = event.app_id
        limits = self.engine.limits(app_id)
        history = limits.recovery_history
        member = "1" if event.name.startswith("pusher_internal:member_") else "0"
        max_cache = limits.max_cache_bytes
        name, data, exclude, extra = event.name, event.data, event.exclude, event.extra
        scripted = self._scripted
        for channel in channels:
            body = body_of(app_id, channel, name, data, exclude, extra)
            known = scripted.get((app_id, channel))
            if known is None:
                known = self._script_of(app_id, channel)
            keys, bus_, is_cache = known
            # a cache channel's event, within the per-entry bound
            cache = (
                is_cache and member == "0" and (not max_cache or len(body) <= max_cache)
            )
            self.commands.evalsha(
                replied,
                PUBLISH_SCRIPT,
                keys,
                (
                    bus_,
                    self.new_epoch(),
                    body,
                    META_TTL,
                    history,
                    limits.recovery_ttl,
                    "1" if cache else "0",
                    member,
                ),
            )

    def _script_of(self, app_id, channel):
        """The publish script's keys, bus and whether it is a cache
        channel, for a channel: the same for each of its events, so kept
        (for ``SCRIPTED`` channels at most)."""
        scripted = self._scripted
        if len(scripted) >= SCRIPTED:
            scripted.clear()
        known = scripted[(app_id, channel)] = (
            (
                meta_key(app_id, channel),
                hist_key(app_id, channel),
                cache_key(app_id, channel),
            ),
            bus(app_id, channel),
            channels_.is_cache(channel),
        )
        return known

    def new_epoch(self):
        """An epoch for a channel that has none: unique to this process and
        the Redis it runs on (its first characters are Redis's ``run_id``'s:
        see ``redis_of``)."""
        self._epochs += 1
        run_id = self.commands.run_id
        if run_id is not self._epoch_run_id:
            self._epoch_run_id = run_id
            self._epoch_base = "%s%s-" % ((run_id or "0000")[:4], self._epoch_prefix)
        return "%s%x" % (self._epoch_base, self._epochs)

    def _succeeded(self):
        if self._failing:
            self._failing = False
            logger.warning("Redis takes events again")

    def _failed(self, error, source):
        self.failures.labels(source).inc()
        if not self._failing:
            # once per outage
            self._failing = True
            logger.warning("Events not published to Redis: %s", error)

    # the announcer of the presence seam (``seams.Announcer``)

    def member_added(self, app_id, channel, user_id, member, socket_id):
        """The publish arguments of a ``member_added`` that the presence
        script publishes as it makes the member (not to ``socket_id``)."""
        return self._announced(
            app_id,
            channel,
            "pusher_internal:member_added",
            added_data(user_id, member),
            socket_id,
        )

    def member_removed(self, app_id, channel, user_id):
        """The publish arguments of a ``member_removed`` that the presence
        script (or the reaper's) publishes as the member leaves."""
        return self._announced(
            app_id, channel, "pusher_internal:member_removed", {"user_id": user_id}
        )

    def _announced(self, app_id, channel, name, data, exclude=None):
        body = body_of(app_id, channel, name, data, exclude, None)
        limits = self.engine.limits(app_id)
        # with the recovery history: a place holder there, as ``send``
        # keeps a member event
        return (
            (meta_key(app_id, channel), hist_key(app_id, channel)),
            (
                bus(app_id, channel),
                self.new_epoch(),
                body,
                META_TTL,
                limits.recovery_history,
                limits.recovery_ttl,
            ),
        )

    def delivered_after(self, app_id, channel, position):
        """The member events of ``channel`` this node delivered after
        ``position`` ((offset, epoch), a presence join's): a list of
        (name, data), or None when this node has delivered nothing past
        that position yet (what comes up to it is then still to come).
        A presence socket's members are read at its join's position, but
        the socket joins this node's channel when the answer arrives:
        the member events delivered in between are folded into its
        members, those still to come up to the position are skipped
        (``Session.member_floors``)."""
        offset, epoch = position
        last = self._positions.get((app_id, channel))
        if last is None or last[0] != epoch or last[1] <= offset:
            return None
        kept = self._member_events.get((app_id, channel))
        if kept is None:
            return []
        events, lost = kept
        if lost[0] > offset:
            logger.warning(
                "Channel %s of app %s: a presence socket joined %d member"
                " events back: some of them are no longer kept here",
                channel,
                app_id,
                last[1] - offset,
            )
        return [
            (name, data)
            for at, at_epoch, name, data in events
            if at > offset and at_epoch == epoch
        ]

    def _kept(self, key, offset, epoch, name, data):
        kept = self._member_events.get(key)
        if kept is None:
            events: collections.deque = collections.deque(maxlen=MEMBER_EVENTS)
            kept = self._member_events[key] = (events, [0])
        events, lost = kept
        if len(events) == MEMBER_EVENTS:
            lost[0] = events[0][0]
        events.append((offset, epoch, name, data))

    # listening

    def listen(self, app_id, channel, then):
        """Subscribes the channel's bus: ``then(None)`` once Redis
        confirmed, ``then(error)`` if it cannot (loop thread)."""
        key = (app_id, channel)
        timer = self._lingering.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._listening[key] += 1

        def confirmed(error):
            if (
                error is None
                and key not in self._positions
                and self.engine.limits(app_id).recovery_history
            ):
                # where this node's order of the channel starts
                self._start(key, lambda: done(None))
                return
            done(error)

        def done(error):
            left = self._listening[key] - 1
            if left:
                self._listening[key] = left
            else:
                del self._listening[key]
            if error is not None:
                self._deaf.add(key)
            then(error)

        self.subscriber.subscribe(bus(app_id, channel), confirmed)

    def _start(self, key, then):
        """Reads the channel's position once its bus is subscribed: this
        node's order of the channel starts there (an event at or before it
        that the subscription still brings is dropped, the socket that
        joins with that position has it from the history), so each socket
        here joins at a position after which it gets every event.
        ``then()`` when known (or not: Redis down)."""
        waiting = self._starting.get(key)
        if waiting is not None:
            waiting.append(then)
            return
        waiting = self._starting[key] = [then]

        def read(reply):
            del self._starting[key]
            if not isinstance(reply, Exception):
                self.advance(key, _text(reply[1]), int(reply[0]))
            for then in waiting:
                then()

        self.read(key[0], key[1], -1, 0, read)

    def read(self, app_id, channel, since, most, then):
        """``then(reply)``: the channel's position (made when it has none)
        and its history after ``since`` (see ``READ_SCRIPT``), or the
        error."""
        self.commands.evalsha(
            then,
            READ_SCRIPT,
            (meta_key(app_id, channel), hist_key(app_id, channel)),
            (self.new_epoch(), META_TTL, since, most),
        )

    def position(self, key):
        """``(epoch, offset)``: the last event of the channel this node
        delivered (or where its order starts), None when unknown."""
        position = self._positions.get(key)
        return None if position is None else (position[0], position[1])

    def advance(self, key, epoch, offset):
        """Moves this node's order of a channel to ``offset`` of ``epoch``
        when it is behind it (or knows none): what the subscription brings
        up to there is dropped."""
        position = self._positions.get(key)
        if position is None:
            self._positions[key] = [epoch, offset]
        elif position[0] != epoch or position[1] < offset:
            position[0], position[1] = epoch, offset

    def unlisten(self, app_id, channel):
        """The channel's last subscriber here left: its bus is unsubscribed
        after ``LINGER`` seconds, unless it has subscribers again."""
        key = (app_id, channel)
        if key in self._lingering:
            return
        self._lingering[key] = self.node.loop.later(
            LINGER, lambda: self._unsubscribe(key)
        )

    def _subscriber_up(self, _run_id):
        """The subscription connection is up: the channels joined while it
        was down (a socket the server put on a channel: personal and peer
        channels) are subscribed now."""
        deaf, self._deaf = self._deaf, set()
        for key in deaf:
            channel = self.engine.registry.channel(*key)
            if channel is not None and channel.sessions:
                self.listen(key[0], key[1], _ignore)

    def _unsubscribe(self, key):
        self._lingering.pop(key, None)
        if key in self._listening or key in self.taps:
            # a socket joins (recovering) or is about to
            return
        channel = self.engine.registry.channel(*key)
        if channel is not None and channel.sessions:
            return
        self.subscriber.unsubscribe(bus(*key))
        # what comes after a new subscription starts a new order
        self._positions.pop(key, None)
        self._member_events.pop(key, None)
        self._gaps_logged.discard(key)

    # delivering

    def _message(self, _bus, data):
        """A message of a channel's bus: checked against the channel's
        order, then delivered to this node's sockets."""
        try:
            epoch, offset, body = data.split(b":", 2)
            offset = int(offset)
            epoch = epoch.decode("ascii")
            text = body.decode()
            fields, end = _scan(text)
            if end != len(text):
                raise ValueError("more than one JSON value")
            app_id, channel, name, payload, exclude, extra = fields
        except (ValueError, TypeError, UnicodeDecodeError):
            logger.warning("An unreadable message on Redis's %r: dropped", _bus[:100])
            return
        key = (app_id, channel)
        position = self._positions.get(key)
        if position is None or position[0] != epoch:
            # the first since the subscription, or a new epoch
            self._positions[key] = [epoch, offset]
        else:
            last = position[1]
            if offset <= last:
                self.duplicates.inc()
                return
            if offset != last + 1:
                self._gap(key, epoch, last, offset)
            position[1] = offset
        event = Event(
            app_id, (channel,), name, payload, exclude, extra, (offset, epoch)
        )
        if name.startswith("pusher_internal:member_"):
            self._kept(key, offset, epoch, name, payload)
        self.engine.deliver(event)
        taps = self.taps.get(key)
        if taps:
            # after the delivery: a tap that joins its socket now does not
            # get this event twice
            for tap in list(taps):
                tap(offset, epoch, event)

    def _gap(self, key, epoch, last, offset):
        self.gaps.inc(offset - last - 1)
        if key not in self._gaps_logged:
            # once per channel and subscription: the counter says the rest
            self._gaps_logged.add(key)
            logger.warning(
                "Channel %s of app %s: events %d to %d of epoch %s missed by"
                " this node's Redis subscription",
                key[1],
                key[0],
                last + 1,
                offset - 1,
                epoch,
            )

    def _resubscribed(self, channels):
        """The subscription was made again after a reconnection: the next
        event of each channel tells whether some were missed meanwhile (a
        gap) or Redis restarted (a new epoch)."""
        self._gaps_logged.clear()


_UNSET = object()


def _ignore(_error):
    pass


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)
