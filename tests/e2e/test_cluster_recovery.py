"""Recovery and cache channels across the nodes of a cluster (issues #21
and #19): a real ``redis-server`` and Pushi nodes as subprocesses, real
WebSocket clients.  A client that read some events on node A, dropped its
connection and comes back to node B with its position gets what it
missed, in order and once, then the live events (or ``recovered: false``
with the reason); a cache channel's last event published through A reaches
a subscriber of B."""

import json
import shutil
import tempfile
import threading
import time

import pytest

from pushi.proto import auth

from redis_support import TcpProxy
from support import PushiServer, signed_path


@pytest.fixture
def cluster(redis_server):
    """Two nodes on ``redis_server`` sharing one data dir, and an app both
    serve: ``(a, b, app)``."""
    data_dir = tempfile.mkdtemp(prefix="pushi-cluster-")
    nodes = []
    for _ in range(2):
        node = PushiServer(data_dir=data_dir, redis_url=redis_server.url)
        nodes.append(node)
        node.start()
    app = nodes[0].create_app("cluster", client_events=True)
    yield nodes[0], nodes[1], app
    for node in nodes:
        node.stop()


def subscribe(client, channel, since=None):
    """Subscribes; returns the data of ``subscription_succeeded``."""
    data = {"channel": channel}
    if since is not None:
        data["since"] = since
    client.send({"event": "pusher:subscribe", "data": data})
    succeeded = client.recv_event("pusher_internal:subscription_succeeded")
    assert succeeded["channel"] == channel
    data = succeeded["data"]
    return json.loads(data) if isinstance(data, str) else data


def publish(api, channel, first, last):
    """Events ``said`` with data ``"<n>"`` for n from first to last."""
    for number in range(first, last + 1):
        api.trigger_event(channel, str(number), event="said", persist=False)


def said(client, count):
    return [client.recv_event("said", timeout=15) for _ in range(count)]


def position(event):
    return {"epoch": event["epoch"], "offset": event["offset"]}


def settings(node, app, **values):
    """Sets an app's settings on one node; the other hears of it (the
    control channel): waits until it serves with them."""
    node.update_app(app, settings=values)
    time.sleep(1.0)


def test_a_client_of_node_a_recovers_on_node_b(cluster):
    a, b, app = cluster
    api_a, api_b = a.client(app), b.client(app)
    client = a.connect(app, dialect="pushi")
    state = subscribe(client, "news")
    assert state["offset"] == 0 and state["epoch"]
    publish(api_a, "news", 1, 10)
    received = said(client, 10)
    assert [event["offset"] for event in received] == list(range(1, 11))
    assert all(event["epoch"] == state["epoch"] for event in received)
    client.close()
    # published through both nodes while the client is away
    publish(api_a, "news", 11, 20)
    publish(api_b, "news", 21, 30)
    client = b.connect(app, dialect="pushi")
    state = subscribe(client, "news", since=position(received[-1]))
    assert state["recovered"] is True, state
    assert state["offset"] == 30 and state["epoch"] == received[-1]["epoch"]
    missed = said(client, 20)
    assert [event["data"] for event in missed] == [str(n) for n in range(11, 31)]
    assert [event["offset"] for event in missed] == list(range(11, 31))
    publish(api_a, "news", 31, 31)
    live = client.recv_event("said")
    assert (live["data"], live["offset"]) == ("31", 31)
    assert client.nothing()
    client.close()


def test_recovery_across_nodes_racing_publishes_loses_and_repeats_nothing(cluster):
    """Publishes on both nodes without pause while a client goes back and
    forth between the nodes with its position: every event reaches it
    once, in order."""
    a, b, app = cluster
    settings(a, app, recovery_history=1000)
    total = 500
    client = a.connect(app, dialect="pushi")
    state = subscribe(client, "race")
    since = {"epoch": state["epoch"], "offset": state["offset"]}
    seen = []

    def publisher():
        apis = (a.client(app), b.client(app))
        for number in range(1, total + 1):
            apis[number % 2].trigger_event(
                "race", str(number), event="said", persist=False
            )
            time.sleep(0.01)

    thread = threading.Thread(target=publisher)
    thread.start()
    reconnections = 0
    try:
        while not seen or seen[-1] != total:
            deadline = time.time() + 0.05 + (reconnections % 5) * 0.03
            while time.time() < deadline and (not seen or seen[-1] != total):
                try:
                    message = client.recv(max(0.01, deadline - time.time()))
                except TimeoutError:
                    break
                if message.get("event") == "said":
                    seen.append(int(message["data"]))
                    since = position(message)
            if seen and seen[-1] == total:
                break
            client.close()
            # the next connection on the other node
            node = (a, b)[(reconnections + 1) % 2]
            client = node.connect(app, dialect="pushi")
            state = subscribe(client, "race", since=since)
            assert state["recovered"] is True, state
            reconnections += 1
            assert reconnections < 1000
    finally:
        thread.join(60)
        client.close()
    assert reconnections >= 20
    # ordered by offset, each event once: the data says which
    assert seen == list(range(1, total + 1))


def test_too_far_behind_across_nodes_is_not_recovered(cluster):
    a, b, app = cluster
    settings(a, app, recovery_history=5)
    api = a.client(app)
    client = a.connect(app, dialect="pushi")
    subscribe(client, "news")
    publish(api, "news", 1, 2)
    stopped = position(said(client, 2)[-1])
    client.close()
    publish(api, "news", 3, 9)
    client = b.connect(app, dialect="pushi")
    state = subscribe(client, "news", since=stopped)
    assert state["recovered"] is False and state["reason"] == "too_far_behind"
    assert state["offset"] == 9
    assert client.nothing()
    client.close()
    # within the window: recovered
    client = b.connect(app, dialect="pushi")
    state = subscribe(client, "news", since=dict(stopped, offset=5))
    assert state["recovered"] is True, state
    assert [event["offset"] for event in said(client, 4)] == [6, 7, 8, 9]
    client.close()


def test_expired_history_across_nodes_is_not_recovered(cluster):
    a, b, app = cluster
    settings(a, app, recovery_ttl=1)
    api = a.client(app)
    client = a.connect(app, dialect="pushi")
    subscribe(client, "news")
    publish(api, "news", 1, 1)
    stopped = position(said(client, 1)[-1])
    client.close()
    publish(api, "news", 2, 3)
    time.sleep(2.5)
    client = b.connect(app, dialect="pushi")
    state = subscribe(client, "news", since=stopped)
    assert state["recovered"] is False and state["reason"] == "expired"
    assert client.nothing()
    client.close()


def test_a_redis_restarted_empty_is_a_new_epoch(cluster, redis_server):
    a, b, app = cluster
    client = a.connect(app, dialect="pushi")
    subscribe(client, "news")
    publish(a.client(app), "news", 1, 3)
    stopped = position(said(client, 3)[-1])
    client.close()
    redis_server.restart()
    deadline = time.time() + 30
    while time.time() < deadline:
        statuses = [node.request("GET", "health")[1]["status"] for node in (a, b)]
        if statuses == ["ok", "ok"]:
            break
        time.sleep(0.2)
    client = b.connect(app, dialect="pushi")
    state = subscribe(client, "news", since=stopped)
    assert state["recovered"] is False and state["reason"] == "new_epoch", state
    assert state["epoch"] != stopped["epoch"]
    client.close()


def test_the_position_of_a_subscription_is_the_clusters(cluster):
    """A new subscriber on either node is told the channel's position, and
    its next event is the one after it."""
    a, b, app = cluster
    publish(a.client(app), "news", 1, 4)
    client = b.connect(app, dialect="pushi")
    state = subscribe(client, "news")
    assert state["offset"] == 4 and state["epoch"]
    publish(a.client(app), "news", 5, 5)
    event = client.recv_event("said")
    assert (event["offset"], event["epoch"]) == (5, state["epoch"])
    client.close()


def test_a_cache_channel_published_on_a_is_replayed_on_b(cluster):
    a, b, app = cluster
    a.client(app).trigger_event("cache-prices", "42", event="price", persist=False)
    client = b.connect(app)
    client.subscribe("cache-prices")
    cached = client.recv_event("price")
    assert cached["data"] == "42" and cached["channel"] == "cache-prices"
    client.close()
    # a cache channel never published: a miss, on either node
    client = b.connect(app)
    client.subscribe("cache-quiet")
    assert client.recv_event("pusher:cache_miss")["channel"] == "cache-quiet"
    client.close()


def test_info_cache_from_the_other_nodes_rest(cluster):
    a, b, app = cluster
    a.client(app).trigger_event("cache-prices", "42", event="price", persist=False)

    def info(channel):
        path = "/apps/%s/channels/%s" % (app["app_id"], channel)
        status, answer = b.request(
            "GET", signed_path(app, "GET", path, {"info": "cache"})[1:]
        )
        assert status == 200, answer
        return answer

    cached = info("cache-prices")["cache"]
    assert cached["event"] == "price" and cached["data"] == "42", cached
    assert 0 < cached["ttl"] <= 1800
    assert info("cache-quiet")["cache"] is None


def test_a_presence_member_recovers_on_the_other_node(cluster):
    """Member events take offsets of the channel too: a recovery counts
    them and sends only the channel's events (the members are in the
    subscription data), and the events published while the member joins
    reach it."""
    a, b, app = cluster
    channel = "presence-room"

    def join(node, since=None):
        client = node.connect(app, dialect="pushi")
        channel_data = json.dumps({"user_id": "ann"})
        data = {
            "channel": channel,
            "channel_data": channel_data,
            "auth": auth.channel_auth(
                app["key"], app["secret"], client.socket_id, channel, channel_data
            ),
        }
        if since is not None:
            data["since"] = since
        client.send({"event": "pusher:subscribe", "data": data})
        succeeded = client.recv_event("pusher_internal:subscription_succeeded")
        state = succeeded["data"]
        return client, json.loads(state) if isinstance(state, str) else state

    client, state = join(a)
    assert state["epoch"] and "ann" in state["members"]
    publish(a.client(app), channel, 1, 3)
    stopped = position(said(client, 3)[-1])
    client.close()
    publish(b.client(app), channel, 4, 6)
    # the member left (member_removed) and comes back (member_added): the
    # channel's offsets went past the events' own
    client, state = join(b, since=stopped)
    assert state["recovered"] is True, state
    missed = said(client, 3)
    assert [event["data"] for event in missed] == ["4", "5", "6"]
    assert state["offset"] == missed[-1]["offset"] > stopped["offset"] + 3
    publish(a.client(app), channel, 7, 7)
    assert client.recv_event("said")["data"] == "7"
    client.close()


def test_new_subscribers_racing_publishes_start_right_after_their_position(
    cluster,
):
    """Subscribers on node B (each the first there of its channel) while
    node A publishes without pause: each one's events follow the position
    of its subscription data, none missed, none twice."""
    a, b, app = cluster
    names = ["live-%d" % index for index in range(10)]
    stop = threading.Event()

    def publisher():
        api = a.client(app)
        number = 0
        while not stop.is_set():
            number += 1
            for name in names:
                api.trigger_event(name, str(number), event="said", persist=False)

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        for name in names:
            client = b.connect(app, dialect="pushi")
            state = subscribe(client, name)
            offsets = [event["offset"] for event in said(client, 5)]
            assert offsets == list(range(state["offset"] + 1, state["offset"] + 6))
            client.close()
    finally:
        stop.set()
        thread.join(30)


def test_history_off_across_nodes(cluster):
    a, b, app = cluster
    settings(a, app, recovery_history=0)
    client = a.connect(app, dialect="pushi")
    state = subscribe(client, "news")
    assert "epoch" not in state and "offset" not in state
    client.close()
    client = b.connect(app, dialect="pushi")
    state = subscribe(client, "news", since={"epoch": "x", "offset": 1})
    assert state == {"recovered": False, "reason": "history_off"}
    client.close()


@pytest.fixture
def proxied(redis_server):
    """Node A on ``redis_server`` and node B on it through a ``TcpProxy``,
    sharing one data dir, and an app both serve keeping 2 events per
    channel (so a recovery further back reads the store): ``(a, b, proxy,
    app)``."""
    proxy = TcpProxy(("127.0.0.1", redis_server.port))
    data_dir = tempfile.mkdtemp(prefix="pushi-cluster-")
    nodes = []
    try:
        for url in (redis_server.url, proxy.url()):
            node = PushiServer(data_dir=data_dir, redis_url=url)
            nodes.append(node)
            node.start()
        a, b = nodes
        app = a.create_app("cluster", client_events=True)
        settings(a, app, recovery_history=2)
        yield a, b, proxy, app
    finally:
        for node in nodes:
            node.stop()
        proxy.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def stored(api, channel, first, last):
    """Stored events ``said`` with data ``"<n>"`` for n from first to last
    (each answered once committed and published)."""
    for number in range(first, last + 1):
        api.trigger_event(channel, str(number), event="said", persist=True)


def data(events):
    return [event["data"] for event in events]


def test_a_store_recovery_on_b_sends_an_event_b_delivers_later_once(
    proxied, redis_server
):
    """A stored event committed and published through node A that node B's
    subscription has not brought yet when a socket recovers on B from the
    store: the socket gets it from the store, and not again when B
    delivers it; B's other sockets get it live, and the events after it
    reach the socket once."""
    a, b, proxy, app = proxied
    api = a.client(app)
    watcher = b.connect(app, dialect="pushi")
    subscribe(watcher, "news")
    client = b.connect(app, dialect="pushi")
    subscribe(client, "news")
    stored(api, "news", 1, 1)
    [first] = said(client, 1)
    client.close()
    stored(api, "news", 2, 5)
    assert data(said(watcher, 5)) == [str(n) for n in range(1, 6)]
    # B's subscription connection (the only one of the proxy's that Redis
    # lists as pubsub): what Redis sends on it waits from now on
    ports = proxy.ports()
    subscriptions = [
        int(entry["addr"].rsplit(":", 1)[1])
        for entry in redis_server.client().client_list(_type="pubsub")
        if int(entry["addr"].rsplit(":", 1)[1]) in ports
    ]
    assert len(subscriptions) == 1, subscriptions
    proxy.hold(subscriptions[0])
    try:
        stored(api, "news", 6, 6)  # committed and published, not on B yet
        client = b.connect(app, dialect="pushi")
        state = subscribe(client, "news", since=dict(position(first), mid=first["mid"]))
        assert state["recovered"] is False and state["store"] is True, state
        assert state["reason"] == "too_far_behind"
        assert data(said(client, 5)) == ["2", "3", "4", "5", "6"]
    finally:
        proxy.release()
    # B delivers it now: to the watcher, not to the recovered socket
    [late] = said(watcher, 1)
    assert late["data"] == "6" and late["offset"] == state["offset"] + 1
    stored(api, "news", 7, 7)
    assert data(said(client, 1)) == ["7"]
    assert data(said(watcher, 1)) == ["7"]
    assert client.nothing()
    client.close()
    watcher.close()


def test_a_stored_event_whose_publish_failed_is_recovered_from_the_store_at_once(
    proxied,
):
    """A stored event whose publish to Redis failed (its publisher, node B
    cut off behind the proxy, answered 503: stored, not delivered) is
    never delivered live: a store recovery on node A sends it without
    waiting for it, and the events after it reach the socket live."""
    a, b, proxy, app = proxied
    api = a.client(app)
    client = a.connect(app, dialect="pushi")
    subscribe(client, "news")
    stored(api, "news", 1, 1)
    [first] = said(client, 1)
    client.close()
    stored(api, "news", 2, 5)
    proxy.blackhole()
    body = json.dumps(
        {"name": "said", "channel": "news", "data": "6", "persist": True}
    ).encode()
    path = signed_path(app, "POST", "/apps/%s/events" % app["app_id"], None, body)
    status, answer = b.request("POST", path[1:], raw=body)
    assert status == 503 and "stored" in json.dumps(answer), answer
    client = a.connect(app, dialect="pushi")
    started = time.monotonic()
    state = subscribe(client, "news", since=dict(position(first), mid=first["mid"]))
    assert state["recovered"] is False and state["store"] is True, state
    assert data(said(client, 5)) == ["2", "3", "4", "5", "6"]
    assert time.monotonic() - started < 5
    stored(api, "news", 7, 7)
    assert data(said(client, 1)) == ["7"]
    assert client.nothing()
    client.close()
