"""The reaper: undoes what a dead node registered in Redis.

A node whose heartbeat in ``pushi:nodes`` is older than ``silence``
seconds (by Redis's clock) is dead.  Any node's ``Reaper.check`` finds
those, takes ``SET pushi:reap:<dead> <me> NX PX 60000`` for each, and runs
the leave scripts (``cluster/lua``, with ``all``) for every entry of the
dead node's ``pushi:node:<dead>:owned``: its members leave, its sockets
stop counting, its signed-in users and connections go.  Then it drops
the node from ``pushi:nodes``.

What those leaves decided (members that left, channels vacated, users
offline, ...) goes to ``reaped(Reaped)`` on the loop of the node that
reaped, once: each leave answers its transition to one caller only, and
a leave of an entry already undone changes nothing, so two reapers (a
lock that expired mid-reap) never count twice.

A node dropped from ``pushi:nodes`` that was in fact alive (cut off from
Redis for a while) finds out at its next heartbeat (``cluster/node``): it
registers again under a new id, writes what it holds under that id, and
reaps its previous id itself (``reap``), which undoes what it wrote there
after the reaper listed it.

Loop thread only, like the ``Redis`` connection it uses.
"""

import json
import logging
from typing import NamedTuple

from pushi.net.redis import Script

from . import lua
from .linger import Linger

logger = logging.getLogger("pushi")

SILENCE = 10.0
""" Seconds without a heartbeat after which a node is dead """

LOCK_MS = 60000
""" Milliseconds a reaper holds a dead node (an interrupted reap is taken
up again by anyone after that) """

WINDOW = 500
""" Leave scripts awaiting their answer at most, while reaping """

INTERVAL = 2.0
""" Seconds between two checks (``start``) """

# members first: a member_removed goes before its channel's vacated
_ORDER = {"pres": 0, "sub": 1, "user": 2, "conn": 3}


class Reaped(NamedTuple):
    """What reaping a dead node changed (each transition is here for
    exactly one reaper): ``removed`` (app_id, channel, user_id) members
    that left (their ``member_removed`` published already when the
    reaper has an announcer); ``vacated`` (app_id, channel); ``counts`` (app_id,
    channel, count) channels still occupied with their new count;
    ``offline`` (app_id, user_id) users with no signed-in socket left;
    ``connections`` (app_id, count) the apps' sockets now; ``lingered``
    those of ``removed`` and ``vacated`` whose webhook lingers in the
    cluster (``cluster/linger``); ``complete`` False when Redis failed
    mid-way (what is here was done; the rest is taken up once the lock
    expires)."""

    node_id: str
    removed: list
    vacated: list
    counts: list
    offline: list
    connections: list
    lingered: set
    complete: bool


class Reaper:
    """Reaps dead nodes for ``node_id`` through ``redis`` (a
    ``pushi.net.redis.Redis``); ``reaped(Reaped)`` once per node reaped."""

    def __init__(
        self,
        redis,
        node_id,
        reaped,
        silence=SILENCE,
        lock_ms=LOCK_MS,
        window=WINDOW,
        announcer=None,
    ):
        self.redis = redis
        self.announcer = announcer
        self.linger = Linger(redis)
        """ The webhook linger of the leave scripts (``cluster/linger``;
        the ``ClusterState``'s) """
        """ With one (``seams.Announcer``), each member that leaves has its
        ``member_removed`` published by the script that removes it """
        self._node_id = node_id
        self.reaped = reaped
        self.silence = silence
        self.lock_ms = lock_ms
        self.window = window
        self.busy = False
        """ True while a check (or its reaping) is under way """
        self._timer = None
        self._queued = []

    @property
    def node_id(self):
        """This node's id (a string, None before it has one): the
        ``node_id`` given, or what it returns when it is callable."""
        node_id = self._node_id() if callable(self._node_id) else self._node_id
        return None if node_id is None else str(node_id)

    @node_id.setter
    def node_id(self, value):
        self._node_id = value

    def start(self, loop, interval=INTERVAL):
        """Checks every ``interval`` seconds on ``loop`` (a ``NetiusLoop``)
        until ``stop``."""
        self._timer = loop.every(interval, self.check)

    def stop(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def check(self, done=None):
        """Looks for dead nodes and reaps those it can lock; ``done()``
        once finished.  False (and nothing done) while a check runs."""
        if self.busy or self.node_id is None:
            return False
        self.busy = True

        def found(reply):
            if isinstance(reply, Exception):
                logger.warning("Redis: dead nodes not looked for: %s", reply)
                self._finish(done)
                return
            nodes = [lua_text(node) for node in reply]
            self._next([node for node in nodes if node != self.node_id], done)

        self.redis.evalsha(
            found, lua.DEAD_NODES, (lua.NODES,), (int(self.silence * 1000),)
        )
        return True

    def reap(self, node_id, done=None):
        """Reaps ``node_id`` whatever its heartbeat (this node's previous
        id, after it registered again under a new one); ``done()`` once
        finished.  False (and nothing done) while a check runs: the
        caller tries again."""
        if self.node_id is None:
            return False
        if self.busy:
            self._queued.append((str(node_id), done))
            return True
        self.busy = True
        self._next([str(node_id)], done, forced=True)
        return True

    def _finish(self, done):
        self.busy = False
        if done is not None:
            done()
        if self._queued and not self.busy:
            node_id, done = self._queued.pop(0)
            self.reap(node_id, done)

    def _next(self, nodes, done, forced=False):
        if not nodes:
            self._finish(done)
            return
        node = nodes.pop(0)

        def locked(reply):
            if isinstance(reply, Exception) or reply is None:
                # another node reaps it (or Redis is away: next check)
                self._next(nodes, done)
                return
            self.redis.call(listed, "SMEMBERS", lua.owned_key(node))

        def listed(reply):
            if isinstance(reply, Exception):
                logger.warning("Redis: node %s not reaped: %s", node, reply)
                self._finish(done)
                return
            entries = []
            for item in reply:
                try:
                    entry = json.loads(item)
                except ValueError:
                    continue
                if isinstance(entry, list) and entry and entry[0] in _ORDER:
                    entries.append(entry)
            entries.sort(key=lambda entry: _ORDER[entry[0]])
            logger.warning(
                "Node %s %s: reaping its %d entries",
                node,
                "replaced" if forced else "silent for over %gs" % self.silence,
                len(entries),
            )

            def reaped(complete):
                if complete:
                    self._next(nodes, done)
                else:
                    self._finish(done)

            _Reap(self, node, entries, reaped).start()

        def take():
            self.redis.call(
                locked,
                "SET",
                lua.reap_key(node),
                self.node_id,
                "NX",
                "PX",
                self.lock_ms,
            )

        if forced:
            # a node's previous id: left alone if a node registered under
            # it since (a heartbeat there)

            def alive(reply):
                if isinstance(reply, Exception) or reply is not None:
                    if reply is not None and not isinstance(reply, Exception):
                        logger.warning("Node id %s is in use again: not reaped", node)
                    self._next(nodes, done)
                    return
                # no lock: this node's own entries, and a reaper on them at
                # the same time takes each transition from its own scripts
                self.redis.call(listed, "SMEMBERS", lua.owned_key(node))

            self.redis.call(alive, "ZSCORE", lua.NODES, node)
        else:
            take()


class _Reap:
    """One dead node's entries, left with at most ``window`` awaited;
    ``then(complete)`` at the end."""

    def __init__(self, reaper, node, entries, then):
        self.reaper = reaper
        self.redis = reaper.redis
        self.node = node
        self.entries = entries
        self.then = then
        self.sent = 0
        self.answered = 0
        self.error = None
        self.result = Reaped(node, [], [], [], [], [], set(), True)

    def start(self):
        self._send()
        if not self.entries:
            self._end()

    def _send(self):
        while (
            self.error is None
            and self.sent < len(self.entries)
            and self.sent - self.answered < self.reaper.window
        ):
            entry = self.entries[self.sent]
            self.sent += 1
            self._leave(entry)

    def _leave(self, entry):
        node, result = self.node, self.result
        linger = self.reaper.linger
        kind, app_id = entry[0], entry[1]
        if kind == "pres":
            channel, user_id = entry[2], entry[3]
            script: Script = lua.PRESENCE_LEAVE
            keys = lua.presence_keys(app_id, channel, node)
            pending, ms = linger.pending(app_id, channel, user_id)
            args: tuple[str, ...] = (node, app_id, channel, user_id, "1", pending)
            args += (str(ms),)
            announcer = self.reaper.announcer
            if announcer is not None:
                meta, extra = announcer.member_removed(app_id, channel, user_id)
                keys += (meta,) if isinstance(meta, str) else tuple(meta)
                args += tuple(extra)

            def record(reply):
                if reply == 1 or (pending and reply > 1):
                    result.removed.append((app_id, channel, user_id))
                if pending and reply > 1:
                    # the deadline of its lingering member_removed
                    linger.wait(pending, reply, ms)
                    result.lingered.add((app_id, channel, user_id))

        elif kind == "sub":
            channel = entry[2]
            script = lua.OCCUPANCY_LEAVE
            keys = lua.occupancy_keys(app_id, channel, node)
            pending, ms = linger.pending(app_id, channel)
            args = (node, app_id, channel, "1", pending, str(ms))

            def record(reply):
                if reply[1] == 1:
                    result.vacated.append((app_id, channel))
                    if len(reply) > 2:
                        linger.wait(pending, reply[2], ms)
                        result.lingered.add((app_id, channel))
                else:
                    result.counts.append((app_id, channel, reply[0]))

        elif kind == "user":
            user_id = entry[2]
            script = lua.USER_OUT
            keys = lua.user_keys(app_id, node)
            args = (node, app_id, user_id, "1")

            def record(reply):
                if reply == 1:
                    result.offline.append((app_id, user_id))

        else:
            script = lua.CONNECTION_CLOSE
            keys = lua.connection_keys(app_id, node)
            args = (node, app_id, "1")

            def record(reply):
                result.connections.append((app_id, reply))

        def answered(reply):
            self.answered += 1
            if isinstance(reply, Exception):
                self.error = self.error or reply
            else:
                record(reply)
            if self.answered == self.sent and (
                self.error is not None or self.sent == len(self.entries)
            ):
                self._end()
            else:
                self._send()

        self.redis.evalsha(answered, script, keys, args)

    def _end(self):
        if self.error is not None:
            logger.warning("Redis: node %s reaped in part: %s", self.node, self.error)
            self._report(self.result._replace(complete=False))
            self.then(False)
            return

        def forgotten(reply):
            if isinstance(reply, Exception):
                logger.warning("Redis: node %s not forgotten: %s", self.node, reply)
                self._report(self.result._replace(complete=False))
                self.then(False)
                return
            self._report(self.result)
            self.then(True)

        # its owned set is gone with its last entry; one written since the
        # listing (the node under that id came back) stays, for the node's
        # own reap of that id once it registered again (it finds itself
        # gone from pushi:nodes)
        self.redis.call(forgotten, "ZREM", lua.NODES, self.node)

    def _report(self, result):
        try:
            self.reaper.reaped(result)
        except Exception:
            logger.exception("Reaped callback failed")


def lua_text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
