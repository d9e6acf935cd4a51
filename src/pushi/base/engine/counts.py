"""Subscription counts: ``pusher_internal:subscription_count`` to a
channel's subscribers when the app asks for it, at most one per channel
per ``COUNT_INTERVAL``."""

import time

from pushi.proto import channels, messages
from pushi.proto.websocket import text_frame

COUNT_INTERVAL = 1.0
""" Seconds between two subscription counts of one channel: a join storm
costs one count per subscriber per interval, not one per join """


class SubscriptionCounts:
    def __init__(self, engine):
        self.engine = engine
        # (app_id, channel) -> when its last subscription count went out
        self._counted = {}
        # the channels whose count waits for the end of their interval
        self._due = set()
        # the channels whose next count goes to the observers too: a
        # socket of this process came or went
        self._observed = set()

    def changed(self, app, name, here=True):
        """Tells a channel's subscribers (and the observers: webhooks) how
        many they are, when the app asks for it
        (``subscription_count_events``).  A count costs one frame per
        subscriber, so a channel gets at most one per ``COUNT_INTERVAL``:
        the first change is told at once, later ones in that interval
        are held and told, with the count of that moment, when it ends.
        As on Pusher, presence channels have none: their members say who
        is there.  ``here`` False: the change was on another node of a
        cluster, which tells the observers; this one tells its own
        subscribers only."""
        if not app.limits.subscription_count_events or channels.kind(name) in (
            channels.USER,
            channels.PRESENCE,
        ):
            return
        key = (app.app_id, name)
        if here:
            self._observed.add(key)
        if key in self._due:
            return
        now = time.monotonic()
        last = self._counted.get(key)
        if last is None or now - last >= COUNT_INTERVAL:
            self._send(key, now)
            return
        self._due.add(key)
        schedule = self.engine.schedule
        if schedule is not None:
            schedule(lambda: self._send_due(key), last + COUNT_INTERVAL - now + 0.001)

    def _send_due(self, key):
        """Sends a held count (if it is still held: a sweep may have)."""
        if key in self._due:
            self._due.discard(key)
            self._send(key, time.monotonic())

    def _send(self, key, now):
        engine = self.engine
        app_id, name = key
        observed = key in self._observed
        self._observed.discard(key)
        channel = engine.registry.channel(app_id, name)
        if channel is None:
            # vacated meanwhile: nobody to tell, and no count after a vacate
            self._counted.pop(key, None)
            return
        app = next(iter(channel.sessions)).app
        if not app.limits.subscription_count_events:
            return
        self._counted[key] = now

        def counted(count):
            channel = engine.registry.channel(app_id, name)
            if channel is None:
                return
            frame = text_frame(messages.subscription_count(name, count))
            for write in channel.sessions.values():
                write(frame)
            if observed:
                engine.emit(
                    app_id,
                    "subscription_count",
                    channel=name,
                    subscription_count=count,
                )

        engine.occupancy.fetch_count(app_id, name, counted)

    def sweep(self, now):
        """Sends the counts whose interval is over (without a scheduler)
        and forgets the intervals that ended."""
        for key in list(self._due):
            if now - self._counted.get(key, 0) >= COUNT_INTERVAL:
                self._send_due(key)
        self._counted = {
            key: sent
            for key, sent in self._counted.items()
            if now - sent < COUNT_INTERVAL
        }
