"""The composition root: one ``State`` wires engine, servers and store.

Threads: the netius loop owns the live state and serves both ports: the
WebSocket server and, with ``APP_SERVER=netius`` (the default), the REST
port's HTTP server, which publishes on the loop and runs every other
request through the Appier app on one worker thread.  With another
``APP_SERVER`` Appier serves the REST port itself from the main thread.  A
small worker pool runs blocking store calls (every pool is named and sized
in ``base/threads.py``).  Other threads reach the loop only through
``call_soon`` / ``call_in_loop`` (the loop's ``soon`` deque and a wake-up
of its poll, ``net.wire.Loop``).

Run it: ``python src/pushi/base/state.py`` (or ``python -m pushi``).
"""

import concurrent.futures
import gc
import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

if __name__ == "__main__" and not __package__:
    # Run as a file (``python src/pushi/base/state.py``): its folder heads
    # the path, where the package's own modules would shadow others by name
    # and ``pushi`` itself may not be found.  So the process becomes
    # ``python -P -m pushi.base.state`` of this checkout (-P: the working
    # directory stays off the path, as it is for a file), same pid and flags.
    _flags = sys.orig_argv[1 : len(sys.orig_argv) - len(sys.argv)]
    _src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _path = os.environ.get("PYTHONPATH")
    os.execve(
        sys.executable,
        # -I and -E would ignore the PYTHONPATH that finds this checkout
        [sys.executable]
        + [flag for flag in _flags if flag not in ("-I", "-E")]
        + ["-P", "-m", "pushi.base.state"]
        + sys.argv[1:],
        dict(
            os.environ, PYTHONPATH=os.pathsep.join([_src] + ([_path] if _path else []))
        ),
    )

from pushi.base import store as stores
from pushi.base.access import Access
from pushi.base.apps import AppDirectory
from pushi.base.appsfile import apply_file
from pushi.base.broker import LocalBroker
from pushi.base.config import Config, ConfigError, listen_error, url_host
from pushi.base.console import ConsoleHub
from pushi.base.engine import Engine
from pushi.base.limits import App
from pushi.base.metrics import Metrics
from pushi.base.threads import Threads
from pushi.base.webhooks import Webhooks
from pushi.net import capacity, wire
from pushi.net.httpd import HttpServer
from pushi.net.server import WebSocketServer
from pushi.proto import errors

logger = logging.getLogger("pushi")

LAG_INTERVAL = 1
""" Seconds between two measures of the loop's lag """

NODE_WAIT = 5
""" Seconds a cluster node's start waits for its registration in Redis
before it serves without (503 for what needs Redis, until it answers) """

GC_YOUNGEST = 10000
""" Allocations between two collections of the garbage collector's youngest
generation (Python's default is 700) """


class LoopStopped(errors.HttpError):
    """Work handed to a loop that has ended: the server is stopping (a
    REST request that meets it is answered 503)."""

    def __init__(self) -> None:
        errors.HttpError.__init__(self, 503, "Server stopping")


class State:
    """Everything one Pushi process runs, built from a ``Config``."""

    def __init__(self, config: Config | None = None, store: Any = None) -> None:
        self.config = config or Config.from_env()
        self.store = store or stores.open_store(
            data_dir=self.config.data_dir,
            mongo_url=self.config.mongo_url,
            synchronous=self.config.sqlite_sync,
        )
        self.apps = AppDirectory(self.store)
        # held while an app change is taken into use, and while the apps
        # are compared with the store's: neither applies an older record
        # over a newer one
        self._apps_lock = threading.RLock()
        self._apps_version = None
        self.apps.sync = self.sync_app
        self.apps.loaded = self._app_loaded
        # every thread pool of the process, shut down by ``stop``
        self.threads = Threads()
        self.metrics = Metrics(
            checks=self.threads.pool("health"), enabled=self.config.metrics
        )
        self.workers = self.threads.pool("worker")
        # a node of a cluster with PUSHI_REDIS_URL (base/cluster), else
        # one process with the engine's in-process twins
        self.cluster = None
        seams = {}
        if self.config.redis_url:
            from pushi.base.cluster.wiring import Cluster

            self.cluster = Cluster(self.config)
            seams = self.cluster.engine_seams()
        self.engine = Engine(
            self.config,
            store=self.store,
            offload=self.offload,
            schedule=self.schedule,
            apps=self.apps,
            persist=self.persist,
            metrics=self.metrics,
            **seams,
        )
        self.access = Access(
            self.apps,
            self.config.admin_secret,
            token_lifetime=self.config.token_lifetime,
        )
        self.console = ConsoleHub(
            self.engine,
            self.access.session_app,
            self.access.is_live,
            self.offload,
            self.schedule,
            max_buffer=self.config.console_max_buffer,
            history_every=self.config.console_history_every,
        )
        self.server = WebSocketServer(
            self.engine,
            self.apps,
            self.offload,
            self._admit_app,
            max_buffer=self.config.max_buffer,
            console=self.console,
            level=logging.WARNING,
        )
        self.node = None
        # what else spans the nodes (cluster/spans.py), set by the cluster
        self.spans = None
        if self.cluster is not None:
            self.node = self.cluster.node
            self.broker = self.engine.broker = self.cluster.bind(self)
        else:
            self.broker = self.engine.broker = LocalBroker(
                self.call_soon,
                self.engine.deliver,
                self._flush,
                max_pending=self.config.max_pending,
                announce=self.engine.announce,
            )
        self.webhooks = Webhooks(
            self.apps, emit=self._webhook_done, senders=self.threads.pool("webhook")
        )
        self.http: HttpServer | None = None
        self._loop_thread: threading.Thread | None = None
        self._start_error: Exception | None = None
        self._ready = threading.Event()
        self._loop_ended = threading.Event()
        self._waiting: set[concurrent.futures.Future[Any]] = set()
        self._waiting_lock = threading.Lock()
        self._stopping = threading.Event()
        self.server.start_callbacks.append(self._on_loop_start)
        self._app: Any = None  # a PushiApp
        self.metrics.snapshot = self._snapshot
        self.metrics.servers["websocket"] = self.server
        self.metrics.health["store"] = self.store.ping
        self.metrics_server: Any = None
        # with PUSHI_REDIS_URL: this node's claim of the cluster's store
        # (cluster/stores.py)
        self.store_claim = None
        # runs the retention thread (in worker mode, one worker does)
        self.retain = True

    def _admit_app(self, app, key, origin):
        """Whether a WebSocket may join an app (``Access.admit_socket``),
        against the sockets it has open (loop thread)."""
        return self.access.admit_socket(
            app, key, origin, self.engine.registry.app_count
        )

    # crossing into the loop

    def call_soon(self, work: Callable[..., Any], *args: Any) -> None:
        """Runs ``work(*args)`` on the loop thread, soon; from any thread.
        Raises ``LoopStopped`` once the loop has ended."""
        if self._loop_ended.is_set():
            raise LoopStopped()
        try:
            self.server.soon(work, *args)
        except OSError:
            # a stopping loop closes its wake-up descriptor a moment before
            # it has ended
            if self._stopping.is_set():
                raise LoopStopped() from None
            raise

    def call_in_loop(
        self, work: Callable[..., Any], *args: Any, timeout: float = 10
    ) -> Any:
        """Runs ``work(*args)`` on the loop and returns its result (blocks
        the calling thread, which must not be the loop).  Raises
        ``LoopStopped`` if the loop ends first."""
        return self.wait_in_loop(lambda done: done(work(*args)), timeout=timeout)

    def wait_in_loop(
        self, work: Callable[..., Any], *args: Any, timeout: float = 10
    ) -> Any:
        """Runs ``work(*args, done)`` on the loop and returns what it
        passes to ``done`` (once), maybe later, from a callback (the loop
        runs on meanwhile); blocks the calling thread, which must not be
        the loop.  Raises ``LoopStopped`` if the loop ends first."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def done(result):
            if not future.done():
                future.set_result(result)

        def run():
            try:
                work(*args, done)
            except BaseException as exception:
                if not future.done():
                    future.set_exception(exception)

        with self._waiting_lock:
            if self._loop_ended.is_set():
                raise LoopStopped()
            self._waiting.add(future)
        try:
            self.call_soon(run)
            return future.result(timeout)
        finally:
            with self._waiting_lock:
                self._waiting.discard(future)

    def query(self, work: Callable[..., Any], *args: Any) -> Any:
        """Runs a REST query of what the seams hold (``engine/queries``):
        on the loop for one process, whose twins are the loop's; on this
        thread for a cluster node, whose twins read Redis."""
        if self.cluster is not None:
            return work(*args)
        return self.call_in_loop(work, *args)

    def sockets(self, app_id: str, limit: int) -> dict[str, Any]:
        """An app's open sockets (at most ``limit``), their ``total`` and
        ``missing``, the nodes that did not answer (None: unknown): this
        process's, or every node's for a cluster node (``cluster/sockets``,
        whose question and answers come on the loop: the loop runs on
        while this thread waits)."""
        if self.cluster is None:
            listed, total = self.call_in_loop(self.engine.sockets, app_id, limit)
            return {"sockets": listed, "total": total, "missing": 0}
        return self.wait_in_loop(self.cluster.sockets.gather, app_id, limit)

    def _flush(self):
        """The broker's write at the end of a turn: the publishes answered
        in it are measured once their frames are out."""
        self.server.flush()
        if self.metrics.answered:
            self.metrics.written(time.monotonic())

    def _snapshot(self):
        """What a scrape reads of the loop (``Metrics.live``)."""
        return self.call_in_loop(self.metrics.live, self.engine.registry, timeout=5)

    def _loop_end(self):
        """The loop has ended: whoever waits for it hears so now."""
        with self._waiting_lock:
            self._loop_ended.set()
            waiting = [future for future in self._waiting if not future.done()]
        for future in waiting:
            future.set_exception(LoopStopped())

    def schedule(self, work: Callable[[], Any], seconds: float = 0) -> None:
        """Runs ``work()`` on the loop in ``seconds``, or after the current
        turn (loop thread only)."""
        if seconds:
            self.server.delay(lambda: self.server.run(work), timeout=seconds)
        else:
            self.server.soon(work)

    # what a store bound to the loop uses besides ``schedule`` (loop thread)

    def watch_read(self, socket: socket.socket, work: Callable[[], Any]) -> None:
        """Runs ``work()`` on the loop whenever ``socket`` (not a client's)
        becomes readable (edge-triggered: ``work`` reads all there is);
        see ``net.wire.watch_read``."""
        wire.watch_read(self.server, socket, work)

    def unwatch_read(self, socket: socket.socket) -> None:
        wire.unwatch_read(self.server, socket)

    def watch_write(self, socket: socket.socket, work: Callable[[], Any]) -> None:
        """Runs ``work()`` on the loop at its next turn, then whenever
        ``socket`` (not a client's) becomes writable again, until
        ``unwatch_write``; see ``net.wire.watch_write``."""
        wire.watch_write(self.server, socket, work)

    def unwatch_write(self, socket: socket.socket) -> None:
        wire.unwatch_write(self.server, socket)

    def offload(self, work: Callable[[], Any], then: Callable[[Any], Any]) -> None:
        """Runs blocking ``work()`` on a worker, then ``then(result)`` on
        the loop (``then(None)`` if ``work`` failed, which is logged)."""

        def done(future):
            try:
                result = future.result()
            except Exception:
                logger.exception("background work failed")
                result = None
            self.call_soon(then, result)

        self.workers.submit(work).add_done_callback(done)

    def persist(
        self, events: Sequence[Any], then: Callable[[BaseException | None], Any]
    ) -> None:
        """Stores events without blocking the loop (loop thread): then
        ``then(error)`` runs on the loop, ``error`` None once they are
        committed.  A store bound to the loop calls back on it; another
        calls back from the worker that waited."""
        started = time.monotonic()

        def done(error):
            if error is None:
                self.metrics.store_commit.observe(time.monotonic() - started)
            if threading.current_thread() is self._loop_thread:
                then(error)
                return
            try:
                self.call_soon(then, error)
            except LoopStopped:
                pass

        self.store.add_events_then(events, done, self.workers)

    def _webhook_done(self, app_id, kind, details):
        """A webhook's fate, for the metrics and the debug console
        (webhooks thread)."""
        if kind == "webhook_sent":
            self.metrics.webhook_posts.labels(app_id, "sent").inc()
        elif kind == "webhook_failed":
            result = "failed" if details.get("final") else "retry"
            self.metrics.webhook_posts.labels(app_id, result).inc()
        try:
            self.call_soon(lambda: self.engine.emit(app_id, kind, **details))
        except LoopStopped:
            pass

    # apps

    def app_changed(self, app: App) -> None:
        """Takes a new or updated app into use: the directory, the sockets
        already open, and the webhook observer (on only while some app
        has webhooks, so none costs anything otherwise); disabling an app
        ends its session tokens, revoking a key the sockets and session
        tokens that rely on it.  Call it after the store has the change."""
        with self._apps_lock:
            if app.limits.webhooks and self._loop_thread is not None:
                # observed before a socket can find the app: its first
                # events' webhooks are not lost
                self.call_in_loop(self._observe_webhooks)
            self.apps.put(app)
            if not app.enabled:
                self.access.revoke(app.app_id)
            self.access.revoke_keys(app)
            if self._loop_thread is not None:
                self.call_in_loop(self.engine.update_app, app)
                self.call_in_loop(self._watch_webhooks)
                self.call_in_loop(self.console.recheck)

    def reload_apps(self) -> None:
        """Takes into use every app change made outside this process (the
        ``pushi app`` CLI, another server on the same MongoDB) since the
        last reload: each app whose record differs from the one in use is
        applied as ``app_changed``, and apps not seen yet are added."""
        with self._apps_lock:
            self._apps_version = self.store.apps_version()
            for record in self.store.list_apps():
                known = self.apps.by_id(str(record["app_id"]))
                if known is None or known.record != record:
                    self.app_changed(App(record))

    def sync_app(self, app_id: str) -> App | None:
        """The app as the store has it now, taken into use first if it
        changed (after a change made here to the store); None if it does
        not exist."""
        with self._apps_lock:
            record = self.store.get_app(app_id)
            if record is None:
                return None
            known = self.apps.by_id(str(record["app_id"]))
            if known is not None and known.record == record:
                return known
            app = App(record)
            self.app_changed(app)
            return app

    def _watch_apps(self):
        """Polls the store's ``apps_version`` (one small read) every
        ``PUSHI_APPS_POLL_INTERVAL`` seconds, and reloads the apps when it
        moved: a key revoked with the CLI closes its sockets within that
        time."""
        failing = False
        while not self._stopping.wait(self.config.apps_poll_interval):
            try:
                if self.store.apps_version() != self._apps_version:
                    self.reload_apps()
                failing = False
            except LoopStopped:
                return
            except Exception as error:
                if self._stopping.is_set():
                    return
                if not stores.is_store_error(error):
                    logger.exception("reloading the apps failed")
                elif not failing:
                    # the store is down or the process out of files: one
                    # line per outage, polled again at the next interval
                    logger.warning("cannot read the apps from the store: %s", error)
                failing = True

    def logout(self, token: str) -> None:
        """Ends a session token and the console streams it opened (also
        when the token had expired: its streams end now, not at the next
        stats tick)."""
        self.access.logout(token)
        if self._loop_thread is not None:
            self.call_in_loop(self.console.recheck)

    def _app_loaded(self, app):
        """An app loaded for a socket (created by another process): its
        webhooks are observed before that socket's first events (the
        loop runs this before the socket opens)."""
        if app.limits.webhooks and self._loop_thread is not None:
            try:
                self.call_soon(self._observe_webhooks)
            except LoopStopped:
                pass

    def _observe_webhooks(self):
        """Observes for the webhooks (an app that has some is coming)."""
        if self.webhooks.observe not in self.engine.observers:
            self.engine.observers.append(self.webhooks.observe)

    def _watch_webhooks(self):
        wanted = any(app.limits.webhooks for app in self.apps.all())
        observers = self.engine.observers
        if wanted and self.webhooks.observe not in observers:
            observers.append(self.webhooks.observe)
        elif not wanted and self.webhooks.observe in observers:
            observers.remove(self.webhooks.observe)

    # life

    @property
    def app(self) -> Any:
        """The Appier REST app (built on first use)."""
        if self._app is None:
            from pushi.app.app import PushiApp

            self._app = PushiApp(self)
        return self._app

    def _on_loop_start(self):
        try:
            if self.http is not None:
                # joins the loop that is starting: bound now, polled by it
                self.http.poll = self.server.poll
                listen = self.config.listen("app")
                try:
                    self.http.serve(ipv6=":" in listen["host"], start=False, **listen)
                except OSError as error:
                    raise listen_error("REST API", "APP", listen, error) from None
            self.store.bind_loop(self)
            if self.cluster is not None:
                self.cluster.start()
            self._watch_webhooks()
            self.console.start_history()
        except Exception as error:
            self._start_error = error
            raise
        finally:
            self._ready.set()
        self._tick()
        if self.metrics.enabled:
            self._measure_lag(None)

    def _measure_lag(self, expected):
        """Observes how late the loop runs this timer (``expected`` is when
        it was due, by ``time.monotonic``), and sets the next one."""
        now = time.monotonic()
        if expected is not None:
            self.metrics.loop_lag.observe(max(0.0, now - expected))
        due = now + LAG_INTERVAL
        self.server.delay(lambda: self._measure_lag(due), timeout=LAG_INTERVAL)

    def _tick(self):
        self.server.run(self.engine.sweep)
        self.server.delay(self._tick, timeout=min(5, self.config.activity_timeout))

    def start_server(self, http: bool = False) -> None:
        """Starts the loop in its thread with the WebSocket server, and the
        REST port's HTTP server when ``http``; returns when they listen.
        Creates or updates the apps of ``PUSHI_APPS_FILE`` first.  Raises
        ``ConfigError`` when a port cannot be listened on or lacks its TLS
        files, or the apps file cannot be applied."""
        config = self.config
        config.check_tls()
        if config.redis_url:
            from pushi.base.cluster.stores import claim_store

            # before anything is written to a store the cluster may not use
            self.store_claim = claim_store(config, self.store)
        if config.apps_file:
            apply_file(self.store, config.apps_file)
        # read first: a change made during the refresh is seen at the next poll
        self._apps_version = self.store.apps_version()
        self.apps.refresh()
        if http:
            self.app.start()
            self.http = HttpServer(
                self.app.serve_request, metrics=self.metrics, level=logging.WARNING
            )
            self.metrics.servers["rest"] = self.http
            self.server.add_base(self.http)
            self.http.trusted_proxies = config.trusted_proxies
        self.server.trusted_proxies = config.trusted_proxies
        if config.trusted_proxies:
            logger.info(
                "X-Forwarded-For and X-Forwarded-Proto believed from %s",
                ", ".join(str(network) for network in config.trusted_proxies),
            )
        self._limit_connections()

        def serve():
            listen = config.listen("server")
            try:
                self.server.serve(ipv6=":" in listen["host"], **listen)
            except Exception as error:
                if self._ready.is_set() and self._start_error is None:
                    raise
                # a start that failed: the starting thread reports it
                if self._start_error is None:
                    self._start_error = (
                        listen_error("WebSocket server", "SERVER", listen, error)
                        if isinstance(error, OSError)
                        else error
                    )
                self._ready.set()
            finally:
                self._loop_end()

        self._loop_thread = threading.Thread(
            target=serve, name="pushi-loop", daemon=True
        )
        self._loop_thread.start()
        if self.retain:
            threading.Thread(
                target=self._retain, name="pushi-retention", daemon=True
            ).start()
        threading.Thread(
            target=self._watch_apps, name="pushi-apps", daemon=True
        ).start()
        if not self._ready.wait(30):
            raise RuntimeError("WebSocket server did not start")
        if self._start_error is not None:
            raise self._start_error
        if self.node is not None and not self.node.registered.wait(NODE_WAIT):
            from pushi.net.redis import redacted

            logger.warning(
                "Cluster: Redis %s unreachable: serving without it (503) until"
                " it answers",
                redacted(config.redis_url),
            )
        logger.info(
            "WebSocket server on %s://%s:%d",
            "wss" if config.server_ssl else "ws",
            url_host(config.server_host),
            self.server.port,  # the one the system chose for port 0
        )
        if config.metrics_port is not None:
            self._serve_metrics(config.metrics_port)

    def _serve_metrics(self, port: int) -> None:
        """``PUSHI_METRICS_PORT``: the metrics without authentication, on
        their own port (of ``PUSHI_METRICS_HOST``, the loopback by
        default), served by prometheus_client's threads."""
        from prometheus_client import start_http_server

        config = self.config
        listen = dict(host=config.metrics_host, port=port)
        try:
            self.metrics_server, _thread = start_http_server(
                port, config.metrics_host, self.metrics.registry
            )
        except OSError as error:
            raise listen_error("Metrics", "PUSHI_METRICS", listen, error) from None
        logger.info(
            "Metrics on http://%s:%d/metrics",
            url_host(config.metrics_host),
            self.metrics_server.server_port,
        )

    def unready(self) -> str | None:
        """Why this process takes no traffic now (``GET /ready``): None
        once it serves, until a stop begins."""
        if self._stopping.is_set():
            return "Server stopping"
        if self._loop_ended.is_set():
            return "Server stopped"
        if not self._ready.is_set() or self._start_error is not None:
            return "Server starting"
        if self.cluster is not None and not self.call_in_loop(self.cluster.joined):
            return "Joining the cluster"
        if self.node is not None and self.node.fenced:
            return "Cut off from the cluster's Redis"
        return None

    def _limit_connections(self):
        """Caps both ports' sockets to what the open-files limit allows
        (``net/capacity.py``), lowered by ``PUSHI_MAX_CONNECTIONS`` and
        ``PUSHI_MAX_CONNECTIONS_PER_IP``."""
        config = self.config
        plan = capacity.plan(
            capacity.fd_limit(), config.max_connections, config.max_connections_per_ip
        )
        if plan.clamped:
            logger.warning(
                "PUSHI_MAX_CONNECTIONS=%d is over what %d open files allow: %d",
                config.max_connections,
                plan.fd_limit,
                plan.max_connections,
            )
        self.server.limit(plan.max_connections, plan.max_refusing, plan.max_per_address)
        if self.http is not None:
            self.http.limit(plan.http_max_connections, plan.http_max_refusing)
        logger.info(
            "WebSocket port: at most %d connections%s%s",
            plan.max_connections,
            (", %d per address" % plan.max_per_address if plan.max_per_address else ""),
            (
                "; REST port: at most %d" % plan.http_max_connections
                if self.http is not None
                else ""
            ),
        )

    def _stop_node(self):
        """Closes the node's Redis connections before the loop ends, once
        what the closing sockets sent Redis is answered (a second at
        most: the rest is the reaper's)."""
        node, cluster = self.node, self.cluster
        assert node is not None and cluster is not None  # called for a node
        deadline = time.monotonic() + 1
        try:
            while time.monotonic() < deadline:
                time.sleep(0.05)
                if not self.call_in_loop(lambda: node.commands.pending, timeout=1):
                    break
            self.call_in_loop(cluster.stop, timeout=5)
        except Exception:
            pass

    def _retain(self):
        """Enforces each app's retention settings, continuously, off the
        loop: at most ``retention_count`` events per channel, none older
        than ``retention_age`` seconds."""
        while not self._stopping.wait(self.config.retention_interval):
            if self.spans is not None and not self.spans.may_retain():
                continue  # another node of the cluster runs it
            for app in self.apps.all():
                max_count = app.limits.retention_count
                max_age = app.limits.retention_age
                if not (max_count or max_age):
                    continue
                try:
                    self.store.trim_events(
                        app.app_id, max_count or None, max_age or None
                    )
                except Exception:
                    if self._stopping.is_set():
                        return  # the store closed under a long trim
                    logger.exception("retention of app %s failed", app.app_id)

    def serve(self, started: Callable[[], Any] | None = None) -> None:
        """Runs both servers until interrupted (the launcher's entry);
        ``started()`` is called once both ports listen (with another
        ``APP_SERVER``: once its port was found free, before Appier binds
        it)."""
        config = self.config
        own_http = config.app_server == "netius"
        logger.info("Store: %r", self.store)
        capacity.raise_fd_limit()
        try:
            if not own_http:
                _check_app_server(config.app_server)
            self.start_server(http=own_http)
            listen = config.listen("app")
            if own_http:
                assert self.http is not None  # start_server(http=True) made it
                port = self.http.port
            else:
                _probe_port("REST API", "APP", listen)
                port = config.app_port
            logger.info(
                "REST API on %s://%s:%d",
                "https" if config.app_ssl else "http",
                url_host(config.app_host),
                port,
            )
            _tune_gc()
            if started is not None:
                started()
            if own_http:
                # an Event, not Thread.join: a join that a signal interrupts
                # can leave the thread marked as ended (CPython < 3.13)
                while not self._loop_ended.wait(1):
                    pass
                return
            self.app.counts_answers = True
            try:
                self.app.serve(server=config.app_server, conf=False, **listen)
            except OSError as error:
                raise listen_error("REST API", "APP", listen, error) from None
        finally:
            self.stop()

    def stop(self) -> None:
        """Closes every socket with 4200 and stops the loop and the store;
        with ``PUSHI_DRAIN_SECONDS``, goes on serving that long first, with
        ``GET /ready`` answering 503, so that a load balancer sends no new
        clients (a second SIGTERM or Ctrl-C cuts it short)."""
        self._stopping.set()
        if (
            self.config.drain_seconds
            and self._loop_thread is not None
            and not self._loop_ended.is_set()
        ):
            logger.info("Draining for %g s", self.config.drain_seconds)
            try:
                self._loop_ended.wait(self.config.drain_seconds)
            except KeyboardInterrupt:
                pass
        if self.http is not None:
            self.app.drop_queued()
        if self._loop_thread is not None and not self._loop_ended.is_set():
            try:
                self.call_in_loop(self.engine.shutdown, timeout=5)
            except Exception:
                pass
            if self.node is not None:
                self._stop_node()
            # netius queues the stop, then writes to the loop's wake-up
            # file: a loop awake meanwhile would stop and close that file
            # before the write; so the stop waits for the write
            woken = threading.Event()

            def stop_loop():
                woken.wait(1)
                self.server.stop()

            self.server.delay_s(stop_loop)
            woken.set()
            self._loop_thread.join(5)
        if self.http is not None:
            self.app.stop()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        self.webhooks.stop()
        if self.store_claim is not None:
            self.store_claim.stop()
        # before the store closes: queued work may still need it
        self.threads.shutdown()
        self.store.close()


def _tune_gc():
    """Fits the garbage collector to a server whose heap is mostly
    long-lived: what the start made (modules, classes, apps) is frozen out
    of every collection (``gc.freeze``, after a collection: no garbage is
    kept for good), and the youngest generation is collected every
    ``GC_YOUNGEST`` allocations.  With Python's defaults a storm of
    connections (each socket keeps a few objects for its life) runs a
    full collection over the whole heap each time it grew by a quarter."""
    gc.collect()
    gc.freeze()
    _first, second, third = gc.get_threshold()
    gc.set_threshold(GC_YOUNGEST, second, third)


APP_SERVERS = {
    "legacy": None,
    "waitress": "waitress",
    "tornado": "tornado",
    "cherry": "cherrypy",
}
"""The Appier servers ``APP_SERVER`` may name besides ``netius`` (Pushi's
own), with the module each needs."""


def _check_app_server(name):
    """Raises ``ConfigError`` for an ``APP_SERVER`` that Appier cannot serve
    with what is installed: Appier would otherwise pip-install the missing
    package into the running interpreter."""
    if name == "gunicorn":
        # its workers are forked processes, without the loop that owns the
        # sockets: publishes would wait for a loop that is not there
        raise ConfigError(
            "APP_SERVER=gunicorn cannot serve Pushi (its forked workers have"
            " no event loop): use netius, the default"
        )
    if name not in APP_SERVERS:
        raise ConfigError(
            "Unknown APP_SERVER: %r (netius, %s)" % (name, ", ".join(APP_SERVERS))
        )
    module = APP_SERVERS[name]
    if module and importlib.util.find_spec(module) is None:
        raise ConfigError(
            "APP_SERVER=%s needs the Python package %s: pip install %s"
            % (name, module, module)
        )


def _probe_port(what, prefix, listen):
    """Raises the ``ConfigError`` of a port in use before another
    ``APP_SERVER`` binds it, where the failure would come after the start's
    log lines."""
    family = socket.AF_INET6 if ":" in listen["host"] else socket.AF_INET
    with socket.socket(family) as probe:
        # as those servers bind: past connections in TIME_WAIT do not count
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((listen["host"], listen["port"]))
        except OSError as error:
            raise listen_error(what, prefix, listen, error) from None


class StartLog(logging.Handler):
    """The launcher's log handler: it holds the records of a start until
    both ports listen (``started``), then writes them and every later one
    to ``target``.  A start that fails is refused in one line, its reason:
    ``failed`` discards what it held (where the store is, what the open-files
    limit is, Appier's "Finishing" line)."""

    MAX_HELD = 1000
    """Records held at most (a start logs a handful): past it they are
    written."""

    def __init__(self, target: logging.Handler) -> None:
        logging.Handler.__init__(self)
        self.target = target
        self.held: list[logging.LogRecord] | None = []
        self.dropped = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.dropped:
            return
        if self.held is None:
            self.target.handle(record)
            return
        self.held.append(record)
        if len(self.held) > self.MAX_HELD:
            self._write_held()

    def started(self) -> None:
        """The start went well: what was held is written, and from now
        on every record as it comes."""
        lock = self.lock
        assert lock is not None  # logging.Handler's __init__ made it
        with lock:
            if not self.dropped:
                self._write_held()

    def failed(self) -> None:
        """The start failed: nothing held nor later is written."""
        lock = self.lock
        assert lock is not None  # logging.Handler's __init__ made it
        with lock:
            self.dropped = True
            self.held = None

    def _write_held(self):
        held, self.held = self.held or (), None
        for record in held:
            self.target.handle(record)


def configure_logging(level: str) -> StartLog:
    """The process's one log handler (``StartLog`` on stderr in
    ``wire.LOG_FORMAT``), which Appier's and netius's records share; the
    handler is returned for the launcher to ``started`` or ``failed``."""
    stream = logging.StreamHandler()
    stream.setFormatter(logging.Formatter(wire.LOG_FORMAT))
    handler = StartLog(stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    return handler


def main() -> Any:
    config = Config.from_env()
    log = configure_logging(config.log_level)
    if config.workers > 1:
        from pushi.base.workers import supervise

        log.started()
        return supervise(config)

    def terminate(_signum, _frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, terminate)
    run_until_stopped(log, lambda: State(config).serve(started=log.started))


def run_until_stopped(log: StartLog, serve: Callable[[], Any]) -> None:
    """Runs ``serve()`` (a process's State) until a stop: an interrupt ends
    it quietly, a ``ConfigError`` in one line (exit 1), and the log held
    during the start is let out whatever happens."""
    try:
        serve()
    except KeyboardInterrupt:
        pass
    except ConfigError as error:
        log.failed()
        raise SystemExit(str(error)) from None
    finally:
        # an interrupted start, or a bug: what was held helps
        log.started()


if __name__ == "__main__":
    main()
