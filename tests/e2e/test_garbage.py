"""Random and malformed input on both ports, from a fixed seed: the server
keeps serving, logs no traceback, and forgets every socket that left."""

import os
import random
import socket
import time

from pushi.net.server import HANDSHAKE_TIMEOUT

from support import PushiServer

UPGRADE = (
    "GET /app/%s?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


def frame(payload, opcode, rng):
    """A masked client frame (any opcode, valid or not)."""
    mask = bytes(rng.randrange(256) for _ in range(4))
    length = len(payload)
    header = bytes([0x80 | opcode]) + (
        bytes([0x80 | length])
        if length < 126
        else bytes([0x80 | 126]) + length.to_bytes(2, "big")
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def messages(app):
    return [
        b'{"event":"pusher:subscribe","data":{"channel":"a"}}',
        b'{"event":"pusher:subscribe","data":5}',
        b'{"event":"pusher:subscribe"}',
        b'{"event":"client-x","channel":"private-a","data":{}}',
        b'{"event":"pusher:latest","data":{"channel":"a","skip":-1}}',
        b'{"event":"pusher:signin","data":{"auth":1,"user_data":"{"}}',
        b'{"event":"pusher:unsubscribe","data":[]}',
        b'{"event":"x","channel":5}',
        b'{"event":"pusher:subscribe","data":{"channel":"presence-a",'
        b'"auth":"k:1","channel_data":"[]"}}',
        (
            '{"event":"pusher:subscribe","data":{"channel":"personal-x",'
            '"auth":"%s:00"}}' % app["key"]
        ).encode(),
    ]


def send(sock, data):
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


def test_garbage_on_both_ports_harms_nothing():
    rng = random.Random(20261129)
    instance = PushiServer().start()
    try:
        app = instance.create_app("garbage", client_events=True)
        upgrade = (UPGRADE % app["key"]).encode()
        texts = messages(app)
        for _ in range(150):
            raw = socket.create_connection(("127.0.0.1", instance.server_port))
            raw.settimeout(0.3)
            if rng.random() < 0.3:
                send(
                    raw, bytes(rng.randrange(256) for _ in range(rng.randint(1, 3000)))
                )
            elif send(raw, upgrade):
                for _ in range(rng.randint(1, 15)):
                    choice = rng.random()
                    if choice < 0.5:
                        data = frame(rng.choice(texts), 1, rng)
                    elif choice < 0.7:
                        body = bytes(
                            rng.randrange(256) for _ in range(rng.randint(0, 200))
                        )
                        data = frame(body, rng.choice([0, 1, 2, 3, 8, 9, 10]), rng)
                    elif choice < 0.85:
                        data = frame(rng.choice(texts)[: rng.randint(1, 30)], 1, rng)
                    else:
                        data = os.urandom(rng.randint(1, 50))
                    if not send(raw, data):
                        break
            try:
                raw.recv(65536)
            except OSError:
                pass
            raw.close()
        for _ in range(100):
            raw = socket.create_connection(("127.0.0.1", instance.app_port))
            raw.settimeout(0.3)
            path = rng.choice(
                [
                    "/apps/%s/events" % app["app_id"],
                    "/apps/%s/batch_events" % app["app_id"],
                    "/health",
                    "/login",
                    "/apps",
                    "/apps/%s/channels/%%zz" % app["app_id"],
                    "/apps/%s/subscribe?user_id=%%00" % app["app_id"],
                ]
            )
            body = rng.choice(
                [
                    b"",
                    b"{",
                    b"[]",
                    b'{"batch":5}',
                    b'{"name":"e","channel":"c","data":"d"}',
                ]
            )
            request = (
                "%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n"
                % (
                    rng.choice(["GET", "POST", "PUT", "DELETE"]),
                    path,
                    len(body),
                    rng.choice(
                        [
                            "",
                            "Authorization: Bearer x\r\n",
                            "Authorization: Basic !!\r\n",
                        ]
                    ),
                )
            ).encode() + body
            if rng.random() < 0.1:
                request = os.urandom(200)
            send(raw, request)
            try:
                raw.recv(65536)
            except OSError:
                pass
            raw.close()
        # still serving, both ports
        status, health = instance.request("GET", "health")
        assert status == 200
        client = instance.connect(app)
        assert (
            client.subscribe("ok")["event"] == "pusher_internal:subscription_succeeded"
        )
        instance.client(app).trigger_event(
            channel="ok", data="fine", event="e", persist=False
        )
        assert client.recv_event("e")["data"] == "fine"
        # every socket that left is forgotten
        assert instance.socket_ids(app, expected=1) == [client.socket_id]
        client.close()
        assert "Traceback" not in instance.read_log()
    finally:
        instance.stop()


def test_a_socket_that_never_upgrades_is_closed_and_others_are_kept(server):
    app = server.create_app("slow")
    started = time.monotonic()
    silent = socket.create_connection(("127.0.0.1", server.server_port))
    partial = socket.create_connection(("127.0.0.1", server.server_port))
    partial.sendall((UPGRADE % app["key"]).encode()[:40])
    client = server.connect(app)
    for sock in (silent, partial):
        sock.settimeout(HANDSHAKE_TIMEOUT + 10)
        # the server ends it: an orderly close (b"") or a reset
        try:
            assert sock.recv(65536) == b""
        except ConnectionResetError:
            pass
        sock.close()
    assert time.monotonic() - started >= HANDSHAKE_TIMEOUT
    # the socket that upgraded in time is still served
    assert client.subscribe("kept")["event"] == "pusher_internal:subscription_succeeded"
    client.close()
