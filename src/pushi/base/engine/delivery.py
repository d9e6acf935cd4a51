"""Delivery, the hot path: an event written to every socket of its
channels on this process, its frame built once per channel; cache
channels keep it, and a channel with a recovery history gives it its
position there."""

import time

from pushi.proto import channels, messages
from pushi.proto.websocket import text_frame

from ..cache import Cached
from ..history import with_position


class Delivery:
    def __init__(self, engine):
        self.engine = engine
        self.metrics = engine.metrics
        self.registry = engine.registry
        self.cache = engine.cache
        self.history = engine.history
        self.recovery = engine.recovery

    def deliver(self, event):
        """Writes ``event`` (a broker ``Event``) to the sockets of its
        channels on this process."""
        if event.name.startswith("pusher_internal:member_"):
            self._member(event)
            return
        app_id, name, data, extra = event.app_id, event.name, event.data, event.extra
        extra = extra or {}
        limits = self.engine.limits(app_id)
        mid = extra.get("mid")
        cached = None
        for channel_name in event.channels:
            if cached is None and channels.is_cache(channel_name):
                # one publish to many channels caches its event once
                cached = Cached(name, data, extra)
            self.write(
                app_id,
                channel_name,
                messages.event(name, channel_name, data, **extra),
                event.exclude,
                cached,
                limits,
                event.position,
                mid,
            )

    def write(
        self,
        app_id,
        channel_name,
        text,
        exclude,
        cached,
        limits,
        position=None,
        mid=None,
    ):
        """Writes one event's ``text`` to every socket of a channel but
        ``exclude`` (a socket id); a cache channel keeps it as ``cached``
        (shared by the channels of one publish), within the app's
        ``max_cache_bytes``.  ``position`` ``(offset, epoch)``: the one a
        cluster's bus gave the event, which its frame carries; ``mid``:
        the stored event's, if it is one (not to the sockets a store
        recovery sent it already: ``Recovery.sent_to``)."""
        if position is None:
            frame = self._framed(app_id, channel_name, text, limits, mid)
        else:
            frame = text_frame(with_position(text, *position))
        if channels.is_cache(channel_name):
            self.cache.put(
                app_id,
                channel_name,
                cached,
                limits.max_cache_bytes,
                time.monotonic(),
            )
        channel = self.registry.channel(app_id, channel_name)
        if channel is None:
            return
        sessions = channel.sessions
        # counted once per event, not per socket
        count = len(sessions)
        excluded = None
        if exclude is not None:
            excluded = self.registry.sessions.get(exclude)
            count -= excluded in sessions
        sent = None
        if mid is not None and self.recovery.sent:
            # the sockets a store recovery sent this event already
            sent = self.recovery.sent_to(app_id, channel_name, mid)
            if sent is not None:
                count -= sum(
                    1 for other in sent if other in sessions and other is not excluded
                )
        metrics = self.metrics
        metrics.delivered[app_id] += count
        metrics.fan_out_bytes += len(frame) * count
        if sent is not None:
            for session, write in sessions.items():
                if session.socket_id != exclude and session not in sent:
                    write(frame)
        elif exclude is None:
            for write in sessions.values():
                write(frame)
        else:
            for session, write in sessions.items():
                if session.socket_id != exclude:
                    write(frame)

    def _framed(self, app_id, channel_name, text, limits, mid=None):
        """The frame of an event on a channel: with the channel's next
        position (``offset`` and ``epoch``) and kept for recovery, when the
        app keeps a history; assigned once per channel, whoever receives
        it."""
        entry = self.history.append(
            app_id, channel_name, text, limits, time.monotonic(), mid
        )
        if entry is None:
            return text_frame(text)
        frame = text_frame(entry.text)
        self.history.keep(app_id, entry, frame, limits)
        return frame

    def _member(self, event):
        """A member event, in each subscriber's dialect (no position: it
        is the channel's state, not one of its events); a peer socket's
        peer channels follow it first (``PresenceChannels.member_event``)."""
        added = event.name == "pusher_internal:member_added"
        member = event.data
        position = event.position
        peers = self.engine.presence_channels
        for name in event.channels:
            channel = self.registry.channel(event.app_id, name)
            if channel is None:
                continue
            frames: dict[str, bytes] = {}
            for other in channel.sessions:
                if other.socket_id == event.exclude:
                    continue
                floors = other.member_floors
                if floors and position is not None and _within(floors, name, position):
                    # already in the members this socket joined with
                    continue
                if other.peers:
                    peers.member_event(other, name, added, member)
                frame = frames.get(other.dialect)
                if frame is None:
                    text = (
                        messages.member_added(
                            name, member["user_id"], member["user_info"], other.dialect
                        )
                        if added
                        else messages.member_removed(
                            name, member["user_id"], other.dialect
                        )
                    )
                    frame = frames[other.dialect] = text_frame(text)
                other.transport.write(frame)

    def replay_cache(self, session, name):
        """A new subscriber of a cache channel gets its last event, or
        ``pusher:cache_miss`` (when the cache seam answers: at once in one
        process, once Redis did in a cluster)."""
        if not channels.is_cache(name):
            return

        def fetched(cached):
            if session.closed or name not in session.channels:
                return
            if cached is not None:
                session.transport.write(cached.frame_for(name))
            else:
                self.engine.send(
                    session, messages.event("pusher:cache_miss", name, "{}")
                )
                self.engine.emit(session.app.app_id, "cache_miss", channel=name)

        self.cache.fetch(session.app.app_id, name, time.monotonic(), fetched)


def _within(floors, name, position):
    """Whether a member event at ``position`` (offset, epoch) is at or
    before the floor a socket joined a presence channel at."""
    floor = floors.get(name)
    return floor is not None and floor[1] == position[1] and position[0] <= floor[0]
