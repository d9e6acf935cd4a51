"""The REST port's HTTP/1.1 with no socket (``proto.http``): bytes in,
requests or errors out; answers in, bytes out.  And the rule that keeps the
REST app apart from the socket server: nothing under ``pushi/app`` imports
``pushi.net``."""

import ast
import os

import pytest

from pushi.proto import errors, http

from support import SRC

BODY = b'{"name":"e","channel":"c","data":"{\\"a\\":1}"}'
TRIGGER = (
    b"POST /apps/1/events?auth_key=k&auth_timestamp=1 HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % len(BODY)
) + BODY


def parse_all(data, max_body=http.MAX_BODY):
    parser = http.RequestParser(max_body)
    parser.feed(data)
    requests = []
    while True:
        request = parser.next_request()
        if request is None:
            return requests, parser
        requests.append(request)


def refusal(data, max_body=http.MAX_BODY):
    with pytest.raises(errors.HttpError) as caught:
        parse_all(data, max_body)
    return caught.value.status


# requests


def test_a_request_is_parsed_whole():
    (request,), parser = parse_all(TRIGGER)
    assert request.method == "POST"
    assert request.path == "/apps/1/events"
    assert request.query == "auth_key=k&auth_timestamp=1"
    assert request.version == "HTTP/1.1"
    assert request.headers["content-type"] == "application/json"
    assert request.body == BODY
    assert request.keep_alive
    assert parser.buffer == b""


def test_a_request_arriving_byte_by_byte_comes_out_once_whole():
    parser = http.RequestParser()
    seen = []
    for index in range(len(TRIGGER)):
        parser.feed(TRIGGER[index : index + 1])
        request = parser.next_request()
        if request is not None:
            seen.append((index, request))
    assert [index for index, _request in seen] == [len(TRIGGER) - 1]


def test_a_body_arriving_in_pieces_has_its_head_parsed_once(monkeypatch):
    """However many pieces a body comes in (a client sending it a byte at
    a time), its head, up to 100 lines, is parsed once; the pieces are
    gathered in place."""
    heads = []
    parse_head = http.RequestParser._head
    monkeypatch.setattr(
        http.RequestParser,
        "_head",
        lambda parser, buffer: heads.append(1) or parse_head(parser, buffer),
    )
    many = b"".join(b"X-%d: v\r\n" % index for index in range(99))
    body = b"x" * 5000
    head = b"POST / HTTP/1.1\r\n" + many + b"Content-Length: 5000\r\n\r\n"
    parser = http.RequestParser()
    parser.feed(head)
    assert parser.next_request() is None
    for index in range(len(body)):
        parser.feed(body[index : index + 1])
        request = parser.next_request()
    assert request.body == body and len(request.headers) == 100
    assert request.body.__class__ is bytes and parser.buffer == b""
    assert len(heads) == 1


def test_pipelined_requests_come_out_in_order():
    second = b"GET /apps/1/channels HTTP/1.1\r\nHost: x\r\n\r\n"
    requests, parser = parse_all(TRIGGER + second + b"GET /partial")
    assert [request.path for request in requests] == [
        "/apps/1/events",
        "/apps/1/channels",
    ]
    assert parser.buffer == b"GET /partial"


def test_keep_alive_by_version_and_connection_header():
    def keep_alive(head):
        (request,), _parser = parse_all(head + b"\r\n\r\n")
        return request.keep_alive

    assert keep_alive(b"GET / HTTP/1.1")
    assert not keep_alive(b"GET / HTTP/1.1\r\nConnection: close")
    assert not keep_alive(b"GET / HTTP/1.0")
    assert keep_alive(b"GET / HTTP/1.0\r\nConnection: keep-alive")


def test_repeated_headers_are_joined_and_equal_lengths_allowed():
    (request,), _parser = parse_all(
        b"POST / HTTP/1.1\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 1\r\n"
        b"Content-Length: 1\r\n\r\nz"
    )
    assert request.headers["x-a"] == "1, 2"
    assert request.body == b"z"


def test_expect_100_continue_is_asked_for_once():
    parser = http.RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert parser.next_request() is http.CONTINUE
    assert parser.next_request() is None
    parser.feed(b"ok")
    assert parser.next_request().body == b"ok"


def test_expect_100_continue_is_ignored_in_http_1_0():
    """RFC 9110 10.1.1: an HTTP/1.0 client would take the interim answer
    for the final one."""
    parser = http.RequestParser()
    parser.feed(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert parser.next_request() is None


# limits and grammar: each a 4xx


def test_a_head_over_the_limit_is_431():
    assert refusal(b"GET / HTTP/1.1\r\nX: " + b"a" * http.MAX_HEAD) == 431


def test_a_body_over_max_body_is_413_before_it_arrives():
    head = b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n"
    assert refusal(head, max_body=10) == 413


def test_over_100_header_lines_is_431():
    lines = b"".join(b"X-%d: v\r\n" % index for index in range(101))
    assert refusal(b"GET / HTTP/1.1\r\n" + lines + b"\r\n") == 431


def test_a_bare_cr_in_the_head_is_400():
    """RFC 9112 2.2: a CR not followed by LF is not passed on."""
    assert refusal(b"GET / HTTP/1.1\r\nX-Note: a\rb\r\n\r\n") == 400


def test_a_chunked_body_is_411():
    assert refusal(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n") == 411


@pytest.mark.parametrize(
    "head",
    [
        b"GET /\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"G-T / HTTP/1.1\r\n\r\n",
        b"GET x HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nX : y\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: \xc2\xb2\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1234567890123456789\r\n\r\n",
    ],
)
def test_malformed_requests_are_400(head):
    assert refusal(head) == 400


# answers


def test_an_answer_is_framed_by_its_body_whatever_its_headers_say():
    status, headers, body = http.json_response(200, {"ok": True})
    data = http.response(
        status, headers + [("Connection", "upgrade")], body, keep_alive=True
    )
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"Content-Length: 11" in lines
    assert b"Connection: keep-alive" in lines
    assert b"Connection: upgrade" not in lines
    assert lines.count(b"Content-Length: 11") == 1
    assert rest == b'{"ok":true}'


def test_a_head_answer_keeps_the_length_without_the_body():
    data = http.response("200 OK", [], b"abc", keep_alive=False, head_only=True)
    assert data.endswith(b"Content-Length: 3\r\nConnection: close\r\n\r\n")


def test_an_error_answer_is_json_with_a_reason_and_retry_after():
    status, headers, body = http.error_response(errors.HttpError(503, "Busy"))
    assert status == "503 Service Unavailable"
    assert ("Retry-After", "1") in headers
    assert body == b'{"result":"error","code":503,"message":"Busy"}'


def test_call_wsgi_gives_the_app_the_request_as_wsgi():
    (request,), _parser = parse_all(TRIGGER)
    request.remote = "10.0.0.1"
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("201 Created", [("X-A", "1")])
        return [environ["wsgi.input"].read()]

    status, headers, body = http.call_wsgi(app, request, "h", 80, "http")
    assert (status, headers, body) == ("201 Created", [("X-A", "1")], request.body)
    assert seen["PATH_INFO"] == "/apps/1/events"
    assert seen["QUERY_STRING"] == "auth_key=k&auth_timestamp=1"
    assert seen["CONTENT_TYPE"] == "application/json"
    assert seen["REMOTE_ADDR"] == "10.0.0.1"


# layering


def imported_modules(source, package):
    """Every module a module's ``source`` imports, relative imports
    resolved against its ``package``."""
    tree = ast.parse(source)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.append(base)
            names.extend(base + "." + alias.name for alias in node.names)
    return names


def test_the_rest_app_does_not_import_the_socket_server():
    """``pushi/app`` reaches the loop through ``State`` only: what it
    shares with the socket side is ``proto.http``."""
    offenders = []
    for root, _dirs, files in os.walk(os.path.join(SRC, "pushi", "app")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                package = os.path.relpath(root, SRC).replace(os.sep, ".")
                with open(path, encoding="utf-8") as file:
                    source = file.read()
                for module in imported_modules(source, package):
                    if module == "pushi.net" or module.startswith("pushi.net."):
                        offenders.append((os.path.relpath(path, SRC), module))
    assert offenders == []


def test_the_import_check_sees_every_spelling():
    """The check above would catch any of them."""
    source = (
        "import pushi.net.server\n"
        "from pushi.net import httpd\n"
        "from ..net import wire\n"
        "def f():\n"
        "    from pushi import net\n"
    )
    modules = imported_modules(source, "pushi.app")
    assert "pushi.net.server" in modules
    assert "pushi.net" in modules
    assert "pushi.net.wire" in modules
