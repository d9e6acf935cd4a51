"""One socket that keeps its buffer full gets its share of the loop, not
all of it: while it floods, another app's publishes are answered and
delivered, and the deadlines of other sockets fire.  Pings are limited per
socket.

The bounds are generous (seconds): they tell a served victim from a frozen
server, whose victim waited for as long as the attack went on.  The
latencies themselves are a benchmark figure (``scripts/bench --scenario
abuse``).
"""

import http.client
import json
import select
import socket
import threading
import time

import pytest

from support import (
    masked_frame,
    read_until,
    server_frames,
    signed_path,
    upgrade_request,
)

ATTACK = 8
""" Seconds an attack lasts """

PATIENCE = 4
""" Seconds the victim waits for an answer or an event """


def connect_raw(server, path, port=None):
    raw = socket.create_connection(("127.0.0.1", port or server.server_port))
    raw.sendall(upgrade_request(path))
    return raw


def flood(raw, block, seconds):
    """Sends ``block`` over and over for ``seconds``, resuming partial sends
    (frames and requests stay whole); stops early if the server closes.
    Returns the bytes sent."""
    raw.setblocking(False)
    deadline = time.monotonic() + seconds
    sent, pending = 0, b""
    while time.monotonic() < deadline:
        pending = pending or block
        _, writable, _ = select.select([], [raw], [], 0.2)
        if not writable:
            continue
        try:
            count = raw.send(pending)
        except BlockingIOError:
            continue
        except OSError:
            break
        sent += count
        pending = pending[count:]
    return sent


def drain(raw, seconds):
    """Reads and drops what the server sends for ``seconds`` (an attacker
    that reads its answers, so it is never a slow consumer)."""
    deadline = time.monotonic() + seconds
    received = 0
    while time.monotonic() < deadline:
        readable, _, _ = select.select([raw], [], [], 0.2)
        if not readable:
            continue
        try:
            chunk = raw.recv(65536)
        except BlockingIOError:
            continue
        except OSError:
            break
        if not chunk:
            break
        received += len(chunk)
    return received


class Victim:
    """Another app's subscriber and publisher, which measures nothing but
    whether it is served within ``PATIENCE``."""

    def __init__(self, server):
        self.server = server
        self.app = server.create_app("victim")
        self.client = server.connect(self.app)
        self.client.subscribe("news")
        self.count = 0

    def publish_and_receive(self):
        self.count += 1
        body = json.dumps(
            {"name": "tick", "channel": "news", "data": str(self.count)}
        ).encode()
        path = signed_path(
            self.app, "POST", "/apps/%s/events" % self.app["app_id"], body=body
        )
        rest = http.client.HTTPConnection(
            "127.0.0.1", self.server.app_port, timeout=PATIENCE
        )
        try:
            rest.request("POST", path, body, {"Content-Type": "application/json"})
            assert rest.getresponse().status == 200
        finally:
            rest.close()
        event = self.client.recv_event("tick", timeout=PATIENCE)
        assert event["data"] == str(self.count)

    def served_during(self, attack, seconds=ATTACK):
        """Runs ``attack()`` on a thread and publishes every quarter second
        until it ends; each publish must be answered and delivered."""
        thread = threading.Thread(target=attack, daemon=True)
        thread.start()
        time.sleep(0.5)
        started = self.count
        deadline = time.monotonic() + seconds - 1
        while time.monotonic() < deadline:
            self.publish_and_receive()
            time.sleep(0.25)
        thread.join(seconds + PATIENCE)
        assert not thread.is_alive()
        return self.count - started

    def close(self):
        self.client.close()


def test_a_socket_flooding_messages_leaves_the_others_served(server):
    victim = Victim(server)
    attacker_app = server.create_app("attacker")
    raw = connect_raw(server, "/app/%s?protocol=7" % attacker_app["key"])
    read_until(raw, b"connection_established")
    # pusher:pong is a valid message the server answers with nothing
    block = masked_frame(json.dumps({"event": "pusher:pong", "data": {}})) * 500
    sent = []
    try:
        assert victim.served_during(lambda: sent.append(flood(raw, block, ATTACK))) > 5
        # the attacker was served too (its fair share), not cut off
        assert sent[0] > 1000000
        raw.setblocking(True)
        raw.sendall(masked_frame(json.dumps({"event": "pusher:ping", "data": {}})))
        # its ping waits behind the pongs still queued in the kernel's
        # buffers, which a loaded machine works off in more than PATIENCE
        assert b"pusher:pong" in read_until(raw, b"pusher:pong", timeout=30)
    finally:
        raw.close()
        victim.close()


def test_pipelined_unsigned_posts_leave_the_others_served(server):
    victim = Victim(server)
    attacker_app = server.create_app("attacker")
    refused = (
        "POST /apps/%s/events HTTP/1.1\r\nHost: x\r\nContent-Length: 26\r\n\r\n"
        '{"name":"x","channel":"c"}' % attacker_app["app_id"]
    ).encode()
    raw = socket.create_connection(("127.0.0.1", server.app_port))
    answers = []

    def attack():
        reader = threading.Thread(
            target=lambda: answers.append(drain(raw, ATTACK + 1)), daemon=True
        )
        reader.start()
        flood(raw, refused * 200, ATTACK)
        reader.join()

    try:
        assert victim.served_during(attack) > 5
        # and the attacker's own requests were answered meanwhile
        assert answers[0] > 100000
    finally:
        raw.close()
        victim.close()


def test_a_console_socket_flooding_before_its_sign_in_is_refused_unread(server):
    victim = Victim(server)
    raw = connect_raw(server, "/console")
    read_until(raw, b"\r\n\r\n")
    # a sign-in with a token the server must check, then frames it ignores
    sign_in = {"event": "console:watch", "data": {"app_id": "1", "token": "x" * 32}}
    block = masked_frame(json.dumps(sign_in)) + masked_frame("ignored") * 1000
    sent = []
    try:
        assert victim.served_during(lambda: sent.append(flood(raw, block, ATTACK))) > 5
        # refused at its first message, and nothing after it was read: what
        # it could send fit in the kernel's buffers
        assert sent[0] < 32 * 1024 * 1024
        raw.setblocking(True)
        frames = server_frames(read_until(raw, b"\x88", timeout=PATIENCE))
        assert frames[-1][0] == 0x8 and frames[-1][1][:2] == (4009).to_bytes(2, "big")
    finally:
        raw.close()
        victim.close()


def test_the_console_sign_in_deadline_fires_during_a_flood(server):
    attacker_app = server.create_app("attacker")
    raw = connect_raw(server, "/app/%s?protocol=7" % attacker_app["key"])
    read_until(raw, b"connection_established")
    block = masked_frame(json.dumps({"event": "pusher:pong", "data": {}})) * 500
    # the console's sign-in deadline is 10 s; the flood goes on past it
    attack = threading.Thread(target=flood, args=(raw, block, 16), daemon=True)
    console = connect_raw(server, "/console")
    try:
        read_until(console, b"\r\n\r\n")
        attack.start()
        data = read_until(console, b"\x88", timeout=20)
        assert attack.is_alive(), "the deadline waited for the flood to end"
        code = server_frames(data)[-1][1][:2]
        assert code == (4009).to_bytes(2, "big")
    finally:
        attack.join()
        raw.close()
        console.close()


def control_frame(opcode, payload=b"hi", mask=b"\x01\x02\x03\x04"):
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def closed_for_pinging(raw, block):
    """Sends ``block`` and reads until the server closes: a ``pusher:error``
    4100, then the close with 4100; returns the frames read."""
    raw.sendall(block)
    data = read_until(raw, b"\x88", timeout=PATIENCE)
    frames = server_frames(data[data.index(b"\r\n\r\n") + 4 :])
    error = json.loads(frames[-2][1])
    assert error["event"] == "pusher:error" and error["data"]["code"] == 4100
    assert frames[-1][0] == 0x8 and frames[-1][1][:2] == (4100).to_bytes(2, "big")
    return frames


@pytest.mark.parametrize("opcode", [0x9, 0xA], ids=["pings", "unasked pongs"])
def test_websocket_control_frames_past_the_rate_close_the_socket(server, app, opcode):
    raw = connect_raw(server, "/app/%s?protocol=7" % app["key"])
    try:
        frames = closed_for_pinging(raw, control_frame(opcode) * 50)
        pongs = [frame for frame in frames if frame[0] == 0xA]
        # ten a second: a second's boundary may fall within the burst
        assert 10 <= len(pongs) <= 20 if opcode == 0x9 else not pongs
    finally:
        raw.close()


def test_pusher_pings_past_the_rate_close_the_socket(server, app):
    raw = connect_raw(server, "/%s" % app["key"])
    try:
        ping = masked_frame(json.dumps({"event": "pusher:ping", "data": {}}))
        frames = closed_for_pinging(raw, ping * 50)
        texts = [json.loads(payload) for opcode, payload in frames if opcode == 0x1]
        pongs = [text for text in texts if text["event"] == "pusher:pong"]
        assert 10 <= len(pongs) <= 20
    finally:
        raw.close()


def test_a_socket_pinging_within_the_rate_stays(server, app):
    client = server.connect(app)
    try:
        for _ in range(3):
            for _ in range(5):
                client.send({"event": "pusher:ping", "data": {}})
                assert client.recv_event("pusher:pong")
            time.sleep(1.05)
        client.subscribe("still-here")
    finally:
        client.close()
