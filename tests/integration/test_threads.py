"""Work that crosses threads: the app directory's writers, a personal
channel that loads while its subscriptions change, disabling an app with
sockets open, and stopping while REST requests are in flight.  Each race
is set up step by step (a store that holds a reader at the point where
the race happens), so a test fails every time the guard is missing."""

import os
import socket
import threading
import time

import pytest

import pushi
from pushi.base.apps import AppDirectory
from pushi.base.config import Config
from pushi.base.engine import Engine
from pushi.base.limits import App
from pushi.base.state import LoopStopped, State
from pushi.base.store.sqlite import SQLiteStore
from pushi.base.webhooks import Webhooks, _Lane
from pushi.proto import auth

from support import (
    ADMIN_SECRET,
    PushiServer,
    connect,
    free_port,
    read_until,
    send,
    upgrade_request,
)


@pytest.fixture
def store(tmp_path):
    store = SQLiteStore(str(tmp_path / "data"))
    yield store
    store.close()


class Held:
    """Wraps one method of an object (a store): it reads, then waits for
    ``release``."""

    def __init__(self, owner, name):
        self.read = threading.Event()
        self.release = threading.Event()
        method = getattr(owner, name)

        def held(*args):
            result = method(*args)
            self.read.set()
            assert self.release.wait(10)
            return result

        setattr(owner, name, held)


def in_thread(work, *args):
    thread = threading.Thread(target=work, args=args)
    thread.start()
    return thread


def test_a_refresh_does_not_undo_a_change_made_while_it_reads(store):
    record = store.create_app("a")
    directory = AppDirectory(store)
    directory.refresh()
    held = Held(store, "list_apps")
    refresh = in_thread(directory.refresh)
    assert held.read.wait(10)
    # the app is disabled while the refresh holds the old list
    change = in_thread(
        directory.put, App(store.update_app(record["app_id"], enabled=False))
    )
    time.sleep(0.2)
    held.release.set()
    refresh.join(10)
    change.join(10)
    assert directory.by_id(record["app_id"]).enabled is False


def test_a_load_on_a_miss_keeps_a_newer_copy(store):
    record = store.create_app("a")
    directory = AppDirectory(store)
    held = Held(store, "get_app_by_key")
    load = in_thread(directory.load_key, record["key"])
    assert held.read.wait(10)
    directory.put(App(store.update_app(record["app_id"], enabled=False)))
    held.release.set()
    load.join(10)
    assert directory.by_key(record["key"]).enabled is False
    assert directory.by_id(record["app_id"]).enabled is False


def test_a_personal_channel_loading_hears_of_a_subscription_added_meanwhile(
    store,
):
    app = App(store.create_app("a"))
    offloaded = []
    engine = Engine(
        Config(), store=store, offload=lambda work, then: offloaded.append((work, then))
    )
    store.subscribe(app.app_id, "u1", "old")
    session, transport = connect(engine, app)
    token = auth.channel_auth(app.key, app.secret, session.socket_id, "personal-u1")
    send(engine, session, "pusher:subscribe", {"channel": "personal-u1", "auth": token})
    work, then = offloaded.pop()
    read_before = work()
    # added over REST while the load is off the loop, after it read
    store.subscribe(app.app_id, "u1", "new")
    engine.personal_changed(app.app_id, "u1", "new", True)
    then(read_before)
    while offloaded:
        work, then = offloaded.pop()
        then(work())
    assert {"personal-u1", "old", "new"} <= set(session.channels)
    succeeded = [
        message
        for message in transport.messages()
        if message["event"] == "pusher_internal:subscription_succeeded"
    ]
    assert len(succeeded) == 1


def test_a_personal_channel_left_while_it_loads_is_not_joined(store):
    """An unsubscribe that comes while the personal channel loads stands:
    the load's answer is dropped, and the socket is on none of the
    channels it covers."""
    app = App(store.create_app("a"))
    offloaded = []
    engine = Engine(
        Config(), store=store, offload=lambda work, then: offloaded.append((work, then))
    )
    store.subscribe(app.app_id, "u1", "news")
    session, transport = connect(engine, app)
    token = auth.channel_auth(app.key, app.secret, session.socket_id, "personal-u1")
    send(engine, session, "pusher:subscribe", {"channel": "personal-u1", "auth": token})
    send(engine, session, "pusher:unsubscribe", {"channel": "personal-u1"})
    while offloaded:
        work, then = offloaded.pop()
        then(work())
    assert session.channels == {} and session.loading is None
    assert transport.messages() == []
    # and it may subscribe again
    send(engine, session, "pusher:subscribe", {"channel": "personal-u1", "auth": token})
    while offloaded:
        work, then = offloaded.pop()
        then(work())
    assert {"personal-u1", "news"} <= set(session.channels)


def test_disabling_an_app_closes_its_sockets_with_4003():
    engine = Engine(Config())
    record = {"app_id": "1", "key": "k" * 32, "secret": "s" * 64, "name": "a"}
    other = App(dict(record, app_id="2", key="o" * 32))
    session, transport = connect(engine, App(record))
    bystander, bystander_transport = connect(engine, other)
    engine.update_app(App(dict(record, enabled=False)))
    assert transport.messages() == [
        {"event": "pusher:error", "data": {"code": 4003, "message": "App disabled"}}
    ]
    assert transport.closed == 4003
    assert bystander_transport.closed is None


def test_a_disabled_app_answers_its_admin_only(server, app):
    admin = {"Authorization": "Bearer " + ADMIN_SECRET}
    own = server.token_headers(app)
    client = server.connect(app)
    try:
        server.update_app(app, enabled=False)
        assert client.recv()["data"]["code"] == 4003
        assert client.close_code() == 4003
        path = "apps/%s" % app["app_id"]
        with pytest.raises(pushi.PushiError) as refused:
            server.client(app).get_events("news")
        assert refused.value.status == 403
        # its session tokens ended with it, for good
        assert server.request("GET", path, headers=own)[0] == 401
        status, answer = server.request("GET", path, headers=admin)
        assert status == 200 and answer["enabled"] is False
        assert server.update_app(app, enabled=True)["enabled"] is True
        server.connect(app).close()
        assert server.request("GET", path, headers=own)[0] == 401
    finally:
        client.close()


def test_after_the_loop_has_ended_calls_into_it_fail_at_once(tmp_path):
    state = State(Config(server_port=free_port(), data_dir=str(tmp_path)))
    state.start_server()
    state.stop()
    started = time.monotonic()
    with pytest.raises(LoopStopped):
        state.call_in_loop(lambda: None)
    with pytest.raises(LoopStopped):
        state.call_soon(lambda: None)
    assert time.monotonic() - started < 5


POOL_THREADS = ("pushi-worker", "pushi-rest", "pushi-store", "pushi-health")


def test_stop_joins_the_threads_of_every_pool(tmp_path):
    """Work under way in the pools (an offloaded store call, a persisted
    publish waiting for its commit, a health check) ends before ``stop``
    returns: no pool thread outlives the State, and the store is closed
    only after them."""
    state = State(Config(server_port=free_port(), data_dir=str(tmp_path)))
    state.start_server()
    finished = []

    def slow(name):
        time.sleep(1)
        finished.append(name)

    try:
        state.offload(lambda: slow("worker"), lambda result: None)
        state.app.publisher.writers.submit(slow, "store")
        state.metrics.health["slow"] = lambda: slow("health")
        in_thread(state.metrics.component_up, "slow")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not all(
            any(thread.name.startswith(name) for thread in threading.enumerate())
            for name in ("pushi-worker", "pushi-store", "pushi-health")
        ):
            time.sleep(0.01)
    finally:
        state.stop()
    running = [
        thread.name
        for thread in threading.enumerate()
        if thread.name.startswith(POOL_THREADS)
        or thread.name.startswith("pushi-webhook_")
    ]
    assert running == []
    assert sorted(finished) == ["health", "store", "worker"]


def test_stopping_with_rest_requests_in_flight_fails_nothing():
    """Keep-alive clients ask for what only the loop knows while the
    server stops: queued requests are dropped, none waits for a loop that
    is gone or fails on it."""
    instance = PushiServer().start()
    app = instance.create_app("stop")
    path = "/apps/%s/channels" % app["app_id"]
    token = instance.token_headers(app)["Authorization"]
    request = (
        "GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n" % (path, token)
    ).encode()
    answered = []

    def ask():
        sock = socket.create_connection(("127.0.0.1", instance.app_port), 10)
        sock.settimeout(20)
        try:
            while True:
                sock.sendall(request)
                if not sock.recv(65536):
                    return
                answered.append(1)
        except OSError:
            pass
        finally:
            sock.close()

    threads = [in_thread(ask) for _ in range(8)]
    while len(answered) < 200:
        time.sleep(0.05)
    process = instance.process
    instance.stop()
    for thread in threads:
        thread.join(20)
    assert process.returncode == 0
    log = instance.read_log()
    assert "Traceback" not in log and "ERROR" not in log, log


def test_a_webhook_retry_due_after_stop_is_not_sent():
    reported = []
    webhooks = Webhooks(None, emit=lambda *args: reported.append(args))
    app = App({"app_id": "1", "key": "k" * 32, "secret": "s" * 64, "name": "a"})
    webhooks.stop()
    # a retry's turn, and a post, to a port nothing listens on
    url = "http://127.0.0.1:%d/" % free_port()
    webhooks._send(_Lane(app.app_id, url))
    assert webhooks._post(app, url, b'{"time_ms":1,"events":[{}]}') == (
        None,
        "stopped",
    )
    assert reported == []


def test_a_socket_whose_app_loads_while_it_changes_gets_the_change(tmp_path):
    state = State(Config(server_port=free_port(), data_dir=str(tmp_path)))
    state.start_server()
    try:
        # created after the start: not in memory, loaded off the loop; the
        # change lands after the load, before the loop opens the socket
        record = state.store.create_app("late")
        held = Held(state.apps, "load_key")
        sock = socket.create_connection(("127.0.0.1", state.config.server_port), 10)
        sock.sendall(upgrade_request("/app/%s?protocol=7" % record["key"]))
        assert held.read.wait(10)
        changed = state.store.update_app(record["app_id"], client_events=True)
        state.app_changed(App(changed))
        held.release.set()
        read_until(sock, b"pusher:connection_established")

        def client_events():
            return [
                s.app.client_events for s in state.engine.registry.sessions.values()
            ]

        assert state.call_in_loop(client_events) == [True]
        sock.close()
    finally:
        state.stop()


def test_a_call_as_the_loop_closes_its_wake_up_is_refused_with_loop_stopped(
    tmp_path,
):
    """A stopping loop closes its wake-up descriptor a moment before it has
    ended: a REST thread's call in between is refused with ``LoopStopped``
    (a 503), not an ``OSError`` that the server logs as a failure."""
    state = State(Config(server_port=free_port(), data_dir=str(tmp_path)))
    state.start_server()
    wake_up = state.server.npool._eventfd
    saved = os.dup(wake_up.wfileno())
    read_only = os.open(os.devnull, os.O_RDONLY)
    try:
        state._stopping.set()
        # the moment the loop's clean-up has closed the descriptor another
        # thread is about to write to: the write fails with EBADF (a
        # read-only descriptor in its place, so that no other file gets it)
        os.dup2(read_only, wake_up.wfileno())
        with pytest.raises(LoopStopped):
            state.call_soon(lambda: None)
    finally:
        os.dup2(saved, wake_up.wfileno())
        os.close(saved)
        os.close(read_only)
        state.stop()
