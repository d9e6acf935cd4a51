"""The servers under test: how to install, start, provision and stop each.

Every server binds 127.0.0.1 only, on free ports picked here, and runs in
its own process group with a parent-death signal so that nothing outlives
the bench.  Peers live under ``.bench/`` at the repository root.
"""

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HOST = "127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(ROOT, ".bench")

SOKETI_VERSION = "1.6.1"
UWS_OVERRIDE = "npm:@trufflesuite/uws-js-unofficial@20.30.0-unofficial.0"
ORIGINAL_VERSION = "0.6.10"
TINYDB_VERSION = "4.9.0"


def free_port():
    """Returns a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _die_with_parent():
    """Child pre-exec hook: own process group, SIGTERM when the bench dies."""
    os.setsid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(args, env=None, cwd=None, log_path=None):
    """Starts a child process in its own group; output goes to ``log_path``."""
    # the child has its own copy of the descriptor: ours closes at once
    with open(log_path or os.devnull, "ab") as log:
        return subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )


def stop_process(proc, grace=5.0):
    """Stops a child we started (and its group, which it leads) by pid."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def http(method, url, body=None, headers=None, timeout=10.0):
    """Makes one HTTP request; returns ``(status, body_bytes)``."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    request = urllib.request.Request(url, data=data, method=method)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def process_role(pid, root=False):
    """What a process of a server under test is, from its command line:
    ``redis-server``, ``worker`` and ``writer`` (Pushi's workers and
    events writer under ``PUSHI_WORKERS``), ``main`` for the process the
    bench started (the supervisor under ``PUSHI_WORKERS``), else its
    program's name."""
    try:
        # redis-server rewrites its command line: its name is in comm
        with open("/proc/%d/comm" % pid) as file:
            name = file.read().strip()
        with open("/proc/%d/cmdline" % pid, "rb") as file:
            line = file.read().decode("utf-8", "replace").replace("\0", " ")
    except OSError:
        return "gone"
    if name.startswith("redis-server"):
        return "redis-server"
    if "pushi.base.worker" in line:
        return "worker"
    if "sqlite_events" in line:
        return "writer"
    return "main" if root else name


def wait_port(port, proc, timeout=30.0):
    """Waits until ``port`` accepts connections or the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


class Server:
    """Base class of a server under test."""

    name = "?"
    #: request style of the trigger worker (see ``worker.TriggerTask``)
    style = "pusher"
    supports_persist = False
    #: whether ``pusher:ping`` may be sent (the original closes on it)
    accepts_ping = True

    def __init__(self, workdir):
        self.workdir = workdir
        self.proc = None
        self.http_port = None
        self.ws_port = None
        self.app = {}
        self.sid = None
        self.log_path = None
        self.version = "?"

    @property
    def pid(self):
        """The pid of the server process."""
        return self.proc.pid if self.proc else None

    def available(self):
        """Tells whether the server is installed and can run."""
        raise NotImplementedError()

    def install(self, log):
        """Installs the server into ``.bench/`` (peers only)."""

    def start(self):
        """Starts the server and provisions an app."""
        raise NotImplementedError()

    def ws_path(self):
        """The WebSocket path (with query) for the app."""
        return (
            "/app/%s?protocol=7&client=js&version=8.6.0&flash=false" % (self.app["key"])
        )

    def trigger_spec(self, persist=False):
        """The connection and signing fields of a worker ``trigger``."""
        style = self.style
        if persist:
            style = "pushi_persist"
        return {
            "host": HOST,
            "port": self.http_port,
            "style": style,
            "app_id": self.app.get("app_id"),
            "key": self.app.get("key"),
            "secret": self.app.get("secret"),
            "sid": self.sid,
        }

    def stop(self):
        """Stops the server."""
        stop_process(self.proc)
        self.proc = None

    def describe(self):
        """A short description for the report."""
        return "%s %s" % (self.name, self.version)

    def log_tail(self, lines=20):
        """The last lines of the server log (for error reports)."""
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as file:
            text = file.read()[-8192:].decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])


class PushiServer(Server):
    """This repository's server (``src/pushi``)."""

    name = "pushi"
    supports_persist = True
    #: ``(count, channel)``: events to write into the store before start
    preload = None
    #: ``PUSHI_ADMIN_SECRET`` of the server (unset: none)
    admin_secret = None
    #: ``PUSHI_WORKERS`` of the server (None: unset, one process)
    workers = None
    #: nodes of ``--nodes`` (1: this single process; more: ``PushiCluster``)
    node_count = 1
    #: ``PUSHI_REDIS_URL`` of the server (None: unset, no cluster)
    redis_url = None
    #: more of the server's environment (a bench mode's, e.g. PUSHI_METRICS)
    extra_env = None
    #: the log file's name in the work dir
    log_name = "pushi.log"

    def preload_store(self, count, channel, app_id=None):
        """Writes ``count`` event records of the app (the bench app unless
        ``app_id``) through the store interface (``add_events`` in batches),
        usually before the server starts: far faster than persisted
        triggers.  Returns how many were written, 0 when the store
        interface is not what this expects (the caller then preloads over
        HTTP)."""
        code = (
            "import sys, time\n"
            "from pushi.base.config import Config\n"
            "from pushi.base.store import open_store\n"
            "app_id, channel, count = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
            "config = Config.from_env()\n"
            "store = open_store(data_dir=config.data_dir, mongo_url=config.mongo_url)\n"
            "now = time.time()\n"
            "for start in range(0, count, 5000):\n"
            "    store.add_events([dict(mid='bench-preload-%d' % i, app_id=app_id,\n"
            "        channel=channel, event='bench', data='{\"s\":%d}' % i,\n"
            "        timestamp=now, user_id=None)\n"
            "        for i in range(start, min(count, start + 5000))])\n"
            "store.close()\n"
            "print(count)\n"
        )
        output = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                app_id or self.app["app_id"],
                channel,
                str(count),
            ],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if output.returncode != 0:
            return 0
        return int(output.stdout.strip().splitlines()[-1])

    def available(self):
        """Needs ``src/pushi/base/state.py`` and ``python -m pushi``."""
        src = os.path.join(ROOT, "src", "pushi")
        return os.path.exists(os.path.join(src, "base", "state.py")) and (
            os.path.exists(os.path.join(src, "__main__.py"))
        )

    def env(self):
        """The environment of the server and its CLI."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.join(ROOT, "src")]
            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        env["PUSHI_DATA_DIR"] = os.path.join(self.workdir, "data")
        env.update(
            APP_HOST=HOST,
            APP_PORT=str(self.http_port),
            SERVER_HOST=HOST,
            SERVER_PORT=str(self.ws_port),
        )
        if self.admin_secret:
            env["PUSHI_ADMIN_SECRET"] = self.admin_secret
        if self.workers:
            env["PUSHI_WORKERS"] = str(self.workers)
        if self.redis_url:
            env["PUSHI_REDIS_URL"] = self.redis_url
        env.update(self.extra_env or {})
        return env

    def stop(self):
        """Stops the server; with workers, gives the supervisor the time
        it gives them to close their sockets (``workers.STOP_TIMEOUT``),
        so that none is still at it when the next run starts."""
        stop_process(self.proc, grace=20.0 if self.workers else 5.0)
        self.proc = None

    def create_app(self, name):
        """Creates an app with the CLI (also while the server runs) and
        returns its credentials (``app_id``, ``key``, ``secret``...)."""
        output = subprocess.run(
            [sys.executable, "-m", "pushi", "app", "create", name, "--json"],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if output.returncode != 0:
            raise RuntimeError("pushi app create failed: %s" % output.stderr[-2000:])
        app = json.loads(output.stdout.strip().splitlines()[-1])
        app["app_id"] = str(app["app_id"])
        return app

    def start(self):
        """Creates the app with the CLI, then starts the server."""
        self.http_port, self.ws_port = free_port(), free_port()
        os.makedirs(os.path.join(self.workdir, "data"), exist_ok=True)
        self.log_path = os.path.join(self.workdir, self.log_name)
        self.version = git_describe()
        if not self.app:
            self.app = self.create_app("bench")
        self.preloaded = 0
        if self.preload:
            self.preloaded = self.preload_store(*self.preload)
        self.proc = spawn(
            [sys.executable, os.path.join(ROOT, "src", "pushi", "base", "state.py")],
            env=self.env(),
            cwd=self.workdir,
            log_path=self.log_path,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("pushi exited:\n%s" % self.log_tail())
            try:
                status, _body = http(
                    "GET", "http://%s:%d/health" % (HOST, self.http_port), timeout=2
                )
                if status == 200 and wait_port(self.ws_port, self.proc, 1):
                    # PUSHI_WORKERS=1 is one process, no node of a cluster
                    if self.workers and self.workers > 1:
                        self.wait_nodes(deadline)
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("pushi did not become healthy:\n%s" % self.log_tail())

    def wait_nodes(self, deadline):
        """With workers: waits until each is a registered node of the
        cluster (``/health`` names its node; the kernel hands each request
        to any worker), so that every socket id names its worker (one
        opened before its worker registered has a random node part)."""
        nodes = set()
        while len(nodes) < self.workers and time.monotonic() < deadline:
            try:
                status, body = http(
                    "GET", "http://%s:%d/health" % (HOST, self.http_port), timeout=2
                )
            except OSError:
                continue
            node = json.loads(body).get("node") if status == 200 else None
            if node is not None:
                nodes.add(node)
            else:
                time.sleep(0.05)
        if len(nodes) < self.workers:
            raise RuntimeError(
                "%d of %d workers registered:\n%s"
                % (len(nodes), self.workers, self.log_tail())
            )


REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisProcess:
    """A private ``redis-server`` on a free port of 127.0.0.1, without
    persistence (as Pushi's Redis should run), in ``workdir``."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.port = None
        self.proc = None

    @property
    def url(self):
        """The ``PUSHI_REDIS_URL`` of the nodes."""
        return "redis://%s:%d/0" % (HOST, self.port)

    def start(self):
        """Starts it and waits for its port."""
        if not os.path.exists(REDIS_SERVER):
            raise RuntimeError("--nodes needs redis-server (scripts/install)")
        self.port = free_port()
        os.makedirs(self.workdir, exist_ok=True)
        self.proc = spawn(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
            ],
            cwd=self.workdir,
            log_path=os.path.join(self.workdir, "redis.log"),
        )
        if not wait_port(self.port, self.proc, 10):
            raise RuntimeError("redis-server did not start")

    def command(self, *args):
        """Runs one command over a fresh connection; returns its reply
        (a bulk string decoded, or the status line)."""
        payload = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode()) for arg in args
        )
        with socket.create_connection((HOST, self.port), timeout=5) as sock:
            sock.sendall(payload)
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                head, _sep, rest = data.partition(b"\r\n")
                if not _sep:
                    continue
                if head[:1] != b"$":
                    return head[1:].decode()
                size = int(head[1:])
                if size < 0:
                    return None
                if len(rest) >= size:
                    return rest[:size].decode()
        raise RuntimeError("redis closed the connection")

    def commandstats(self):
        """``INFO commandstats`` as ``{command: (calls, usec)}``."""
        figures = {}
        for line in (self.command("INFO", "commandstats") or "").splitlines():
            if not line.startswith("cmdstat_"):
                continue
            name, _colon, fields = line[len("cmdstat_") :].partition(":")
            values = dict(field.split("=", 1) for field in fields.split(","))
            figures[name] = (int(values["calls"]), int(values["usec"]))
        return figures

    def stop(self):
        """Stops it."""
        stop_process(self.proc)
        self.proc = None


class PushiCluster(Server):
    """``count`` Pushi nodes over one private ``redis-server`` (cluster
    mode, ``PUSHI_REDIS_URL``), sharing one SQLite data dir (the store is
    not on the fan-out path).  Triggers go to node 1 (``http_port``,
    ``ws_port`` are node 1's); ``ws_ports`` lists every node's."""

    name = "pushi"
    supports_persist = True

    def __init__(self, workdir, count):
        Server.__init__(self, workdir)
        self.count = count
        self.redis = RedisProcess(os.path.join(workdir, "redis"))
        self.nodes = [PushiServer(workdir) for _ in range(count)]
        self.admin_secret = None
        self.extra_env = {}
        #: ``(count, channel)``: events node 1 writes into the shared store
        self.preload = None
        self.preloaded = 0

    @property
    def pid(self):
        """Node 1's pid."""
        return self.nodes[0].pid

    @property
    def pids(self):
        """Every node's pid and Redis's: the CPU of the whole server."""
        return [node.pid for node in self.nodes] + [self.redis.proc.pid]

    @property
    def ws_ports(self):
        """Each node's WebSocket port, node 1 first."""
        return [node.ws_port for node in self.nodes]

    def available(self):
        """Pushi's and ``redis-server``'s."""
        return self.nodes[0].available() and os.path.exists(REDIS_SERVER)

    def start(self):
        """Starts Redis, then each node on its own ports (the app created
        by the first node's start, in the shared data dir)."""
        self.redis.start()
        for index, node in enumerate(self.nodes):
            node.admin_secret = self.admin_secret
            node.extra_env = self.extra_env
            node.redis_url = self.redis.url
            node.preload = None if index else self.preload
            if index:
                node.app = self.nodes[0].app
                node.log_name = "pushi-%d.log" % (index + 1)
            node.start()
        first = self.nodes[0]
        self.http_port, self.ws_port = first.http_port, first.ws_port
        self.app, self.version = first.app, first.version
        self.log_path = first.log_path
        self.preloaded = first.preloaded

    def create_app(self, name):
        """Creates an app through node 1 (the store is shared)."""
        return self.nodes[0].create_app(name)

    def preload_store(self, count, channel, app_id=None):
        """Writes events into the shared store through node 1's."""
        return self.nodes[0].preload_store(count, channel, app_id)

    def stop(self):
        """Stops the nodes, then Redis."""
        for node in self.nodes:
            node.stop()
        self.redis.stop()


class SoketiServer(Server):
    """soketi 1.6.1 (Node, uWebSockets), installed with npm."""

    name = "soketi"

    def __init__(self, workdir):
        Server.__init__(self, workdir)
        self.dir = os.path.join(BENCH_DIR, "soketi")
        self.version = SOKETI_VERSION

    def entry(self):
        """The soketi CLI script."""
        return os.path.join(
            self.dir, "node_modules", "@soketi", "soketi", "bin", "server.js"
        )

    def available(self):
        """Needs node and the installed package."""
        return bool(shutil.which("node")) and os.path.exists(self.entry())

    def install(self, log):
        """``npm install`` with the uWebSockets.js override."""
        os.makedirs(self.dir, exist_ok=True)
        package = {
            "name": "pushi-bench-soketi",
            "private": True,
            "version": "0.0.0",
            "dependencies": {"@soketi/soketi": SOKETI_VERSION},
            "overrides": {"uWebSockets.js": UWS_OVERRIDE},
        }
        with open(os.path.join(self.dir, "package.json"), "w") as file:
            json.dump(package, file, indent=2)
        log("installing soketi %s into %s" % (SOKETI_VERSION, self.dir))
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund"],
            cwd=self.dir,
            check=True,
            stdout=sys.stderr,
            timeout=900,
        )

    def start(self):
        """Starts soketi with one app from its environment variables."""
        self.http_port = self.ws_port = free_port()
        self.app = {
            "app_id": "1",
            "key": "benchkey",
            "secret": "benchsecret",
        }
        env = dict(os.environ)
        env.update(
            SOKETI_HOST=HOST,
            SOKETI_PORT=str(self.http_port),
            SOKETI_METRICS_HOST=HOST,
            SOKETI_METRICS_SERVER_PORT=str(free_port()),
            SOKETI_DEFAULT_APP_ID=self.app["app_id"],
            SOKETI_DEFAULT_APP_KEY=self.app["key"],
            SOKETI_DEFAULT_APP_SECRET=self.app["secret"],
            SOKETI_DEFAULT_APP_MAX_CONNS="-1",
            SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC="-1",
        )
        self.log_path = os.path.join(self.workdir, "soketi.log")
        self.proc = spawn(
            ["node", self.entry(), "start"],
            env=env,
            cwd=self.workdir,
            log_path=self.log_path,
        )
        if not wait_port(self.http_port, self.proc, 30):
            raise RuntimeError("soketi did not start:\n%s" % self.log_tail())


class OriginalServer(Server):
    """The original Pushi 0.6.10 from PyPI, in its own venv."""

    name = "original"
    style = "original"
    accepts_ping = False

    def __init__(self, workdir):
        Server.__init__(self, workdir)
        self.dir = os.path.join(BENCH_DIR, "original")
        self.python = os.path.join(self.dir, "venv", "bin", "python")
        self.version = ORIGINAL_VERSION

    def available(self):
        """Needs the venv with pushi-service and tinydb."""
        if not os.path.exists(self.python):
            return False
        return (
            subprocess.run(
                [self.python, "-c", "import pushi, tinydb"],
                capture_output=True,
                timeout=60,
            ).returncode
            == 0
        )

    def install(self, log):
        """Creates the venv and pip-installs pushi-service and tinydb."""
        os.makedirs(self.dir, exist_ok=True)
        log("installing pushi-service %s into %s" % (ORIGINAL_VERSION, self.dir))
        subprocess.run(
            [sys.executable, "-m", "venv", os.path.join(self.dir, "venv")],
            check=True,
            stdout=sys.stderr,
            timeout=300,
        )
        subprocess.run(
            [
                self.python,
                "-m",
                "pip",
                "install",
                "pushi-service==%s" % ORIGINAL_VERSION,
                # its ADAPTER=tiny storage imports tinydb, not a declared dependency
                "tinydb==%s" % TINYDB_VERSION,
            ],
            check=True,
            stdout=sys.stderr,
            timeout=900,
        )

    def ws_path(self):
        """The original serves the Pushi dialect at ``/<app_key>``."""
        return "/%s" % self.app["key"]

    def start(self):
        """Starts the server with the TinyDB adapter in a temp cwd, creates
        an app through ``POST /apps`` and logs in for a session token."""
        self.http_port, self.ws_port = free_port(), free_port()
        env = dict(os.environ)
        env.update(
            ADAPTER="tiny",
            APP_HOST=HOST,
            APP_PORT=str(self.http_port),
            SERVER_HOST=HOST,
            SERVER_PORT=str(self.ws_port),
        )
        self.log_path = os.path.join(self.workdir, "original.log")
        self.proc = spawn(
            [self.python, "-m", "pushi.base"],
            env=env,
            cwd=self.workdir,
            log_path=self.log_path,
        )
        base = "http://%s:%d" % (HOST, self.http_port)
        if not wait_port(self.http_port, self.proc, 60) or not wait_port(
            self.ws_port, self.proc, 30
        ):
            raise RuntimeError("original Pushi did not start:\n%s" % self.log_tail())
        status, body = http(
            "POST",
            base + "/apps",
            json.dumps({"name": "bench"}),
            {"Content-Type": "application/json"},
        )
        if status != 200:
            raise RuntimeError("original: app create %d %r" % (status, body[:300]))
        app = json.loads(body)
        self.app = {"app_id": app["ident"], "key": app["key"], "secret": app["secret"]}
        query = urllib.parse.urlencode(
            {
                "app_id": app["ident"],
                "app_key": app["key"],
                "app_secret": app["secret"],
            }
        )
        # the original reads the credentials from the query only; a fresh
        # session is sometimes not known yet: check it with a trigger
        for _attempt in range(10):
            status, body = http("POST", base + "/login?" + query, b"")
            if status != 200:
                raise RuntimeError("original: login %d %r" % (status, body[:300]))
            self.sid = json.loads(body)["token"]
            status, body = http(
                "POST",
                "%s/events?sid=%s" % (base, self.sid),
                json.dumps(
                    {
                        "event": "check",
                        "channel": "check",
                        "data": "x",
                        "persist": False,
                    }
                ),
                {"Content-Type": "application/json"},
            )
            if status == 200:
                return
            time.sleep(0.5)
        raise RuntimeError("original: trigger after login %d %r" % (status, body[:300]))


SERVERS = {"pushi": PushiServer, "soketi": SoketiServer, "original": OriginalServer}


def git_describe():
    """The commit of this checkout, for the report."""
    try:
        return subprocess.run(
            ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def make_workdir(name):
    """A fresh temporary directory for one server run."""
    return tempfile.mkdtemp(prefix="pushi-bench-%s-" % name)


class BlasterServer(Server):
    """The generator self-test stand-in (``blaster``), not a real server."""

    name = "blaster"

    def __init__(self, workdir):
        Server.__init__(self, workdir)
        self.version = "self-test"
        self.control = None

    def available(self):
        """Always there: it is part of the bench."""
        return True

    def start(self):
        """Starts the blaster process and asks for its port."""
        from .procs import WorkerProc

        self.control = WorkerProc("blaster", module="bench.blaster")
        self.proc = self.control.proc
        self.ws_port = self.control.call({"cmd": "port"}, 30)["port"]
        self.app = {"key": "blast"}

    def blast(self, **cmd):
        """Runs one blast and returns its answer."""
        cmd["cmd"] = "blast"
        return self.control.call(cmd, float(cmd.get("duration", 5)) + 60)

    def stop(self):
        """Stops the blaster."""
        if self.control:
            self.control.stop()
            self.control = None
        self.proc = None
