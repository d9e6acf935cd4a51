"""The REST port's HTTP/1.1 server, on the WebSocket server's netius loop.

The socket side of ``proto.http``: each connection's bytes go to its
``RequestParser`` (request line, headers, ``Content-Length`` bodies,
keep-alive, ``Expect: 100-continue``), and each ``Request`` to
``handler(request, answer)``, pipelined ones in order; ``answer(status,
headers, body)`` may be called at once or later, from the loop thread.
Publishing is a push server's hot path: answering it on the loop that owns
the sockets, with no thread hop and no generic HTTP machinery, is what
lets one process keep up with its publishers.

Limits: those of ``proto.http`` (head, body, no chunked bodies); a socket
is closed when a request takes over ``HEAD_TIMEOUT`` seconds to arrive
whole, or when it idles between requests for ``IDLE_TIMEOUT``.  Every
refusal is a JSON answer with a reason.

A connection is read for its fair share of each loop turn
(``wire.FairReads``: ``quota`` requests at most), and not at all while its
client has a request's worth of bytes pipelined behind the answer it waits
for, or more than ``MAX_OUTPUT`` bytes of answers left unread: one answer
of any size goes out whole to a client that reads, and what it pipelined
behind waits in the kernel until it has.
"""

import logging
import time

import netius

from pushi.proto import errors, http

from . import capacity, forwarded, wire

logger = logging.getLogger("pushi.http")

MAX_HEAD = http.MAX_HEAD
MAX_BODY = http.MAX_BODY
HEAD_TIMEOUT = 10
IDLE_TIMEOUT = 75
MAX_OUTPUT = 1048576
""" Bytes of answers a client may leave unread before its connection is
no longer read (until it has read them) """
IDLE_CLOSABLE = 1
""" Seconds a socket has been idle before it may be closed to make room at
the cap (one that has just connected may have its request on the way) """


class _Peer:
    """Parsing state of one connection."""

    __slots__ = (
        "connection",
        "parser",
        "waiting",
        "advancing",
        "since",
        "closed",
        "refusal",
    )

    def __init__(self, connection, max_body):
        self.connection = connection
        self.parser = http.RequestParser(max_body)
        self.waiting = False  # a request is being answered: parsing waits
        self.advancing = False  # _advance is on the stack
        self.since = time.monotonic()  # current request began / last answer
        self.closed = False
        self.refusal = None  # over the port's cap: the 503's reason

    @property
    def buffer(self):
        """The bytes received and not parsed yet."""
        return self.parser.buffer


class HttpServer(
    capacity.Admission,
    wire.FairReads,
    wire.PlainAccept,
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
        connection.peer = _Peer(connection, self.max_body)
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
        super().on_connection_d(connection)
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
        peer.parser.feed(data)
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
        """The next whole request of ``peer`` (None until it has arrived),
        with the client's address and scheme as a trusted proxy says them;
        answers ``100 Continue`` to a client that waits for it."""
        request = peer.parser.next_request()
        if request is http.CONTINUE:
            self._send(peer, request)
            return None
        if request is None:
            return None
        remote = peer.connection.address
        remote = remote[0] if isinstance(remote, tuple) else ""
        headers = request.headers
        proxies = self.trusted_proxies
        request.remote = forwarded.client_address(
            remote, headers.get("x-forwarded-for"), proxies
        )
        request.scheme = forwarded.scheme(
            remote, headers.get("x-forwarded-proto"), proxies, None
        )
        return request

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
        self._send(peer, http.response(status, headers, body, keep_alive, head_only))
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
        status, headers, body = http.json_response(error.status, error.body)
        peer.waiting = True
        self._answer(peer, status, headers, body, False)

    def _send(self, peer, data):
        self.bytes_sent += len(data)
        wire.send(peer.connection, data)

    def _sweep(self):
        """Closes sockets stuck mid-request (with a 408 that says so) or
        idle past keep-alive."""
        # the next sweep first: a failure below must not end them
        self.delay(self._sweep, timeout=HEAD_TIMEOUT / 2)
        now = time.monotonic()
        for connection in list(self.connections):
            peer = getattr(connection, "peer", None)
            if peer is None or peer.waiting:
                continue
            # a held client has sent what it may, but not read its answers
            stuck = peer.buffer and not connection.held
            if now - peer.since <= (HEAD_TIMEOUT if stuck else IDLE_TIMEOUT):
                continue
            if stuck:
                late = "Request not received whole within %d s" % HEAD_TIMEOUT
                self._refuse(peer, errors.HttpError(408, late))
            else:
                connection.close()
