"""The engine: what each client message does to the live state.

``Engine`` is the facade the network layer, the broker and the REST side
call; each concern lives in its module of this package (subscriptions
and sockets here; ``presence``, ``personal``, ``recovery``, ``stored``,
``counts``, ``signin``, ``client_events``, ``delivery``, ``queries``).
What a cluster shares sits behind a seam with an in-process twin: the
broker (``base/broker``), presence members (``base/presence``), channel
occupancy and connection counts (``base/occupancy``), signed-in users
(``base/users``), cache entries (``base/cache``) and recovery history
(``base/history``).  The registry (``base/registry``) holds this
process's sockets and whom they are on.

Ownership: every method runs on the WebSocket loop thread (see
``registry``).  The network layer calls ``open``, ``receive`` and
``closed``; the broker calls ``deliver``; the REST side reaches the
queries through ``State.call_in_loop``.  Work that may block (the store)
goes through ``offload`` and comes back to the loop with its result;
events a socket stores go through ``persist(events, then)``, whose
``then(error)`` runs on the loop once they are stored or failed.  A seam
answers through a continuation, which may run at once (the in-process
twins) or on a later turn.
"""

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from pushi.proto import auth, channels, errors, messages
from pushi.proto.websocket import text_frame

from .. import registry
from ..broker import Event, LocalBroker
from ..cache import TTL as CACHE_TTL
from ..cache import Cache
from ..history import MemoryHistory, since_of
from ..limits import DEFAULT_LIMITS, App, Limits
from ..metrics import Metrics
from ..occupancy import LocalOccupancy
from ..presence import LocalPresence
from ..registry import Session
from ..users import LocalUsers
from ..watchlist import Watchlists
from ..webhooks import lingered as _lingered
from .client_events import ClientEvents
from .counts import SubscriptionCounts
from .delivery import Delivery
from .personal import PersonalChannels
from .presence import PresenceChannels
from .queries import Queries
from .recovery import Recovery
from .signin import SignIn
from .stored import HISTORY_BYTES, MAX_SENDING, StoredEvents, bounded, public_event

__all__ = [
    "CACHE_TTL",
    "MAX_SENDING",
    "Engine",
    "bounded",
    "public_event",
]

logger = logging.getLogger("pushi.engine")


class Engine:
    """Channel logic over a ``Registry`` for the sockets of this process."""

    def __init__(
        self,
        config,
        store=None,
        offload=None,
        schedule=None,
        apps=None,
        persist=None,
        metrics=None,
        history=None,
        broker=None,
        presence=None,
        occupancy=None,
        users=None,
        cache=None,
    ):
        self.config = config
        # counted on the loop, read by scrapes (``base/metrics``)
        self.metrics = metrics if metrics is not None else Metrics()
        self.registry = registry.Registry()
        self.store = store
        self.offload = offload
        # schedule(work, seconds) runs work on the loop later; without one,
        # the counts held back are sent by the next sweep
        self.schedule = schedule
        # apps.by_id(app_id): the app's limits for a publish (from memory)
        self.apps = apps
        self.history_bytes = min(HISTORY_BYTES, config.max_buffer // 2)
        self.observers = []
        # the seams, each with its in-process twin
        self.broker = broker or LocalBroker(
            _run_now, self.deliver, _nothing, announce=self.announce
        )
        self.presence = presence or LocalPresence()
        self.occupancy = occupancy or LocalOccupancy(self.registry)
        self.users = users or LocalUsers(self.registry)
        self.cache = cache if cache is not None else Cache()
        # the channels' recent events and positions, for recovery
        self.history = history if history is not None else MemoryHistory()
        self.watchlists = Watchlists()
        # the concerns
        self.recovery = Recovery(self)
        self.delivery = Delivery(self)
        self.counts = SubscriptionCounts(self)
        self.stored = StoredEvents(self, persist)
        self.presence_channels = PresenceChannels(self)
        self.personal = PersonalChannels(self)
        self.signin = SignIn(self)
        self.client_events = ClientEvents(self)
        self.queries = Queries(self)
        # what the REST side calls
        self.channel_info = self.queries.channel_info
        self.app_stats = self.queries.app_stats
        self.list_channels = self.queries.list_channels
        self.channel_users = self.queries.channel_users
        self.terminate_user = self.queries.terminate_user
        self.update_app = self.queries.update_app
        self.sockets = self.queries.sockets
        self.personal_changed = self.personal.changed

    # observers (debug console, metrics, webhooks): nothing is built when
    # none listens

    def emit(self, app_id: str, kind: str, **details: Any) -> None:
        for observer in self.observers:
            observer(app_id, kind, details)

    def limits(self, app_id: str) -> Limits:
        """An app's limits (the defaults for an app the directory does not
        know)."""
        app = self.apps.by_id(app_id) if self.apps is not None else None
        return app.limits if app else DEFAULT_LIMITS

    # connection life

    def admit(
        self, app: App, then: Callable[[tuple[int, str] | None, bool], None]
    ) -> None:
        """Counts a socket about to open in the app's sockets of every
        process that shares the occupancy (a cluster's), against its
        ``max_connections``: ``then(refusal, counted)``, ``refusal`` None
        or the ``(code, message)`` that turns the socket away, ``counted``
        whether the shared count holds it (``open`` it with that).  An app
        with no ``max_connections`` is counted without a wait, as is one
        process, whose registry counts (``Access.admit_socket``):
        ``then(None, False)`` at once."""
        # the shared twin's (``cluster/seams``)
        counted = getattr(self.occupancy, "counted", None)
        opened = getattr(self.occupancy, "opened", None)
        if counted is None or opened is None:
            then(None, False)
            return
        limit = app.limits.max_connections
        if not limit:
            counted(app.app_id, 1)
            then(None, True)
            return

        def answered(count):
            if count is None:
                then((errors.OVER_QUOTA, "App over its connection quota"), False)
            else:
                then(None, True)

        # Redis away: admitted (its subscriptions answer 503), and counted
        # once Redis is back (the node's share is written again)
        opened(app.app_id, limit, answered, lambda _error: then(None, True))

    def uncount(self, app: App) -> None:
        """Takes a socket ``admit`` counted off the shared count."""
        counted = getattr(self.occupancy, "counted", None)
        if counted is not None:
            counted(app.app_id, -1)

    def open(
        self,
        transport: Any,
        app: App,
        dialect: str,
        origin: str | None = None,
        address: str | None = None,
        key: str | None = None,
        counted: bool = False,
    ) -> Session:
        """Registers a new socket (connected with ``key``, the app's first
        key when None) and greets it; ``address`` is its client's (a
        trusted proxy's client, see ``net/forwarded``); ``counted`` when
        ``admit`` counted it."""
        # positional: a class called with keywords builds a dict of them
        session = registry.Session(
            self.registry.new_socket_id(),
            app,
            dialect,
            transport,
            origin,
            address,
            time.monotonic(),
            key,
        )
        session.counted = counted
        self.registry.add_session(session)
        self.metrics.opened[(app.app_id, dialect)] += 1
        transport.write(
            text_frame(
                messages.connection_established(
                    session.socket_id, self.config.activity_timeout
                )
            )
        )
        logger.debug(
            "open %s %s app %s from %s", session.socket_id, dialect, app.app_id, address
        )
        if self.observers:
            self.emit(
                app.app_id,
                "connection",
                socket_id=session.socket_id,
                dialect=dialect,
                origin=origin,
                address=address,
            )
        return session

    def closed(self, session: Session) -> None:
        """Forgets a socket that is gone, leaving no entry behind."""
        if session.closed:
            return
        session.closed = True
        for name in list(session.channels):
            self.leave(session, name)
        user_id = session.user_id
        self.registry.remove_session(session)
        if session.counted:
            self.uncount(session.app)
        self.metrics.closed[(session.app.app_id, session.dialect)] += 1
        self.watchlists.forget(session)
        if user_id is not None:
            self.signin.signed_out(session.app, user_id)
        logger.debug("close %s", session.socket_id)
        if self.observers:
            self.emit(session.app.app_id, "disconnection", socket_id=session.socket_id)

    def receive(self, session: Session, text: str) -> None:
        """Handles one text message; answers errors, never raises them."""
        session.last_seen = time.monotonic()
        session.ping_sent = None
        try:
            message = messages.parse(text, session.app.limits.max_event_name)
            self._dispatch(session, message)
        except errors.SubscriptionError as error:
            self.refuse(session, error)
        except errors.ProtocolError as error:
            if error.closes:
                # counted as the transport closes
                self.drop(session, error.code, error.message)
            else:
                self.metrics.reject("socket", error.code)
                self.send(
                    session, messages.error(error.code, error.message, error.channel)
                )

    def _dispatch(self, session, message):
        event = message["event"]
        data = message["data"]
        if event == "pusher:ping":
            # the transport meters pings of both kinds (it may close)
            if session.transport.pinged():
                self.send(session, messages.pong())
        elif event == "pusher:pong":
            pass
        elif event == "pusher:subscribe":
            self.subscribe(session, data if isinstance(data, dict) else {})
        elif event == "pusher:unsubscribe":
            name = data.get("channel") if isinstance(data, dict) else None
            self.unsubscribe(session, name)
        elif event == "pusher:signin":
            self.signin.signin(session, data if isinstance(data, dict) else {})
        elif event == "pusher:latest":
            self.stored.latest(session, data if isinstance(data, dict) else {})
        elif event.startswith("pusher:") or event.startswith("pusher_internal:"):
            raise errors.ProtocolError(
                errors.UNKNOWN_EVENT, "Unknown event %s" % event[:64]
            )
        else:
            self.client_events.receive(session, message)

    def send(self, session: Session, text: str) -> None:
        session.transport.write(text_frame(text))

    def drop(self, session: Session, code: int, message: str) -> None:
        """Closes a socket as every connection-level error does: a
        ``pusher:error``, then the close with the same code."""
        self.send(session, messages.error(code, message))
        session.transport.close(code, message)

    def refuse(self, session: Session, error: errors.SubscriptionError) -> None:
        """Answers a refused subscription (a ``SubscriptionError``)."""
        self.metrics.reject("subscription", error.status)
        # the channel-level event is what pusher-js and pushi.js bind on
        # the channel; Pusher itself answers a bad signature with a
        # pusher:error, which clients written to its documentation expect
        self.send(
            session,
            messages.subscription_error(
                error.channel, error.type, error.message, error.status
            ),
        )
        if error.pusher_error:
            self.send(
                session, messages.error(errors.SUBSCRIPTION_REFUSED, error.message)
            )

    # subscriptions

    def subscribe(self, session: Session, data: dict) -> None:
        name = data.get("channel")
        app = session.app
        channels.check(name, app.limits.max_channel_name)
        assert isinstance(name, str)  # a valid channel name, checked above
        kind = channels.kind(name)
        if kind == channels.PEER:
            raise errors.SubscriptionError(
                name,
                "Peer channels are joined by the server, not subscribed",
                status=403,
                type="AccessDenied",
            )
        # only a signed-in socket has a user channel ("None" is no id)
        if kind == channels.USER and (
            session.user_id is None or channels.USER_PREFIX + session.user_id != name
        ):
            raise errors.SubscriptionError(
                name, "Sign in as this user first", status=403, type="AccessDenied"
            )
        channel_data = data.get("channel_data")
        if channels.needs_auth(name):
            if kind == channels.PRESENCE:
                if not isinstance(channel_data, str):
                    raise errors.SubscriptionError(
                        name, "Presence channels need channel_data", status=400
                    )
                signed = auth.channel_string(session.socket_id, name, channel_data)
            else:
                signed = auth.channel_string(session.socket_id, name)
            key = auth.verify_any(app.secrets, signed, data.get("auth"))
            if key is None:
                raise errors.SubscriptionError(
                    name, "Invalid signature", status=401, pusher_error=True
                )
            session.add_key(key)
        try:
            since = since_of(data)
        except ValueError as error:
            raise errors.SubscriptionError(
                name, str(error), status=400, type="InvalidSince"
            ) from None
        if name in session.channels:
            # subscribed again: it answers with the channel's state now
            session.discard_via_personal(name)

            def answer(state):
                if kind != channels.PERSONAL:
                    state.update(self.recovery.position(session, name))
                if not session.closed:
                    self.send(session, messages.subscription_succeeded(name, state))

            if kind == channels.PRESENCE:
                self.presence_channels.state(app.app_id, name, answer)
            else:
                answer({})
            return
        if session.recovering and name in session.recovering:
            # the answer to the first one is on its way (and wanted again,
            # if the socket unsubscribed meanwhile)
            session.recovering[name] = True
            return
        if session.listening and name in session.listening:
            return  # the answer to the first one is on its way
        limit = app.limits.max_socket_channels
        # the subscriptions waiting for their recovery or the broker count
        waiting = sum(session.recovering.values()) if session.recovering else 0
        waiting += len(session.listening) if session.listening else 0
        if (
            limit
            and len(session.channels) + waiting >= limit
            and len(session.channels) - len(session.via_personal) + waiting >= limit
        ):
            # the channels a personal channel covers are the back end's
            # choice, and do not count
            raise errors.SubscriptionError(
                name,
                "Over %d channels on this socket" % limit,
                status=429,
                type="LimitReached",
            )
        if kind != channels.PERSONAL:
            self._listen(session, name, channel_data, since)
            return
        if session.loading == name:
            return  # the answer to the first one is on its way
        if session.loading is not None:
            # each load reads the store: a socket waits for one before
            # it asks for another
            raise errors.SubscriptionError(
                name,
                "One personal channel load at a time",
                status=429,
                type="LimitReached",
            )
        self.personal.join(session, name)

    def _listen(self, session, name, channel_data, since):
        """Has the broker bring this process the channel's events (at once
        when it already does), then recovers what the socket missed and
        joins it."""
        if session.listening is None:
            session.listening = set()
        session.listening.add(name)

        def listening(error):
            if name not in session.listening:
                return  # unsubscribed meanwhile
            session.listening.discard(name)
            if session.closed or name in session.channels:
                return
            if error is not None:
                self.refuse(
                    session,
                    errors.SubscriptionError(
                        name, "Server unavailable: retry shortly", status=503
                    ),
                )
                return
            self.recovery.recover(
                session,
                name,
                since,
                lambda position, frames: self._join_recovered(
                    session, name, channel_data, position, frames
                ),
            )

        self.broker.listen(session.app.app_id, name, listening)

    def _join_recovered(self, session, name, channel_data, position, frames):
        """Joins a channel that is not personal, then sends its subscription
        data with the channel's position and, when it recovers, the events
        the socket missed, before any live one."""

        def joined():
            if not position.get("recovered"):
                self.delivery.replay_cache(session, name)
            self.counts.changed(session.app, name)

        if channels.kind(name) == channels.PRESENCE:
            # the member joins later in a cluster: what the channel
            # delivers until then follows the recovered frames
            frames = list(frames)
            app = session.app
            self.history.hold(app.app_id, name, session, frames, app.limits)
            self.presence_channels.join(
                session, name, channel_data, position, frames, joined
            )
            return
        self.join(session, name)
        self.send(session, messages.subscription_succeeded(name, position))
        for frame in frames:
            session.transport.write(frame)
        joined()

    def join(self, session: Session, name: str) -> registry.Channel:
        """Puts a socket on a channel (the occupancy hears of it)."""
        app_id = session.app.app_id
        channel = self.registry.join(session, name)
        self.metrics.subscribes[app_id] += 1
        if len(channel.sessions) == 1:
            # the first socket here: the broker brings the channel's events
            self.broker.listen(app_id, name, _ignore)

        def counted(_count, occupied, lingered=False):
            if occupied:
                self.emit(app_id, "occupied", channel=name, **_lingered(lingered))

        self.occupancy.joined(app_id, name, counted if self.observers else _ignore)
        # its answer goes out once every server would count it
        self.occupancy.hold_until_shared(session.transport)
        if self.observers:
            self.emit(app_id, "subscribed", channel=name, socket_id=session.socket_id)
        return channel

    def unsubscribe(self, session: Session, name: Any) -> None:
        if not isinstance(name, str):
            return
        if name == session.loading:
            # not joined yet: the load's answer is dropped when it comes
            session.loading = None
        elif self.pending(session, name):
            # not joined yet: the answer is dropped when it comes
            if session.recovering and name in session.recovering:
                session.recovering[name] = False
            elif session.listening:
                session.listening.discard(name)
            if session.personal and name in session.personal:
                # its personal channel covers it, which it waited for
                session.add_via_personal(name)
                self.join(session, name)
        elif name not in session.channels or channels.kind(name) == channels.PEER:
            return
        elif not self.personal.uncover(session, name):
            # not covered by the personal channel, whose stream goes on
            self.leave(session, name)
        if session.dialect == messages.PUSHI:
            self.send(session, messages.unsubscription_succeeded(name))

    @staticmethod
    def pending(session: Session, name: str) -> bool:
        """Whether a subscription of the socket waits for its recovery or
        for the broker (and was not unsubscribed since)."""
        return bool(
            (session.recovering and session.recovering.get(name))
            or (session.listening and name in session.listening)
        )

    def leave(self, session: Session, name: str) -> None:
        """Takes a socket off a channel, with what that ends there."""
        kind = channels.kind(name)
        if kind == channels.PERSONAL and session.personal is not None:
            self.personal.left(session)
        elif kind == channels.PRESENCE and name in session.members:
            self.presence_channels.unpair(session, name, session.members[name])
        session.discard_via_personal(name)
        channel = self.registry.leave(session, name)
        if channel is None:
            return
        app_id = session.app.app_id
        if not channel.sessions:
            self.broker.unlisten(app_id, name)
        if name in session.members:
            self.presence_channels.leave(session, name, channel)

        def counted(_count, vacated, lingered=False):
            if self.observers:
                self.emit(
                    app_id, "unsubscribed", channel=name, socket_id=session.socket_id
                )
                if vacated:
                    self.emit(app_id, "vacated", channel=name, **_lingered(lingered))
            if not vacated:
                self.counts.changed(session.app, name)

        self.occupancy.left(app_id, name, counted)

    # delivery

    def deliver(self, event: Event) -> None:
        """Writes an event (a broker ``Event``) to its channels' sockets
        here: the broker calls it, on the loop."""
        self.delivery.deliver(event)

    def publish(
        self,
        app_id: str,
        channel_names: Iterable[str],
        name: str,
        data: Any,
        exclude: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Publishes an API event through the broker (loop thread)."""
        self.broker.publish(
            Event(app_id, tuple(channel_names), name, data, exclude, extra)
        )

    def announce(self, event: Event) -> None:
        """An event published over REST, once, wherever it is delivered:
        counted and shown to the observers."""
        self.metrics.published[event.app_id] += len(event.channels)
        if self.observers:
            self.emit(
                event.app_id,
                "api_message",
                channels=list(event.channels),
                event=event.name,
                data=event.data,
            )

    # liveness

    def sweep(self, now: float | None = None) -> None:
        """Pings silent sockets and closes those that never answered."""
        now = time.monotonic() if now is None else now
        self.cache.expire(now)
        self.history.expire(now)
        self.recovery.expire(now)
        self.counts.sweep(now)
        idle = self.config.activity_timeout
        for session in list(self.registry.sessions.values()):
            if session.ping_sent is not None:
                if now - session.ping_sent > self.config.pong_timeout:
                    session.transport.close(
                        errors.PONG_TIMEOUT, "Pong reply not received"
                    )
            elif now - session.last_seen > idle:
                session.ping_sent = now
                self.send(session, messages.ping())

    def shutdown(self) -> None:
        """Closes every socket with 4200 (reconnect now): a graceful stop."""
        for session in list(self.registry.sessions.values()):
            session.transport.close(errors.GOING_AWAY, "Server shutting down")


def _run_now(work):
    work()


def _nothing():
    pass


def _ignore(*_answer, **_details):
    pass
