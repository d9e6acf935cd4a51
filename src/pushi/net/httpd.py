"""The REST port's HTTP/1.1 server, on the WebSocket server's netius loop.

A lean parser (request line, headers, ``Content-Length`` bodies,
keep-alive, pipelining answered in order, ``Expect: 100-continue``) turns
bytes into ``Request`` objects and hands each to ``handler(request,
answer)``; ``answer(status, headers, body)`` may be called at once or
later, from the loop thread.  Publishing is a push server's hot path:
answering it on the loop that owns the sockets, with no thread hop and no
generic HTTP machinery, is what lets one process keep up with its
publishers.  ``call_wsgi`` runs any other request through a WSGI app (the
Appier app, on a thread of the caller's choosing).

Limits: an 8 KB head (431), a body of ``max_body`` bytes (413), no chunked
bodies (411); a socket is closed when a request takes over
``HEAD_TIMEOUT`` seconds to arrive whole, or when it idles between
requests for ``IDLE_TIMEOUT``.  Every refusal is a JSON answer with a reason.

A connection is read for its fair share of each loop turn
(``wire.FairReads``: ``quota`` requests at most), and not at all while its
client has a request's worth of bytes pipelined behind the answer it waits
for, or more than ``MAX_OUTPUT`` bytes of answers left unread: one answer
of any size goes out whole to a client that reads, and what it pipelined
behind waits in the kernel until it has.
"""

import http
import io
import json
import logging
import sys
import time
import urllib.parse

import netius

from pushi.proto import errors

from . import capacity, forwarded, wire

logger = logging.getLogger("pushi.http")

MAX_HEAD = 8192
MAX_BODY = 262144
HEAD_TIMEOUT = 10
IDLE_TIMEOUT = 75
MAX_OUTPUT = 1048576
""" Bytes of answers a client may leave unread before its connection is
no longer read (until it has read them) """
IDLE_CLOSABLE = 1
""" Seconds a socket has been idle before it may be closed to make room at
the cap (one that has just connected may have its request on the way) """

_HOP_BY_HOP = frozenset(("connection", "content-length", "transfer-encoding"))


class Request:
    """One parsed request; ``headers`` has lower-case names, ``remote`` is
    the client's address and ``scheme`` the one it used (None: this port's),
    as a trusted proxy says them (``forwarded``); ``received`` is when it had
    arrived whole (``time.monotonic``)."""

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
        self, method, path, query, version, headers, body, remote, scheme=None
    ):
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
    def keep_alive(self):
        tokens = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def status_line(status):
    """``"404 Not Found"`` for ``404``."""
    try:
        return "%d %s" % (status, http.HTTPStatus(status).phrase)
    except ValueError:
        return "%d Error" % status


def json_bytes(body):
    """``body`` as the API's JSON: compact, whichever path answers."""
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def json_response(status, body, headers=()):
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


class _Peer:
    """Parsing state of one connection."""

    __slots__ = (
        "connection",
        "buffer",
        "waiting",
        "advancing",
        "since",
        "continued",
        "closed",
        "refusal",
    )

    def __init__(self, connection):
        self.connection = connection
        self.buffer = b""
        self.waiting = False  # a request is being answered: parsing waits
        self.advancing = False  # _advance is on the stack
        self.since = time.monotonic()  # current request began / last answer
        self.continued = False  # "100 Continue" sent for the current request
        self.closed = False
        self.refusal = None  # over the port's cap: the 503's reason


class HttpServer(
    capacity.Admission,
    wire.FairReads,
    wire.OwnPort,
    wire.OneLogFormat,
    wire.QuietDebug,
    netius.StreamServer,
):
    """HTTP/1.1 to ``handler(request, answer)``; joins the loop of a netius
    container (``WebSocketServer.add_base``) and is bound with ``serve(...,
    start=False)`` once that loop runs.  Its sockets are capped
    (``capacity.Admission``, set with ``limit``): at the cap a new socket
    takes the place of the one idle the longest, and when none is idle its
    request is answered 503.  Every answer passes through ``_answer``,
    where ``metrics`` (a ``base.metrics.Metrics``, optional) counts those
    of a 4xx or 5xx status as refusals."""

    quota = 16
    # the proxies whose X-Forwarded-* headers are believed (``forwarded``)
    trusted_proxies = ()
    makes_room = True

    def __init__(self, handler, max_body=MAX_BODY, metrics=None, *args, **kwargs):
        netius.StreamServer.__init__(self, *args, **kwargs)
        self.handler = handler
        self.max_body = max_body
        self.metrics = metrics
        self.port_name = "REST port"
        # read by scrapes (``base/metrics``)
        self.bytes_received = 0
        self.bytes_sent = 0

    def on_serve(self):
        netius.StreamServer.on_serve(self)
        self.delay(self._sweep, timeout=HEAD_TIMEOUT / 2)

    def build_connection(self, socket, address, ssl=False):
        connection = wire.Connection(
            owner=self, socket=socket, address=address, ssl=ssl
        )
        connection.peer = _Peer(connection)
        if self.at_cap():
            self._close_idlest()
        connection.peer.refusal = self.admit(connection)
        return connection

    def make_room(self):
        # the sockets that filled the port in a burst idle past
        # IDLE_CLOSABLE while it has stopped accepting: they make room then
        return self._close_idlest()

    def _close_idlest(self):
        """Makes room for a new socket at the cap: closes the one idle the
        longest between requests (HTTP lets a server close an idle
        keep-alive connection at any time; clients open a new one), and
        says whether it found one.  A socket with a request under way, or
        with its last answer still going out, is never closed this way."""
        idlest = None
        since = time.monotonic() - IDLE_CLOSABLE
        for connection in self.connections:
            peer = getattr(connection, "peer", None)
            if peer is None or peer.waiting or peer.buffer or peer.closed:
                continue
            if connection.pending:
                # closing would cut the answer short
                continue
            if peer.refusal is None and peer.since < since:
                idlest, since = peer, peer.since
        if idlest is None:
            return False
        idlest.closed = True
        idlest.connection.close()
        return True

    def on_connection_d(self, connection):
        netius.StreamServer.on_connection_d(self, connection)
        self.release(connection)
        peer = getattr(connection, "peer", None)
        if peer is not None:
            peer.closed = True

    def on_data(self, connection, data):
        netius.StreamServer.on_data(self, connection, data)
        peer = connection.peer
        if peer.closed:
            return
        if not peer.buffer:
            peer.since = time.monotonic()
        peer.buffer += data
        if peer.waiting:
            # pipelined requests wait their turn, within bounds
            if len(peer.buffer) > MAX_HEAD + self.max_body:
                self.hold_reads(connection)
            return
        self._advance(peer)

    def on_reads_resumed(self, connection):
        peer = connection.peer
        if peer.buffer and not peer.closed:
            self._advance(peer)

    def _advance(self, peer):
        """Parses and dispatches requests until one is left waiting (a loop,
        not a recursion through answers given at once: a long pipeline of
        those would otherwise go as deep as it is long).  Runs as data
        arrives and as a pipelined request's predecessor is answered (maybe
        from another thread's answer, a turn later); a failure closes the
        connection, which would otherwise wait for an answer forever."""
        peer.advancing = True
        try:
            connection = peer.connection
            while (
                not peer.waiting
                and not peer.closed
                and peer.buffer
                and not connection.held
            ):
                try:
                    request = self._parse(peer)
                except errors.HttpError as error:
                    self._refuse(peer, error)
                    return
                if request is None:
                    return
                if peer.refusal is not None:
                    self._refuse(peer, errors.HttpError(503, peer.refusal))
                    return
                peer.waiting = True
                self.handler(request, self._answerer(peer, request))
                if not self.spend(connection, 1):
                    return
        except Exception:
            logger.exception("unexpected error on an HTTP connection; closing it")
            peer.closed = True
            peer.connection.close()
        finally:
            peer.advancing = False

    def _parse(self, peer):
        buffer = peer.buffer
        end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise errors.HttpError(431, "Request head over %d bytes" % MAX_HEAD)
            return None
        lines = buffer[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
            raise errors.HttpError(400, "Malformed request line")
        method, target, version = parts
        if not method.isalpha() or not target.startswith("/"):
            raise errors.HttpError(400, "Malformed request line")
        headers = {}
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
        length = headers.get("content-length", "0")
        # isdigit() alone takes any Unicode digit ("\u00b2") and any length
        if not (length.isascii() and length.isdigit() and len(length) <= 18):
            raise errors.HttpError(400, "Invalid Content-Length")
        length = int(length)
        if length > self.max_body:
            raise errors.HttpError(413, "Body over %d bytes" % self.max_body)
        start = end + 4
        if len(buffer) < start + length:
            expect = headers.get("expect", "").lower()
            if expect == "100-continue" and not peer.continued:
                peer.continued = True
                self._send(peer, b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        peer.buffer = buffer[start + length :]
        peer.continued = False
        path, _, query = target.partition("?")
        remote = peer.connection.address
        remote = remote[0] if isinstance(remote, tuple) else ""
        proxies = self.trusted_proxies
        return Request(
            method,
            path,
            query,
            version,
            headers,
            buffer[start : start + length],
            forwarded.client_address(remote, headers.get("x-forwarded-for"), proxies),
            forwarded.scheme(remote, headers.get("x-forwarded-proto"), proxies, None),
        )

    def _answerer(self, peer, request):
        def answer(status, headers, body):
            head_only = request.method == "HEAD"
            self._answer(peer, status, headers, body, request.keep_alive, head_only)

        return answer

    def _answer(self, peer, status, headers, body, keep_alive, head_only=False):
        if peer.closed or not peer.waiting:
            return
        if status[0] in "45" and self.metrics is not None:
            self.metrics.reject("rest", status[:3])
        lines = ["HTTP/1.1 " + status]
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                lines.append("%s: %s" % (name, value))
        lines.append("Content-Length: %d" % len(body))
        lines.append("Connection: " + ("keep-alive" if keep_alive else "close"))
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self._send(peer, head if head_only else head + body)
        peer.waiting = False
        peer.since = time.monotonic()
        connection = peer.connection
        if not keep_alive:
            peer.closed = True
            connection.close(flush=True)
        elif connection.pending_s > MAX_OUTPUT:
            # the rest once the client has read it all
            self.hold_reads(connection)
            connection.send(b"", delay=False, callback=lambda _c: self._read_up(peer))
        else:
            self.release_reads(connection)
            if peer.buffer and not peer.advancing:
                self._advance(peer)

    def _read_up(self, peer):
        if not peer.closed:
            peer.since = time.monotonic()
            self.release_reads(peer.connection)

    def _refuse(self, peer, error):
        status, headers, body = json_response(error.status, error.body)
        peer.waiting = True
        self._answer(peer, status, headers, body, False)

    def _send(self, peer, data):
        self.bytes_sent += len(data)
        wire.send(peer.connection, data)

    def _sweep(self):
        """Closes sockets stuck mid-request or idle past keep-alive."""
        # the next sweep first: a failure below must not end them
        self.delay(self._sweep, timeout=HEAD_TIMEOUT / 2)
        now = time.monotonic()
        for connection in list(self.connections):
            peer = getattr(connection, "peer", None)
            if peer is None or peer.waiting:
                continue
            # a held client has sent what it may, but not read its answers
            limit = (
                HEAD_TIMEOUT if peer.buffer and not connection.held else IDLE_TIMEOUT
            )
            if now - peer.since > limit:
                connection.close()


def call_wsgi(app, request, host, port, scheme):
    """Runs ``request`` through the WSGI callable ``app``; returns
    ``(status, headers, body)`` (blocking: call it off the loop)."""
    environ = {
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
    started = []
    chunks = []

    def start_response(status, headers, exc_info=None):
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
