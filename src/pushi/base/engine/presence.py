"""Presence channels: members by user id (through the ``Presence`` seam),
their member events, and the peer channels between members that set
``peer``."""

from pushi.proto import channels, errors, messages

from ..broker import Event
from ..presence import Member
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
                self._pair(session, members, name, user_id, answer.new)
            if answer.new:
                if answer.position is None:
                    # (with a position, the seam's script published it)
                    engine.broker.send(
                        Event(
                            app.app_id,
                            (name,),
                            "pusher_internal:member_added",
                            {"user_id": user_id, "user_info": member.user_info},
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
                members[data["user_id"]] = Member(data.get("user_info"), False)
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

    def _pair(self, session, members, name, user_id, new):
        """Joins a peer member's socket (and, for a new member, the other
        peers' sockets here) to the ``peer-<base>:<a>&<b>`` channels."""
        engine = self.engine
        base = channels.presence_base(name)
        local = self.registry.channel(session.app.app_id, name)
        for other_id, other in members.items():
            if other_id == user_id or not other.peer:
                continue
            peer_name = channels.peer_name(base, user_id, other_id)
            if not channels.is_valid(peer_name, session.app.limits.max_channel_name):
                continue
            sockets = [session]
            if new and local is not None:
                sockets += local.members.get(other_id, ())
            for peer_session in sockets:
                if peer_name not in peer_session.channels:
                    engine.join(peer_session, peer_name)
                    engine.send(
                        peer_session, messages.subscription_succeeded(peer_name, {})
                    )

    def unpair(self, session, presence_name, user_id):
        """Takes a socket leaving a presence channel off its peer channels
        there; when it was the user's last socket, the peer channels of
        that user close for the other peers too."""
        engine = self.engine
        channel = self.registry.channel(session.app.app_id, presence_name)
        sockets = channel.members.get(user_id, ()) if channel else ()
        last = list(sockets) in ([], [session])
        prefix = "peer-%s:" % channels.presence_base(presence_name)
        for name in [name for name in session.channels if name.startswith(prefix)]:
            users = channels.peer_users(name)
            if users is None or user_id not in users:
                continue
            peer_channel = self.registry.channel(session.app.app_id, name)
            leaving = (
                list(peer_channel.sessions) if last and peer_channel else [session]
            )
            for peer_session in leaving:
                engine.leave(peer_session, name)
                if peer_session.dialect == messages.PUSHI:
                    engine.send(peer_session, messages.unsubscription_succeeded(name))


def _ignore(*_answer, **_details):
    pass
