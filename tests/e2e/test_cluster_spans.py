"""What spans the nodes besides delivery, end to end: two Pushi nodes as
subprocesses on one real ``redis-server`` and one data dir, real
WebSocket clients and REST calls spread over them.  The apps poller is
slowed to an hour, so that only the control channel carries an app
change from one node to the other.
"""

import json
import tempfile
import time

import pytest

from pushi.proto import auth, errors

from redis_support import TcpProxy
from support import ADMIN_SECRET, PushiServer, wait_until

ADMIN = {"Authorization": "Bearer " + ADMIN_SECRET}


def start_nodes(urls):
    """Nodes on one data dir, node ``n`` reaching Redis at ``urls[n - 1]``;
    a generator of the nodes and an app they serve."""
    data_dir = tempfile.mkdtemp(prefix="pushi-spans-")
    env = {
        "PUSHI_APPS_POLL_INTERVAL": "3600",
        "PUSHI_RETENTION_INTERVAL": "0.5",
    }
    made = []
    try:
        for url in urls:
            made.append(
                PushiServer(
                    data_dir=data_dir, env=dict(env, PUSHI_REDIS_URL=url)
                ).start()
            )
        yield made + [made[0].create_app("spans")]
    finally:
        for node in made:
            node.stop()


@pytest.fixture
def nodes(redis_server):
    """Two nodes on one Redis and one data dir, and an app both serve."""
    yield from start_nodes([redis_server.url] * 2)


@pytest.fixture
def proxied(redis_server):
    """Two nodes as ``nodes``' (and the app), node 2 reaching Redis through
    a ``TcpProxy`` (the last item) that can cut it off."""
    proxy = TcpProxy(("127.0.0.1", redis_server.port))
    try:
        for one, two, app in start_nodes([redis_server.url, proxy.url()]):
            yield one, two, app, proxy
    finally:
        proxy.close()


def signed_in(node, app, user_id):
    client = node.connect(app)
    user_data = json.dumps({"id": user_id})
    signature = auth.token(
        app["key"], app["secret"], auth.user_string(client.socket_id, user_data)
    )
    client.send(
        {"event": "pusher:signin", "data": {"user_data": user_data, "auth": signature}}
    )
    client.recv_event("pusher:signin_success")
    return client


def test_an_app_disabled_over_rest_on_one_node_closes_its_sockets_on_the_other(nodes):
    one, two, app = nodes
    client = two.connect(app)
    one.update_app(app, enabled=False)
    assert client.close_code() == errors.APP_DISABLED


def test_a_key_revoked_on_one_node_closes_its_sockets_on_the_other(nodes):
    one, two, app = nodes
    path = "apps/%s/keys" % app["app_id"]
    status, pair = one.request("POST", path, headers=ADMIN)
    assert status == 201, pair
    client = two.connect(dict(app, key=pair["key"]))
    other = two.connect(app)
    status, _ = one.request("DELETE", path + "/" + pair["key"], headers=ADMIN)
    assert status == 200
    assert client.close_code() == errors.UNAUTHORIZED
    assert other.nothing()


def terminate(node, app, user_id):
    """``POST /apps/<id>/users/<user_id>/terminate_connections`` on ``node``."""
    status, answer = node.request(
        "POST",
        "apps/%s/users/%s/terminate_connections" % (app["app_id"], user_id),
        headers=ADMIN,
    )
    assert status == 200, answer


def test_terminate_connections_on_one_node_closes_the_users_sockets_on_both(nodes):
    one, two, app = nodes
    here, there = signed_in(one, app, "ada"), signed_in(two, app, "ada")
    bystander = two.connect(app)
    terminate(one, app, "ada")
    assert here.close_code() == errors.UNAUTHORIZED
    assert there.close_code() == errors.UNAUTHORIZED
    assert bystander.nothing()


def test_terminate_connections_while_a_node_was_cut_off_reaches_it_once_back(
    proxied, redis_server
):
    one, two, app, proxy = proxied
    here, there = signed_in(one, app, "ada"), signed_in(two, app, "ada")
    bystander = two.connect(app)
    # node 2 cut off from Redis: its subscription away, its sockets open
    # (a node is fenced after 8 s without a heartbeat only)
    proxy.blackhole()
    proxy.cut()
    redis = redis_server.client()
    assert wait_until(lambda: dict(redis.pubsub_numsub("pushi:ctl"))[b"pushi:ctl"] == 1)
    terminate(one, app, "ada")
    assert here.close_code() == errors.UNAUTHORIZED
    proxy.forward()
    assert there.close_code(timeout=20) == errors.UNAUTHORIZED
    assert bystander.nothing()
    assert "read from the journal" in two.read_log()


def test_a_subscription_kept_over_rest_on_one_node_reaches_a_personal_channel_on_the_other(
    nodes,
):
    one, two, app = nodes
    client = two.connect(app)
    name = "personal-ada"
    answer = client.subscribe(
        name, auth.channel_auth(app["key"], app["secret"], client.socket_id, name)
    )
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    status, _ = one.request(
        "POST",
        "apps/%s/subscribe" % app["app_id"],
        {"user_id": "ada", "event": "news"},
        headers=ADMIN,
    )
    assert status == 200
    # published on node 1 until node 2's socket, on the channel by then,
    # gets it (occupancy across nodes is not what this test is about)
    publisher = one.client(app)
    deadline = time.monotonic() + 10
    while True:
        publisher.trigger_event("news", {"n": 1}, event="hello")
        try:
            message = client.recv_event("hello", timeout=0.5)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "no event on news"
    assert message["channel"] == "news"


def test_a_session_token_of_one_node_holds_on_the_other_until_a_logout_there(nodes):
    one, two, app = nodes
    headers = one.token_headers(app)
    path = "apps/%s" % app["app_id"]
    assert two.request("GET", path, headers=headers)[0] == 200
    assert one.request("GET", path, headers=headers)[0] == 200
    assert two.request("POST", "logout", headers=headers)[0] == 200
    assert one.request("GET", path, headers=headers)[0] == 401
    assert two.request("GET", path, headers=headers)[0] == 401


def test_retention_runs_in_a_cluster_on_one_node(nodes, redis_server):
    one, two, app = nodes
    one.update_app(app, settings={"retention_count": 2})
    publisher = one.client(app)
    for index in range(5):
        publisher.trigger_event("log", str(index), event="line", persist=True)
    deadline = time.monotonic() + 15
    while True:
        kept = [event["data"] for event in two.client(app).get_events("log")["events"]]
        if kept == ["4", "3"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert kept == ["4", "3"]
    holder = redis_server.client().get("pushi:lock:retention")
    assert holder is not None


def test_a_node_on_another_data_dir_is_refused(nodes, redis_server):
    other = PushiServer(env={"PUSHI_REDIS_URL": redis_server.url})
    with pytest.raises(RuntimeError):
        other.start()
    assert other.read_log().strip().startswith("Refused: this node's store is")
