"""Live state: which sockets are on which channel, and who is present.

Ownership: everything in this module belongs to the WebSocket loop thread.
Only the loop reads or writes a ``Registry``, a ``Channel`` or a
``Session``; other threads hand work to the loop (``State.call_soon``) and
never touch these objects, so no lock guards them.
"""

import random

VIA_PERSONAL = False
""" Value in ``Session.channels`` of a channel joined only because the
socket's personal channel covers it """


class Session:
    """One open WebSocket: its app, dialect, channels and user.

    ``channels`` maps every channel the socket is on to the presence
    ``user_id`` it joined with (None elsewhere, ``VIA_PERSONAL`` for a
    channel it is on only through its ``personal-<user_id>`` channel).
    ``personal`` is the set of channels its personal channel covers.
    ``reading`` is true while its ``pusher:latest`` is read, ``loading``
    the personal channel it is loading, ``recovering`` the channels whose
    recovery reads the store, ``sending`` its sends waiting for
    the store (with those queued behind them, see ``Engine.client_event``).
    ``transport`` is what the network layer gave: ``write(frame)``,
    ``close(code, reason)`` and ``pinged()`` (False once the socket pings
    too often, which closes it).  ``keys`` are the app keys the socket
    relies on: the one it connected with and those that signed its
    subscriptions and sign-in; revoking any of them closes it.
    """

    __slots__ = (
        "socket_id",
        "app",
        "keys",
        "dialect",
        "transport",
        "channels",
        "user_id",
        "origin",
        "address",
        "last_seen",
        "ping_sent",
        "event_window",
        "event_count",
        "personal",
        "reading",
        "loading",
        "recovering",
        "sending",
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
        self.keys = {app.key if key is None else key}
        self.dialect = dialect
        self.transport = transport
        self.channels = {}
        self.user_id = None
        self.origin = origin
        self.address = address
        self.last_seen = now
        self.ping_sent = None
        self.event_window = 0
        self.event_count = 0
        self.personal = None
        self.reading = False
        self.loading = None
        self.recovering = None
        self.sending = None
        self.closed = False


class Member:
    """A presence user on one channel: its info and its sockets there."""

    __slots__ = ("user_info", "sessions", "peer")

    def __init__(self, user_info, peer=False):
        self.user_info = user_info
        self.sessions = []
        self.peer = peer


class Channel:
    """Subscribers of one channel of one app: ``sessions`` maps each
    session to its transport's ``write`` (bound once, for the fan-out; a
    transport's own ``fan_out`` when it has one), in the order they
    subscribed."""

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
        self._node = random.randint(1, 999999999)
        self._counter = random.randint(1, 999999)

    def new_socket_id(self):
        """``<node>.<n>``: a random node part makes ids unique across nodes."""
        self._counter += 1
        return "%d.%d" % (self._node, self._counter)

    def add_session(self, session):
        self.sessions[session.socket_id] = session
        app_id = session.app.app_id
        self.app_sessions[app_id] = self.app_sessions.get(app_id, 0) + 1

    def remove_session(self, session):
        if self.sessions.pop(session.socket_id, None) is None:
            return
        self.set_user(session, None)
        app_id = session.app.app_id
        left = self.app_sessions[app_id] - 1
        if left:
            self.app_sessions[app_id] = left
        else:
            del self.app_sessions[app_id]

    def app_count(self, app_id):
        """Open sockets of one app."""
        return self.app_sessions.get(app_id, 0)

    def set_user(self, session, user_id):
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

    def user_sessions(self, app_id, user_id):
        return list(self.users.get((app_id, user_id), ()))

    def channels(self, app_id):
        """The occupied channels of an app, by name."""
        return self.apps.get(app_id, {})

    def channel(self, app_id, name):
        return self.apps.get(app_id, {}).get(name)

    def join(self, session, name, user_id=None):
        """Adds a session to a channel; returns ``(channel, occupied)``
        where ``occupied`` is True when the channel had nobody before."""
        channels = self.apps.setdefault(session.app.app_id, {})
        channel = channels.get(name)
        occupied = channel is None
        if occupied:
            channel = channels[name] = Channel(name)
        transport = session.transport
        channel.sessions[session] = getattr(transport, "fan_out", transport.write)
        session.channels[name] = user_id
        return channel, occupied

    def leave(self, session, name):
        """Removes a session from a channel; returns ``(channel, vacated)``
        (channel None when the session was not on it)."""
        if name not in session.channels:
            return None, False
        del session.channels[name]
        channels = self.apps.get(session.app.app_id, {})
        channel = channels.get(name)
        if channel is None:
            return None, False
        channel.sessions.pop(session, None)
        vacated = not channel.sessions
        if vacated:
            del channels[name]
            if not channels:
                del self.apps[session.app.app_id]
        return channel, vacated

    @staticmethod
    def add_member(channel, session, user_id, user_info, peer=False):
        """Adds a socket to a presence user; True when the user is new."""
        member = channel.members.get(user_id)
        new = member is None
        if new:
            member = channel.members[user_id] = Member(user_info, peer)
        member.sessions.append(session)
        return new

    @staticmethod
    def remove_member(channel, session, user_id):
        """Removes a socket from a presence user; True when it was the
        user's last socket there (the member left)."""
        member = channel.members.get(user_id)
        if member is None:
            return False
        if session in member.sessions:
            member.sessions.remove(session)
        if member.sessions:
            return False
        del channel.members[user_id]
        return True

    def count(self):
        """Open sockets and occupied channels, across apps."""
        channels = sum(len(channels) for channels in self.apps.values())
        return len(self.sessions), channels
