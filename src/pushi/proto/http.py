"""HTTP/1.1 for the REST port, with no socket: bytes in, requests out;
answers in, bytes out.

``RequestParser`` takes a connection's bytes (``feed``) and gives its
requests one at a time (``next_request``): a ``Request``, None while more
bytes are needed, or ``CONTINUE`` when the client waits for ``100
Continue`` before sending its body.  It handles the request line, headers,
``Content-Length`` bodies and pipelining (what follows a request waits in
the buffer for the next call); ``Request.keep_alive`` says whether the
connection stays open after the answer.  ``response`` frames an answer.

Limits, checked as the bytes are parsed: an 8 KB head (431), a body of
``max_body`` bytes (413), no chunked bodies (411); a malformed request
line, header or ``Content-Length`` is a 400.  Each is an
``errors.HttpError`` whose ``json_response`` is the answer to send before
closing.

What the REST app and the socket side share lives here too: the JSON
answer (``json_response``), and ``call_wsgi``, which runs a ``Request``
through a WSGI app.

Ownership: a parser belongs to one connection and is driven by whoever
reads that connection's bytes (the loop thread); a ``Request`` is read-only
once given out, and may be handed to another thread.
"""

import http
import io
import json
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.types import WSGIApplication

from . import errors

MAX_HEAD = 8192
""" Bytes of a request's line and headers """

MAX_BODY = 262144
""" Bytes of a request's body (its ``Content-Length``) """

MAX_HEADERS = 100
""" Header lines of a request """

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
""" What ``next_request`` gives, once per request, when its client waits
for this interim answer before it sends the body: send it as it is """

_HOP_BY_HOP = frozenset(("connection", "content-length", "transfer-encoding"))


class Request:
    """One parsed request; ``headers`` has lower-case names, ``remote`` is
    the client's address and ``scheme`` the one it used (None: the port's),
    as the server sets them; ``received`` is when it had arrived whole
    (``time.monotonic``)."""

    __slots__ = (
        "method",
        "path",
        "query",
        "version",
        "headers",
        "body",
        "remote",
        "scheme",
        "received",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        version: str,
        headers: dict[str, str],
        body: bytes,
        remote: str = "",
        scheme: str | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.body = body
        self.remote = remote
        self.scheme = scheme
        self.received = time.monotonic()

    @property
    def keep_alive(self) -> bool:
        tokens = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


class RequestParser:
    """One connection's requests, from its bytes (see the module doc).
    ``buffer`` holds what is not parsed yet: empty between requests.  A
    head is parsed once, however many pieces its body comes in."""

    __slots__ = ("buffer", "max_body", "head")

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self.buffer: bytes | bytearray = b""
        self.max_body = max_body
        # (method, target, version, headers, body start, body length) of
        # the request whose body is not all there yet
        self.head: tuple | None = None

    def feed(self, data: bytes) -> None:
        buffer = self.buffer
        if not buffer:
            self.buffer = data
        elif buffer.__class__ is bytes:
            # a request in pieces: grown in place from now on
            self.buffer = bytearray(buffer) + data
        else:
            buffer += data

    def next_request(self) -> Request | bytes | None:
        """The next whole request, None until it has arrived, or
        ``CONTINUE``; raises ``errors.HttpError`` for one that breaks the
        limits or the grammar (the connection is then unusable)."""
        buffer = self.buffer
        parsed = self.head
        head = parsed or self._head(buffer)
        if head is None:
            return None
        method, target, version, headers, start, length = head
        if len(buffer) < start + length:
            self.head = head
            # asked for once, as the head is parsed
            if (
                parsed is None
                and version == "HTTP/1.1"
                and headers.get("expect", "").lower() == "100-continue"
            ):
                return CONTINUE
            return None
        self.head = None
        if isinstance(buffer, bytes):
            body = buffer[start : start + length]
            self.buffer = buffer[start + length :]
        else:
            body = bytes(buffer[start : start + length])
            self.buffer = bytes(buffer[start + length :])
        path, _, query = target.partition("?")
        return Request(method, path, query, version, headers, body)

    def _head(self, buffer: bytes | bytearray) -> tuple | None:
        end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise errors.HttpError(431, "Request head over %d bytes" % MAX_HEAD)
            return None
        text = buffer[:end].decode("latin-1")
        lines = text.split("\r\n")
        if text.count("\r") != len(lines) - 1:
            raise errors.HttpError(400, "Bare CR in the request head")
        if len(lines) > MAX_HEADERS + 1:
            raise errors.HttpError(431, "Over %d header lines" % MAX_HEADERS)
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
            raise errors.HttpError(400, "Malformed request line")
        method, target, version = parts
        if not method.isalpha() or not target.startswith("/"):
            raise errors.HttpError(400, "Malformed request line")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise errors.HttpError(400, "Malformed header line")
            name = name.lower()
            value = value.strip()
            if name in headers:
                if name == "content-length" and headers[name] != value:
                    raise errors.HttpError(400, "Conflicting Content-Length")
                if name != "content-length":
                    headers[name] += ", " + value
            else:
                headers[name] = value
        if "transfer-encoding" in headers:
            raise errors.HttpError(411, "Send the body with a Content-Length")
        declared = headers.get("content-length", "0")
        # isdigit() alone takes any Unicode digit ("\u00b2") and any length
        if not (declared.isascii() and declared.isdigit() and len(declared) <= 18):
            raise errors.HttpError(400, "Invalid Content-Length")
        length = int(declared)
        if length > self.max_body:
            raise errors.HttpError(413, "Body over %d bytes" % self.max_body)
        return method, target, version, headers, end + 4, length


def status_line(status: int) -> str:
    """``"404 Not Found"`` for ``404``."""
    try:
        return "%d %s" % (status, http.HTTPStatus(status).phrase)
    except ValueError:
        return "%d Error" % status


_compact = json.JSONEncoder(separators=(",", ":")).encode


def json_bytes(body: Any) -> bytes:
    """``body`` as the API's JSON: compact, whichever path answers (one
    encoder for all: ``json.dumps`` with separators builds one per call)."""
    return _compact(body).encode("utf-8")


def json_response(
    status: int, body: Any, headers: Iterable[tuple[str, str]] = ()
) -> tuple[str, list[tuple[str, str]], bytes]:
    """``(status, headers, bytes)`` of a JSON answer."""
    data = json_bytes(body)
    return (
        status_line(status),
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("X-Content-Type-Options", "nosniff"),
        ]
        + list(headers),
        data,
    )


def error_response(
    error: errors.HttpError,
) -> tuple[str, list[tuple[str, str]], bytes]:
    """The answer to an ``errors.HttpError``: a 503 or a 429 says when to
    retry (``Retry-After``)."""
    retry_after = error.retry_after
    headers = [("Retry-After", str(retry_after))] if retry_after else []
    return json_response(error.status, error.body, headers)


def response(
    status: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    keep_alive: bool,
    head_only: bool = False,
) -> bytes:
    """The bytes of an answer: ``status`` is a status line's text (``"200
    OK"``), ``headers`` ``(name, value)`` pairs; the framing headers
    (``Content-Length``, ``Connection``) are this function's, whatever
    ``headers`` says.  ``head_only`` (a HEAD request) leaves the body out
    but keeps its length."""
    lines = ["HTTP/1.1 " + status]
    for name, value in headers:
        if name.lower() not in _HOP_BY_HOP:
            lines.append("%s: %s" % (name, value))
    lines.append("Content-Length: %d" % len(body))
    lines.append("Connection: " + ("keep-alive" if keep_alive else "close"))
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def call_wsgi(
    app: WSGIApplication, request: Request, host: str, port: int, scheme: str
) -> tuple[str, list[tuple[str, str]], bytes]:
    """Runs ``request`` through the WSGI callable ``app``; returns
    ``(status, headers, body)`` (blocking: call it off the loop)."""
    environ: dict[str, Any] = {
        # HEAD is GET without the body (dropped when answering)
        "REQUEST_METHOD": "GET" if request.method == "HEAD" else request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": urllib.parse.unquote_to_bytes(request.path).decode("latin-1"),
        "QUERY_STRING": request.query,
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": request.version,
        "REMOTE_ADDR": request.remote,
        "CONTENT_LENGTH": str(len(request.body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": request.scheme or scheme,
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers.items():
        # "X_Token" would pass for "X-Token": such names are left out
        key = name.upper().replace("-", "_")
        if "_" in name or key == "CONTENT_LENGTH":
            continue
        environ[key if key == "CONTENT_TYPE" else "HTTP_" + key] = value
    started: list[Any] = []
    chunks: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        started[:] = [status, headers]
        return chunks.append

    result = app(environ, start_response)
    try:
        for chunk in result:
            chunks.append(chunk)
    finally:
        if hasattr(result, "close"):
            result.close()
    status, headers = started
    return status, headers, b"".join(chunks)
