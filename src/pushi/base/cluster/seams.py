"""The Redis twins of the presence, occupancy and users seams: the state
every node of a cluster shares, kept by the scripts of ``cluster/lua``.

The changes (``join``, ``leave``, ``joined``, ...) run on the loop thread
through the node's command connection (``pushi.net.redis.Redis``): their
answer comes to ``then`` on the loop, once Redis has decided.  When Redis
cannot answer (down, overdue, overloaded, or the node has no id yet),
``failed(error)`` runs instead (a ``pushi.net.redis.RedisError``; without
``failed`` it is logged): such a change may or may not have been made in
Redis, and ``reregister`` sets it right.

Each twin also keeps what this node holds (its ledger: sockets per
channel, per member, per signed-in user, per app), as the engine told it:
``reregister`` writes the ledger to Redis as this node's share and zeroes
what Redis holds for this node and the ledger does not, in one loop turn
(so the changes made after it add up).  Run it after Redis restarted
empty, after the node was reaped, or after any reconnection (a change
that failed may have been made or not).

The reads (``members``, ``count``, ``channels``, ``connections``,
``online``) block: they are for the REST workers' threads, through a
redis-py client (``blocking_client``) whose every read is bounded by its
socket timeout; they raise ``redis.exceptions.RedisError`` when Redis
does not answer in time.  On the loop, ``fetch_members``, ``fetch_count``
and ``fetch_online`` read through the command connection instead.
"""

import functools
import json
import logging
import time
from typing import Any, NamedTuple, Protocol

from pushi.net.redis import ConnectionDown, run_callback

from ..presence import Joined, Member
from . import lua
from .linger import Linger
from .reaper import Reaper

logger = logging.getLogger("pushi")

READ_TIMEOUT = 1.0
""" Seconds a blocking read waits for Redis (connection included) """

BULK = 500
""" Entries per re-registration script call """


def blocking_client(url, timeout=READ_TIMEOUT):
    """A redis-py client for the reads on REST threads: each read waits
    ``timeout`` at most, retried once on a fresh connection only when the
    pooled one turns out to be gone (Redis restarted)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )


def encode_member(member):
    """A member as the members hash holds it: JSON ``[user_info, peer]``."""
    return json.dumps([member.user_info, member.peer], separators=(",", ":"))


def decode_member(data):
    user_info, peer = json.loads(data)
    return Member(user_info, peer is True)


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


WARN_EVERY = 10.0
""" Seconds between two warnings of changes that failed unheard (one per
change would flood the log while Redis is down) """

_unheard = {"last": 0.0, "count": 0}


def _failed(failed, error):
    if failed is not None:
        failed(error)
        return
    _unheard["count"] += 1
    now = time.monotonic()
    if now - _unheard["last"] >= WARN_EVERY:
        logger.warning(
            "Redis: %d cluster state changes failed (%s); re-registration"
            " sets them right",
            _unheard["count"],
            error,
        )
        _unheard["last"] = now
        _unheard["count"] = 0


def _members(flat):
    """The members of a flat ``HGETALL`` reply, by user id."""
    return {
        _text(flat[index]): decode_member(flat[index + 1])
        for index in range(0, len(flat), 2)
    }


def _count(ledger, key, delta):
    """Adds ``delta`` to a ledger's count (gone at 0); the count before."""
    before = ledger.get(key, 0)
    after = before + delta
    if after > 0:
        ledger[key] = after
    else:
        ledger.pop(key, None)
    return before


def _chunks(items, size=BULK):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Steps:
    """A node's changes of a loop turn (its twins' scripts, each a
    ``lua.Step``), sent at the end of the turn in one ``lua.STEPS`` call
    of at most ``BULK`` steps, in order, each answered as its own script
    would be: a storm of subscribes, presence joins or closes costs a
    script per turn, not per socket.  What must reach Redis after them on
    the connection (a twin's reads and its share's writes) calls ``write``
    first."""

    def __init__(self, redis):
        self.redis = redis
        self.queued: list[tuple] = []
        self.applied: list = []
        """ What runs once Redis has answered the queued steps
        (``after_applied``) """

    def after_applied(self, work):
        """Runs ``work()`` once Redis has answered the steps queued so far
        (applied them: a read on any node sees them), or they failed."""
        self.applied.append(work)

    def add(self, reply, script, keys, args):
        """``script`` (a ``lua.Step``) with ``keys`` and ``args`` at the end
        of the turn: ``reply(value)`` with its reply or the error."""
        if not self.queued:
            self.redis.loop.soon(self.write)
        self.queued.append((reply, script, keys, args))

    def write(self):
        """Sends the steps queued so far; what waited for them runs after
        their last answer."""
        queued, self.queued = self.queued, []
        applied, self.applied = self.applied, []
        then = functools.partial(_run_each, applied) if applied else None
        sent = False
        try:
            self._send(queued, then)
            sent = bool(queued)
        finally:
            if then is not None and not sent:
                then()

    def _send(self, queued, then):
        chunks = list(_chunks(queued))
        for index, chunk in enumerate(chunks):
            last = then if index == len(chunks) - 1 else None
            replies = [step[0] for step in chunk]
            if len(chunk) == 1:
                _, script, keys, args = chunk[0]
                answer = functools.partial(_answer_one, replies[0], last)
                self.redis.evalsha(answer, script, keys, args)
                continue
            all_keys: list = []
            all_args: list = []
            for _, script, keys, args in chunk:
                all_keys += keys
                all_args += [script.index, len(keys), len(args), *args]
            self.redis.evalsha(
                functools.partial(_answer_each, replies, last),
                lua.STEPS,
                all_keys,
                all_args,
            )


def _answer_one(reply, then, value):
    """A step alone in its call: its reply, then ``then()``."""
    try:
        reply(value)
    finally:
        if then is not None:
            then()


def _answer_each(replies, then, value):
    """Hands each of ``replies`` its step's answer in ``value`` (the
    ``STEPS`` reply), or the error; one that fails is logged, as a
    script's own callback would be, and the others still get theirs;
    then ``then()``."""
    try:
        if isinstance(value, Exception):
            for reply in replies:
                run_callback(reply, value)
        else:
            for reply, each in zip(replies, value, strict=True):
                run_callback(reply, each)
    finally:
        if then is not None:
            then()


def _run_each(works):
    for work in works:
        work()


class _Twin:
    kinds: tuple[str, ...] = ()
    """ The kinds of owned entries (``cluster/lua``) this twin writes """

    def __init__(self, redis, node_id, reader=None):
        self.redis = redis
        """ The command connection (``pushi.net.redis.Redis``, loop thread) """
        self._node_id = node_id
        self.reader = reader
        """ A blocking redis-py client for the reads (``blocking_client``) """
        self.registrations = 0
        """ ``reregister`` calls so far """
        self.used: set = set()
        """ The node ids this twin wrote under since its last
        ``reregister`` (more than one when the node's id changed) """
        self.linger = Linger(redis)
        """ The webhook linger its scripts keep (``cluster/linger``; the
        ``ClusterState``'s, shared by its twins) """
        self.steps = Steps(redis)
        """ Where its changes wait for the end of the turn (the
        ``ClusterState``'s, shared by its twins) """

    @property
    def node_id(self):
        """This node's id now (a string; None before it has one): the
        ``node_id`` given, or what it returns when it is callable (``lambda:
        node.id``)."""
        node_id = self._node_id() if callable(self._node_id) else self._node_id
        return None if node_id is None else str(node_id)

    @node_id.setter
    def node_id(self, value):
        self._node_id = value

    def _eval(self, script, keys, args, then, failed):
        """Runs ``script`` (a ``lua.Step``) with ``keys(node_id)`` and the
        node id then ``args`` at the end of the turn (``Steps``):
        ``then(reply)`` or ``failed(error)``."""
        node_id = self.node_id
        if node_id is None:
            _failed(failed, ConnectionDown("not registered in the cluster yet"))
            return

        def reply(value):
            if isinstance(value, Exception):
                _failed(failed, value)
            else:
                then(value)

        self.used.add(node_id)
        self.steps.add(reply, script, keys(node_id), (node_id,) + tuple(args))

    def _read(self, then, failed, *command):
        self.steps.write()

        def reply(value):
            if isinstance(value, Exception):
                _failed(failed, value)
            else:
                then(value)

        self.redis.call(reply, *command)

    def _bulk(self, calls, then, failed):
        """Sends ``calls`` (script, keys, args, convert) in this turn under
        the node id now; ``then(results)`` with each call's converted
        answers, in order, once all came, or ``failed(error)`` once if
        one failed."""
        self.steps.write()
        calls = list(calls)
        results: list[Any] = [()] * len(calls)
        state: dict[str, Any] = {"left": len(calls), "error": None}
        node_id = self.node_id
        if node_id is None:
            _failed(failed, ConnectionDown("not registered in the cluster yet"))
            return
        if not calls:
            then([])
            return
        self.used.add(node_id)

        def done():
            if state["error"] is not None:
                _failed(failed, state["error"])
            else:
                then([item for result in results for item in result])

        for index, (script, keys, args, convert) in enumerate(calls):

            def reply(value, index=index, convert=convert):
                if isinstance(value, Exception):
                    state["error"] = state["error"] or value
                else:
                    results[index] = convert(value)
                state["left"] -= 1
                if not state["left"]:
                    done()

            self.redis.evalsha(reply, script, keys(node_id), (node_id,) + tuple(args))

    # what each twin writes (its ledger), for ``reregister``

    def _holds(self, entry):
        """Whether this node's ledger holds ``entry``."""
        raise NotImplementedError

    def _ledger_entries(self):
        """This node's ledger as entries."""
        raise NotImplementedError

    def _zeroes(self, entries):
        """``entries`` with no socket of this node."""
        raise NotImplementedError

    def _set_calls(self, entries):
        """The script calls that set ``entries`` in Redis."""
        raise NotImplementedError

    def reregister(self, then=None, failed=None):
        """Reads which entries Redis holds for this node, then in one turn
        writes this node's ledger to Redis as its share and zeroes those
        entries the ledger does not hold (see the module);
        ``then(changes)`` (see each twin's ``_set_calls``) once done."""
        then = then or _ignore
        node_id = self.node_id
        if node_id is None:
            _failed(failed, ConnectionDown("not registered in the cluster yet"))
            return

        def listed(reply):
            if isinstance(reply, Exception):
                _failed(failed, reply)
                return
            if node_id != self.node_id:
                # the id changed meanwhile: its own re-registration follows
                then([])
                return
            strays = []
            for item in reply:
                try:
                    entry = tuple(json.loads(item))
                except ValueError:
                    continue
                if entry and entry[0] in self.kinds and not self._holds(entry):
                    strays.append(entry)
            self.registrations += 1
            self.used = set()
            entries = self._ledger_entries() + self._zeroes(strays)
            self._bulk(self._set_calls(entries), then, failed)

        self.redis.call(listed, "SMEMBERS", lua.owned_key(node_id))


class RedisOccupancy(_Twin):
    """Sockets per channel and per app over the whole cluster."""

    kinds = ("sub", "conn")

    def __init__(self, redis, node_id, reader=None):
        _Twin.__init__(self, redis, node_id, reader)
        self.held = {}
        """ (app_id, channel) -> this node's sockets there """
        self.held_connections = {}
        """ app_id -> this node's sockets of the app (``opened``) """
        self.unsure = set()
        """ (app_id, channel) whose leave failed (``settle``) """
        self.changed_connections = set()
        """ app ids whose share ``counted`` changed this turn """

    def hold_until_shared(self, transport):
        if self.steps.queued:
            transport.hold_frames()
            self.steps.after_applied(transport.release_frames)

    def joined(self, app_id, channel, then, failed=None):
        """A socket joined ``channel``: ``then(count, occupied)``, or
        ``then(count, True, lingered=True)`` when occupying it undid its
        lingering vacated (``cluster/linger``: no webhook for either)."""
        app_id, channel = str(app_id), str(channel)
        _count(self.held, (app_id, channel), 1)
        entry, _ms = self.linger.pending(app_id, channel)

        def answered(reply):
            if len(reply) > 2 and reply[2] == 1:
                then(reply[0], True, lingered=True)
            else:
                then(reply[0], reply[1] == 1)

        self._eval(
            lua.OCCUPANCY_JOIN,
            lambda node_id: lua.occupancy_keys(app_id, channel, node_id),
            (app_id, channel, entry),
            answered,
            failed,
        )

    def left(self, app_id, channel, then, failed=None):
        """A socket left ``channel``: ``then(count, vacated)``, or
        ``then(0, True, lingered=True)`` when its vacated lingers
        (``cluster/linger``: its webhook is posted once that is over)."""
        app_id, channel = str(app_id), str(channel)
        _count(self.held, (app_id, channel), -1)
        entry, ms = self.linger.pending(app_id, channel)

        def answered(reply):
            if len(reply) > 2:
                self.linger.wait(entry, reply[2], ms)
                then(reply[0], True, lingered=True)
            else:
                then(reply[0], reply[1] == 1)

        def error(reason):
            self.unsure.add((app_id, channel))
            _failed(failed, reason)

        self._eval(
            lua.OCCUPANCY_LEAVE,
            lambda node_id: lua.occupancy_keys(app_id, channel, node_id),
            (app_id, channel, "0", entry, ms),
            answered,
            error,
        )

    def settle(self, vacated):
        """After Redis restarted empty and the nodes wrote what they hold
        again: ``vacated(app_id, channel)`` for each channel whose leave
        here failed meanwhile and that nobody holds now."""
        unsure, self.unsure = self.unsure, set()
        for app_id, channel in unsure:
            self.fetch_count(
                app_id,
                channel,
                lambda count, app_id=app_id, channel=channel: (
                    vacated(app_id, channel) if not count else None
                ),
                # Redis away again: the next settle asks again
                lambda _error, key=(app_id, channel): self.unsure.add(key),
            )

    def opened(self, app_id, limit, then, failed=None):
        """A socket of an app capped at ``limit`` sockets opens:
        ``then(count)`` with the app's sockets, this one included, or
        ``then(None)`` when the app already has ``limit``.  Not counted
        when refused.  When ``failed`` runs (Redis away) the socket stays
        in this node's share, which the node writes again once Redis is
        back (``reregister``): whether Redis made the count or not, it then
        holds the socket.  (An app with no limit has nothing to decide:
        ``counted``.)"""
        app_id = str(app_id)
        _count(self.held_connections, app_id, 1)

        def answered(reply):
            if reply < 0:
                # a write of the share (``counted``, ``reregister``) may
                # have counted it meanwhile: the next one does not
                self.counted(app_id, -1)
                then(None)
            else:
                then(reply)

        self._eval(
            lua.CONNECTION_OPEN,
            lambda node_id: lua.connection_keys(app_id, node_id),
            (app_id, int(limit)),
            answered,
            failed,
        )

    def counted(self, app_id, delta):
        """A socket of the app opened with no limit to check (``delta``
        1), or one ``counted`` or ``opened`` went (-1): this node's share
        changes at once and is written to Redis once per app at the end of
        the loop turn, with every change of the turn (a connection storm
        costs a script per turn, not per socket; the app's count lags by a
        turn).  Exact beside ``opened``: each of its scripts adds to the
        share as it was written, and a later write sets the share as it is
        then, its socket included."""
        app_id = str(app_id)
        _count(self.held_connections, app_id, delta)
        if not self.changed_connections:
            self.redis.loop.soon(self._write_changed_connections)
        self.changed_connections.add(app_id)

    def _write_changed_connections(self):
        """Sets this node's share of each app ``counted`` changed to what
        it holds (a failure is set right by ``reregister``)."""
        changed, self.changed_connections = self.changed_connections, set()
        held = self.held_connections
        self._bulk(
            self._set_calls(
                [("conn", app_id, held.get(app_id, 0)) for app_id in changed]
            ),
            _ignore,
            None,
        )

    # re-registration

    def _ledger_entries(self):
        return [
            ("sub", app_id, channel, sockets)
            for (app_id, channel), sockets in self.held.items()
        ] + [
            ("conn", app_id, sockets)
            for app_id, sockets in self.held_connections.items()
        ]

    def _holds(self, entry):
        if entry[0] == "sub":
            return tuple(entry[1:3]) in self.held
        return entry[1] in self.held_connections

    @staticmethod
    def _zeroes(strays):
        return [tuple(entry) + (0,) for entry in strays]

    def _set_calls(self, entries):
        """Calls that set the node's sockets of ``entries`` (``("sub",
        app_id, channel, sockets)`` and ``("conn", app_id, sockets)``);
        their changes: ``(app_id, channel, count, change)`` per channel,
        ``change`` 1 (occupied by it), -1 (vacated) or 0."""
        by_app: dict[str, list] = {}
        calls: list[tuple] = []
        for entry in entries:
            if entry[0] == "sub":
                by_app.setdefault(entry[1], []).append((entry[2], int(entry[3])))
            else:
                app_id, sockets = entry[1], int(entry[2])
                calls.append(
                    (
                        lua.CONNECTION_SET,
                        lambda node_id, app_id=app_id: lua.connection_keys(
                            app_id, node_id
                        ),
                        (app_id, sockets),
                        _nothing,
                    )
                )
        for app_id, channels in by_app.items():
            for chunk in _chunks(channels):
                args = [app_id]
                for name, sockets in chunk:
                    args += [name, sockets]

                def keys(node_id, app_id=app_id, chunk=chunk):
                    return [
                        lua.app_key(app_id, "counts"),
                        lua.app_key(app_id, "channels"),
                        lua.owned_key(node_id),
                    ] + [lua.channel_key(app_id, name, "nodes") for name, _ in chunk]

                def convert(reply, app_id=app_id, chunk=chunk):
                    return [
                        (app_id, name, count, change)
                        for (name, _), (count, change) in zip(chunk, reply, strict=True)
                    ]

                calls.append((lua.OCCUPANCY_SET, keys, args, convert))
        return calls

    def fetch_count(self, app_id, channel, then, failed=None):
        """``then(count)`` with the sockets on a channel (a read on the
        loop, where ``count`` would block)."""
        self._read(
            lambda value: then(int(value) if value else 0),
            failed,
            "HGET",
            lua.app_key(app_id, "counts"),
            channel,
        )

    # reads (blocking)

    def count(self, app_id, channel):
        """The sockets on a channel."""
        value = self.reader.hget(lua.app_key(app_id, "counts"), channel)
        return int(value) if value else 0

    def channels(self, app_id, prefix=""):
        """The occupied channels of an app (those starting with
        ``prefix``), with their counts."""
        counts = lua.app_key(app_id, "counts")
        if not prefix:
            found = self.reader.hgetall(counts)
            return {_text(name): int(count) for name, count in found.items()}
        start = prefix.encode("utf-8")
        names = self.reader.zrangebylex(
            lua.app_key(app_id, "channels"), b"[" + start, b"[" + start + b"\xff"
        )
        if not names:
            return {}
        values = self.reader.hmget(counts, names)
        return {
            _text(name): int(count)
            for name, count in zip(names, values, strict=True)
            if count is not None
        }

    def connections(self, app_id):
        """The open sockets of an app (counted by ``opened``)."""
        value = self.reader.get(lua.app_key(app_id, "connections"))
        return int(value) if value else 0


class Announcer(Protocol):
    """Makes the member events that the presence scripts publish in the
    step that decides them: each method returns the broker's publish
    script's key and arguments for the event (``(meta_key, (bus,
    new_epoch, body, ttl))``, see ``cluster/broker``)."""

    def member_added(
        self, app_id: str, channel: str, user_id: str, member: Member, socket_id
    ) -> tuple:
        """``pusher_internal:member_added``, not to ``socket_id``."""

    def member_removed(self, app_id: str, channel: str, user_id: str) -> tuple:
        """``pusher_internal:member_removed``."""


class RedisPresence(_Twin):
    """Presence members over the whole cluster: one per user id.

    With an ``announcer``, a join that makes a member publishes its
    ``member_added`` and a leave that ends one its ``member_removed`` in
    the same atomic step (the engine then sends neither), and a join's
    answer carries the channel's position: member events up to it are
    in its members, those after it are not."""

    kinds = ("pres",)

    def __init__(self, redis, node_id, reader=None, announcer=None):
        _Twin.__init__(self, redis, node_id, reader)
        self.announcer = announcer
        self.held = {}
        """ (app_id, channel, user_id) -> [Member, this node's sockets] """
        self.unsure = set()
        """ (app_id, channel, user_id) whose join or leave failed
        (``settle``) """

    def join(
        self, app_id, channel, user_id, member, limit, then, failed=None, socket_id=None
    ):
        """Adds one socket (``socket_id``) of ``user_id``:
        ``then(Joined(new, members, position, lingered))`` (the members as
        Redis had them once the user was in, decided in the same step;
        ``position`` (offset, epoch) with an announcer, else None;
        ``lingered`` when becoming a member undid the user's lingering
        ``member_removed``, see ``cluster/linger``), or ``then(None)``
        when the user is not a member and the channel already has
        ``limit`` members (0: no limit).  Not counted when refused or when
        ``failed`` runs: the socket is then to be refused."""
        app_id, channel, user_id = str(app_id), str(channel), str(user_id)
        key = (app_id, channel, user_id)
        entry = self.held.get(key)
        if entry is None:
            entry = self.held[key] = [member, 0]
        entry[1] += 1
        registrations = self.registrations

        def refused():
            entry = self.held.get(key)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self.held[key]
            if self.registrations != registrations:
                # a re-registration counted it meanwhile
                self._bulk(
                    self._set_calls([self._entry(key) or (key, member, 0)]),
                    _ignore,
                    None,
                )

        def joined(reply):
            if reply is None:
                refused()
                then(None)
                return
            position = None
            if len(reply) > 2 and reply[2]:
                position = (reply[2][0], _text(reply[2][1]))
            lingered = len(reply) > 3 and reply[3] == 1
            then(Joined(reply[0] == 1, _members(reply[1]), position, lingered))

        def error(reason):
            refused()
            self.unsure.add((app_id, channel, user_id))
            _failed(failed, reason)

        meta, extra = (), ()
        if self.announcer is not None:
            # (not ``key``: ``refused`` reads the ledger's key)
            announced, extra = self.announcer.member_added(
                app_id, channel, user_id, member, socket_id
            )
            meta = _keys(announced)
        pending, _ms = self.linger.pending(app_id, channel, user_id)
        self._eval(
            lua.PRESENCE_JOIN,
            lambda node_id: lua.presence_keys(app_id, channel, node_id) + meta,
            (app_id, channel, user_id, encode_member(member), int(limit or 0))
            + (pending,)
            + tuple(extra),
            joined,
            error,
        )

    def leave(self, app_id, channel, user_id, then, failed=None, linger=True):
        """Takes one socket of ``user_id`` off: ``then(True)`` when it was
        the user's last one anywhere (the member left; its
        ``member_removed`` is published with an announcer), with
        ``lingered=True`` when its ``member_removed`` webhook lingers
        (``cluster/linger``; not with ``linger`` False)."""
        app_id, channel, user_id = str(app_id), str(channel), str(user_id)
        key = (app_id, channel, user_id)
        entry = self.held.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del self.held[key]
        meta, extra = (), ()
        if self.announcer is not None:
            announced, extra = self.announcer.member_removed(app_id, channel, user_id)
            meta = _keys(announced)
        pending, ms = "", 0
        if linger:
            pending, ms = self.linger.pending(app_id, channel, user_id)

        def answered(reply):
            if pending and reply > 1:
                # the deadline of its lingering member_removed
                self.linger.wait(pending, reply, ms)
                then(True, lingered=True)
            else:
                then(reply == 1)

        def error(reason):
            self.unsure.add((app_id, channel, user_id))
            _failed(failed, reason)

        self._eval(
            lua.PRESENCE_LEAVE,
            lambda node_id: lua.presence_keys(app_id, channel, node_id) + meta,
            (app_id, channel, user_id, "0", pending, ms) + tuple(extra),
            answered,
            error,
        )

    def settle(self, removed):
        """After Redis restarted empty and the nodes wrote their members
        again: each user whose join or leave here failed meanwhile and
        who is no member now has its ``member_removed`` published (by the
        announcer), then ``removed(app_id, channel, user_id)``.  (The
        other nodes' sockets may still list it: the leave that failed
        told nobody.)"""
        unsure, self.unsure = self.unsure, set()
        if self.announcer is None:
            return
        for app_id, channel, user_id in unsure:
            meta, extra = self.announcer.member_removed(app_id, channel, user_id)

            def gone(reply, app_id=app_id, channel=channel, user_id=user_id):
                if reply == 1:
                    removed(app_id, channel, user_id)

            self._eval(
                lua.PRESENCE_GONE,
                lambda _node_id, app_id=app_id, channel=channel, meta=meta: (
                    (lua.channel_key(app_id, channel, "members"),) + _keys(meta)
                ),
                (user_id,) + tuple(extra),
                gone,
                # Redis away again: the next settle tries again
                lambda _error, key=(app_id, channel, user_id): self.unsure.add(key),
            )

    # re-registration

    def _entry(self, key):
        entry = self.held.get(key)
        return None if entry is None else (key, entry[0], entry[1])

    def _ledger_entries(self):
        return [(key, entry[0], entry[1]) for key, entry in self.held.items()]

    def _holds(self, entry):
        return tuple(entry[1:4]) in self.held

    @staticmethod
    def _zeroes(strays):
        return [(tuple(entry[1:4]), Member(None, False), 0) for entry in strays]

    def _set_calls(self, entries):
        """Calls that set the node's sockets of ``entries`` (``((app_id,
        channel, user_id), Member, sockets)``); their changes: ``(app_id,
        channel, user_id, Member, change)``, ``change`` 1 (a member again
        by it), -1 (it left) or 0."""
        by_channel: dict[tuple, list] = {}
        for (app_id, channel, user_id), member, sockets in entries:
            by_channel.setdefault((app_id, channel), []).append(
                (user_id, member, int(sockets))
            )
        calls: list[tuple] = []
        for (app_id, channel), users in by_channel.items():
            for chunk in _chunks(users):
                args = [app_id, channel]
                for user_id, member, sockets in chunk:
                    args += [user_id, encode_member(member), sockets]

                def convert(reply, app_id=app_id, channel=channel, chunk=chunk):
                    return [
                        (app_id, channel, user_id, member, change)
                        for (user_id, member, _), change in zip(
                            chunk, reply, strict=True
                        )
                    ]

                calls.append(
                    (
                        lua.PRESENCE_SET,
                        lambda node_id, app_id=app_id, channel=channel: (
                            lua.presence_keys(app_id, channel, node_id)
                        ),
                        args,
                        convert,
                    )
                )
        return calls

    def fetch_members(self, app_id, channel, then, failed=None):
        """``then(members)`` with the members of a channel by user id (a
        read on the loop, where ``members`` would block)."""
        self._read(
            lambda found: then(_members(found)),
            failed,
            "HGETALL",
            lua.channel_key(app_id, channel, "members"),
        )

    # reads (blocking)

    def members(self, app_id, channel):
        """The members of a channel, by user id."""
        found = self.reader.hgetall(lua.channel_key(app_id, channel, "members"))
        return {_text(user): decode_member(data) for user, data in found.items()}

    def count(self, app_id, channel):
        """The members of a channel, counted (without reading them)."""
        value = self.reader.hget(lua.app_key(app_id, "ucounts"), channel)
        return int(value) if value else 0


class RedisUsers(_Twin):
    """Signed-in users over the whole cluster."""

    kinds = ("user",)

    def __init__(self, redis, node_id, reader=None):
        _Twin.__init__(self, redis, node_id, reader)
        self.held = {}
        """ (app_id, user_id) -> this node's signed-in sockets """

    def signed_in(self, app_id, user_id, then, failed=None):
        """A socket signed in as ``user_id``: ``then(True)`` when it is
        the user's first anywhere (the user came online)."""
        app_id, user_id = str(app_id), str(user_id)
        _count(self.held, (app_id, user_id), 1)
        self._eval(
            lua.USER_IN,
            lambda node_id: lua.user_keys(app_id, node_id),
            (app_id, user_id),
            lambda reply: then(reply == 1),
            failed,
        )

    def signed_out(self, app_id, user_id, then, failed=None):
        """A signed-in socket of ``user_id`` went or changed user:
        ``then(True)`` when it was the user's last anywhere."""
        app_id, user_id = str(app_id), str(user_id)
        _count(self.held, (app_id, user_id), -1)
        self._eval(
            lua.USER_OUT,
            lambda node_id: lua.user_keys(app_id, node_id),
            (app_id, user_id, "0"),
            lambda reply: then(reply == 1),
            failed,
        )

    # re-registration

    def _ledger_entries(self):
        return [(key, sockets) for key, sockets in self.held.items()]

    def _holds(self, entry):
        return tuple(entry[1:3]) in self.held

    @staticmethod
    def _zeroes(strays):
        return [(tuple(entry[1:3]), 0) for entry in strays]

    def _set_calls(self, entries):
        """Calls that set the node's signed-in sockets of ``entries``
        (``((app_id, user_id), sockets)``); their changes: ``(app_id,
        user_id, change)``, ``change`` 1 (online by it), -1 (offline) or
        0."""
        by_app: dict[str, list] = {}
        for (app_id, user_id), sockets in entries:
            by_app.setdefault(app_id, []).append((user_id, int(sockets)))
        calls: list[tuple] = []
        for app_id, users in by_app.items():
            for chunk in _chunks(users):
                args = [app_id]
                for user in chunk:
                    args += user

                def convert(reply, app_id=app_id, chunk=chunk):
                    return [
                        (app_id, user[0], change)
                        for user, change in zip(chunk, reply, strict=True)
                    ]

                calls.append(
                    (
                        lua.USER_SET,
                        lambda node_id, app_id=app_id: lua.user_keys(app_id, node_id),
                        args,
                        convert,
                    )
                )
        return calls

    def fetch_online(self, app_id, user_ids, then, failed=None):
        """``then(user_ids)`` with those of ``user_ids`` that are online (a
        read on the loop, where ``online`` would block)."""
        user_ids = [str(user_id) for user_id in user_ids]
        if not user_ids:
            then([])
            return
        self._read(
            lambda found: then(
                [
                    user_id
                    for user_id, value in zip(user_ids, found, strict=True)
                    if value
                ]
            ),
            failed,
            "HMGET",
            lua.app_key(app_id, "users"),
            *user_ids,
        )

    # reads (blocking)

    def online(self, app_id, user_ids):
        """Those of ``user_ids`` that are online."""
        user_ids = list(user_ids)
        if not user_ids:
            return []
        found = self.reader.hmget(lua.app_key(app_id, "users"), user_ids)
        return [
            user_id for user_id, value in zip(user_ids, found, strict=True) if value
        ]


class Registered(NamedTuple):
    """What a node's re-registration changed in Redis: ``occupied`` /
    ``vacated`` (app_id, channel); ``added`` (app_id, channel, user_id,
    Member) members again by this node; ``removed`` (app_id, channel,
    user_id); ``online`` / ``offline`` (app_id, user_id)."""

    occupied: list
    vacated: list
    added: list
    removed: list
    online: list
    offline: list


class ClusterState:
    """The three twins of one node and its reaper, on the node's command
    connection ``redis``: ``presence``, ``occupancy``, ``users`` (for the
    engine's seams) and ``reaper``.  ``node_id`` as for the twins (a
    callable follows the node's id as it changes); ``reader`` a
    ``blocking_client``; ``reaped(Reaped)`` as for ``Reaper``;
    ``announcer`` (an ``Announcer``) for the presence and the reaper;
    ``linger`` the webhook linger of the presence and occupancy scripts
    and the reaper's (``cluster/linger``)."""

    def __init__(self, redis, node_id, reader, reaped, announcer=None):
        self.redis = redis
        self.presence = RedisPresence(redis, node_id, reader, announcer)
        self.occupancy = RedisOccupancy(redis, node_id, reader)
        self.users = RedisUsers(redis, node_id, reader)
        self.reaper = Reaper(redis, node_id, reaped, announcer=announcer)
        self.linger = Linger(redis)
        for twin in (self.presence, self.occupancy, self.reaper):
            twin.linger = self.linger
        self.steps = self.occupancy.steps
        self.presence.steps = self.users.steps = self.steps
        self._previous = set()

    def reregister(self, node_id=None, then=None, failed=None):
        """Writes what this node holds to Redis again (a new Redis, this
        node reaped, or a reconnection), under ``node_id`` when given (the
        node's new id) or the id now; once written, reaps what the twins
        wrote under the node's previous ids since the last re-registration
        (through ``reaped``).  ``then(Registered)`` once the three are
        written."""
        if node_id is not None:
            for twin in (self.presence, self.occupancy, self.users, self.reaper):
                twin.node_id = node_id
        twins = (self.presence, self.occupancy, self.users)
        current = self.occupancy.node_id
        previous = set().union(self._previous, *(twin.used for twin in twins))
        previous -= {current, None}
        result = Registered([], [], [], [], [], [])
        state: dict[str, Any] = {"left": 3, "error": None}

        def done():
            if state["error"] is not None:
                # reaped at the next re-registration
                self._previous |= previous
                _failed(failed, state["error"])
                return
            self._previous = set()
            # after the new id's entries are written: what is reaped under
            # the old ones is then no transition
            for node in sorted(previous):
                self.reaper.reap(node)
            if then is not None:
                then(result)

        def part(record):
            def answer(changes):
                for change in changes:
                    record(change)
                state["left"] -= 1
                if not state["left"]:
                    done()

            return answer

        def error(reason):
            state["error"] = state["error"] or reason
            state["left"] -= 1
            if not state["left"]:
                done()

        def channel(change):
            app_id, name, _count, moved = change
            if moved > 0:
                result.occupied.append((app_id, name))
            elif moved < 0:
                result.vacated.append((app_id, name))

        def member(change):
            app_id, name, user_id, member, moved = change
            if moved > 0:
                result.added.append((app_id, name, user_id, member))
            elif moved < 0:
                result.removed.append((app_id, name, user_id))

        def user(change):
            app_id, user_id, moved = change
            if moved > 0:
                result.online.append((app_id, user_id))
            elif moved < 0:
                result.offline.append((app_id, user_id))

        self.presence.reregister(part(member), error)
        self.occupancy.reregister(part(channel), error)
        self.users.reregister(part(user), error)


def _keys(keys):
    """An announcer's keys as a tuple: its meta key (a string), or the
    meta key and the recovery history's."""
    return (keys,) if isinstance(keys, str) else tuple(keys)


def _ignore(*_args):
    pass


def _nothing(_reply):
    return []
