"""No tenant bloats or stalls the server through cache channels or
subscription counts (issue #22), over real sockets against the real
server: a flood of large events to many cache channels stays within the
app's cache bound, and a join storm on a channel with subscription
counts on costs a few counts per subscriber, not one per join."""

import json
import queue
import selectors
import socket
import threading
import time

import pytest

from support import (
    PushiServer,
    Receiver,
    hooked_app,
    masked_frame,
    read_until,
    server_frames,
    signed_path,
    upgrade_request,
)


@pytest.fixture
def server():
    server = PushiServer().start()
    yield server
    server.stop()


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


def publish(server, app, channels, name, data):
    """A Pusher SDK's signed ``POST events``, with the app's own
    credentials; returns the status."""
    body = json.dumps({"name": name, "channels": channels, "data": data}).encode()
    path = signed_path(app, "POST", "/apps/%s/events" % app["app_id"], None, body)
    status, answer = server.request("POST", path[1:], raw=body)
    return status


def rss_kb(server):
    """The server process's resident memory (``VmRSS``), in KB."""
    with open("/proc/%d/status" % server.process.pid) as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def victim_answered(server, other, victim, index):
    """Another app's publish reaches its subscriber (within seconds)."""
    assert publish(server, other, ["news"], "tick", str(index)) == 200
    message = victim.recv_event("tick", timeout=10)
    assert message["data"] == str(index)


PUBLISHES = 200
CHANNELS = 100
DATA = 10000


def test_cache_channels_stay_within_the_apps_bound(server, receiver):
    """200 publishes of 10 KB to 100 new cache channels each would keep
    20,000 frames of 10 KB (200 MB); the app's default bound (1 MB)
    keeps the newest and evicts the oldest, counted; an evicted channel
    is a cache miss, for its subscriber and the webhook."""
    app = hooked_app(server, receiver.url, ["cache_miss"])
    other = server.create_app("other")
    victim = server.connect(other)
    victim.subscribe("news")
    before = rss_kb(server)
    for index in range(PUBLISHES):
        names = ["cache-%d-%d" % (index, channel) for channel in range(CHANNELS)]
        # each event its own: no two publishes share their data
        data = ("%06d" % index) * (DATA // 6)
        assert publish(server, app, names, "state", data) == 200
        if index % 50 == 0:
            victim_answered(server, other, victim, index)
    victim_answered(server, other, victim, PUBLISHES)
    grown = rss_kb(server) - before
    # 200 MB without a bound; the bound is 1 MB
    assert grown < 80 * 1024, "server grew by %d KB" % grown

    client = server.connect(app)
    newest = "cache-%d-%d" % (PUBLISHES - 1, CHANNELS - 1)
    assert client.subscribe(newest)["event"] == (
        "pusher_internal:subscription_succeeded"
    )
    cached = client.recv()
    assert cached["event"] == "state" and cached["channel"] == newest
    assert cached["data"] == ("%06d" % (PUBLISHES - 1)) * (DATA // 6)
    oldest = "cache-0-0"
    assert client.subscribe(oldest)["event"] == (
        "pusher_internal:subscription_succeeded"
    )
    miss = client.recv()
    assert miss["event"] == "pusher:cache_miss" and miss["channel"] == oldest
    assert receiver.events(app, 1) == [{"name": "cache_miss", "channel": oldest}]

    status, stats = server.request(
        "GET", "apps/%s/stats" % app["app_id"], headers=server.token_headers(app)
    )
    assert status == 200, stats
    cache = stats["cache"]
    assert cache["max_bytes"] == 1048576 and 0 < cache["bytes"] <= cache["max_bytes"]
    assert cache["evictions"] == PUBLISHES * CHANNELS - cache["entries"]
    status, info = server.request(
        "GET",
        signed_path(
            app,
            "GET",
            "/apps/%s/channels/%s" % (app["app_id"], oldest),
            {"info": "cache"},
        )[1:],
    )
    # evicted: what a channel with nothing cached answers
    assert status == 200 and info["cache"] is None, info
    client.close()
    victim.close()


def test_max_cache_bytes_is_the_operators(server):
    app = server.create_app("tenant")
    status, answer = server.request(
        "PUT",
        "apps/%s" % app["app_id"],
        {"settings": {"max_cache_bytes": 10**9}},
        server.token_headers(app),
    )
    assert status == 403 and "max_cache_bytes" in answer["message"]


JOINS = 2000


def raw_subscriber(port, key):
    """A raw socket on the app with ``key``, connected, not subscribed."""
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(upgrade_request("/app/%s?protocol=7" % key))
    read_until(raw, b"connection_established")
    return raw


def drain(sockets, received, quiet=3.0):
    """Reads every socket into ``received`` until none has sent anything
    for ``quiet`` seconds."""
    selector = selectors.DefaultSelector()
    for raw in sockets:
        raw.setblocking(False)
        selector.register(raw, selectors.EVENT_READ)
    while True:
        ready = selector.select(quiet)
        if not ready:
            break
        for key, _events in ready:
            try:
                chunk = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            received[key.fileobj] += chunk
    selector.close()


def test_a_join_storm_costs_a_few_counts_per_subscriber(server, receiver):
    """2,000 joins of one channel with subscription counts on: another
    app is answered meanwhile, every subscriber ends with the right count,
    and each got a handful of counts, not one per later join; so does
    the webhook."""
    app = hooked_app(
        server, receiver.url, ["subscription_count"], subscription_count_events=True
    )
    other = server.create_app("other")
    victim = server.connect(other)
    victim.subscribe("news")
    sockets = [raw_subscriber(server.server_port, app["key"]) for _ in range(JOINS)]
    subscribe = masked_frame(
        json.dumps({"event": "pusher:subscribe", "data": {"channel": "room"}})
    )
    received = {raw: b"" for raw in sockets}
    reader = threading.Thread(target=drain, args=(sockets, received))

    waits, failures = [], []
    stop = threading.Event()

    def victim_loop():
        index = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                victim_answered(server, other, victim, index)
            except Exception as error:  # a stalled server times the victim out
                failures.append(repr(error))
                return
            waits.append(time.monotonic() - started)
            index += 1
            time.sleep(0.1)

    prober = threading.Thread(target=victim_loop)
    prober.start()
    try:
        for raw in sockets:
            raw.sendall(subscribe)
        reader.start()
        reader.join(120)
    finally:
        stop.set()
        prober.join(30)
    assert not reader.is_alive()
    assert not failures and waits and max(waits) < 5, (failures, waits)

    counts_seen = []
    for raw in sockets:
        frames = [
            json.loads(payload)
            for opcode, payload in server_frames(received[raw])
            if opcode == 1
        ]
        assert frames[0]["event"] == "pusher_internal:subscription_succeeded"
        counts = [
            json.loads(frame["data"])["subscription_count"]
            for frame in frames
            if frame["event"] == "pusher_internal:subscription_count"
        ]
        assert counts and counts[-1] == JOINS, counts[-5:]
        counts_seen.append(len(counts))
    # one per join would be up to 2,000 for the first subscriber
    assert max(counts_seen) <= 60, max(counts_seen)
    hooked = []
    while True:
        try:
            hooked += receiver.events(app, 1, timeout=3)
        except queue.Empty:
            break
    hooked = [event["subscription_count"] for event in hooked]
    assert hooked and hooked[-1] == JOINS and len(hooked) <= 60, hooked
    for raw in sockets:
        raw.close()
    victim.close()


def test_subscription_count_events_is_the_operators(server):
    app = server.create_app("tenant")
    status, answer = server.request(
        "PUT",
        "apps/%s" % app["app_id"],
        {"settings": {"subscription_count_events": True}},
        server.token_headers(app),
    )
    assert status == 403 and "subscription_count_events" in answer["message"]
