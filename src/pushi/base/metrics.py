"""What ``GET /metrics`` tells, in Prometheus' text format.

Ownership: the counters of the loop (connections opened and closed,
messages published and delivered, client events, subscribes, rejections,
slow consumers) are plain ints in dicts that only the loop thread writes,
as it owns the registry: a fan-out adds its number of recipients once, not
once per socket, and no lock is taken on the hot path.  A scrape reads
them, and computes the gauges (open connections, occupied channels,
subscriptions, presence members) from the registry, in one call on the
loop (``live``, through ``State.call_in_loop``).  The histograms and the
counters of other threads (webhooks) are prometheus_client's own, which
are thread-safe.

Labels are bounded: an app id, a dialect, a port, a status or close code,
a result; never a channel, a socket or a user.

``health`` maps a component's name to a check that raises when it cannot
serve (``store``: ``Store.ping``); each becomes ``pushi_component_up``.  A
component that a process may have (a Redis broker) adds its check when it
is built.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from .registry import Registry

logger = logging.getLogger("pushi.metrics")

HEALTH_TIMEOUT = 2
""" Seconds a scrape waits for a component's health check (a store that
hangs is reported down, and the scrape still answers) """

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The counters of one process and the registry that exposes them."""

    def __init__(
        self, checks: concurrent.futures.Executor | None = None, enabled: bool = True
    ) -> None:
        # False (``PUSHI_METRICS=off``): nothing observed and nothing to
        # scrape; the counters stay, as the debug console charts them
        self.enabled = enabled
        # written on the loop thread only (see the module doc)
        # by (app_id, dialect)
        self.opened: dict[tuple[str, str], int] = collections.defaultdict(int)
        self.closed: dict[tuple[str, str], int] = collections.defaultdict(int)
        # by app_id
        self.published: dict[str, int] = collections.defaultdict(int)
        self.delivered: dict[str, int] = collections.defaultdict(int)
        self.client_events: dict[str, int] = collections.defaultdict(int)
        self.subscribes: dict[str, int] = collections.defaultdict(int)
        # by (kind, code)
        self.rejected: dict[tuple[str, str], int] = collections.defaultdict(int)
        self.slow_consumers = 0
        # bytes of the frames the fan-out wrote (the WebSocket port's other
        # bytes are its server's ``bytes_sent``)
        self.fan_out_bytes = 0
        # publishes answered this loop turn: when each request came in
        self.answered: list[float] = []
        # set by the State: () -> the loop's snapshot (``live``), and the
        # servers whose bytes are counted, by port name
        self.snapshot: Callable[[], dict[str, Any]] | None = None
        self.servers: dict[str, Any] = {}
        self.health: dict[str, Callable[[], Any]] = {}
        # the pool the health checks run in (the State's)
        self._checks: Any = checks  # None: no check runs (component_up)
        self._running: dict[str, concurrent.futures.Future[Any]] = {}

        self.registry = CollectorRegistry(auto_describe=True)
        self.store_commit = Histogram(
            "pushi_store_commit_seconds",
            "Seconds from handing events to the store to their commit",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.publish_latency = Histogram(
            "pushi_publish_seconds",
            "Seconds from a publish request's arrival to its last frame written",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "pushi_loop_lag_seconds",
            "How late the loop runs a timer it set",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.webhook_posts = Counter(
            "pushi_webhook_posts",
            "Webhook posts by result: sent (2xx), retry (failed, will be"
            " retried), failed (failed, given up)",
            ("app", "result"),
            registry=self.registry,
        )
        if not enabled:
            self.store_commit = self.publish_latency = self.loop_lag = _UNOBSERVED
            return
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(_Collector(self))

    # counting on the loop (each a few dict operations)

    def reject(self, kind: str, code: int | str) -> None:
        """A refusal: ``kind`` is where (``rest``, ``socket``,
        ``subscription``, ``handshake``), ``code`` the HTTP status or
        close / ``pusher:error`` code the client got."""
        self.rejected[(kind, str(code))] += 1

    def publish_answered(self, received: float) -> None:
        """A publish request that came in at ``received`` (monotonic) is
        answered in this turn; ``written`` observes it once the turn's
        frames are out."""
        if self.enabled:
            self.answered.append(received)

    def written(self, now: float) -> None:
        """The turn's frames are written (loop thread)."""
        answered = self.answered
        if answered:
            self.answered = []
            observe = self.publish_latency.observe
            for received in answered:
                observe(now - received)

    def live(self, registry: Registry) -> dict[str, Any]:
        """A copy of the loop's counters and the gauges of ``registry``
        (loop thread)."""
        connections: collections.defaultdict[tuple[str, str], int] = (
            collections.defaultdict(int)
        )
        for session in registry.sessions.values():
            connections[(session.app.app_id, session.dialect)] += 1
        apps: dict[str, tuple[int, int, int]] = {}
        for app_id, channels in registry.apps.items():
            subscriptions = members = 0
            for channel in channels.values():
                subscriptions += len(channel.sessions)
                members += len(channel.members)
            apps[app_id] = (len(channels), subscriptions, members)
        return {
            "connections": connections,
            "apps": apps,
            "opened": dict(self.opened),
            "closed": dict(self.closed),
            "published": dict(self.published),
            "delivered": dict(self.delivered),
            "client_events": dict(self.client_events),
            "subscribes": dict(self.subscribes),
            "rejected": dict(self.rejected),
            "slow_consumers": self.slow_consumers,
            "bytes": {
                port: (
                    server.bytes_received,
                    server.bytes_sent
                    + (self.fan_out_bytes if port == "websocket" else 0),
                )
                for port, server in self.servers.items()
            },
        }

    # a scrape (any thread but the loop)

    def exposition(self) -> bytes:
        """The text a scrape gets."""
        return generate_latest(self.registry)

    def component_up(self, name: str) -> bool:
        """True when ``health[name]`` passes within ``HEALTH_TIMEOUT``; a
        check still running from an earlier scrape is waited for, not
        started again."""
        future = self._running.get(name)
        if future is None or future.done():
            try:
                future = self._running[name] = self._checks.submit(self.health[name])
            except (RuntimeError, AttributeError):
                return False  # stopped, or no pool
        try:
            future.result(HEALTH_TIMEOUT)
            return True
        except Exception as error:
            logger.debug("health check of %s failed: %s", name, error)
            return False


class _Unobserved:
    """A histogram of metrics that are off: observes nothing."""

    def observe(self, amount: float) -> None:
        pass


_UNOBSERVED: Any = _Unobserved()


class _Collector:
    """The loop's counters and gauges, read at scrape time."""

    def __init__(self, metrics):
        self.metrics = metrics

    def describe(self):
        # none up front: a scrape of a stopped loop yields fewer families
        return []

    def collect(self):
        metrics = self.metrics
        if metrics.health:
            up = GaugeMetricFamily(
                "pushi_component_up",
                "1 when a component (the store) answers a health check",
                labels=("component",),
            )
            for name in sorted(metrics.health):
                up.add_metric((name,), 1 if metrics.component_up(name) else 0)
            yield up
        if metrics.snapshot is None:
            return
        try:
            live = metrics.snapshot()
        except Exception as error:
            # a loop that stopped: only what other threads keep
            logger.debug("no loop to scrape: %s", error)
            return
        yield _family(
            GaugeMetricFamily,
            "pushi_connections",
            "Open WebSocket connections",
            ("app", "dialect"),
            live["connections"],
        )
        yield _family(
            CounterMetricFamily,
            "pushi_connections_opened",
            "WebSocket connections opened (past the handshake and app checks)",
            ("app", "dialect"),
            live["opened"],
        )
        yield _family(
            CounterMetricFamily,
            "pushi_connections_closed",
            "WebSocket connections closed",
            ("app", "dialect"),
            live["closed"],
        )
        apps = live["apps"]
        for index, (name, documentation) in enumerate(
            (
                ("pushi_channels", "Occupied channels"),
                ("pushi_subscriptions", "Sockets subscribed, summed over channels"),
                ("pushi_presence_members", "Users present, summed over channels"),
            )
        ):
            values = {(app_id,): counts[index] for app_id, counts in apps.items()}
            yield _family(GaugeMetricFamily, name, documentation, ("app",), values)
        for key, name, documentation in (
            (
                "published",
                "pushi_messages_published",
                "Events published over the REST API, one per channel",
            ),
            (
                "delivered",
                "pushi_messages_delivered",
                "Event frames written to subscribers",
            ),
            (
                "client_events",
                "pushi_client_events",
                "Client events (and Pushi sends) accepted from sockets",
            ),
            ("subscribes", "pushi_subscribes", "Channel subscriptions made"),
        ):
            values = {(app_id,): value for app_id, value in live[key].items()}
            yield _family(CounterMetricFamily, name, documentation, ("app",), values)
        yield _family(
            CounterMetricFamily,
            "pushi_rejected",
            "Refusals by where (rest, socket, subscription, handshake) and the"
            " HTTP status or pusher:error / close code",
            ("kind", "code"),
            live["rejected"],
        )
        slow = CounterMetricFamily(
            "pushi_slow_consumers",
            "Sockets closed with 4100 for not reading what they were sent",
        )
        slow.add_metric((), live["slow_consumers"])
        yield slow
        received = CounterMetricFamily(
            "pushi_bytes_received", "Bytes read from sockets", labels=("port",)
        )
        sent = CounterMetricFamily(
            "pushi_bytes_sent", "Bytes written to sockets", labels=("port",)
        )
        for port, (bytes_in, bytes_out) in sorted(live["bytes"].items()):
            received.add_metric((port,), bytes_in)
            sent.add_metric((port,), bytes_out)
        yield received
        yield sent


def _family(cls, name, documentation, labels, values):
    family = cls(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(key, value)
    return family
