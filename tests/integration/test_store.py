"""One suite for every store backend (``pushi.base.store``).

Each test runs on:

* ``sqlite``: the embedded store in a temporary data dir;
* ``mongo-emulator``: ``MongoStore`` over a real socket to the wire-protocol
  emulator of ``tests/mongo_emulator.py`` (mockupdb + mongomock, NOT MongoDB);
* ``mongo-real``: ``MongoStore`` on the server named by ``MONGO_URL``, only
  when that variable is set (skipped otherwise).

Each test gets a fresh location (data dir or database).  A few tests are
SQLite-only (they check its writer thread, its query plans); the durability
test does not run on the emulator, whose data lives in this process's
memory, so killing a client process could never lose anything there.
"""

import contextlib
import fcntl
import json
import os
import pickle
import re
import selectors
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid

import pytest

from pushi.base.store import (
    MongoStore,
    SQLiteStore,
    StoreClosedError,
    is_store_error,
    open_store,
)
from pushi.base.store import sqlite as sqlite_module
from pushi.base.store.base import MAX_APP_KEYS, AppKeysError
from pushi.base.store.sqlite_events import WAL_LIMIT, EventsProcess
from pushi.proto.messages import message_id

from support import SRC, env_with_src, wait_until

MONGO_URL = os.environ.get("MONGO_URL")
SRC_DIR = SRC

BACKENDS = [
    "sqlite",
    "mongo-emulator",
    pytest.param(
        "mongo-real",
        marks=pytest.mark.skipif(not MONGO_URL, reason="MONGO_URL is not set"),
    ),
]

# Run by the tests in other processes: opens the store described by its
# arguments ("sqlite <dir>" or "mongo <url> <database>") and then runs the
# action named after them, printing one JSON line per result.
CHILD_SCRIPT = r"""
import json, sys, threading, time, uuid
sys.path.insert(0, sys.argv[1])
from pushi.base.store import MongoStore, SQLiteStore
kind, rest = sys.argv[2], sys.argv[3:]
if kind == "sqlite":
    store, rest = SQLiteStore(rest[0]), rest[1:]
else:
    store, rest = MongoStore(rest[0], database=rest[1]), rest[2:]
action = rest[0]
if action == "create-apps":
    for index in range(int(rest[1])):
        app = store.create_app("child-%d" % index)
        print(json.dumps([app["app_id"], app["key"]]), flush=True)
elif action == "add-events":
    # Several threads add events for ever; each acks once add_events
    # returned, until the test kills this process.
    print_lock = threading.Lock()
    def add(thread_index):
        for index in range(10 ** 9):
            mid = "t%d-%d" % (thread_index, index)
            store.add_events([dict(mid=mid, app_id="1", channel="durable",
                event="e", data="x" * 100, timestamp=time.time(),
                user_id=None)])
            with print_lock:
                print(mid, flush=True)
    for thread_index in range(4):
        threading.Thread(target=add, args=(thread_index,)).start()
store.close() if action == "create-apps" else None
"""


class Backend:
    """Opens stores of one backend at one location (a data dir or a
    database), so a test can use two instances on the same data, and runs
    child processes on that location."""

    def __init__(self, name, data_dir=None, url=None, database=None):
        self.name = name
        self.data_dir = data_dir
        self.url = url
        self.database = database
        self.opened = []

    def open(self):
        if self.name == "sqlite":
            store = SQLiteStore(self.data_dir)
        else:
            store = MongoStore(self.url, database=self.database)
        self.opened.append(store)
        return store

    def child(self, *action):
        """Starts the child script on this location; stdout is a pipe."""
        if self.name == "sqlite":
            location = ["sqlite", self.data_dir]
        else:
            location = ["mongo", self.url, self.database]
        return subprocess.Popen(
            [sys.executable, "-c", CHILD_SCRIPT, SRC_DIR]
            + location
            + [str(part) for part in action],
            stdout=subprocess.PIPE,
            text=True,
        )

    def close_all(self):
        for store in self.opened:
            store.close()


@pytest.fixture(params=BACKENDS)
def store_backend(request, tmp_path):
    """A ``Backend`` at a fresh location, for each backend in turn."""
    name = request.param
    if name == "sqlite":
        backend = Backend(name, data_dir=str(tmp_path / "data"))
    else:
        if name == "mongo-emulator":
            url = request.getfixturevalue("store_mongo_emulator").url
        else:
            url = MONGO_URL
        backend = Backend(name, url=url, database="pushi_test_" + uuid.uuid4().hex)
    yield backend
    if name != "sqlite":
        cleaner = MongoStore(backend.url, database=backend.database)
        cleaner.client.drop_database(backend.database)
        cleaner.close()
    backend.close_all()


@pytest.fixture
def store(store_backend):
    """A store of the backend under test, on a fresh location."""
    return store_backend.open()


def make_event(app_id, channel, timestamp, mid=None, data=None, user_id=None):
    """Returns an event record as the engine builds it."""
    return dict(
        mid=mid or uuid.uuid4().hex,
        app_id=app_id,
        channel=channel,
        event="message",
        data=data if data is not None else json.dumps({"at": timestamp}),
        timestamp=timestamp,
        user_id=user_id,
    )


def mids(events):
    return [event["mid"] for event in events]


def all_events(store, app_id, channels):
    return store.get_events(app_id, channels, skip=0, count=10**6)


# apps


def test_create_app_returns_full_record_with_strong_credentials(store):
    app = store.create_app("chat", client_events=True, settings={"max": 5})

    assert app["app_id"] == "1"
    assert app["name"] == "chat"
    assert app["enabled"] is True
    assert app["client_events"] is True
    assert app["settings"] == {"max": 5}
    assert re.fullmatch("[0-9a-f]{32}", app["key"])
    assert re.fullmatch("[0-9a-f]{32,}", app["secret"])
    assert app["key"] != app["secret"]
    assert store.get_app("1") == app


def test_create_app_defaults_and_distinct_credentials(store):
    first = store.create_app("one")
    second = store.create_app("two")

    assert second["app_id"] == "2"
    assert first["client_events"] is False
    assert first["settings"] == {}
    assert len({first["key"], second["key"], first["secret"], second["secret"]}) == 4


def test_get_app_and_by_key(store):
    app = store.create_app("chat")
    other = store.create_app("other")

    assert store.get_app(app["app_id"]) == app
    assert store.get_app_by_key(app["key"]) == app
    assert store.get_app_by_key(other["key"]) == other
    assert store.get_app("3") is None
    assert store.get_app("not-a-number") is None
    assert store.get_app_by_key("0" * 32) is None
    assert store.get_app_by_key(app["secret"]) is None


def test_list_apps_in_numeric_order(store):
    created = [store.create_app("app-%d" % index) for index in range(11)]

    listed = store.list_apps()

    # "10" and "11" after "9": numeric, not string, order.
    assert [app["app_id"] for app in listed] == [str(n) for n in range(1, 12)]
    assert listed == created


def test_update_app(store):
    app = store.create_app("chat")
    store.create_app("untouched")

    updated = store.update_app(
        app["app_id"],
        name="renamed",
        enabled=False,
        client_events=True,
        settings={"limit": 3},
    )

    expected = dict(
        app, name="renamed", enabled=False, client_events=True, settings={"limit": 3}
    )
    assert updated == expected
    assert store.get_app(app["app_id"]) == expected
    assert store.get_app_by_key(app["key"]) == expected
    assert store.get_app("2")["name"] == "untouched"
    assert store.update_app(app["app_id"], enabled=True)["enabled"] is True
    assert store.update_app("99", name="ghost") is None
    with pytest.raises(ValueError):
        store.update_app(app["app_id"], key="f" * 32)


def put_record(app_id, key, **fields):
    record = dict(
        app_id=app_id,
        name="declared",
        key=key,
        secret="s" * 32 + app_id,
        enabled=True,
        client_events=False,
        settings={},
    )
    record.update(fields)
    return record


def without_keys(record):
    """A stored record less its ``keys`` (its pairs, checked apart)."""
    return {name: value for name, value in record.items() if name != "keys"}


def test_put_app_creates_with_its_id_then_replaces_and_ids_go_on(store):
    created = store.put_app(put_record("7", "declared-key"))

    assert without_keys(created) == put_record("7", "declared-key")
    assert created["keys"] == [
        {"key": "declared-key", "secret": created["secret"], "created": None}
    ]
    assert store.get_app("7") == created
    assert store.get_app_by_key("declared-key") == created
    # create_app hands out ids after the largest put
    assert store.create_app("next")["app_id"] == "8"
    changed = put_record(
        "7",
        "new-key",
        name="renamed",
        secret="t" * 40,
        enabled=False,
        client_events=True,
        settings={"max_batch": 3},
    )
    # the put pair replaces every pair the app had
    store.add_app_key("7")
    stored = store.put_app(changed)
    assert without_keys(stored) == changed
    assert [(pair["key"], pair["secret"]) for pair in stored["keys"]] == [
        ("new-key", "t" * 40)
    ]
    assert stored["keys"][0]["created"] > 0
    assert store.get_app("7") == stored
    assert store.get_app_by_key("declared-key") is None
    assert store.get_app_by_key("new-key") == stored
    assert [app["app_id"] for app in store.list_apps()] == ["7", "8"]
    # a smaller id is created where it says, and ids still go on after 8
    assert store.put_app(put_record("2", "two"))["app_id"] == "2"
    assert store.create_app("after")["app_id"] == "9"


def test_put_app_with_another_apps_key_fails_and_changes_nothing(store):
    first = store.create_app("first")
    second = store.put_app(put_record("5", "five"))

    for record in (put_record("5", first["key"]), put_record("6", first["key"])):
        with pytest.raises(Exception) as raised:
            store.put_app(record)
        # the store's unique key refused it (what the caller reports)
        assert is_store_error(raised.value), raised.value
    assert store.get_app("5") == second
    assert store.get_app("6") is None
    assert store.get_app_by_key(first["key"]) == first


def test_app_key_pairs_add_revoke_and_lookup(store_backend):
    store = store_backend.open()
    other_instance = store_backend.open()
    app = store.create_app("chat")
    first = {"key": app["key"], "secret": app["secret"], "created": None}
    assert app["keys"] == [first]
    version = store.apps_version()

    added = store.add_app_key(app["app_id"])

    assert re.fullmatch("[0-9a-f]{32}", added["key"])
    assert re.fullmatch("[0-9a-f]{64}", added["secret"])
    assert added["created"] > 0
    assert store.apps_version() != version
    record = other_instance.get_app(app["app_id"])
    assert record["keys"] == [first, added]
    assert (record["key"], record["secret"]) == (app["key"], app["secret"])
    assert other_instance.get_app_by_key(added["key"]) == record
    assert other_instance.get_app_by_key(app["key"]) == record
    assert other_instance.list_apps() == [record]
    assert store.add_app_key("99") is None

    # revoking the first pair makes the next one first
    version = store.apps_version()
    revoked = store.revoke_app_key(app["app_id"], app["key"])

    assert revoked["keys"] == [added]
    assert (revoked["key"], revoked["secret"]) == (added["key"], added["secret"])
    assert other_instance.get_app_by_key(app["key"]) is None
    assert other_instance.get_app_by_key(added["key"]) == revoked
    assert other_instance.apps_version() != version
    assert store.revoke_app_key(app["app_id"], app["key"]) is None
    assert store.revoke_app_key("99", added["key"]) is None
    with pytest.raises(AppKeysError):
        store.revoke_app_key(app["app_id"], added["key"])
    assert store.get_app(app["app_id"])["keys"] == [added]

    # a later pair is revoked in place
    third = store.add_app_key(app["app_id"])
    fourth = store.add_app_key(app["app_id"])
    assert store.revoke_app_key(app["app_id"], third["key"])["keys"] == [
        added,
        fourth,
    ]
    assert store.get_app_by_key(third["key"]) is None


def test_sqlite_app_of_schema_1_keeps_its_pair_and_gains_more(tmp_path):
    # a data dir written before key pairs existed
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    connection = sqlite3.connect(str(data_dir / sqlite_module.DATABASE_NAME))
    connection.executescript(
        "CREATE TABLE apps (app_id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " name TEXT NOT NULL, key TEXT NOT NULL UNIQUE, secret TEXT NOT NULL,"
        " enabled INTEGER NOT NULL DEFAULT 1,"
        " client_events INTEGER NOT NULL DEFAULT 0,"
        " settings TEXT NOT NULL DEFAULT '{}');"
        " INSERT INTO apps (name, key, secret) VALUES ('old', 'k1', 's1');"
        " PRAGMA user_version = 1;"
    )
    connection.close()
    store = SQLiteStore(str(data_dir))
    try:
        app = store.get_app("1")
        assert (app["key"], app["secret"]) == ("k1", "s1")
        assert app["keys"] == [{"key": "k1", "secret": "s1", "created": None}]
        added = store.add_app_key("1")
        assert store.get_app_by_key(added["key"])["app_id"] == "1"
        assert store.revoke_app_key("1", "k1")["keys"] == [added]
    finally:
        store.close()


def test_app_key_pairs_are_bounded(store):
    app = store.create_app("chat")
    for _ in range(MAX_APP_KEYS - 1):
        store.add_app_key(app["app_id"])

    with pytest.raises(AppKeysError):
        store.add_app_key(app["app_id"])
    assert len(store.get_app(app["app_id"])["keys"]) == MAX_APP_KEYS


def test_apps_version_moves_on_every_app_change(store):
    before = store.apps_version()
    app = store.create_app("chat")
    created = store.apps_version()
    store.update_app(app["app_id"], name="renamed")

    assert before != created != store.apps_version()
    unchanged = store.apps_version()
    store.add_events([make_event(app["app_id"], "c", time.time())])
    assert store.apps_version() == unchanged


def test_app_ids_shared_by_two_instances(store_backend):
    first, second = store_backend.open(), store_backend.open()

    ids = []
    for _ in range(3):
        ids.append(first.create_app("from-first")["app_id"])
        ids.append(second.create_app("from-second")["app_id"])

    assert ids == ["1", "2", "3", "4", "5", "6"]
    assert first.list_apps() == second.list_apps()


def test_app_ids_unique_across_processes_and_seen_at_once(store_backend):
    server = store_backend.open()
    assert server.list_apps() == []  # the "server" is running before the CLI
    per_child = 15

    children = [store_backend.child("create-apps", per_child) for _ in range(3)]
    server_ids = [server.create_app("server")["app_id"] for _ in range(per_child)]
    child_apps = []
    for child in children:
        output, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        child_apps += [json.loads(line) for line in output.splitlines()]

    all_ids = server_ids + [app_id for app_id, _key in child_apps]
    total = 4 * per_child
    assert sorted(all_ids, key=int) == [str(n) for n in range(1, total + 1)]
    # No stale cache: the running store sees every app the others created.
    assert [app["app_id"] for app in server.list_apps()] == [
        str(n) for n in range(1, total + 1)
    ]
    for app_id, key in child_apps:
        assert server.get_app(app_id)["key"] == key
        assert server.get_app_by_key(key)["app_id"] == app_id


# events


def test_events_newest_first_with_skip_and_count_across_channels(store):
    added = []
    for index in range(30):
        channel = ["news", "sport", "weather"][index % 3]
        added.append(make_event("1", channel, 1000.0 + index, mid="m%d" % index))
    # Several batches, out of order: the order comes from the timestamps.
    store.add_events(added[10:20])
    store.add_events(added[:10])
    store.add_events(added[20:])

    expected = [
        event["mid"]
        for event in sorted(added, key=lambda event: -event["timestamp"])
        if event["channel"] in ("news", "sport")
    ]
    assert len(expected) == 20
    assert mids(store.get_events("1", ["news", "sport"])) == expected[:10]
    assert (
        mids(store.get_events("1", ["news", "sport"], skip=3, count=5))
        == (expected[3:8])
    )
    assert (
        mids(store.get_events("1", ["sport", "news"], skip=15, count=10))
        == (expected[15:])
    )
    assert store.get_events("1", ["news", "sport"], skip=20, count=10) == []
    assert mids(store.get_events("1", ["news"], skip=2, count=3)) == [
        "m21",
        "m18",
        "m15",
    ]
    assert store.get_events("1", ["nobody-here"]) == []
    assert store.get_events("1", []) == []
    assert store.get_events("1", ["news"], count=0) == []


def test_add_events_then_calls_back_once_stored(store):
    import concurrent.futures
    import queue

    results = queue.Queue()
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        store.add_events_then(
            [make_event("1", "later", 1.0, mid="a")], results.put, executor
        )
        assert results.get(timeout=10) is None
        assert [event["mid"] for event in store.get_events("1", ["later"])] == ["a"]
        if isinstance(store, SQLiteStore):
            # a row the schema refuses reaches the callback as an error
            bad = dict(make_event("1", "later", 2.0, mid="b"), data=None)
            store.add_events_then([bad], results.put, executor)
            assert results.get(timeout=10) is not None
    assert [event["mid"] for event in store.get_events("1", ["later"])] == ["a"]


def test_equal_timestamps_come_newest_added_first(store):
    for index in range(5):
        store.add_events([make_event("1", "tied", 500.0, mid="tie-%d" % index)])

    assert mids(store.get_events("1", ["tied"])) == [
        "tie-4",
        "tie-3",
        "tie-2",
        "tie-1",
        "tie-0",
    ]
    assert mids(store.get_events("1", ["tied", "other"], skip=1, count=2)) == [
        "tie-3",
        "tie-2",
    ]


def test_equal_timestamps_across_channels_come_newest_added_first(store):
    for index in range(6):
        channel = "left" if index % 2 == 0 else "right"
        store.add_events([make_event("1", channel, 700.0, mid="x%d" % index)])

    assert mids(store.get_events("1", ["left", "right"], count=6)) == [
        "x5",
        "x4",
        "x3",
        "x2",
        "x1",
        "x0",
    ]
    assert mids(store.get_events("1", ["right", "left"], skip=2, count=3)) == [
        "x3",
        "x2",
        "x1",
    ]


def test_event_fields_round_trip_exactly(store):
    data = '{"text": "olá \\u00e9 \U0001f600", "n": 1.50}'
    store.add_events(
        [
            make_event("1", "private-room", 1234.5678, mid="a", data=data, user_id=7),
            make_event("1", "private-room", 1235.0, mid="b", data="plain"),
        ]
    )

    newest, oldest = store.get_events("1", ["private-room"])

    assert newest == dict(
        mid="b",
        app_id="1",
        channel="private-room",
        event="message",
        data="plain",
        timestamp=1235.0,
        user_id=None,
    )
    assert oldest["data"] == data
    assert oldest["timestamp"] == 1234.5678
    assert oldest["user_id"] == "7"


def test_adding_the_same_mid_twice_keeps_one_event(store):
    event = make_event("1", "c", 10.0, mid="once")
    store.add_events([event])
    store.add_events([event, make_event("1", "c", 11.0, mid="twice")])

    assert mids(all_events(store, "1", ["c"])) == ["twice", "once"]


def test_apps_never_see_each_others_data(store):
    store.add_events(
        [make_event("1", "shared", 1.0 + n, mid="a%d" % n) for n in range(5)]
    )
    store.add_events(
        [make_event("2", "shared", 1.5 + n, mid="b%d" % n) for n in range(5)]
    )
    # The same mid in another app is another event.
    store.add_events([make_event("2", "shared", 9.0, mid="a0")])
    store.subscribe("1", "alice", "shared")
    store.subscribe("2", "bob", "shared")

    assert mids(all_events(store, "1", ["shared"])) == ["a4", "a3", "a2", "a1", "a0"]
    assert mids(all_events(store, "2", ["shared"])) == [
        "a0",
        "b4",
        "b3",
        "b2",
        "b1",
        "b0",
    ]
    assert all_events(store, "3", ["shared"]) == []
    assert store.list_subscriptions("1") == [
        dict(app_id="1", user_id="alice", event="shared")
    ]
    assert store.list_subscriptions("2", event="shared") == [
        dict(app_id="2", user_id="bob", event="shared")
    ]
    assert store.list_subscriptions("2", user_id="alice") == []
    assert store.unsubscribe("2", "alice", "shared") is False

    assert store.trim_events("1", max_count=1, max_age=0.5, now=5.2) == 4
    assert mids(all_events(store, "1", ["shared"])) == ["a4"]
    assert len(all_events(store, "2", ["shared"])) == 6


# persisted subscriptions


def test_subscribe_is_idempotent_and_unsubscribe_removes(store):
    record = store.subscribe("1", "alice", "news")
    assert record == dict(app_id="1", user_id="alice", event="news")
    assert store.subscribe("1", "alice", "news") == record
    assert store.list_subscriptions("1") == [record]

    assert store.unsubscribe("1", "alice", "news") is True
    assert store.unsubscribe("1", "alice", "news") is False
    assert store.list_subscriptions("1") == []


def test_list_subscriptions_filters(store):
    for user_id, event in [
        ("bob", "sport"),
        ("alice", "news"),
        ("alice", "sport"),
        ("carol", "news"),
        (42, "news"),
    ]:
        store.subscribe("1", user_id, event)

    def pairs(records):
        return [(record["user_id"], record["event"]) for record in records]

    assert pairs(store.list_subscriptions("1")) == [
        ("42", "news"),
        ("alice", "news"),
        ("alice", "sport"),
        ("bob", "sport"),
        ("carol", "news"),
    ]
    assert pairs(store.list_subscriptions("1", user_id="alice")) == [
        ("alice", "news"),
        ("alice", "sport"),
    ]
    assert pairs(store.list_subscriptions("1", event="news")) == [
        ("42", "news"),
        ("alice", "news"),
        ("carol", "news"),
    ]
    assert pairs(store.list_subscriptions("1", user_id="42", event="news")) == [
        ("42", "news")
    ]
    assert store.list_subscriptions("1", user_id="bob", event="news") == []


# retention


def test_trim_by_count_keeps_the_newest_per_channel(store):
    store.add_events(
        [make_event("1", "busy", 100.0 + n, mid="b%d" % n) for n in range(12)]
    )
    store.add_events(
        [make_event("1", "quiet", 100.0 + n, mid="q%d" % n) for n in range(3)]
    )

    assert store.trim_events("1", max_count=5) == 7
    assert mids(all_events(store, "1", ["busy"])) == ["b11", "b10", "b9", "b8", "b7"]
    assert mids(all_events(store, "1", ["quiet"])) == ["q2", "q1", "q0"]
    assert store.trim_events("1", max_count=5) == 0

    # Later events and trims keep the bookkeeping right.
    store.add_events(
        [make_event("1", "busy", 200.0 + n, mid="c%d" % n) for n in range(3)]
    )
    store.add_events(
        [make_event("1", "quiet", 200.0 + n, mid="r%d" % n) for n in range(3)]
    )
    assert store.trim_events("1", max_count=4) == 4 + 2
    assert mids(all_events(store, "1", ["busy"])) == ["c2", "c1", "c0", "b11"]
    assert mids(all_events(store, "1", ["quiet"])) == ["r2", "r1", "r0", "q2"]
    assert store.trim_events("1", max_count=0) == 8
    assert all_events(store, "1", ["busy", "quiet"]) == []


def test_trim_by_count_with_equal_timestamps_drops_oldest_added(store):
    for index in range(6):
        store.add_events([make_event("1", "tied", 50.0, mid="t%d" % index)])

    assert store.trim_events("1", max_count=2) == 4
    assert mids(all_events(store, "1", ["tied"])) == ["t5", "t4"]


def test_trim_by_age(store):
    store.add_events(
        [
            make_event("1", "a", 899.0, mid="old"),
            make_event("1", "b", 899.9, mid="old-too"),
            make_event("1", "a", 900.0, mid="edge"),
            make_event("1", "b", 950.0, mid="fresh"),
        ]
    )

    assert store.trim_events("1", max_age=100, now=1000.0) == 2
    assert mids(all_events(store, "1", ["a", "b"])) == ["fresh", "edge"]
    assert store.trim_events("1", max_age=100, now=1000.0) == 0


def test_trim_by_age_defaults_to_the_current_time(store):
    now = time.time()
    store.add_events(
        [
            make_event("1", "a", now - 3600, mid="hour-ago"),
            make_event("1", "a", now + 3600, mid="future"),
        ]
    )

    assert store.trim_events("1", max_age=60) == 1
    assert mids(all_events(store, "1", ["a"])) == ["future"]


def test_trim_by_age_and_count_together(store):
    store.add_events([make_event("1", "c", float(n), mid="e%d" % n) for n in range(10)])

    # Age removes e0..e3 (older than 4.0), count then keeps the newest 3.
    assert store.trim_events("1", max_count=3, max_age=6, now=10.0) == 7
    assert mids(all_events(store, "1", ["c"])) == ["e9", "e8", "e7"]
    assert store.trim_events("1") == 0


# concurrency and durability


def test_concurrent_add_events_are_all_committed(store):
    threads, per_thread = 16, 40
    errors = []

    def add(thread_index):
        try:
            for index in range(per_thread):
                mid = "t%d-%d" % (thread_index, index)
                channel = "channel-%d" % (thread_index % 4)
                if index % 10 == 9:  # now and then a batch of two
                    store.add_events(
                        [
                            make_event("1", channel, time.time(), mid=mid),
                            make_event("1", channel, time.time(), mid=mid + "b"),
                        ]
                    )
                else:
                    store.add_events([make_event("1", channel, time.time(), mid=mid)])
                # Committed on return: visible to this very thread.
                assert mid in mids(store.get_events("1", [channel], count=50))
        except BaseException as error:  # reported below, with the thread
            errors.append((thread_index, error))

    workers = [threading.Thread(target=add, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    stored = mids(all_events(store, "1", ["channel-%d" % n for n in range(4)]))
    assert len(stored) == threads * (per_thread + per_thread // 10)
    assert len(set(stored)) == len(stored)


def test_events_survive_sigkill_of_the_writing_process(store_backend):
    if store_backend.name == "mongo-emulator":
        pytest.skip("the emulator is in-memory in this process: nothing to lose")
    child = store_backend.child("add-events")
    acked = []
    try:
        for line in child.stdout:
            acked.append(line.strip())
            if len(acked) >= 300:
                break
        # Acks already written by the time of the kill count too.
        os.kill(child.pid, signal.SIGKILL)
        acked += [line.strip() for line in child.stdout if line.strip()]
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert len(acked) >= 300

    reopened = store_backend.open()
    stored = set(mids(all_events(reopened, "1", ["durable"])))
    assert set(acked) <= stored


def test_mongo_bounds_every_operation_and_lets_the_url_decide(store_mongo_emulator):
    base_url = store_mongo_emulator.url + "pushi_options"
    store = MongoStore(base_url)
    try:
        # a server that stops answering cannot hold a caller for ever
        assert store.client.options.timeout == 10
        assert store.client.options.server_selection_timeout == 10
    finally:
        store.close()
    store = MongoStore(
        base_url + "?serverSelectionTimeoutMS=1500&timeoutMS=0&w=majority&journal=true"
    )
    try:
        assert store.client.options.server_selection_timeout == 1.5
        assert store.client.options.timeout == 0
        assert store.events.write_concern.document == {"w": "majority", "j": True}
    finally:
        store.close()


# SQLite specifics


@pytest.fixture
def sqlite_store(tmp_path):
    store = SQLiteStore(str(tmp_path / "data"))
    yield store
    store.close()


def test_open_store_picks_the_backend(tmp_path, store_mongo_emulator):
    embedded = open_store(data_dir=str(tmp_path / "embedded"))
    try:
        assert isinstance(embedded, SQLiteStore)
        assert os.path.isfile(str(tmp_path / "embedded" / "pushi.sqlite3"))
    finally:
        embedded.close()
    database = "pushi_test_" + uuid.uuid4().hex
    mongo = open_store(mongo_url=store_mongo_emulator.url + database)
    try:
        assert isinstance(mongo, MongoStore)
        assert mongo.database.name == database
        mongo.client.drop_database(database)
    finally:
        mongo.close()


def test_sqlite_uses_wal_and_full_sync(sqlite_store):
    connection = sqlite_store._reader()
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


@pytest.mark.parametrize(
    "data, error",
    [
        # a NOT NULL constraint breaks inside the writer
        (None, "IntegrityError"),
        # SQLite binds text as UTF-8, which a lone surrogate is not
        ("\ud800", "Error"),
    ],
)
def test_sqlite_bad_event_fails_only_its_own_caller(sqlite_store, data, error):
    # in a batch it may share with good events from other threads
    results = {}
    barrier = threading.Barrier(9)

    def add(index, event):
        barrier.wait()
        try:
            sqlite_store.add_events([event])
            results[index] = "ok"
        except Exception as error:
            results[index] = type(error).__name__

    workers = [
        threading.Thread(
            target=add, args=(n, make_event("1", "c", float(n), mid="m%d" % n))
        )
        for n in range(8)
    ]
    bad = make_event("1", "c", 99.0, mid="bad")
    bad["data"] = data
    workers.append(threading.Thread(target=add, args=("bad", bad)))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert results.pop("bad") == error
    assert results == {n: "ok" for n in range(8)}
    assert sorted(mids(all_events(sqlite_store, "1", ["c"]))) == [
        "m%d" % n for n in range(8)
    ]


def test_sqlite_events_writer_process_is_replaced_when_it_dies(tmp_path):
    store = SQLiteStore(str(tmp_path / "data"))
    try:
        store.add_events([make_event("1", "c", 1.0, mid="before")])
        child = store._events._process
        assert child is not None and child.poll() is None
        child.kill()
        child.wait(10)
        store.add_events([make_event("1", "c", 2.0, mid="after")])
        assert store._events._process is not child
        assert mids(all_events(store, "1", ["c"])) == ["after", "before"]
    finally:
        store.close()
    # closing the store ends its writer process
    assert child.poll() is not None
    assert store._events._process is None


def _file_only_mids(path, tmp_path):
    """The mids in the database file itself, without its WAL: what the
    checkpoints have copied into it."""
    copy = str(tmp_path / "file-only.sqlite3")
    with open(path, "rb") as source, open(copy, "wb") as target:
        target.write(source.read())
    with contextlib.closing(sqlite3.connect(copy)) as connection:
        try:
            return {row[0] for row in connection.execute("SELECT mid FROM events")}
        except sqlite3.DatabaseError:
            # not even the schema yet, or a copy torn by a checkpoint that
            # was writing the file meanwhile (whole only with the WAL): the
            # caller looks again
            return set()


def test_sqlite_events_are_checkpointed_beside_the_commits(tmp_path):
    # a handful of commits (far below SQLite's automatic checkpoint, which
    # runs inside the commit that passes 1,000 pages): the writer's
    # process copies them into the database file on its own, soon after
    store = SQLiteStore(str(tmp_path / "data"), "NORMAL")
    try:
        for index in range(5):
            store.add_events([make_event("1", "c", float(index), mid="m%d" % index)])
        wanted = {"m%d" % index for index in range(5)}
        deadline = time.monotonic() + 10
        while _file_only_mids(store.path, tmp_path) != wanted:
            assert time.monotonic() < deadline, "not checkpointed"
            time.sleep(0.05)
    finally:
        store.close()


def test_sqlite_wal_stays_bounded_under_steady_commits(tmp_path):
    # commits that keep landing while the background checkpoints run would
    # never let the WAL restart: the writer then checkpoints it itself
    store = SQLiteStore(str(tmp_path / "data"), "NORMAL")
    writer = EventsProcess(store.path, "NORMAL")
    wal = store.path + "-wal"
    largest, count, deadline = 0, 0, time.monotonic() + 4
    try:
        while time.monotonic() < deadline:
            now = time.time()
            rows = [
                [(message_id(now), "1", "c%d" % (n % 7), "e", "x" * 100, now, None)]
                for n in range(count, count + 20)
            ]
            count += len(rows)
            assert writer.store(rows) == [None] * len(rows)
            largest = max(largest, os.path.getsize(wal) if os.path.exists(wal) else 0)
    finally:
        writer.close()
        store.close()
    # written without end, the WAL would hold every page ever committed
    assert largest < 2 * WAL_LIMIT, (largest, count)
    assert count > 10000, count


def test_sqlite_refuses_writes_once_its_file_is_removed_or_replaced(tmp_path):
    # an open connection would go on committing to the removed file, which
    # no restart reads again: those writes must fail, not be acknowledged
    store = SQLiteStore(str(tmp_path / "data"))
    try:
        store.add_events([make_event("1", "c", 1.0, mid="before")])
        app = store.create_app("kept")
        saved = str(tmp_path / "saved.sqlite3")
        with sqlite3.connect(saved) as copy:
            sqlite3.connect(store.path).backup(copy)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(store.path + suffix):
                os.remove(store.path + suffix)
        with pytest.raises(sqlite3.OperationalError):
            store.add_events([make_event("1", "c", 2.0, mid="lost")])
        with pytest.raises(sqlite3.OperationalError):
            store.create_app("lost")
        # still gone: never created empty behind the operator's back
        with pytest.raises(sqlite3.OperationalError):
            store.add_events([make_event("1", "c", 2.0, mid="lost")])
        assert not os.path.exists(store.path)
        # a restored file (another inode) is taken into use
        os.replace(saved, store.path)
        store.add_events([make_event("1", "c", 3.0, mid="after")])
        assert store.create_app("after")["app_id"] == str(int(app["app_id"]) + 1)
    finally:
        store.close()
    with sqlite3.connect(store.path) as check:
        stored = [row[0] for row in check.execute("SELECT mid FROM events")]
    assert sorted(stored) == ["after", "before"]


class SelectorLoop:
    """A small event loop (``selectors``) on this thread, with what a store
    bound to a loop uses; the server's is netius."""

    def __init__(self):
        self.selector = selectors.DefaultSelector()
        self.turn = []
        self.timers = []
        self.calls = []
        self.lock = threading.Lock()

    def schedule(self, work, seconds=0):
        if seconds:
            self.timers.append((time.monotonic() + seconds, work))
        else:
            self.turn.append(work)

    def call_soon(self, work, *args):
        with self.lock:
            self.calls.append(lambda: work(*args))

    def watch_read(self, sock, work):
        self._watch(sock, read=work)

    def unwatch_read(self, sock):
        self._watch(sock, read=None)

    def watch_write(self, sock, work):
        self._watch(sock, write=work)

    def unwatch_write(self, sock):
        self._watch(sock, write=None)

    def _watch(self, sock, **works):
        try:
            watched = dict(self.selector.get_key(sock).data)
            self.selector.unregister(sock)
        except KeyError:
            watched = {"read": None, "write": None}
        watched.update(works)
        events = (selectors.EVENT_READ if watched["read"] else 0) | (
            selectors.EVENT_WRITE if watched["write"] else 0
        )
        if events:
            self.selector.register(sock, events, watched)

    def run_once(self, wait=0.0, timers=False):
        """One turn; timers fire only when asked (a test's turns run at
        its own pace, which a timer must not race)."""
        with self.lock:
            calls, self.calls = self.calls, []
        turn, self.turn = self.turn, []
        now = time.monotonic() if timers else float("-inf")
        due = [timer for timer in self.timers if timer[0] <= now]
        self.timers = [timer for timer in self.timers if timer[0] > now]
        for work in calls + turn + [work for _at, work in due]:
            work()
        for key, events in self.selector.select(wait):
            for event, kind in (
                (selectors.EVENT_READ, "read"),
                (selectors.EVENT_WRITE, "write"),
            ):
                # what the work before may have changed
                watched = self.selector.get_map().get(key.fd)
                work = watched and watched.data[kind]
                if events & event and work:
                    work()

    def run_until(self, done, timeout=10):
        deadline = time.time() + timeout
        while not done():
            assert time.time() < deadline, "the loop timed out"
            self.run_once(0.01, timers=True)


def test_sqlite_bound_to_a_loop_commits_in_groups(tmp_path):
    store = SQLiteStore(str(tmp_path / "data"))
    loop = SelectorLoop()
    try:
        store.bind_loop(loop)
        batches = []
        process = store._group.process
        send_frame = process.send_frame
        process.send_frame = lambda frame: (
            batches.append(len(pickle.loads(frame[4:]))),
            send_frame(frame),
        )
        results = []
        # three adds in one turn leave together
        for n in range(3):
            store.add_events_then(
                [make_event("1", "c", float(n), mid="a%d" % n)], results.append
            )
        loop.run_until(lambda: len(results) == 3)
        assert batches == [3]
        # a lone add leaves at the next turn, and so does the add of the
        # turn after while the first commits (held here by another
        # writer's lock): the writer finds it waiting once it has answered,
        # and commits it without the loop's help; adds in later turns wait
        # and leave together when the oldest is answered, before its
        # caller hears
        blocker = sqlite3.connect(str(tmp_path / "data" / "pushi.sqlite3"))
        blocker.execute("BEGIN IMMEDIATE")
        sent_when_answered = []

        def answered(error):
            sent_when_answered.append(list(batches))
            results.append(error)

        store.add_events_then([make_event("1", "c", 9.0, mid="b0")], answered)
        loop.run_once()
        assert batches == [3, 1]
        for n in (1, 2, 3):
            store.add_events_then(
                [make_event("1", "c", 10.0 + n, mid="b%d" % n)], results.append
            )
            loop.run_once(0.05)
        assert batches == [3, 1, 1] and len(results) == 3
        blocker.rollback()
        blocker.close()
        deadline = time.monotonic() + 10
        while "b1" not in mids(all_events(store, "1", ["c"])):
            assert time.monotonic() < deadline, "b1 not committed"
            time.sleep(0.01)
        assert len(results) == 3
        loop.run_until(lambda: len(results) == 7)
        assert batches == [3, 1, 1, 2] and sent_when_answered == [[3, 1, 1, 2]]
        store.add_events_then([make_event("1", "c", 15.0, mid="c")], results.append)
        loop.run_until(lambda: len(results) == 8)
        assert batches == [3, 1, 1, 2, 1] and results == [None] * 8
        # another thread's add_events crosses into the loop and waits for it
        other = threading.Thread(
            target=store.add_events, args=([make_event("1", "c", 20.0, mid="t")],)
        )
        other.start()
        loop.run_until(lambda: not other.is_alive())
        assert batches == [3, 1, 1, 2, 1, 1]
        assert mids(all_events(store, "1", ["c"])) == [
            "t",
            "c",
            "b3",
            "b2",
            "b1",
            "b0",
            "a2",
            "a1",
            "a0",
        ]
        # a duplicate mid is skipped, a bad row fails only its own caller
        failures = []
        store.add_events_then([make_event("1", "c", 30.0, mid="t")], failures.append)
        store.add_events_then(
            [dict(make_event("1", "c", 31.0), event=None)], failures.append
        )
        loop.run_until(lambda: len(failures) == 2)
        assert failures[0] is None and failures[1] is not None
        # a child that died while idle is replaced by the next batch
        process._process.kill()
        process._process.wait(10)
        store.add_events_then(
            [make_event("1", "c", 40.0, mid="after")], failures.append
        )
        loop.run_until(lambda: len(failures) == 3)
        assert failures[2] is None
        assert mids(all_events(store, "1", ["c"]))[0] == "after"
        # a child that dies holding a batch fails that batch's callers
        child = process._process
        child.send_signal(signal.SIGSTOP)
        # counted from here: how the adds above fell into batches depends
        # on the turns they took
        sent = len(batches)
        store.add_events_then([make_event("1", "c", 50.0, mid="lost")], failures.append)
        loop.run_until(lambda: len(batches) == sent + 1)
        child.kill()
        loop.run_until(lambda: len(failures) == 4)
        assert isinstance(failures[3], Exception)
        store.add_events_then(
            [make_event("1", "c", 60.0, mid="later")], failures.append
        )
        loop.run_until(lambda: len(failures) == 5)
        assert failures[4] is None and process._process is not child
    finally:
        store.close()
    assert store._group.process._process is None


def stored_mids(path):
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return {row[0] for row in connection.execute("SELECT mid FROM events")}


def unread_bytes(sock):
    """Bytes waiting on ``sock`` that nobody has read yet."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[
        0
    ]


def test_an_answer_on_the_socket_reaches_its_batch_when_the_child_died(tmp_path):
    """The child commits A, answers it and dies before the loop reads the
    answer; the loop's next batch B meets a dead socket.  A still hears it
    is committed (its answer is read first), B that it failed."""
    store = SQLiteStore(str(tmp_path / "data"))
    loop = SelectorLoop()
    results = {}
    try:
        store.bind_loop(loop)
        process = store._group.process
        store.add_events_then(
            [make_event("1", "c", 1.0, mid="A")], lambda e: results.setdefault("A", e)
        )
        loop.run_once()
        child = process._process
        wait_until(lambda: "A" in stored_mids(store.path))
        wait_until(lambda: unread_bytes(process.socket) > 0)
        child.kill()
        child.wait(10)
        store.add_events_then(
            [make_event("1", "c", 2.0, mid="B")], lambda e: results.setdefault("B", e)
        )
        loop.run_until(lambda: len(results) == 2)
    finally:
        store.close()
    assert results["A"] is None and isinstance(results["B"], Exception)
    assert stored_mids(store.path) == {"A"}


def test_answers_read_as_the_child_dies_reach_their_own_batches(tmp_path):
    """Two batches committed and answered in one read, two more waiting
    (one a row the store refuses), and the child dies between the loop's
    read and its next write: the answered batches hear they are committed
    and the waiting ones go to a new child, each hearing its own answer."""
    store = SQLiteStore(str(tmp_path / "data"))
    loop = SelectorLoop()
    results = {}
    try:
        store.bind_loop(loop)
        group = store._group
        group.max_lists = 1
        process = group.process

        def add(mid, event=None):
            event = event or make_event("1", "c", 1.0, mid=mid)
            store.add_events_then([event], lambda e: results.setdefault(mid, e))

        blocker = sqlite3.connect(store.path)
        blocker.execute("BEGIN IMMEDIATE")
        add("A")
        loop.run_once()
        add("B")
        loop.run_once()
        assert len(group._committing) == 2
        add("C")
        add("D", dict(make_event("1", "c", 4.0, mid="D"), event=None))
        loop.run_once()
        child = process._process
        blocker.rollback()
        blocker.close()
        wait_until(lambda: {"A", "B"} <= stored_mids(store.path))
        # both answers wait on the socket (a frame of 9 bytes each)
        wait_until(lambda: unread_bytes(process.socket) >= 2 * 9)
        receive = process.receive

        def receive_then_die(wait=False):
            answers = receive(wait)
            if process._process is child and child.poll() is None:
                child.kill()
                child.wait(10)
            return answers

        process.receive = receive_then_die
        loop.run_until(lambda: len(results) == 4)
    finally:
        store.close()
    assert results["A"] is None and results["B"] is None and results["C"] is None
    assert isinstance(results["D"], Exception)
    assert stored_mids(store.path) == {"A", "B", "C"}


def test_a_batch_larger_than_the_socket_takes_never_holds_the_loop(tmp_path):
    """A first batch of 4 MB leaves while the child starts (it reads
    nothing until it has imported Pushi): the loop writes what the socket
    takes and the rest as it drains, without waiting."""
    store = SQLiteStore(str(tmp_path / "data"))
    loop = SelectorLoop()
    results = []
    try:
        store.bind_loop(loop)
        for n in range(40):
            store.add_events_then(
                [make_event("1", "c", float(n), data="x" * 10000) for _ in range(10)],
                results.append,
            )
        loop.run_once()
        # the turn is over with the batch partly sent
        assert store._group.process.unsent
        loop.run_until(lambda: len(results) == 40)
    finally:
        store.close()
    assert results == [None] * 40
    assert len(stored_mids(store.path)) == 400


def test_the_events_child_outlives_a_sigterm_to_the_whole_group(tmp_path):
    """A service manager's stop sends SIGTERM to every process of the
    server's group: the child commits and answers the batch it holds, and
    ends when the server closes its input."""
    store = SQLiteStore(str(tmp_path / "data"))
    loop = SelectorLoop()
    results = []
    try:
        store.bind_loop(loop)
        # a first batch: the child is up
        store.add_events_then([make_event("1", "c", 1.0, mid="A")], results.append)
        loop.run_until(lambda: results)
        blocker = sqlite3.connect(store.path)
        blocker.execute("BEGIN IMMEDIATE")
        store.add_events_then([make_event("1", "c", 2.0, mid="B")], results.append)
        loop.run_once()
        child = store._group.process._process
        child.send_signal(signal.SIGTERM)
        blocker.rollback()
        blocker.close()
        loop.run_until(lambda: len(results) == 2)
        assert child.poll() is None
    finally:
        store.close()
    assert results == [None, None]
    assert child.poll() == 0


def test_a_closed_store_fails_a_persist_without_a_new_child(tmp_path):
    store = SQLiteStore(str(tmp_path / "data"))
    loop = SelectorLoop()
    results = []
    store.bind_loop(loop)
    store.add_events_then([make_event("1", "c", 1.0, mid="A")], results.append)
    loop.run_until(lambda: results)
    store.close()
    store.add_events_then([make_event("1", "c", 2.0, mid="late")], results.append)
    loop.run_until(lambda: len(results) == 2)
    assert isinstance(results[1], StoreClosedError)
    assert store._group.process._process is None
    assert stored_mids(store.path) == {"A"}


def test_sqlite_trims_in_bounded_transactions(sqlite_store, monkeypatch):
    """A retention trim deletes at most ``TRIM_CHUNK`` rows per transaction
    (the events writer commits in between), and the chunks add up to the
    same result as one trim."""
    monkeypatch.setattr(sqlite_module, "TRIM_CHUNK", 4)
    sqlite_store.add_events(
        [make_event("1", "c%d" % (n % 2), float(n), mid="m%d" % n) for n in range(30)]
    )
    statements = []
    sqlite_store._write(
        lambda connection: connection.set_trace_callback(statements.append)
    )
    # 10 older than 10 s before now=20, then of the 20 left 2 per channel stay
    assert sqlite_store.trim_events("1", max_count=2, max_age=10, now=20.0) == 26
    sqlite_store._write(lambda connection: connection.set_trace_callback(None))
    assert mids(all_events(sqlite_store, "1", ["c0", "c1"])) == [
        "m29",
        "m28",
        "m27",
        "m26",
    ]
    # 26 rows in chunks of 4: 7 trims (the last finds 2), each its own
    assert statements.count("BEGIN IMMEDIATE") == 7 + 1
    assert sqlite_store.trim_events("1", max_count=2) == 0
    counts = sqlite_store._reader().execute(
        "SELECT channel, count FROM channels WHERE app_id = '1' ORDER BY channel"
    )
    assert counts.fetchall() == [("c0", 2), ("c1", 2)]


def test_sqlite_event_queries_use_indexes(sqlite_store):
    sqlite_store.add_events(
        [make_event("1", "c%d" % (n % 3), float(n)) for n in range(50)]
    )
    statements = []
    sqlite_store._reader().set_trace_callback(statements.append)
    sqlite_store._write(
        lambda connection: connection.set_trace_callback(statements.append)
    )

    sqlite_store.get_events("1", ["c0"], skip=2, count=5)
    sqlite_store.get_events("1", ["c0", "c1"], skip=2, count=5)
    sqlite_store.trim_events("1", max_count=3, max_age=10, now=45.0)
    sqlite_store._write(lambda connection: connection.set_trace_callback(None))
    sqlite_store._reader().set_trace_callback(None)

    queries = [
        statement
        for statement in statements
        if re.match(r"\s*(SELECT|DELETE|UPDATE)\b.*\bevents\b", statement, re.I | re.S)
    ]
    assert len(queries) >= 6
    connection = sqlite_store._reader()
    for query in queries:
        plan = " | ".join(
            row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + query)
        )
        assert re.search(r"USING .*INDEX|USING INTEGER PRIMARY KEY", plan), (
            query,
            plan,
        )
        assert not re.search(r"\bSCAN events\b", plan), (query, plan)
        if "ORDER BY" in query:
            assert "TEMP B-TREE FOR ORDER BY" not in plan, (query, plan)


def test_sqlite_closed_store_refuses_work(tmp_path):
    store = SQLiteStore(str(tmp_path / "data"))
    store.create_app("chat")
    store.close()
    store.close()  # twice is harmless

    with pytest.raises(StoreClosedError):
        store.add_events([make_event("1", "c", 1.0)])
    with pytest.raises(StoreClosedError):
        store.create_app("late")
    reopened = SQLiteStore(str(tmp_path / "data"))
    try:
        assert [app["name"] for app in reopened.list_apps()] == ["chat"]
    finally:
        reopened.close()


OPEN_AT = """
import sys, time
from pushi.base.store.sqlite import SQLiteStore

start = float(sys.argv[2])
while time.time() < start:
    pass
SQLiteStore(sys.argv[1], "NORMAL").close()
"""


def test_processes_opening_a_new_sqlite_store_at_once_all_open_it(tmp_path):
    """Workers, nodes or the CLI opening a new data dir at the same moment
    race to make its file a WAL file: none is refused "database is
    locked"."""
    for round_ in range(8):
        data_dir = str(tmp_path / str(round_))
        start = time.time() + 1.5
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_AT, data_dir, str(start)],
                env=env_with_src(),
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        for process in processes:
            _out, error = process.communicate(timeout=60)
            assert process.returncode == 0, error[-2000:]
