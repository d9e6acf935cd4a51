"""Support of the interoperability tests: the Node agent and the SDK set-up.

``NodeAgent`` runs ``tests/interop/agent.js`` (the unmodified ``pusher-js``,
``pusher`` and ``laravel-echo`` npm packages, installed by
``scripts/install``) and talks to it one JSON line at a time; everything its
clients see arrives as ``events``, which the tests wait on with ``wait``.
"""

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTEROP = os.path.join(ROOT, "tests", "interop")
AGENT = os.path.join(INTEROP, "agent.js")

MASTER_KEY = base64.b64encode(bytes(range(32))).decode()
""" The encryption master key the tests' SDKs share (base64, 32 bytes) """


def check_node():
    """Raises with the fix when Node or the npm packages are missing."""
    if shutil.which("node") is None:
        raise RuntimeError("node is not installed: the interop tests need Node 20.19+")
    for package in ("pusher-js", "pusher", "laravel-echo"):
        if not os.path.isdir(os.path.join(INTEROP, "node_modules", package)):
            raise RuntimeError(
                "npm package %s is missing: run scripts/install "
                "(npm ci --prefix tests/interop)" % package
            )


class NodeAgent:
    """A running ``agent.js`` bound to one app of one server: its SDK calls
    go to ``server.app_port``, each client it connects to the port
    ``server.next_ws_port(app)`` answers (a cluster's stand-in spreads
    them over its nodes)."""

    def __init__(self, server, app):
        check_node()
        env = dict(os.environ)
        env.update(
            PUSHI_WS_PORT=str(server.server_port),
            PUSHI_APP_PORT=str(server.app_port),
            PUSHI_APP_ID=app["app_id"],
            PUSHI_KEY=app["key"],
            PUSHI_SECRET=app["secret"],
            PUSHI_MASTER_KEY=MASTER_KEY,
        )
        self.server = server
        self.app = app
        self.process = subprocess.Popen(
            ["node", AGENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=INTEROP,
            text=True,
            bufsize=1,
        )
        self.events = []
        self.stderr = []
        self._answers = queue.Queue()
        self._changed = threading.Condition()
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_errors, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                self.stderr.append(line)
                continue
            if "id" in message:
                self._answers.put(message)
            else:
                with self._changed:
                    self.events.append(message)
                    self._changed.notify_all()

    def _read_errors(self):
        for line in self.process.stderr:
            self.stderr.append(line)

    def call(self, op, timeout=20, **args):
        """Runs one operation; returns its result or raises with the agent's error."""
        self._next_id += 1
        command = dict(args, op=op, id=self._next_id)
        if op in ("connect", "echo_connect"):
            # on a cluster, the node this client connects to
            command.setdefault("wsPort", self.server.next_ws_port(self.app))
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        deadline = time.time() + timeout
        while True:
            try:
                answer = self._answers.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                raise AssertionError(
                    "agent gave no answer to %s; stderr: %s"
                    % (command, "".join(self.stderr)[-2000:])
                ) from None
            if answer["id"] == self._next_id:
                break
        if not answer["ok"]:
            raise AssertionError("agent failed %s: %s" % (command, answer["error"]))
        return answer["result"]

    def sdk(self, method, *args, **options):
        """``{"status", "body"}`` of a call of the npm server SDK."""
        return self.call("sdk", method=method, args=list(args), **options)

    def mark(self):
        """A position in ``events``: pass it as ``after`` to see only newer ones."""
        with self._changed:
            return len(self.events)

    def wait(self, timeout=10, after=0, **match):
        """The first event at or past position ``after`` whose fields equal
        ``match``; raises when none comes within ``timeout`` seconds."""
        deadline = time.time() + timeout
        with self._changed:
            while True:
                for event in self.events[after:]:
                    if all(event.get(name) == value for name, value in match.items()):
                        return event
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(
                        "no event %s among %s"
                        % (match, json.dumps(self.events[after:])[-3000:])
                    )
                self._changed.wait(left)

    def seen(self, after=0, **match):
        """Events seen so far (past ``after``) whose fields equal ``match``."""
        with self._changed:
            return [
                event
                for event in self.events[after:]
                if all(event.get(name) == value for name, value in match.items())
            ]

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def python_sdk(server, app, **options):
    """The ``pusher`` PyPI SDK pointed at a Pushi server's REST port, as
    docs/from-pusher.md sets it up."""
    import pusher

    settings = dict(
        app_id=app["app_id"],
        key=app["key"],
        secret=app["secret"],
        host="127.0.0.1",
        port=server.app_port,
        ssl=False,
    )
    settings.update(options)
    return pusher.Pusher(**settings)
