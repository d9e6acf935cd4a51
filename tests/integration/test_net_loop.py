"""The loop, in process: a State on ephemeral ports, driven from the test.

Netius polls with a fixed timeout of a quarter second and runs due delays
only between polls; ``net.wire.Loop`` makes the poll wake for the next one,
and runs work handed over with ``call_soon`` / ``schedule(work)`` from a
deque of its own.  The margins here are far above what the work asks for
and still below the quarter second a missed wake-up costs, so the tests
check that the loop wakes, not how fast it is.
"""

import json
import select
import socket
import threading
import time
import tracemalloc

import pytest

from pushi.base.config import Config
from pushi.base.state import State
from pushi.net import wire
from pushi.proto.errors import SLOW_CONSUMER
from pushi.proto.websocket import close_frame

from support import (
    Client,
    free_port,
    logged_failures,
    masked_frame,
    read_until,
    stalled_subscriber,
    upgrade_request,
    wait_until,
)


@pytest.fixture
def start(tmp_path):
    """Starts a State with these settings (and the REST port with
    ``http``); each is stopped after the test."""
    started = []

    def start(http=False, **settings):
        config = Config(server_port=free_port(), data_dir=str(tmp_path), **settings)
        state = State(config)
        state.start_server(http=http)
        started.append(state)
        return state

    yield start
    for state in started:
        state.stop()


@pytest.fixture
def state(start):
    return start()


@pytest.fixture
def pair(state):
    """A socket pair: the first end for ``watch_read``, let go of at the
    end; the other end plays the peer."""
    watched, other = socket.socketpair()
    yield watched, other
    state.call_in_loop(state.unwatch_read, watched)
    watched.close()
    other.close()


def _scheduled(state, seconds):
    """Seconds from ``schedule(work, seconds)`` on the loop to ``work``."""
    fired = threading.Event()
    times = {}

    def work():
        times["fired"] = time.monotonic()
        fired.set()

    def schedule():
        times["scheduled"] = time.monotonic()
        state.schedule(work, seconds)

    state.call_in_loop(schedule)
    assert fired.wait(5)
    return times["fired"] - times["scheduled"]


def test_a_timer_fires_when_due_with_no_socket_traffic(state):
    elapsed = _scheduled(state, 0.02)
    assert 0.02 <= elapsed < 0.2


def test_work_from_another_thread_wakes_the_loop(state):
    ran = threading.Event()
    time.sleep(0.05)  # the loop is in its poll
    started = time.monotonic()
    state.call_soon(ran.set)
    assert ran.wait(5)
    assert time.monotonic() - started < 0.2


def test_work_runs_in_order_and_a_failure_stops_nothing(state):
    done = threading.Event()
    order = []

    def fail():
        order.append("fail")
        raise RuntimeError("work that fails")

    def queue():
        state.call_soon(order.append, 1)
        state.schedule(fail)
        state.call_soon(order.append, 2)
        state.schedule(done.set)

    state.call_in_loop(queue)
    assert done.wait(5)
    assert order == [1, "fail", 2]
    # the loop still runs
    assert state.call_in_loop(lambda: "alive") == "alive"


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_watch_read_runs_work_only_when_readable(state, pair):
    """Netius polls every socket for writability too; ``watch_read``'s
    work runs when its socket has something to read, not each time the
    other end reads and makes it writable again.  And ``unwatch_read``
    lets go of the socket entirely: the loop stops cleanly once it is
    closed."""
    watched, other = pair
    runs = []
    readable = threading.Event()

    def work():
        runs.append(watched.recv(4096, socket.MSG_DONTWAIT))
        readable.set()

    state.call_in_loop(state.watch_read, watched, work)
    for _ in range(3):
        watched.send(b"x" * 1000)
        assert other.recv(4096) == b"x" * 1000
        time.sleep(0.05)  # the loop sees the socket writable again
    assert runs == []
    other.send(b"answer")
    assert readable.wait(5)
    assert runs == [b"answer"]


def test_a_failure_of_work_on_a_watched_socket_stops_nothing(state, pair):
    """Each of the loop's entry points (here a watched socket's work) logs
    its failure and lets the loop go on."""
    watched, other = pair
    runs = []
    ran = threading.Event()

    def work():
        runs.append(watched.recv(4096, socket.MSG_DONTWAIT))
        ran.set()
        if len(runs) == 1:
            raise RuntimeError("work that fails")

    state.call_in_loop(state.watch_read, watched, work)
    with logged_failures() as failures:
        for message in (b"first", b"second"):
            ran.clear()
            other.send(message)
            assert ran.wait(5)
        assert runs == [b"first", b"second"]
        assert state.call_in_loop(lambda: "alive", timeout=5) == "alive"
    assert failures == ["work that fails"]


def test_watch_write_sends_what_a_full_buffer_left_once_the_peer_reads(state, pair):
    """A non-blocking socket whose send buffer is full: ``watch_write``'s
    work runs at the next turn (the socket may be writable already) and
    again each time the peer's reads make room, until it has sent all and
    calls ``unwatch_write``.  Watching for reading goes on meanwhile, and
    after."""
    watched, other = pair
    watched.setblocking(False)
    backlog = bytearray()
    chunk = b"y" * 65536
    while True:
        try:
            watched.send(chunk)
        except BlockingIOError:
            break
    backlog += b"z" * 200000  # what the buffer had no room for
    total = len(backlog)
    sent_all = threading.Event()
    read = []
    readable = threading.Event()
    tries = []

    def write():
        tries.append(len(backlog))
        while backlog:
            try:
                sent = watched.send(backlog)
            except BlockingIOError:
                return
            del backlog[:sent]
        state.unwatch_write(watched)
        sent_all.set()

    def on_read():
        read.append(watched.recv(4096, socket.MSG_DONTWAIT))
        readable.set()

    def watch():
        state.watch_read(watched, on_read)
        state.watch_write(watched, write)

    state.call_in_loop(watch)
    time.sleep(0.2)
    assert not sent_all.is_set() and tries  # tried once, had no room
    received = 0
    other.settimeout(5)
    deadline = time.monotonic() + 30
    while received < total:
        data = other.recv(1048576)
        assert data and time.monotonic() < deadline
        received += data.count(b"z")
    # the last bytes may arrive before the loop thread marks them sent
    assert sent_all.wait(5)
    assert received == total and backlog == bytearray()
    assert len(tries) > 1
    # reading is still watched, writing is not
    runs = len(tries)
    other.send(b"still here")
    assert readable.wait(5)
    assert read == [b"still here"]
    time.sleep(0.1)
    assert len(tries) == runs


def test_watch_write_alone_runs_at_once_on_a_writable_socket(state, pair):
    """A socket watched for writing only (a client connection with
    nothing to read yet) is polled all the same."""
    watched, _other = pair
    watched.setblocking(False)
    ran = threading.Event()

    def write():
        watched.send(b"hello")
        state.unwatch_write(watched)
        ran.set()

    state.call_in_loop(state.watch_write, watched, write)
    assert ran.wait(5)
    assert _other.recv(16) == b"hello"
    assert state.call_in_loop(lambda: watched in state.server.callbacks_m) is False


def test_a_pipelined_request_that_fails_closes_its_connection(start):
    """A pipelined request is parsed when its predecessor's answer is
    written, which may come from another thread a turn later; if handling
    it fails, the connection closes (it would otherwise wait forever)."""
    state = start(http=True, app_port=free_port())
    serve = state.http.handler

    def handler(request, answer):
        if request.path == "/later":
            # answered from another thread, as the WSGI routes are
            threading.Timer(
                0.05, state.call_soon, (answer, "200 OK", [], b"later")
            ).start()
        elif request.path == "/fails":
            raise RuntimeError("a handler that fails")
        else:
            serve(request, answer)

    state.http.handler = handler
    client = socket.create_connection(("127.0.0.1", state.config.app_port))
    client.settimeout(5)
    client.sendall(
        b"GET /later HTTP/1.1\r\nHost: x\r\n\r\nGET /fails HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    data = b""
    while True:
        chunk = client.recv(4096)  # a timeout fails the test
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"later")
    client.close()


def test_a_failure_while_dropping_a_slow_consumer_holds_back_no_other(start):
    """The engine failing to forget a socket dropped in the middle of a
    turn's writes (a bug there) costs that socket only: the sockets written
    after it in the same turn keep getting their events."""
    state = start(max_buffer=65536)
    app = state.store.create_app("slow")
    port = state.config.server_port
    # subscribed first: written first in each turn
    stalled = stalled_subscriber(port, app["key"], "firehose")
    reader = Client("ws://127.0.0.1:%d/app/%s?protocol=7" % (port, app["key"]))
    reader.send({"event": "pusher:subscribe", "data": {"channel": "firehose"}})
    reader.recv_event("pusher_internal:subscription_succeeded")
    forget, forgotten = state.engine.closed, []

    def closed(session):
        if session.socket_id != reader.socket_id:
            forgotten.append(session.socket_id)
            raise RuntimeError("a bug in the engine")
        forget(session)

    def publish_and_receive(index):
        data = "%d %s" % (index, "x" * 8000)
        state.call_in_loop(state.engine.publish, app["app_id"], ["firehose"], "e", data)
        assert reader.recv_event("e")["data"] == data

    state.engine.closed = closed
    with logged_failures() as failures:
        # until the stalled socket is dropped (more than the kernel's
        # buffers hold), then some more
        index = 0
        while not forgotten and index < 1000:
            publish_and_receive(index)
            index += 1
        for number in range(index, index + 20):
            publish_and_receive(number)
    assert forgotten and "a bug in the engine" in failures
    reader.ws.close()
    stalled.close()


def test_our_server_mixins_override_only_the_netius_hooks_they_mean_to():
    """The mixins of both servers (wire, capacity) and the servers
    themselves replace netius methods only where they mean to: a method of
    ours named like one of netius's loop (``resume``, ``on_resume``, which
    netius's ``start`` calls on a paused loop) would be called by netius
    with its arguments, not ours."""
    import netius

    from pushi.net.httpd import HttpServer
    from pushi.net.server import WebSocketServer

    hooks = {
        "build_connection",
        "debug",
        "load_logging",
        "on_connection_c",
        "on_connection_d",
        "on_data",
        "on_read",
        "on_read_s",
        "on_serve",
        "on_write",
        "on_socket_c",
        "socket_tcp",
        "is_sub_write",
        "sub_write",
    }
    for server in (WebSocketServer, HttpServer):
        ours = [k for k in server.__mro__ if k.__module__.startswith("pushi.")]
        theirs = [k for k in server.__mro__ if k.__module__.startswith("netius.")]
        for klass in ours:
            for name in vars(klass):
                if name.startswith("__") or name in hooks:
                    continue
                clash = [k.__name__ for k in theirs if name in vars(k)]
                assert not clash, "%s.%s replaces netius's %s.%s" % (
                    klass.__name__,
                    name,
                    clash[0],
                    name,
                )
    # netius's own resume still runs its loop's hook, with no argument
    assert WebSocketServer.resume is netius.Base.resume


def test_a_slow_consumer_that_still_sends_reads_its_4100_to_the_end(start):
    """A socket closed while its client still sends (a pong, a ping) is not
    read again, and a socket closed with bytes unread is reset by the
    kernel, which then drops what it had not sent yet: the frames before
    the close and the close itself (4100).  The close reads them away
    first."""
    state = start(max_buffer=65536)
    app = state.store.create_app("slow")
    port = state.config.server_port
    stalled = stalled_subscriber(port, app["key"], "firehose")
    data = "x" * 8000
    # more than the kernel's buffers hold: the socket is a slow consumer
    for _ in range(600):
        state.call_in_loop(state.engine.publish, app["app_id"], ["firehose"], "e", data)
    # the client speaks after the server has decided to close it
    stalled.sendall(masked_frame(json.dumps({"event": "pusher:ping", "data": {}})))
    time.sleep(0.5)
    stalled.settimeout(10)
    received = b""
    while True:
        try:
            chunk = stalled.recv(1 << 20)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    stalled.close()
    close = close_frame(SLOW_CONSUMER, "Slow consumer: reconnect")
    assert received.endswith(close), "no 4100 close at the end of %d bytes" % len(
        received
    )


def test_a_socket_that_keeps_sending_gets_at_most_64_messages_a_turn(state):
    """A turn that works off a socket's messages held back from the last
    one and then reads it again hands the engine 64 of its messages at
    most, in all (the fair share), not 64 of each."""
    app = state.store.create_app("flood")
    port = state.config.server_port
    raw = socket.create_connection(("127.0.0.1", port), 5)
    raw.sendall(upgrade_request("/app/%s?protocol=7" % app["key"]))
    read_until(raw, b"connection_established")
    server, receive, turns = state.server, state.engine.receive, {}

    def counted(session, text):
        turn = wire.loop_turn(server)
        turns[turn] = turns.get(turn, 0) + 1
        return receive(session, text)

    state.engine.receive = counted
    frame = masked_frame(json.dumps({"event": "client-x", "data": {}}))
    stop = threading.Event()

    def drain():
        raw.settimeout(0.2)
        while not stop.is_set():
            try:
                if not raw.recv(65536):
                    return
            except TimeoutError:
                pass

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        # batches that do not end on a turn's share: each turn has some
        # held back, and more to read
        for _ in range(200):
            raw.sendall(frame * 100)
            time.sleep(0.002)
        wait_until(lambda: sum(turns.values()) >= 20000, 10, message="all handed over")
    finally:
        stop.set()
        reader.join()
        raw.close()
    assert sum(turns.values()) == 20000
    assert max(turns.values()) <= 64, max(turns.values())


def test_an_idle_connection_costs_a_few_kilobytes_of_the_heap(start):
    """What the server allocates for an open, idle connection (its netius
    connection, link and session, traced by tracemalloc) stays small: the
    figure that decides how many sockets a process can hold.  Netius's
    connection makes three queues of 64 slots each that most sockets
    never use; they are made on their first write."""
    state = start()
    app = state.store.create_app("idle")
    port = state.config.server_port
    count = 200

    def open_idle():
        raw = socket.create_connection(("127.0.0.1", port))
        raw.sendall(upgrade_request("/app/%s?protocol=7" % app["key"]))
        assert b"connection_established" in read_until(raw, b"established")
        return raw

    warm = [open_idle() for _ in range(20)]
    tracemalloc.start(32)
    try:
        before = state.call_in_loop(tracemalloc.take_snapshot)
        sockets = [open_idle() for _ in range(count)]
        # the loop has taken in every socket once each has its answer
        after = state.call_in_loop(tracemalloc.take_snapshot)
    finally:
        tracemalloc.stop()
    server_side = [
        tracemalloc.Filter(True, "*netius*", all_frames=True),
        tracemalloc.Filter(True, "*pushi*", all_frames=True),
    ]
    growth = sum(
        stat.size_diff
        for stat in after.filter_traces(server_side).compare_to(
            before.filter_traces(server_side), "filename"
        )
    )
    assert growth / count < 4096, "%d bytes per idle connection" % (growth / count)
    for raw in warm + sockets:
        raw.close()


def opened(state, app, count):
    """``count`` raw sockets of ``app`` upgraded and greeted."""
    raws = []
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", state.config.server_port))
        raw.sendall(upgrade_request("/app/%s?protocol=7" % app["key"]))
        assert b"connection_established" in read_until(raw, b"established")
        raws.append(raw)
    return raws


def test_a_connection_makes_no_lock_and_no_id(start):
    """A socket that upgrades and opens (reported readable and writable at
    once by the poll), then closes, leaves netius's pending and restored
    locks and its id unmade: they are made on first use, and such a
    socket has no use for them."""
    state = start()
    raws = opened(state, state.store.create_app("lazy"), 5)

    connections = state.call_in_loop(lambda: list(state.server.connections))

    def made():
        return [
            sorted({"pending_lock", "restored_lock", "id"} & set(vars(connection)))
            for connection in connections
        ]

    try:
        assert state.call_in_loop(made) == [[]] * 5
    finally:
        for raw in raws:
            raw.close()
    wait_until(lambda: not state.call_in_loop(lambda: state.server.connections), 5)
    assert state.call_in_loop(made) == [[]] * 5


def test_an_accepted_socket_keeps_alive_and_sends_without_delay(start):
    """Both ports take a plain socket in without netius's setsockopt calls
    (``wire.PlainAccept``): the socket still has what those set, keep-alive
    and no delay (inherited from its listening socket), and is
    non-blocking.  It is the C socket, without the Python layer of
    ``socket.socket`` (``capacity._plain_accept``): not an object the
    garbage collector tracks."""
    import gc

    state = start(http=True)
    ports = {
        "ws": state.config.server_port,
        "rest": state.http.port,
    }
    raws = [socket.create_connection(("127.0.0.1", port)) for port in ports.values()]

    def options():
        seen = {}
        for name, server in (("ws", state.server), ("rest", state.http)):
            for connection in server.connections:
                raw = connection.socket
                seen[name] = (
                    raw.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
                    raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
                    raw.getblocking(),
                    gc.is_tracked(raw),
                )
        return seen

    try:
        wait_until(lambda: len(state.call_in_loop(options)) == 2, 5)
        assert state.call_in_loop(options) == {
            "ws": (True, True, False, False),
            "rest": (True, True, False, False),
        }
    finally:
        for raw in raws:
            raw.close()


def test_a_closed_connection_leaves_no_garbage_cycle(start, monkeypatch):
    """A socket that opened and closed is freed as its last reference goes
    (its connection, link and session no longer refer to each other), not
    left as a cycle for the garbage collector to find."""
    import gc

    from pushi.base.registry import Session
    from pushi.net import server

    # its link leaves the queue of upgrade deadlines within seconds
    monkeypatch.setattr(server, "HANDSHAKE_TIMEOUT", 1)
    state = start()
    app = state.store.create_app("cycles")
    raws = opened(state, app, 20)
    for raw in raws:
        raw.close()
    wait_until(
        lambda: state.call_in_loop(
            lambda: not state.server.connections and not state.server.handshakes
        ),
        10,
    )

    def ours(thing):
        # this server's (other tests' servers may have left some)
        kind = type(thing)
        if kind is wire.Connection:
            return thing.owner is state.server
        if kind is server.Link:
            return thing.server is state.server
        return kind is Session and thing.app.key == app["key"]

    def cycles():
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            return sorted({type(thing).__name__ for thing in gc.garbage if ours(thing)})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()

    assert state.call_in_loop(cycles) == []


def test_sockets_closed_in_any_order_leave_the_others_open(start):
    """The WebSocket port finds a closing socket among the open ones
    directly (``wire.Connections``), whatever the order they close in:
    each close takes its own connection out, the others stay, served."""
    import random

    state = start()
    app = state.store.create_app("order")
    raws = opened(state, app, 30)
    server = state.server

    def count():
        return state.call_in_loop(lambda: len(server.connections))

    assert state.call_in_loop(lambda: type(server.connections)) is wire.Connections
    assert count() == 30
    order = list(raws)
    random.Random(7).shuffle(order)
    for left, raw in zip(range(29, 9, -1), order[10:], strict=True):
        raw.close()
        wait_until(lambda left=left: count() == left, 5)
    left = order[:10]
    for raw in left:
        raw.sendall(masked_frame(json.dumps({"event": "pusher:ping", "data": {}})))
        assert b"pusher:pong" in read_until(raw, b"pusher:pong")
    for raw in left:
        raw.close()
    wait_until(lambda: count() == 0, 5)


def test_a_message_and_the_peers_end_in_one_read_are_both_seen(start):
    """A socket's read goes on past a message to the peer's end (the poll
    is edge-triggered: an end that came with the last bytes raises no
    event of its own): the message is answered, then the socket closed."""
    state = start()
    [raw] = opened(state, state.store.create_app("end"), 1)
    raw.sendall(masked_frame(json.dumps({"event": "pusher:ping", "data": {}})))
    raw.shutdown(socket.SHUT_WR)
    answer = read_until(raw, b"never sent")
    assert b"pusher:pong" in answer
    wait_until(lambda: not state.call_in_loop(lambda: len(state.server.connections)), 5)
    raw.close()


def test_a_socket_whose_reads_netius_disabled_is_not_read(start):
    """A connection whose reads are disabled (netius's ``disable_read``) is
    not read, even when the loop is asked to read it (as a resumed socket
    is): what it sent waits until its reads are enabled again."""
    state = start()
    [raw] = opened(state, state.store.create_app("disabled"), 1)
    server = state.server
    [connection] = state.call_in_loop(lambda: list(server.connections))
    state.call_in_loop(connection.disable_read)
    raw.sendall(masked_frame(json.dumps({"event": "pusher:ping", "data": {}})))
    time.sleep(0.2)
    state.call_in_loop(lambda: server.on_read(connection.socket))
    raw.settimeout(0.3)
    with pytest.raises(TimeoutError):
        raw.recv(65536)
    state.call_in_loop(connection.enable_read)
    assert b"pusher:pong" in read_until(raw, b"pusher:pong")
    raw.close()


def test_the_101_answer_and_connection_established_go_out_in_one_send(
    start, monkeypatch
):
    """A socket's upgrade is answered with one ``send`` once its app's key
    is known: the 101 answer's headers, then the
    ``pusher:connection_established`` frame after them (one loop turn's
    writes are joined)."""
    from pushi.net import server

    sends = []
    made = server.Link.__init__

    def counted(self, *args, **kwargs):
        made(self, *args, **kwargs)
        send = self.raw_send

        def raw_send(data):
            sends.append(bytes(data))
            return send(data)

        self.raw_send = raw_send

    monkeypatch.setattr(server.Link, "__init__", counted)
    state = start()
    app = state.store.create_app("one-send")
    # the first socket of an app finds its key in the store (off the loop,
    # its greeting a turn later); the next one in memory
    [first] = opened(state, app, 1)
    del sends[:]
    [raw] = opened(state, app, 1)
    assert len(sends) == 1
    head, _, frame = sends[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"pusher:connection_established" in frame
    first.close()
    raw.close()


def _polled_events(state, connection):
    """The events the loop's epoll watches ``connection``'s socket for, as
    the kernel lists them (``/proc/self/fdinfo`` of the epoll descriptor)."""

    def read():
        epoll_fd = state.server.poll.epoll.fileno()
        with open("/proc/self/fdinfo/%d" % epoll_fd) as file:
            for line in file:
                fields = line.split()
                if fields[:2] == ["tfd:", str(connection.socket.fileno())]:
                    return int(fields[3], 16)
        return None

    return state.call_in_loop(read)


@pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll only")
def test_a_socket_is_polled_for_writability_only_once_a_write_did_not_go_out(start):
    """An accepted socket is watched for reads only: its writes go straight
    to the socket, and a poll that watched writability too would report it
    writable with every read, for nothing.  Once a write does not go out
    whole (a reader that stalls), writability is watched, and what waits
    goes out as the client reads again; the others are served meanwhile."""
    state = start(max_buffer=1 << 24)
    app = state.store.create_app("writable")
    port = state.config.server_port
    # a window that the server fills at once, then reads back quickly
    stalled = stalled_subscriber(port, app["key"], "stream", 65536)
    [other] = opened(state, app, 1)
    connections = state.call_in_loop(lambda: list(state.server.connections))
    [watched] = [
        c for c in connections if c.socket.getpeername()[1] == stalled.getsockname()[1]
    ]
    assert not _polled_events(state, watched) & select.EPOLLOUT
    data = "x" * 8000
    # more than the kernel's buffers hold
    for index in range(1000):
        state.call_in_loop(
            state.engine.publish, app["app_id"], ["stream"], "e%d" % index, data
        )
    wait_until(lambda: state.call_in_loop(lambda: watched.pending_s) > 0, 5)
    assert _polled_events(state, watched) & select.EPOLLOUT
    other.sendall(masked_frame(json.dumps({"event": "pusher:ping", "data": {}})))
    assert b"pusher:pong" in read_until(other, b"pusher:pong")
    received = read_until(stalled, b'"e999"')
    assert received.count(b'"event":"e') == 1000
    wait_until(lambda: state.call_in_loop(lambda: watched.pending_s) == 0, 5)
    stalled.close()
    other.close()


def test_a_socket_is_drained_only_while_its_peer_has_not_ended():
    """``wire._drained``, which spares the read that would find an empty
    socket empty, says so only while the peer's end has not come: that end
    raised no event of its own if it came with the last bytes, and only a
    read finds it.  A socket it cannot tell about (not TCP) is read."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        assert wire._drained(server) is (hasattr(socket, "TCP_INFO"))
        client.sendall(b"last bytes")
        client.shutdown(socket.SHUT_WR)
        wait_until(lambda: not wire._drained(server), 5)
        assert server.recv(100) == b"last bytes"
        assert not wire._drained(server)
        assert server.recv(100) == b""
    finally:
        for raw in (client, server, listener):
            raw.close()
    first, second = socket.socketpair()
    try:
        assert wire._drained(first) is False
    finally:
        first.close()
        second.close()
