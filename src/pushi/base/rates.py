"""Per-app rates: what an app may do in a second, past which it is told to
come back later rather than slow the others down.

The ``max_*_per_second`` settings of ``limits.DEFAULTS`` (0: unlimited):

* ``max_backend_events_per_second``: events published over the HTTP API,
  counted as soketi counts them, one per channel an event goes to (a
  publish to 10 channels costs 10, so does a batch of 10 events to one
  channel each);
* ``max_read_requests_per_second``: signed or token-bearing REST reads
  (``GET`` under ``/apps/<id>``);
* ``max_connections_per_second``: new WebSocket connections of the app.

Each is a token bucket per app holding at most one second's worth.  A
request is admitted when the bucket holds its cost, or is full for a cost
larger than a second's worth (which then leaves the bucket in debt, so
that the rate holds over time); a refused one costs nothing and is told
how many whole seconds to wait.

Threads: publishes are counted on the loop (and on WSGI threads under
another server), reads on the REST worker, connections on the loop; one
lock guards the buckets, held for a few arithmetic steps.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .limits import App

PUBLISHES = "max_backend_events_per_second"
READS = "max_read_requests_per_second"
CONNECTIONS = "max_connections_per_second"


class Rates:
    """The token buckets of every app, one per setting."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[
            tuple[str, str], tuple[float, float]
        ] = {}  # (app_id, setting): (tokens, when)
        self._lock = threading.Lock()

    def take(self, app: App, setting: str, cost: int = 1) -> int:
        """Counts ``cost`` against ``app``'s ``setting``: 0 when admitted,
        else the whole seconds (at least 1) before a retry may be."""
        rate = getattr(app.limits, setting) or 0
        if rate <= 0:
            return 0
        key = (app.app_id, setting)
        need = min(cost, rate)
        with self._lock:
            now = self.clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                tokens = rate
            else:
                tokens = min(rate, bucket[0] + (now - bucket[1]) * rate)
            if tokens >= need:
                self._buckets[key] = (tokens - cost, now)
                return 0
            self._buckets[key] = (tokens, now)
        return max(1, math.ceil((need - tokens) / rate))
