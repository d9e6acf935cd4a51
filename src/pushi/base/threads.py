"""The process's thread pools, by name, with their sizes in one place.

A ``State`` makes one ``Threads`` and hands each component the pool it
submits to; ``State.stop`` shuts them all down and joins their threads, so
that no pool outlives the server it served.  A component built without a
State (a test, a script) makes its own pool with ``new_pool``.

The threads that are not pools (the loop, the retention and apps-file
watchers, the webhook scheduler, the SQLite writer) belong to the
component whose loop they run.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time

logger = logging.getLogger("pushi")

POOLS = {
    # blocking work the loop hands off (store reads, app loads, persisted
    # publishes of a store without a writer of its own) and brings back
    "worker": 4,
    # every REST request but publishes, through Appier, one at a time
    # (Appier serves one request at a time)
    "rest": 1,
    # persisted REST publishes waiting for their commit when the store has
    # no writer of its own to call back from (MongoDB)
    "store": 16,
    # health checks of /health and /metrics (a store ping may hang)
    "health": 2,
    # webhook posts under way (the most hooks posted to at once)
    "webhook": 8,
}
"""Each pool's number of threads; its threads are named ``pushi-<name>``."""

CANCELLED = ("rest", "health", "webhook")
"""The pools whose queued work is dropped on stop: a request, a check or a
post that has not started has no one left to answer.  Queued work of the
others runs (a caller waits on it)."""

JOIN_TIMEOUT = 5.0
"""Seconds ``Threads.shutdown`` waits, in all, for the pools' threads."""


def new_pool(name: str) -> concurrent.futures.ThreadPoolExecutor:
    """A pool of ``POOLS[name]`` threads named ``pushi-<name>``."""
    return concurrent.futures.ThreadPoolExecutor(
        POOLS[name], thread_name_prefix="pushi-" + name
    )


class Threads:
    """Every pool of one process (``pool(name)``), shut down together."""

    def __init__(self) -> None:
        # a pool starts its threads on its first submits only
        self._pools = {name: new_pool(name) for name in POOLS}

    def pool(self, name: str) -> concurrent.futures.ThreadPoolExecutor:
        return self._pools[name]

    def stop(self, name: str) -> None:
        """Takes no more work into ``name`` (a submit raises
        ``RuntimeError``), dropping its queued work if it is one of
        ``CANCELLED``; work under way goes on."""
        self._pools[name].shutdown(wait=False, cancel_futures=name in CANCELLED)

    def shutdown(self, timeout: float = JOIN_TIMEOUT) -> list[str]:
        """Stops every pool and joins their threads, waiting at most
        ``timeout`` seconds in all; returns the names of the pools with a
        thread still running then (logged)."""
        for name in self._pools:
            self.stop(name)
        deadline = time.monotonic() + timeout
        running: list[str] = []
        for name, pool in self._pools.items():
            # the executor's own threads: shutdown(wait=True) has no timeout
            for thread in list(pool._threads):
                thread.join(max(0.0, deadline - time.monotonic()))
            if any(thread.is_alive() for thread in pool._threads):
                running.append(name)
        if running:
            logger.warning("Threads still running at stop: %s", ", ".join(running))
        return running
