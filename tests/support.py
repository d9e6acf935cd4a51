"""Test support: the real server in a subprocess, and a WebSocket client.

``PushiServer`` starts ``python src/pushi/base/state.py`` on ephemeral
ports of 127.0.0.1 with a fresh data dir, exactly as a user would, and
creates apps with the ``pushi`` CLI against that data dir.
"""

import collections
import contextlib
import hashlib
import hmac
import http.server
import json
import logging
import os
import queue
import random
import resource
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import websockets.exceptions
import websockets.sync.client

from pushi.proto import auth

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
SRC = os.path.join(ROOT, "src")
ADMIN_SECRET = "test-admin-secret-0123456789abcdef"


def _ephemeral_ports():
    """The kernel's range of ports for outgoing connections (Linux)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            low, high = (int(part) for part in file.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


_handed_out: collections.deque = collections.deque(maxlen=1000)


def _port_range():
    """The ports this test process picks from: below the kernel's
    ephemeral range, a slice of its own per pytest-xdist worker (two
    workers picking the same port before either binds it would collide)."""
    low, _high = _ephemeral_ports()
    start = max(1024, low - 20000)
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = (low - start) // max(1, count)
    first = start + (index % max(1, count)) * size
    return first, first + size


def free_port():
    """A port of 127.0.0.1 free now, below the kernel's ephemeral range (a
    port the kernel hands out could be taken by any outgoing connection
    before the server binds it), in this worker's slice (``_port_range``)
    and not handed out lately (two servers of one test pick their ports
    before either binds)."""
    first, end = _port_range()
    for _attempt in range(100):
        port = random.randrange(first, end)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.append(port)
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate, timeout=10, interval=0.1, message=None):
    """Calls ``predicate`` every ``interval`` seconds until it returns a
    true value, and returns that value; after ``timeout`` seconds fails
    the test with ``message`` (default: the predicate) and the last value.
    The one poll loop of the tests: a test waits for what it expects,
    never for a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                "%s: not true after %s s (last: %r)"
                % (message or getattr(predicate, "__name__", predicate), timeout, value)
            )
        time.sleep(interval)


def env_with_src(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


@contextlib.contextmanager
def logged_failures(name="pushi"):
    """The messages of the exceptions logged under ``name`` meanwhile (a
    handler of its own: once an Appier app has run in this process, its
    logger no longer hands records up to pytest's)."""
    failures = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: failures.append(
        str(record.exc_info[1]) if record.exc_info else record.getMessage()
    )
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield failures
    finally:
        logger.removeHandler(handler)


def signed_path(app, method, path, params=None, body=None):
    """``path?query`` (``path`` from its leading slash) signed for an app's
    credentials as a Pusher SDK signs it, with ``params`` in the query."""
    signed = auth.signed_params(app["key"], app["secret"], method, path, params, body)
    return path + "?" + urllib.parse.urlencode(signed)


def upgrade_request(path, extra=b""):
    """A WebSocket upgrade request for ``path`` (bytes, as a raw socket
    sends it)."""
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


def read_until(raw, marker, timeout=5):
    """Reads ``raw`` until ``marker`` has arrived (or the stream ends)."""
    raw.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = raw.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def masked_frame(text, mask=b"\x01\x02\x03\x04"):
    """A client text frame (masked, as clients must send)."""
    from pushi.proto.websocket import unmask

    payload = text.encode()
    header = bytes([0x81, 0x80 | len(payload)]) if len(payload) < 126 else None
    return header + mask + unmask(payload, mask)


def stalled_subscriber(port, key, channel, receive_buffer=4096):
    """A raw socket subscribed to ``channel`` of the app with ``key``, with
    a small receive buffer; the caller decides when (if ever) it reads
    again."""
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(upgrade_request("/app/%s?protocol=7" % key))
    read_until(stalled, b"connection_established")
    stalled.sendall(
        masked_frame(
            json.dumps({"event": "pusher:subscribe", "data": {"channel": channel}})
        )
    )
    read_until(stalled, b"subscription_succeeded")
    return stalled


def server_frames(data):
    """``(opcode, payload)`` of the unmasked frames in ``data`` (bytes that
    start at a frame boundary; an incomplete last frame is left out)."""
    frames, index = [], 0
    while index + 2 <= len(data):
        length = data[index + 1] & 0x7F
        start = index + 2
        if length == 126:
            length = struct.unpack(">H", data[start : start + 2])[0]
            start += 2
        elif length == 127:
            length = struct.unpack(">Q", data[start : start + 8])[0]
            start += 8
        if start + length > len(data):
            break
        frames.append((data[index] & 0x0F, data[start : start + length]))
        index = start + length
    return frames


class PushiServer:
    """A Pushi server process for one test module (or one test)."""

    def __init__(self, data_dir=None, env=None, fd_limit=None, redis_url=None):
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="pushi-test-")
        # the open-files limit (soft and hard) the server process starts with
        self.fd_limit = fd_limit
        self.app_port = free_port()
        self.server_port = free_port()
        self.extra_env = dict(env or {})
        if redis_url is not None:
            # a node of a cluster: nodes on one machine share the data dir
            self.extra_env["PUSHI_REDIS_URL"] = redis_url
        self.process = None
        # one log per server: the nodes of a cluster share the data dir
        self.log_path = os.path.join(
            self.data_dir,
            "server.log" if redis_url is None else "node-%d.log" % self.app_port,
        )

    @property
    def scheme(self):
        return "https" if self.extra_env.get("APP_SSL") == "1" else "http"

    @property
    def ws_scheme(self):
        return "wss" if self.extra_env.get("SERVER_SSL") == "1" else "ws"

    @property
    def base_url(self):
        return "%s://127.0.0.1:%d/" % (self.scheme, self.app_port)

    @property
    def ws_url(self):
        return "%s://127.0.0.1:%d/" % (self.ws_scheme, self.server_port)

    def env(self):
        return env_with_src(
            dict(
                {
                    "APP_HOST": "127.0.0.1",
                    "APP_PORT": str(self.app_port),
                    "SERVER_HOST": "127.0.0.1",
                    "SERVER_PORT": str(self.server_port),
                    "PUSHI_DATA_DIR": self.data_dir,
                    "PUSHI_ADMIN_SECRET": ADMIN_SECRET,
                },
                **self.extra_env,
            )
        )

    def command(self):
        """How the server is started: the launcher of the source tree."""
        return [sys.executable, os.path.join(SRC, "pushi", "base", "state.py")]

    def start(self, timeout=30, joined=True):
        """Starts the server and waits until both ports answer (a node of
        a cluster: until it ``joined`` the cluster, unless False)."""
        # open while the server runs; closed by stop
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        logged = self.log.tell()
        self.process = subprocess.Popen(
            self.command(),
            env=self.env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            preexec_fn=self._limit_files if self.fd_limit else None,
        )

        def answers():
            if self.process.poll() is not None:
                raise RuntimeError("server exited: %s" % self.read_log())
            try:
                self.request("GET", "health")
                with socket.create_connection(("127.0.0.1", self.server_port), 1):
                    return True
            except Exception:
                return False

        try:
            wait_until(answers, timeout)
        except AssertionError:
            raise RuntimeError("server did not start: %s" % self.read_log()) from None
        if self.extra_env.get("PUSHI_LOG_LEVEL", "INFO").upper() in ("INFO", "DEBUG"):
            # the start's lines are written once both ports listen, which
            # may be a moment after they answer
            wait_until(lambda: b"REST API on" in self._log_since(logged), timeout)
        if joined and "PUSHI_REDIS_URL" in self.extra_env:
            # a node takes traffic once the other nodes can reach it
            wait_until(lambda: self.request("GET", "ready")[0] == 200, timeout)
        return self

    def _limit_files(self):
        # in the child between fork and exec: no import, no lock
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.fd_limit, self.fd_limit))

    def stop(self, kill=False):
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None
        self.log.close()

    def restart(self):
        self.stop()
        return self.start()

    def _log_since(self, offset):
        with open(self.log_path, "rb") as file:
            file.seek(offset)
            return file.read()

    def read_log(self):
        try:
            with open(self.log_path, "rb") as file:
                return file.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def cli(self, *args):
        """Runs ``python -m pushi ...`` against this server's data dir."""
        result = subprocess.run(
            [sys.executable, "-m", "pushi"] + list(args),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        return result.stdout

    def create_app(self, name="test", client_events=False):
        args = ["app", "create", name, "--json"]
        if client_events:
            args.append("--client-events")
        return json.loads(self.cli(*args))

    def request(self, method, path, body=None, headers=None, raw=None, context=None):
        """``(status, json)`` of a REST call."""
        data = (
            raw
            if raw is not None
            else (json.dumps(body).encode() if body is not None else None)
        )
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(
                request, timeout=15, context=context
            ) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                return error.code, json.loads(payload)
            except ValueError:
                return error.code, payload.decode("utf-8", "replace")

    def login(self, app):
        """A session token for an app, from ``/login``."""
        status, login = self.request(
            "POST",
            "login",
            {
                "app_id": app["app_id"],
                "app_key": app["key"],
                "app_secret": app["secret"],
            },
        )
        assert status == 200, login
        return login["token"]

    def token_headers(self, app):
        """``Authorization`` for an app, with a token from ``/login``."""
        return {"Authorization": "Bearer " + self.login(app)}

    def update_app(self, app, **fields):
        """``PUT /apps/<id>`` with the admin secret; returns the record."""
        status, body = self.request(
            "PUT",
            "apps/%s" % app["app_id"],
            fields,
            {"Authorization": "Bearer " + ADMIN_SECRET},
        )
        assert status == 200, body
        return body

    def socket_ids(self, app, expected=None, timeout=15):
        """The ids of an app's open sockets (``GET /apps/<id>/sockets``);
        with ``expected``, waits up to ``timeout`` for that many."""
        headers = self.token_headers(app)
        ids = []

        def counted():
            _status, answer = self.request(
                "GET", "apps/%s/sockets" % app["app_id"], headers=headers
            )
            ids[:] = [entry["socket_id"] for entry in answer["sockets"]]
            return expected is None or len(ids) == expected

        wait_until(counted, timeout, 0.2, "%s sockets open" % expected)
        return ids

    def client(self, app):
        import pushi

        return pushi.Pushi(
            app_id=app["app_id"],
            app_key=app["key"],
            app_secret=app["secret"],
            base_url=self.base_url,
        )

    def next_ws_port(self, app):
        """The WebSocket port the next client of ``app`` connects to (a
        cluster's stand-in spreads its clients over its nodes)."""
        return self.server_port

    def connect(self, app, dialect="pusher", **kwargs):
        path = (
            "app/%s?protocol=7&client=test&version=1.0" % app["key"]
            if dialect == "pusher"
            else app["key"]
        )
        return Client(self.ws_url + path, **kwargs)


class RecordingTransport:
    """What the engine (or the console hub) writes to one socket, and the
    close it asked for: the in-memory twin of a network link."""

    def __init__(self):
        self.frames = []
        self.closed = None

    def write(self, frame):
        self.frames.append(frame)

    def close(self, code, reason=""):
        self.closed = code

    def pinged(self):
        return True

    def messages(self):
        """The JSON messages written since the last call."""
        out = [json.loads(frame[2 if frame[1] < 126 else 4 :]) for frame in self.frames]
        self.frames = []
        return out


# the engine on its own: an app, a session and its recording transport

KEY, SECRET = "k" * 32, "s" * 64


def make_app(app_id="1", **fields):
    """An engine ``App`` (client events on) with fixed credentials."""
    from pushi.base.limits import App

    record = {
        "app_id": app_id,
        "key": KEY + app_id,
        "secret": SECRET,
        "name": "a",
        "client_events": True,
    }
    record.update(fields)
    return App(record)


def connect(engine, app, dialect="pusher"):
    """A session of ``engine`` for ``app`` and its ``RecordingTransport``
    (the handshake already read)."""
    transport = RecordingTransport()
    session = engine.open(transport, app, dialect)
    transport.messages()
    return session, transport


def send(engine, session, event, data=None, **fields):
    """A client message into ``engine``, as if it came from ``session``."""
    message = {"event": event, "data": data}
    message.update(fields)
    engine.receive(session, json.dumps(message))


def websocket_tls(cafile):
    """A TLS context for ``Client`` trusting ``cafile``, capped at TLS 1.2.

    websockets' blocking client reads in a thread of its own while the
    caller writes, which OpenSSL does not allow on one connection: under
    TLS 1.3 the server's session tickets, read after the handshake, race
    the client's first write, and the upgrade request can be lost (the
    client then waits for the answer to a request it never sent; nginx
    logs "client timed out ... while waiting for request").  TLS 1.2 sends
    nothing after the handshake."""
    context = ssl.create_default_context(cafile=cafile)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


class Client:
    """A blocking WebSocket client speaking JSON messages (over TLS with a
    context from ``websocket_tls``)."""

    def __init__(self, url, ssl=None, expect_established=True, **options):
        # ``options``: more of websockets' ``connect`` (additional_headers,
        # source_address)
        self.ws = websockets.sync.client.connect(
            url,
            ssl=ssl,
            open_timeout=10,
            close_timeout=5,
            max_size=2**22,
            legacy=True,
            **options,
        )
        self.socket_id = None
        if expect_established:
            established = self.recv()
            assert established["event"] == "pusher:connection_established", established
            self.established = json.loads(established["data"])
            self.socket_id = self.established["socket_id"]

    def send(self, message):
        self.ws.send(message if isinstance(message, str) else json.dumps(message))

    def recv(self, timeout=10):
        return json.loads(self.ws.recv(timeout))

    def recv_event(self, event, timeout=10):
        """Skips messages until one named ``event`` arrives."""
        deadline = time.time() + timeout
        while True:
            message = self.recv(max(0.01, deadline - time.time()))
            if message.get("event") == event:
                return message

    def nothing(self, timeout=0.5):
        """True when no message arrives within ``timeout``."""
        try:
            message = self.ws.recv(timeout)
        except TimeoutError:
            return True
        raise AssertionError("unexpected message: %s" % message)

    def close_code(self, timeout=10):
        """Reads until the server closes; returns the close code it sent
        (None without a close frame).  Fails if it stays open."""
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                self.ws.recv(max(0.01, deadline - time.time()))
        except websockets.exceptions.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        except TimeoutError:
            pass
        raise AssertionError("still open after %s s" % timeout)

    def subscribe(self, channel, auth=None, channel_data=None):
        data = {"channel": channel}
        if auth is not None:
            data["auth"] = auth
        if channel_data is not None:
            data["channel_data"] = channel_data
        self.send({"event": "pusher:subscribe", "data": data})
        return self.recv()

    def close(self):
        self.ws.close()


class Receiver:
    """An HTTP endpoint for webhook posts.  ``answer(body)`` picks each
    post's status (None holds the post until ``release`` is set; by
    default 200 after ``fail`` 500s); ``seen`` keeps every body, ``posts``
    the headers and body of each post answered 200.  With
    ``respond(handler)``, that answers any request instead (odd answers,
    ``drip``) and ``posts`` gets its method and path.  ``tls`` (key,
    certificate files) serves HTTPS."""

    def __init__(self, fail=0, answer=None, respond=None, tls=None):
        self.posts = queue.Queue()
        self.seen = []
        self.fail = fail
        self.answer = answer or self._fail_first
        self.release = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                if respond is not None:
                    receiver.posts.put((self.command, self.path))
                    return respond(self)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.seen.append(body)
                status = receiver.answer(body)
                if status is None:
                    receiver.release.wait(30)
                    status = 200
                if status == 200:
                    receiver.posts.put((dict(self.headers), body))
                self.send_response(status)
                self.end_headers()

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls[1], tls[0])
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = "%s://127.0.0.1:%d/hook" % (scheme, self.httpd.server_address[1])

    def _fail_first(self, _body):
        if self.fail > 0:
            self.fail -= 1
            return 500
        return 200

    def events(self, app, count, timeout=15):
        """The next ``count`` events, checking every post's signature."""
        events = []
        deadline = time.time() + timeout
        while len(events) < count:
            headers, body = self.posts.get(timeout=max(0.1, deadline - time.time()))
            assert headers["X-Pusher-Key"] == app["key"]
            expected = hmac.new(
                app["secret"].encode(), body, hashlib.sha256
            ).hexdigest()
            assert hmac.compare_digest(headers["X-Pusher-Signature"], expected)
            self.last = body
            payload = json.loads(body)
            assert payload["time_ms"] > 0
            events += payload["events"]
        return events

    def quiet(self, seconds):
        try:
            self.posts.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def drip(self, handler):
        """A 200 whose headers come one every 0.2 s, for 30 s."""
        handler.wfile.write(b"HTTP/1.0 200 OK\r\n")
        for _ in range(150):
            if self.release.wait(0.2):
                return
            try:
                handler.wfile.write(b"X-Drip: 1\r\n")
                handler.wfile.flush()
            except OSError:
                return

    def close(self):
        self.release.set()
        self.httpd.shutdown()


def hooked_app(server, url, events=None, **settings):
    """A new app (client events on) whose webhook posts to ``url``."""
    hook = {"url": url}
    if events:
        hook["events"] = events
    status, app = server.request(
        "POST",
        "apps",
        {
            "name": "hooked",
            "client_events": True,
            "settings": dict(settings, webhooks=[hook]),
        },
        {"Authorization": "Bearer " + ADMIN_SECRET},
    )
    assert status == 200, app
    return app


def join(client, app, channel, data=None):
    """Subscribes ``client`` to a private or presence channel, signed with
    the app's credentials."""
    import pushi

    answer = pushi.Pushi(
        app_id=app["app_id"], app_key=app["key"], app_secret=app["secret"]
    ).authenticate(channel, client.socket_id, data)
    return client.subscribe(channel, answer["auth"], answer.get("channel_data"))


IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# a quiet, self-contained headless run of Debian's chromium
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_unavailable(reason):
    """Skips a browser test outside CI; with CI set a missing browser is a
    failure (the browser tests must run there)."""
    import pytest

    if IN_CI:
        pytest.fail(reason + " (CI is set: the browser tests must run)")
    pytest.skip(reason)


@contextlib.contextmanager
def chromium(viewport, **options):
    """Debian's chromium driven by playwright, in a new empty profile
    (playwright never downloads a browser of its own here); ``options``
    go to its browser context (``ignore_https_errors``)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        browser_unavailable(
            "the playwright package is not installed (pip install -r requirements-dev.txt)"
        )
    path = next(
        (
            candidate
            for candidate in (
                os.environ.get("PUSHI_CHROMIUM"),
                shutil.which("chromium"),
                "/usr/bin/chromium",
            )
            if candidate and os.path.exists(candidate)
        ),
        None,
    )
    if path is None:
        browser_unavailable(
            "Debian chromium is not installed (apt-get install chromium)"
        )
    profile = tempfile.mkdtemp(prefix="pushi-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=path,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport=viewport,
                **options,
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
