"""Nodes delivering through one Redis: a real ``redis-server`` and Pushi
nodes as subprocesses sharing one data dir, with real WebSocket clients
spread over the nodes and REST publishes on any of them.

Delivery (every subscriber on every node, once, in one order), socket_id
exclusion and client events across nodes; and the faults: Redis killed
(503 at once, sockets stay, ``/health`` degraded), Redis restarted empty
(the nodes come back by themselves) and a node cut off from Redis (its
sockets closed with 4200).
"""

import http.client
import json
import socket
import tempfile
import threading
import time
import urllib.request

import pytest
from cluster_support import rest

from pushi.base.cluster.broker import (
    PUBLISH_SCRIPT,
    bus,
    cache_key,
    hist_key,
    meta_key,
)
from pushi.base.config import Config
from pushi.proto import auth

from redis_support import RedisServer, TcpProxy, require_redis
from support import ADMIN_SECRET, PushiServer, signed_path


@pytest.fixture
def cluster(redis_server):
    """Starts nodes on ``redis_server`` (or the URL given) sharing one
    data dir: ``cluster.node(url=None)``; ``cluster.app`` is an app every
    node serves (created on the shared store)."""
    made = []
    data_dir = tempfile.mkdtemp(prefix="pushi-cluster-")

    class Cluster:
        app = None

        def node(self, url=None):
            node = PushiServer(data_dir=data_dir, redis_url=url or redis_server.url)
            made.append(node)
            node.start()
            if Cluster.app is None:
                Cluster.app = node.create_app("cluster", client_events=True)
            return node

    yield Cluster()
    for node in made:
        node.stop()


class Publisher:
    """Signed REST publishes to one node over a kept-alive connection."""

    def __init__(self, node, app):
        self.node = node
        self.app = app
        self.connection = http.client.HTTPConnection(
            "127.0.0.1", node.app_port, timeout=15
        )

    def publish(self, channel, name, data, socket_id=None):
        """``(status, answer, seconds it took)``; ``channel`` a name or a
        list of them."""
        body = {"name": name, "data": data}
        body["channels" if isinstance(channel, list) else "channel"] = channel
        if socket_id is not None:
            body["socket_id"] = socket_id
        raw = json.dumps(body).encode()
        path = signed_path(
            self.app, "POST", "/apps/%s/events" % self.app["app_id"], None, raw
        )
        started = time.monotonic()
        self.connection.request("POST", path, raw, {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        answer = json.loads(response.read() or b"null")
        return response.status, answer, time.monotonic() - started

    def close(self):
        self.connection.close()


def subscribed(node, app, channel):
    """A Pusher-dialect client of ``node`` subscribed to ``channel`` (a
    private channel is signed with the app's secret)."""
    client = node.connect(app)
    signature = None
    if channel.startswith("private-"):
        signature = auth.channel_auth(
            app["key"], app["secret"], client.socket_id, channel
        )
    answer = client.subscribe(channel, auth=signature)
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    return client


def events(client, count, timeout=30):
    """The next ``count`` events of ``client`` (``pusher`` messages
    skipped) as ``(offset, data)``."""
    received = []
    deadline = time.time() + timeout
    while len(received) < count:
        message = client.recv(max(0.01, deadline - time.time()))
        if message["event"].startswith("pusher"):
            continue
        received.append((message.get("offset"), message["data"]))
    return received


def data_of(message):
    data = message["data"]
    return json.loads(data) if isinstance(data, str) else data


def health(node):
    status, answer = node.request("GET", "health")
    assert status == 200, answer
    return answer


def metric(node, name):
    """The value of a metric without labels on ``node`` (0 if absent)."""
    request = urllib.request.Request(
        node.base_url + "metrics",
        headers={"Authorization": "Bearer " + ADMIN_SECRET},
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0


def wait_for(check, timeout=20, step=0.2):
    """Polls ``check()`` until it returns a true value (returned)."""
    deadline = time.time() + timeout
    while True:
        value = check()
        if value or time.time() > deadline:
            return value
        time.sleep(step)


def test_a_publish_on_one_node_reaches_every_node_once_in_order(cluster):
    a, b, c = cluster.node(), cluster.node(), cluster.node()
    app = cluster.app
    subscribers = [subscribed(node, app, "orders") for node in (a, a, b, c)]
    publisher = Publisher(b, app)
    for index in range(1000):
        status, answer, _took = publisher.publish("orders", "n", str(index))
        assert status == 200, answer
    expected = [str(index) for index in range(1000)]
    for client in subscribers:
        received = events(client, 1000)
        assert [data for _offset, data in received] == expected
        offsets = [offset for offset, _data in received]
        assert offsets == list(range(offsets[0], offsets[0] + 1000))
        assert client.nothing(0.5)
    publisher.close()


def test_concurrent_publishers_on_two_nodes_give_every_subscriber_one_order(
    cluster,
):
    a, b = cluster.node(), cluster.node()
    app = cluster.app
    subscribers = [subscribed(node, app, "race") for node in (a, a, b, b)]
    failures = []

    def publish(node, prefix):
        publisher = Publisher(node, app)
        for index in range(200):
            status, answer, _took = publisher.publish("race", "n", prefix + str(index))
            if status != 200:
                failures.append(answer)
        publisher.close()

    threads = [
        threading.Thread(target=publish, args=(node, prefix))
        for node, prefix in ((a, "a"), (b, "b"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures
    orders = [events(client, 400) for client in subscribers]
    for order in orders[1:]:
        assert order == orders[0]
    offsets = [offset for offset, _data in orders[0]]
    assert offsets == list(range(offsets[0], offsets[0] + 400))
    # each publisher, waiting for its answers, sees its events in its order
    for prefix in "ab":
        own = [data for _offset, data in orders[0] if data.startswith(prefix)]
        assert own == [prefix + str(index) for index in range(200)]


def test_socket_id_exclusion_holds_across_nodes(cluster):
    a, b = cluster.node(), cluster.node()
    app = cluster.app
    on_a, on_b = subscribed(a, app, "news"), subscribed(b, app, "news")
    # socket ids say their node, so none is the same on two nodes
    assert on_a.socket_id.split(".")[0] == str(health(a)["node"])
    assert on_b.socket_id.split(".")[0] == str(health(b)["node"])
    status, _answer, _took = Publisher(a, app).publish(
        "news", "n", "not for b", socket_id=on_b.socket_id
    )
    assert status == 200
    status, _answer, _took = Publisher(b, app).publish(
        "news", "n", "not for a", socket_id=on_a.socket_id
    )
    assert status == 200
    assert [data for _offset, data in events(on_a, 1)] == ["not for b"]
    assert [data for _offset, data in events(on_b, 1)] == ["not for a"]
    assert on_a.nothing(0.5) and on_b.nothing(0.5)


def test_client_events_reach_the_other_nodes_but_not_their_sender(cluster):
    a, b = cluster.node(), cluster.node()
    app = cluster.app
    sender = subscribed(a, app, "private-chat")
    beside = subscribed(a, app, "private-chat")
    elsewhere = subscribed(b, app, "private-chat")
    # under the app's 10 client events a second
    for index in range(8):
        sender.send(
            {"event": "client-say", "channel": "private-chat", "data": {"n": index}}
        )
    for client in (beside, elsewhere):
        received = events(client, 8)
        assert [data["n"] for _offset, data in received] == list(range(8))
    assert sender.nothing(0.5)
    assert elsewhere.nothing(0.2)


def test_redis_killed_publishes_answer_503_at_once_and_sockets_stay(
    cluster, redis_server
):
    a, b = cluster.node(), cluster.node()
    app = cluster.app
    subscriber = subscribed(a, app, "news")
    sender = subscribed(b, app, "private-chat")
    publisher = Publisher(b, app)
    assert publisher.publish("news", "n", "before")[0] == 200
    assert events(subscriber, 1)[0][1] == "before"
    redis_server.kill()
    status, answer, took = publisher.publish("news", "n", "during")
    assert status == 503, answer
    assert answer["result"] == "error" and answer["code"] == 503
    # no hang: answered within the command timeout (generous bound)
    assert took < 5
    assert all(publisher.publish("news", "n", "x")[0] == 503 for _ in range(5))
    for node in (a, b):
        state = health(node)
        assert state["status"] == "degraded" and "redis" in state["down"]
    # a new subscription needs Redis: refused with 503, the socket stays
    answer = subscriber.subscribe("other")
    assert answer["event"] == "pusher:subscription_error", answer
    assert data_of(answer)["status"] == 503
    # a client event Redis cannot take: its sender hears so
    sender.send({"event": "client-say", "channel": "private-chat", "data": {}})
    error = sender.recv_event("pusher:error")
    assert data_of(error)["code"] == 4305
    # the sockets are still open and served
    for client in (subscriber, sender):
        client.send({"event": "pusher:ping", "data": {}})
        assert client.recv_event("pusher:pong")
    publisher.close()


def test_redis_paused_publishes_answer_503_within_the_timeout(cluster, redis_server):
    a, b = cluster.node(), cluster.node()
    app = cluster.app
    subscriber = subscribed(a, app, "news")
    publisher = Publisher(b, app)
    redis_server.pause()
    try:
        status, answer, took = publisher.publish("news", "n", "paused")
        assert status == 503, answer
        # the command timeout, not a hang (generous bound)
        assert took < 5
    finally:
        redis_server.resume()
    # back by itself; the event answered 503 may still have gone out (Redis
    # ran it late): the publisher cannot know, as with any timeout
    assert wait_for(
        lambda: publisher.publish("news", "n", "resumed")[0] == 200, timeout=6
    )
    received = [data for _offset, data in events(subscriber, 1)]
    if received == ["paused"]:
        received = [data for _offset, data in events(subscriber, 1)]
    assert received == ["resumed"]
    publisher.close()


def test_redis_restarted_empty_the_nodes_come_back_by_themselves(cluster, redis_server):
    a, b = cluster.node(), cluster.node()
    app = cluster.app
    subscriber = subscribed(a, app, "news")
    ids = {health(a)["node"], health(b)["node"]}
    publisher = Publisher(b, app)
    assert publisher.publish("news", "n", "before")[0] == 200
    assert events(subscriber, 1)[0][1] == "before"
    redis_server.kill()
    assert publisher.publish("news", "n", "during")[0] == 503
    redis_server.start()  # empty: no persistence
    assert wait_for(
        lambda: all(health(node)["status"] == "ok" for node in (a, b)), timeout=6
    )
    # registered again, each with the id its sockets are named by
    assert {health(a)["node"], health(b)["node"]} == ids
    redis = redis_server.client()
    assert {int(node) for node in redis.zrange("pushi:nodes", 0, -1)} == ids
    assert int(redis.get("pushi:node_seq")) == max(ids)
    assert "registered again as node %d (Redis restarted)" % health(a)["node"] in (
        a.read_log()
    )
    # the subscription made before is made again: no operator action
    assert wait_for(
        lambda: publisher.publish("news", "n", "after")[0] == 200, timeout=5
    )
    assert events(subscriber, 1)[0][1] == "after"
    # new subscriptions and publishes from the other side work too
    other = subscribed(b, app, "fresh")
    assert Publisher(a, app).publish("fresh", "n", "hello")[0] == 200
    assert events(other, 1)[0][1] == "hello"
    assert subscriber.nothing(0.3)
    publisher.close()


def test_a_node_cut_off_from_redis_closes_its_sockets_with_4200(cluster, redis_server):
    proxy = TcpProxy(("127.0.0.1", redis_server.port))
    try:
        a = cluster.node(proxy.url())
        b = cluster.node()
        app = cluster.app
        cut_off = subscribed(a, app, "news")
        reachable = subscribed(b, app, "news")
        proxy.blackhole()
        started = time.monotonic()
        assert cut_off.close_code(timeout=30) == 4200
        # fenced after its heartbeat went unrefreshed, not at once
        assert time.monotonic() - started > 3
        status, answer = a.request("GET", "ready")
        assert status == 503, answer
        assert health(a)["status"] == "degraded"
        # the other node serves on
        publisher = Publisher(b, app)
        assert publisher.publish("news", "n", "on b")[0] == 200
        assert events(reachable, 1)[0][1] == "on b"
        # healed: the node serves again by itself
        proxy.forward()
        assert wait_for(lambda: health(a)["status"] == "ok", timeout=20)
        assert a.request("GET", "ready")[0] == 200
        again = subscribed(a, app, "news")
        assert publisher.publish("news", "n", "healed")[0] == 200
        assert events(again, 1)[0][1] == "healed"
        assert events(reachable, 1)[0][1] == "healed"
        publisher.close()
    finally:
        proxy.close()


def test_nodes_register_and_keep_their_heartbeat_in_redis(cluster, redis_server):
    a, b = cluster.node(), cluster.node()
    ids = {str(health(a)["node"]), str(health(b)["node"])}
    redis = redis_server.client()
    first = {
        member.decode(): score
        for member, score in redis.zrange("pushi:nodes", 0, -1, withscores=True)
    }
    assert set(first) == ids
    assert int(redis.get("pushi:node_seq")) == max(int(node) for node in ids)
    # refreshed every 2 s (scores are Redis's clock in ms)
    assert wait_for(
        lambda: all(
            (redis.zscore("pushi:nodes", node) or 0) > first[node] for node in ids
        ),
        timeout=10,
    )


def test_a_dropped_subscription_is_reported_as_a_gap_never_skipped_silently(
    cluster, redis_server
):
    a, b = cluster.node(), cluster.node()
    app = cluster.app
    subscriber = subscribed(a, app, "news")
    publisher = Publisher(b, app)
    assert publisher.publish("news", "n", "first")[0] == 200
    [(offset, _data)] = events(subscriber, 1)
    # Redis drops the nodes' subscriptions (as it drops a slow consumer),
    # and an event is published before they are made again
    redis = redis_server.client()
    pipe = redis.pipeline(transaction=False)
    pipe.client_kill_filter(_type="pubsub")
    body = json.dumps([app["app_id"], "news", "n", "missed", None, None])
    pipe.eval(
        PUBLISH_SCRIPT.lua,
        3,
        meta_key(app["app_id"], "news"),
        hist_key(app["app_id"], "news"),
        cache_key(app["app_id"], "news"),
        bus(app["app_id"], "news"),
        "unused",
        body,
        60,
        0,
        0,
        0,
        0,
    )
    killed, (missed_offset, _epoch) = pipe.execute()
    assert killed >= 2 and missed_offset == offset + 1
    # once subscribed again, delivery goes on and the gap is counted
    received = []

    def delivered():
        assert publisher.publish("news", "n", "after")[0] == 200
        try:
            received.extend(events(subscriber, 1, timeout=1))
        except TimeoutError:
            pass
        return received

    assert wait_for(delivered, timeout=15)
    assert "missed" not in [data for _offset, data in received]
    assert received[0][0] > missed_offset
    assert metric(a, "pushi_cluster_gaps_total") >= 1
    assert "missed by this node's Redis subscription" in a.read_log()
    publisher.close()


def test_an_unreadable_bus_message_is_dropped_and_delivery_goes_on(
    cluster, redis_server
):
    a = cluster.node()
    app = cluster.app
    subscriber = subscribed(a, app, "news")
    publisher = Publisher(a, app)
    assert publisher.publish("news", "n", "first")[0] == 200
    [(offset, _data)] = events(subscriber, 1)
    redis = redis_server.client()
    epoch = redis.hget(meta_key(app["app_id"], "news"), "e").decode()
    body = json.dumps([app["app_id"], "news", "n", "bad", None, None])
    # each at the channel's next position, none of them a message's body
    for text in (body + " []", body[:-1], "{}", '["a"]', body.replace('"', "'")):
        redis.publish(
            bus(app["app_id"], "news"), "%s:%d:%s" % (epoch, offset + 1, text)
        )
    assert publisher.publish("news", "n", "after")[0] == 200
    assert events(subscriber, 1) == [(offset + 1, "after")]
    assert "An unreadable message on Redis's" in a.read_log()
    publisher.close()


def test_a_node_missing_from_redis_registers_again_by_itself(cluster, redis_server):
    a = cluster.node()
    app = cluster.app
    subscriber = subscribed(a, app, "news")
    old = health(a)["node"]
    redis = redis_server.client()
    # as a reaper removes a node it took for dead
    assert redis.zrem("pushi:nodes", old) == 1
    assert wait_for(lambda: health(a)["node"] != old, timeout=10)
    new = health(a)["node"]
    assert new > old and redis.zscore("pushi:nodes", new) is not None
    assert "registered again as node %d" % new in a.read_log()
    # new sockets are named by the new id; the old one is served on
    assert a.connect(app).socket_id.startswith("%d." % new)
    assert Publisher(a, app).publish("news", "n", "still")[0] == 200
    assert events(subscriber, 1)[0][1] == "still"


def test_a_bad_redis_url_is_refused_without_showing_its_password(tmp_path):
    environ = {"PUSHI_DATA_DIR": str(tmp_path)}
    assert Config.from_env(environ).redis_url is None
    environ["PUSHI_REDIS_URL"] = "redis://:s3cret@127.0.0.1:6379/0"
    assert Config.from_env(environ).redis_url == environ["PUSHI_REDIS_URL"]
    for url in ("rediss://:s3cret@127.0.0.1:6379/0", "redis://:s3cret@x/zero"):
        environ["PUSHI_REDIS_URL"] = url
        with pytest.raises(SystemExit) as refused:
            Config.from_env(environ)
        assert "PUSHI_REDIS_URL" in str(refused.value)
        assert "s3cret" not in str(refused.value)


def test_a_node_logs_its_id_and_redis_without_the_password():
    require_redis()
    secured = RedisServer(password="pw-s3cret").start()
    node = PushiServer(redis_url=secured.url)
    try:
        node.start()
        assert health(node)["status"] == "ok"
        log = node.read_log()
        assert "Cluster node %d on Redis redis://:***@" % health(node)["node"] in log
        assert "pw-s3cret" not in log
    finally:
        node.stop()
        secured.close()


def test_a_node_started_before_redis_serves_degraded_then_joins(tmp_path):
    require_redis()
    later = RedisServer()  # its port chosen, not started yet
    node = PushiServer(data_dir=str(tmp_path), redis_url=later.url)
    try:
        node.start(joined=False)
        assert wait_for(lambda: "unreachable: serving without it" in node.read_log())
        state = health(node)
        assert state["status"] == "degraded" and state["node"] is None
        # no traffic from a balancer before the node joined
        assert node.request("GET", "ready") == (
            503,
            {"result": "error", "code": 503, "message": "Joining the cluster"},
        )
        app = node.create_app()
        client = node.connect(app)
        answer = client.subscribe("news")
        assert answer["event"] == "pusher:subscription_error", answer
        later.start()
        assert wait_for(lambda: health(node)["status"] == "ok", timeout=15)
        assert wait_for(lambda: node.request("GET", "ready")[0] == 200)
        subscriber = subscribed(node, app, "news")
        assert subscriber.socket_id.startswith("%d." % health(node)["node"])
        assert Publisher(node, app).publish("news", "n", "joined")[0] == 200
        assert events(subscriber, 1)[0][1] == "joined"
    finally:
        node.stop()
        later.close()


def test_a_channel_the_server_joined_while_redis_was_down_hears_it_once_back(
    cluster, redis_server
):
    import pushi

    node = cluster.node()
    app = cluster.app
    proxy = pushi.Pushi(
        app_id=app["app_id"],
        app_key=app["key"],
        app_secret=app["secret"],
        base_url=node.base_url,
    )
    proxy.subscribe("alice", "news")
    redis_server.kill()
    # a personal channel needs the store only: the server joins the socket
    # to "news" while Redis cannot subscribe it
    client = node.connect(app, "pushi")
    signature = proxy.authenticate("personal-alice", client.socket_id)
    answer = client.subscribe("personal-alice", **signature)
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    redis_server.start()
    assert wait_for(lambda: health(node)["status"] == "ok", timeout=6)
    publisher = Publisher(node, app)
    assert wait_for(
        lambda: publisher.publish("news", "story", "back")[0] == 200, timeout=5
    )
    assert client.recv_event("story")["data"] == "back"
    publisher.close()


def test_a_channel_left_by_its_last_socket_here_is_unsubscribed_after_a_linger(
    cluster, redis_server
):
    node = cluster.node()
    app = cluster.app
    redis = redis_server.client()
    name = bus(app["app_id"], "news")

    def subscribers():
        return dict(redis.pubsub_numsub(name))[name.encode()]

    client = subscribed(node, app, "news")
    assert subscribers() == 1
    client.send({"event": "pusher:unsubscribe", "data": {"channel": "news"}})
    assert wait_for(lambda: subscribers() == 0, timeout=10)
    # and subscribed again for the next socket
    again = subscribed(node, app, "news")
    assert subscribers() == 1
    assert Publisher(node, app).publish("news", "n", "again")[0] == 200
    assert events(again, 1)[0][1] == "again"


def test_pusher_sdks_on_two_nodes_see_one_pushi(cluster):
    from interop_support import NodeAgent, python_sdk

    a, b = cluster.node(), cluster.node()
    app = cluster.app
    on_a, on_b = NodeAgent(a, app), NodeAgent(b, app)
    try:
        on_a.call("connect", client="x")
        y = on_b.call("connect", client="y")["socket_id"]
        for agent, client in ((on_a, "x"), (on_b, "y")):
            for channel in ("news", "private-chat"):
                assert agent.call("subscribe", client=client, channel=channel)[
                    "succeeded"
                ]
        # the npm SDK publishes on b: pusher-js on both nodes gets it
        assert on_b.sdk("trigger", "news", "headline", {"n": 1})["status"] == 200
        for agent, client in ((on_a, "x"), (on_b, "y")):
            event = agent.wait(type="event", client=client, event="headline")
            assert event["data"] == {"n": 1}
        # the PyPI SDK publishes on a, excluding y (on b)
        python_sdk(a, app).trigger("news", "headline", {"n": 2}, socket_id=y)
        assert on_a.wait(type="event", client="x", event="headline", data={"n": 2})
        # a client event from a reaches b, once
        assert on_a.call(
            "trigger", client="x", channel="private-chat", event="client-typing",
            data={"n": 3},
        )  # fmt: skip
        typed = on_b.wait(type="event", client="y", event="client-typing")
        assert typed["data"] == {"n": 3}
        marker = on_b.sdk("trigger", "news", "marker", "m")
        assert marker["status"] == 200
        on_b.wait(type="event", client="y", event="marker")
        assert not on_b.seen(type="event", client="y", data={"n": 2})
        assert len(on_b.seen(type="event", client="y", event="client-typing")) == 1
    finally:
        on_a.close()
        on_b.close()


def test_leaves_refused_while_redis_lags_are_written_once_it_caught_up(
    redis_server, tmp_path
):
    # a node that awaits 40 replies at most: a publish to 60 channels while
    # Redis is paused (shorter than the command timeout, so the connection
    # stays) fills it, and the leaves of the 120 sockets closed meanwhile
    # are refused
    node = PushiServer(
        data_dir=str(tmp_path),
        redis_url=redis_server.url,
        env={"PUSHI_REDIS_MAX_PENDING": "40"},
    )
    node.start()
    try:
        app = node.create_app("lagging")
        clients = [subscribed(node, app, "room-%d" % index) for index in range(120)]
        status, answer = rest(node, app, "channels")
        assert status == 200 and len(answer["channels"]) == 120, answer
        publisher = Publisher(node, app)
        redis_server.pause()
        try:
            publishing = threading.Thread(
                target=publisher.publish,
                args=(["room-%d" % index for index in range(60)], "n", "lag"),
            )
            publishing.start()
            time.sleep(0.2)
            for client in clients:
                client.ws.socket.shutdown(socket.SHUT_RDWR)
            time.sleep(0.5)
        finally:
            redis_server.resume()
        publishing.join(15)
        publisher.close()
        # every channel vacated, in Redis too, once the node caught up
        assert wait_for(lambda: rest(node, app, "channels")[1]["channels"] == {}), rest(
            node, app, "channels"
        )
        assert not redis_server.client().hgetall("pushi:{%s}:counts" % app["app_id"])
        assert "caught up" in node.read_log()
        assert health(node)["status"] == "ok"
    finally:
        node.stop()
