"""A stand-in WebSocket server that measures the load generator itself.

It speaks just enough of the Pusher protocol for the subscriber workers
(upgrade, ``pusher:connection_established``, subscription answers) and, on
a ``blast`` command from its parent (JSON lines on stdin, like
``worker``), writes pre-built bench messages to every socket as fast as it
can: ``batch`` frames joined into one write per socket, so ``batch=1``
looks like a server writing each frame on its own (soketi) and larger
batches like one that coalesces frames per loop turn.  The generator's
ceiling is what the subscribers count while their process is saturated.
Binds 127.0.0.1 only; stops when its stdin closes.
"""

import json
import os
import select
import socket
import sys
import time

from pushi.proto import websocket

from .worker import read_commands


def message(event, data, channel=None):
    """A Pusher message frame with ``data`` as a JSON string."""
    body = {"event": event, "data": data}
    if channel:
        body["channel"] = channel
    return websocket.text_frame(json.dumps(body))


class Blaster:
    """Accepts subscribers, answers their setup, blasts on command."""

    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        # a socket's bytes until its upgrade, then its frame reader
        self.clients = {}
        self.ready = []
        self.control = sys.stdin.fileno()
        os.set_blocking(self.control, False)
        self.control_buf = b""
        self.running = True

    def reply(self, answer):
        """One JSON line to the parent."""
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()

    def on_accept(self):
        """Accepts pending connections."""
        while True:
            try:
                sock, _addr = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            self.clients[sock] = bytearray()

    def on_client(self, sock):
        """Handshake, then setup messages of one client."""
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.clients.pop(sock, None)
            if sock in self.ready:
                self.ready.remove(sock)
            sock.close()
            return
        if sock not in self.ready:
            pending = self.clients[sock]
            pending += data
            handshake, used = websocket.parse_handshake(pending)
            if handshake is None:
                return
            data = bytes(pending[used:])
            self.clients[sock] = websocket.FrameReader()
            answer = websocket.accept_response(handshake)
            established = json.dumps({"socket_id": "1.%d" % sock.fileno()})
            sock.setblocking(True)
            sock.sendall(answer + message("pusher:connection_established", established))
            sock.setblocking(False)
            self.ready.append(sock)
        for opcode, payload in self.clients[sock].feed(data):
            if opcode != websocket.OP_TEXT:
                continue
            event = json.loads(payload)
            if event.get("event") == "pusher:subscribe":
                channel = event["data"]["channel"]
                sock.setblocking(True)
                sock.sendall(
                    message("pusher_internal:subscription_succeeded", "{}", channel)
                )
                sock.setblocking(False)

    def blast(self, cmd):
        """Writes ``count`` messages to every ready socket, ``batch`` frames
        per write, for at most ``duration`` seconds: as fast as it can, or
        with a ``rate`` (messages per second) one message at a time when
        due, which is the cheapest a server can publish at that rate."""
        count = int(cmd.get("count", 10**6))
        batch = max(1, int(cmd.get("batch", 1)))
        rate = cmd.get("rate")
        deadline = time.monotonic() + float(cmd.get("duration", 5))
        socks = list(self.ready)
        for sock in socks:
            sock.setblocking(True)
        sent = 0
        seq = int(cmd.get("seq_start", 1))
        t0 = time.monotonic()
        try:
            while sent < count and time.monotonic() < deadline:
                now = time.monotonic()
                if rate:
                    due = t0 + sent / rate
                    if due > now:
                        time.sleep(due - now)
                        continue
                frames = []
                for _index in range(min(batch, count - sent)):
                    data = '{"s":%d,"t":%.6f}' % (seq, now)
                    frames.append(message("bench", data, "fanout"))
                    seq += 1
                    sent += 1
                chunk = b"".join(frames)
                for sock in socks:
                    sock.sendall(chunk)
        finally:
            for sock in socks:
                sock.setblocking(False)
        elapsed = time.monotonic() - t0
        self.reply(
            {
                "messages": sent,
                "frames": sent * len(socks),
                "sockets": len(socks),
                "elapsed": elapsed,
                "t0": t0,
                "accepted": {"fanout": list(range(int(cmd.get("seq_start", 1)), seq))},
            }
        )

    def on_control(self):
        """Reads commands."""
        commands, self.control_buf, self.running = read_commands(
            self.control, self.control_buf
        )
        for cmd in commands:
            if cmd["cmd"] == "blast":
                self.blast(cmd)
            elif cmd["cmd"] == "port":
                self.reply({"port": self.listener.getsockname()[1]})
            elif cmd["cmd"] == "exit":
                self.running = False

    def run(self):
        """Serves until told to exit or the parent goes away."""
        poller = select.poll()
        poller.register(self.listener.fileno(), select.POLLIN)
        poller.register(self.control, select.POLLIN)
        watched = {}
        while self.running:
            for sock in self.clients:
                if sock.fileno() not in watched:
                    watched[sock.fileno()] = sock
                    poller.register(sock.fileno(), select.POLLIN)
            for fd in [fd for fd, sock in watched.items() if sock not in self.clients]:
                del watched[fd]
                poller.unregister(fd)
            for fd, _events in poller.poll(200):
                if fd == self.listener.fileno():
                    self.on_accept()
                elif fd == self.control:
                    self.on_control()
                elif fd in watched and watched[fd] in self.clients:
                    self.on_client(watched[fd])


def main():
    """Entry point of the blaster process."""
    from .worker import raise_nofile

    raise_nofile()
    Blaster().run()


if __name__ == "__main__":
    main()
