"""One debug console sees the whole app of a cluster: two Pushi nodes as
subprocesses on one real ``redis-server``, a console stream signed in on
the first, real clients and REST calls on the second.  Worker mode (the
same over a private Redis) is in ``test_workers.py``.
"""

import time

from cluster_support import cluster_fixture  # noqa: F401

from pushi.proto import auth

from support import Client


def console(node, app):
    """A console stream of ``app`` signed in on ``node``, once it watches."""
    client = Client(node.ws_url + "console", expect_established=False)
    client.send(
        {
            "event": "console:watch",
            "data": {"app_id": app["app_id"], "token": node.login(app)},
        }
    )
    watching = client.recv()
    assert watching["event"] == "console:watching", watching
    return client, watching["data"]


class Stream:
    """What a console stream received: its entries and its stats."""

    def __init__(self, client):
        self.client = client
        self.entries = []
        self.stats = []

    def read(self, seconds):
        """Reads for ``seconds``."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                message = self.client.recv(max(0.01, deadline - time.time()))
            except TimeoutError:
                return
            if message["event"] == "console:entry":
                self.entries.append(message["data"])
            elif message["event"] == "console:stats":
                self.stats.append(message["data"])

    def until(self, check, timeout=15):
        """Reads until ``check(self)`` holds (returned)."""
        deadline = time.time() + timeout
        while not check(self) and time.time() < deadline:
            self.read(0.2)
        return check(self)

    def of(self, kind, **fields):
        return [
            entry
            for entry in self.entries
            if entry["type"] == kind
            and all(entry.get(name) == value for name, value in fields.items())
        ]


def test_a_console_on_one_node_sees_the_traffic_of_the_other_once(cluster):
    one, two = cluster.node(), cluster.node()
    app = cluster.make_app()
    watcher, _ = console(one, app)
    stream = Stream(watcher)
    client = two.connect(app)
    node = client.socket_id.split(".")[0]
    assert node != one.connect(app).socket_id.split(".")[0]
    client.subscribe("news")
    two.client(app).trigger_event(channel="news", data="hi", event="ev", persist=False)
    client.recv_event("ev")
    name = "private-chat"
    answer = client.subscribe(
        name, auth.channel_auth(app["key"], app["secret"], client.socket_id, name)
    )
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    client.send({"event": "client-typing", "channel": name, "data": {"x": 1}})
    client.close()
    socket_id = client.socket_id
    assert stream.until(lambda seen: seen.of("disconnection", socket_id=socket_id))
    assert stream.of("connection", socket_id=socket_id)
    assert stream.of("occupied", channel="news")
    assert stream.of("subscribed", channel="news", socket_id=socket_id)
    (message,) = stream.of("api_message", event="ev")
    assert message["channels"] == ["news"] and message["data"] == "hi"
    (typed,) = stream.of("client_event", event="client-typing", channel=name)
    assert typed["data"] == {"x": 1} and typed["socket_id"] == socket_id
    assert stream.of("unsubscribed", channel="news", socket_id=socket_id)
    assert stream.of("vacated", channel="news")
    # nothing twice, however long one waits
    stream.read(3)
    keys = [
        (entry["type"], entry.get("socket_id"), entry.get("channel"))
        for entry in stream.entries
    ]
    assert len(keys) == len(set(keys)), keys
    assert stream.until(
        lambda seen: any(stats["messages_last_minute"] == 2 for stats in seen.stats)
    ), stream.stats
    watcher.close()


def test_console_stats_count_the_whole_cluster(cluster):
    one, two = cluster.node(), cluster.node()
    app = cluster.make_app()
    here, there = one.connect(app), two.connect(app)
    here.subscribe("a")
    there.subscribe("b")
    there.subscribe("a")
    watcher, watching = console(one, app)
    assert (watching["connections"], watching["channels"]) == (2, 2), watching
    stream = Stream(watcher)
    more = two.connect(app)
    more.subscribe("c")
    assert stream.until(
        lambda seen: any(
            (stats["connections"], stats["channels"]) == (3, 3) for stats in seen.stats
        )
    ), stream.stats
    for client in (here, there, more):
        client.close()
    watcher.close()


def test_the_history_sums_every_nodes_samples(redis_server):
    import shutil
    import tempfile

    from support import PushiServer

    data_dir = tempfile.mkdtemp(prefix="pushi-console-")
    env = {"PUSHI_REDIS_URL": redis_server.url, "PUSHI_CONSOLE_HISTORY_EVERY": "0.5"}
    nodes = []
    try:
        for _ in range(2):
            nodes.append(PushiServer(data_dir=data_dir, env=env).start())
        one, two = nodes
        app = one.create_app("history")
        clients = [two.connect(app), two.connect(app), one.connect(app)]
        # samples taken before any console watched, on both nodes
        time.sleep(1.5)
        watcher, watching = console(one, app)
        samples = watching["history"]["samples"]
        assert samples and samples[-1][1] == 3, samples
        # and the live ones carry on with the whole cluster's count
        stream = Stream(watcher)
        assert stream.until(
            lambda seen: any(
                stats["sample"] and stats["sample"][0] > samples[-1][0]
                for stats in seen.stats
            )
        )
        assert all(stats["sample"][1] == 3 for stats in stream.stats[-2:])
        for client in clients:
            client.close()
        watcher.close()
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_node_cut_off_from_redis_keeps_its_local_console(cluster):
    one, _two = cluster.node(), cluster.node()
    app = cluster.make_app()
    watcher, _ = console(one, app)
    stream = Stream(watcher)
    cluster.redis.kill()
    # within the fence's bound (8 s), the node serves its own clients
    client = one.connect(app)
    assert stream.until(
        lambda seen: seen.of("connection", socket_id=client.socket_id), timeout=5
    )
    assert stream.until(
        lambda seen: any(stats["connections"] == 1 for stats in seen.stats),
        timeout=5,
    ), stream.stats
    watcher.close()
