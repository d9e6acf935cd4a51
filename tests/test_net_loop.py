"""The loop, in process: a State on an ephemeral port, no traffic.

Netius polls with a fixed timeout of a quarter second and runs due delays
only between polls; ``net.wire.Loop`` makes the poll wake for the next one,
and runs work handed over with ``call_soon`` / ``schedule(work)`` from a
deque of its own.  The margins here are far above what the work asks for
and still below the quarter second a missed wake-up costs, so the tests
check that the loop wakes, not how fast it is.
"""

import socket
import threading
import time

import pytest

from pushi.base.config import Config
from pushi.base.state import State
from support import free_port


@pytest.fixture
def state(tmp_path):
    state = State(Config(server_port=free_port(), data_dir=str(tmp_path)))
    state.start_server()
    yield state
    state.stop()


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
def test_watch_read_runs_work_only_when_readable(state):
    """Netius polls every socket for writability too; ``watch_read``'s
    work runs when its socket has something to read, not each time the
    other end reads and makes it writable again.  And ``unwatch_read``
    lets go of the socket entirely: the loop stops cleanly once it is
    closed."""
    watched, other = socket.socketpair()
    runs = []
    readable = threading.Event()

    def work():
        runs.append(watched.recv(4096, socket.MSG_DONTWAIT))
        readable.set()

    try:
        state.call_in_loop(state.watch_read, watched, work)
        for _ in range(3):
            watched.send(b"x" * 1000)
            assert other.recv(4096) == b"x" * 1000
            time.sleep(0.05)  # the loop sees the socket writable again
        assert runs == []
        other.send(b"answer")
        assert readable.wait(5)
        assert runs == [b"answer"]
    finally:
        state.call_in_loop(state.unwatch_read, watched)
        watched.close()
        other.close()
