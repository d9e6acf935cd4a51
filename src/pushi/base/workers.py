"""Worker mode: one Pushi on every core of a machine (``PUSHI_WORKERS=N``,
``pushi --workers N``; ``auto``: one per core).

The process started becomes a supervisor.  It runs no loop and serves no
socket; it owns what the workers share and keeps them running:

* The ports.  Each worker listens on both ports with ``SO_REUSEPORT`` and
  the kernel spreads new connections over them.  A second Pushi on the same
  ports is still refused: the supervisor keeps a bound (not listening)
  socket with ``SO_REUSEPORT`` on each port, so a Pushi of one process
  (which clears it, ``net/wire.py OwnPort``) cannot bind them, and holds a
  lock per port (an abstract Unix socket, gone with the process) that a
  second supervisor cannot take; with the embedded store, an exclusive
  ``flock`` on ``<data_dir>/pushi.lock`` too.
* Redis.  ``PUSHI_REDIS_URL`` when set; else a private ``redis-server`` on a
  Unix socket of the data dir, without persistence, stopped on exit.  The
  workers are nodes of a cluster on it (``base/cluster``).
* The events writer.  With the embedded store, ONE ``sqlite_events.serve``
  process commits the persisted events of every worker (they connect to it
  on ``<data_dir>/events.sock``), so the workers never take turns at the
  write lock and share one group commit.  A batch is answered only once it
  is committed, so an acknowledged event survives ``kill -9`` of any
  process.

It restarts a worker (or the writer, or the private Redis) that dies, after
a back-off, and on SIGTERM or Ctrl-C stops the workers (each closes its
sockets with 4200, as one process does), then the writer and Redis.  Each
child gets SIGTERM when the supervisor dies (``PR_SET_PDEATHSIG`` on Linux),
and the workers and the writer also end when a pipe only the supervisor
holds reads end of file: after ``kill -9`` of the supervisor nothing is
left running.  The writer ignores SIGTERM (it ends with that pipe, after
the workers), so a SIGTERM sent to every process at once (systemd's
default ``KillMode``) still lets the workers commit their last batches.
"""

import ctypes
import errno
import fcntl
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from pushi.base.config import ConfigError, listen_error

logger = logging.getLogger("pushi")

BACKOFF = (0.5, 1, 2, 4, 8, 16, 30)
""" Seconds before the 1st, 2nd, ... restart of a child that keeps dying """

STABLE = 30
""" Seconds a child must have run for its next death to count as a first """

START_TIMEOUT = 60
""" Seconds the workers have to listen at start """

STOP_TIMEOUT = 15
""" Seconds the workers have to close their sockets at a stop (plus
``PUSHI_DRAIN_SECONDS``), before they are killed """

LOCK_NAME = "pushi.lock"
EVENTS_SOCKET = "events.sock"
REDIS_SOCKET = "redis.sock"

_WORKER = "from pushi.base.worker import worker_main; worker_main()"
_WRITER = "from pushi.base.store.sqlite_events import serve; serve()"

_PR_SET_PDEATHSIG = 1
_prctl: Callable[..., int] | None
try:
    # loaded before any fork: the child calls it between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _dies_with(parent):
    """A ``preexec_fn``: the child gets SIGTERM when ``parent`` dies
    (Linux), and ends at once if it already has."""

    def preexec():
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _package_env(extra):
    """The environment of a child: this one, the package importable, and
    ``extra`` (a None value removes the variable)."""
    import pushi

    root = os.path.dirname(os.path.dirname(os.path.abspath(pushi.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    for name, value in extra.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _describe(returncode):
    if returncode is not None and returncode < 0:
        try:
            return "signal %s" % signal.Signals(-returncode).name
        except ValueError:
            return "signal %d" % -returncode
    return "exit status %s" % returncode


class Child:
    """One restartable child: ``start()`` makes its process, the rest is
    the supervisor's bookkeeping of its deaths."""

    def __init__(self, name, start):
        self.name = name
        self._start = start
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.deaths = 0
        self.restart_at = None

    def start(self) -> subprocess.Popen[bytes]:
        process = self.process = self._start()
        self.started_at = time.monotonic()
        self.restart_at = None
        return process

    @property
    def pid(self):
        return self.process.pid if self.process is not None else None

    def died(self):
        """The death just seen: when to restart."""
        if time.monotonic() - self.started_at > STABLE:
            self.deaths = 0
        delay = BACKOFF[min(self.deaths, len(BACKOFF) - 1)]
        self.deaths += 1
        self.restart_at = time.monotonic() + delay
        return delay


class Supervisor:
    """Runs ``config.workers`` workers of one server (see the module
    docstring); ``run()`` returns once they are stopped."""

    def __init__(self, config):
        self.config = config
        self.count = config.workers
        self.redis_url = config.redis_url
        self.private = None
        self.writer = None
        self.workers = []
        self.events_address = None
        self._held = []
        self._listener = None
        self._temp = None
        self._stopping = False
        self._pid = os.getpid()
        self._life_r, self._life_w = os.pipe()
        self._ready_r, self._ready_w = os.pipe()
        os.set_blocking(self._ready_r, False)
        self._ready = set()

    # start

    def run(self):
        for name in (signal.SIGTERM, signal.SIGINT):
            signal.signal(name, self._stop_signal)
        try:
            self._check()
            self._hold_ports()
            self._lock_data_dir()
            self._apply_apps_file()
            self._start_redis()
            self._start_writer()
            for index in range(self.count):
                self.workers.append(
                    Child("worker %d" % (index + 1), self._worker_starter(index))
                )
            for worker in self.workers:
                worker.start()
            if not self._wait_ready():
                return 0 if self._stopping else 1
            self._log_started()
            self._watch()
        finally:
            self._stop()
        return 0

    def _stop_signal(self, _signum, _frame):
        self._stopping = True

    def _check(self):
        config = self.config
        if config.app_server != "netius":
            raise ConfigError(
                "PUSHI_WORKERS=%d needs APP_SERVER=netius (the workers share"
                " the REST port)" % self.count
            )
        if config.metrics_port is not None:
            raise ConfigError(
                "PUSHI_METRICS_PORT is not available with PUSHI_WORKERS=%d:"
                " read GET /metrics on the REST port" % self.count
            )
        for side, prefix in (("server", "SERVER"), ("app", "APP")):
            if not getattr(config, side + "_port"):
                raise ConfigError(
                    "PUSHI_WORKERS=%d needs a fixed %s_PORT (not 0): the workers"
                    " share it" % (self.count, prefix)
                )
        config.check_tls()

    def _hold_ports(self):
        """Keeps each port bound with ``SO_REUSEPORT`` (a single-process
        Pushi cannot bind it while the workers restart) and takes its lock
        (a second supervisor is refused)."""

        for what, prefix, side in (
            ("WebSocket server", "SERVER", "server"),
            ("REST API", "APP", "app"),
        ):
            listen = self.config.listen(side)
            lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._held.append(lock)
            try:
                # abstract (Linux): no file, released when the process ends;
                # by port alone, as 0.0.0.0 and 127.0.0.1 overlap
                lock.bind("\0pushi-port-%d" % listen["port"])
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise listen_error(what, prefix, listen, error) from None
            family = socket.AF_INET6 if ":" in listen["host"] else socket.AF_INET
            held = socket.socket(family, socket.SOCK_STREAM)
            self._held.append(held)
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                held.bind((listen["host"], listen["port"]))
            except OSError as error:
                raise listen_error(what, prefix, listen, error) from None

    def _lock_data_dir(self):
        if self.config.mongo_url:
            return
        data_dir = self.config.data_dir
        os.makedirs(data_dir, exist_ok=True)
        # held open (and locked) until the supervisor exits
        lock = open(os.path.join(data_dir, LOCK_NAME), "a")  # noqa: SIM115
        self._held.append(lock)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(
                "Another Pushi with PUSHI_WORKERS runs on the data dir %s"
                % os.path.abspath(data_dir)
            ) from None

    def _apply_apps_file(self):
        """``PUSHI_APPS_FILE`` is applied here, once, before any worker
        starts (N workers would apply it at once); the workers take the
        apps from the store."""
        if not self.config.apps_file:
            return
        from pushi.base.appsfile import apply_file
        from pushi.base.store import open_store

        store = open_store(
            data_dir=self.config.data_dir, mongo_url=self.config.mongo_url
        )
        try:
            apply_file(store, self.config.apps_file)
        finally:
            store.close()

    def _socket_path(self, name):
        """``name`` in the data dir, or in a private temp dir when there is
        none (MongoDB) or the path is too long for a Unix socket."""
        data_dir = None if self.config.mongo_url else self.config.data_dir
        if data_dir is not None:
            path = os.path.join(os.path.abspath(data_dir), name)
            if len(path.encode()) < 100:
                return path
        if self._temp is None:
            self._temp = tempfile.mkdtemp(prefix="pushi-")
        return os.path.join(self._temp, name)

    def _start_redis(self):
        if self.redis_url:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise ConfigError(
                "PUSHI_WORKERS=%d needs Redis: install redis-server (Debian,"
                " Ubuntu: apt install redis-server; macOS: brew install redis)"
                " or set PUSHI_REDIS_URL" % self.count
            )
        path = self._socket_path(REDIS_SOCKET)
        self.redis_url = "unix://%s?db=0" % path
        self.private = Child("redis-server", lambda: self._run_redis(binary, path))
        process = self.private.start()
        deadline = time.monotonic() + 10
        while not self._redis_answers(path):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ConfigError(
                    "The private redis-server did not start (%s)"
                    % _describe(process.poll())
                )
            time.sleep(0.05)

    def _run_redis(self, binary, path):
        command = [
            binary,
            "--port", "0",
            "--unixsocket", path,
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", os.path.dirname(path),
            "--loglevel", "warning",
        ]  # fmt: skip
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_dies_with(self._pid),
        )

    @staticmethod
    def _redis_answers(path):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1)
                probe.connect(path)
                probe.sendall(b"PING\r\n")
                return probe.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _start_writer(self):
        if self.config.mongo_url:
            return
        from pushi.base.store.sqlite import DATABASE_NAME

        path = self._socket_path(EVENTS_SOCKET)
        try:
            os.unlink(path)  # a stale one: the data dir lock is ours
        except FileNotFoundError:
            pass
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # it takes pickles: only this user may connect
        umask = os.umask(0o177)
        try:
            self._listener.bind(path)
        finally:
            os.umask(umask)
        self._listener.listen(128)
        self.events_address = path
        database = os.path.join(os.path.abspath(self.config.data_dir), DATABASE_NAME)
        listener = self._listener.fileno()

        def start():
            return subprocess.Popen(
                [sys.executable, "-c", _WRITER, database, self.config.sqlite_sync]
                + [str(listener), str(self._life_r)],
                stdin=subprocess.DEVNULL,
                env=_package_env({}),
                pass_fds=(listener, self._life_r),
                start_new_session=True,
                preexec_fn=_dies_with(self._pid),
            )

        self.writer = Child("events writer", start)
        self.writer.start()

    def _worker_starter(self, index):
        env = _package_env(
            {
                "PUSHI_REDIS_URL": self.redis_url,
                "PUSHI_WORKERS": None,
                # applied by the supervisor
                "PUSHI_APPS_FILE": None,
            }
        )
        arguments = [
            self.events_address or "",
            str(self._life_r),
            str(self._ready_w),
            # one worker enforces retention: the trims need not run N times
            "1" if index == 0 else "0",
        ]

        def start():
            return subprocess.Popen(
                [sys.executable, "-c", _WORKER] + arguments,
                stdin=subprocess.DEVNULL,
                env=env,
                pass_fds=(self._life_r, self._ready_w),
                # Ctrl-C reaches the supervisor, which stops them in order
                start_new_session=True,
                preexec_fn=_dies_with(self._pid),
            )

        return start

    def _read_ready(self, timeout):
        try:
            readable, _, _ = select.select([self._ready_r], [], [], timeout)
        except InterruptedError:
            return
        if readable:
            try:
                data = os.read(self._ready_r, 4096)
            except BlockingIOError:
                return
            for line in data.split():
                self._ready.add(int(line))

    def _wait_ready(self):
        """True once every worker listens; False if one ended first (it
        said why) or the start was interrupted."""
        deadline = time.monotonic() + START_TIMEOUT
        while not self._stopping:
            self._read_ready(0.1)
            if all(worker.pid in self._ready for worker in self.workers):
                return True
            for worker in self.workers:
                if worker.process.poll() is not None:
                    logger.error(
                        "Worker %d ended at start (%s)",
                        worker.pid,
                        _describe(worker.process.returncode),
                    )
                    return False
            if time.monotonic() > deadline:
                logger.error("The workers did not start in %d s", START_TIMEOUT)
                return False
        return False

    def _log_started(self):
        from pushi.net.redis import redacted

        # the writer first: a reader of the log that sees the workers' line
        # finds the writer's before it
        if self.writer is not None:
            logger.info(
                "Events of all workers committed by one writer (pid %d)",
                self.writer.pid,
            )
        logger.info(
            "%d workers (pids %s) on Redis %s%s",
            self.count,
            ", ".join(str(worker.pid) for worker in self.workers),
            redacted(self.redis_url),
            (
                " (private redis-server, pid %d)" % self.private.pid
                if self.private
                else ""
            ),
        )

    # running

    def _children(self):
        return [
            child
            for child in [self.private, self.writer] + self.workers
            if child is not None
        ]

    def _watch(self):
        while not self._stopping:
            self._read_ready(0.2)
            now = time.monotonic()
            for child in self._children():
                if child.restart_at is not None:
                    if now >= child.restart_at and not self._stopping:
                        child.start()
                        logger.info("Restarted %s: pid %d", child.name, child.pid)
                elif child.process.poll() is not None:
                    delay = child.died()
                    logger.warning(
                        "%s (pid %d) ended (%s): restarting in %g s",
                        child.name.capitalize(),
                        child.pid,
                        _describe(child.process.returncode),
                        delay,
                    )

    # stop

    def _stop(self):
        """Stops the workers (4200 to their sockets), then the writer once
        it answered what it took, then Redis; leaves nothing behind."""
        if self.workers:
            logger.info("Stopping %d workers", len(self.workers))
        for worker in self.workers:
            self._signal(worker, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT + self.config.drain_seconds
        for worker in self.workers:
            self._reap(worker, deadline)
        # the writer reads end of file once no worker holds the pipe either
        os.close(self._life_w)
        if self.writer is not None:
            self._reap(self.writer, time.monotonic() + 30)
        if self.private is not None:
            self._signal(self.private, signal.SIGTERM)
            self._reap(self.private, time.monotonic() + 10)
        if self._listener is not None:
            self._listener.close()
            _unlink(self.events_address)
        if self.private is not None:
            _unlink(self.redis_url[len("unix://") :].split("?")[0])
        for held in self._held:
            held.close()
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
        for fd in (self._life_r, self._ready_r, self._ready_w):
            os.close(fd)

    @staticmethod
    def _signal(child, signum):
        if child.process is not None and child.process.poll() is None:
            try:
                child.process.send_signal(signum)
            except OSError:
                pass

    @staticmethod
    def _reap(child, deadline):
        if child.process is None:
            return
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) killed at stop", child.name, child.pid)
            child.process.kill()
            child.process.wait()


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def supervise(config):
    """The launcher's entry with ``PUSHI_WORKERS`` above 1: runs the
    supervisor until SIGTERM or Ctrl-C; a setting it cannot run with is
    refused in one line (exit 1)."""
    try:
        code = Supervisor(config).run()
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    if code:
        raise SystemExit(code)
