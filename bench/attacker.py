"""An attacker process of ``--scenario abuse``: one abusive client of a
server on 127.0.0.1, for a bounded time.

Run as ``python -m bench.attacker`` (with the repository and its ``src`` on
the path) and driven like ``bench.worker``: one JSON command a line on
stdin, one answer a line on stdout, ``exit`` (or the end of stdin) to
stop.  A command ``{"cmd": "attack", "attack": NAME, "duration": s, ...}``
runs one attack of ``ATTACKS`` and answers with what it sent and how often
the server cut it off.  The publishes of 10 KB to cache channels are not
here: they are the worker's trigger loop (``worker.TriggerTask``) with the
attacker app's credentials.

Every attack is bounded: it stops after ``duration`` seconds, opens at most
``max_connects`` connections in all, and only ever connects to 127.0.0.1.
A connection the server closes (an EOF, a reset, a refused upgrade, a
``pusher:error`` instead of the connection) counts as a cut-off and is
opened again at once while time is left: a server that defends itself
shows as cut-offs, one that does not as a victim that waits.  What the
server sends meanwhile is read and dropped, so that its answers never fill
the socket and the attack stays a flood of input.
"""

import errno
import json
import os
import select
import socket
import sys
import time

from pushi.proto import auth, websocket

from . import wire
from .worker import raise_nofile, receive

HOST = "127.0.0.1"
#: one mask for every pre-built frame: the flood repeats the same bytes
MASK = b"\x1f\x2e\x3d\x4c"
#: bytes of a pre-built flood chunk (the unit repeated on the socket)
CHUNK = 65536
#: connections set up at once (connect and upgrade under way)
CONCURRENCY = 256
#: sends per writable event of a flooding socket
SENDS_PER_EVENT = 16

CONNECTING, UPGRADING, ESTABLISHING, FLOODING, IDLE, CLOSED = range(6)


def repeat(unit, size=CHUNK):
    """``unit`` (bytes) repeated to about ``size`` bytes; returns the chunk
    and how many units it holds."""
    count = max(1, size // len(unit))
    return unit * count, count


def text(message, fin=True, opcode=websocket.OP_TEXT):
    """A masked client frame of ``message`` (a str or a dict as JSON)."""
    if isinstance(message, dict):
        message = json.dumps(message, separators=(",", ":"))
    return wire.encode_frame(message, opcode, mask=MASK, fin=fin)


class Attack:
    """What one attack sends.  ``path`` is the WebSocket path (None: raw
    HTTP on ``port``); ``established`` tells whether to wait for
    ``pusher:connection_established`` before flooding; ``eager`` bytes go
    out with the upgrade request, before any answer; ``greeting`` (given the
    socket id) goes once the connection is up, then ``chunk`` over and over
    (``units`` messages or requests each); no chunk: the socket only
    stays open."""

    def __init__(self, cmd):
        name = cmd["attack"]
        self.name = name
        self.port = int(cmd["ws_port"])
        key = cmd["key"]
        app_path = "/app/%s?protocol=7&client=js&version=8.6.0&flash=false" % key
        self.path = app_path
        self.established = True
        self.eager = b""
        self.chunk = None
        self.units = 0
        self.target = 1
        self.greeting = lambda socket_id: b""
        if name == "console":
            # JSON that is not a sign-in, on the debug console's stream
            self.path = "/console"
            self.established = False
            message = {"event": "console:hello", "data": "x" * 900}
            self.chunk, self.units = repeat(text(message))
        elif name == "ping":
            self.chunk, self.units = repeat(
                text(b"ping" * 4, opcode=websocket.OP_PING), CHUNK
            )
        elif name == "pusher-ping":
            message = {"event": "pusher:ping", "data": {}}
            self.chunk, self.units = repeat(text(message))
        elif name == "rest-pipeline":
            self.path = None
            self.port = int(cmd["http_port"])
            body = b'{"name":"x","channel":"abuse","data":"{}"}'
            request = (
                "POST /apps/%s/events HTTP/1.1\r\nHost: %s:%d\r\n"
                "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (cmd["app_id"], HOST, self.port, len(body))
            ).encode("latin-1") + body
            self.chunk, self.units = repeat(request)
        elif name == "personal":
            channel = "personal-%s" % cmd["user_id"]
            secret = cmd["secret"]

            def greeting(socket_id):
                token = auth.channel_auth(key, secret, socket_id, channel)
                subscribe = {
                    "event": "pusher:subscribe",
                    "data": {"channel": channel, "auth": token},
                }
                unsubscribe = {
                    "event": "pusher:unsubscribe",
                    "data": {"channel": channel},
                }
                pair = text(subscribe) + text(unsubscribe)
                self.chunk, count = repeat(pair)
                self.units = 2 * count
                return b""

            self.greeting = greeting
            # a placeholder until the socket id is known
            self.chunk, self.units = b"", 0
        elif name == "join-storm":
            self.eager = text(
                {"event": "pusher:subscribe", "data": {"channel": cmd["channel"]}}
            )
            self.established = False
            self.target = int(cmd.get("connections", 2000))
        elif name == "continuation":
            # a text message begun, then empty fragments that never end it
            self.greeting = lambda socket_id: text("{", fin=False)
            self.chunk, self.units = repeat(
                text(b"", fin=False, opcode=websocket.OP_CONTINUATION)
            )
        elif name == "conn-flood":
            self.established = False
            self.target = int(cmd.get("connections", 1000))
        else:
            raise ValueError("unknown attack %r" % name)
        self.handshake = (
            wire.handshake_request(HOST, self.port, self.path) if self.path else b""
        )


class Conn:
    """One attacking connection."""

    def __init__(self, run):
        self.run = run
        self.attack = run.attack
        self.state = CONNECTING
        self.buf = bytearray()
        self.out = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fd = self.sock.fileno()
        code = self.sock.connect_ex((HOST, self.attack.port))
        if code not in (0, errno.EINPROGRESS):
            self.sock.close()
            raise OSError(code, os.strerror(code))
        run.ep.register(self.fd, select.EPOLLOUT)

    def on_event(self, events):
        """Handles readiness of the socket."""
        if self.state == CONNECTING:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self.run.drop(self, "connect: %s" % os.strerror(code), refused=True)
                return
            self.run.connected += 1
            if self.attack.path is None:
                self.flood("")
                return
            if not self.push(self.attack.handshake + self.attack.eager):
                return
            self.state = UPGRADING
            self.run.ep.modify(self.fd, select.EPOLLIN)
            return
        if events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
            data = receive(self.sock, self.lost, "closed by the server")
            if data is None:
                if self.state == CLOSED:
                    return
            elif self.state in (UPGRADING, ESTABLISHING):
                self.buf += data
                if self.state == UPGRADING:
                    self.on_upgrade()
                if self.state == ESTABLISHING:
                    self.on_established()
                return
        if self.state == FLOODING and events & select.EPOLLOUT:
            self.send_chunk()

    def on_upgrade(self):
        """Reads the answer to the upgrade request."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 16384:
                self.lost("upgrade answer too long")
            return
        status = bytes(self.buf[:end]).split(b"\r\n", 1)[0]
        if b" 101" not in status:
            self.lost("upgrade refused: %s" % status.decode("latin-1")[:60])
            return
        del self.buf[: end + 4]
        if self.attack.established:
            self.state = ESTABLISHING
        else:
            self.flood("")

    def on_established(self):
        """Waits for ``pusher:connection_established`` (its socket id)."""
        frames, used = wire.parse_frames(self.buf)
        del self.buf[:used]
        for _fin, opcode, payload in frames:
            if opcode == websocket.OP_CLOSE:
                self.lost("closed during setup")
                return
            if opcode != websocket.OP_TEXT:
                continue
            try:
                message = json.loads(payload)
                data = message.get("data")
                if isinstance(data, str):
                    data = json.loads(data)
            except (ValueError, AttributeError):
                continue
            if message.get("event") == "pusher:connection_established":
                self.flood(data["socket_id"])
            else:
                self.lost("setup: %s" % payload[:80].decode("utf-8", "replace"))
            return

    def flood(self, socket_id):
        """The connection is up: greets, then floods (or idles)."""
        greeting = self.attack.greeting(socket_id)
        if greeting and not self.push(greeting):
            return
        self.buf = bytearray()
        if self.attack.chunk:
            self.state = FLOODING
            self.out = memoryview(self.attack.chunk)
            self.run.ep.modify(self.fd, select.EPOLLIN | select.EPOLLOUT)
        else:
            self.state = IDLE
            self.run.ep.modify(self.fd, select.EPOLLIN)

    def push(self, data):
        """Sends a small message whole (it fits in the socket buffer)."""
        try:
            self.sock.sendall(data)
        except OSError as exception:
            self.lost("send: %s" % exception)
            return False
        return True

    def send_chunk(self):
        """Sends as much of the flood as the socket takes now."""
        run = self.run
        for _index in range(SENDS_PER_EVENT):
            try:
                sent = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exception:
                self.lost("send: %s" % exception)
                return
            run.flood_bytes += sent
            self.out = self.out[sent:]
            if not self.out:
                run.chunks += 1
                self.out = memoryview(self.attack.chunk)

    def lost(self, reason):
        """The server closed or refused this connection."""
        self.run.drop(self, reason)

    def close(self):
        """Closes the socket."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        try:
            self.run.ep.unregister(self.fd)
        except (OSError, ValueError):
            pass
        self.sock.close()


class Run:
    """One attack: its connections on one epoll loop, until the time is up
    or ``max_connects`` connections were opened."""

    def __init__(self, cmd):
        self.attack = Attack(cmd)
        self.duration = float(cmd["duration"])
        self.max_connects = int(cmd.get("max_connects", self.attack.target + 10000))
        self.ep = select.epoll()
        self.conns = {}
        self.connects = 0
        self.connected = 0
        self.cut_offs = 0
        self.refused = 0
        self.reasons = {}
        self.flood_bytes = 0
        self.chunks = 0

    def drop(self, conn, reason, refused=False):
        """Forgets a connection the server closed or refused."""
        if conn.state == CLOSED:
            return
        conn.close()
        self.conns.pop(conn.fd, None)
        if refused:
            self.refused += 1
        else:
            self.cut_offs += 1
        key = reason[:80]
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def open_more(self):
        """Opens connections up to the target (a few at a time)."""
        starting = sum(
            1 for conn in self.conns.values() if conn.state in (CONNECTING, UPGRADING)
        )
        while (
            len(self.conns) < self.attack.target
            and self.connects < self.max_connects
            and starting < CONCURRENCY
        ):
            self.connects += 1
            try:
                conn = Conn(self)
            except OSError as exception:
                self.refused += 1
                key = ("socket: %s" % exception)[:80]
                self.reasons[key] = self.reasons.get(key, 0) + 1
                return
            self.conns[conn.fd] = conn
            starting += 1

    def run(self):
        """Attacks until the time is up; returns the report."""
        t0 = time.monotonic()
        deadline = t0 + self.duration
        now = t0
        last_open = 0.0
        while now < deadline:
            # opening is cheap to skip: while the target is met, check it
            # only every 10 ms (a flood turns the loop very often)
            if now - last_open > 0.01:
                self.open_more()
                last_open = now
            for fd, events in self.ep.poll(min(0.05, max(0.0, deadline - now))):
                conn = self.conns.get(fd)
                if conn is not None:
                    conn.on_event(events)
            now = time.monotonic()
        open_at_end = sum(
            1 for conn in self.conns.values() if conn.state in (FLOODING, IDLE)
        )
        for conn in list(self.conns.values()):
            conn.close()
        self.ep.close()
        attack = self.attack
        units = 0
        if attack.chunk:
            units = int(self.flood_bytes * attack.units / len(attack.chunk))
        return {
            "attack": attack.name,
            "elapsed": round(time.monotonic() - t0, 3),
            "connects": self.connects,
            "connected": self.connected,
            "open_at_end": open_at_end,
            "cut_offs": self.cut_offs,
            "refused": self.refused,
            "reasons": self.reasons,
            "bytes_sent": self.flood_bytes,
            "units_sent": units,
        }


def main():
    """Entry point of an attacker process."""
    raise_nofile()
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd.get("cmd") == "exit":
            break
        try:
            answer = Run(cmd).run()
        except (OSError, ValueError, KeyError) as exception:
            answer = {"error": "%s: %s" % (type(exception).__name__, exception)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
