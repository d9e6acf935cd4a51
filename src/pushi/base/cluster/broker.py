"""The broker seam over Redis: every event of every node through one
script, every delivery from every node's subscription.

Publishing (``publish`` from any thread, ``send`` on the loop) runs
``PUBLISH_SCRIPT`` once per channel of the event, pipelined on the node's
command connection (the calls of one loop turn go out in one write).  The
script, atomic in Redis, gives the event the channel's next ``offset``
(``HINCRBY pushi:{<app>}:ch:<channel>:meta s 1``) and the channel's
``epoch`` (``HGET ... e``, made when missing: a channel seen for the first
time, or after its meta key expired or Redis restarted empty), publishes it
on ``pushi:m:{<app>}:<channel>`` and returns ``{offset, epoch}``.  The
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
from pushi.proto import errors, messages

from ..broker import Event
from ..history import OFF, MemoryHistory

logger = logging.getLogger("pushi")

LINGER = 2.0
""" Seconds a channel's bus stays subscribed after its last subscriber
here left """

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
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[1], epoch .. ':' .. offset .. ':' .. ARGV[3])
return {offset, epoch}
"""
)
""" KEYS: the channel's meta key; ARGV: its bus, a new epoch (used when the
channel has none), the event's body, ``META_TTL``.  Returns ``{offset,
epoch}``. """


def meta_key(app_id, channel):
    """The hash of a channel's ``s`` (top offset) and ``e`` (epoch)."""
    return "pushi:{%s}:ch:%s:meta" % (app_id, channel)


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
        self._queue = collections.deque()
        self._scheduled = False
        self._awaiting = 0
        # (app_id, channel) -> [epoch, last offset delivered]
        self._positions = {}
        # (app_id, channel) -> listens awaiting Redis's confirmation
        self._listening = collections.defaultdict(int)
        self._lingering = {}
        # channels whose subscription failed (Redis down): made again when
        # the subscription is back, if they have subscribers here by then
        self._deaf = set()
        self._epoch_prefix = os.urandom(4).hex()
        self._epochs = 0
        self._failing = False
        self._gaps_logged = set()
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
        def published(error):
            self._awaiting -= 1
            if error is None:
                self._succeeded()
                self.engine.announce(event)
            else:
                self._failed(error, "rest")
            if done is not None:
                done(error)

        return published

    def send(self, event):
        """Publishes ``event`` emitted on the loop (client and member
        events)."""
        try:
            self._publish(event, self._sent(event))
        except Exception:
            logger.exception("publishing an event failed")

    def _sent(self, event):
        def sent(error):
            if error is None:
                self._succeeded()
                return
            self._failed(error, "socket")
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
        ``then(error)`` once every reply came (``error`` the first)."""
        channels = event.channels
        left = [len(channels), None]

        def replied(reply):
            if isinstance(reply, Exception) and left[1] is None:
                left[1] = reply
            left[0] -= 1
            if not left[0]:
                then(left[1])

        app_id = event.app_id
        for channel in channels:
            body = messages.dumps(
                [app_id, channel, event.name, event.data, event.exclude, event.extra]
            )
            self._epochs += 1
            self.commands.evalsha(
                replied,
                PUBLISH_SCRIPT,
                (meta_key(app_id, channel),),
                (
                    bus(app_id, channel),
                    "%s-%d" % (self._epoch_prefix, self._epochs),
                    body,
                    META_TTL,
                ),
            )

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
            left = self._listening[key] - 1
            if left:
                self._listening[key] = left
            else:
                del self._listening[key]
            if error is not None:
                self._deaf.add(key)
            then(error)

        self.subscriber.subscribe(bus(app_id, channel), confirmed)

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
        if key in self._listening:
            return
        channel = self.engine.registry.channel(*key)
        if channel is not None and channel.sessions:
            return
        self.subscriber.unsubscribe(bus(*key))
        # what comes after a new subscription starts a new order
        self._positions.pop(key, None)
        self._gaps_logged.discard(key)

    # delivering

    def _message(self, _bus, data):
        """A message of a channel's bus: checked against the channel's
        order, then delivered to this node's sockets."""
        try:
            epoch, offset, body = data.split(b":", 2)
            offset = int(offset)
            epoch = epoch.decode("ascii")
            app_id, channel, name, payload, exclude, extra = json.loads(body)
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
        self.engine.deliver(
            Event(app_id, (channel,), name, payload, exclude, extra, (offset, epoch))
        )

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


def _ignore(_error):
    pass


class BusPositions(MemoryHistory):
    """A cluster node's recovery history until one lives in Redis: events
    carry the positions of the bus (``Event.position``), this process keeps
    none, so a socket that comes back is told it recovered nothing
    (``history_off``) rather than given a position of one process, and
    subscription data carries no position."""

    def append(self, app_id, channel, text, limits, now):
        return None

    def position(self, app_id, channel, limits, now):
        return None

    def recover(self, app_id, channel, epoch, offset, limits, now):
        return False, OFF

    def tap(self, app_id, channel, limits):
        return None
