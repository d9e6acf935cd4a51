"""Sign-in (Pusher user authentication) and watchlists: a signed-in
socket's watchers hear when its user comes online and goes offline,
through the ``Users`` seam."""

from pushi.proto import auth, channels, errors, messages
from pushi.proto.websocket import text_frame


class SignIn:
    def __init__(self, engine):
        self.engine = engine
        self.registry = engine.registry
        self.users = engine.users
        self.watchlists = engine.watchlists

    def signin(self, session, data):
        engine = self.engine
        app = session.app
        user_data = data.get("user_data")
        presented = data.get("auth")
        try:
            user = messages.loads(user_data) if isinstance(user_data, str) else None
        except ValueError:
            user = None
        key = (
            auth.verify_any(
                app.secrets, auth.user_string(session.socket_id, user_data), presented
            )
            if isinstance(user, dict)
            and isinstance(user.get("id"), str)
            and user["id"] != ""
            else None
        )
        if key is None:
            raise errors.ProtocolError(errors.UNAUTHORIZED, "Invalid sign-in")
        assert isinstance(user, dict)  # a key is only looked for then
        session.add_key(key)
        user_id = user["id"]
        previous = session.user_id
        self.registry.set_user(session, user_id)
        success = messages.signin_success(user_data)
        if previous == user_id:
            engine.send(session, success)
        else:
            if previous is not None:
                # the socket is no longer that user: off its channel too
                old = channels.USER_PREFIX + previous
                if old in session.channels:
                    engine.leave(session, old)
                    if session.dialect == messages.PUSHI:
                        engine.send(session, messages.unsubscription_succeeded(old))
                self.signed_out(app, previous)

            def counted(came):
                # answered once every node counts the sign-in: a close of
                # another of the user's sockets after it cannot take the
                # user offline
                if not session.closed:
                    engine.send(session, success)
                self._arrived(app, user_id, came)

            self.users.signed_in(
                app.app_id, user_id, counted, failed=lambda _error: counted(False)
            )
        if app.limits.watchlist_events:
            self._watch(session, user.get("watchlist"))

    def _arrived(self, app, user_id, came):
        if came and app.limits.watchlist_events:
            self.tell_watchers(app.app_id, user_id, "online")

    def signed_out(self, app, user_id):
        """A socket of ``user_id`` went or signed in as another user:
        ``offline`` to the watchers when it was the user's last."""

        def gone(left):
            if left and app.limits.watchlist_events:
                self.tell_watchers(app.app_id, user_id, "offline")

        self.users.signed_out(app.app_id, user_id, gone)

    def _watch(self, session, watchlist):
        app = session.app
        if watchlist is None:
            self.watchlists.forget(session)
            return
        limit = app.limits.max_watchlist
        if (
            not isinstance(watchlist, list)
            or len(watchlist) > limit
            or not all(isinstance(user_id, str) and user_id for user_id in watchlist)
        ):
            self.watchlists.forget(session)
            raise errors.ProtocolError(
                errors.WATCHLIST_LIMIT,
                "watchlist must be a list of at most %d user ids" % limit,
            )
        self.watchlists.watch(session, watchlist)

        def told(online):
            if online and not session.closed:
                self.engine.send(
                    session, messages.watchlist_events([("online", online)])
                )

        self.users.fetch_online(app.app_id, self.watchlists.watched[session], told)

    def tell_watchers(self, app_id, user_id, name):
        watchers = self.watchlists.watchers_of(app_id, user_id)
        if watchers:
            frame = text_frame(messages.watchlist_events([(name, [user_id])]))
            for watcher in watchers:
                watcher.transport.write(frame)
