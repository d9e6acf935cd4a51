"""RFC 6455 over real sockets against the real server: the opening
handshake's refusals, UTF-8 checked fragment by fragment, and the bounds on
a message that a client keeps unfinished (its size, frame headers counted,
and its age)."""

import socket
import struct
import time

from pushi.proto.websocket import MAX_MESSAGE, MESSAGE_TIMEOUT

from support import read_until, server_frames, upgrade_request

OP_CONTINUATION, OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x8, 0x9, 0xA


def frame(opcode, payload, fin=True, mask=b"\x01\x02\x03\x04"):
    """A masked client frame, final or not (payloads under 126 bytes)."""
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + mask + masked


def opened(server, app):
    """A raw socket upgraded on the Pusher path, its first frame
    (``connection_established``) read whole."""
    raw = socket.create_connection(("127.0.0.1", server.server_port))
    raw.sendall(upgrade_request("/app/%s?protocol=7" % app["key"]))
    data = read_until(raw, b"\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 101"), data
    body = data.partition(b"\r\n\r\n")[2]
    while not server_frames(body):
        body += raw.recv(65536)
    return raw


def refusal(server, request):
    """``(status line, header lines)`` of the server's answer to a raw
    upgrade ``request``."""
    raw = socket.create_connection(("127.0.0.1", server.server_port))
    raw.sendall(request)
    head = read_until(raw, b"\r\n\r\n").partition(b"\r\n\r\n")[0]
    raw.close()
    lines = head.split(b"\r\n")
    return lines[0], lines[1:]


def frames_until_close(raw, timeout=10):
    """The frames the server sends until its close frame (included), the
    stream's end or ``timeout`` seconds."""
    raw.settimeout(timeout)
    data = b""
    try:
        while not any(opcode == OP_CLOSE for opcode, _ in server_frames(data)):
            chunk = raw.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return server_frames(data)


def close_code(frames):
    """The code of the close frame among ``frames``, None without one."""
    for opcode, payload in frames:
        if opcode == OP_CLOSE:
            return struct.unpack("!H", payload[:2])[0]
    return None


def rss(pid):
    """The resident memory of process ``pid``, in bytes."""
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def still_served(server, app):
    client = server.connect(app)
    answer = client.subscribe("after")
    client.close()
    return answer["event"] == "pusher_internal:subscription_succeeded"


def test_an_unsupported_version_is_426_naming_version_13(server, app):
    """RFC 6455 4.2.2: the answer names the version served; a 426 carries
    the protocol to upgrade to (RFC 9110 15.5.22)."""
    request = upgrade_request("/app/%s?protocol=7" % app["key"]).replace(
        b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"
    )
    status, headers = refusal(server, request)
    assert status.startswith(b"HTTP/1.1 426 ")
    assert b"Sec-WebSocket-Version: 13" in headers
    assert b"Upgrade: websocket" in headers
    assert still_served(server, app)


def test_an_upgrade_without_host_is_400(server, app):
    """RFC 6455 4.2.1: a handshake without Host is a bad request."""
    request = upgrade_request("/app/%s?protocol=7" % app["key"]).replace(
        b"Host: x\r\n", b""
    )
    status, _headers = refusal(server, request)
    assert status.startswith(b"HTTP/1.1 400 ")


def test_invalid_utf8_in_a_first_fragment_is_1007_at_once(server, app):
    """The close comes at the fragment with the bad bytes, while the
    client still holds the rest of its message."""
    raw = opened(server, app)
    raw.sendall(frame(OP_TEXT, b'{"event":"\xff', fin=False))
    assert close_code(frames_until_close(raw)) == 1007
    raw.close()
    assert still_served(server, app)


def test_empty_continuations_past_the_message_limit_are_1009(server, app):
    """Each continuation's header counts toward ``MAX_MESSAGE``: empty
    ones reach it as data does."""
    raw = opened(server, app)
    empty = frame(OP_CONTINUATION, b"", fin=False)
    # one payload byte, then 6 counted bytes per empty continuation: the
    # last one passes the limit
    count = MAX_MESSAGE // len(empty) + 1
    raw.sendall(frame(OP_TEXT, b"{", fin=False) + empty * count)
    assert close_code(frames_until_close(raw)) == 1009
    raw.close()
    assert still_served(server, app)


def test_a_flood_of_empty_continuations_costs_the_server_no_memory(server, app):
    before = rss(server.process.pid)
    raw = opened(server, app)
    raw.sendall(frame(OP_TEXT, b"{", fin=False))
    chunk = frame(OP_CONTINUATION, b"", fin=False) * 10000
    # 3 million empty frames, 18 MB, unless the server ends the socket
    # (the kernel may take much of it after the close)
    for _ in range(300):
        try:
            raw.sendall(chunk)
        except OSError:
            break
    assert close_code(frames_until_close(raw)) == 1009
    raw.close()
    assert still_served(server, app)
    assert rss(server.process.pid) - before < 8 * 1024 * 1024


def test_an_unfinished_message_is_closed_after_its_deadline(server, app):
    """A client that begins a message and never ends it is closed with
    1008 once the message is ``MESSAGE_TIMEOUT`` seconds old, although it
    answers and sends pings all the while."""
    raw = opened(server, app)
    started = time.monotonic()
    raw.sendall(frame(OP_TEXT, b'{"event":', fin=False))
    raw.settimeout(0.5)
    data, pongs, code, next_ping = b"", 0, None, started
    while code is None and time.monotonic() - started < MESSAGE_TIMEOUT + 15:
        try:
            if time.monotonic() >= next_ping:
                raw.sendall(frame(OP_PING, b"alive"))
                next_ping += 1
            chunk = raw.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
        frames = server_frames(data)
        pongs = sum(1 for opcode, _ in frames if opcode == OP_PONG)
        code = close_code(frames)
    raw.close()
    assert code == 1008
    assert time.monotonic() - started >= MESSAGE_TIMEOUT
    assert pongs >= MESSAGE_TIMEOUT // 2
    assert still_served(server, app)
