"""The debug console's server side, without a browser: the real server
over real sockets (the hub on its own is in
``tests/unit/base/test_console.py``): the page route, sign-in refusals, the
stream's entries and counters, app isolation, and a console that stops
reading being dropped while the app's clients keep everything.
"""

import json
import os
import socket
import struct
import threading
import time
import urllib.request

from support import (
    ADMIN_SECRET,
    Client,
    PushiServer,
    server_frames,
    wait_until,
)

# ---------------------------------------------------------------------------
# the real server
# ---------------------------------------------------------------------------


def console(server, app_id, token):
    """A console stream signed in for ``app_id``; returns it and its
    ``console:watching`` answer (or the refusal)."""
    client = Client(server.ws_url + "console", expect_established=False)
    client.send({"event": "console:watch", "data": {"app_id": app_id, "token": token}})
    return client, client.recv()


def entries(client, count):
    """The next ``count`` console entries (stats in between skipped)."""
    found = []
    while len(found) < count:
        message = client.recv()
        if message["event"] == "console:entry":
            found.append(message["data"])
    return found


class TestPage:
    def test_console_page_and_its_files_are_served(self, server):
        with urllib.request.urlopen(
            server.base_url + "console", timeout=15
        ) as response:
            assert response.headers["Content-Type"].startswith("text/html")
            page = response.read().decode("utf-8")
        assert "<title>Pushi debug console</title>" in page
        assert 'content="%d"' % server.server_port in page and "{{" not in page
        for name in ("console.js", "console.css"):
            url = server.base_url + "static/console/" + name
            with urllib.request.urlopen(url, timeout=15) as response:
                assert len(response.read()) > 1000


class TestSignIn:
    def test_bad_token_and_no_token_are_refused_with_4009(self, server, app):
        client, answer = console(server, app["app_id"], "not-a-token")
        assert answer["event"] == "console:error" and answer["data"]["code"] == 4009
        assert client.close_code() == 4009
        client = Client(server.ws_url + "console", expect_established=False)
        client.send({"event": "pusher:subscribe", "data": {"channel": "x"}})
        assert client.recv()["event"] == "console:error"
        assert client.close_code() == 4009

    def test_a_token_watches_only_its_own_app(self, server, app):
        other = server.create_app("other")
        client, answer = console(server, other["app_id"], server.login(app))
        assert answer["event"] == "console:error"
        assert client.close_code() == 4009

    def test_admin_secret_gets_a_token_for_any_app(self, server, app):
        status, answer = server.request(
            "POST",
            "login",
            {"app_id": app["app_id"]},
            headers={"Authorization": "Bearer " + ADMIN_SECRET},
        )
        assert status == 200 and answer["app_id"] == app["app_id"]
        client, watching = console(server, app["app_id"], answer["token"])
        assert watching["event"] == "console:watching"
        client.close()
        status, _ = server.request(
            "POST",
            "login",
            {"app_id": app["app_id"]},
            headers={"Authorization": "Bearer wrong"},
        )
        assert status == 401
        status, _ = server.request("POST", "login", {"app_id": app["app_id"]})
        assert status == 401

    def test_the_admin_secret_itself_is_not_a_stream_token(self, server, app):
        client, answer = console(server, app["app_id"], ADMIN_SECRET)
        assert answer["event"] == "console:error"
        assert client.close_code() == 4009

    def test_logout_ends_the_token_and_the_streams_it_opened(self, server, app):
        token = server.login(app)
        other = server.login(app)
        client, watching = console(server, app["app_id"], token)
        kept, _ = console(server, app["app_id"], other)
        assert watching["event"] == "console:watching"
        bearer = {"Authorization": "Bearer " + token}
        assert server.request("POST", "logout", headers=bearer) == (
            200,
            {"result": "ok"},
        )
        ended = client.recv()
        assert ended["event"] == "console:error"
        assert ended["data"]["message"] == "Session ended"
        assert client.close_code() == 4009
        path = "apps/%s" % app["app_id"]
        assert server.request("GET", path, headers=bearer)[0] == 401
        assert server.request("POST", "logout", headers=bearer)[0] == 200
        assert server.request("POST", "logout")[0] == 401
        # the other token of the same app, and its stream, live on
        auth = {"Authorization": "Bearer " + other}
        assert server.request("GET", path, headers=auth)[0] == 200
        server.request(
            "POST",
            "apps/%s/events" % app["app_id"],
            {"event": "e", "channel": "c", "data": "d", "persist": False},
            auth,
        )
        assert entries(kept, 1)[0]["type"] == "api_message"
        kept.close()

    def test_disabling_an_app_ends_its_console_streams(self, server):
        app = server.create_app("disabled")
        client, watching = console(server, app["app_id"], server.login(app))
        assert watching["event"] == "console:watching"
        server.update_app(app, enabled=False)
        assert client.recv()["data"]["message"] == "Session ended"
        assert client.close_code() == 4009


class TestStream:
    def test_traffic_of_the_app_in_order(self, server, app):
        token = server.login(app)
        watcher, watching = console(server, app["app_id"], token)
        assert watching["event"] == "console:watching"
        assert watching["data"]["app_id"] == app["app_id"]
        client = server.connect(app)
        client.subscribe("news")
        server.client(app).trigger_event(
            channel="news", data='{"a":1}', event="ev", persist=False
        )
        client.recv_event("ev")
        client.send({"event": "pusher:unsubscribe", "data": {"channel": "news"}})
        client.close()
        seen = entries(watcher, 7)
        assert [entry["type"] for entry in seen] == [
            "connection",
            "occupied",
            "subscribed",
            "api_message",
            "unsubscribed",
            "vacated",
            "disconnection",
        ]
        assert (
            seen[0]["socket_id"] == client.socket_id and seen[0]["dialect"] == "pusher"
        )
        assert seen[3]["channels"] == ["news"] and seen[3]["event"] == "ev"
        assert seen[3]["data"] == '{"a":1}'
        assert all(isinstance(entry["time"], int) for entry in seen)
        watcher.close()

    def test_presence_and_client_events(self, server, app):
        import pushi.proto.auth as auth

        watcher, _ = console(server, app["app_id"], server.login(app))
        client = server.connect(app)
        channel_data = json.dumps({"user_id": "ann", "user_info": {}})
        signature = auth.channel_auth(
            app["key"], app["secret"], client.socket_id, "presence-room", channel_data
        )
        assert client.subscribe("presence-room", signature, channel_data)[
            "event"
        ].endswith("succeeded")
        client.send(
            {"event": "client-typing", "channel": "presence-room", "data": {"x": 1}}
        )
        client.close()
        kinds = {}
        for entry in entries(watcher, 8):
            kinds[entry["type"]] = entry
        assert kinds["member_added"]["user_id"] == "ann"
        assert kinds["client_event"]["event"] == "client-typing"
        assert kinds["client_event"]["data"] == {"x": 1}
        assert kinds["member_removed"]["user_id"] == "ann"
        watcher.close()

    def test_another_apps_traffic_never_appears(self, server, app):
        other = server.create_app("other")
        watcher, _ = console(server, app["app_id"], server.login(app))
        stranger = server.connect(other)
        stranger.subscribe("news")
        server.client(other).trigger_event(
            channel="news", data="not yours", event="theirs", persist=False
        )
        stranger.recv_event("theirs")
        stranger.close()
        # the marker is sent after all of the other app's traffic: had any
        # of it leaked, it would arrive first
        server.client(app).trigger_event(
            channel="mine", data="marker", event="ours", persist=False
        )
        first = entries(watcher, 1)[0]
        assert first["type"] == "api_message" and first["event"] == "ours"
        watcher.close()

    def test_counters_follow_the_app(self, server, app):
        watcher, watching = console(server, app["app_id"], server.login(app))
        assert watching["data"]["connections"] == 0
        client = server.connect(app)
        client.subscribe("one")
        client.subscribe("two")
        status, _ = server.request(
            "POST",
            "apps/%s/events" % app["app_id"],
            {"name": "e", "channels": ["one", "two"], "data": "x"},
            headers={"Authorization": "Bearer " + server.login(app)},
        )
        assert status == 200
        while True:
            message = watcher.recv()
            if (
                message["event"] == "console:stats"
                and message["data"]["messages_last_minute"] == 2
            ):
                break
        assert message["data"]["connections"] == 1
        assert message["data"]["channels"] == 2
        client.close()
        watcher.close()

    def test_history_on_sign_in_then_live_samples(self):
        server = PushiServer(env={"PUSHI_CONSOLE_HISTORY_EVERY": "0.5"}).start()
        try:
            app = server.create_app("history")
            client = server.connect(app)
            client.subscribe("one")
            status, _ = server.request(
                "POST",
                "apps/%s/events" % app["app_id"],
                {"name": "e", "channels": ["one", "two"], "data": "x"},
                headers={"Authorization": "Bearer " + server.login(app)},
            )
            assert status == 200
            assert client.recv()["event"] == "e"

            # the samples are taken whether a console watches or not
            def sampled():
                watcher, watching = console(server, app["app_id"], server.login(app))
                assert watching["event"] == "console:watching"
                history = watching["data"]["history"]
                if sum(sample[2] for sample in history["samples"]) == 2:
                    return watcher, history
                watcher.close()

            watcher, history = wait_until(sampled, 15, 0.5, "two messages sampled")
            samples = history["samples"]
            assert history["every"] == 0.5
            assert sum(sample[3] for sample in samples) == 1
            assert samples[-1][1] == 1
            # console:stats carries the newest sample: it moves on
            seen = set()
            while len(seen) < 2:
                message = watcher.recv()
                if message["event"] == "console:stats":
                    seen.add(message["data"]["sample"][0])
            assert min(seen) >= samples[-1][0]
            watcher.close()
            client.close()
        finally:
            server.stop()

    def test_no_token_or_secret_in_the_server_log(self, server, app):
        token = server.login(app)
        watcher, _ = console(server, app["app_id"], token)
        watcher.close()
        log = server.read_log()
        assert token not in log and app["secret"] not in log and ADMIN_SECRET not in log


# ---------------------------------------------------------------------------
# a console that does not read is dropped; the app's clients are not
# ---------------------------------------------------------------------------


def raw_console(server, app_id, token):
    """A console stream on a raw socket with a tiny receive buffer, signed
    in, that the test then leaves unread."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", server.server_port))
    raw.sendall(
        b"GET /console HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    payload = json.dumps(
        {"event": "console:watch", "data": {"app_id": app_id, "token": token}}
    ).encode()
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    header = b"\x81" + (
        bytes([0x80 | len(payload)])
        if len(payload) < 126
        else b"\xfe" + struct.pack(">H", len(payload))
    )
    raw.sendall(header + mask + masked)
    return raw


class TestSlowConsole:
    def test_a_console_that_does_not_read_is_dropped_not_the_clients(self):
        server = PushiServer(env={"PUSHI_CONSOLE_MAX_BUFFER": "65536"}).start()
        try:
            app = server.create_app("busy")
            token = server.login(app)
            raw = raw_console(server, app["app_id"], token)
            # a client of the app that reads everything, in its own thread
            client = server.connect(app)
            client.subscribe("flood")
            received = []

            def drain():
                while len(received) < total:
                    message = client.recv(30)
                    if message["event"] == "bulk":
                        received.append(message)

            batches, size = 60, 8000
            total = batches * 10
            reader = threading.Thread(target=drain, daemon=True)
            reader.start()
            proxy = server.client(app)
            body = "x" * size
            for _ in range(batches):
                status, answer = server.request(
                    "POST",
                    "apps/%s/batch_events" % app["app_id"],
                    {
                        "batch": [{"name": "bulk", "channel": "flood", "data": body}]
                        * 10
                    },
                    headers={"Authorization": "Bearer " + token},
                )
                assert status == 200, answer
            reader.join(60)
            assert len(received) == total
            # the console's stream ends early: a 4100 close frame, or the
            # connection cut after its grace time, with most entries missing
            data = b""
            deadline = time.time() + 30
            while time.time() < deadline:
                raw.settimeout(max(0.1, deadline - time.time()))
                try:
                    chunk = raw.recv(1 << 20)
                except TimeoutError:
                    break
                if not chunk:
                    break
                data += chunk
            body_start = data.index(b"\r\n\r\n") + 4
            frames = server_frames(data[body_start:])
            bulk = [
                frame for opcode, frame in frames if opcode == 1 and b'"bulk"' in frame
            ]
            assert len(bulk) < total
            closes = [frame for opcode, frame in frames if opcode == 8]
            if closes:
                assert struct.unpack(">H", closes[0][:2])[0] == 4100
            assert "slow console of app %s dropped" % app["app_id"] in server.read_log()
            # the client is still served, and a new console can watch
            proxy.trigger_event(
                channel="flood", data="after", event="after", persist=False
            )
            assert client.recv_event("after")["data"] == "after"
            watcher, watching = console(server, app["app_id"], token)
            assert watching["event"] == "console:watching"
            watcher.close()
            client.close()
            raw.close()
        finally:
            server.stop()
