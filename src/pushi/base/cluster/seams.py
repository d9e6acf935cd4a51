"""The Redis twins of the presence, occupancy and users seams: the state
every node of a cluster shares, kept by the scripts of ``cluster/lua``.

The changes (``join``, ``leave``, ``joined``, ...) run on the loop thread
through the node's command connection (``pushi.net.redis.Redis``): their
answer comes to ``then`` on the loop, once Redis has decided.  When Redis
cannot answer (down, overdue, overloaded), ``failed(error)`` runs instead
(a ``pushi.net.redis.RedisError``; without ``failed`` it is logged): such
a change may or may not have been made, and ``reregister`` sets the
node's counts right again.

The reads (``members``, ``count``, ``channels``, ``connections``,
``online``) block: they are for the REST workers' threads, through a
redis-py client (``blocking_client``) whose every read is bounded by its
socket timeout; they raise ``redis.exceptions.RedisError`` when Redis
does not answer in time.

``reregister`` sets what this node holds to what it has locally (after
Redis restarted empty, or after this node was reaped); what it is not
given stays as it is.  Its calls go out in one write, before any change
made after it, so that the counts it sets and the changes after it add
up.
"""

import json
import logging

from ..presence import Joined, Member
from . import lua

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


def _failed(failed, error):
    if failed is not None:
        failed(error)
    else:
        logger.warning("Redis state change not made: %s", error)


def _members(flat):
    """The members of a flat ``HGETALL`` reply, by user id."""
    return {
        _text(flat[index]): decode_member(flat[index + 1])
        for index in range(0, len(flat), 2)
    }


class _Twin:
    def __init__(self, redis, node_id, reader=None):
        self.redis = redis
        """ The command connection (``pushi.net.redis.Redis``, loop thread) """
        self.node_id = str(node_id)
        self.reader = reader
        """ A blocking redis-py client for the reads (``blocking_client``) """

    def _eval(self, script, keys, args, then, failed):
        def reply(value):
            if isinstance(value, Exception):
                _failed(failed, value)
            else:
                then(value)

        self.redis.evalsha(reply, script, keys, (self.node_id,) + tuple(args))

    def _bulk(self, calls, then, failed):
        """Sends ``calls`` (script, keys, args, convert) in this turn;
        ``then(results)`` with each call's converted answers, in order,
        once all came, or ``failed(error)`` once if one failed."""
        calls = list(calls)
        results = [None] * len(calls)
        state = {"left": len(calls), "error": None}

        def done():
            if state["error"] is not None:
                _failed(failed, state["error"])
            elif then is not None:
                then([item for result in results for item in result])

        if not calls:
            if then is not None:
                then([])
            return
        for index, (script, keys, args, convert) in enumerate(calls):

            def reply(value, index=index, convert=convert):
                if isinstance(value, Exception):
                    state["error"] = state["error"] or value
                else:
                    results[index] = convert(value)
                state["left"] -= 1
                if not state["left"]:
                    done()

            self.redis.evalsha(reply, script, keys, (self.node_id,) + tuple(args))


def _chunks(items, size=BULK):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RedisOccupancy(_Twin):
    """Sockets per channel and per app over the whole cluster."""

    def joined(self, app_id, channel, then, failed=None):
        """A socket joined ``channel``: ``then(count, occupied)``."""
        self._eval(
            lua.OCCUPANCY_JOIN,
            lua.occupancy_keys(app_id, channel, self.node_id),
            (app_id, channel),
            lambda reply: then(reply[0], reply[1] == 1),
            failed,
        )

    def left(self, app_id, channel, then, failed=None):
        """A socket left ``channel``: ``then(count, vacated)``."""
        self._eval(
            lua.OCCUPANCY_LEAVE,
            lua.occupancy_keys(app_id, channel, self.node_id),
            (app_id, channel, "0"),
            lambda reply: then(reply[0], reply[1] == 1),
            failed,
        )

    def opened(self, app_id, limit, then, failed=None):
        """A socket of the app opened: ``then(count)`` with the app's
        sockets, this one included, or ``then(None)`` (not counted) when
        the app already has ``limit`` (0: no limit)."""
        self._eval(
            lua.CONNECTION_OPEN,
            lua.connection_keys(app_id, self.node_id),
            (app_id, int(limit or 0)),
            lambda reply: then(None if reply < 0 else reply),
            failed,
        )

    def closed(self, app_id, then=None, failed=None):
        """A socket of the app (counted by ``opened``) went:
        ``then(count)`` with the app's sockets left."""
        self._eval(
            lua.CONNECTION_CLOSE,
            lua.connection_keys(app_id, self.node_id),
            (app_id, "0"),
            then or _ignore,
            failed,
        )

    def reregister(self, channels, connections=None, then=None, failed=None):
        """Sets this node's sockets per channel (``{(app_id, channel):
        sockets}``) and per app (``{app_id: sockets}``);
        ``then([(app_id, channel, count, change)])`` with the channels'
        counts now and ``change`` 1 (occupied by it), -1 (vacated) or 0."""
        by_app = {}
        for (app_id, channel), sockets in channels.items():
            by_app.setdefault(app_id, []).append((channel, int(sockets)))
        calls = []
        for app_id, entries in by_app.items():
            for chunk in _chunks(entries):
                keys = [
                    lua.app_key(app_id, "counts"),
                    lua.app_key(app_id, "channels"),
                    lua.owned_key(self.node_id),
                ] + [lua.channel_key(app_id, name, "nodes") for name, _ in chunk]
                args = [app_id]
                for name, sockets in chunk:
                    args += [name, sockets]

                def convert(reply, app_id=app_id, chunk=chunk):
                    return [
                        (app_id, name, count, change)
                        for (name, _), (count, change) in zip(chunk, reply)
                    ]

                calls.append((lua.OCCUPANCY_SET, keys, args, convert))
        for app_id, sockets in (connections or {}).items():
            calls.append(
                (
                    lua.CONNECTION_SET,
                    lua.connection_keys(app_id, self.node_id),
                    (app_id, int(sockets)),
                    _none,
                )
            )
        self._bulk(calls, then, failed)

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
            for name, count in zip(names, values)
            if count is not None
        }

    def connections(self, app_id):
        """The open sockets of an app (counted by ``opened``)."""
        value = self.reader.get(lua.app_key(app_id, "connections"))
        return int(value) if value else 0


class RedisPresence(_Twin):
    """Presence members over the whole cluster: one per user id."""

    def join(self, app_id, channel, user_id, member, limit, then, failed=None):
        """Adds one socket of ``user_id``: ``then(Joined(new, members))``
        (the members as Redis had them once the user was in, decided in
        the same step), or ``then(None)`` when the user is not a member
        and the channel already has ``limit`` members (0: no limit)."""

        def joined(reply):
            if reply is None:
                then(None)
            else:
                then(Joined(reply[0] == 1, _members(reply[1])))

        self._eval(
            lua.PRESENCE_JOIN,
            lua.presence_keys(app_id, channel, self.node_id),
            (app_id, channel, user_id, encode_member(member), int(limit or 0)),
            joined,
            failed,
        )

    def leave(self, app_id, channel, user_id, then, failed=None):
        """Takes one socket of ``user_id`` off: ``then(True)`` when it was
        the user's last one anywhere (the member left)."""
        self._eval(
            lua.PRESENCE_LEAVE,
            lua.presence_keys(app_id, channel, self.node_id),
            (app_id, channel, user_id, "0"),
            lambda reply: then(reply == 1),
            failed,
        )

    def reregister(self, entries, then=None, failed=None):
        """Sets this node's sockets per member (``{(app_id, channel,
        user_id): (Member, sockets)}``); ``then([(app_id, channel,
        user_id, change)])`` with ``change`` 1 (the member is back by
        it), -1 (it left) or 0."""
        by_channel = {}
        for (app_id, channel, user_id), (member, sockets) in entries.items():
            by_channel.setdefault((app_id, channel), []).append(
                (user_id, encode_member(member), int(sockets))
            )
        calls = []
        for (app_id, channel), users in by_channel.items():
            for chunk in _chunks(users):
                args = [app_id, channel]
                for user in chunk:
                    args += user

                def convert(reply, app_id=app_id, channel=channel, chunk=chunk):
                    return [
                        (app_id, channel, user[0], change)
                        for user, change in zip(chunk, reply)
                    ]

                calls.append(
                    (
                        lua.PRESENCE_SET,
                        lua.presence_keys(app_id, channel, self.node_id),
                        args,
                        convert,
                    )
                )
        self._bulk(calls, then, failed)

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

    def signed_in(self, app_id, user_id, then, failed=None):
        """A socket signed in as ``user_id``: ``then(True)`` when it is
        the user's first anywhere (the user came online)."""
        self._eval(
            lua.USER_IN,
            lua.user_keys(app_id, self.node_id),
            (app_id, user_id),
            lambda reply: then(reply == 1),
            failed,
        )

    def signed_out(self, app_id, user_id, then, failed=None):
        """A signed-in socket of ``user_id`` went or changed user:
        ``then(True)`` when it was the user's last anywhere."""
        self._eval(
            lua.USER_OUT,
            lua.user_keys(app_id, self.node_id),
            (app_id, user_id, "0"),
            lambda reply: then(reply == 1),
            failed,
        )

    def reregister(self, entries, then=None, failed=None):
        """Sets this node's signed-in sockets per user (``{(app_id,
        user_id): sockets}``); ``then([(app_id, user_id, change)])`` with
        ``change`` 1 (online by it), -1 (offline) or 0."""
        by_app = {}
        for (app_id, user_id), sockets in entries.items():
            by_app.setdefault(app_id, []).append((user_id, int(sockets)))
        calls = []
        for app_id, users in by_app.items():
            for chunk in _chunks(users):
                args = [app_id]
                for user in chunk:
                    args += user

                def convert(reply, app_id=app_id, chunk=chunk):
                    return [
                        (app_id, user[0], change) for user, change in zip(chunk, reply)
                    ]

                calls.append(
                    (lua.USER_SET, lua.user_keys(app_id, self.node_id), args, convert)
                )
        self._bulk(calls, then, failed)

    # reads (blocking)

    def online(self, app_id, user_ids):
        """Those of ``user_ids`` that are online."""
        user_ids = list(user_ids)
        if not user_ids:
            return []
        found = self.reader.hmget(lua.app_key(app_id, "users"), user_ids)
        return [user_id for user_id, value in zip(user_ids, found) if value]


def _ignore(*_args):
    pass


def _none(_reply):
    return []
