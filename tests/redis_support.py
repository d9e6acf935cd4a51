"""A real Redis for the tests, and a TCP proxy the test controls.

``RedisServer`` runs Debian's ``redis-server`` on a free port on 127.0.0.1
in a temp dir, without persistence (as Pushi's Redis should run), so a
restart comes back empty with a new ``run_id``.  ``TcpProxy`` sits between
a client and Redis and can cut, blackhole or half-close the traffic.
"""

import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from support import IN_CI, free_port

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
)


def require_redis():
    """Skips a test without ``redis-server`` outside CI; with CI set a
    missing Redis is a failure (``scripts/install`` installs it)."""
    import pytest

    if REDIS_SERVER:
        return
    reason = "redis-server is not installed (scripts/install installs it)"
    if IN_CI:
        pytest.fail(reason + " (CI is set: the Redis tests must run)")
    pytest.skip(reason)


class RedisServer:
    """One ``redis-server`` process: ``url`` (``redis://``) and, with
    ``unix_socket``, ``unix_url``; ``password`` sets ``--requirepass``."""

    def __init__(self, password=None, unix_socket=False):
        self.password = password
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="pushi-redis-")
        self.socket_path = os.path.join(self.dir, "redis.sock") if unix_socket else None
        self.process = None

    @property
    def url(self):
        auth = ":%s@" % self.password if self.password else ""
        return "redis://%s127.0.0.1:%d/0" % (auth, self.port)

    @property
    def unix_url(self):
        return "unix://%s?db=0" % self.socket_path

    def start(self):
        command = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            "--logfile", os.path.join(self.dir, "redis.log"),
        ]  # fmt: skip
        if self.password:
            command += ["--requirepass", self.password]
        if self.socket_path:
            command += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        self.process = subprocess.Popen(
            command, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("redis-server exited: %s" % self._log())
            if self._answers():
                return self
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start: %s" % self._log())

    def _answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                return probe.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def _log(self):
        try:
            with open(os.path.join(self.dir, "redis.log")) as file:
                return file.read()[-2000:]
        except OSError:
            return "(no log)"

    def client(self):
        """A blocking redis-py client (the test's own side channel)."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5)

    def stop(self):
        """Stops it (SIGTERM, then SIGKILL if it lingers)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def kill(self):
        """Kills it with SIGKILL (a crash)."""
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def pause(self):
        """SIGSTOP: the sockets stay open, nothing is answered."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def restart(self):
        """Kills it and starts a new, empty one on the same port."""
        if self.process is not None:
            self.kill()
        return self.start()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class TcpProxy:
    """A TCP proxy on 127.0.0.1 (``port``) to ``target`` (host, port) on
    one thread of its own.  Modes: ``forward()`` (the default),
    ``blackhole()`` (connections are accepted and what comes either way is
    read and dropped), ``drop_one_direction(server_to_client=True)`` (only
    the other direction is forwarded); ``cut()`` closes every connection
    (the mode stays).  ``hold(port)`` leaves unread what the target sends
    on one connection (delayed, not lost) until ``release()``."""

    def __init__(self, target):
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._forward = {"up": True, "down": True}
        self._pairs = {}  # socket -> (peer, direction)
        self._held = set()
        self._lock = threading.Lock()
        self._cut = False
        self._stopped = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def url(self, scheme="redis", db=0, password=None):
        auth = ":%s@" % password if password else ""
        return "%s://%s127.0.0.1:%d/%d" % (scheme, auth, self.port, db)

    def forward(self):
        with self._lock:
            self._forward = {"up": True, "down": True}

    def blackhole(self):
        with self._lock:
            self._forward = {"up": False, "down": False}

    def drop_one_direction(self, server_to_client=True):
        with self._lock:
            if server_to_client:
                self._forward = {"up": True, "down": False}
            else:
                self._forward = {"up": False, "down": True}

    def ports(self):
        """The local ports of the connections to the target (the client
        ports the target sees)."""
        with self._lock:
            return {
                sock.getsockname()[1]
                for sock, (_peer, direction) in self._pairs.items()
                if direction == "down"
            }

    def hold(self, port):
        """Stops reading what the target sends on the connection of local
        port ``port``: it waits in the sockets' buffers until ``release``."""
        with self._lock:
            for sock, (_peer, direction) in self._pairs.items():
                if direction == "down" and sock.getsockname()[1] == port:
                    self._held.add(sock)
        self._wake_w.send(b"x")

    def release(self):
        with self._lock:
            self._held.clear()
        self._wake_w.send(b"x")

    def cut(self):
        """Closes every connection (new ones are accepted)."""
        with self._lock:
            self._cut = True
        self._wake_w.send(b"x")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self._lock:
                if not self._cut:
                    return
            time.sleep(0.01)

    def close(self):
        self._stopped = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self):
        while not self._stopped:
            with self._lock:
                sockets = [sock for sock in self._pairs if sock not in self._held]
                if self._cut:
                    self._close_all()
                    sockets = []
                    self._cut = False
            readable, _, _ = select.select(
                [self.listener, self._wake_r] + sockets, [], [], 0.5
            )
            for sock in readable:
                if sock is self._wake_r:
                    self._wake_r.recv(64)
                elif sock is self.listener:
                    self._accept()
                else:
                    self._pass(sock)
        with self._lock:
            self._close_all()

    def _accept(self):
        client, _ = self.listener.accept()
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self.accepted += 1
            self._pairs[client] = (server, "up")
            self._pairs[server] = (client, "down")

    def _pass(self, sock):
        # read under the lock: a socket ``hold`` took while select was
        # answering (the thread can be late to run) is not read from
        with self._lock:
            pair = self._pairs.get(sock)
            if pair is None or sock in self._held:
                return
            forward = self._forward[pair[1]]
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
        if not data:
            with self._lock:
                self._close(sock)
            return
        if forward:
            try:
                pair[0].sendall(data)
            except OSError:
                with self._lock:
                    self._close(sock)

    def _close(self, sock):
        pair = self._pairs.pop(sock, None)
        self._held.discard(sock)
        sock.close()
        if pair is not None:
            self._pairs.pop(pair[0], None)
            self._held.discard(pair[0])
            pair[0].close()

    def _close_all(self):
        for sock in list(self._pairs):
            self._close(sock)
