"""The REST port's own HTTP/1.1 server (``net/httpd``), over raw sockets:
keep-alive, pipelining in order, 100-continue, HEAD, HTTP/1.0, every
limit answered in JSON, sockets that stall, and a publish for an app the
server has not loaded yet (answered through the Appier worker)."""

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from support import signed_path


class Conn:
    """A raw socket to the REST port and the bytes read past the last
    response."""

    def __init__(self, server):
        self.sock = socket.create_connection(("127.0.0.1", server.app_port), 10)
        self.sock.settimeout(10)
        self.pending = b""

    def sendall(self, data):
        self.sock.sendall(data)

    def recv(self, size):
        if self.pending:
            data, self.pending = self.pending[:size], self.pending[size:]
            return data
        return self.sock.recv(size)

    def close(self):
        self.sock.close()


def read_response(sock, head_only=False):
    """``(status, headers, body)`` of one response read from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before a response: %r" % data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", 0))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    sock.pending = rest[length:]
    return status, headers, rest[:length]


def open_socket(server):
    return Conn(server)


def is_closed(conn, timeout=10):
    assert not conn.pending
    conn.sock.settimeout(timeout)
    try:
        return conn.sock.recv(1) == b""
    except ConnectionResetError:
        return True


def request_bytes(method, path, body=b"", headers=None, version="HTTP/1.1"):
    lines = ["%s %s %s" % (method, path, version), "Host: 127.0.0.1"]
    for name, value in (headers or {}).items():
        lines.append("%s: %s" % (name, value))
    if body:
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def publish_bytes(app, channel, data, headers=None):
    body = json.dumps({"name": "greet", "channel": channel, "data": data}).encode()
    return request_bytes(
        "POST",
        signed_path(app, "POST", "/apps/%s/events" % app["app_id"], body=body),
        body,
        dict({"Content-Type": "application/json"}, **(headers or {})),
    )


def test_keep_alive_serves_several_requests_on_one_socket(server):
    sock = open_socket(server)
    try:
        for _ in range(3):
            sock.sendall(request_bytes("GET", "/health"))
            status, headers, body = read_response(sock)
            assert status == 200 and json.loads(body)["status"] == "ok"
            assert headers["connection"] == "keep-alive"
    finally:
        sock.close()


def test_pipelined_requests_are_answered_in_order(server, app):
    client = server.connect(app)
    client.subscribe("pipes")
    sock = open_socket(server)
    try:
        sock.sendall(
            publish_bytes(app, "pipes", "one")
            + request_bytes("GET", "/health")
            + publish_bytes(app, "pipes", "two")
            + request_bytes("GET", "/nowhere")
        )
        statuses = []
        for _ in range(4):
            status, _headers, body = read_response(sock)
            statuses.append((status, json.loads(body)))
        assert [status for status, _ in statuses] == [200, 200, 200, 404]
        assert statuses[1][1]["status"] == "ok"
        received = [client.recv_event("greet")["data"] for _ in range(2)]
        assert received == ["one", "two"]
    finally:
        sock.close()
        client.close()


def test_a_long_pipeline_of_quick_refusals_is_answered_whole(server, app):
    # unsigned publishes are refused at once, on the loop: 1,500 of them in
    # one write are answered in order on the same socket
    count = 1500
    refused = request_bytes(
        "POST", "/apps/%s/events" % app["app_id"], b'{"name":"x","channel":"c"}'
    )
    sock = open_socket(server)
    try:
        sock.sendall(refused * count + request_bytes("GET", "/health"))
        for _ in range(count):
            status, headers, _body = read_response(sock)
            assert status == 401 and headers["connection"] == "keep-alive"
        status, _headers, body = read_response(sock)
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        sock.close()


def test_a_large_answer_arrives_whole_and_what_waits_behind_it_too(server, app):
    # 1,000 stored events of 10 KB: one history answer of 10 MB, far over
    # what a client may leave unread; the second request waits behind it
    proxy = server.client(app)
    for _ in range(1000):
        proxy.trigger_event(channel="archive", data="x" * 10000, persist=True)
    path = signed_path(
        app,
        "GET",
        "/apps/%s/events" % app["app_id"],
        {"channel": "archive", "count": "1000"},
    )
    sock = open_socket(server)
    try:
        sock.sendall(request_bytes("GET", path) * 2)
        for _ in range(2):
            status, _headers, body = read_response(sock)
            assert status == 200
            assert len(json.loads(body)["events"]) == 1000
    finally:
        sock.close()


def test_expect_100_continue_gets_its_interim_answer(server, app):
    client = server.connect(app)
    client.subscribe("expect")
    data = publish_bytes(app, "expect", "x" * 2000, {"Expect": "100-continue"})
    head, _, body = data.partition(b"\r\n\r\n")
    sock = open_socket(server)
    try:
        sock.sendall(head + b"\r\n\r\n")
        interim = sock.recv(64)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        status, _headers, _body = read_response(sock)
        assert status == 200
        assert client.recv_event("greet")["data"] == "x" * 2000
    finally:
        sock.close()
        client.close()


def test_head_has_the_length_and_no_body(server):
    sock = open_socket(server)
    try:
        sock.sendall(request_bytes("HEAD", "/health") + request_bytes("GET", "/health"))
        status, headers, body = read_response(sock, head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0 and body == b""
        # no body bytes followed the HEAD answer: the next one parses whole
        status, _headers, body = read_response(sock)
        assert status == 200 and json.loads(body)["status"] == "ok"
    finally:
        sock.close()


def test_http_1_0_closes_after_the_answer(server):
    sock = open_socket(server)
    try:
        sock.sendall(request_bytes("GET", "/health", version="HTTP/1.0"))
        status, headers, _body = read_response(sock)
        assert status == 200 and headers["connection"] == "close"
        assert is_closed(sock)
    finally:
        sock.close()


@pytest.mark.parametrize(
    "data, status",
    [
        (b"GET /health HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /health HTTP/1.1\r\nX: " + b"a" * 9000, 431),
        (
            request_bytes(
                "POST", "/apps/1/events", headers={"Content-Length": "999999"}
            ),
            413,
        ),
        (request_bytes("POST", "/x", headers={"Transfer-Encoding": "chunked"}), 411),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /health HTTP/2.0\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        # a digit to isdigit(), not to int()
        (b"GET /health HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400),
        (
            b"GET /health HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
    ],
)
def test_refusals_are_json_and_close_the_socket(server, data, status):
    sock = open_socket(server)
    try:
        sock.sendall(data)
        answer, headers, body = read_response(sock)
        assert answer == status
        reason = json.loads(body)
        assert reason["code"] == status and reason["message"]
        assert headers["connection"] == "close"
        assert is_closed(sock)
    finally:
        sock.close()
    # the server is unharmed
    assert server.request("GET", "health")[0] == 200


def test_a_request_head_that_stalls_is_cut_off_with_a_reason(server):
    sock = open_socket(server)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        started = time.time()
        sock.sock.settimeout(30)
        status, headers, body = read_response(sock)
        assert status == 408 and json.loads(body)["code"] == 408
        assert headers["connection"] == "close" and is_closed(sock)
        assert time.time() - started >= 5
    finally:
        sock.close()


def test_publish_for_an_app_created_while_running(server):
    # the CLI writes the app to the store and nothing has loaded it: the
    # signed publish reads it off the loop (through Appier's worker)
    app = server.create_app("late")
    sock = open_socket(server)
    try:
        sock.sendall(publish_bytes(app, "late", "first"))
        status, _headers, body = read_response(sock)
        assert status == 200 and json.loads(body) == {}
        client = server.connect(app)
        client.subscribe("late")
        sock.sendall(publish_bytes(app, "late", "second"))
        assert read_response(sock)[0] == 200
        assert client.recv_event("greet")["data"] == "second"
        client.close()
    finally:
        sock.close()


def test_every_error_body_has_the_apis_shape(server, app):
    """Appier's own refusals (no such route, a route without this method)
    and Pushi's say ``result``, ``code`` and ``message``, and nothing of
    Appier's (``name``, ``uid``, ``session``)."""
    for method, path in (
        ("GET", "no/such/route"),
        ("OPTIONS", "apps"),
        ("DELETE", "health"),
        ("GET", "apps/%s" % app["app_id"]),
        ("GET", "apps"),
    ):
        status, answer = server.request(method, path)
        assert 400 <= status < 500, (method, path, status)
        assert answer == {
            "result": "error",
            "code": status,
            "message": answer["message"],
        }
        assert isinstance(answer["message"], str) and answer["message"]


def test_every_error_body_is_compact_json_whichever_path_answers(server, app):
    """Appier's error handler answered ``{"result": "error", ...}`` and the
    lean publish path and the HTTP server ``{"result":"error",...}``: one
    spacing now, the compact one, also on the WebSocket port's refusals."""
    unknown = {"Authorization": "Bearer unknown"}
    answers = [
        # Appier: no such route, a controller's refusal, a bad body
        urllib_answer(server.base_url + "no/such/route"),
        urllib_answer(server.base_url + "apps/%s/channels" % app["app_id"]),
        urllib_answer(server.base_url + "apps", "GET", headers=unknown),
        urllib_answer(server.base_url + "login", "POST", b"{bad"),
        # the lean publish path
        urllib_answer(
            server.base_url + "apps/%s/events" % app["app_id"], "POST", b"{}", unknown
        ),
        # the HTTP server itself: a body over its limit
        raw_answer(
            server,
            request_bytes(
                "POST", "/apps/1/events", headers={"Content-Length": "999999"}
            ),
        ),
        # the WebSocket port, asked for no upgrade
        urllib_answer(server.ws_url.replace("ws://", "http://") + app["key"]),
    ]
    for status, body in answers:
        assert 400 <= status < 500, (status, body)
        decoded = json.loads(body)
        assert decoded["result"] == "error" and decoded["code"] == status, body
        assert body == json.dumps(decoded, separators=(",", ":")).encode(), body


def raw_answer(server, data):
    """``(status, body bytes)`` of ``data`` sent on a raw socket."""
    sock = open_socket(server)
    try:
        sock.sendall(data)
        status, _headers, body = read_response(sock)
        return status, body
    finally:
        sock.close()


def urllib_answer(url, method="GET", data=None, headers=None):
    """``(status, body bytes)`` of one HTTP request."""
    request = urllib.request.Request(url, data=data, method=method)
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
