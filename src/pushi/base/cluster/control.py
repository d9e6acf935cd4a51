"""The control channel of a cluster: commands one node gives the others.

Broadcasts go to ``pushi:ctl`` (every node subscribes to it), targeted
commands to ``pushi:node:<id>`` (the node ``id`` alone).  A message is JSON
``{"command": ..., "node": <sender's id>, "origin": ..., "data": {...}}``
(``origin``: random, one per process, so that a node knows its own
broadcasts whatever its id at the time).  Handlers are registered by
command name and run on the loop thread with ``(data, sender)``; a node
ignores its own broadcasts unless a handler asks for them (``own=True``):
it acted locally before it broadcast.

Redis pub/sub delivers at most once: a command published while a node's
subscription was away is lost for that node.  ``on_gap`` hooks run when the
subscription was made again after such a time, for what can be repaired
(the apps poller takes app changes in anyway; session tokens are checked
again).  Loop thread only, as ``net/redis``.
"""

import json
import logging
import os

logger = logging.getLogger("pushi")

BROADCAST = "pushi:ctl"
""" The channel every node subscribes to """


def node_channel(node_id):
    """The channel of one node's targeted commands."""
    return "pushi:node:%s" % node_id


class Control:
    """Sends and receives the commands of the cluster through ``redis`` (a
    ``pushi.net.redis.Redis``) and ``subscriber`` (its ``Subscriber``), as
    node ``node_id`` (None until the node has one: broadcasts only, then
    ``rename``).

    ``on(command, handler, own=False)`` registers ``handler(data, sender)``;
    ``broadcast(command, data, then)`` and ``send(node_id, command, data,
    then)`` publish (``then(receivers_or_error)`` once Redis answered:
    the number of subscribed connections that got it, or the error).
    ``start(confirmed)`` subscribes, ``close()`` unsubscribes; ``rename``
    follows a node that registered again under a new id.

    The subscriber's ``on_message`` (and ``on_resubscribed``) is chained:
    messages of the control channels are taken here, every other one goes
    to the callback set before ``start`` (the broker's).  A dispatcher of
    its own may call ``handle(channel, data)`` instead (True when taken)."""

    def __init__(self, redis, subscriber, node_id):
        self.redis = redis
        self.subscriber = subscriber
        self.node_id = None if node_id is None else str(node_id)
        self.origin = os.urandom(8).hex()
        self.handlers = {}
        self.on_gap = []
        """ Hooks ``hook()`` run when the control subscription was made
        again after a reconnection (commands may have been lost) """
        self.received = 0
        """ Commands handled so far (own broadcasts ignored not counted) """
        self._channels = {BROADCAST.encode()}
        if self.node_id is not None:
            self._channels.add(node_channel(self.node_id).encode())
        self._subscribed = set()
        # control channels subscribed or awaiting Redis's confirmation
        self._next_message = None
        self._next_resubscribed = None
        self._next_up = None
        self._started = False
        self._unknown = set()

    def on(self, command, handler, own=False):
        """Runs ``handler(data, sender)`` for each ``command`` received;
        with ``own``, also for this node's own broadcasts."""
        self.handlers[command] = (handler, own)

    # life cycle (loop thread)

    def start(self, confirmed=None):
        """Subscribes both control channels (now if the subscription is up,
        else as soon as it is); ``confirmed(error)`` once Redis confirmed
        both (``error`` None) or one failed."""
        if not self._started:
            self._started = True
            subscriber = self.subscriber
            self._next_message = subscriber.on_message
            self._next_resubscribed = subscriber.on_resubscribed
            self._next_up = subscriber.on_up
            subscriber.on_message = self._message
            subscriber.on_resubscribed = self._resubscribed
            subscriber.on_up = self._up
        self._subscribe(list(self._channels - self._subscribed), confirmed)

    def close(self):
        """Unsubscribes both control channels (the chain stays)."""
        self._started = False
        for channel in self._channels:
            self.subscriber.unsubscribe(channel)
        self._subscribed.clear()

    @property
    def ready(self):
        """True while both control channels are subscribed (confirmed)."""
        return self._channels.issubset(self.subscriber.channels)

    def _up(self, run_id):
        if self._next_up is not None:
            self._next_up(run_id)
        if self._started and self._channels - self._subscribed:
            # subscribed before the subscription was up (or lost before
            # Redis confirmed): now; the confirmed ones it makes again
            self._subscribe(list(self._channels - self._subscribed), None)

    def rename(self, node_id, confirmed=None):
        """This node registered again as ``node_id``: its targeted channel
        moves there."""
        old = None if self.node_id is None else node_channel(self.node_id).encode()
        self.node_id = str(node_id)
        new = node_channel(self.node_id).encode()
        if new == old:
            return
        self._channels.add(new)
        if old is not None:
            self._channels.discard(old)
            self._subscribed.discard(old)
            if self._started:
                self.subscriber.unsubscribe(old)
        if self._started:
            self._subscribe([new], confirmed)

    def _subscribe(self, channels, confirmed):
        waiting = [len(channels)]
        failed: list = []
        if not channels and confirmed is not None:
            confirmed(None)

        def done(channel, error):
            if error is not None:
                self._subscribed.discard(channel)
                if not failed:
                    failed.append(error)
                    if self.subscriber.up:
                        logger.warning(
                            "Cluster control channel not subscribed: %s", error
                        )
                    if confirmed is not None:
                        confirmed(error)
                return
            waiting[0] -= 1
            if not waiting[0] and not failed and confirmed is not None:
                confirmed(None)

        for channel in channels:
            self._subscribed.add(channel)
            self.subscriber.subscribe(
                channel, lambda error, channel=channel: done(channel, error)
            )

    # sending (loop thread)

    def broadcast(self, command, data=None, then=None):
        """Publishes ``command`` to every node (this one included, where
        it is ignored unless its handler is ``own``)."""
        return self._publish(BROADCAST, command, data, then)

    def send(self, node_id, command, data=None, then=None):
        """Publishes ``command`` to node ``node_id`` alone."""
        return self._publish(node_channel(node_id), command, data, then)

    def _publish(self, channel, command, data, then):
        message = json.dumps(
            {
                "command": command,
                "node": self.node_id,
                "origin": self.origin,
                "data": data or {},
            },
            separators=(",", ":"),
        )

        def published(reply):
            if isinstance(reply, Exception):
                logger.warning(
                    "Cluster command %s not sent to the other nodes: %s",
                    command,
                    reply,
                )
            if then is not None:
                then(reply)

        return self.redis.call(published, "PUBLISH", channel, message)

    # receiving (loop thread)

    def _message(self, channel, data):
        if not self.handle(channel, data) and self._next_message is not None:
            self._next_message(channel, data)

    def handle(self, channel, data):
        """Handles a message of the subscription: True if it was one of the
        control channels (the message handled or dropped)."""
        if channel not in self._channels:
            return False
        if data.startswith(b"\x00"):
            return True  # a liveness probe sharing the node's channel
        try:
            message = json.loads(data)
            command = message["command"]
            sender = message.get("node")
            sender = None if sender is None else str(sender)
            body = message.get("data") or {}
            if not isinstance(command, str) or not isinstance(body, dict):
                raise ValueError(command)
        except (ValueError, TypeError, KeyError):
            logger.warning("An unreadable cluster command was dropped: %r", data[:200])
            return True
        handler = self.handlers.get(command)
        if handler is None:
            # a newer node's, during an upgrade: said once per name
            if command not in self._unknown and len(self._unknown) < 100:
                self._unknown.add(command)
                logger.warning("Unknown cluster commands %r are dropped", command[:100])
            return True
        handler, own = handler
        if not own and message.get("origin") == self.origin:
            return True
        self.received += 1
        try:
            handler(body, sender)
        except Exception:
            logger.exception("The cluster command %s failed", command)
        return True

    def _resubscribed(self, channels):
        if self._next_resubscribed is not None:
            self._next_resubscribed(channels)
        if any(channel in self._channels for channel in channels):
            logger.warning(
                "Cluster control channel subscribed again: commands sent"
                " meanwhile were lost; repairing what can be"
            )
            for hook in list(self.on_gap):
                try:
                    hook()
                except Exception:
                    logger.exception("a control gap hook failed")
