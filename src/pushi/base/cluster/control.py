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
subscription was away would be lost for that node.  So the script that
publishes a command also appends it to its channel's journal, a Redis
stream ``<channel>:log`` of about ``JOURNAL_LENGTH`` entries that expires
``JOURNAL_TTL`` seconds after its last command, and the message carries
the entry's ``id``.  A node keeps, per control channel, the entry up to
which it has every command; when its subscription is made again it reads
the journal after that entry and applies what it missed, in order and
once: the commands received meanwhile wait for it, and those applied from
the journal are not applied again when they also arrive.  Past that bound
(the entries it needed trimmed, or the journal expired while the
subscription was away longer than its TTL) commands may have been lost:
it is logged and counted (``pushi_cluster_control_lost_total``).  The
``on_gap`` hooks run at each re-subscription anyway, for what can be read
again (the apps from the store, session tokens from Redis).

Questions and their answers (``cluster/sockets``) go outside the journal
(``broadcast(..., journal=False)``, ``reply``): worth nothing once the
asker gave up.  The asker waits for as many answers as ``PUBLISH`` said
received the question, a bound of time at most (``Gathering``).  Loop
thread only, as ``net/redis``.
"""

import json
import logging
import os
import re
import time

from prometheus_client import Counter

from pushi.net.redis import ReplyError, Script

logger = logging.getLogger("pushi")

BROADCAST = "pushi:ctl"
""" The channel every node subscribes to """

JOURNAL_LENGTH = 10000
""" Commands a channel's journal keeps at least (``XADD MAXLEN ~``) """

JOURNAL_TTL = 3600
""" Seconds a channel's journal lives after its last command """

PAGE = 1000
""" Journal entries read at once while catching up """

RETRY = 1.0
""" Seconds before a journal read that failed (Redis away) is tried again """

# KEYS: the journal; ARGV: channel, message (a JSON object), length, ttl (ms)
# -> the subscribed connections that got the message (PUBLISH's answer)
PUBLISH_SCRIPT = Script(
    """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'm', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('PUBLISH', ARGV[1],
  string.sub(ARGV[2], 1, -2) .. ',"id":"' .. id .. '"}')
"""
)

_ENTRY_ID = re.compile(r"^([0-9]+)-([0-9]+)\Z")


def node_channel(node_id):
    """The channel of one node's targeted commands."""
    return "pushi:node:%s" % node_id


class Gathering:
    """A question broadcast on the control channel and the wait for the
    other nodes' answers: ``thens`` run once, when as many nodes answered
    as ``PUBLISH`` said received the question (``asked``, less this
    node), or after ``wait`` seconds on ``loop`` (a ``NetiusLoop``),
    whichever comes first, or at once if the question could not be
    sent.  ``answered`` holds who answered (each counted once)."""

    __slots__ = ("thens", "answered", "expected", "timer", "done")

    def __init__(self, loop, wait, then):
        self.thens = [then]
        self.answered = set()
        self.expected = None
        """ The other nodes that received the question (None until
        Redis said) """
        self.done = False
        self.timer = loop.later(wait, self.finish)

    def asked(self, receivers):
        """The question's ``then``: PUBLISH's receivers, or its error."""
        if isinstance(receivers, Exception):
            self.finish()
            return
        # every node's control subscription got it, this one's too
        self.expected = int(receivers) - 1
        self._check()

    def answer(self, who):
        """``who`` (a node's origin) answered."""
        self.answered.add(who)
        self._check()

    @property
    def missing(self):
        """The nodes that received the question and did not answer."""
        return max(0, (self.expected or 0) - len(self.answered))

    def _check(self):
        if self.expected is not None and len(self.answered) >= self.expected:
            self.finish()

    def cancel(self):
        """Nobody waits any more: the ``thens`` will not run."""
        self.thens = []
        self.finish()

    def finish(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.done:
            return
        self.done = True
        thens, self.thens = self.thens, []
        for then in thens:
            then()


def journal_key(channel):
    """The journal (a stream) of a control channel's commands."""
    return _bytes(channel) + b":log"


def _entry_id(value):
    """A stream entry id (``"<ms>-<seq>"``, str or bytes) as a comparable
    pair; None if it is not one."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    match = _ENTRY_ID.match(value)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def _later(one, other):
    return other if one is None or (other is not None and other > one) else one


class _Journal:
    """Where this node stands in one control channel's journal."""

    __slots__ = ("key", "base", "upto", "reading", "held", "generation")

    def __init__(self, channel):
        self.key = journal_key(channel)
        self.base = None
        """ The entry up to which this node has every command (None until
        the journal's end was read) """
        self.upto = None
        """ The last entry applied from the journal: a message up to it
        that arrives afterwards is a duplicate """
        self.reading = False
        """ True while catching up: the messages received wait in ``held`` """
        self.held = []
        self.generation = 0
        """ One more at each read started: an older read's replies are
        dropped """


class Control:
    """Sends and receives the commands of the cluster through ``redis`` (a
    ``pushi.net.redis.Redis``) and ``subscriber`` (its ``Subscriber``), as
    node ``node_id`` (None until the node has one: broadcasts only, then
    ``rename``); its counters in ``registry`` (a Prometheus registry, or
    None).

    ``on(command, handler, own=False)`` registers ``handler(data, sender)``;
    ``broadcast(command, data, then)`` and ``send(node_id, command, data,
    then)`` publish (``then(receivers_or_error)`` once Redis answered:
    the number of subscribed connections that got it, or the error);
    ``reply`` answers one node outside the journal, and ``Gathering``
    waits for the answers to a question broadcast.
    ``start(confirmed)`` subscribes, ``close()`` unsubscribes; ``rename``
    follows a node that registered again under a new id.

    The subscriber's ``on_message`` (and ``on_resubscribed``, ``on_up``,
    ``on_down``) is chained: messages of the control channels are taken
    here, every other one goes to the callback set before ``start`` (the
    broker's).  A dispatcher of its own may call ``handle(channel, data)``
    instead (True when taken)."""

    def __init__(self, redis, subscriber, node_id, registry=None):
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
        self.caught_up = Counter(
            "pushi_cluster_control_caught_up",
            "Cluster commands this node applied from the journal, missed while"
            " its control subscription was away",
            registry=registry,
        )
        self.lost = Counter(
            "pushi_cluster_control_lost",
            "Times this node's control subscription was away past what the"
            " journal keeps (cluster commands may have been lost)",
            registry=registry,
        )
        self._channels = {BROADCAST.encode()}
        if self.node_id is not None:
            self._channels.add(node_channel(self.node_id).encode())
        self._subscribed = set()
        # control channels subscribed or awaiting Redis's confirmation
        self._journals = {}
        self._down_at = None
        # when the subscription went down (how long it was away)
        self._run_id = None
        # the Redis of the journals read so far
        self._lost_since = None
        # the time away for which a loss was said
        self._next_message = None
        self._next_resubscribed = None
        self._next_up = None
        self._next_down = None
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
            self._next_down = subscriber.on_down
            subscriber.on_message = self._message
            subscriber.on_resubscribed = self._resubscribed
            subscriber.on_up = self._up
            subscriber.on_down = self._down
            self._run_id = subscriber.run_id
        self._subscribe(list(self._channels - self._subscribed), confirmed)

    def close(self):
        """Unsubscribes both control channels (the chain stays)."""
        self._started = False
        for channel in self._channels:
            self.subscriber.unsubscribe(channel)
        self._subscribed.clear()
        for journal in self._journals.values():
            journal.generation += 1
        self._journals.clear()

    @property
    def ready(self):
        """True while both control channels are subscribed (confirmed)."""
        return self._channels.issubset(self.subscriber.channels)

    def _up(self, run_id):
        if self._next_up is not None:
            self._next_up(run_id)
        if self._run_id is not None and run_id != self._run_id:
            # a restarted Redis, empty: its journals hold only what was
            # sent since (their ids may even be lower than the old ones)
            for journal in self._journals.values():
                journal.generation += 1
                if journal.reading:
                    self._caught_up(journal)
                if journal.base is not None:
                    journal.base = (0, 0)
                journal.upto = None
        self._run_id = run_id
        if self._started and self._channels - self._subscribed:
            # subscribed before the subscription was up (or lost before
            # Redis confirmed): now; the confirmed ones it makes again
            self._subscribe(list(self._channels - self._subscribed), None)

    def _down(self, error):
        if self._down_at is None:
            self._down_at = time.monotonic()
        if self._next_down is not None:
            self._next_down(error)

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
            journal = self._journals.pop(old, None)
            if journal is not None:
                journal.generation += 1
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
            self._confirmed(channel)
            if self.ready:
                self._down_at = None
            waiting[0] -= 1
            if not waiting[0] and not failed and confirmed is not None:
                confirmed(None)

        for channel in channels:
            self._subscribed.add(channel)
            self.subscriber.subscribe(
                channel, lambda error, channel=channel: done(channel, error)
            )

    # sending (loop thread)

    def broadcast(self, command, data=None, then=None, journal=True):
        """Publishes ``command`` to every node (this one included, where
        it is ignored unless its handler is ``own``); without ``journal``,
        outside the journal (a question worth nothing once its asker gave
        up: lost for a node whose subscription is away)."""
        return self._publish(BROADCAST, command, data, then, journal)

    def send(self, node_id, command, data=None, then=None):
        """Publishes ``command`` to node ``node_id`` alone."""
        return self._publish(node_channel(node_id), command, data, then)

    def reply(self, node_id, command, data=None, then=None):
        """Publishes ``command`` to node ``node_id`` alone, outside the
        journal: an answer that is worth nothing once its asker gave up
        (lost if its subscription is away)."""
        return self._publish(node_channel(node_id), command, data, then, False)

    def _publish(self, channel, command, data, then, journal=True):
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

        if not journal:
            return self.redis.call(published, "PUBLISH", channel, message)
        return self.redis.evalsha(
            published,
            PUBLISH_SCRIPT,
            keys=(journal_key(channel),),
            args=(channel, message, JOURNAL_LENGTH, JOURNAL_TTL * 1000),
        )

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
        message = self._read(data)
        if message is None:
            return True
        entry = _entry_id(message.get("id"))
        journal = self._journals.get(channel)
        if entry is not None and journal is not None:
            if journal.reading:
                journal.held.append((entry, message))
                if len(journal.held) > JOURNAL_LENGTH:
                    self._give_up(journal, "too many commands came meanwhile")
                return True
            if journal.upto is not None and entry <= journal.upto:
                return True  # applied from the journal already
            journal.base = _later(journal.base, entry)
        self._apply(message)
        return True

    def _read(self, data):
        """A command's message (JSON) as a dict with a str ``command`` and
        a dict ``data``; None (logged) if it is not one."""
        try:
            message = json.loads(data)
            command = message["command"]
            body = message.get("data") or {}
            if not isinstance(command, str) or not isinstance(body, dict):
                raise ValueError(command)
        except (ValueError, TypeError, KeyError):
            logger.warning("An unreadable cluster command was dropped: %r", data[:200])
            return None
        message["data"] = body
        return message

    def _apply(self, message):
        """Runs a command's handler; True if one ran (not an unknown
        command, nor this node's own broadcast)."""
        command = message["command"]
        handler = self.handlers.get(command)
        if handler is None:
            # a newer node's, during an upgrade: said once per name
            if command not in self._unknown and len(self._unknown) < 100:
                self._unknown.add(command)
                logger.warning("Unknown cluster commands %r are dropped", command[:100])
            return False
        handler, own = handler
        if not own and message.get("origin") == self.origin:
            return False
        sender = message.get("node")
        sender = None if sender is None else str(sender)
        self.received += 1
        try:
            handler(message["data"], sender)
        except Exception:
            logger.exception("The cluster command %s failed", command)
        return True

    def _resubscribed(self, channels):
        if self._next_resubscribed is not None:
            self._next_resubscribed(channels)
        if any(channel in self._channels for channel in channels):
            logger.warning(
                "Cluster control channel subscribed again: the commands sent"
                " meanwhile are read from the journal"
            )
            for channel in channels:
                if channel in self._channels:
                    self._confirmed(channel)
            if self.ready:
                self._down_at = None
            for hook in list(self.on_gap):
                try:
                    hook()
                except Exception:
                    logger.exception("a control gap hook failed")

    # the journal (loop thread)

    def _confirmed(self, channel):
        """A control channel is subscribed (again): this node learns where
        the journal ends, or catches up with what it missed."""
        journal = self._journals.get(channel)
        if journal is None:
            journal = self._journals[channel] = _Journal(channel)
        journal.generation += 1
        if journal.base is None:
            self._read_end(journal, journal.generation)
        else:
            journal.reading = True
            self._catch_up(
                journal, journal.generation, journal.base, True, self._down_at
            )

    def _read_end(self, journal, generation):
        """The journal's last entry becomes this node's base: what came
        before the subscription is not this node's."""

        def read(reply):
            if generation != journal.generation:
                return
            if isinstance(reply, Exception):
                self._retry(
                    journal, generation, lambda: self._read_end(journal, generation)
                )
                return
            last = _entry_id(reply[0][0]) if reply else None
            journal.base = _later(journal.base, last or (0, 0))

        self.redis.call(read, "XREVRANGE", journal.key, "+", "-", "COUNT", 1)

    def _catch_up(self, journal, generation, after, first, since):
        """Reads the journal after ``after`` (one page) and applies it; at
        the ``first`` page also checks that nothing this node needed is
        gone (``since``: when the subscription went down, or None)."""
        info = []

        def checked(reply):
            info.append(reply)

        def entries(reply):
            if generation != journal.generation:
                return
            if isinstance(reply, Exception) or (
                info and isinstance(info[0], Exception) and not _missing(info[0])
            ):
                self._retry(
                    journal,
                    generation,
                    lambda: self._catch_up(journal, generation, after, first, since),
                )
                return
            if first:
                self._check(after, info[0], since)
            last = after
            for ident, fields in reply:
                entry = _entry_id(ident)
                if entry is None:
                    continue
                last = entry
                journal.upto = journal.base = _later(journal.base, entry)
                message = self._read(_field(fields, b"m"))
                if message is not None and self._apply(message):
                    self.caught_up.inc()
            if len(reply) >= PAGE:
                self._catch_up(journal, generation, last, False, since)
            else:
                self._caught_up(journal)

        start = b"(%d-%d" % after
        if first:
            self.redis.call(checked, "XINFO", "STREAM", journal.key)
        self.redis.call(entries, "XRANGE", journal.key, start, "+", "COUNT", PAGE)

    def _check(self, after, info, since):
        """Whether the journal (``XINFO STREAM``'s ``info``) still holds
        everything after ``after``: neither trimmed past it nor expired
        while the subscription was away (since ``since``)."""
        if isinstance(info, Exception):
            # no journal: no command since it expired (or since Redis
            # restarted empty); expired while away, it may have had some
            away = 0 if since is None else time.monotonic() - since
            if away > JOURNAL_TTL:
                self._lost(
                    "its journal expired while the subscription was away for %ds"
                    % away,
                    since,
                )
            return
        fields = dict(zip(info[::2], info[1::2], strict=False))
        if (fields.get(b"entries-added") or 0) <= (fields.get(b"length") or 0):
            return  # never trimmed
        # trimmed oldest first: lost if the first entry kept (or the last
        # added, none kept) comes after ``after`` (in all, entries may be
        # lost only when more were added after it than the journal keeps)
        first = fields.get(b"first-entry")
        kept = _entry_id(first[0] if first else fields.get(b"last-generated-id"))
        if kept is not None and kept > after:
            self._lost(
                "its journal keeps the last %d commands only" % JOURNAL_LENGTH, since
            )

    def _caught_up(self, journal):
        """The journal is read: the commands received meanwhile follow,
        those the journal had already dropped."""
        journal.reading = False
        held, journal.held = journal.held, []
        for entry, message in held:
            if journal.upto is not None and entry <= journal.upto:
                continue
            journal.base = _later(journal.base, entry)
            self._apply(message)

    def _give_up(self, journal, why):
        """Stops catching up: what was received meanwhile is applied."""
        journal.generation += 1
        self._lost(why, None)
        self._caught_up(journal)

    def _lost(self, why, since):
        """Says (once per time the subscription was away, ``since``) that
        commands may have been lost."""
        if since is not None:
            if since == self._lost_since:
                return
            self._lost_since = since
        self.lost.inc()
        logger.warning(
            "Cluster commands sent while this node's control subscription was"
            " away may be lost: %s",
            why,
        )

    def _retry(self, journal, generation, read):
        def again():
            if generation == journal.generation:
                read()

        self.redis.loop.later(RETRY, again)


def _missing(error):
    """Whether ``error`` says the journal does not exist."""
    return isinstance(error, ReplyError) and "no such key" in str(error)


def _field(fields, name):
    """The value of ``name`` in a stream entry's flat field list."""
    for index in range(0, len(fields) - 1, 2):
        if fields[index] == name:
            return fields[index + 1]
    return b""


def _bytes(value):
    return value.encode() if isinstance(value, str) else value
