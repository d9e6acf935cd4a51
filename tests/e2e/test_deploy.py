"""Pushi behind a real nginx, as ``extra/deploy/nginx.conf`` documents it.

Each test starts the real server and Debian's ``nginx`` in front of it: TLS
ends at nginx (a certificate made for this run), and one host and port
(``https://127.0.0.1:<port>/``) carries the REST API and the WebSockets.
nginx binds 127.0.0.1 only, runs from a temporary prefix as the test's
child and is stopped by its pid.

Clients connect from 127.0.0.2 or 127.0.0.3 (loopback addresses too), so
the address nginx forwards differs from nginx's own (127.0.0.1).

Without nginx the tests skip, unless CI is set, where they fail
(``scripts/install`` installs it).
"""

import contextlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import pytest

from pushi.net import forwarded

from support import (
    IN_CI,
    ROOT,
    Client,
    PushiServer,
    chromium,
    free_port,
    wait_until,
    websocket_tls,
)

NGINX_CONF = os.path.join(ROOT, "extra", "deploy", "nginx.conf")

MAIN_CONF = """daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
{user}
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/pushi.conf;
}}
"""
""" What the test's nginx runs: its process settings, then the documented
configuration (its placeholders filled in) """

FORGED = "203.0.113.9"
""" An address a client claims in its own X-Forwarded-For """


def nginx_path():
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    if os.access(found, os.X_OK):
        return found
    reason = "Debian nginx is not installed (apt-get install nginx)"
    if IN_CI:
        pytest.fail(reason + " (CI is set: the deployment tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made for this run (its own
    CA for the clients)."""
    folder = tmp_path_factory.mktemp("tls")
    key, cer = str(folder / "key.pem"), str(folder / "cer.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", key, "-out", cer],
        check=True,
        capture_output=True,
    )
    return key, cer


class Nginx:
    """Debian's nginx with the documented configuration in front of a
    ``PushiServer``."""

    def __init__(self, pushi, certificate, port=None):
        self.binary = nginx_path()
        self.pushi = pushi
        self.key, self.cer = certificate
        self.port = port or free_port()
        self.prefix = tempfile.mkdtemp(prefix="pushi-nginx-")
        self.process = None
        self.context = ssl.create_default_context(cafile=self.cer)
        self.ws_context = websocket_tls(self.cer)

    @property
    def base_url(self):
        return "https://127.0.0.1:%d/" % self.port

    @property
    def ws_url(self):
        return "wss://127.0.0.1:%d/" % self.port

    def start(self, timeout=15):
        with open(NGINX_CONF, encoding="utf-8") as file:
            site = file.read()
        for name, value in (
            ("@LISTEN@", "127.0.0.1:%d" % self.port),
            ("@SERVER_NAME@", "127.0.0.1"),
            ("@CERT@", self.cer),
            ("@KEY@", self.key),
            ("@APP_PORT@", str(self.pushi.app_port)),
            ("@SERVER_PORT@", str(self.pushi.server_port)),
        ):
            site = site.replace(name, value)
        assert "@" not in site.replace("$", "")
        with open(os.path.join(self.prefix, "pushi.conf"), "w") as file:
            file.write(site)
        main = os.path.join(self.prefix, "nginx.conf")
        with open(main, "w") as file:
            # as root, nginx's workers would switch to "nobody", who cannot
            # enter this private prefix
            user = "user root;" if os.geteuid() == 0 else ""
            file.write(MAIN_CONF.format(prefix=self.prefix, user=user))
        error_log = os.path.join(self.prefix, "error.log")
        self.process = subprocess.Popen(
            [self.binary, "-p", self.prefix, "-c", main, "-e", error_log],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

        def answers():
            if self.process.poll() is not None:
                raise RuntimeError("nginx exited: %s" % self.read_log())
            try:
                return self.request("GET", "health")[0] == 200
            except OSError:
                return False

        try:
            wait_until(answers, timeout)
        except AssertionError:
            raise RuntimeError("nginx did not start: %s" % self.read_log()) from None
        return self

    def stop(self):
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None
        shutil.rmtree(self.prefix, ignore_errors=True)

    def read_log(self):
        try:
            with open(os.path.join(self.prefix, "error.log"), "rb") as file:
                return file.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def request(self, method, path, body=None, headers=None):
        """``(status, json)`` of a REST call through nginx over HTTPS."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(
                request, timeout=15, context=self.context
            ) as response:
                payload = response.read()
                try:
                    return response.status, json.loads(payload or b"null")
                except ValueError:
                    return response.status, payload.decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def login(self, app):
        """``Authorization`` with a session token, logged in through nginx."""
        return {"Authorization": "Bearer " + PushiServer.login(self, app)}

    def connect(self, app, dialect="pusher", source="127.0.0.2", headers=None):
        """A WebSocket client through nginx over wss, from ``source``."""
        path = "app/%s?protocol=7" % app["key"] if dialect == "pusher" else app["key"]
        return Client(
            self.ws_url + path,
            ssl=self.ws_context,
            source_address=(source, 0),
            additional_headers=headers,
        )

    def addresses(self, app, headers):
        """``socket_id -> address`` of the app's sockets, through nginx."""
        status, answer = self.request(
            "GET", "apps/%s/sockets" % app["app_id"], headers=headers
        )
        assert status == 200, answer
        return {entry["socket_id"]: entry["address"] for entry in answer["sockets"]}


@contextlib.contextmanager
def deployed(certificate, port=None, **env):
    """Pushi (with ``env``) and nginx in front of it (on ``port``)."""
    pushi = PushiServer(env=env).start()
    proxy = Nginx(pushi, certificate, port)
    try:
        proxy.start()
        yield pushi, proxy
    finally:
        proxy.stop()
        pushi.stop()


def test_websockets_and_the_rest_api_through_nginx_over_tls(certificate):
    """Both dialects connect through nginx over wss, and an event published
    through nginx over https reaches them; the REST port's pages come
    through the same host and port."""
    with deployed(certificate, PUSHI_TRUSTED_PROXIES="127.0.0.1") as (pushi, proxy):
        app = pushi.create_app("deployed")
        pusher = proxy.connect(app)
        pushi_client = proxy.connect(app, dialect="pushi")
        for client in (pusher, pushi_client):
            answer = client.subscribe("news")
            assert answer["event"] == "pusher_internal:subscription_succeeded"
        status, answer = proxy.request(
            "POST",
            "apps/%s/events" % app["app_id"],
            {"event": "flash", "channel": "news", "data": "through nginx"},
            proxy.login(app),
        )
        assert status == 200, answer
        for client in (pusher, pushi_client):
            assert client.recv_event("flash")["data"] == "through nginx"
        # the console page is the REST port's, its stream the WebSocket port's
        status, page = proxy.request("GET", "console")
        assert status == 200 and "pushi-ws-port" in page
        pusher.close()
        pushi_client.close()


def test_the_forwarded_address_is_believed_from_a_trusted_proxy_only(certificate):
    """With nginx trusted, a socket shows its client's address (the one
    nginx appended, not the one the client forged), in the sockets list and
    on the console; a client that forges the header without a proxy, and
    any client when nginx is not trusted, shows the socket's own peer."""
    with deployed(certificate, PUSHI_TRUSTED_PROXIES="127.0.0.1") as (pushi, proxy):
        app = pushi.create_app("trusted")
        headers = proxy.login(app)
        watcher = Client(proxy.ws_url + "console", proxy.ws_context, False)
        token = headers["Authorization"].split(" ", 1)[1]
        watcher.send(
            {
                "event": "console:watch",
                "data": {"app_id": app["app_id"], "token": token},
            }
        )
        assert watcher.recv()["event"] == "console:watching"
        forging = {"X-Forwarded-For": FORGED}
        proxied = proxy.connect(app, headers=forging)
        direct = Client(
            pushi.ws_url + "app/%s?protocol=7" % app["key"],
            source_address=("127.0.0.3", 0),
            additional_headers=forging,
        )
        addresses = proxy.addresses(app, headers)
        assert addresses == {
            proxied.socket_id: "127.0.0.2",
            direct.socket_id: "127.0.0.3",
        }
        entry = watcher.recv_event("console:entry")["data"]
        assert entry["type"] == "connection"
        assert entry["socket_id"] == proxied.socket_id
        assert entry["address"] == "127.0.0.2"
        for client in (proxied, direct, watcher):
            client.close()
    with deployed(certificate) as (pushi, proxy):
        app = pushi.create_app("untrusted")
        proxied = proxy.connect(app, headers={"X-Forwarded-For": FORGED})
        assert proxy.addresses(app, proxy.login(app)) == {
            proxied.socket_id: "127.0.0.1"
        }
        proxied.close()


def test_the_per_address_cap_counts_the_forwarded_addresses(certificate):
    """Behind a trusted nginx every socket comes from nginx's address: the
    per-address cap counts each client's own (a third socket from one
    client is refused with 4100, another client still gets in)."""
    with deployed(
        certificate, PUSHI_TRUSTED_PROXIES="127.0.0.1", PUSHI_MAX_CONNECTIONS_PER_IP="2"
    ) as (pushi, proxy):
        app = pushi.create_app("capped")
        first = [proxy.connect(app, source="127.0.0.2") for _ in range(2)]
        refused = Client(
            proxy.ws_url + "app/%s?protocol=7" % app["key"],
            proxy.ws_context,
            False,
            source_address=("127.0.0.2", 0),
        )
        error = refused.recv()
        assert error["event"] == "pusher:error", error
        assert error["data"]["code"] == 4100
        assert refused.close_code() == 4100
        other = proxy.connect(app, source="127.0.0.3")
        assert other.subscribe("x")["event"] == "pusher_internal:subscription_succeeded"
        # a socket that closes frees its client's place
        first[0].close()

        def admitted():
            try:
                return proxy.connect(app, source="127.0.0.2")
            except AssertionError:
                # the refusal's pusher:error instead of the greeting
                return None

        again = wait_until(admitted, 10, 0.2, "the freed place taken again")
        for client in (first[1], other, again):
            client.close()


def test_the_console_page_streams_through_nginx(certificate):
    """With PUSHI_PUBLIC_WS_URL the console page, loaded through nginx,
    opens its stream on its own origin (its CSP allows it) and shows a
    connection with its client's address."""
    port = free_port()
    with deployed(
        certificate,
        port,
        PUSHI_TRUSTED_PROXIES="127.0.0.1",
        PUSHI_PUBLIC_WS_URL="wss://127.0.0.1:%d" % port,
    ) as (pushi, proxy):
        app = pushi.create_app("shop")
        # the test's own certificate: the browser is told to take it
        with chromium({"width": 1280, "height": 900}, ignore_https_errors=True) as ctx:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            # (a missing favicon is a 404 the browser reports)
            page.on(
                "console",
                lambda message: (
                    message.type == "error"
                    and not message.text.startswith("Failed to load resource")
                    and errors.append(message.text)
                ),
            )
            streams = []
            page.on("websocket", lambda socket: streams.append(socket.url))
            page.goto(proxy.base_url + "console")
            page.fill("#app-id", app["app_id"])
            page.fill("#app-key", app["key"])
            page.fill("#app-secret", app["secret"])
            page.click("#signin-button")
            page.wait_for_function(
                "() => document.querySelector('#status').textContent.trim() === 'live'",
                timeout=15000,
            )
            client = proxy.connect(app)
            page.locator(
                '#log tr.entry[data-type="connection"]', has_text=client.socket_id
            ).filter(has_text="127.0.0.2").first.wait_for(timeout=15000)
            client.close()
        # the page's own origin (a browser may reach a loopback port
        # directly, one behind a proxy would not)
        assert streams == [proxy.ws_url + "console"]
        assert errors == []


@pytest.mark.parametrize(
    "peer, header, trusted, expected",
    [
        # no trusted proxy: the socket's own peer, whatever the header says
        ("127.0.0.1", "1.2.3.4", "", "127.0.0.1"),
        ("10.0.0.5", "1.2.3.4", "127.0.0.1", "10.0.0.5"),
        # the right-most untrusted entry, not the forged left-most one
        ("127.0.0.1", "6.6.6.6, 1.2.3.4", "127.0.0.1", "1.2.3.4"),
        # a chain of trusted proxies is walked through
        ("127.0.0.1", "6.6.6.6, 1.2.3.4, 10.1.2.3", "127.0.0.1,10.0.0.0/8", "1.2.3.4"),
        # every entry trusted: the left-most of them
        ("127.0.0.1", "10.0.0.1", "127.0.0.1, 10.0.0.0/8", "10.0.0.1"),
        # an entry that is no address stops at the last hop believed
        ("127.0.0.1", "1.2.3.4, junk", "127.0.0.1", "127.0.0.1"),
        ("::1", "2001:db8::7", "::1", "2001:db8::7"),
        ("127.0.0.1", None, "127.0.0.1", "127.0.0.1"),
    ],
)
def test_the_client_address_a_proxy_names(peer, header, trusted, expected):
    from pushi.base.config import _networks

    assert forwarded.client_address(peer, header, _networks(trusted)) == expected


def test_the_systemd_unit_verifies(tmp_path):
    """``extra/deploy/pushi.service`` passes ``systemd-analyze verify``
    without a word (its command pointed at this Python's ``pushi``: the
    documented /opt/pushi is not installed here)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package)")
    with open(os.path.join(ROOT, "extra", "deploy", "pushi.service")) as file:
        unit = file.read()
    assert "ExecStart=/opt/pushi/bin/pushi serve\n" in unit
    unit = unit.replace("/opt/pushi/bin/pushi", "%s -m pushi" % sys.executable)
    path = tmp_path / "pushi.service"
    path.write_text(unit)
    result = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""


def test_the_rest_port_takes_the_client_from_a_trusted_proxy_only(tmp_path):
    """The REST port's WSGI environ (what Appier's routes read) has the
    client's address in REMOTE_ADDR and its scheme in wsgi.url_scheme as a
    trusted proxy names them, and the socket's own otherwise."""
    from pushi.base.config import Config
    from pushi.base.state import State

    config = Config(
        app_port=free_port(),
        server_port=free_port(),
        data_dir=str(tmp_path),
        trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
    )
    state = State(config)
    state.start_server(http=True)
    seen = []
    application = state.app.application

    def recording(environ, start_response):
        seen.append((environ["REMOTE_ADDR"], environ["wsgi.url_scheme"]))
        return application(environ, start_response)

    state.app.application = recording
    try:
        for source in ("127.0.0.1", "127.0.0.2"):
            client = socket.create_connection(
                ("127.0.0.1", config.app_port), 5, (source, 0)
            )
            client.sendall(
                b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"X-Forwarded-For: 6.6.6.6, 10.9.8.7\r\n"
                b"X-Forwarded-Proto: https\r\n\r\n"
            )
            answer = b""
            while True:
                chunk = client.recv(4096)
                if not chunk:
                    break
                answer += chunk
            client.close()
            assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        state.stop()
    assert seen == [("10.9.8.7", "https"), ("127.0.0.2", "http")]
