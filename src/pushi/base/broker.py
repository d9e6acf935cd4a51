"""The broker seam: how a published event reaches every socket of its
channels.

Events come from two sides: the REST API publishes from its threads
(``publish``, answered through ``done``) and the engine sends what its
sockets and channels emit on the loop (``send``: client events, member
events).  Either way the broker hands each ``Event`` to ``deliver`` on the
loop of every process that has subscribers, so all subscribers of a
channel see its events in one order.

``LocalBroker`` serves one process: ``publish`` may be called from any
thread; it queues the event and wakes the loop once, and the loop drains
every queued event in one turn, so frames for one socket written in that
turn go out in one write; it runs the ``done`` callbacks of those events
just before that write, in the same turn (an event that fails to deliver
is logged: the others still go, and every publisher hears back).
The queue is bounded by admission: while ``max_pending`` events wait,
``busy`` is True and the publisher refuses new ones, so a server that cannot
keep up says so instead of growing without limit.  The broker of a
cluster (``base/cluster/broker``) publishes to Redis instead and calls
``deliver`` from its subscription, for every node alike.
"""

import collections
import dataclasses
import logging
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger("pushi")


@dataclasses.dataclass(slots=True)
class Event:
    """One event on its way to the subscribers of ``channels`` (never
    changed once made: not frozen, which would cost its every field a
    ``object.__setattr__`` on the hot path): ``data``
    as clients get it (a string, or the member of a member event),
    ``exclude`` the socket id it skips, ``extra`` the fields its message
    carries besides (``mid``, ``timestamp``, ``user_id``); ``position``
    the ``(offset, epoch)`` a cluster's bus gave it on its one channel
    (None: the process gives positions itself, see ``base/history``)."""

    app_id: str
    channels: tuple[str, ...]
    name: str
    data: Any
    exclude: str | None = None
    extra: dict | None = None
    position: tuple[int, str] | None = None


class Broker(Protocol):
    @property
    def busy(self) -> bool:
        """True while the broker takes no more events from the REST API."""

    def publish(
        self, event: Event, done: Callable[[Exception | None], None] | None = None
    ) -> None:
        """Delivers ``event`` (from any thread); ``done(None)`` runs on the
        loop once it is on its way to every subscriber, ``done(error)``
        when it could not be (the publisher answers 503)."""

    def send(self, event: Event) -> None:
        """Delivers ``event`` emitted on the loop."""

    def listen(
        self, app_id: str, channel: str, then: Callable[[Exception | None], None]
    ) -> None:
        """Brings this process the events of ``channel`` from now on, for
        its first subscriber here: ``then(None)`` once they come, or
        ``then(error)`` (loop thread)."""

    def unlisten(self, app_id: str, channel: str) -> None:
        """The channel's last subscriber here left (loop thread)."""


class LocalBroker:
    """In-process broker: a bounded queue drained on the loop thread."""

    def __init__(
        self,
        call_soon: Callable[[Callable[[], None]], Any],
        deliver: Callable[[Event], None],
        flush: Callable[[], None],
        max_pending: int = 1000,
        announce: Callable[[Event], None] | None = None,
    ) -> None:
        self._call_soon = call_soon
        self._deliver = deliver
        # told of each published event once, before its delivery
        self._announce = announce
        self._flush = flush
        self._max_pending = max_pending
        self._queue: collections.deque[
            tuple[Event, Callable[[Exception | None], None] | None]
        ] = collections.deque()
        self._scheduled = False

    @property
    def busy(self) -> bool:
        """True while ``max_pending`` events wait for the loop."""
        return len(self._queue) >= self._max_pending

    def publish(
        self, event: Event, done: Callable[[Exception | None], None] | None = None
    ) -> None:
        """Queues ``event``; thread-safe.
        ``done(None)`` runs on the loop once the event's frames are queued on
        every socket, right before the turn's write."""
        self._queue.append((event, done))
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self._drain)

    def send(self, event: Event) -> None:
        """Delivers ``event`` at once: the loop already runs."""
        self._deliver(event)

    @staticmethod
    def listen(
        app_id: str, channel: str, then: Callable[[Exception | None], None]
    ) -> None:
        """Every event of this process comes here: at once."""
        then(None)

    @staticmethod
    def unlisten(app_id: str, channel: str) -> None:
        pass

    def _drain(self) -> None:
        # cleared before draining: an event queued from now on schedules a
        # new drain, so nothing waits behind a drain that has finished
        self._scheduled = False
        queue = self._queue
        deliver = self._deliver
        announce = self._announce
        finished: list[Callable[[Exception | None], None]] = []
        while queue:
            event, done = queue.popleft()
            try:
                if announce is not None:
                    announce(event)
                deliver(event)
            except Exception:
                # the others still go, and every publisher hears back
                logger.exception("delivering an event failed")
            if done is not None:
                finished.append(done)
        # the publishers hear first, then the turn's frames are written:
        # their next events arrive while this write runs and share the next
        # one; none can get ahead of it, since this loop reads them only
        # after the flush
        for done in finished:
            try:
                done(None)
            except Exception:
                logger.exception("a publisher's callback failed")
        self._flush()
