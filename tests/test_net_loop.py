"""The loop's timers, in process: a State on an ephemeral port, no traffic.

Netius polls with a fixed timeout of a quarter second and runs due delays
only between polls; ``net.wire.Loop`` makes the poll wake for the next one.
The margin here is ten times what the timer asks for and still below the
quarter second it took before, so the test checks that the loop wakes, not
how fast it is.
"""

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
