"""The fan-out seam: how a published event reaches the loop that owns
the sockets.

``LocalBroker`` serves one process: ``publish`` may be called from any
thread; it queues the event and wakes the loop once, and the loop drains
every queued event in one turn, so frames for one socket written in that
turn go out in one write.  A broker for several processes (Redis) would
publish to the bus here and call ``deliver`` from its listener instead.
"""

import collections


class LocalBroker:
    """In-process broker: a queue drained on the loop thread."""

    def __init__(self, call_soon, deliver):
        self._call_soon = call_soon
        self._deliver = deliver
        self._queue = collections.deque()
        self._scheduled = False

    def publish(self, event):
        """Queues ``event`` (a tuple of ``deliver``'s arguments); thread-safe."""
        self._queue.append(event)
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self._drain)

    def _drain(self):
        # cleared before draining: an event queued from now on schedules a
        # new drain, so nothing waits behind a drain that has finished
        self._scheduled = False
        queue = self._queue
        deliver = self._deliver
        while queue:
            deliver(*queue.popleft())
