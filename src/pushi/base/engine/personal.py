"""Personal channels: ``personal-<user_id>`` puts a socket on every
channel its user subscribed to over REST (stored), live as they change,
and carries the user's last stored events in its subscription data."""

from pushi.proto import channels, messages
from pushi.proto.websocket import text_frame

from ..limits import MAX_LATEST
from .stored import bounded


class PersonalChannels:
    def __init__(self, engine):
        self.engine = engine
        self.registry = engine.registry
        # (app_id, user_id) -> [personal loads in flight, changes meanwhile]
        self._loads = {}

    def join(self, session, name):
        """Subscribes to ``personal-<user_id>``: loads the user's persisted
        subscriptions and last events and encodes the answer off the loop,
        then joins the socket to every subscribed channel and sends it."""
        engine = self.engine
        app = session.app
        user_id = channels.personal_user(name)
        count = min(app.limits.latest_count, MAX_LATEST)
        max_bytes = engine.history_bytes
        store = engine.store
        key = (app.app_id, user_id)
        loads = self._loads.setdefault(key, [0, 0])
        loads[0] += 1
        changes = loads[1]
        session.loading = name

        def load():
            names = [
                record["event"]
                for record in store.list_subscriptions(app.app_id, user_id=user_id)
            ]
            events = store.get_events(app.app_id, names, 0, count) if names else []
            data = {"subscriptions": names, "events": bounded(events, max_bytes)}
            return names, text_frame(messages.subscription_succeeded(name, data))

        def loaded(result):
            loads[0] -= 1
            if not loads[0]:
                del self._loads[key]
            if session.loading != name:
                return  # unsubscribed meanwhile
            session.loading = None
            if session.closed or name in session.channels:
                return
            if loads[1] != changes:
                # a subscription changed during the load, which may have
                # read the store before it
                self.join(session, name)
                return
            if result is None:
                engine.send(
                    session,
                    messages.subscription_error(
                        name, "StoreError", "Store unavailable", 503
                    ),
                )
                return
            names, frame = result
            engine.join(session, name)
            session.personal = set()
            for covered in names:
                self._cover(session, covered)
            session.transport.write(frame)
            engine.delivery.replay_cache(session, name)
            engine.counts.changed(session.app, name)

        engine.offload(load, loaded)

    def _cover(self, session, name):
        session.personal.add(name)
        # a subscription of its own on its way joins it, answered
        if name not in session.channels and not self.engine.pending(session, name):
            session.add_via_personal(name)
            self.engine.join(session, name)

    def uncover(self, session, name):
        """A socket unsubscribed from ``name``: it stays on it when its
        personal channel covers it (True)."""
        if session.personal and name in session.personal:
            session.add_via_personal(name)
            return True
        return False

    def left(self, session):
        """The socket left its personal channel: it leaves the channels it
        was on through it alone."""
        covered, session.personal = session.personal, None
        for name in covered or ():
            if name in session.via_personal:
                self.engine.leave(session, name)

    def changed(self, app_id, user_id, name, subscribed):
        """A persisted subscription was added or removed over REST: the
        user's open personal channels follow at once, and those still
        loading load again."""
        loads = self._loads.get((app_id, user_id))
        if loads is not None:
            loads[1] += 1
        personal = self.registry.channel(app_id, "personal-" + user_id)
        for session in list(personal.sessions) if personal else ():
            if session.personal is None:
                continue
            if subscribed:
                self._cover(session, name)
            else:
                session.personal.discard(name)
                if name in session.via_personal:
                    self.engine.leave(session, name)
