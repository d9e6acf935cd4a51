"""Connection caps end to end: a crowd of clients on one public key, under
a low open-files limit, costs the others nothing (issue #22, fault 7)."""

import json
import resource
import socket
import time

import pytest

from pushi.net import capacity

from support import (
    PushiServer,
    read_until,
    server_frames,
    upgrade_request,
    wait_until,
)


def open_raw(server, app, source="127.0.0.1", timeout=5):
    """A raw socket from ``source`` upgraded on ``app``'s key: ``(socket,
    first message)``; a refused one is read to its end, and its close code
    is the message's ``close`` (``None`` if nothing answered in time)."""
    raw = socket.socket()
    raw.bind((source, 0))
    raw.settimeout(timeout)
    raw.connect(("127.0.0.1", server.server_port))
    raw.sendall(upgrade_request("/app/%s?protocol=7" % app["key"]))
    data = b""
    try:
        while b"connection_established" not in data:
            chunk = raw.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raw.close()
        return None, None
    frames = server_frames(data[data.find(b"\r\n\r\n") + 4 :])
    message = json.loads(frames[0][1])
    closes = [payload for opcode, payload in frames if opcode == 0x8]
    message["close"] = int.from_bytes(closes[0][:2], "big") if closes else None
    return raw, message


def established(message):
    return message is not None and message["event"] == "pusher:connection_established"


def refused_4100(message):
    return (
        message is not None
        and message["event"] == "pusher:error"
        and message["data"]["code"] == 4100
        and message["close"] == 4100
    )


def close_all(sockets):
    for raw in sockets:
        raw.close()


def test_a_crowd_under_a_low_fd_limit_gets_4100_and_rest_keeps_answering():
    server = PushiServer(fd_limit=256).start()
    try:
        crowded = server.create_app("crowded")
        other = server.create_app("other")
        listener = server.connect(other)
        listener.subscribe("news")
        crowd, refused = [], 0
        try:
            for _ in range(300):
                raw, message = open_raw(server, crowded)
                assert message is not None, "no answer to client %d" % len(crowd)
                if established(message):
                    crowd.append(raw)
                else:
                    assert refused_4100(message), message
                    assert message["data"]["message"] == "Over capacity"
                    raw.close()
                    refused += 1
            # the cap keeps room for everything else the process opens
            assert 100 < len(crowd) < 256 - 32 and refused == 300 - len(crowd)
            status, health = server.request("GET", "health")
            assert status == 200 and health["connections"] == len(crowd) + 1
            server.client(other).trigger_event(channel="news", data="still here")
            assert listener.recv_event("message")["data"] == "still here"
            # sockets that leave make room again
            close_all(crowd[:10])
            del crowd[:10]
            for _ in range(3):
                raw, message = wait_until(lambda: _admitted(server, crowded), 15, 0.2)
                assert established(message), message
                crowd.append(raw)
            assert "Traceback" not in server.read_log()
        finally:
            close_all(crowd)
            listener.close()
    finally:
        server.stop()


def _admitted(server, app):
    raw, message = open_raw(server, app)
    if established(message):
        return raw, message
    if raw is not None:
        raw.close()
    return None


def test_explicit_and_per_address_caps():
    server = PushiServer(
        env={"PUSHI_MAX_CONNECTIONS": "5", "PUSHI_MAX_CONNECTIONS_PER_IP": "3"}
    ).start()
    sockets = []
    try:
        app = server.create_app()
        for _ in range(3):
            raw, message = open_raw(server, app)
            assert established(message), message
            sockets.append(raw)
        raw, message = open_raw(server, app)
        assert refused_4100(message), message
        assert "this address" in message["data"]["message"]
        raw.close()
        # another address is not held to the first one's count
        for _ in range(2):
            raw, message = open_raw(server, app, source="127.0.0.2")
            assert established(message), message
            sockets.append(raw)
        # the server-wide cap
        raw, message = open_raw(server, app, source="127.0.0.3")
        assert refused_4100(message) and message["data"]["message"] == "Over capacity"
        raw.close()
        sockets.pop(0).close()
        raw, message = wait_until(lambda: _admitted(server, app), 15, 0.2)
        assert established(message)
        sockets.append(raw)
    finally:
        close_all(sockets)
        server.stop()


def test_the_rest_port_at_its_cap_closes_an_idle_socket_or_answers_503():
    # 256 open files leave the REST port 16 sockets
    server = PushiServer(fd_limit=256).start()
    held = []
    try:
        for _ in range(16):
            held.append(socket.create_connection(("127.0.0.1", server.app_port), 5))
        # sockets idle for a second make room
        time.sleep(1.5)
        status, health = server.request("GET", "health")
        assert status == 200, health
        held[0].settimeout(5)
        assert held.pop(0).recv(1) == b""
        # sockets with a request under way do not (the "100 Continue" says
        # the server has read the head)
        held.append(socket.create_connection(("127.0.0.1", server.app_port), 5))
        for raw in held:
            raw.sendall(
                b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                b"Expect: 100-continue\r\n\r\n"
            )
            raw.settimeout(5)
            assert raw.recv(65536).startswith(b"HTTP/1.1 100 ")
        status, body = server.request("GET", "health")
        assert status == 503 and body == {
            "result": "error",
            "code": 503,
            "message": "Over capacity",
        }
        for raw in held:
            raw.sendall(b"{}")
            assert raw.recv(65536).startswith(b"HTTP/1.1 ")
        close_all(held)
        held = []
        wait_until(lambda: server.request("GET", "health")[0] == 200, 15, 0.2)
    finally:
        close_all(held)
        server.stop()


def test_the_plan_of_a_limit():
    plan = capacity.plan(256)
    assert (plan.reserve, plan.max_connections, plan.max_refusing) == (64, 180, 12)
    assert (plan.http_max_connections, plan.http_max_refusing) == (16, 2)
    assert not plan.clamped
    plan = capacity.plan(1048576, max_connections=1000, max_per_address=10)
    assert (plan.max_connections, plan.max_per_address) == (1000, 10)
    plan = capacity.plan(1024, max_connections=5000)
    assert plan.clamped and plan.max_connections < 1024 - 64
    # what the rest of the process opens does not grow with the limit
    plan = capacity.plan(20000)
    assert (plan.reserve, plan.max_refusing) == (1024, 256)
    assert plan.max_connections == 20000 - 1024 - 256
    assert (plan.http_max_connections, plan.http_max_refusing) == (256, 32)
    plan = capacity.plan(1048576)
    assert (plan.reserve, plan.max_refusing) == (1024, 256)


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs prlimit")
def test_out_of_files_pauses_accepting_with_one_warning_and_resumes():
    """Descriptors exhausted by anything (here the limit lowered under the
    running server): accepting stops with one warning, the waiting clients
    are answered once descriptors are back."""
    server = PushiServer(fd_limit=256).start()
    app = server.create_app()
    # the app in the server's memory: its key needs no file to look up
    server.connect(app).close()
    pid = server.process.pid
    sockets = []
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (48, 256))
        for _ in range(60):
            raw = socket.create_connection(("127.0.0.1", server.server_port), 5)
            raw.sendall(upgrade_request("/app/%s?protocol=7" % app["key"]))
            sockets.append(raw)
        answered, waiting = 0, []
        for raw in sockets:
            raw.settimeout(0.2 if waiting else 3)
            try:
                answered += b"connection_established" in raw.recv(65536)
            except TimeoutError:
                waiting.append(raw)
        assert answered > 10 and len(waiting) > 10
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (256, 256))
        for raw in waiting:
            raw.settimeout(10)
            assert b"connection_established" in raw.recv(65536)
        log = wait_until(
            lambda: "accepting again" in server.read_log() and server.read_log(),
            15,
            0.2,
        )
        assert log.count("WebSocket port stopped accepting") == 1
        assert "Traceback" not in log
    finally:
        close_all(sockets)
        server.stop()


def test_sockets_over_the_cap_that_say_nothing_pause_accepting_not_others():
    """Past the cap the port accepts only a few sockets to refuse (12 for
    256 open files); sockets that hold those slots without a word stop the
    port, with one warning, until they leave."""
    server = PushiServer(fd_limit=256, env={"PUSHI_MAX_CONNECTIONS": "2"}).start()
    app = server.create_app()
    sockets = []
    try:
        for _ in range(2):
            raw, message = open_raw(server, app)
            assert established(message), message
            sockets.append(raw)
        silent = [
            socket.create_connection(("127.0.0.1", server.server_port), 5)
            for _ in range(20)
        ]
        sockets.extend(silent)
        wait_until(lambda: "stopped accepting" in server.read_log(), 15, 0.2)
        # the REST port is not held up by it
        assert server.request("GET", "health")[0] == 200
        close_all(silent[:12])
        for raw in silent[12:]:
            raw.sendall(upgrade_request("/app/%s?protocol=7" % app["key"]))
            raw.settimeout(10)
            data = b""
            while b"\x88" not in data:
                chunk = raw.recv(65536)
                assert chunk, data
                data += chunk
            assert b'"code":4100' in data
        log = wait_until(
            lambda: "accepting again" in server.read_log() and server.read_log(),
            15,
            0.2,
        )
        assert log.count("WebSocket port stopped accepting") == 1, log
    finally:
        close_all(sockets)
        server.stop()


def test_a_burst_of_silent_sockets_does_not_stop_the_rest_port():
    """Silent sockets that fill the REST port and its refusing slots in
    one burst stop it accepting, but not for their whole keep-alive time:
    once they have idled a second, the port closes them to make room."""
    # 256 open files leave the REST port 16 sockets and 2 to refuse with
    server = PushiServer(fd_limit=256).start()
    silent = []
    try:
        for _ in range(18):
            silent.append(socket.create_connection(("127.0.0.1", server.app_port), 5))
        wait_until(lambda: "REST port stopped accepting" in server.read_log(), 15, 0.2)
        raw = socket.create_connection(("127.0.0.1", server.app_port), 5)
        silent.append(raw)
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.settimeout(15)
        assert raw.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        close_all(silent)
        server.stop()


def _kernel_takes(rcvbuf):
    """Bytes the kernel takes from a sender over loopback before the
    receiver (``rcvbuf``, reading nothing) makes it wait."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    receiver = socket.socket()
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    receiver.connect(listener.getsockname())
    sender, _ = listener.accept()
    sender.setblocking(False)
    taken = 0
    for _ in range(50):
        try:
            while True:
                taken += sender.send(b"x" * 65536)
        except BlockingIOError:
            time.sleep(0.01)
    for raw in (sender, receiver, listener):
        raw.close()
    return taken


def test_the_rest_port_at_its_cap_never_cuts_an_answer_short():
    """A socket whose answers are still going out (its client reads them
    slowly) is not idle: a new socket at the cap does not take its place,
    which would cut its answers short."""
    server = PushiServer(fd_limit=256).start()
    app = server.create_app()
    server.connect(app).close()
    request = (
        "POST /apps/%s/events HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        % app["app_id"]
    ).encode()
    sockets = []
    try:
        # unsigned: a 401 answered on the loop, its size known
        probe = socket.create_connection(("127.0.0.1", server.app_port), 5)
        sockets.append(probe)
        probe.sendall(request)
        probe.settimeout(5)
        size = len(read_until(probe, b'"}'))
        probe.sendall(b"GET / HTTP/1.1\r\n")
        # answers past what the kernel holds for a client that does not
        # read: half a megabyte of them waits in the server, under the
        # bound past which the server stops reading the socket
        count = (_kernel_takes(4096) + 524288) // size
        slow = socket.socket()
        sockets.append(slow)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", server.app_port))
        slow.sendall(request * count)
        time.sleep(3)
        # the 14 other sockets (with the probe) have a request under way
        for _ in range(14):
            raw = socket.create_connection(("127.0.0.1", server.app_port), 5)
            raw.sendall(b"GET / HTTP/1.1\r\n")
            sockets.append(raw)
        time.sleep(1.5)
        sockets.append(socket.create_connection(("127.0.0.1", server.app_port), 5))
        time.sleep(0.5)
        slow.settimeout(5)
        data = b""
        while data.count(b"HTTP/1.1 ") < count:
            chunk = slow.recv(1 << 20)
            assert chunk, "cut after %d answers of %d" % (
                data.count(b"HTTP/1.1 "),
                count,
            )
            data += chunk
    finally:
        close_all(sockets)
        server.stop()


def test_one_address_over_its_cap_cannot_stop_the_port_for_others():
    """With a cap per address, an address that opens many sockets and says
    nothing gets as many refused (4100) as it is admitted, and the rest
    closed at once: the port's refusing slots stay for everyone else, and
    another address is answered at once."""
    server = PushiServer(
        fd_limit=256, env={"PUSHI_MAX_CONNECTIONS_PER_IP": "2"}
    ).start()
    app = server.create_app()
    server.connect(app).close()
    sockets = []
    try:
        for _ in range(200):
            raw = socket.socket()
            raw.bind(("127.0.0.1", 0))
            raw.connect(("127.0.0.1", server.server_port))
            sockets.append(raw)
        # the 3rd and 4th are refused with a reason, the 5th is closed
        for raw in sockets[2:4]:
            raw.sendall(upgrade_request("/app/%s?protocol=7" % app["key"]))
            raw.settimeout(5)
            assert b'"code":4100' in read_until(raw, b"\x88")
        sockets[4].settimeout(5)
        try:
            assert sockets[4].recv(65536) == b""
        except ConnectionResetError:
            pass
        raw, message = open_raw(server, app, source="127.0.0.2", timeout=3)
        sockets.append(raw)
        assert established(message), message
        assert "stopped accepting" not in server.read_log()
    finally:
        close_all(sockets)
        server.stop()
