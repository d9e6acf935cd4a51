import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))

# src/ for pushi, and tests/ for the support modules of every folder
sys.path.insert(0, os.path.join(os.path.dirname(TESTS), "src"))
sys.path.insert(0, TESTS)

from support import PushiServer  # noqa: E402

# the kind of a test, from the folder under tests/ it is in
KINDS = {
    "unit": "unit",
    "js": "unit",
    "integration": "integration",
    "e2e": "e2e",
    "interop": "interop",
    "browser": "browser",
}


def pytest_xdist_auto_num_workers(config):
    """How many workers ``-n auto`` (scripts/test) starts: none for the unit
    tests alone or for one module (starting workers would cost more than
    they save), else ``PUSHI_TEST_WORKERS`` (default 6: the servers are
    processes of their own, and much of a test is waiting for them)."""
    if config.option.markexpr.strip() == "unit":
        return 0
    paths = [arg.split("::")[0] for arg in config.args]
    if len(paths) == 1 and os.path.isfile(paths[0]):
        return 0
    return int(os.environ.get("PUSHI_TEST_WORKERS", "6"))


def pytest_collection_modifyitems(config, items):
    """Marks each test with the kind of its folder (``-m unit`` and so on),
    unless it carries a kind of its own."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in set(KINDS.values())):
            continue
        relative = os.path.relpath(str(item.path), TESTS)
        kind = KINDS.get(relative.split(os.sep)[0])
        if kind:
            item.add_marker(kind)


@pytest.fixture(scope="module")
def server():
    """A real Pushi server for the tests of one module."""
    instance = PushiServer().start()
    yield instance
    instance.stop()


@pytest.fixture
def app(server):
    """A fresh app (client events on) on the module's server."""
    return server.create_app("test", client_events=True)


@pytest.fixture(scope="session")
def store_mongo_emulator():
    """One MongoDB wire-protocol emulator (mockupdb + mongomock, NOT MongoDB)
    on 127.0.0.1 for the whole session; ``.url`` is its connection string.
    Tests keep apart by using a database name of their own."""
    from mongo_emulator import MongoEmulator

    with MongoEmulator() as emulator:
        yield emulator


@pytest.fixture
def redis_server():
    """A real ``redis-server`` (no persistence) on a free port for one
    test, stopped after it; skipped without Redis unless CI is set."""
    from redis_support import RedisServer, require_redis

    require_redis()
    instance = RedisServer().start()
    yield instance
    instance.close()
