"""A REST publish with ``info`` on a node of a cluster: two States in this
process, each a node (``redis_url``) on one real ``redis-server`` and one
data dir, the first serving REST; real WebSocket and HTTP clients.

A node's counts are blocking Redis reads (its ``cluster.reader``, a
redis-py client), which must not hold the loop that serves its sockets.
To see the loop while such a read waits, the test points the node's
reader at Redis through a ``TcpProxy`` that stops forwarding: the read
waits there, the node's own loop connections are not behind it.
"""

import http.client
import json
import threading
import time

import pytest

from pushi.base.cluster.seams import blocking_client
from pushi.base.config import Config
from pushi.base.state import State

from redis_support import TcpProxy
from support import Client, free_port, signed_path, wait_until


@pytest.fixture
def nodes(tmp_path, redis_server):
    """Two nodes on one Redis and one data dir, the first with its REST
    port, and an app both serve."""
    states = [
        State(
            Config(
                server_port=free_port(),
                app_port=free_port(),
                data_dir=str(tmp_path),
                redis_url=redis_server.url,
                # no retention pass reads Redis during a test, and an app
                # created on the store stays out of memory until it is used
                retention_interval=3600,
                apps_poll_interval=3600,
            )
        )
        for _ in range(2)
    ]
    app = states[0].store.create_app("info")
    started = []
    try:
        for index, state in enumerate(states):
            state.start_server(http=index == 0)
            started.append(state)
        yield states[0], states[1], app
    finally:
        for state in started:
            state.stop()


def connected(state, app):
    return Client(
        "ws://127.0.0.1:%d/app/%s?protocol=7&client=test&version=1.0"
        % (state.config.server_port, app["key"])
    )


def subscribed(state, app, channel):
    client = connected(state, app)
    answer = client.subscribe(channel)
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    return client


def publish(state, app, channels, info, timeout=30):
    """``(status, answer)`` of a signed ``POST /apps/<id>/events``."""
    body = json.dumps(
        {"name": "n", "channels": channels, "data": "x", "info": info}
    ).encode()
    path = signed_path(app, "POST", "/apps/%s/events" % app["app_id"], None, body)
    connection = http.client.HTTPConnection(
        "127.0.0.1", state.config.app_port, timeout=timeout
    )
    try:
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_publish_with_info_on_a_node_counts_every_nodes_sockets(nodes):
    one, two, app = nodes
    sockets = [subscribed(one, app, "news"), subscribed(two, app, "news")]
    sockets.append(subscribed(two, app, "news"))
    sockets.append(subscribed(two, app, "sport"))
    status, answer = publish(one, app, ["news", "sport"], "subscription_count")
    assert status == 200, answer
    assert answer["channels"] == {
        "news": {"subscription_count": 3},
        "sport": {"subscription_count": 1},
    }


def test_a_socket_told_it_is_subscribed_is_counted_by_every_node(nodes):
    """A node writes a turn's subscriptions to Redis after that turn (one
    script for them all): the sockets hear they are subscribed only once
    it has, so a count any node reads after that includes them.  Here the
    write comes half a second late, and the count is asked at once."""
    one, two, app = nodes
    steps = two.cluster.shared.steps
    write = steps.write

    def late_write():
        time.sleep(0.5)
        write()

    steps.write = late_write
    socket = subscribed(two, app, "news")
    status, answer = publish(one, app, ["news"], "subscription_count")
    assert status == 200, answer
    assert answer["channels"] == {"news": {"subscription_count": 1}}
    socket.close()


def test_a_socket_is_told_it_is_subscribed_once_redis_has_its_join(nodes, redis_server):
    """The turn's steps may wait before Redis applies them (here in the
    node's own buffer and then behind a large command, Redis stopped): the
    socket hears it is subscribed only once Redis has answered them, so a
    count read on any node after that includes it."""
    one, two, app = nodes
    # node two listens to the channel already: the join needs Redis only
    # for the count
    first = subscribed(two, app, "news")
    commands = two.cluster.node.commands

    def patient():
        # Redis stopped, then working through the large command: no
        # timeout (1 s) that would drop the connection and fail the steps
        commands.timeout = 30

    two.call_in_loop(patient)
    second = connected(two, app)
    redis_server.pause()
    try:

        def fill():
            commands.batch(
                lambda: commands.call(
                    lambda _reply: None, "SET", "filler", b"x" * (64 << 20)
                )
            )
            return commands._blocked

        assert two.call_in_loop(fill), "the connection to Redis did not fill"
        second.send({"event": "pusher:subscribe", "data": {"channel": "news"}})
        with pytest.raises(TimeoutError):
            second.recv(0.5)
    finally:
        redis_server.resume()
    answer = second.recv()
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    counts = one.cluster.reader.hgetall("pushi:{%s}:counts" % app["app_id"])
    assert int(counts[b"news"]) == 2
    first.close()
    second.close()


@pytest.mark.parametrize("in_memory", [True, False], ids=["loop", "wsgi"])
def test_a_publish_with_info_does_not_hold_the_nodes_loop_while_redis_reads_wait(
    nodes, redis_server, in_memory
):
    """Published on the loop (an app the node holds) or from a REST thread
    (an app it reads from the store first)."""
    one, two, app = nodes
    if not in_memory:
        app = one.store.create_app("stored")
    subscribed(two, app, "news")
    other = subscribed(one, nodes[2], "elsewhere")
    assert (one.apps.by_id(app["app_id"]) is not None) == in_memory
    proxy = TcpProxy(("127.0.0.1", redis_server.port))
    try:
        # the node's blocking reads (the REST queries, info) go through the
        # proxy, with a timeout longer than the test
        one.cluster.reader.connection_pool = blocking_client(
            proxy.url(), timeout=60
        ).connection_pool
        proxy.blackhole()
        answers = []
        publishing = threading.Thread(
            target=lambda: answers.append(
                publish(one, app, ["news"], "subscription_count", timeout=60)
            )
        )
        publishing.start()
        # the event is delivered, then its count is read: that read waits
        assert wait_until(lambda: proxy.accepted >= 1, timeout=15)
        # meanwhile the node's loop serves its sockets
        other.send({"event": "pusher:ping", "data": {}})
        assert other.recv_event("pusher:pong", timeout=5)
        # the read's connection is lost; it is retried on a new one
        proxy.forward()
        proxy.cut()
        publishing.join(30)
        assert answers == [(200, {"channels": {"news": {"subscription_count": 1}}})]
    finally:
        proxy.close()
