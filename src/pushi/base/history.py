"""Recovery history: each channel's recent events with their positions,
so that a client that reconnects gets what it missed.

Every event delivered on a channel takes the next ``offset`` of that
channel's stream; ``epoch`` names the stream.  A stream begins at offset 1
with a new epoch when it is created (the first event or subscription of a
channel, or after the stream was forgotten), so a position from before a
restart or from a forgotten stream is never mistaken for one of this
stream.  An epoch begins with this process's ``boot`` token: a position of
another epoch is told apart as from before a restart (``new_epoch``) or
from a stream of this process that was forgotten (``expired``).

The seam, as centrifuge's ``Broker`` keeps a stream per channel: the
engine asks ``append`` (assign the next position to an event and keep its
frame), ``position`` (a channel's epoch and top offset, for its
subscription data) and ``recover`` (the frames after a position, or why
not, through a continuation).  ``MemoryHistory`` is the in-process
implementation; ``cluster/history`` keeps it in Redis (a stream and a meta
hash per channel, positions assigned by the publish script).

What is kept, per app (the app's ``limits``):

* ``recovery_history`` events per channel (0: none, and events carry no
  position), each for ``recovery_ttl`` seconds;
* at most ``max_recovery_bytes`` for all the app's channels together (0:
  no bound): past it the app's oldest events are evicted first, and then
  the streams that hold no event (their positions), least recently used
  first.  Each event counts its frame and ``ENTRY_COST``, each stream
  ``STREAM_COST`` and its name;
* a stream with no event left is forgotten ``STREAM_TTL`` seconds after
  its last use (an event or a subscription).

Ownership: loop thread only (the engine's).
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pushi.proto import messages

if TYPE_CHECKING:
    from .limits import Limits
    from .registry import Session

ENTRY_COST = 120
""" Bytes an event kept costs beside its frame: its record and its slots in
the stream's and the app's deques """

STREAM_COST = 400
""" Bytes a stream costs beside its name: its record, deque and dict slot """

STREAM_TTL = 3600
""" Seconds a stream with no event left keeps its position after its last
use: a client of a quiet channel that comes back within it is told it
missed nothing """

# why a position cannot be recovered (the ``reason`` of ``recovered: false``)
OFF = "history_off"
NEW_EPOCH = "new_epoch"
EXPIRED = "expired"
TOO_FAR = "too_far_behind"
UNKNOWN = "unknown_position"


def with_position(text: str, offset: int, epoch: str) -> str:
    """An event message's JSON text with ``offset`` and ``epoch`` added as
    top-level fields (the text is an object built by ``messages.event``,
    so it ends with its closing brace)."""
    return '%s,"offset":%d,"epoch":"%s"}' % (text[:-1], offset, epoch)


class Entry:
    """One event kept: its offset, frame, size and when it was kept."""

    __slots__ = ("offset", "text", "frame", "size", "time", "stream")

    def __init__(
        self, offset: int, text: str | None, time: float, stream: Stream | None
    ) -> None:
        self.offset = offset
        self.text = text
        self.frame: bytes | None = None
        self.size = ENTRY_COST
        self.time = time
        self.stream = stream


class Stream:
    """A channel's position and its events kept, oldest first."""

    __slots__ = ("name", "epoch", "top", "entries", "used", "lost", "mid")

    def __init__(self, name: str, epoch: str, now: float) -> None:
        self.name = name
        self.epoch = epoch
        self.top = 0
        self.entries: collections.deque = collections.deque()
        self.used = now
        # why the events before the first kept one are gone
        self.lost = TOO_FAR
        # the last stored event appended (see ``tap``)
        self.mid = None


class AppHistory:
    """The streams of one app (least recently used first), every event they
    keep in the order kept, and what they hold."""

    __slots__ = ("streams", "entries", "bytes", "ttl", "dead", "evictions", "taps")

    def __init__(self) -> None:
        self.streams: collections.OrderedDict = collections.OrderedDict()
        self.entries: collections.deque = collections.deque()
        self.bytes = 0
        self.ttl = 0
        # entries of ``entries`` already dropped from their stream (by the
        # per-channel count): skipped, and compacted when they pile up
        self.dead = 0
        self.evictions = 0
        # channel -> the lists that receive its next entries (see ``tap``)
        self.taps: dict[str, list[Tapped]] = {}


class Tapped(list):
    """The entries a ``tap`` receives, and the ``mid`` it started after."""

    __slots__ = ("before",)

    def __init__(self) -> None:
        super().__init__()
        self.before = None


class MemoryHistory:
    """Recovery history of every app in this process's memory."""

    def __init__(self, boot: str | None = None) -> None:
        self.boot = boot or secrets.token_hex(4)
        self._streams_made = 0
        self.apps: dict[str, AppHistory] = {}

    # the seam

    def append(
        self,
        app_id: str,
        channel: str,
        text: str,
        limits: Limits,
        now: float,
        mid: str | None = None,
    ) -> Entry | None:
        """Gives the event ``text`` on ``channel`` the channel's next
        position and keeps it: returns the ``Entry``, whose ``text`` is the
        event with its position (the caller frames it once and hands the
        frame to ``keep``), or None when the app keeps no history.
        ``mid``: the stored event's, if it is one."""
        count = limits.recovery_history
        if not count:
            return None
        app = self._app(app_id, limits)
        stream = self._stream(app, channel, now)
        stream.top += 1
        if mid is not None:
            stream.mid = mid
        entry = Entry(
            stream.top, with_position(text, stream.top, stream.epoch), now, stream
        )
        stream.entries.append(entry)
        app.entries.append(entry)
        if app.taps:
            for tapped in app.taps.get(channel, ()):
                tapped.append(entry)
        if self._cut(app, stream, count):
            self._compact(app)
        return entry

    def keep(self, app_id: str, entry: Entry, frame: bytes, limits: Limits) -> None:
        """Records the frame of an ``append``ed entry, and evicts the app's
        oldest while it holds more than its bound."""
        entry.frame = frame
        entry.text = None
        entry.size = ENTRY_COST + len(frame)
        app = self.apps[app_id]
        if entry.stream is not None:
            app.bytes += entry.size
        max_bytes = limits.max_recovery_bytes
        if max_bytes and app.bytes > max_bytes:
            self._trim(app, max_bytes)

    def position(
        self, app_id: str, channel: str, limits: Limits, now: float
    ) -> tuple[str, int] | None:
        """``(epoch, offset)`` of a channel's last event (offset 0 before
        its first), its stream made if it has none; None when the app
        keeps no history."""
        if not limits.recovery_history:
            return None
        app = self._app(app_id, limits)
        stream = self._stream(app, channel, now)
        self._trim(app, limits.max_recovery_bytes)
        return stream.epoch, stream.top

    def recover(
        self,
        app_id: str,
        channel: str,
        epoch: str,
        offset: int,
        limits: Limits,
        now: float,
        then: Callable[[Any, Any], Any] | None = None,
    ) -> tuple[bool, Any] | None:
        """The frames of ``channel`` after ``offset`` of ``epoch``, oldest
        first: ``(True, frames)``, or ``(False, reason)`` when some of them
        are not kept (``reason`` one of this module's); handed to
        ``then(recovered, frames)`` at once when given (the seam answers
        through a continuation: a history kept elsewhere answers later,
        ``then(None, error)`` when it cannot)."""
        answer = self._recover(app_id, channel, epoch, offset, limits, now)
        if then is None:
            return answer
        then(*answer)
        return None

    def _recover(self, app_id, channel, epoch, offset, limits, now):
        if not limits.recovery_history:
            return False, OFF
        app = self.apps.get(app_id)
        stream = app.streams.get(channel) if app is not None else None
        if stream is None or stream.epoch != epoch:
            if epoch.startswith(self.boot + "-"):
                return False, EXPIRED
            return False, NEW_EPOCH
        assert app is not None  # the stream is one of the app's
        if offset > stream.top:
            return False, UNKNOWN
        if offset == stream.top:
            return True, []
        entries = stream.entries
        ttl = limits.recovery_ttl
        # the entries past their time are gone, though the sweep may not
        # have dropped them yet
        while entries and entries[0].time + ttl <= now:
            dropped = entries.popleft()
            dropped.stream = None
            stream.lost = EXPIRED
            app.bytes -= dropped.size
            app.dead += 1
        if not entries or entries[0].offset > offset + 1:
            return False, stream.lost
        first = offset + 1 - entries[0].offset
        return True, [entries[index].frame for index in range(first, len(entries))]

    def tap(self, app_id: str, channel: str, limits: Limits) -> Tapped | None:
        """A list that receives every entry ``append``ed to ``channel`` from
        now until ``untap``, whatever the history drops meanwhile: what a
        recovery that reads elsewhere (the store) must send after what it
        read.  Its ``before`` is the ``mid`` of the last stored event the
        channel's stream delivered before the tap (None when it delivered
        none): the store may hold events committed but not delivered yet,
        which the recovery must leave to their delivery.  None when the
        app keeps no history."""
        if not limits.recovery_history:
            return None
        tapped = Tapped()
        app = self._app(app_id, limits)
        stream = app.streams.get(channel)
        if stream is not None:
            tapped.before = stream.mid
        app.taps.setdefault(channel, []).append(tapped)
        return tapped

    def untap(self, app_id: str, channel: str, tapped: Tapped) -> None:
        app = self.apps.get(app_id)
        if app is None:
            return
        taps = app.taps.get(channel)
        if taps and tapped in taps:
            taps.remove(tapped)
            if not taps:
                del app.taps[channel]

    def hold(
        self,
        app_id: str,
        channel: str,
        session: Session,
        frames: Any,
        limits: Limits,
    ) -> None:
        """Nothing: a socket joins at once in one process (see
        ``cluster/history``)."""

    # upkeep

    def expire(self, now: float) -> None:
        """Drops the events past their app's ``recovery_ttl`` and the
        streams unused for ``STREAM_TTL`` with no event left."""
        for app_id in list(self.apps):
            app = self.apps[app_id]
            entries = app.entries
            while entries and entries[0].time + app.ttl <= now:
                self._drop_oldest(app, EXPIRED)
            streams = app.streams
            while streams:
                stream = next(iter(streams.values()))
                if stream.used + STREAM_TTL > now or stream.entries:
                    break
                self._forget(app, stream)
            if not streams and not entries and not app.taps:
                del self.apps[app_id]

    def stats(self, app_id: str) -> dict[str, int]:
        """An app's counters: streams, events and bytes held, evictions."""
        app = self.apps.get(app_id)
        if app is None:
            return {"streams": 0, "events": 0, "bytes": 0, "evictions": 0}
        return {
            "streams": len(app.streams),
            "events": len(app.entries) - app.dead,
            "bytes": app.bytes,
            "evictions": app.evictions,
        }

    def trim(self, app_id: str, limits: Limits) -> None:
        """Applies an app's new limits to what it holds."""
        app = self.apps.get(app_id)
        if app is None:
            return
        if not limits.recovery_history:
            del self.apps[app_id]
            return
        app.ttl = limits.recovery_ttl
        count = limits.recovery_history
        for stream in app.streams.values():
            self._cut(app, stream, count)
        self._compact(app)
        self._trim(app, limits.max_recovery_bytes)

    # inside

    def _app(self, app_id, limits):
        app = self.apps.get(app_id)
        if app is None:
            app = self.apps[app_id] = AppHistory()
        app.ttl = limits.recovery_ttl
        return app

    def _stream(self, app, channel, now):
        stream = app.streams.get(channel)
        if stream is None:
            self._streams_made += 1
            epoch = "%s-%x" % (self.boot, self._streams_made)
            stream = app.streams[channel] = Stream(channel, epoch, now)
            app.bytes += STREAM_COST + len(channel)
        else:
            app.streams.move_to_end(channel)
            stream.used = now
        return stream

    def _trim(self, app, max_bytes):
        if not max_bytes:
            return
        while app.bytes > max_bytes:
            if len(app.entries) > app.dead:
                self._drop_oldest(app, TOO_FAR)
                app.evictions += 1
            elif app.streams:
                stream = next(iter(app.streams.values()))
                self._forget(app, stream)
                app.evictions += 1
            else:
                break

    @staticmethod
    def _cut(app, stream, count):
        """Drops a stream's oldest events past ``count`` (they stay in the
        app's deque, dead, until ``_compact``); whether any went."""
        cut = False
        while len(stream.entries) > count:
            entry = stream.entries.popleft()
            entry.stream = None
            stream.lost = TOO_FAR
            app.bytes -= entry.size
            app.dead += 1
            cut = True
        return cut

    def _drop_oldest(self, app, why):
        """Drops the app's oldest event kept (skipping those its stream
        dropped already)."""
        entries = app.entries
        while entries:
            entry = entries.popleft()
            stream = entry.stream
            if stream is None:
                app.dead -= 1
                continue
            # an app's oldest event is its stream's oldest too
            stream.entries.popleft()
            entry.stream = None
            stream.lost = why
            app.bytes -= entry.size
            return
        app.dead = 0

    def _forget(self, app, stream):
        del app.streams[stream.name]
        app.bytes -= STREAM_COST + len(stream.name)
        for entry in stream.entries:
            entry.stream = None
            app.bytes -= entry.size
            app.dead += 1
        stream.entries.clear()
        self._compact(app)

    def _compact(self, app):
        """Rebuilds the app's deque without the dropped entries once they
        are most of it."""
        if app.dead > 64 and app.dead * 2 > len(app.entries):
            app.entries = collections.deque(
                entry for entry in app.entries if entry.stream is not None
            )
            app.dead = 0


def since_of(data: dict[str, Any]) -> tuple[str, int, str | None] | None:
    """The ``since`` of a subscribe: ``(epoch, offset, mid)``, None when it
    has none; raises ``ValueError`` when it is not a position."""
    since = data.get("since")
    if since is None:
        return None
    if not isinstance(since, dict):
        raise ValueError("since must be an object")
    epoch, offset, mid = since.get("epoch"), since.get("offset"), since.get("mid")
    if not isinstance(epoch, str) or len(epoch) > 64:
        raise ValueError("since.epoch must be a string")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError("since.offset must be a count")
    if mid is not None and (not isinstance(mid, str) or len(mid) > 64):
        raise ValueError("since.mid must be a string")
    return epoch, offset, mid


def frame_message(frame: bytes) -> Any:
    """The message inside one of our own unmasked text frames."""
    length = frame[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    return messages.loads(frame[start:])
