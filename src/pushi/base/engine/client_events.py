"""Client events (``client-*`` on private and presence channels) and
Pushi sends (any name, from a Pushi-dialect socket, stored unless it says
otherwise)."""

import collections
import time

from pushi.proto import channels, errors, messages

from ..broker import Event


class ClientEvents:
    def __init__(self, engine):
        self.engine = engine

    def receive(self, session, message):
        engine = self.engine
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
        rate = app.limits.client_event_rate
        now = time.monotonic()
        # when its last ``rate`` client events came: at most ``rate`` in
        # any second
        recent = session.event_times
        if recent is None or recent.maxlen != rate:
            recent = session.event_times = collections.deque(maxlen=rate)
        if len(recent) == rate and (not rate or now - recent[0] < 1):
            raise errors.ProtocolError(
                errors.RATE_LIMITED, "Over %d client events per second" % rate
            )
        recent.append(now)
        data = message["data"]
        size = len(data) if isinstance(data, str) else len(messages.dumps(data))
        if size > app.limits.max_event_data:
            raise errors.ProtocolError(
                errors.RATE_LIMITED,
                "Event data over %d bytes" % app.limits.max_event_data,
            )
        # the sender's presence id: of the channel, or for a peer channel
        # of the presence channel that paired it
        presence_name = (
            channels.peer_presence(channel_name)
            if kind == channels.PEER
            else channel_name
        )
        user_id = session.members.get(presence_name)
        extra = {"user_id": user_id}
        record = None
        if (
            pushi_send
            and message.get("persist", True) is True
            and engine.store is not None
        ):
            timestamp = time.time()
            extra.update(mid=messages.message_id(timestamp), timestamp=timestamp)
            record = {
                "mid": extra["mid"],
                "timestamp": timestamp,
                "app_id": app.app_id,
                "channel": channel_name,
                "event": name,
                "data": data if isinstance(data, str) else messages.dumps(data),
                "user_id": user_id,
            }
        echo = pushi_send and message.get("echo") is True
        event = Event(
            app.app_id,
            (channel_name,),
            name,
            data,
            exclude=None if echo else session.socket_id,
            extra=extra,
        )
        engine.metrics.client_events[app.app_id] += 1

        def deliver():
            engine.broker.send(event)
            engine.emit(
                app.app_id,
                "client_event",
                channel=channel_name,
                event=name,
                data=data,
                socket_id=session.socket_id,
                user_id=user_id,
            )

        if record is not None:
            engine.stored.then_deliver(session, record, deliver)
        elif session.sending:
            # behind this socket's sends that wait for the store
            engine.stored.wait_behind(session, [True, deliver])
        else:
            deliver()
