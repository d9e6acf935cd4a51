"""Presence channels: members by user id (through the ``Presence`` seam),
their member events, and the peer channels between members that set
``peer``."""

from pushi.proto import channels, errors, messages

from ..broker import Event
from ..presence import Member, added_data
from ..webhooks import lingered as _lingered


class PresenceChannels:
    def __init__(self, engine):
        self.engine = engine
        self.registry = engine.registry
        self.presence = engine.presence

    def member_of(self, session, name, channel_data):
        """The ``(user_id, Member)`` that ``channel_data`` names, or a
        ``SubscriptionError``."""
        limits = session.app.limits
        try:
            member = messages.loads(channel_data)
        except ValueError:
            raise errors.SubscriptionError(
                name, "channel_data is not JSON", status=400
            ) from None
        if not isinstance(member, dict) or member.get("user_id") in (None, ""):
            raise errors.SubscriptionError(
                name, "channel_data needs a user_id", status=400
            )
        user_id = member["user_id"]
        if isinstance(user_id, bool) or not isinstance(user_id, (str, int, float)):
            raise errors.SubscriptionError(name, "user_id must be a string", status=400)
        user_id = str(user_id)
        if len(user_id) > limits.max_user_id:
            raise errors.SubscriptionError(name, "user_id is too long", status=400)
        user_info = member.get("user_info")
        if len(messages.dumps(user_info)) > limits.max_user_info:
            raise errors.SubscriptionError(
                name,
                "user_info over %d bytes" % limits.max_user_info,
                status=413,
                type="LimitReached",
            )
        return user_id, Member(user_info, member.get("peer") is True)

    def join(self, session, name, channel_data, position=None, frames=(), then=None):
        """Joins a presence channel as the member ``channel_data`` names;
        its subscription data carries the members and ``position`` (see
        ``Recovery``), then the recovered ``frames`` follow, then
        ``then()`` runs.  A full channel refuses the socket."""
        app = session.app
        user_id, member = self.member_of(session, name, channel_data)
        limit = app.limits.max_presence_members

        def joined(answer):
            engine = self.engine
            if answer is None:
                engine.refuse(
                    session,
                    errors.SubscriptionError(
                        name,
                        "Over %d members" % limit,
                        status=403,
                        type="LimitReached",
                    ),
                )
                return
            if session.closed or name in session.channels:
                # its member_added went to no observer: its member_removed
                # lingers only for one this join undid
                self.presence.leave(
                    app.app_id, name, user_id, _ignore, linger=answer.lingered
                )
                return
            session.members[name] = user_id
            members = answer.members
            if answer.position is not None:
                members = self._settled(session, name, members, answer.position)
            channel = engine.join(session, name)
            self.registry.add_member(channel, session, user_id)
            state = self.state_of(members)
            if position:
                state.update(position)
            engine.send(session, messages.subscription_succeeded(name, state))
            for frame in frames:
                session.transport.write(frame)
            if member.peer:
                if session.peers is None:
                    session.peers = set()
                session.peers.add(name)
                self._pair(session, members, name, user_id)
            if answer.new:
                if answer.position is None:
                    # (with a position, the seam's script published it)
                    engine.broker.send(
                        Event(
                            app.app_id,
                            (name,),
                            "pusher_internal:member_added",
                            added_data(user_id, member),
                            exclude=session.socket_id,
                        )
                    )
                engine.emit(
                    app.app_id,
                    "member_added",
                    channel=name,
                    user_id=user_id,
                    **_lingered(answer.lingered),
                )
            if then is not None:
                then()

        def failed(_error):
            # the shared presence did not answer (Redis away)
            if not session.closed and name not in session.channels:
                self.engine.refuse(
                    session,
                    errors.SubscriptionError(
                        name, "Server unavailable: retry shortly", status=503
                    ),
                )

        self.presence.join(
            app.app_id,
            name,
            user_id,
            member,
            limit,
            joined,
            failed=failed,
            socket_id=session.socket_id,
        )

    def _settled(self, session, name, members, position):
        """The members a socket joins with, read at ``position`` of the
        channel's events (a cluster's presence): the member events this
        node delivered past it meanwhile are applied to them, those up
        to it that are still to come are skipped for this socket."""
        after = self.engine.broker.delivered_after(session.app.app_id, name, position)
        if after is None:
            if session.member_floors is None:
                session.member_floors = {}
            session.member_floors[name] = position
            return members
        members = dict(members)
        for event, data in after:
            if event == "pusher_internal:member_added":
                members[data["user_id"]] = Member(
                    data.get("user_info"), data.get("peer") is True
                )
            else:
                members.pop(data["user_id"], None)
        return members

    def state(self, app_id, name, then):
        """``then(data)``: the subscription data of a presence channel
        (see ``state_of``)."""
        self.presence.fetch_members(
            app_id, name, lambda members: then(self.state_of(members))
        )

    @staticmethod
    def state_of(members):
        """Subscription data: the members in Pusher's and Pushi's shapes."""
        hash = {user_id: member.user_info for user_id, member in members.items()}
        return {
            "presence": {"ids": list(hash), "hash": hash, "count": len(hash)},
            "members": hash,
        }

    def leave(self, session, name, channel):
        """A socket left presence channel ``name`` (``channel``, its
        registry entry): the member leaves with the user's last socket."""
        app_id = session.app.app_id
        user_id = session.members.pop(name)
        if session.member_floors:
            session.member_floors.pop(name, None)
        if session.peers:
            session.peers.discard(name)
        self.registry.remove_member(channel, session, user_id)
        # a seam that announces publishes the member event itself
        announced = getattr(self.presence, "announcer", None) is not None

        def left(gone, lingered=False):
            if not gone:
                return
            if not announced:
                self.engine.broker.send(
                    Event(
                        app_id,
                        (name,),
                        "pusher_internal:member_removed",
                        {"user_id": user_id},
                    )
                )
            self.engine.emit(
                app_id,
                "member_removed",
                channel=name,
                user_id=user_id,
                **_lingered(lingered),
            )

        self.presence.leave(app_id, name, user_id, left)

    # peer channels: every pair of presence members that set "peer"

    def _pair(self, session, members, name, user_id):
        """Joins a peer member's socket to the ``peer-<base>:<a>&<b>``
        channels with the other peer ``members``; the other peers' sockets
        join theirs as the member's ``member_added`` reaches them, on
        whichever process (``member_event``)."""
        base = channels.presence_base(name)
        for other_id, other in members.items():
            if other_id != user_id and other.peer:
                self._join_peer(session, channels.peer_name(base, user_id, other_id))

    def member_event(self, session, name, added, member):
        """A member event of presence channel ``name`` reaching one of its
        sockets here, ``session`` (through the broker, which brings it to
        every process alike): a peer socket pairs with a peer member
        added, and leaves its peer channel with a member removed (the
        user's last socket anywhere left)."""
        if not session.peers or name not in session.peers:
            return
        user_id = session.members.get(name)
        other_id = member["user_id"]
        if user_id is None or user_id == other_id:
            return
        peer_name = channels.peer_name(channels.presence_base(name), user_id, other_id)
        if added:
            if member.get("peer") is True:
                self._join_peer(session, peer_name)
        elif peer_name in session.channels:
            self._leave_peer(session, peer_name)

    def _join_peer(self, session, name):
        """Puts a socket on peer channel ``name``; its
        ``subscription_succeeded`` once this process gets the channel's
        events (at once on one process), so that what the other peer
        sends after it reaches the socket."""
        if name in session.channels or not channels.is_valid(
            name, session.app.limits.max_channel_name
        ):
            return
        engine = self.engine
        engine.join(session, name)

        def listening(_error):
            # (Redis away: the broker subscribes the channel once back)
            if not session.closed and name in session.channels:
                engine.send(session, messages.subscription_succeeded(name, {}))

        engine.broker.listen(session.app.app_id, name, listening)

    def _leave_peer(self, session, name):
        self.engine.leave(session, name)
        if session.dialect == messages.PUSHI:
            self.engine.send(session, messages.unsubscription_succeeded(name))

    def unpair(self, session, presence_name, user_id):
        """Takes a socket leaving a presence channel off its peer channels
        there (the other peers leave theirs as the member's
        ``member_removed`` reaches them: ``member_event``)."""
        if not session.peers or presence_name not in session.peers:
            return
        prefix = "peer-%s:" % channels.presence_base(presence_name)
        for name in [name for name in session.channels if name.startswith(prefix)]:
            users = channels.peer_users(name)
            if users is not None and user_id in users:
                self._leave_peer(session, name)


def _ignore(*_answer, **_details):
    pass
