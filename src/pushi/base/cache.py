"""Cache channels' last events, kept per app within a bound in bytes.

A cache channel (``cache-``, ``private-cache-``, ``presence-cache-``)
remembers its last event for ``TTL`` seconds and replays it to each new
subscriber.  Each app's cached events together hold at most its
``max_cache_bytes`` (0: no bound): a write past the bound evicts the
app's least recently written channels first, and counts each eviction.
An evicted channel is one with nothing cached (``pusher:cache_miss``).

One publish to many channels caches its event once: the entries of its
channels share one ``Cached`` (name, data, extra fields), and each
channel's frame is built when it is replayed, since a frame names its
channel.  What an app holds counts each shared event once, plus
``ENTRY_COST`` and the channel name per entry, so many small events on
many channels are bounded too.

Every entry of an app lives as long (``TTL``), so the order in which an
app's entries were last written is also the order in which they expire:
expiry and eviction both take from the front of one ordered dict.

Ownership: loop thread only (the engine's).
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable
from typing import Any

from pushi.proto import messages
from pushi.proto.websocket import text_frame

TTL = 1800
""" Seconds a cache channel keeps its last event (Pusher's 30 minutes) """

ENTRY_COST = 200
""" Bytes an entry costs beside its event and channel name: the ordered
dict's slot and link, the key and the (event, expiry) pair """


class Cached:
    """One cached event, shared by the entries of the channels it went to:
    the parts its frames are built from."""

    __slots__ = ("name", "data", "extra", "size", "refs")

    def __init__(
        self, name: str, data: Any, extra: dict[str, Any] | None = None
    ) -> None:
        self.name = name
        self.data = data
        self.extra = extra or {}
        self.size = (
            sys.getsizeof(data) if isinstance(data, str) else len(messages.dumps(data))
        ) + len(messages.dumps(self.extra))
        self.refs = 0

    def frame_for(self, channel: str) -> bytes:
        """The frame that replays this event on ``channel``."""
        return text_frame(messages.event(self.name, channel, self.data, **self.extra))

    def event(self) -> dict[str, Any]:
        """``event`` and ``data`` as ``info=cache`` reports them."""
        return {"event": self.name, "data": self.data}


class AppCache:
    """The cached entries of one app, least recently written first, and
    what they hold."""

    __slots__ = ("entries", "bytes", "evictions")

    def __init__(self) -> None:
        self.entries: collections.OrderedDict[str, tuple[Cached, float]] = (
            collections.OrderedDict()
        )
        self.bytes = 0
        self.evictions = 0


class Cache:
    """The cached events of every app: ``(Cached, expires)`` by channel."""

    def __init__(self) -> None:
        self.apps: dict[str, AppCache] = {}

    def put(
        self, app_id: str, channel: str, cached: Cached, max_bytes: int, now: float
    ) -> None:
        """Caches ``cached`` as ``channel``'s last event, then evicts the
        app's oldest entries while it holds more than ``max_bytes``."""
        app = self.apps.get(app_id)
        if app is None:
            app = self.apps[app_id] = AppCache()
        old = app.entries.pop(channel, None)
        if old is not None:
            self._release(app, channel, old[0])
        cached.refs += 1
        if cached.refs == 1:
            app.bytes += cached.size
        app.bytes += ENTRY_COST + len(channel)
        app.entries[channel] = (cached, now + TTL)
        self.trim(app_id, max_bytes)

    def get(self, app_id: str, channel: str, now: float) -> tuple[Cached, float] | None:
        """``(Cached, expires)`` of a channel's last event, if fresh."""
        app = self.apps.get(app_id)
        if app is None:
            return None
        entry = app.entries.get(channel)
        if entry is not None and entry[1] <= now:
            del app.entries[channel]
            self._release(app, channel, entry[0])
            return None
        return entry

    def fetch(
        self,
        app_id: str,
        channel: str,
        now: float,
        then: Callable[[Cached | None], Any],
    ) -> None:
        """``then(Cached)``: a channel's last event, if fresh, else
        ``then(None)``; at once (the seam answers through a continuation:
        a cache kept elsewhere answers later)."""
        entry = self.get(app_id, channel, now)
        then(None if entry is None else entry[0])

    def info(self, app_id: str, channel: str, on_loop: Callable[..., Any]) -> Any:
        """``{event, data, ttl}`` of a channel's last event, or None, read
        on the loop through ``on_loop(work, *args)``."""
        return on_loop(self._info, app_id, channel)

    def _info(self, app_id, channel):
        now = time.monotonic()
        entry = self.get(app_id, channel, now)
        if entry is None:
            return None
        return dict(entry[0].event(), ttl=int(entry[1] - now))

    def trim(self, app_id: str, max_bytes: int) -> None:
        """Evicts an app's oldest entries until it holds at most
        ``max_bytes`` (0: no bound)."""
        app = self.apps.get(app_id)
        if app is None or not max_bytes:
            return
        entries = app.entries
        while app.bytes > max_bytes and entries:
            channel, (cached, _expires) = entries.popitem(last=False)
            self._release(app, channel, cached)
            app.evictions += 1

    def expire(self, now: float) -> None:
        """Drops every entry whose time is up."""
        for app in self.apps.values():
            entries = app.entries
            while entries:
                channel, (cached, expires) = next(iter(entries.items()))
                if expires > now:
                    break
                del entries[channel]
                self._release(app, channel, cached)

    def stats(self, app_id: str) -> dict[str, int]:
        """An app's cache counters: entries, bytes held, evictions."""
        app = self.apps.get(app_id)
        if app is None:
            return {"entries": 0, "bytes": 0, "evictions": 0}
        return {
            "entries": len(app.entries),
            "bytes": app.bytes,
            "evictions": app.evictions,
        }

    @staticmethod
    def _release(app, channel, cached):
        app.bytes -= ENTRY_COST + len(channel)
        cached.refs -= 1
        if not cached.refs:
            app.bytes -= cached.size
