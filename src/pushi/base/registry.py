"""Live state: which sockets are on which channel, and who is present.

Ownership: everything in this module belongs to the WebSocket loop thread.
Only the loop reads or writes a ``Registry``, a ``Channel`` or a
``Session``; other threads hand work to the loop (``State.call_soon``) and
never touch these objects, so no lock guards them.
"""

import random

_NONE: frozenset[str] = frozenset()
""" A session's ``via_personal`` until it has one (an empty set costs
216 bytes per socket) """


class Session:
    """One open WebSocket: its app, dialect, channels and user.

    ``channels`` holds every channel the socket is on, in the order it
    joined them (a dict used as an ordered set); ``members`` the presence
    ``user_id`` it joined each presence channel with, ``peers`` those it
    joined as a peer member (None until one); ``via_personal``
    the channels it is on only through its ``personal-<user_id>`` channel,
    and ``personal`` the set of channels that personal channel covers.
    ``reading`` is true while its ``pusher:latest`` is read, ``loading``
    the personal channel it is loading, ``listening`` the channels it
    waits for the broker to bring, ``recovering`` the channels whose
    recovery reads the store (each True while still wanted, False once
    unsubscribed), ``sending`` its sends waiting for the store
    (with those queued behind them, see ``engine/stored``).
    ``transport`` is what the network layer gave: ``write(frame)``,
    ``close(code, reason)``, ``pinged()`` (False once the socket pings
    too often, which closes it), and in a cluster ``hold_frames()`` and
    ``release_frames()`` (``Occupancy.hold_until_shared``).  ``keys`` are
    the app keys the socket relies on (a tuple, ``add_key``): the one it
    connected with and those that signed its subscriptions and sign-in;
    revoking any of them closes it.
    """

    __slots__ = (
        "socket_id",
        "app",
        "keys",
        "dialect",
        "transport",
        "channels",
        "members",
        "member_floors",
        "peers",
        "via_personal",
        "user_id",
        "origin",
        "address",
        "last_seen",
        "ping_sent",
        "event_times",
        "personal",
        "reading",
        "loading",
        "recovering",
        "listening",
        "sending",
        "counted",
        "closed",
    )

    def __init__(
        self,
        socket_id,
        app,
        dialect,
        transport,
        origin=None,
        address=None,
        now=0.0,
        key=None,
    ):
        self.socket_id = socket_id
        self.app = app
        self.keys: tuple[str, ...] = (app.key if key is None else key,)
        self.dialect = dialect
        self.transport = transport
        self.channels = {}
        self.members = {}
        # presence channel -> (offset, epoch): the member events up to it
        # are in the members the socket was given (a cluster's join)
        self.member_floors = None
        self.peers = None
        self.via_personal: set[str] | frozenset[str] = _NONE
        self.user_id = None
        self.origin = origin
        self.address = address
        self.last_seen = now
        self.ping_sent = None
        # when its last client events came (``engine/client_events``)
        self.event_times = None
        self.personal = None
        self.reading = False
        self.loading = None
        self.recovering = None
        self.listening = None
        self.sending = None
        # counted in a cluster's shared count of the app's sockets
        self.counted = False
        self.closed = False

    def add_key(self, key):
        """The socket relies on app key ``key`` too."""
        if key not in self.keys:
            self.keys += (key,)

    def add_via_personal(self, name):
        """The socket is on ``name`` through its personal channel only."""
        via = self.via_personal
        if not isinstance(via, set):
            via = self.via_personal = set()
        via.add(name)

    def discard_via_personal(self, name):
        """The socket is on ``name`` by itself (or not at all)."""
        via = self.via_personal
        if isinstance(via, set):
            via.discard(name)


class Channel:
    """Subscribers of one channel of one app on this process: ``sessions``
    maps each session to its transport's ``write`` (bound once, for the
    fan-out; a transport's own ``fan_out`` when it has one), in the order
    they subscribed; ``members`` each presence user's sessions here (the
    members themselves are the ``Presence`` seam's)."""

    __slots__ = ("name", "sessions", "members")

    def __init__(self, name):
        self.name = name
        self.sessions = {}
        self.members = {}


class Registry:
    """Per-app channels and sessions of this process."""

    def __init__(self):
        self.apps = {}
        self.sessions = {}
        self.users = {}
        self.app_sessions = {}
        # a cluster's node sets its id here (``base/cluster/node``)
        self.node = random.randint(1, 999999999)
        self._counter = random.randint(1, 999999)

    def new_socket_id(self) -> str:
        """``<node>.<n>``: the node part makes ids unique across nodes (a
        random one, or the id a cluster gave this node)."""
        self._counter += 1
        return f"{self.node}.{self._counter}"

    def add_session(self, session: Session) -> None:
        self.sessions[session.socket_id] = session
        app_id = session.app.app_id
        self.app_sessions[app_id] = self.app_sessions.get(app_id, 0) + 1

    def remove_session(self, session: Session) -> None:
        if self.sessions.pop(session.socket_id, None) is None:
            return
        self.set_user(session, None)
        app_id = session.app.app_id
        left = self.app_sessions[app_id] - 1
        if left:
            self.app_sessions[app_id] = left
        else:
            del self.app_sessions[app_id]

    def app_count(self, app_id: str) -> int:
        """Open sockets of one app."""
        return self.app_sessions.get(app_id, 0)

    def set_user(self, session: Session, user_id: str | None) -> None:
        """Records a signed-in user (``pusher:signin``) of a session."""
        if session.user_id is not None:
            key = (session.app.app_id, session.user_id)
            sessions = self.users.get(key)
            if sessions is not None:
                sessions.pop(session, None)
                if not sessions:
                    del self.users[key]
        session.user_id = user_id
        if user_id is not None:
            self.users.setdefault((session.app.app_id, user_id), {})[session] = None

    def user_sessions(self, app_id: str, user_id: str) -> list[Session]:
        return list(self.users.get((app_id, user_id), ()))

    def channels(self, app_id: str) -> dict[str, Channel]:
        """The occupied channels of an app, by name."""
        return self.apps.get(app_id, {})

    def channel(self, app_id: str, name: str) -> Channel | None:
        return self.apps.get(app_id, {}).get(name)

    def join(self, session: Session, name: str) -> Channel:
        """Adds a session to a channel; returns the channel."""
        channels = self.apps.setdefault(session.app.app_id, {})
        channel = channels.get(name)
        if channel is None:
            channel = channels[name] = Channel(name)
        transport = session.transport
        channel.sessions[session] = getattr(transport, "fan_out", transport.write)
        session.channels[name] = None
        return channel

    def leave(self, session: Session, name: str) -> Channel | None:
        """Removes a session from a channel (forgotten once empty);
        returns the channel, None when the session was not on it."""
        if name not in session.channels:
            return None
        del session.channels[name]
        channels = self.apps.get(session.app.app_id, {})
        channel = channels.get(name)
        if channel is None:
            return None
        channel.sessions.pop(session, None)
        if not channel.sessions:
            del channels[name]
            if not channels:
                del self.apps[session.app.app_id]
        return channel

    @staticmethod
    def add_member(channel: Channel, session: Session, user_id: str) -> None:
        """Records a session of a presence user on the channel."""
        channel.members.setdefault(user_id, []).append(session)

    @staticmethod
    def remove_member(channel: Channel, session: Session, user_id: str) -> None:
        """Forgets a session of a presence user on the channel."""
        sessions = channel.members.get(user_id)
        if sessions is not None and session in sessions:
            sessions.remove(session)
            if not sessions:
                del channel.members[user_id]

    def count(self) -> tuple[int, int]:
        """Open sockets and occupied channels, across apps."""
        channels = sum(len(channels) for channels in self.apps.values())
        return len(self.sessions), channels
