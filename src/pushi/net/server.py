"""The netius WebSocket server: bytes in and out, nothing else.

Each TCP connection gets a ``Link`` that walks it through the opening
handshake, turns frames into text messages for the engine, and writes the
engine's frames.  Writes are coalesced per loop turn: a link collects the
frames written to it and ``flush`` (run at the end of every entry point of
the loop) sends them in one ``socket.send``, straight to the socket when
nothing is queued, through netius's queue only after a short write.  A
link whose queue passes ``max_buffer`` bytes is closed with 4100 (reconnect
with back-off): a slow reader costs bounded memory and never slows others.

The path ``/console`` is the debug console's stream (``base/console.py``):
such a link carries a ``watcher`` instead of a session, and its budget is
the console's much smaller one, so a console that cannot keep up is
dropped long before it costs the app's clients anything.

A socket that keeps its buffer full gets its fair share of the loop
(``wire.FairReads``: bytes and messages per turn), and pings, of either
kind, and WebSocket pongs are limited to ``PING_RATE`` a second per
socket: past it, a ``pusher:error`` and a close with 4100 (reconnect with
back-off).

Ownership: runs on the loop thread only, like the engine it drives.
"""

import collections
import enum
import logging
import re
import time

import netius

from pushi.proto import errors, messages
from pushi.proto import websocket as ws

from . import capacity, forwarded, wire

logger = logging.getLogger("pushi.net")

_PUSHER_PATH = re.compile(r"^/app/([A-Za-z0-9_\-.]+)/?\Z")
_PUSHI_PATH = re.compile(r"^/([A-Za-z0-9_\-.]+)/?\Z")
_CONSOLE_PATH = re.compile(r"^/console/?\Z")


class Phase(enum.Enum):
    """Where a connection is in its life."""

    HANDSHAKE = "handshake"  # reading the upgrade request
    WAITING = "waiting"  # upgraded: its app is looked up (or it is refused)
    OPEN = "open"  # frames flow to and from the engine
    CLOSING = "closing"  # the close is on its way; nothing more is read


HANDSHAKE, WAITING, OPEN, CLOSING = Phase

HANDSHAKE_TIMEOUT = 10
""" Seconds a new connection has to complete its WebSocket upgrade """

CLOSE_GRACE = 5
""" Seconds a closed link's last bytes (its close frame) have to go out """

PING_RATE = 10
""" Pings a socket may send in a second: WebSocket ping and pong frames
and ``pusher:ping`` messages together (clients ping after a silence,
seconds or minutes apart, and pong only when pinged) """


class Link:
    """One connection: handshake, then frames to and from the engine."""

    __slots__ = (
        "server",
        "connection",
        "phase",
        "buffer",
        "reader",
        "session",
        "outbox",
        "watcher",
        "max_buffer",
        "raw_send",
        "ping_second",
        "pings",
        "refusal",
    )

    def __init__(self, server, connection):
        self.server = server
        self.connection = connection
        self.phase = HANDSHAKE
        self.buffer = b""
        self.reader = None
        self.session = None
        self.outbox = None
        self.watcher = None
        self.max_buffer = server.max_buffer
        # the socket's own send, for the flush's fast path (not under TLS)
        self.raw_send = None if connection.ssl else connection.socket.send
        self.ping_second = 0
        self.pings = 0
        # why the server turns this socket away once it has upgraded it
        self.refusal = None

    # the transport the engine writes to

    def write(self, frame):
        """Queues a frame for this turn's write; its bytes are counted."""
        if self.phase != CLOSING:
            self.server.bytes_sent += len(frame)
        self.fan_out(frame)

    def fan_out(self, frame):
        """``write`` for the fan-out, which counts its bytes once per
        event (``Engine.deliver``), not once per socket."""
        outbox = self.outbox
        if outbox is None:
            if self.phase == CLOSING:
                return
            self.outbox = frame
            self.server.dirty.append(self)
        elif outbox.__class__ is bytes:
            self.outbox = [outbox, frame]
        else:
            outbox.append(frame)

    def close(self, code, reason=""):
        """Sends a close frame with ``code`` and closes once it is out
        (``CLOSE_GRACE`` seconds at most).  Every close the server starts
        passes here, and is counted as a refusal with its code (but the
        4200 of a stop)."""
        if self.phase == CLOSING:
            return
        if code is not None and code != errors.GOING_AWAY:
            self.server.engine.metrics.reject("socket", code)
        self._close(code, reason)

    def _close(self, code, reason=""):
        if self.phase == CLOSING:
            return
        self.write(ws.close_frame(code, reason))
        self.phase = CLOSING
        # what it was told goes before its close
        self.server.held.discard(self)
        # nothing it sends now is read: its bytes wait in the kernel
        self.server.hold_reads(self.connection)
        self._forget()
        self.server.closing.append(self)

    def hold_frames(self):
        """Keeps what is queued for this socket, and what is queued after
        it, from going out until ``release_frames`` (a flush leaves it
        queued)."""
        self.server.held.add(self)

    def release_frames(self):
        """Ends ``hold_frames``: the socket's frames go at the next flush."""
        self.server.held.discard(self)

    def pinged(self):
        """Counts a ping (a WebSocket ping or pong frame, or a
        ``pusher:ping``); past ``PING_RATE`` this second, closes the socket
        and answers False."""
        second = int(time.monotonic())
        if second != self.ping_second:
            self.ping_second = second
            self.pings = 0
        self.pings += 1
        if self.pings <= PING_RATE:
            return True
        reason = "Over %d pings a second: reconnect later" % PING_RATE
        if self.session is not None:
            self.write(ws.text_frame(messages.error(errors.TOO_MANY_PINGS, reason)))
        self.close(errors.TOO_MANY_PINGS, reason)
        return False

    def _forget(self):
        """Tells the engine (or the console) that the socket is gone; a
        failure there is logged, and the writes and closes under way go on
        (a flush that stopped halfway would leave the links after this one
        holding frames no flush would ever send)."""
        try:
            if self.session is not None:
                self.server.engine.closed(self.session)
            elif self.watcher is not None:
                self.watcher.closed()
        except Exception:
            logger.exception("forgetting a closed connection failed")

    # bytes from the socket

    def feed(self, data):
        if self.phase == OPEN:
            self._frames(data)
        elif self.phase == HANDSHAKE:
            self._handshake(data)
        elif self.phase == WAITING:
            self.buffer += data
            if len(self.buffer) > ws.MAX_MESSAGE + ws.MAX_HANDSHAKE:
                self.connection.close()

    def _handshake(self, data):
        self.buffer += data
        try:
            handshake, consumed = ws.parse_handshake(self.buffer)
        except ws.HandshakeError as error:
            self._refuse(error.status, error.reason)
            return
        if handshake is None:
            return
        self.buffer = self.buffer[consumed:]
        address = self.server.client_address(self.connection, handshake.headers)
        if self.refusal is None:
            self.refusal = self.server.readmit(self.connection, address)
        if self.refusal is not None:
            self.phase = WAITING
            self._raw(ws.accept_response(handshake))
            self.reader = ws.FrameReader()
            self._reject(errors.OVER_CAPACITY, self.refusal)
            return
        if self.server.console is not None and _CONSOLE_PATH.match(handshake.path):
            self._watch(handshake)
            return
        match = _PUSHER_PATH.match(handshake.path)
        dialect = messages.PUSHER
        if match is None:
            match = _PUSHI_PATH.match(handshake.path)
            dialect = messages.PUSHI
        self.phase = WAITING
        self._raw(ws.accept_response(handshake))
        self.reader = ws.FrameReader()
        if match is None:
            self._reject(errors.BAD_PATH, "Unknown path: connect to /app/<key>")
            return
        if dialect == messages.PUSHER:
            protocol = handshake.query.get("protocol", "")
            if protocol not in ("5", "6", "7"):
                self._reject(errors.BAD_PROTOCOL, "Unsupported protocol version")
                return
        key = match.group(1)
        origin = handshake.headers.get("origin")
        app = self.server.apps.by_key(key)
        if app is not None:
            self._start(app, dialect, origin, address, key)
        else:
            self.server.offload(
                lambda: self.server.apps.load_key(key),
                lambda app: self._start(app, dialect, origin, address, key),
            )

    def _start(self, app, dialect, origin, address, key):
        if self.phase != WAITING or self.connection.is_closed():
            return
        # an app loaded off the loop may have changed since (a key revoked
        # meanwhile): the directory holds the newest
        if app is not None:
            app = self.server.apps.by_id(app.app_id) or app
        refusal = self.server.admit_app(app, key, origin)
        if refusal is not None:
            self._reject(*refusal)
            return
        # counted against the app's quota of every node (a cluster's)
        self.server.engine.admit(
            app,
            lambda refusal, counted: self._open(
                app, dialect, origin, address, key, refusal, counted
            ),
        )

    def _open(self, app, dialect, origin, address, key, refusal, counted):
        if self.phase != WAITING or self.connection.is_closed():
            if counted:
                # gone while it was counted
                self.server.engine.uncount(app)
            return
        if refusal is not None:
            self._reject(*refusal)
            return
        self.phase = OPEN
        self.session = self.server.engine.open(
            self, app, dialect, origin, address, key, counted=counted
        )
        if self.buffer:
            data, self.buffer = self.buffer, b""
            self._frames(data)

    def _watch(self, handshake):
        """Makes this link a debug console stream (see ``base/console``)."""
        self._raw(ws.accept_response(handshake))
        self.reader = ws.FrameReader()
        self.phase = OPEN
        self.max_buffer = self.server.console.max_buffer
        self.watcher = self.server.console.connect(self)
        if self.buffer:
            data, self.buffer = self.buffer, b""
            self._frames(data)

    def _frames(self, data):
        """Handles the messages in ``data`` and those held back, as many as
        the turn's quota allows (the rest wait in the reader for
        ``resume_reads``)."""
        server = self.server
        reader = self.reader
        assert reader is not None  # made as the link opens
        try:
            frames = reader.feed(data, self.connection.quota)
        except ws.WebSocketError as error:
            logger.debug("protocol violation: %s", error.reason)
            self.close(error.code, error.reason)
            return
        server.spend(self.connection, len(frames))
        if reader.started is not None:
            server.unfinished.add(self)
        engine = server.engine
        for opcode, payload in frames:
            if self.phase != OPEN:
                return
            if opcode == ws.OP_TEXT:
                if self.watcher is not None:
                    self.watcher.receive(payload)
                else:
                    engine.receive(self.session, payload)
            elif opcode == ws.OP_PING:
                if not self.pinged():
                    return
                self.write(ws.encode_frame(ws.OP_PONG, payload))
                if self.session is not None:
                    self.session.last_seen = time.monotonic()
            elif opcode == ws.OP_PONG:
                if not self.pinged():
                    return
                if self.session is not None:
                    self.session.last_seen = time.monotonic()
                    self.session.ping_sent = None
            elif opcode == ws.OP_CLOSE:
                try:
                    code, _reason = ws.parse_close(payload)
                except ws.WebSocketError as error:
                    self.close(error.code, error.reason)
                    return
                logger.debug(
                    "client closed %s with %d",
                    self.session and self.session.socket_id,
                    code,
                )
                # the client's close, answered: no refusal
                self._close(None if code == ws.CLOSE_NO_STATUS else code)
            else:
                self.write(
                    ws.text_frame(
                        messages.error(
                            errors.INVALID_MESSAGE, "Binary messages are not supported"
                        )
                    )
                )

    def _reject(self, code, message):
        self.write(ws.text_frame(messages.error(code, message)))
        self.close(code, message)

    def _refuse(self, status, reason):
        self.server.engine.metrics.reject("handshake", status)
        self._raw(ws.reject_response(status, reason))
        self.phase = CLOSING
        self.server.hold_reads(self.connection)
        self.server.closing.append(self)

    def _raw(self, data):
        self.write(data)

    # bytes to the socket

    def send_now(self, data):
        connection = self.connection
        if not wire.send(connection, data):
            return
        if connection.pending_s > self.max_buffer and self.phase != CLOSING:
            # the close frame queues behind what is pending: the client sees
            # 4100 if it reads again within the close's grace time
            if self.watcher is not None:
                logger.info("slow console of app %s dropped", self.watcher.app_id)
            else:
                self.server.engine.metrics.slow_consumers += 1
                logger.info(
                    "slow consumer %s disconnected",
                    self.session and self.session.socket_id,
                )
            self.close(errors.SLOW_CONSUMER, "Slow consumer: reconnect")


class WebSocketServer(
    capacity.Admission,
    wire.FairReads,
    wire.PlainAccept,
    wire.OwnPort,
    wire.OneLogFormat,
    wire.QuietDebug,
    netius.ContainerServer,
):
    """Netius stream server speaking WebSocket to the engine; the owner of
    the loop, which other servers join with ``add_base`` (the REST port's
    ``httpd.HttpServer``).  Its sockets are capped (``capacity.Admission``,
    set with ``limit``): one over the cap is upgraded, then closed with
    4100.

    ``apps`` resolves keys (``by_key`` from memory, ``load_key`` from the
    store off the loop); ``offload(work, then)`` runs ``work`` on a worker
    thread and ``then(result)`` back on the loop; ``admit_app(app, key,
    origin)`` says whether an upgraded socket may join the app its key
    names (``app``, None if none does): None if it may, else the ``(code,
    message)`` it is closed with (the policy is ``base.access.Access``'s
    ``admit_socket``); ``console`` (a ``ConsoleHub``, optional) serves the
    ``/console`` path.
    """

    def __init__(
        self,
        engine,
        apps,
        offload,
        admit_app,
        max_buffer=1048576,
        console=None,
        *args,
        **kwargs,
    ):
        # what netius.ContainerServer.__init__ does, with our loop
        netius.StreamServer.__init__(self, *args, **kwargs)
        self.container = wire.Loop(*args, **kwargs)
        self.add_base(self)
        self.connections = wire.Connections()
        self.engine = engine
        self.console = console
        self.admit_app = admit_app
        self.apps = apps
        self.offload = offload
        self.max_buffer = max_buffer
        self.dirty = []
        # links whose frames wait (``Link.hold_frames``): a flush keeps them dirty
        self.held: set[Link] = set()
        self.closing = []
        # (deadline, link) of each socket accepted in the last
        # HANDSHAKE_TIMEOUT seconds, oldest first
        self.handshakes: collections.deque[tuple[float, Link]] = collections.deque()
        # the links whose reader may hold an unfinished message
        self.unfinished = set()
        self.start_callbacks = []
        self.port_name = "WebSocket port"
        # read by scrapes (``base/metrics``); the fan-out's bytes are the
        # engine's (``Metrics.fan_out_bytes``)
        self.bytes_received = 0
        self.bytes_sent = 0

    def client_address(self, connection, headers):
        """The address of a socket's client: the peer's, or the one a
        trusted proxy names in ``X-Forwarded-For`` (``forwarded``)."""
        address = connection.address
        peer = address[0] if isinstance(address, tuple) else ""
        return forwarded.client_address(
            peer, headers.get("x-forwarded-for"), self.trusted_proxies
        )

    def on_serve(self):
        netius.ContainerServer.on_serve(self)
        self.nensure()
        self._handshake_deadlines()
        self._message_deadlines()
        for callback in self.start_callbacks:
            callback()

    def build_connection(self, socket, address, ssl=False):
        # positional: a class called with keywords builds a dict of them
        connection = wire.Connection(self, socket, address, False, ssl)
        link = connection.link = Link(self, connection)
        link.refusal = self.admit(connection)
        # every socket gets the same time, so the queue is in deadline order
        # (cheaper than a netius timer each, in its heap of Python-compared
        # entries)
        self.handshakes.append((time.monotonic() + HANDSHAKE_TIMEOUT, link))
        return connection

    def _handshake_deadlines(self):
        """Closes the sockets that have not completed their upgrade in
        time; runs every second."""
        # the next run first: a failure below must not end them
        self.delay(self._handshake_deadlines, timeout=1)
        now = time.monotonic()
        handshakes = self.handshakes
        while handshakes and handshakes[0][0] <= now:
            _deadline, link = handshakes.popleft()
            if link.phase in (HANDSHAKE, WAITING) and not link.connection.is_closed():
                link.connection.close()

    def _message_deadlines(self):
        """Closes with 1008 the sockets whose unfinished message began more
        than ``MESSAGE_TIMEOUT`` seconds ago (a client that answers pings
        between fragments would hold its partial message forever); runs
        every second over the few links that hold one."""
        self.delay(self._message_deadlines, timeout=1)
        if not self.unfinished:
            return
        oldest = time.monotonic() - ws.MESSAGE_TIMEOUT
        for link in list(self.unfinished):
            started = link.reader.started
            if started is None or link.phase != OPEN:
                self.unfinished.discard(link)
            elif started <= oldest:
                self.unfinished.discard(link)
                logger.debug("message not finished in time")
                link.close(ws.CLOSE_POLICY_VIOLATION, "Message not finished in time")
        self.flush()

    def on_connection_d(self, connection):
        super().on_connection_d(connection)
        self.release(connection)
        link = getattr(connection, "link", None)
        if link is not None:
            self.held.discard(link)
            link._forget()
            link.phase = CLOSING
            self.flush()
            # the references both ways (connection and link, link and
            # session) cut: a closed socket's objects are freed at once,
            # not left to the garbage collector
            link.session = None
            connection.link = None

    def on_data(self, connection, data):
        # netius's would only trigger a "data" event, which nothing here
        # listens to
        self._feed(connection.link, data)

    def on_reads_resumed(self, connection):
        link = connection.link
        if link.phase == OPEN:
            self._feed(link, b"")

    def _feed(self, link, data):
        try:
            link.feed(data)
        except Exception:
            logger.exception("unexpected error on a connection; closing it")
            link.close(ws.CLOSE_INTERNAL_ERROR, "Internal error")
        self.flush()

    def flush(self):
        """Writes what every link collected this turn, then closes the
        links that asked to, once their last bytes are out (or after
        ``CLOSE_GRACE`` seconds, for a client that stopped reading)."""
        # a link closed while its frames go out (a slow consumer) is dirty
        # again with its close frame, which goes before the close
        held = self.held
        kept = []
        while self.dirty:
            dirty = self.dirty
            self.dirty = []
            if held:
                kept += [link for link in dirty if link in held]
                dirty = [link for link in dirty if link not in held]
            for link in dirty:
                outbox = link.outbox
                link.outbox = None
                data = outbox if outbox.__class__ is bytes else b"".join(outbox)
                # the common case inline (a fan-out's cost per socket is
                # this loop plus the kernel's send): nothing queued before
                # it, and the whole frame taken at once
                if link.raw_send is None or link.connection.pending:
                    link.send_now(data)
                    continue
                try:
                    sent = link.raw_send(data)
                except OSError:
                    sent = 0
                if sent != len(data):
                    link.send_now(data[sent:])
        if kept:
            self.dirty = kept
        closing = self.closing
        if closing:
            self.closing = []
            for link in closing:
                connection = link.connection
                connection.close(flush=True)
                if connection.status == netius.OPEN:
                    # bytes still queued behind which netius waits to close
                    self.delay(connection.close, timeout=CLOSE_GRACE)

    def run(self, work, *args):
        """Runs ``work`` on the loop as an entry point, then flushes; a
        failure is logged, and the loop goes on."""
        try:
            return work(*args)
        except Exception:
            logger.exception("loop work failed")
        finally:
            self.flush()

    def soon(self, work, *args):
        """Runs ``work(*args)`` as an entry point at the loop's next turn;
        from any thread (the loop's ``soon`` deque, then a wake-up of its
        poll, a no-op on the loop's own thread)."""
        self.container.soon.append(lambda: self.run(work, *args))
        self.wakeup()
