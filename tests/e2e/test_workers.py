"""Worker mode (``PUSHI_WORKERS``): a supervisor and worker processes that
share both ports, a private ``redis-server`` and one events writer, run
as a user runs them (``python src/pushi/base/state.py``) with real clients
over real sockets.

Connections land on every worker and a publish reaches every worker's
subscribers once, and any worker's ``/sockets`` lists every worker's; a
worker killed with SIGKILL is restarted; SIGTERM of the
supervisor closes every socket with 4200 and leaves nothing running, as
does SIGKILL of the supervisor (the workers notice); persisted publishes
from all workers are stored once each by the one writer, and survive a
SIGKILL of the supervisor; a second Pushi on the same ports or data dir is
refused, and so is worker mode without ``redis-server``.
"""

import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

import pytest

from redis_support import require_redis
from support import (
    ADMIN_SECRET,
    SRC,
    PushiServer,
    env_with_src,
    free_port,
    masked_frame,
    read_until,
    server_frames,
    signed_path,
    upgrade_request,
)

WORKERS = 2


class Workers(PushiServer):
    """A Pushi started with ``PUSHI_WORKERS``: ``start`` returns once the
    supervisor logged its workers; ``pids`` then holds the workers',
    ``redis_pid`` and ``writer_pid`` the private Redis's and the writer's."""

    def __init__(self, workers=WORKERS, cli=None, **kwargs):
        env = dict(kwargs.pop("env", None) or {})
        if cli is None:
            env["PUSHI_WORKERS"] = str(workers)
        # else the arguments of ``pushi`` (``--workers N``)
        self.cli_arguments = cli
        PushiServer.__init__(self, env=env, **kwargs)
        self.pids = []
        self.redis_pid = None
        self.writer_pid = None

    def start(self, timeout=60):
        PushiServer.start(self, timeout)
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = re.search(
                r"(\d+) workers \(pids ([\d, ]+)\) on Redis (\S+)"
                r"(?: \(private redis-server, pid (\d+)\))?",
                self.read_log(),
            )
            if found:
                self.pids = [int(pid) for pid in found.group(2).split(", ")]
                self.redis_url = found.group(3)
                self.redis_pid = found.group(4) and int(found.group(4))
                writer = re.search(
                    r"committed by one writer \(pid (\d+)\)", self.read_log()
                )
                self.writer_pid = writer and int(writer.group(1))
                return self
            time.sleep(0.1)
        raise RuntimeError("workers did not start: %s" % self.read_log())

    def command(self):
        if self.cli_arguments is None:
            return PushiServer.command(self)
        return [sys.executable, "-m", "pushi"] + self.cli_arguments

    def children(self):
        return [self.redis_pid, self.writer_pid] + self.pids

    def node_ids(self):
        """The node id of each worker, from ``/health`` on new connections
        (each lands on some worker)."""
        seen = set()
        for _ in range(200):
            connection = http.client.HTTPConnection(
                "127.0.0.1", self.app_port, timeout=10
            )
            connection.request("GET", "/health")
            seen.add(json.loads(connection.getresponse().read())["node"])
            connection.close()
            if len(seen) == len(self.pids):
                break
        return seen


def alive(pid):
    """True while ``pid`` runs (a zombie nobody reaped is not running)."""
    try:
        with open("/proc/%d/stat" % pid) as file:
            state = file.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]


def descendants(pid):
    """Every process under ``pid``, with its command line."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as file:
                ppid = int(file.read().rpartition(")")[2].split()[1])
            with open("/proc/%s/cmdline" % entry, "rb") as file:
                command = file.read().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append((int(entry), command))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def raw_socket(server, key):
    """A raw WebSocket connection: ``(socket, socket_id)``."""
    raw = socket.create_connection(("127.0.0.1", server.server_port), timeout=10)
    raw.sendall(upgrade_request("/app/%s?protocol=7" % key))
    data = read_until(raw, b"connection_established", timeout=20)
    head, _, frames = data.partition(b"\r\n\r\n")
    assert b" 101 " in head, data
    for _opcode, payload in server_frames(frames):
        message = json.loads(payload)
        if message["event"] == "pusher:connection_established":
            return raw, json.loads(message["data"])["socket_id"]
    raise AssertionError(data)


def publish(connection, app, channel, name, data, persist=False):
    """A signed REST publish on a kept-alive connection: ``(status, answer)``."""
    body = {"name": name, "channel": channel, "data": data}
    if persist:
        body["persist"] = True
    raw = json.dumps(body).encode()
    path = signed_path(app, "POST", "/apps/%s/events" % app["app_id"], None, raw)
    connection.request("POST", path, raw, {"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"null")


def node_of(connection):
    """The node id of the worker a kept-alive connection landed on."""
    connection.request("GET", "/health")
    return json.loads(connection.getresponse().read())["node"]


@pytest.fixture
def workers():
    require_redis()
    made = []

    def start(**kwargs):
        server = Workers(**kwargs).start()
        made.append(server)
        return server

    yield start
    for server in made:
        server.stop(kill=True)
        wait_gone([pid for pid in server.children() if pid])


def test_connections_land_on_every_worker_and_a_publish_reaches_all_once(workers):
    server = workers()
    app = server.create_app("spread")
    nodes = server.node_ids()
    assert len(nodes) == WORKERS
    sockets = []
    try:
        for _ in range(1000):
            sockets.append(raw_socket(server, app["key"]))
        # each socket id names the node (worker) it is served by
        counts = {}
        for _raw, socket_id in sockets:
            node = int(socket_id.split(".")[0])
            counts[node] = counts.get(node, 0) + 1
        assert set(counts) == nodes, counts
        assert min(counts.values()) > 100, counts
        subscribe = masked_frame(
            json.dumps({"event": "pusher:subscribe", "data": {"channel": "all"}})
        )
        for raw, _socket_id in sockets:
            raw.sendall(subscribe)
        for raw, _socket_id in sockets:
            read_until(raw, b"subscription_succeeded", timeout=20)
        connection = http.client.HTTPConnection(
            "127.0.0.1", server.app_port, timeout=15
        )
        status, answer = publish(connection, app, "all", "hello", "once")
        assert status == 200, answer
        for raw, _socket_id in sockets:
            data = read_until(raw, b'"once"', timeout=20)
            assert data.count(b'"once"') == 1
        # and nothing more: no copy from the other worker
        time.sleep(1)
        for raw, _socket_id in sockets:
            raw.setblocking(False)
            try:
                extra = raw.recv(65536)
            except BlockingIOError:
                extra = b""
            assert b"hello" not in extra
    finally:
        for raw, _socket_id in sockets:
            raw.close()


def test_one_console_sees_the_connections_of_every_worker(workers):
    from support import Client

    server = workers()
    app = server.create_app("console")
    watcher = Client(server.ws_url + "console", expect_established=False)
    watcher.send(
        {
            "event": "console:watch",
            "data": {"app_id": app["app_id"], "token": server.login(app)},
        }
    )
    assert watcher.recv()["event"] == "console:watching"
    clients = []
    while len({c.socket_id.split(".")[0] for c in clients}) < WORKERS:
        assert len(clients) < 100
        clients.append(server.connect(app))
    wanted = {client.socket_id for client in clients}
    seen, counted = set(), None
    deadline = time.time() + 20
    while (seen != wanted or counted != len(clients)) and time.time() < deadline:
        try:
            message = watcher.recv(max(0.01, deadline - time.time()))
        except TimeoutError:
            break
        data = message["data"]
        if message["event"] == "console:stats":
            counted = data["connections"]
        elif data["type"] == "connection":
            assert data["socket_id"] not in seen, "twice: %s" % data
            seen.add(data["socket_id"])
    assert seen == wanted
    assert counted == len(clients)
    for client in clients:
        client.close()
    watcher.close()


def test_every_worker_lists_the_sockets_of_all_workers(workers):
    from cluster_support import signin

    server = workers()
    app, other = server.create_app("listed"), server.create_app("other")
    clients = []
    while len({c.socket_id.split(".")[0] for c in clients}) < WORKERS:
        assert len(clients) < 100
        client = server.connect(app)
        client.subscribe("room-%d" % len(clients))
        signin(client, app, "user-%d" % len(clients))
        clients.append(client)
    stranger = server.connect(other)
    wanted = {
        client.socket_id: ("room-%d" % index, "user-%d" % index)
        for index, client in enumerate(clients)
    }
    # a REST connection on each worker
    nodes = server.node_ids()
    asked = set()
    for _ in range(200):
        if asked == nodes:
            break
        connection = http.client.HTTPConnection(
            "127.0.0.1", server.app_port, timeout=15
        )
        node = node_of(connection)
        if node in asked:
            connection.close()
            continue
        asked.add(node)
        for listed, expected in ((app, wanted), (other, None)):
            path = "/apps/%s/sockets" % listed["app_id"]
            connection.request("GET", signed_path(listed, "GET", path))
            response = connection.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200, answer
            found = {entry["socket_id"]: entry for entry in answer["sockets"]}
            if expected is None:
                # an app's sockets only
                assert set(found) == {stranger.socket_id}, answer
                continue
            assert set(found) == set(expected), (node, answer)
            for socket_id, (channel, user_id) in expected.items():
                assert found[socket_id]["channels"] == [channel]
                assert found[socket_id]["user_id"] == user_id
            assert "partial" not in answer
        connection.close()
    assert asked == nodes
    for client in [*clients, stranger]:
        client.close()


def clients_on_every_worker(server, app):
    """Clients connected until each worker holds one: ``({node id: its
    first client}, every client)``."""
    by_node = {}
    clients = []
    while len(by_node) < WORKERS and len(clients) < 100:
        client = server.connect(app)
        clients.append(client)
        by_node.setdefault(int(client.socket_id.split(".")[0]), client)
    assert len(by_node) == WORKERS
    return by_node, clients


def test_a_killed_worker_is_restarted_and_the_others_serve_on(workers):
    server = workers()
    app = server.create_app("restart")
    by_node, clients = clients_on_every_worker(server, app)
    health = {}
    for pid in server.pids:
        # which worker pid holds which node: the node id is in its log line
        found = re.search(r"pushi\[%d\] Cluster node (\d+)" % pid, server.read_log())
        health[pid] = int(found.group(1))
    victim = server.pids[0]
    survivor_node = health[server.pids[1]]
    for client in by_node.values():
        client.subscribe("news")
    os.kill(victim, signal.SIGKILL)
    # the victim's clients are cut off, the survivor's stay
    assert by_node[health[victim]].close_code(timeout=10) is None
    deadline = time.time() + 30
    while time.time() < deadline and "Restarted worker 1: pid" not in server.read_log():
        time.sleep(0.2)
    log = server.read_log()
    assert "Worker 1 (pid %d) ended (signal SIGKILL)" % victim in log, log
    restarted = int(re.search(r"Restarted worker 1: pid (\d+)", log).group(1))
    assert alive(restarted)
    connection = http.client.HTTPConnection("127.0.0.1", server.app_port, timeout=15)
    status, answer = publish(connection, app, "news", "after", "kill")
    assert status == 200, answer
    assert by_node[survivor_node].recv_event("after")["data"] == "kill"
    # the restarted worker serves again, under a node id of its own
    deadline = time.time() + 30
    nodes = set()
    while time.time() < deadline and len(nodes) < WORKERS:
        nodes = server.node_ids()
    assert len(nodes) == WORKERS and health[victim] not in nodes, nodes
    for client in clients:
        try:
            client.close()
        except Exception:
            pass


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_closes_every_socket_with_4200_and_leaves_nothing(workers, signum):
    server = workers()
    app = server.create_app("stop")
    clients = [server.connect(app) for _ in range(20)]
    assert len({client.socket_id.split(".")[0] for client in clients}) == WORKERS
    children = server.children()
    assert all(children) and all(alive(pid) for pid in children)
    process = server.process
    # SIGINT: Ctrl-C in a terminal (the workers run in sessions of their own)
    process.send_signal(signum)
    assert [client.close_code(timeout=20) for client in clients] == [4200] * 20
    assert process.wait(30) == 0
    log = server.read_log()
    assert "Traceback" not in log, log
    assert wait_gone(children) == []
    assert not os.path.exists(os.path.join(server.data_dir, "redis.sock"))
    assert not os.path.exists(os.path.join(server.data_dir, "events.sock"))
    # the ports are free again
    for port in (server.server_port, server.app_port):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
    server.process = None
    server.log.close()


def test_kill_9_of_the_supervisor_leaves_nothing_running(workers):
    server = workers()
    app = server.create_app("orphans")
    client = server.connect(app)
    children = server.children()
    assert all(children)
    server.process.kill()
    server.process.wait(10)
    # the workers notice and close their sockets as at a stop
    assert client.close_code(timeout=20) == 4200
    assert wait_gone(children) == [], [(pid, alive(pid)) for pid in children]
    server.process = None
    server.log.close()


def test_persisted_publishes_of_all_workers_are_stored_once_by_one_writer(workers):
    server = workers()
    app = server.create_app("persist")
    published = []
    nodes = set()
    connections = 0
    while (len(nodes) < WORKERS or len(published) < 200) and connections < 100:
        connection = http.client.HTTPConnection(
            "127.0.0.1", server.app_port, timeout=15
        )
        connections += 1
        node = node_of(connection)
        nodes.add(node)
        for index in range(25):
            status, answer = publish(
                connection,
                app,
                "stored",
                "saved",
                "%d-%d-%d" % (node, connections, index),
                persist=True,
            )
            assert status == 200, answer
            published.append(answer)
        connection.close()
    assert len(nodes) == WORKERS
    # no worker commits on its own: the supervisor's writer is the only
    # events process
    tree = descendants(server.process.pid)
    writers = [pid for pid, command in tree if "sqlite_events" in command]
    assert writers == [server.writer_pid], tree
    # acknowledged is committed: even a SIGKILL of the supervisor loses none
    children = server.children()
    server.process.kill()
    server.process.wait(10)
    server.process = None
    server.log.close()
    assert wait_gone(children) == []
    database = sqlite3.connect(os.path.join(server.data_dir, "pushi.sqlite3"))
    try:
        rows = database.execute(
            "SELECT data, count(*) FROM events WHERE app_id = ? GROUP BY data",
            (str(app["app_id"]),),
        ).fetchall()
    finally:
        database.close()
    stored = dict(rows)
    assert len(stored) == len(published)
    assert set(stored.values()) == {1}


def test_a_second_pushi_on_the_same_ports_or_data_dir_is_refused(workers):
    server = workers()
    env = server.env()
    other_dir = tempfile.mkdtemp(prefix="pushi-test-")
    for extra in (
        # one process on the same ports
        {"PUSHI_WORKERS": "1", "PUSHI_DATA_DIR": other_dir},
        # another supervisor on the same ports
        {"PUSHI_DATA_DIR": other_dir},
        # another supervisor on the same data dir
        {"APP_PORT": str(free_port()), "SERVER_PORT": str(free_port())},
    ):
        result = subprocess.run(
            [sys.executable, os.path.join(SRC, "pushi", "base", "state.py")],
            env=dict(env, **extra),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, (extra, result.stderr)
        assert re.search(
            r"cannot listen on 127\.0\.0\.1:\d+ .*in use|Another Pushi",
            result.stderr,
        ), (extra, result.stderr)
        assert "Traceback" not in result.stderr
    # the first one still serves
    assert server.node_ids()


def test_pushi_workers_auto_runs_one_worker_per_core(workers):
    server = workers(cli=["--workers", "auto"])
    assert len(server.pids) == (os.cpu_count() or 1)
    assert all(alive(pid) for pid in server.pids)
    assert len(server.node_ids()) == len(server.pids)


def test_worker_mode_without_redis_server_says_what_to_install():
    data_dir = tempfile.mkdtemp(prefix="pushi-test-")
    empty = tempfile.mkdtemp(prefix="pushi-path-")
    result = subprocess.run(
        [sys.executable, os.path.join(SRC, "pushi", "base", "state.py")],
        env=env_with_src(
            {
                "PATH": empty,
                "PUSHI_WORKERS": "2",
                "PUSHI_DATA_DIR": data_dir,
                "PUSHI_ADMIN_SECRET": ADMIN_SECRET,
                "APP_PORT": str(free_port()),
                "SERVER_PORT": str(free_port()),
            }
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "PUSHI_WORKERS=2 needs Redis: install redis-server (Debian, Ubuntu:"
        " apt install redis-server; macOS: brew install redis) or set"
        " PUSHI_REDIS_URL"
    ], result.stderr


def test_workers_use_the_given_redis_with_its_password_masked():
    from redis_support import RedisServer

    require_redis()
    secured = RedisServer(password="s3cret-pass").start()
    server = Workers(redis_url=secured.url)
    try:
        server.start()
        log = server.read_log()
        assert "s3cret-pass" not in log
        assert server.redis_pid is None
        assert "2 workers (pids" in log and "127.0.0.1:%d" % secured.port in log
        assert len(server.node_ids()) == WORKERS
    finally:
        server.stop()
        secured.close()


def test_a_killed_workers_presence_members_leave_once(workers):
    from pushi.proto import auth

    server = workers()
    app = server.create_app("presence")
    by_node, clients = clients_on_every_worker(server, app)
    pids = {
        int(
            re.search(r"pushi\[%d\] Cluster node (\d+)" % pid, server.read_log()).group(
                1
            )
        ): pid
        for pid in server.pids
    }
    (victim_node, victim), (_survivor_node, survivor) = sorted(by_node.items())
    for client, user in ((survivor, "stay"), (victim, "gone")):
        channel_data = json.dumps({"user_id": user})
        signature = auth.channel_auth(
            app["key"], app["secret"], client.socket_id, "presence-room", channel_data
        )
        answer = client.subscribe("presence-room", signature, channel_data)
        assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    added = survivor.recv_event("pusher_internal:member_added", timeout=10)
    assert json.loads(added["data"])["user_id"] == "gone"
    os.kill(pids[victim_node], signal.SIGKILL)
    # the reaper of the dead node's entries: within its bound (10 s) and a turn
    removed = survivor.recv_event("pusher_internal:member_removed", timeout=40)
    assert json.loads(removed["data"])["user_id"] == "gone"
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            message = survivor.recv(timeout=max(0.1, deadline - time.time()))
        except TimeoutError:
            break
        assert message["event"] != "pusher_internal:member_removed", message
    for client in clients:
        try:
            client.close()
        except Exception:
            pass


def test_a_killed_events_writer_is_restarted_and_persisting_goes_on(workers):
    server = workers()
    app = server.create_app("writer")
    connection = http.client.HTTPConnection("127.0.0.1", server.app_port, timeout=15)
    status, answer = publish(connection, app, "stored", "saved", "before", persist=True)
    assert status == 200, answer
    os.kill(server.writer_pid, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline and "Restarted events writer" not in server.read_log():
        time.sleep(0.2)
    assert "Restarted events writer" in server.read_log(), server.read_log()
    # each worker's next batch connects to the new writer
    answers = []
    for index in range(20):
        connection = http.client.HTTPConnection(
            "127.0.0.1", server.app_port, timeout=15
        )
        answers.append(
            publish(
                connection, app, "stored", "saved", "after-%d" % index, persist=True
            )
        )
        connection.close()
    # a batch in flight when the writer died is answered 503, never lost silently
    assert all(status in (200, 503) for status, _answer in answers), answers
    assert [status for status, _answer in answers][-5:] == [200] * 5, answers


def test_a_killed_private_redis_is_restarted_and_the_workers_rejoin(workers):
    server = workers()
    app = server.create_app("redis")
    os.kill(server.redis_pid, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline and "Restarted redis-server" not in server.read_log():
        time.sleep(0.2)
    assert "Restarted redis-server" in server.read_log(), server.read_log()
    # the workers find the new, empty Redis by themselves and serve again
    deadline = time.time() + 60
    delivered = False
    while time.time() < deadline and not delivered:
        client = server.connect(app)
        answer = client.subscribe("back")
        if answer["event"] == "pusher_internal:subscription_succeeded":
            connection = http.client.HTTPConnection(
                "127.0.0.1", server.app_port, timeout=15
            )
            status, _answer = publish(connection, app, "back", "again", "up")
            if status == 200:
                delivered = client.recv_event("again")["data"] == "up"
        client.close()
        time.sleep(0.5)
    assert delivered, server.read_log()


def test_a_child_that_keeps_dying_is_restarted_later_each_time():
    from pushi.base.workers import BACKOFF, Child

    child = Child("worker 1", lambda: None)
    child.start()
    delays = [child.died() for _ in range(len(BACKOFF) + 2)]
    assert delays == list(BACKOFF) + [BACKOFF[-1]] * 2
    # one that ran long enough starts over
    child.started_at -= 3600
    assert child.died() == BACKOFF[0]


def test_the_apps_file_is_applied_once_by_the_supervisor(workers, tmp_path):
    path = tmp_path / "apps.json"
    secret = "apps-file-secret-0123456789abcdef"
    path.write_text(
        json.dumps({"apps": [{"app_id": "5", "key": "filed-key", "secret": secret}]})
    )
    server = workers(env={"PUSHI_APPS_FILE": str(path)})
    log = server.read_log()
    assert log.count("1 created, 0 updated, 0 unchanged") == 1, log
    app = {"app_id": "5", "key": "filed-key", "secret": secret}
    clients = [server.connect(app) for _ in range(20)]
    assert len({client.socket_id.split(".")[0] for client in clients}) == WORKERS
    for client in clients:
        client.close()
    # a bad file is refused once, in one line, before any worker starts
    path.write_text(json.dumps({"apps": [{"app_id": "5", "key": "filed-key"}]}))
    result = subprocess.run(
        [sys.executable, os.path.join(SRC, "pushi", "base", "state.py")],
        env=dict(
            server.env(),
            APP_PORT=str(free_port()),
            SERVER_PORT=str(free_port()),
            PUSHI_DATA_DIR=str(tmp_path / "other"),
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "secret" in result.stderr


def test_sigterm_to_every_process_at_once_still_stops_cleanly(workers):
    """As systemd's default KillMode=control-group stops a service."""
    server = workers()
    app = server.create_app("group")
    clients = [server.connect(app) for _ in range(10)]
    connection = http.client.HTTPConnection("127.0.0.1", server.app_port, timeout=15)
    for index in range(20):
        status, answer = publish(
            connection, app, "kept", "saved", "group-%d" % index, persist=True
        )
        assert status == 200, answer
    children = server.children()
    process = server.process
    for pid in [process.pid] + children:
        os.kill(pid, signal.SIGTERM)
    assert [client.close_code(timeout=20) for client in clients] == [4200] * 10
    assert process.wait(30) == 0
    assert "Traceback" not in server.read_log(), server.read_log()
    assert wait_gone(children) == []
    server.process = None
    server.log.close()
    database = sqlite3.connect(os.path.join(server.data_dir, "pushi.sqlite3"))
    try:
        (count,) = database.execute(
            "SELECT count(*) FROM events WHERE app_id = ?", (str(app["app_id"]),)
        ).fetchone()
    finally:
        database.close()
    assert count == 20


def test_the_events_writer_ends_with_the_supervisor_not_on_its_own_sigterm(workers):
    server = workers()
    app = server.create_app("writer-term")
    os.kill(server.writer_pid, signal.SIGTERM)
    time.sleep(2)
    assert alive(server.writer_pid)
    connection = http.client.HTTPConnection("127.0.0.1", server.app_port, timeout=15)
    status, answer = publish(connection, app, "kept", "saved", "after", persist=True)
    assert status == 200, answer
    assert "events writer (pid" not in server.read_log()
