"""A load process: subscribers and/or a trigger client on one epoll loop.

Run as ``python -m bench.worker`` (with the repository and its ``src`` on
the path).  It is driven by its parent through JSON lines: one command a
line on stdin, one answer a line on stdout.  Commands:

* ``connect``: open ``n`` WebSocket connections (at most ``concurrency``
  handshakes at once), optionally subscribe each, answer when all are ready
  or failed or ``timeout`` passed.  With ``sources``, the connections are
  bound to those local addresses in turn, ``per_source`` on each (the
  kernel's search for a free port stays short).  ``sample`` of them parse
  every message as JSON (latency from the payload timestamp, sequence
  numbers for loss and duplicates); the others only count frames from their
  headers.
* ``reset``: optionally send ``pusher:ping`` on every socket (keeps servers
  with an activity timeout happy), wait ``settle`` seconds, zero counters.
* ``idle``: for ``duration`` seconds, every open socket sends
  ``pusher:ping`` every ``interval`` seconds as pusher-js does after a
  silence, at phases spread over the interval; answers with the pings sent.
* ``stats``: frames counted so far, time of the last one, sockets open.
* ``samples``: what the sampled subscribers saw.
* ``trigger``: run a bounded trigger loop over keep-alive HTTP/1.1
  connections (closed loop with ``inflight`` requests, or open loop at
  ``rate`` per second) and answer with counts, latencies and accepted
  sequence numbers per channel.  ``per_request`` channels in each request
  (Pusher's ``channels``, the next ones of ``channels`` in turn), and
  ``stamp: "due"`` for an open loop's payload
  time set to when the request was due rather than when it left (a
  publisher held up by the server is then seen in the latency).
* ``close``, ``exit``.

Everything stops by itself: each command has a time bound, and the process
exits when its stdin closes (the parent went away).
"""

import errno
import json
import os
import random
import resource
import select
import socket
import sys
import time

from pushi.proto import websocket

from . import stats, wire


def read_commands(fd, buffer):
    """Reads what the parent wrote on ``fd`` (one JSON command a line).
    Returns ``(commands, rest of the buffer, still open)``."""
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return [], buffer, True
    if not data:
        return [], buffer, False
    buffer += data
    commands = []
    while b"\n" in buffer:
        line, buffer = buffer.split(b"\n", 1)
        if line.strip():
            commands.append(json.loads(line))
    return commands, buffer, True


RECV_SIZE = 262144
#: what every socket of the process reads into (one thread): a fresh
#: RECV_SIZE buffer per read, shrunk to what came, makes malloc give memory
#: back and fault it in again on every read, depending on the heap's layout
RECV_BUFFER = bytearray(RECV_SIZE)
RECV_VIEW = memoryview(RECV_BUFFER)
EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
ERRMASK = select.EPOLLERR | select.EPOLLHUP

CONNECTING, HANDSHAKE, WAIT_ESTABLISHED, SUBSCRIBING, READY, CLOSED = range(6)

monotonic = time.monotonic

#: Linux's IP_BIND_ADDRESS_NO_PORT (not named by Python's socket module)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def receive(sock, lost, closed):
    """What a non-blocking ``sock`` has to read, or None: when nothing has
    arrived yet, or when the socket is gone, after ``lost(reason)`` (with
    ``closed`` as the reason of an orderly close)."""
    try:
        size = sock.recv_into(RECV_BUFFER)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError as exception:
        lost("recv: %s" % exception)
        return None
    if not size:
        lost(closed)
        return None
    return RECV_VIEW[:size].tobytes()


def node_of(socket_id):
    """The server process a socket id names: its part before the dot
    (Pushi's node, one worker of ``PUSHI_WORKERS``), "?" when it has
    none."""
    node, dot, _rest = str(socket_id).partition(".")
    return node if dot else "?"


def raise_nofile():
    """Raises the open-files soft limit to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Sub:
    """One subscriber WebSocket connection."""

    __slots__ = (
        "worker",
        "sock",
        "fd",
        "state",
        "buf",
        "counter",
        "sampled",
        "channel",
        "subscribe",
        "seqs",
        "lats",
        "task",
        "error",
        "activity_timeout",
        "node",
    )

    def __init__(self, worker, task, channel, subscribe, sampled, source=None):
        self.worker = worker
        self.task = task
        self.channel = channel
        self.subscribe = subscribe
        self.sampled = sampled
        self.state = CONNECTING
        self.buf = bytearray()
        self.counter = wire.FrameCounter()
        self.seqs = []
        self.lats = []
        self.error = None
        self.activity_timeout = None
        self.node = "?"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.setblocking(False)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if source is not None:
                # the port is chosen at connect, for this destination only
                self.sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                self.sock.bind((source, 0))
            self.fd = self.sock.fileno()
            code = self.sock.connect_ex((task.host, task.port))
            if code not in (0, errno.EINPROGRESS):
                raise OSError(code, os.strerror(code))
        except OSError:
            self.sock.close()
            raise
        worker.register(self, EPOLLOUT)

    def on_event(self, events):
        """Handles readiness of the socket."""
        if self.state == READY:
            self.on_ready()
            return
        if self.state == CONNECTING:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.fail("connect: %s" % os.strerror(code))
                return
            self.sock.send(self.task.handshake)
            self.state = HANDSHAKE
            self.worker.ep.modify(self.fd, EPOLLIN)
            return
        data = receive(self.sock, self.fail, "closed during setup")
        if data is None:
            return
        self.buf += data
        if self.state == HANDSHAKE:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 16384:
                    self.fail("handshake too long")
                return
            status = bytes(self.buf[:end]).split(b"\r\n", 1)[0]
            if b" 101" not in status:
                self.fail("handshake: %s" % status.decode("latin-1"))
                return
            del self.buf[: end + 4]
            self.state = WAIT_ESTABLISHED
        self.on_setup_frames()

    def on_setup_frames(self):
        """Reads the setup messages (connection, subscription) in full."""
        frames, used = wire.parse_frames(self.buf)
        del self.buf[:used]
        for index, (_fin, opcode, payload) in enumerate(frames):
            if opcode != websocket.OP_TEXT:
                if opcode == websocket.OP_CLOSE:
                    self.fail("closed by server during setup")
                    return
                continue
            try:
                message = json.loads(payload)
                event = message.get("event")
            except ValueError:
                continue
            if event == "pusher:error":
                self.fail("pusher:error %s" % payload[:200].decode("utf-8", "replace"))
                return
            if self.state == WAIT_ESTABLISHED and event == (
                "pusher:connection_established"
            ):
                data = message.get("data")
                try:
                    data = json.loads(data) if isinstance(data, str) else data
                    self.node = node_of(data.get("socket_id"))
                    self.activity_timeout = float(data["activity_timeout"])
                except (ValueError, TypeError, KeyError, AttributeError):
                    pass
                if self.subscribe:
                    message = json.dumps(
                        {"event": "pusher:subscribe", "data": {"channel": self.channel}}
                    )
                    self.sock.send(wire.encode_frame(message))
                    self.state = SUBSCRIBING
                else:
                    self.state = READY
            elif self.state == SUBSCRIBING and event in (
                "pusher_internal:subscription_succeeded",
                "pusher:subscription_succeeded",
            ):
                self.state = READY
            if self.state == READY:
                self.task.on_ready(self)
                if self.sampled:
                    for _f, op, pay in frames[index + 1 :]:
                        self.on_sample_frame(op, pay)
                else:
                    self.worker.frames += sum(
                        1 for fin, op, _p in frames[index + 1 :] if fin and op < 8
                    )
                    if self.buf:
                        self.worker.frames += self.counter.feed(bytes(self.buf))
                    self.buf = bytearray()
                return

    def on_ready(self):
        """Hot path: counts frames, or parses them for a sampled socket."""
        data = receive(self.sock, self.close, "closed by server")
        if data is None:
            return
        worker = self.worker
        if self.sampled:
            self.buf += data
            frames, used = wire.parse_frames(self.buf)
            del self.buf[:used]
            for _fin, opcode, payload in frames:
                self.on_sample_frame(opcode, payload)
            return
        counter = self.counter
        count = counter.feed(data)
        if count:
            worker.frames += count
            worker.last_t = monotonic()
        if counter.pings:
            for payload in counter.pings:
                self.send_quiet(wire.encode_frame(payload, websocket.OP_PONG))
            counter.pings = []

    def on_sample_frame(self, opcode, payload):
        """Records sequence number and latency of one bench message."""
        if opcode == websocket.OP_TEXT:
            now = monotonic()
            try:
                message = json.loads(payload)
            except ValueError:
                return
            if message.get("event") != "bench":
                return
            data = message.get("data")
            if isinstance(data, str):
                data = json.loads(data)
            self.seqs.append(data["s"])
            self.lats.append(now - data["t"])
            self.worker.frames += 1
            self.worker.last_t = now
        elif opcode == websocket.OP_PING:
            self.send_quiet(wire.encode_frame(payload, websocket.OP_PONG))
        elif opcode == websocket.OP_CLOSE:
            self.close("close frame")

    def send_quiet(self, data):
        """Sends small control data, ignoring a full buffer."""
        try:
            self.sock.send(data)
        except OSError:
            pass

    def fail(self, error):
        """Marks a setup failure."""
        self.error = error
        self.close(error)
        self.task.on_failed(self)

    def close(self, reason=None):
        """Closes the socket."""
        if self.state == CLOSED:
            return
        if self.state == READY and reason:
            self.worker.unexpected_closes += 1
            self.worker.close_reasons[reason] = (
                self.worker.close_reasons.get(reason, 0) + 1
            )
        self.state = CLOSED
        self.worker.unregister(self)
        try:
            self.sock.close()
        except OSError:
            pass


class ConnectTask:
    """Opens and sets up a batch of subscriber connections."""

    def __init__(self, worker, cmd):
        self.worker = worker
        self.cmd = cmd
        self.host = cmd.get("host", "127.0.0.1")
        self.port = int(cmd["port"])
        self.handshake = wire.handshake_request(self.host, self.port, cmd["path"])
        self.n = int(cmd["n"])
        self.concurrency = int(cmd.get("concurrency", 64))
        self.sources = cmd.get("sources") or [None]
        self.per_source = int(cmd.get("per_source", 2000))
        self.subscribe = bool(cmd.get("subscribe", True))
        sample = cmd.get("sample", 0)
        self.sample_all = sample == "all"
        sample = self.n if self.sample_all else min(int(sample), self.n)
        stride = max(1, self.n // sample) if sample else 0
        self.sampled = set(range(0, stride * sample, stride)) if sample else set()
        self.deadline = monotonic() + float(cmd.get("timeout", 60))
        self.next_index = 0
        self.pending = set()
        self.ready = 0
        self.failed = 0
        self.errors = {}
        # ready connections by the server process that holds them
        self.nodes = {}
        self.t_start = monotonic()
        self.t_end = None
        self.done = False

    def channel_for(self, index):
        """Returns the channel of the connection at ``index``."""
        if "channel" in self.cmd:
            return self.cmd["channel"]
        return "%s%d" % (self.cmd["channel_prefix"], self.cmd.get("offset", 0) + index)

    def tick(self, now):
        """Starts connections up to the concurrency limit; finishes."""
        if self.done:
            return
        while len(self.pending) < self.concurrency and self.next_index < self.n:
            index = self.next_index
            self.next_index += 1
            try:
                sub = Sub(
                    self.worker,
                    self,
                    self.channel_for(index),
                    self.subscribe,
                    index in self.sampled,
                    self.sources[index // self.per_source % len(self.sources)],
                )
            except OSError as exception:
                self.count_error("socket: %s" % exception)
                continue
            self.pending.add(sub)
        if now > self.deadline:
            for sub in list(self.pending):
                sub.fail("timeout")
        if self.next_index >= self.n and not self.pending:
            self.finish()

    def next_wakeup(self):
        """Seconds until this task wants a tick."""
        return 0.05

    def on_ready(self, sub):
        """A connection is set up."""
        self.pending.discard(sub)
        self.ready += 1
        self.nodes[sub.node] = self.nodes.get(sub.node, 0) + 1
        self.worker.subs.append(sub)
        self.t_end = monotonic()

    def on_failed(self, sub):
        """A connection failed during setup."""
        if sub in self.pending:
            self.pending.discard(sub)
            self.count_error(sub.error)

    def count_error(self, error):
        """Counts one setup failure by reason."""
        self.failed += 1
        key = (error or "?")[:80]
        self.errors[key] = self.errors.get(key, 0) + 1

    def finish(self):
        """Answers the parent."""
        self.done = True
        self.worker.reply(
            {
                "ready": self.ready,
                "failed": self.failed,
                "errors": self.errors,
                "nodes": self.nodes,
                "t_start": self.t_start,
                "t_end": self.t_end or monotonic(),
            }
        )


class ResetTask:
    """Optionally pings every socket, lets answers arrive, zeroes counters."""

    def __init__(self, worker, cmd):
        self.worker = worker
        self.settled = monotonic() + float(cmd.get("settle", 0.5))
        self.deadline = self.settled + float(cmd.get("max_wait", 5.0))
        self.done = False
        self.until = worker.frames
        if cmd.get("ping"):
            frame = wire.encode_frame('{"event":"pusher:ping","data":{}}')
            for sub in worker.subs:
                if sub.state == READY:
                    sub.send_quiet(frame)
                    if not sub.sampled:
                        # counting sockets will count the pong as a frame
                        self.until += 1

    def tick(self, now):
        """Zeroes the counters once settled and every pong is in (or the
        wait is over)."""
        if self.done or now < self.settled:
            return
        if self.worker.frames < self.until and now < self.deadline:
            return
        self.done = True
        worker = self.worker
        worker.frames = 0
        worker.last_t = 0.0
        for sub in worker.subs:
            sub.seqs = []
            sub.lats = []
        worker.reply({"reset": True})

    def next_wakeup(self):
        """Seconds until this task wants a tick."""
        return min(0.05, max(0.0, self.settled - monotonic()))


class IdleTask:
    """Keeps the sockets open and pinging as pusher-js does: each sends
    ``pusher:ping`` every ``interval`` seconds (by default pusher-js's:
    the ``activity_timeout`` its server announced, 120 at most, a tenth
    less so that the server never pings first), the first at a phase
    spread over the interval (sockets opened together do not ping
    together)."""

    def __init__(self, worker, cmd):
        self.worker = worker
        timeouts = [sub.activity_timeout for sub in worker.subs if sub.activity_timeout]
        announced = min(timeouts) if timeouts else 120.0
        self.interval = float(cmd.get("interval") or 0.9 * min(announced, 120.0))
        now = monotonic()
        self.deadline = now + float(cmd.get("duration", 60))
        self.frame = wire.encode_frame('{"event":"pusher:ping","data":{}}')
        subs = [sub for sub in worker.subs if sub.state == READY]
        rng = random.Random(cmd.get("seed", 1))
        self.due = sorted(
            (now + rng.random() * self.interval, index) for index in range(len(subs))
        )
        self.subs = subs
        self.next = 0
        self.pings = 0
        self.done = False

    def tick(self, now):
        """Sends the pings that are due; answers at the deadline."""
        if self.done:
            return
        while self.next < len(self.due) and self.due[self.next][0] <= now:
            sub = self.subs[self.due[self.next][1]]
            if sub.state == READY:
                sub.send_quiet(self.frame)
                self.pings += 1
            self.next += 1
            if self.next == len(self.due):
                # the next round, same phases
                self.due = [(due + self.interval, i) for due, i in self.due]
                self.next = 0
        if now >= self.deadline:
            self.done = True
            self.worker.reply(
                {
                    "pings": self.pings,
                    "interval": self.interval,
                    "open": sum(1 for sub in self.worker.subs if sub.state == READY),
                    "unexpected_closes": self.worker.unexpected_closes,
                    "close_reasons": self.worker.close_reasons,
                }
            )

    def next_wakeup(self):
        """Seconds until this task wants a tick."""
        if self.next < len(self.due):
            return max(0.0, min(0.1, self.due[self.next][0] - monotonic()))
        return 0.1


class HttpConn:
    """One keep-alive HTTP/1.1 client connection of a trigger task."""

    __slots__ = ("task", "sock", "fd", "connected", "busy", "buf", "sent_at", "meta")

    def __init__(self, task):
        self.task = task
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fd = self.sock.fileno()
        self.connected = False
        self.busy = False
        self.buf = bytearray()
        self.sent_at = 0.0
        self.meta = None
        code = self.sock.connect_ex((task.host, task.port))
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, os.strerror(code))
        task.worker.register(self, EPOLLOUT)

    def on_event(self, events):
        """Handles connect completion and responses."""
        if not self.connected:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.task.on_broken(self, "connect: %s" % os.strerror(code))
                return
            self.connected = True
            self.task.worker.ep.modify(self.fd, EPOLLIN)
            self.task.on_idle(self)
            return
        data = receive(
            self.sock,
            lambda reason: self.task.on_broken(self, reason),
            "closed by server",
        )
        if data is None:
            return
        self.buf += data
        self.parse()

    def parse(self):
        """Completes the response in the buffer, if it is whole."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self.task.on_broken(self, "bad status line")
            return
        headers = {}
        for line in lines[1:]:
            name, _sep, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        start = end + 4
        if "content-length" in headers:
            stop = start + int(headers["content-length"])
            if len(self.buf) < stop:
                return
        elif "chunked" in headers.get("transfer-encoding", ""):
            stop = chunked_end(self.buf, start)
            if stop < 0:
                return
        else:
            stop = start
        body = bytes(self.buf[start:stop])
        del self.buf[:stop]
        self.busy = False
        keep = headers.get("connection") != "close"
        self.task.on_response(self, status, body, keep)

    def send(self, data, meta):
        """Sends one request (small: it fits in the socket buffer)."""
        self.busy = True
        self.meta = meta
        self.sent_at = monotonic()
        self.sock.send(data)

    def close(self):
        """Closes the connection."""
        self.task.worker.unregister(self)
        try:
            self.sock.close()
        except OSError:
            pass


def chunked_end(buffer, start):
    """Returns the end index of a chunked body starting at ``start`` in
    ``buffer``, or -1 when it is not complete yet (trailers not supported)."""
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return -1
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            return pos + 2 if len(buffer) >= pos + 2 else -1
        pos += size + 2
        if pos > len(buffer):
            return -1


class TriggerTask:
    """A bounded trigger loop: closed (``inflight`` requests outstanding) or
    open loop (``rate`` requests per second, at most ``inflight`` at once)."""

    def __init__(self, worker, cmd):
        self.worker = worker
        self.host = cmd.get("host", "127.0.0.1")
        self.port = int(cmd["port"])
        self.style = cmd.get("style", "pusher")
        self.app_id = cmd.get("app_id")
        self.key = cmd.get("key")
        self.secret = cmd.get("secret")
        self.sid = cmd.get("sid")
        self.channels = cmd.get("channels") or [cmd.get("channel", "bench")]
        self.per_request = int(cmd.get("per_request", 1))
        self.stamp_due = cmd.get("stamp") == "due" and bool(cmd.get("rate"))
        self.inflight = int(cmd.get("inflight", 1))
        self.rate = cmd.get("rate")
        self.max_count = int(cmd.get("max_count", 10**9))
        self.duration = float(cmd.get("duration", 10))
        self.pad = "x" * int(cmd.get("pad", 0))
        self.seq = int(cmd.get("seq_start", 1))
        self.random = random.Random(cmd.get("seed", 1))
        self.timeout = float(cmd.get("request_timeout", 30))
        self.conns = []
        self.idle = []
        self.sent = 0
        self.ok = 0
        self.statuses = {}
        self.errors = {}
        self.lats = []
        self.accepted = {}
        self.late = 0
        self.reconnects = 0
        self.t0 = monotonic()
        self.deadline = self.t0 + self.duration
        self.t_last = self.t0
        self.done = False
        self.first_body = None
        for _index in range(self.inflight):
            self.open_conn()

    def open_conn(self):
        """Opens one more client connection."""
        try:
            self.conns.append(HttpConn(self))
        except OSError as exception:
            self.count_error("socket: %s" % exception)

    def count_error(self, error):
        """Counts one failed request or connection by reason."""
        key = error[:80]
        self.errors[key] = self.errors.get(key, 0) + 1

    def build(self, channel, seq):
        """Returns the request bytes for one trigger."""
        stamp = self.t0 + self.sent / self.rate if self.stamp_due else monotonic()
        data = '{"s":%d,"t":%.6f%s}' % (
            seq,
            stamp,
            ',"p":"%s"' % self.pad if self.pad else "",
        )
        if self.style == "pusher" and self.per_request > 1:
            # the channels in turn, so that every one of them gets events
            start = self.sent * self.per_request % len(self.channels)
            names = (self.channels * 2)[start : start + self.per_request]
            body = {"name": "bench", "channels": names, "data": data}
        elif self.style == "pusher":
            body = {"name": "bench", "channel": channel, "data": data}
        else:
            body = {
                "event": "bench",
                "channel": channel,
                "data": data,
                "persist": self.style == "pushi_persist",
            }
        body = json.dumps(body, separators=(",", ":")).encode("utf-8")
        if self.style == "original":
            target = "/events?sid=%s" % self.sid
        else:
            path = "/apps/%s/events" % self.app_id
            query = wire.signed_query(self.key, self.secret, "POST", path, body)
            target = "%s?%s" % (path, query)
        head = (
            "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n" % (target, self.host, self.port, len(body))
        )
        return head.encode("latin-1") + body

    def may_send(self, now):
        """Tells whether another request is due now."""
        if self.sent >= self.max_count or now >= self.deadline:
            return False
        if self.rate:
            due = int((now - self.t0) * self.rate) + 1
            return self.sent < due
        return True

    def send_next(self, conn):
        """Sends the next trigger on an idle connection."""
        channel = (
            self.channels[0]
            if len(self.channels) == 1
            else self.channels[self.random.randrange(len(self.channels))]
        )
        seq = self.seq
        self.seq += 1
        try:
            conn.send(self.build(channel, seq), (channel, seq))
        except OSError as exception:
            self.on_broken(conn, "send: %s" % exception)
            return
        self.sent += 1

    def on_idle(self, conn):
        """A connection can take a request."""
        now = monotonic()
        if self.may_send(now):
            self.send_next(conn)
        else:
            self.idle.append(conn)

    def on_response(self, conn, status, body, keep):
        """Records one answer and reuses the connection."""
        now = monotonic()
        self.t_last = now
        self.lats.append(now - conn.sent_at)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            self.ok += 1
            channel, seq = conn.meta
            self.accepted.setdefault(channel, []).append(seq)
        elif self.first_body is None:
            self.first_body = body[:300].decode("utf-8", "replace")
        conn.meta = None
        if keep:
            self.on_idle(conn)
        else:
            self.drop(conn)
            self.reconnects += 1
            self.open_conn()

    def on_broken(self, conn, error):
        """A connection failed: count it, replace it while running."""
        if conn.busy or not conn.connected:
            self.count_error(error)
        self.drop(conn)
        if monotonic() < self.deadline and len(self.errors) < 1000:
            self.reconnects += 1
            self.open_conn()

    def drop(self, conn):
        """Forgets and closes a connection."""
        conn.close()
        if conn in self.conns:
            self.conns.remove(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def tick(self, now):
        """Sends due requests on idle connections; finishes when over."""
        if self.done:
            return
        while self.idle and self.may_send(now):
            self.send_next(self.idle.pop())
        if self.rate and self.may_send(now) and not self.idle:
            due = int((now - self.t0) * self.rate) + 1
            if due - self.sent > self.inflight:
                self.late += 1
        busy = [conn for conn in self.conns if conn.busy]
        over = now >= self.deadline or self.sent >= self.max_count
        if over:
            for conn in busy:
                if now - conn.sent_at > self.timeout:
                    self.count_error("timeout")
                    self.drop(conn)
            if not any(conn.busy for conn in self.conns):
                self.finish()

    def next_wakeup(self):
        """Seconds until this task wants a tick."""
        if self.rate and self.idle:
            due_at = self.t0 + self.sent / self.rate
            return max(0.0, min(0.05, due_at - monotonic()))
        # with every connection busy an answer wakes the loop: a request
        # that is overdue meanwhile must not make it spin
        return 0.05

    def finish(self):
        """Closes the connections and answers the parent."""
        self.done = True
        for conn in list(self.conns):
            self.drop(conn)
        # stopped by count: up to the last answer; by time: the whole phase
        # (an open loop at a low rate would otherwise look fast)
        end = self.t_last
        if self.sent < self.max_count:
            end = max(end, self.deadline)
        elapsed = max(1e-9, end - self.t0)
        self.worker.reply(
            {
                "sent": self.sent,
                "ok": self.ok,
                "statuses": {str(k): v for k, v in self.statuses.items()},
                "errors": self.errors,
                "first_error_body": self.first_body,
                "elapsed": elapsed,
                "t0": self.t0,
                "t_last": self.t_last,
                "late": self.late,
                "reconnects": self.reconnects,
                "latency_ms": stats.summarize(self.lats),
                "accepted": self.accepted,
            }
        )


class Worker:
    """The epoll loop and the control channel."""

    def __init__(self):
        self.ep = select.epoll()
        self.handlers = {}
        self.subs = []
        self.frames = 0
        self.last_t = 0.0
        self.unexpected_closes = 0
        self.close_reasons = {}
        self.task = None
        self.control_fd = sys.stdin.fileno()
        os.set_blocking(self.control_fd, False)
        self.control_buf = b""
        self.ep.register(self.control_fd, EPOLLIN)
        self.running = True

    def register(self, handler, events):
        """Watches a socket handler."""
        self.handlers[handler.fd] = handler
        self.ep.register(handler.fd, events)

    def unregister(self, handler):
        """Stops watching a socket handler."""
        if self.handlers.pop(handler.fd, None) is not None:
            try:
                self.ep.unregister(handler.fd)
            except (OSError, ValueError):
                pass

    def reply(self, message):
        """Writes one answer line to the parent."""
        self.task = None
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def on_control(self):
        """Reads command lines from the parent."""
        commands, self.control_buf, self.running = read_commands(
            self.control_fd, self.control_buf
        )
        for cmd in commands:
            self.command(cmd)

    def command(self, cmd):
        """Runs one command."""
        name = cmd["cmd"]
        if name == "connect":
            self.task = ConnectTask(self, cmd)
        elif name == "reset":
            self.task = ResetTask(self, cmd)
        elif name == "trigger":
            self.task = TriggerTask(self, cmd)
        elif name == "idle":
            self.task = IdleTask(self, cmd)
        elif name == "stats":
            self.reply(
                {
                    "frames": self.frames,
                    "last_t": self.last_t,
                    "open": sum(1 for sub in self.subs if sub.state == READY),
                    "unexpected_closes": self.unexpected_closes,
                    "close_reasons": self.close_reasons,
                    "now": monotonic(),
                }
            )
        elif name == "samples":
            self.reply(
                {
                    "subs": [
                        {
                            "channel": sub.channel,
                            "port": sub.task.port,
                            "seqs": sub.seqs,
                            "lats": sub.lats,
                        }
                        for sub in self.subs
                        if sub.sampled
                    ]
                }
            )
        elif name == "close":
            for sub in self.subs:
                sub.close()
            self.subs = []
            self.reply({"closed": True})
        elif name == "exit":
            self.running = False
        else:
            self.reply({"error": "unknown command %s" % name})

    def run(self):
        """Runs the loop until told to exit or the parent goes away."""
        handlers = self.handlers
        poll = self.ep.poll
        control_fd = self.control_fd
        while self.running:
            task = self.task
            timeout = task.next_wakeup() if task else 0.2
            for fd, events in poll(timeout):
                handler = handlers.get(fd)
                if handler is not None:
                    handler.on_event(events)
                elif fd == control_fd:
                    self.on_control()
            task = self.task
            if task is not None:
                task.tick(monotonic())


def main():
    """Entry point of a worker process."""
    raise_nofile()
    Worker().run()


if __name__ == "__main__":
    main()
