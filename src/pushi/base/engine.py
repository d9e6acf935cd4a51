"""The engine: what each client message does to the live state.

Ownership: every method runs on the WebSocket loop thread (see
``registry``).  The network layer calls ``open``, ``receive`` and
``closed``; the broker calls ``publish``; the REST side reaches the queries
through ``State.call_in_loop``.  Work that may block (the store) goes
through ``offload`` and comes back to the loop with its result; events a
socket stores go through ``persist(events, then)``, whose ``then(error)``
runs on the loop once they are stored or failed.
"""

import collections
import logging
import time

from pushi.proto import auth, channels, errors, messages
from pushi.proto.websocket import text_frame

from . import registry
from .cache import TTL as CACHE_TTL, Cache, Cached
from .history import MemoryHistory, frame_message, since_of
from .limits import DEFAULTS
from .limits import MAX_LATEST
from .metrics import Metrics
from .store.base import MAX_SKIP
from .watchlist import Watchlists

logger = logging.getLogger("pushi.engine")

COUNT_INTERVAL = 1.0
""" Seconds between two subscription counts of one channel: a join storm
costs one count per subscriber per interval, not one per join """

MAX_RECOVERING = 10
""" A socket's recoveries reading the store at once; past them a recovery
says what it cannot recover without reading the store """

MAX_SENDING = 100
""" A socket's sends waiting for the store (and those queued behind them)
before it is told to slow down (4301) """

HISTORY_BYTES = 512 * 1024
""" The most bytes of stored events one answer on a socket carries
(``pusher:latest``, a personal channel's subscription data), newest kept;
at most half of ``PUSHI_MAX_BUFFER``, so that the answer alone never makes
its socket a slow consumer """


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
        self.persist = persist or self._persist_offloaded
        self.history_bytes = min(HISTORY_BYTES, config.max_buffer // 2)
        self.observers = []
        self.cache = Cache()
        # the channels' recent events and positions, for recovery
        self.history = history if history is not None else MemoryHistory()
        # (app_id, channel) -> when its last subscription count went out
        self._counted = {}
        # the channels whose count waits for the end of their interval
        self._counts_due = set()
        self.watchlists = Watchlists()
        # (app_id, user_id) -> [personal loads in flight, changes meanwhile]
        self._personal_loads = {}

    # observers (debug console, metrics): nothing is built when none listens

    def emit(self, app_id, kind, **details):
        for observer in self.observers:
            observer(app_id, kind, details)

    # connection life

    def open(self, transport, app, dialect, origin=None, address=None, key=None):
        """Registers a new socket (connected with ``key``, the app's first
        key when None) and greets it; ``address`` is its client's (a
        trusted proxy's client, see ``net/forwarded``)."""
        session = registry.Session(
            self.registry.new_socket_id(),
            app,
            dialect,
            transport,
            origin=origin,
            address=address,
            now=time.monotonic(),
            key=key,
        )
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

    def closed(self, session):
        """Forgets a socket that is gone, leaving no entry behind."""
        if session.closed:
            return
        session.closed = True
        for name in list(session.channels):
            self._leave(session, name)
        user_id = session.user_id
        self.registry.remove_session(session)
        self.metrics.closed[(session.app.app_id, session.dialect)] += 1
        self.watchlists.forget(session)
        if user_id is not None:
            self._user_left(session.app, user_id)
        logger.debug("close %s", session.socket_id)
        if self.observers:
            self.emit(session.app.app_id, "disconnection", socket_id=session.socket_id)

    def receive(self, session, text):
        """Handles one text message; answers errors, never raises them."""
        session.last_seen = time.monotonic()
        session.ping_sent = None
        try:
            message = messages.parse(text, session.app.limits["max_event_name"])
            self._dispatch(session, message)
        except errors.SubscriptionError as error:
            self.metrics.reject("subscription", error.status)
            # the channel-level event is what pusher-js and pushi.js bind on
            # the channel; Pusher itself answers a bad signature with a
            # pusher:error, which clients written to its documentation expect
            self._send(
                session,
                messages.subscription_error(
                    error.channel, error.type, error.message, error.status
                ),
            )
            if error.pusher_error:
                self._send(
                    session,
                    messages.error(errors.SUBSCRIPTION_REFUSED, error.message),
                )
        except errors.ProtocolError as error:
            if error.closes:
                # counted as the transport closes
                self._drop(session, error.code, error.message)
            else:
                self.metrics.reject("socket", error.code)
                self._send(
                    session, messages.error(error.code, error.message, error.channel)
                )

    def _dispatch(self, session, message):
        event = message["event"]
        data = message["data"]
        if event == "pusher:ping":
            # the transport meters pings of both kinds (it may close)
            if session.transport.pinged():
                self._send(session, messages.pong())
        elif event == "pusher:pong":
            pass
        elif event == "pusher:subscribe":
            self.subscribe(session, data if isinstance(data, dict) else {})
        elif event == "pusher:unsubscribe":
            name = data.get("channel") if isinstance(data, dict) else None
            self.unsubscribe(session, name)
        elif event == "pusher:signin":
            self.signin(session, data if isinstance(data, dict) else {})
        elif event == "pusher:latest":
            self.latest(session, data if isinstance(data, dict) else {})
        elif event.startswith("pusher:") or event.startswith("pusher_internal:"):
            raise errors.ProtocolError(
                errors.UNKNOWN_EVENT, "Unknown event %s" % event[:64]
            )
        else:
            self.client_event(session, message)

    def _send(self, session, text):
        session.transport.write(text_frame(text))

    def _drop(self, session, code, message):
        """Closes a socket as every connection-level error does: a
        ``pusher:error``, then the close with the same code."""
        self._send(session, messages.error(code, message))
        session.transport.close(code, message)

    # subscriptions

    def subscribe(self, session, data):
        name = data.get("channel")
        app = session.app
        channels.check(name, app.limits["max_channel_name"])
        kind = channels.kind(name)
        if kind == channels.PEER:
            raise errors.SubscriptionError(
                name,
                "Peer channels are joined by the server, not subscribed",
                status=403,
                type="AccessDenied",
            )
        if kind == channels.USER:
            # only a signed-in socket has a user channel ("None" is no id)
            if (
                session.user_id is None
                or channels.USER_PREFIX + session.user_id != name
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
            session.keys.add(key)
        try:
            since = since_of(data)
        except ValueError as error:
            raise errors.SubscriptionError(
                name, str(error), status=400, type="InvalidSince"
            )
        if name in session.channels:
            if session.channels[name] is registry.VIA_PERSONAL:
                session.channels[name] = None
            state = self._state_of(app, name)
            if kind != channels.PERSONAL:
                state.update(self._recovery(session, name, None)[0])
            self._send(session, messages.subscription_succeeded(name, state))
            return
        if session.recovering and name in session.recovering:
            return  # the answer to the first one is on its way
        limit = app.limits["max_socket_channels"]
        if (
            limit
            and len(session.channels) >= limit
            and self._own_count(session) >= limit
        ):
            raise errors.SubscriptionError(
                name,
                "Over %d channels on this socket" % limit,
                status=429,
                type="LimitReached",
            )
        if kind != channels.PERSONAL:
            recovery = self._recovery(session, name, since, channel_data)
            if recovery is None:
                # the store is read first (see _recover_from_store)
                return
            self._join_recovered(session, name, channel_data, recovery)
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
        self._join_personal(session, name)
        self._replay_cache(session, name)
        self._count_changed(app, name)

    def _join_recovered(self, session, name, channel_data, recovery):
        """Joins a channel that is not personal, then sends its subscription
        data with the channel's position and, when it recovers, the events
        the socket missed, before any live one."""
        position, frames = recovery
        if channels.kind(name) == channels.PRESENCE:
            self._join_presence(session, name, channel_data, position, frames)
        else:
            self._join(session, name)
            self._send(session, messages.subscription_succeeded(name, position))
            for frame in frames:
                session.transport.write(frame)
        if not position.get("recovered"):
            self._replay_cache(session, name)
        self._count_changed(session.app, name)

    # recovery: what a socket missed on a channel (see ``history``)

    def _recovery(self, session, name, since, channel_data=None):
        """``(position, frames)``: the channel's position for its
        subscription data (none when the app keeps no history) and, for a
        ``since`` (epoch, offset, mid), whether the events after it are
        recovered (``recovered``, else a ``reason``) and their frames.
        None when what the history lacks is read from the store first, by
        ``mid``: the socket then joins when the read is done."""
        app = session.app
        limits = app.limits
        now = time.monotonic()
        current = self.history.position(app.app_id, name, limits, now)
        position = (
            {} if current is None else {"epoch": current[0], "offset": current[1]}
        )
        if since is None:
            return position, ()
        epoch, offset, mid = since
        recovered, frames = self.history.recover(
            app.app_id, name, epoch, offset, limits, now
        )
        if recovered:
            position["recovered"] = True
            return position, frames
        position["recovered"] = False
        position["reason"] = frames
        if (
            mid is None
            or "epoch" not in position
            or self.store is None
            or self.offload is None
            or len(session.recovering or ()) >= MAX_RECOVERING
        ):
            return position, ()
        self._recover_from_store(session, name, mid, position, channel_data)
        return None

    def _recover_from_store(self, session, name, mid, position, channel_data):
        """Reads the stored events of a channel after ``mid`` off the loop,
        then joins the socket and sends them (``"store": true`` in the
        subscription data), followed by those delivered during the read
        (each once: a stored one the read found is not sent again)."""
        app = session.app
        store = self.store
        if session.recovering is None:
            session.recovering = set()
        session.recovering.add(name)
        # what the channel delivers from now on, whatever the history drops
        tapped = self.history.tap(app.app_id, name, app.limits)

        def read():
            events = store.get_events(app.app_id, [name], 0, MAX_LATEST)
            return [event for event in reversed(events) if event["mid"] > mid]

        def answer(events):
            session.recovering.discard(name)
            self.history.untap(app.app_id, name, tapped)
            if session.closed or name in session.channels:
                return
            frames = []
            mids = set()
            if events is not None:
                position["store"] = True
                for event in events:
                    mids.add(event["mid"])
                    frames.append(
                        text_frame(
                            messages.event(
                                event["event"],
                                name,
                                event["data"],
                                mid=event["mid"],
                                timestamp=event["timestamp"],
                                user_id=event.get("user_id"),
                            )
                        )
                    )
            for entry in tapped:
                if not mids or frame_message(entry.frame).get("mid") not in mids:
                    frames.append(entry.frame)
            # the events delivered until now are all in ``tapped``
            current = self.history.position(
                app.app_id, name, session.app.limits, time.monotonic()
            )
            if current is not None:
                position["epoch"], position["offset"] = current
            try:
                self._join_recovered(session, name, channel_data, (position, frames))
            except errors.SubscriptionError as error:
                self._send(
                    session,
                    messages.subscription_error(
                        error.channel, error.type, error.message, error.status
                    ),
                )

        self.offload(read, answer)

    @staticmethod
    def _own_count(session):
        """The channels a socket subscribed to itself: those its personal
        channel covers are the back end's choice, and do not count."""
        return sum(
            via is not registry.VIA_PERSONAL for via in session.channels.values()
        )

    def _join(self, session, name, user_id=None):
        channel, occupied = self.registry.join(session, name, user_id)
        self.metrics.subscribes[session.app.app_id] += 1
        if self.observers:
            if occupied:
                self.emit(session.app.app_id, "occupied", channel=name)
            self.emit(
                session.app.app_id,
                "subscribed",
                channel=name,
                socket_id=session.socket_id,
            )
        return channel

    def _join_presence(self, session, name, channel_data, position=None, frames=()):
        """Joins a presence channel as the member ``channel_data`` names;
        its subscription data carries ``position`` (see ``_recovery``),
        then the recovered ``frames`` follow."""
        app = session.app
        try:
            member = messages.loads(channel_data)
        except ValueError:
            raise errors.SubscriptionError(name, "channel_data is not JSON", status=400)
        if not isinstance(member, dict) or member.get("user_id") in (None, ""):
            raise errors.SubscriptionError(
                name, "channel_data needs a user_id", status=400
            )
        user_id = member["user_id"]
        if isinstance(user_id, bool) or not isinstance(user_id, (str, int, float)):
            raise errors.SubscriptionError(name, "user_id must be a string", status=400)
        user_id = str(user_id)
        if len(user_id) > app.limits["max_user_id"]:
            raise errors.SubscriptionError(name, "user_id is too long", status=400)
        user_info = member.get("user_info")
        if len(messages.dumps(user_info)) > app.limits["max_user_info"]:
            raise errors.SubscriptionError(
                name,
                "user_info over %d bytes" % app.limits["max_user_info"],
                status=413,
                type="LimitReached",
            )
        channel = self.registry.channel(app.app_id, name)
        if (
            channel is not None
            and user_id not in channel.members
            and len(channel.members) >= app.limits["max_presence_members"]
        ):
            raise errors.SubscriptionError(
                name,
                "Over %d members" % app.limits["max_presence_members"],
                status=403,
                type="LimitReached",
            )
        channel = self._join(session, name, user_id)
        new = self.registry.add_member(
            channel, session, user_id, user_info, peer=member.get("peer") is True
        )
        state = self._state_of(app, name)
        if position:
            state.update(position)
        self._send(session, messages.subscription_succeeded(name, state))
        for frame in frames:
            session.transport.write(frame)
        if channel.members[user_id].peer:
            self._pair(session, channel, user_id, new)
        if new:
            frames = {}
            for other in channel.sessions:
                if other is session:
                    continue
                frame = frames.get(other.dialect)
                if frame is None:
                    frame = frames[other.dialect] = text_frame(
                        messages.member_added(name, user_id, user_info, other.dialect)
                    )
                other.transport.write(frame)
            if self.observers:
                self.emit(app.app_id, "member_added", channel=name, user_id=user_id)

    def _state_of(self, app, name):
        """Subscription data: presence in Pusher's and Pushi's shapes."""
        channel = self.registry.channel(app.app_id, name)
        if channel is None or not channels.kind(name) == channels.PRESENCE:
            return {}
        ids = list(channel.members)
        hash = {
            user_id: member.user_info for user_id, member in channel.members.items()
        }
        return {
            "presence": {"ids": ids, "hash": hash, "count": len(ids)},
            "members": hash,
        }

    def unsubscribe(self, session, name):
        if isinstance(name, str) and name == session.loading:
            # not joined yet: the load's answer is dropped when it comes
            session.loading = None
            if session.dialect == messages.PUSHI:
                self._send(session, messages.unsubscription_succeeded(name))
            return
        if not isinstance(name, str) or name not in session.channels:
            return
        if channels.kind(name) == channels.PEER:
            return
        if session.personal and name in session.personal:
            # still covered by the personal channel: the stream goes on
            session.channels[name] = registry.VIA_PERSONAL
        else:
            self._leave(session, name)
        if session.dialect == messages.PUSHI:
            self._send(session, messages.unsubscription_succeeded(name))

    def _leave(self, session, name):
        user_id = session.channels.get(name)
        kind = channels.kind(name)
        if kind == channels.PERSONAL and session.personal is not None:
            covered, session.personal = session.personal, None
            for covered_name in covered:
                if session.channels.get(covered_name) is registry.VIA_PERSONAL:
                    self._leave(session, covered_name)
        elif kind == channels.PRESENCE and isinstance(user_id, str):
            self._unpair(session, name, user_id)
        channel, vacated = self.registry.leave(session, name)
        if channel is None:
            return
        app_id = session.app.app_id
        if isinstance(user_id, str) and self.registry.remove_member(
            channel, session, user_id
        ):
            frames = {}
            for other in channel.sessions:
                frame = frames.get(other.dialect)
                if frame is None:
                    frame = frames[other.dialect] = text_frame(
                        messages.member_removed(name, user_id, other.dialect)
                    )
                other.transport.write(frame)
            if self.observers:
                self.emit(app_id, "member_removed", channel=name, user_id=user_id)
        if self.observers:
            self.emit(app_id, "unsubscribed", channel=name, socket_id=session.socket_id)
            if vacated:
                self.emit(app_id, "vacated", channel=name)
        if not vacated:
            self._count_changed(session.app, name)

    def _count_changed(self, app, name):
        """Tells a channel's subscribers (and the observers: webhooks) how
        many they are, when the app asks for it
        (``subscription_count_events``).  A count costs one frame per
        subscriber, so a channel gets at most one per ``COUNT_INTERVAL``:
        the first change is told at once, later ones in that interval
        are held and told, with the count of that moment, when it ends.
        As on Pusher, presence channels have none: their members say who
        is there."""
        if not app.limits["subscription_count_events"] or channels.kind(name) in (
            channels.USER,
            channels.PRESENCE,
        ):
            return
        key = (app.app_id, name)
        if key in self._counts_due:
            return
        now = time.monotonic()
        last = self._counted.get(key)
        if last is None or now - last >= COUNT_INTERVAL:
            self._send_count(key, now)
            return
        self._counts_due.add(key)
        if self.schedule is not None:
            self.schedule(
                lambda: self._count_due(key), last + COUNT_INTERVAL - now + 0.001
            )

    def _count_due(self, key):
        """Sends a held count (if it is still held: a sweep may have)."""
        if key in self._counts_due:
            self._counts_due.discard(key)
            self._send_count(key, time.monotonic())

    def _send_count(self, key, now):
        app_id, name = key
        channel = self.registry.channel(app_id, name)
        if channel is None:
            # vacated meanwhile: nobody to tell, and no count after a vacate
            self._counted.pop(key, None)
            return
        app = next(iter(channel.sessions)).app
        if not app.limits["subscription_count_events"]:
            return
        self._counted[key] = now
        count = len(channel.sessions)
        frame = text_frame(messages.subscription_count(name, count))
        for write in channel.sessions.values():
            write(frame)
        if self.observers:
            self.emit(
                app_id, "subscription_count", channel=name, subscription_count=count
            )

    # peer channels: every pair of presence members that set "peer"

    def _pair(self, session, channel, user_id, new):
        """Joins a peer member's socket (and, for a new member, the other
        peers' sockets) to the ``peer-<base>:<a>&<b>`` channels."""
        base = channels.presence_base(channel.name)
        for other_id, other in channel.members.items():
            if other_id == user_id or not other.peer:
                continue
            name = channels.peer_name(base, user_id, other_id)
            if not channels.is_valid(name, session.app.limits["max_channel_name"]):
                continue
            sockets = [session] + (other.sessions if new else [])
            for peer_session in sockets:
                if name not in peer_session.channels:
                    self._join(peer_session, name)
                    self._send(peer_session, messages.subscription_succeeded(name, {}))

    def _unpair(self, session, presence_name, user_id):
        """Takes a socket leaving a presence channel off its peer channels
        there; when it was the user's last socket, the peer channels of
        that user close for the other peers too."""
        channel = self.registry.channel(session.app.app_id, presence_name)
        member = channel.members.get(user_id) if channel else None
        last = member is None or member.sessions == [session]
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
                self._leave(peer_session, name)
                if peer_session.dialect == messages.PUSHI:
                    self._send(peer_session, messages.unsubscription_succeeded(name))

    # personal channels: the user's persisted subscriptions, live

    def _join_personal(self, session, name):
        """Subscribes to ``personal-<user_id>``: loads the user's persisted
        subscriptions and last events and encodes the answer off the loop,
        then joins the socket to every subscribed channel and sends it."""
        app = session.app
        user_id = channels.personal_user(name)
        count = min(app.limits["latest_count"], MAX_LATEST)
        max_bytes = self.history_bytes
        store = self.store
        key = (app.app_id, user_id)
        loads = self._personal_loads.setdefault(key, [0, 0])
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
                del self._personal_loads[key]
            if session.loading != name:
                return  # unsubscribed meanwhile
            session.loading = None
            if session.closed or name in session.channels:
                return
            if loads[1] != changes:
                # a subscription changed during the load, which may have
                # read the store before it
                self._join_personal(session, name)
                return
            if result is None:
                self._send(
                    session,
                    messages.subscription_error(
                        name, "StoreError", "Store unavailable", 503
                    ),
                )
                return
            names, frame = result
            self._join(session, name)
            session.personal = set()
            for covered in names:
                self._cover(session, covered)
            session.transport.write(frame)

        self.offload(load, loaded)

    def _cover(self, session, name):
        session.personal.add(name)
        if name not in session.channels:
            self._join(session, name, registry.VIA_PERSONAL)

    def personal_changed(self, app_id, user_id, name, subscribed):
        """A persisted subscription was added or removed over REST: the
        user's open personal channels follow at once, and those still
        loading load again."""
        loads = self._personal_loads.get((app_id, user_id))
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
                if session.channels.get(name) is registry.VIA_PERSONAL:
                    self._leave(session, name)

    # stored events

    def latest(self, session, data):
        """``pusher:latest``: stored events of a channel the socket is on."""
        # each refusal names the channel: the client knows what it answers
        name = data.get("channel")
        if not isinstance(name, str) or name not in session.channels:
            raise errors.ProtocolError(
                errors.INVALID_MESSAGE,
                "pusher:latest needs a channel you are on",
                name if isinstance(name, str) else None,
            )
        skip, count = data.get("skip", 0), data.get("count", 10)
        if not all(isinstance(value, int) and 0 <= value for value in (skip, count)):
            raise errors.ProtocolError(
                errors.INVALID_MESSAGE, "skip and count are counts", name
            )
        if session.reading:
            # each read may scan a long history: a socket waits for its
            # answer before it asks again
            raise errors.ProtocolError(
                errors.RATE_LIMITED, "One pusher:latest at a time", name
            )
        skip, count = min(skip, MAX_SKIP), min(count, MAX_LATEST)
        app_id = session.app.app_id
        store = self.store
        max_bytes = self.history_bytes
        session.reading = True

        def read():
            events = store.get_events(app_id, [name], skip, count)
            return text_frame(messages.latest(name, bounded(events, max_bytes)))

        def answer(frame):
            session.reading = False
            if session.closed:
                return
            if frame is None:
                # the read failed: no history is not what the store said
                self.metrics.reject("socket", errors.STORE_UNAVAILABLE)
                error = messages.error(
                    errors.STORE_UNAVAILABLE, "Store unavailable", name
                )
                self._send(session, error)
                return
            session.transport.write(frame)

        self.offload(read, answer)

    def _store_then(self, session, event, deliver):
        """Stores an event a socket sent, then ``deliver()``s it: whoever it
        reaches with its ``mid`` finds it in any history read after (as a
        REST publish is delivered after its commit).  An event that cannot
        be stored is not delivered, and its sender hears ``pusher:error``
        4305.  A socket's events keep their order: those it sends meanwhile
        wait in ``session.sending`` behind it."""
        if session.sending is None:
            session.sending = collections.deque()
        waiting = [False, deliver]
        self._wait_behind(session, waiting)

        def stored(error):
            if error is not None:
                logger.error("storing a socket's event failed: %s", error)
                waiting[1] = lambda: self._not_stored(session)
            waiting[0] = True
            sending = session.sending
            while sending and sending[0][0]:
                sending.popleft()[1]()
            if not sending:
                session.sending = None

        try:
            self.persist([event], stored)
        except Exception as error:
            stored(error)

    @staticmethod
    def _wait_behind(session, entry):
        """Queues ``entry`` (``[ready, deliver]``) behind the socket's sends
        that wait for the store; past ``MAX_SENDING`` of them the socket is
        told to slow down (4301), whether it stores this one or not."""
        if len(session.sending) >= MAX_SENDING:
            raise errors.ProtocolError(
                errors.RATE_LIMITED,
                "Over %d sends waiting for the store" % MAX_SENDING,
            )
        session.sending.append(entry)

    def _not_stored(self, session):
        if not session.closed:
            self.metrics.reject("socket", errors.STORE_UNAVAILABLE)
            self._send(
                session,
                messages.error(
                    errors.STORE_UNAVAILABLE, "Store unavailable: not stored"
                ),
            )

    def _persist_offloaded(self, events, then):
        """Stores ``events`` on a worker, then ``then(error)`` on the loop:
        for an engine made without a ``persist`` of its server's."""
        store = self.store

        def done(result):
            then(None if result else RuntimeError("events not stored"))

        # offload hands ``done`` None for a failure: a success is True
        self.offload(lambda: store.add_events(events) or True, done)

    # cache channels: the last event of each is kept and replayed

    def _replay_cache(self, session, name):
        if not channels.is_cache(name):
            return
        cached = self.cache.get(session.app.app_id, name, time.monotonic())
        if cached is not None:
            session.transport.write(cached[0].frame_for(name))
        else:
            self._send(session, messages.event("pusher:cache_miss", name, "{}"))
            if self.observers:
                self.emit(session.app.app_id, "cache_miss", channel=name)

    def _max_cache_bytes(self, app_id):
        """The app's bound on what its cache channels hold (the default for
        an app the directory does not know)."""
        app = self.apps.by_id(app_id) if self.apps is not None else None
        return (app.limits if app else DEFAULTS)["max_cache_bytes"]

    # sign-in (Pusher user authentication)

    def signin(self, session, data):
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
        session.keys.add(key)
        user_id = user["id"]
        previous = session.user_id
        arrived = not self.registry.user_sessions(app.app_id, user_id)
        self.registry.set_user(session, user_id)
        self._send(session, messages.signin_success(user_data))
        if not app.limits["watchlist_events"]:
            return
        if previous is not None and previous != user_id:
            self._user_left(app, previous)
        if arrived:
            self._tell_watchers(app.app_id, user_id, "online")
        self._watch(session, user.get("watchlist"))

    # watchlists (opt-in per app): online / offline of signed-in users

    def _watch(self, session, watchlist):
        app = session.app
        if watchlist is None:
            self.watchlists.forget(session)
            return
        limit = app.limits["max_watchlist"]
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
        online = [
            user_id
            for user_id in self.watchlists.watched[session]
            if self.registry.user_sessions(app.app_id, user_id)
        ]
        if online:
            self._send(session, messages.watchlist_events([("online", online)]))

    def _user_left(self, app, user_id):
        """``offline`` to the watchers when a user's last socket is gone."""
        if app.limits["watchlist_events"] and not self.registry.user_sessions(
            app.app_id, user_id
        ):
            self._tell_watchers(app.app_id, user_id, "offline")

    def _tell_watchers(self, app_id, user_id, name):
        watchers = self.watchlists.watchers_of(app_id, user_id)
        if watchers:
            frame = text_frame(messages.watchlist_events([(name, [user_id])]))
            for watcher in watchers:
                watcher.transport.write(frame)

    # client events and Pushi sends

    def client_event(self, session, message):
        app = session.app
        name = message["event"]
        channel_name = message["channel"]
        if not app.client_events:
            raise errors.ProtocolError(
                errors.CLIENT_EVENT_REJECTED, "Client events are off for this app"
            )
        if channel_name is None or channel_name not in session.channels:
            raise errors.ProtocolError(
                errors.CLIENT_EVENT_REJECTED, "Not subscribed to that channel"
            )
        kind = channels.kind(channel_name)
        pushi_send = session.dialect == messages.PUSHI and not name.startswith(
            "client-"
        )
        if not pushi_send and not name.startswith("client-"):
            raise errors.ProtocolError(
                errors.CLIENT_EVENT_REJECTED, "Client event names start with client-"
            )
        if kind not in (channels.PRIVATE, channels.PRESENCE, channels.PEER):
            raise errors.ProtocolError(
                errors.CLIENT_EVENT_REJECTED,
                "Client events go on private or presence channels only",
            )
        now = int(time.monotonic())
        if session.event_window != now:
            session.event_window = now
            session.event_count = 0
        session.event_count += 1
        if session.event_count > app.limits["client_event_rate"]:
            raise errors.ProtocolError(
                errors.RATE_LIMITED,
                "Over %d client events per second" % app.limits["client_event_rate"],
            )
        data = message["data"]
        size = len(data) if isinstance(data, str) else len(messages.dumps(data))
        if size > app.limits["max_event_data"]:
            raise errors.ProtocolError(
                errors.RATE_LIMITED,
                "Event data over %d bytes" % app.limits["max_event_data"],
            )
        # the sender's presence id: of the channel, or for a peer channel
        # of the presence channel that paired it
        presence_name = (
            channels.peer_presence(channel_name)
            if kind == channels.PEER
            else channel_name
        )
        user_id = session.channels.get(presence_name) or None
        extra = {}
        record = None
        if (
            pushi_send
            and message.get("persist", True) is True
            and self.store is not None
        ):
            now = time.time()
            extra = {"mid": messages.message_id(now), "timestamp": now}
            stored_data = data if isinstance(data, str) else messages.dumps(data)
            record = dict(
                extra,
                app_id=app.app_id,
                channel=channel_name,
                event=name,
                data=stored_data,
                user_id=user_id,
            )
        text = messages.event(name, channel_name, data, user_id=user_id, **extra)
        echo = pushi_send and message.get("echo") is True
        self.metrics.client_events[app.app_id] += 1

        def deliver():
            self.deliver(
                app.app_id, channel_name, text, None if echo else session.socket_id
            )
            if self.observers:
                self.emit(
                    app.app_id,
                    "client_event",
                    channel=channel_name,
                    event=name,
                    data=data,
                    socket_id=session.socket_id,
                    user_id=user_id,
                )

        if record is not None:
            self._store_then(session, record, deliver)
        elif session.sending:
            # behind this socket's sends that wait for the store
            self._wait_behind(session, [True, deliver])
        else:
            deliver()

    # delivery (the hot path)

    def deliver(
        self,
        app_id,
        channel_name,
        text,
        exclude=None,
        cached=None,
        max_cache_bytes=None,
        limits=None,
    ):
        """Writes one event to every socket of a channel but ``exclude``
        (a socket id); the frame is built once.  A cache channel keeps it,
        within the app's ``max_cache_bytes``: as ``cached`` (an event
        shared by the channels of one publish) when given, else as this
        frame; ``limits`` are the app's (looked up when not given)."""
        frame = self._framed(app_id, channel_name, text, limits)
        if channels.is_cache(channel_name):
            if max_cache_bytes is None:
                max_cache_bytes = self._max_cache_bytes(app_id)
            self.cache.put(
                app_id,
                channel_name,
                cached if cached is not None else Cached(frame=frame),
                max_cache_bytes,
                time.monotonic(),
            )
        channel = self.registry.channel(app_id, channel_name)
        if channel is None:
            return
        sessions = channel.sessions
        # counted once per event, not per socket
        count = len(sessions)
        if exclude is not None:
            count -= self.registry.sessions.get(exclude) in sessions
        metrics = self.metrics
        metrics.delivered[app_id] += count
        metrics.fan_out_bytes += len(frame) * count
        if exclude is None:
            for write in sessions.values():
                write(frame)
        else:
            for session, write in sessions.items():
                if session.socket_id != exclude:
                    write(frame)

    def _framed(self, app_id, channel_name, text, limits):
        """The frame of an event on a channel: with the channel's next
        position (``offset`` and ``epoch``) and kept for recovery, when the
        app keeps a history; assigned once per channel, whoever receives
        it."""
        if limits is None:
            limits = self._limits(app_id)
        entry = self.history.append(
            app_id, channel_name, text, limits, time.monotonic()
        )
        if entry is None:
            return text_frame(text)
        frame = text_frame(entry.text)
        self.history.keep(app_id, entry, frame, limits)
        return frame

    def _limits(self, app_id):
        """An app's limits (the defaults for an app the directory does not
        know)."""
        app = self.apps.by_id(app_id) if self.apps is not None else None
        return app.limits if app else DEFAULTS

    def publish(self, app_id, channel_names, name, data, exclude=None, extra=None):
        """Delivers an API event to channels (loop thread)."""
        extra = extra or {}
        limits = self._limits(app_id)
        cached = max_cache_bytes = None
        self.metrics.published[app_id] += len(channel_names)
        for channel_name in channel_names:
            if cached is None and channels.is_cache(channel_name):
                cached = Cached(name, data, extra)
                max_cache_bytes = self._max_cache_bytes(app_id)
            self.deliver(
                app_id,
                channel_name,
                messages.event(name, channel_name, data, **extra),
                exclude,
                cached,
                max_cache_bytes,
                limits,
            )
        if self.observers:
            self.emit(
                app_id,
                "api_message",
                channels=list(channel_names),
                event=name,
                data=data,
            )

    # liveness

    def sweep(self, now=None):
        """Pings silent sockets and closes those that never answered."""
        now = time.monotonic() if now is None else now
        self.cache.expire(now)
        self.history.expire(now)
        for key in list(self._counts_due):
            if now - self._counted.get(key, 0) >= COUNT_INTERVAL:
                self._count_due(key)
        self._counted = {
            key: sent
            for key, sent in self._counted.items()
            if now - sent < COUNT_INTERVAL
        }
        idle = self.config.activity_timeout
        for session in list(self.registry.sessions.values()):
            if session.ping_sent is not None:
                if now - session.ping_sent > self.config.pong_timeout:
                    session.transport.close(
                        errors.PONG_TIMEOUT, "Pong reply not received"
                    )
            elif now - session.last_seen > idle:
                session.ping_sent = now
                self._send(session, messages.ping())

    def shutdown(self):
        """Closes every socket with 4200 (reconnect now): a graceful stop."""
        for session in list(self.registry.sessions.values()):
            session.transport.close(errors.GOING_AWAY, "Server shutting down")

    # queries for the HTTP API (loop thread, through State.call_in_loop)

    def channel_info(self, app_id, name, info=()):
        """The ``info`` attributes a channel has: ``user_count`` for
        presence channels, ``subscription_count`` for the others (presence
        channels count users, as on Pusher), ``cache`` for cache channels;
        an attribute the channel does not have is left out."""
        channel = self.registry.channel(app_id, name)
        kind = channels.kind(name)
        result = {"occupied": channel is not None}
        if "subscription_count" in info and kind != channels.PRESENCE:
            result["subscription_count"] = len(channel.sessions) if channel else 0
        if "user_count" in info and kind == channels.PRESENCE:
            result["user_count"] = len(channel.members) if channel else 0
        if "cache" in info and channels.is_cache(name):
            now = time.monotonic()
            cached = self.cache.get(app_id, name, now)
            # asked and nothing cached: present, as null
            result["cache"] = (
                None
                if cached is None
                else dict(cached[0].event(), ttl=int(cached[1] - now))
            )
        return result

    def app_stats(self, app_id):
        """An app's counters: open connections, occupied channels, and
        what its cache channels hold (entries, bytes, the bound) and have
        evicted to stay within it."""
        cache = self.cache.stats(app_id)
        cache["max_bytes"] = self._max_cache_bytes(app_id)
        recovery = self.history.stats(app_id)
        recovery["max_bytes"] = self._limits(app_id)["max_recovery_bytes"]
        return {
            "connections": self.registry.app_count(app_id),
            "channels": len(self.registry.channels(app_id)),
            "cache": cache,
            "recovery": recovery,
        }

    def list_channels(self, app_id, prefix="", info=()):
        result = {}
        for name, channel in self.registry.channels(app_id).items():
            if not name.startswith(prefix):
                continue
            entry = {}
            presence = channels.kind(name) == channels.PRESENCE
            if "user_count" in info and presence:
                entry["user_count"] = len(channel.members)
            if "subscription_count" in info and not presence:
                entry["subscription_count"] = len(channel.sessions)
            result[name] = entry
        return result

    def channel_users(self, app_id, name):
        channel = self.registry.channel(app_id, name)
        return [{"id": user_id} for user_id in (channel.members if channel else ())]

    def terminate_user(self, app_id, user_id):
        sessions = self.registry.user_sessions(app_id, user_id)
        for session in sessions:
            self._drop(session, errors.UNAUTHORIZED, "Connections terminated")
        return len(sessions)

    def update_app(self, app):
        """Points the sockets of an app at its new settings, or closes them
        (4003) when it is disabled, and (4009) those that rely on a key the
        app no longer holds."""
        sessions = [
            session
            for session in self.registry.sessions.values()
            if session.app.app_id == app.app_id
        ]
        self.cache.trim(app.app_id, app.limits["max_cache_bytes"])
        self.history.trim(app.app_id, app.limits)
        for session in sessions:
            session.app = app
            if not app.enabled:
                self._drop(session, errors.APP_DISABLED, "App disabled")
            elif not session.keys.issubset(app.secrets):
                self._drop(session, errors.UNAUTHORIZED, "App key revoked")

    def sockets(self, app_id):
        return [
            {
                "socket_id": session.socket_id,
                "dialect": session.dialect,
                "address": session.address,
                "channels": list(session.channels),
                "user_id": session.user_id,
            }
            for session in self.registry.sessions.values()
            if session.app.app_id == app_id
        ]


def public_event(event):
    """A stored event as clients see it (no app id)."""
    return {
        "mid": event["mid"],
        "channel": event["channel"],
        "event": event["event"],
        "data": event["data"],
        "timestamp": event["timestamp"],
        "user_id": event.get("user_id"),
    }


def bounded(events, max_bytes):
    """Stored events (newest first) as clients see them, as many as fit in
    ``max_bytes`` of the message that carries them: the newest always,
    then older ones while they fit.  Runs off the loop."""
    kept = []
    size = 0
    for event in events:
        event = public_event(event)
        # the event as the message holds it: inside the data string
        size += len(messages.dumps(messages.dumps(event)).encode("utf-8"))
        if kept and size > max_bytes:
            break
        kept.append(event)
    return kept
