"""The foundation end to end: the real server over real sockets."""

import json
import os
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest

import pushi

from support import (
    ADMIN_SECRET,
    Client,
    PushiServer,
    free_port,
    read_until,
    server_frames,
    stalled_subscriber,
    upgrade_request,
    wait_until,
    websocket_tls,
)


class TestConnection:
    def test_established_in_both_dialects(self, server, app):
        for dialect in ("pusher", "pushi"):
            client = server.connect(app, dialect)
            assert client.established["activity_timeout"] > 0
            assert (
                client.socket_id.replace(".", "").isdigit()
                and client.socket_id.count(".") == 1
            )
            client.close()

    def test_unknown_key_is_4001(self, server):
        client = server.connect({"key": "nope"}, expect_established=False)
        error = client.recv()
        assert error["event"] == "pusher:error" and error["data"]["code"] == 4001
        assert client.close_code() == 4001

    def test_bad_path_is_4005_and_bad_protocol_4007(self, server, app):
        client = Client(server.ws_url + "a/b/c", expect_established=False)
        assert client.recv()["data"]["code"] == 4005
        assert client.close_code() == 4005
        client = Client(
            server.ws_url + "app/%s?protocol=99" % app["key"], expect_established=False
        )
        assert client.recv()["data"]["code"] == 4007
        assert client.close_code() == 4007

    def test_pings_both_ways(self, server, app):
        client = server.connect(app)
        client.send({"event": "pusher:ping", "data": {}})
        assert client.recv() == {"event": "pusher:pong", "data": {}}
        assert client.ws.ping(b"frame").wait(5)
        client.close()

    def test_close_handshake_is_answered(self, server, app):
        client = server.connect(app)
        client.ws.close(1000, "bye")
        assert client.ws.close_code == 1000
        assert "Traceback" not in server.read_log()

    def test_bad_input_gets_answers_and_others_keep_working(self, server, app):
        bystander = server.connect(app)
        bystander.subscribe("calm")
        client = server.connect(app)
        client.send("not json")
        assert client.recv()["data"]["code"] == 4300
        client.send({"event": "pusher:subscribe", "data": {"channel": "bad name!"}})
        error = client.recv()
        assert (
            error["event"] == "pusher:subscription_error"
            and error["data"]["status"] == 400
        )
        client.ws.send(b"\x00binary")
        assert client.recv()["data"]["code"] == 4300
        client.send({"event": "big", "data": "x" * 70000})
        assert client.close_code() == 1009
        server.client(app).trigger_event(
            channel="calm", data="still here", event="e", persist=False
        )
        assert bystander.recv_event("e")["data"] == "still here"
        bystander.close()

    def test_unmasked_frame_is_closed_with_1002(self, server, app):
        raw = socket.create_connection(("127.0.0.1", server.server_port))
        raw.sendall(upgrade_request("/app/%s?protocol=7" % app["key"]))
        answer = read_until(raw, b"connection_established")
        assert answer.startswith(b"HTTP/1.1 101")
        raw.sendall(b"\x81\x05hello")
        data = read_until(raw, b"\x88")
        assert data[data.index(b"\x88") + 2 : data.index(b"\x88") + 4] == b"\x03\xea"
        raw.close()

    def test_silent_connection_is_dropped_after_the_handshake_deadline(self, server):
        raw = socket.create_connection(("127.0.0.1", server.server_port))
        raw.sendall(b"GET /app/")
        raw.settimeout(20)
        assert raw.recv(100) == b""
        raw.close()

    def test_oversized_handshake_is_431(self, server, app):
        raw = socket.create_connection(("127.0.0.1", server.server_port))
        raw.sendall(
            upgrade_request(
                "/app/%s?protocol=7" % app["key"], b"X-Big: " + b"a" * 9000 + b"\r\n"
            )
        )
        assert read_until(raw, b"\r\n").startswith(b"HTTP/1.1 431")
        raw.close()


class TestPublishing:
    def test_rest_trigger_with_login_token_reaches_both_dialects(self, server, app):
        pusher = server.connect(app, "pusher")
        pushi = server.connect(app, "pushi")
        for client in (pusher, pushi):
            assert (
                client.subscribe("global")["event"]
                == "pusher_internal:subscription_succeeded"
            )
        headers = server.token_headers(app)
        status, answer = server.request(
            "POST",
            "apps/%s/events" % app["app_id"],
            {
                "event": "message",
                "channel": "global",
                "data": "hello world",
                "persist": False,
            },
            headers,
        )
        assert status == 200, answer
        for client in (pusher, pushi):
            message = client.recv_event("message")
            assert message["channel"] == "global" and message["data"] == "hello world"
            client.close()

    def test_login_refuses_wrong_secret_and_token_is_per_app(self, server, app):
        status, answer = server.request(
            "POST",
            "login",
            {"app_id": app["app_id"], "app_key": app["key"], "app_secret": "wrong"},
        )
        assert status == 401 and answer["message"]
        other = server.create_app("other")
        status, answer = server.request(
            "POST",
            "apps/%s/events" % app["app_id"],
            {"event": "m", "channel": "global", "data": "x"},
            server.token_headers(other),
        )
        assert status == 401

    def test_python_client_quick_start(self, server, app):
        import pushi

        client = server.connect(app, "pushi")
        client.subscribe("global")
        proxy = pushi.Pushi(
            app_id=app["app_id"],
            app_key=app["key"],
            app_secret=app["secret"],
            base_url=server.base_url,
        )
        proxy.trigger_event(channel="global", data="hello world", event="message")
        assert client.recv_event("message")["data"] == "hello world"
        client.close()

    def test_python_client_uses_pushi_url(self, server, app):
        import pushi

        os.environ["PUSHI_URL"] = server.base_url
        try:
            proxy = pushi.Pushi(
                app_id=app["app_id"], app_key=app["key"], app_secret=app["secret"]
            )
        finally:
            del os.environ["PUSHI_URL"]
        assert proxy.base_url == server.base_url
        with pytest.raises(pushi.PushiError) as error:
            pushi.Pushi(
                app_id=app["app_id"],
                app_key=app["key"],
                app_secret="bad",
                base_url=server.base_url,
            ).trigger_event(channel="global", data="x")
        assert error.value.status == 401

    def test_python_client_failures_without_an_answer_are_pushi_errors(self):
        """No server, a server that never answers, one that hangs up, and
        one that answers something else than JSON: each a PushiError (the
        first three with no status), none with the signed query in it."""

        def answering(reply):
            listener = socket.create_server(("127.0.0.1", 0))

            def serve():
                connection, _ = listener.accept()
                connection.recv(65536)
                if reply is not None:
                    connection.sendall(reply)
                    connection.close()
                else:
                    time.sleep(2)
                listener.close()

            threading.Thread(target=serve, daemon=True).start()
            return listener.getsockname()[1]

        refused = free_port()
        silent = answering(None)
        hangs_up = answering(b"")
        html = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<html>")
        for port, status in (
            (refused, None),
            (silent, None),
            (hangs_up, None),
            (html, 200),
        ):
            proxy = pushi.Pushi(
                "1", "key", "secret", "http://127.0.0.1:%d/" % port, timeout=0.5
            )
            with pytest.raises(pushi.PushiError) as error:
                proxy.trigger_event(channel="c", data="x")
            assert error.value.status == status, (port, error.value)
            assert "auth_signature" not in str(error.value)
            if status is None:
                assert "127.0.0.1:%d/apps/1/events" % port in str(error.value)

    def test_unauthenticated_and_bad_requests(self, server, app):
        path = "apps/%s/events" % app["app_id"]
        status, answer = server.request(
            "POST", path, {"name": "e", "channel": "c", "data": "d"}
        )
        assert status == 401 and "message" in answer
        status, _ = server.request(
            "POST", "apps/99999/events", {"name": "e", "channel": "c", "data": "d"}
        )
        assert status == 404
        proxy = server.client(app)
        for body, code in (
            ({"name": "e", "data": "d"}, 400),
            ({"name": "e", "channel": "bad name", "data": "d"}, 400),
            ({"name": "e", "channel": "c", "data": {"not": "a string"}}, 400),
            ({"name": "e", "channel": "c", "data": "x" * 10241}, 413),
            (
                {"name": "e", "channels": ["c%d" % i for i in range(101)], "data": "d"},
                400,
            ),
        ):
            with pytest.raises(Exception) as error:
                proxy._request("POST", path, body=body)
            assert error.value.status == code, body


class TestOperations:
    def test_health_counts(self, server, app):
        client = server.connect(app)
        client.subscribe("counted")
        status, health = server.request("GET", "health")
        assert status == 200 and health["status"] == "ok"
        assert health["connections"] >= 1 and health["channels"] >= 1
        client.close()

    def test_app_created_by_cli_while_running_is_usable_at_once(self, server):
        created = server.create_app("fresh")
        assert (
            created["app_id"].isdigit()
            and len(created["key"]) >= 32
            and len(created["secret"]) >= 32
        )
        client = server.connect(created)
        assert (
            client.subscribe("x")["event"] == "pusher_internal:subscription_succeeded"
        )
        client.close()
        listing = json.loads(server.cli("app", "list", "--json"))
        assert created["app_id"] in [entry["app_id"] for entry in listing]
        assert all("secret" not in entry for entry in listing)

    def test_rest_app_management_needs_the_admin_secret(self, server):
        assert server.request("GET", "apps")[0] == 401
        assert (
            server.request(
                "POST", "apps", {"name": "x"}, {"Authorization": "Bearer wrong"}
            )[0]
            == 401
        )
        admin = {"Authorization": "Bearer " + ADMIN_SECRET}
        status, created = server.request(
            "POST", "apps", {"name": "rest", "client_events": True}, admin
        )
        assert status == 200 and created["client_events"] is True
        status, listing = server.request("GET", "apps", headers=admin)
        assert created["app_id"] in [entry["app_id"] for entry in listing["apps"]]
        assert all("secret" not in entry for entry in listing["apps"])
        client = server.connect(created)
        client.close()


def test_rest_app_management_is_off_without_admin_secret():
    instance = PushiServer(env={"PUSHI_ADMIN_SECRET": ""}).start()
    try:
        status, answer = instance.request(
            "GET", "apps", headers={"Authorization": "Bearer x"}
        )
        assert status == 403 and "PUSHI_ADMIN_SECRET" in answer["message"]
    finally:
        instance.stop()


def test_a_short_admin_secret_is_refused_at_start():
    instance = PushiServer(env={"PUSHI_ADMIN_SECRET": "x" * 15})
    try:
        with pytest.raises(RuntimeError) as exited:
            instance.start()
    finally:
        instance.stop()
    assert "PUSHI_ADMIN_SECRET must have at least 16 characters" in str(exited.value)
    assert "Traceback" not in str(exited.value)
    PushiServer(env={"PUSHI_ADMIN_SECRET": "x" * 16}).start().stop()


def test_apps_survive_a_restart_and_shutdown_says_4200():
    instance = PushiServer().start()
    try:
        app = instance.create_app("durable")
        client = instance.connect(app)
        instance.process.terminate()
        assert client.close_code() == 4200
        instance.stop()
        instance.start()
        client = instance.connect(app)
        assert (
            client.subscribe("x")["event"] == "pusher_internal:subscription_succeeded"
        )
        client.close()
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made for this run."""
    folder = tmp_path_factory.mktemp("tls")
    key, cer = str(folder / "key.pem"), str(folder / "cer.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            key,
            "-out",
            cer,
        ],
        check=True,
        capture_output=True,
    )
    return key, cer


def test_tls_on_both_ports(certificate):
    key, cer = certificate
    instance = PushiServer(
        env={
            "APP_SSL": "1",
            "APP_SSL_KEY": key,
            "APP_SSL_CER": cer,
            "SERVER_SSL": "1",
            "SERVER_SSL_KEY": key,
            "SERVER_SSL_CER": cer,
        }
    )
    context = ssl.create_default_context(cafile=cer)
    original = instance.request

    def request(method, path, body=None, headers=None, raw=None, context=context):
        return original(method, path, body, headers, raw, context)

    instance.request = request
    instance.start()
    try:
        app = instance.create_app("tls")
        client = Client(
            instance.ws_url + "app/%s?protocol=7" % app["key"], ssl=websocket_tls(cer)
        )
        client.subscribe("secure")
        status, _ = instance.request(
            "POST",
            "apps/%s/events" % app["app_id"],
            {"event": "e", "channel": "secure", "data": "over tls", "persist": False},
            instance.token_headers(app),
        )
        assert status == 200
        assert client.recv_event("e")["data"] == "over tls"
        # the Python client, checking the certificate
        proxy = pushi.Pushi(
            app_id=app["app_id"],
            app_key=app["key"],
            app_secret=app["secret"],
            base_url=instance.base_url,
            ssl_context=context,
        )
        proxy.trigger_event(channel="secure", data="from python", persist=False)
        assert client.recv_event("message")["data"] == "from python"
        client.close()
    finally:
        instance.stop()


def test_a_subscriber_that_stops_reading_is_closed_and_slows_nobody():
    """Past PUSHI_MAX_BUFFER queued bytes a socket that does not read is
    closed (4100: reconnect with back-off); the others get every event."""
    instance = PushiServer(env={"PUSHI_MAX_BUFFER": "65536"}).start()
    try:
        app = instance.create_app("slow")
        reader = instance.connect(app)
        reader.subscribe("firehose")
        stalled = stalled_subscriber(instance.server_port, app["key"], "firehose")
        # from here on the stalled socket never reads
        proxy = instance.client(app)
        payload = "x" * 8000
        # more than the kernel's socket buffers can hold on loopback
        count = 1000
        for index in range(count):
            proxy.trigger_event(
                channel="firehose",
                data="%d %s" % (index, payload),
                event="e",
                persist=False,
            )
            assert reader.recv_event("e")["data"].startswith("%d " % index)
        assert instance.socket_ids(app, expected=1) == [reader.socket_id]
        reader.close()
        stalled.close()
    finally:
        instance.stop()


def test_a_dropped_slow_consumer_reads_its_4100_if_it_reads_again_in_time():
    """The close frame queues behind what the socket has not taken yet:
    a client that reads again within the grace time gets its frames, then
    4100 (reconnect), then the end of the stream."""
    instance = PushiServer(env={"PUSHI_MAX_BUFFER": "65536"}).start()
    try:
        app = instance.create_app("slow")
        stalled = stalled_subscriber(instance.server_port, app["key"], "firehose")
        proxy = instance.client(app)
        payload = "x" * 8000
        for index in range(1000):
            proxy.trigger_event(
                channel="firehose",
                data="%d %s" % (index, payload),
                event="e",
                persist=False,
            )
            if "slow consumer" in instance.read_log():
                break
        assert "slow consumer" in instance.read_log()
        assert _close_codes(stalled) == [4100]
        stalled.close()
    finally:
        instance.stop()


def test_a_closed_socket_that_stopped_reading_is_let_go_after_the_grace_time():
    """A socket the engine closes (here: no pong) while bytes still wait
    for it is cut off after the grace time, not held for as long as its
    client's TCP stack answers."""
    instance = PushiServer(
        env={
            "PUSHI_MAX_BUFFER": str(64 << 20),
            "PUSHI_ACTIVITY_TIMEOUT": "1",
            "PUSHI_PONG_TIMEOUT": "1",
        }
    ).start()
    try:
        app = instance.create_app("stuck")
        stalled = stalled_subscriber(instance.server_port, app["key"], "firehose")
        port = stalled.getsockname()[1]
        proxy = instance.client(app)
        payload = "x" * 8000
        # more than the kernel's loopback buffers hold: netius queues the rest
        for _ in range(700):
            proxy.trigger_event(
                channel="firehose", data=payload, event="e", persist=False
            )
        assert instance.socket_ids(app, expected=0) == []
        # the engine has closed it (no pong); its end may still be open, its
        # bytes queued (on a loaded machine the grace may be over already)
        wait_until(  # CLOSE_GRACE (5 s) and a margin
            lambda: not _server_side_open(instance.server_port, port),
            10,
            0.2,
            "still open past the grace time",
        )
        stalled.close()
    finally:
        instance.stop()


def _server_side_open(server_port, client_port):
    """True while the server's end of a loopback connection is ESTABLISHED
    (read from /proc/net/tcp: the socket is closed once it leaves it)."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if (
                int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == client_port
            ):
                return state == "01"
    return False


def _close_codes(stalled, timeout=10):
    """Reads to the end of the stream; the close frames' codes."""
    stalled.settimeout(timeout)
    data = b""
    while True:
        chunk = stalled.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    return [
        struct.unpack(">H", payload[:2])[0]
        for opcode, payload in server_frames(data)
        if opcode == 8
    ]


def test_another_wsgi_server_for_the_rest_api():
    """APP_SERVER picks the WSGI server Appier runs on; with one that has no
    netius futures (the standard library's), publishing takes the blocking
    path: stored, handed over, answered."""
    instance = PushiServer(env={"APP_SERVER": "legacy"}).start()
    try:
        app = instance.create_app("legacy")
        client = instance.connect(app, "pushi")
        client.subscribe("plain")
        proxy = instance.client(app)
        answer = proxy.trigger_event(channel="plain", data="kept", event="e")
        assert answer["mid"]
        assert client.recv_event("e")["mid"] == answer["mid"]
        assert [event["data"] for event in proxy.get_events("plain")["events"]] == [
            "kept"
        ]
        client.close()
    finally:
        instance.stop()
