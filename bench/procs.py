"""Parent side of the worker processes (see ``worker``)."""

import json
import os
import select
import subprocess
import sys

from . import servers, stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
""" The repository: ``bench`` is imported from here, ``pushi.proto`` from
its ``src`` """


class WorkerError(RuntimeError):
    """A worker died or did not answer in time."""


class WorkerProc:
    """One load process, driven by JSON lines over its stdin and stdout."""

    def __init__(self, role, module="bench.worker"):
        self.role = role
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "src")])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=ROOT,
            preexec_fn=servers._die_with_parent,
        )
        self.buf = b""

    @property
    def pid(self):
        """The worker's pid."""
        return self.proc.pid

    def cpu(self):
        """CPU seconds used so far."""
        return stats.cpu_seconds(self.proc.pid)

    def send(self, cmd):
        """Sends a command without waiting for the answer."""
        try:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode("utf-8"))
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerError("%s worker is gone" % self.role) from None

    def recv(self, timeout):
        """Waits for one answer line (at most ``timeout`` seconds)."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            ready, _w, _x = select.select([fd], [], [], timeout)
            if not ready:
                raise WorkerError(
                    "%s worker did not answer in %ss" % (self.role, timeout)
                )
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise WorkerError("%s worker exited" % self.role)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, cmd, timeout=120.0):
        """Sends a command and waits for its answer."""
        self.send(cmd)
        return self.recv(timeout)

    def stop(self):
        """Asks the worker to exit, then makes sure it did."""
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "exit"})
                self.proc.stdin.close()
            except (WorkerError, OSError):
                pass
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
