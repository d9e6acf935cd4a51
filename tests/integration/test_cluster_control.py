"""What spans the nodes of a cluster besides delivery (``base/cluster``:
``control``, ``spans``, ``tokens``, ``stores``), against a real
``redis-server``.

Two nodes are two ``State``s in this process, each on its own netius loop
and WebSocket port, on one SQLite data dir (one store), each with its own
``pushi.net.redis`` connections and ``spans.attach``-ed as node 1 and
node 2.  Their apps poller is slowed to an hour, so that only the control
channel can carry an app change from one node to the other.  Sockets are
real WebSocket clients; Redis is also read through redis-py.
"""

import contextlib
import json
import logging
import threading
import time

import pytest

from pushi.base.access import Access, NeedsStore
from pushi.base.cluster import control as control_module
from pushi.base.cluster.control import BROADCAST, Control, journal_key
from pushi.base.cluster.spans import attach
from pushi.base.cluster.stores import STORE_KEY, Lock, StoreClaim, store_identity
from pushi.base.cluster.tokens import RedisTokens, blocking_client
from pushi.base.config import Config, ConfigError
from pushi.base.limits import App
from pushi.base.state import State
from pushi.net.redis import NetiusLoop, Redis, Subscriber
from pushi.proto import auth, errors

from redis_support import TcpProxy
from support import Client, PushiServer, free_port


def wait_for(check, timeout=10, what="the condition"):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("no %s within %ss" % (what, timeout))
        time.sleep(0.02)


class Node:
    """One in-process node: a State, its Redis connections, its spans,
    and what reached its subscription's other callbacks."""

    def __init__(self, state, node_id, url):
        self.state = state
        self.others = []

        def build():
            loop = NetiusLoop(state.server)
            redis = Redis(url, loop)
            subscriber = Subscriber(url, loop, commands=redis)
            # the broker's callback, chained by the control channel
            subscriber.on_message = lambda channel, data: self.others.append(
                (channel, data)
            )
            redis.start()
            subscriber.start()
            # attached before the connections are up: it subscribes once
            # they are
            return redis, subscriber, attach(state, redis, subscriber, node_id)

        self.redis, self.subscriber, self.spans = state.call_in_loop(build)
        self.control = self.spans.control
        wait_for(
            lambda: state.call_in_loop(lambda: self.control.ready),
            what="control subscription",
        )

    def ws(self, app, path=None):
        return Client(
            "ws://127.0.0.1:%d/app/%s?protocol=7&client=test&version=1.0"
            % (self.state.server.port, path or app["key"])
        )

    def close(self):
        try:
            self.state.call_in_loop(self.subscriber.close)
            self.state.call_in_loop(self.redis.close)
        finally:
            self.state.stop()


@contextlib.contextmanager
def two_nodes(tmp_path, urls):
    """Two nodes on one store, node ``n`` reaching Redis at ``urls[n - 1]``,
    and an app they share."""
    states = [
        State(
            Config(
                server_port=free_port(),
                data_dir=str(tmp_path),
                apps_poll_interval=3600,
            )
        )
        for _ in range(2)
    ]
    app = states[0].store.create_app("spans")
    nodes = []
    try:
        for index, state in enumerate(states):
            state.start_server(http=False)
            nodes.append(Node(state, str(index + 1), urls[index]))
        yield nodes[0], nodes[1], app
    finally:
        for node in nodes:
            node.close()
        for state in states[len(nodes) :]:
            state.stop()


@pytest.fixture
def cluster(tmp_path, redis_server):
    """Two nodes on one store and one Redis, and an app they share."""
    with two_nodes(tmp_path, [redis_server.url] * 2) as nodes:
        yield nodes


@pytest.fixture
def proxied(tmp_path, redis_server):
    """Two nodes as ``cluster``'s, node 2 reaching Redis through a
    ``TcpProxy`` (the third item) that can cut it off."""
    proxy = TcpProxy(("127.0.0.1", redis_server.port))
    try:
        with two_nodes(tmp_path, [redis_server.url, proxy.url()]) as (one, two, _app):
            yield one, two, proxy
    finally:
        proxy.close()


def cut(proxy, redis_server):
    """Cuts the node behind ``proxy`` off Redis until ``proxy.forward()``;
    returns once Redis no longer counts its control subscription."""
    proxy.blackhole()
    proxy.cut()
    client = redis_server.client()
    wait_for(
        lambda: dict(client.pubsub_numsub(BROADCAST))[BROADCAST.encode()] == 1,
        what="the cut node's subscription gone from Redis",
    )


def metric(node, name):
    return node.state.metrics.registry.get_sample_value(name) or 0


@contextlib.contextmanager
def warnings_logged():
    """The warnings logged under ``pushi`` meanwhile."""
    lines = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("pushi")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def record(node, command, own=False):
    """The ``(data, sender)`` of each ``command`` ``node`` handles."""
    seen = []
    node.state.call_in_loop(
        node.control.on, command, lambda data, sender: seen.append((data, sender)), own
    )
    return seen


# the control channel


def test_a_broadcast_reaches_the_other_node_not_its_sender(cluster):
    one, two, _app = cluster
    at_one, at_two = record(one, "hello"), record(two, "hello")
    one.state.call_in_loop(one.control.broadcast, "hello", {"n": 1})
    wait_for(lambda: at_two, what="broadcast at node 2")
    assert at_two == [({"n": 1}, "1")]
    # its sender acted already: a handler that asks for its own sees it
    mine = record(one, "again", own=True)
    record(two, "again")
    one.state.call_in_loop(one.control.broadcast, "again", {"n": 2})
    wait_for(lambda: mine, what="own broadcast")
    assert at_one == [] and mine == [({"n": 2}, "1")]


def test_a_targeted_command_reaches_its_node_only(cluster):
    one, two, _app = cluster
    at_one, at_two = record(one, "only"), record(two, "only")
    one.state.call_in_loop(one.control.send, "2", "only", {"to": 2})
    two.state.call_in_loop(two.control.send, "1", "only", {"to": 1})
    wait_for(lambda: at_one and at_two, what="targeted commands")
    time.sleep(0.3)
    assert at_one == [({"to": 1}, "2")] and at_two == [({"to": 2}, "1")]


def test_a_node_registered_again_gets_its_commands_at_its_new_id(cluster):
    one, two, _app = cluster
    at_two = record(two, "moved")
    two.state.call_in_loop(two.spans.node_changed, "7")
    wait_for(lambda: two.state.call_in_loop(lambda: two.control.ready))
    one.state.call_in_loop(one.control.send, "2", "moved", {"old": True})
    one.state.call_in_loop(one.control.send, "7", "moved", {"old": False})
    wait_for(lambda: at_two, what="command at the new id")
    time.sleep(0.3)
    assert at_two == [({"old": False}, "1")]


def test_unreadable_and_unknown_commands_are_dropped_and_others_pass(
    cluster, redis_server
):
    one, two, _app = cluster
    at_two = record(two, "fine")
    client = redis_server.client()
    for garbage in (b"{", b"[]", b'{"command":5,"node":"1"}', b'{"command":"nope"}'):
        client.publish(BROADCAST, garbage)
    client.publish(BROADCAST, json.dumps({"command": "zzz", "node": "9", "data": {}}))
    # not a control channel: the subscription's other callback (the broker's)
    client.publish("pushi:m:{1}:elsewhere", b"payload")
    one.state.call_in_loop(one.control.broadcast, "fine")
    wait_for(lambda: at_two, what="a good command after bad ones")
    assert at_two == [({}, "1")]


def test_other_channels_of_the_subscription_still_reach_their_callback(
    cluster, redis_server
):
    one, two, _app = cluster
    subscribed = threading.Event()
    two.state.call_in_loop(
        two.subscriber.subscribe, "pushi:m:{1}:news", lambda error: subscribed.set()
    )
    assert subscribed.wait(10)
    redis_server.client().publish("pushi:m:{1}:news", b"event")
    wait_for(lambda: two.others, what="the broker's message")
    assert two.others == [(b"pushi:m:{1}:news", b"event")]
    assert one.others == []


def test_a_lost_subscription_runs_the_gap_hooks(cluster, redis_server):
    one, two, _app = cluster
    gaps = []
    two.state.call_in_loop(two.control.on_gap.append, lambda: gaps.append(1))
    client = redis_server.client()
    # Redis drops every subscription connection (a slow consumer's fate)
    client.client_kill_filter(_type="pubsub")
    wait_for(lambda: gaps, what="the gap hook")
    wait_for(lambda: two.state.call_in_loop(lambda: two.control.ready))
    at_two = record(two, "after")
    one.state.call_in_loop(one.control.broadcast, "after")
    wait_for(lambda: at_two, what="a command after the gap")


def numbers(seen):
    return [data["n"] for data, _sender in seen]


def first_then_cut(one, two, proxy, redis_server):
    """What ``two`` receives of command "n": the first one broadcast, then
    ``two`` cut off Redis."""
    seen = record(two, "n")
    one.state.call_in_loop(one.control.broadcast, "n", {"n": 1})
    wait_for(lambda: seen, what="the first command")
    cut(proxy, redis_server)
    return seen


def test_commands_sent_while_a_subscription_was_away_are_applied_once_back(
    proxied, redis_server
):
    """Broadcast and targeted ones, each once, in the order they were sent."""
    one, two, proxy = proxied
    seen = first_then_cut(one, two, proxy, redis_server)
    one.state.call_in_loop(one.control.broadcast, "n", {"n": 2})
    one.state.call_in_loop(one.control.send, "2", "n", {"n": 3})
    one.state.call_in_loop(one.control.broadcast, "n", {"n": 4})
    time.sleep(0.3)
    assert numbers(seen) == [1]
    proxy.forward()
    wait_for(lambda: len(seen) >= 3, what="the missed commands")
    one.state.call_in_loop(one.control.broadcast, "n", {"n": 5})
    wait_for(lambda: len(seen) >= 4, what="a command after the gap")
    time.sleep(0.5)
    # the targeted one is read from its own journal: in order within it
    assert numbers(seen) in ([1, 2, 4, 3, 5], [1, 3, 2, 4, 5])
    assert metric(two, "pushi_cluster_control_caught_up_total") == 3
    assert metric(two, "pushi_cluster_control_lost_total") == 0


def test_a_subscription_away_past_what_the_journal_keeps_is_logged_and_counted(
    proxied, redis_server
):
    one, two, proxy = proxied
    seen = first_then_cut(one, two, proxy, redis_server)
    one.state.call_in_loop(one.control.broadcast, "n", {"n": 2})
    client = redis_server.client()
    # sent at the end of the loop's turn: in the journal before it is trimmed
    wait_for(lambda: client.xlen(journal_key(BROADCAST)) == 2, what="command 2")
    # as MAXLEN trims a journal once it has more commands than it keeps
    client.xtrim(journal_key(BROADCAST), maxlen=0, approximate=False)
    one.state.call_in_loop(one.control.broadcast, "n", {"n": 3})
    with warnings_logged() as lines:
        proxy.forward()
        wait_for(lambda: len(seen) >= 2, what="what the journal kept")
        wait_for(lambda: metric(two, "pushi_cluster_control_lost_total") == 1)
    assert numbers(seen) == [1, 3]
    assert any("may be lost" in line for line in lines), lines


def test_a_journal_expired_while_a_subscription_was_away_is_logged_and_counted(
    proxied, redis_server, monkeypatch
):
    monkeypatch.setattr(control_module, "JOURNAL_TTL", 1)
    one, two, proxy = proxied
    seen = record(two, "n")
    cut(proxy, redis_server)
    # node 2 knows it is away before the command it misses (the time it
    # was away is counted from then)
    wait_for(
        lambda: two.state.call_in_loop(lambda: not two.subscriber.up),
        what="node 2's subscription down",
    )
    one.state.call_in_loop(one.control.broadcast, "n", {"n": 1})
    client = redis_server.client()
    wait_for(lambda: not client.exists(journal_key(BROADCAST)), what="the expiry")
    proxy.forward()
    wait_for(lambda: metric(two, "pushi_cluster_control_lost_total") == 1)
    one.state.call_in_loop(one.control.broadcast, "n", {"n": 2})
    wait_for(lambda: seen, what="a command after the gap")
    assert numbers(seen) == [2]


# what the State, engine and access broadcast


def test_an_app_disabled_on_one_node_closes_its_sockets_on_the_other(cluster):
    one, two, app = cluster
    client = two.ws(app)
    record_ = one.state.store.update_app(app["app_id"], enabled=False)
    # as PUT /apps/<id> on node 1 does
    one.state.app_changed(App(record_))
    assert client.close_code() == errors.APP_DISABLED
    assert not two.state.apps.by_id(app["app_id"]).enabled


def test_a_key_revoked_on_one_node_closes_the_sockets_using_it_on_the_other(cluster):
    one, two, app = cluster
    pair = one.state.store.add_app_key(app["app_id"])
    one.state.sync_app(app["app_id"])
    wait_for(
        lambda: pair["key"] in two.state.apps.by_id(app["app_id"]).secrets,
        what="the new key on node 2",
    )
    on_new, on_old = two.ws(app, pair["key"]), two.ws(app)
    one.state.store.revoke_app_key(app["app_id"], pair["key"])
    one.state.sync_app(app["app_id"])  # as DELETE /apps/<id>/keys/<key> does
    assert on_new.close_code() == errors.UNAUTHORIZED
    assert on_old.nothing()


def test_terminate_user_on_one_node_closes_the_users_sockets_on_the_other(cluster):
    one, two, app = cluster
    client = two.ws(app)
    user_data = json.dumps({"id": "ada"})
    client.send(
        {
            "event": "pusher:signin",
            "data": {
                "user_data": user_data,
                "auth": auth.token(
                    app["key"],
                    app["secret"],
                    auth.user_string(client.socket_id, user_data),
                ),
            },
        }
    )
    client.recv_event("pusher:signin_success")
    other = two.ws(app)
    # as POST /apps/<id>/users/ada/terminate_connections on node 1 does:
    # its answer can count node 1's sockets only
    closed = one.state.call_in_loop(
        one.state.engine.terminate_user, app["app_id"], "ada"
    )
    assert closed == 0
    assert client.close_code() == errors.UNAUTHORIZED
    assert other.nothing()


def test_a_persisted_subscription_on_one_node_reaches_personal_channels_on_the_other(
    cluster,
):
    one, two, app = cluster
    client = two.ws(app)
    name = "personal-ada"
    answer = client.subscribe(
        name, auth.channel_auth(app["key"], app["secret"], client.socket_id, name)
    )
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer

    def on_news():
        channel = two.state.engine.registry.channel(app["app_id"], "news")
        return channel is not None and len(channel.sessions) == 1

    # as POST /apps/<id>/subscribe on node 1 does
    one.state.store.subscribe(app["app_id"], "ada", "news")
    one.state.call_soon(
        one.state.engine.personal_changed, app["app_id"], "ada", "news", True
    )
    wait_for(lambda: two.state.call_in_loop(on_news), what="node 2's socket on news")
    one.state.store.unsubscribe(app["app_id"], "ada", "news")
    one.state.call_soon(
        one.state.engine.personal_changed, app["app_id"], "ada", "news", False
    )
    wait_for(
        lambda: not two.state.call_in_loop(on_news), what="node 2's socket off news"
    )


def test_a_session_token_from_one_node_holds_on_the_other_until_a_logout(cluster):
    one, two, app = cluster
    app_id, bearer = app["app_id"], "Bearer %s"
    _app, token = one.state.access.login(app_id, app["key"], app["secret"])
    header = bearer % token
    # node 2 never saw it: not from memory on its loop, but from Redis
    assert not two.state.access.is_live(token, app_id)
    with pytest.raises(NeedsStore):
        two.state.access.authorize(app_id, "GET", "/", {}, b"", header, blocking=False)
    assert (
        two.state.access.authorize(app_id, "GET", "/", {}, b"", header).app_id == app_id
    )
    assert two.state.access.is_live(token, app_id)
    # a logout on node 1 ends it on node 2 too
    one.state.logout(token)
    wait_for(
        lambda: not two.state.access.is_live(token, app_id), what="node 2 forgetting"
    )
    with pytest.raises(errors.HttpError) as refused:
        two.state.access.authorize(app_id, "GET", "/", {}, b"", header)
    assert refused.value.status == 401


def test_a_logout_on_the_other_node_ends_the_token_where_it_was_issued(cluster):
    one, two, app = cluster
    app_id = app["app_id"]
    _app, token = one.state.access.login(app_id, app["key"], app["secret"])
    assert two.state.access.logout(token)
    wait_for(
        lambda: not one.state.access.is_live(token, app_id), what="node 1 forgetting"
    )
    assert one.state.access.session_app(token, app_id) is None


def test_a_console_stream_on_one_node_ends_with_a_logout_on_the_other(cluster):
    one, two, app = cluster
    app_id = app["app_id"]
    _app, token = one.state.access.login(app_id, app["key"], app["secret"])
    stream = Client(
        "ws://127.0.0.1:%d/console" % two.state.server.port,
        expect_established=False,
    )
    stream.send({"event": "console:watch", "data": {"app_id": app_id, "token": token}})
    assert stream.recv()["event"] == "console:watching"
    one.state.logout(token)
    ended = stream.recv_event("console:error")
    assert ended["data"]["message"] == "Session ended"
    assert stream.close_code() == errors.UNAUTHORIZED


def test_retention_runs_on_one_node(cluster):
    one, two, _app = cluster
    assert [one.spans.may_retain(), two.spans.may_retain()].count(True) == 1
    # renewed while held, not taken over
    holder = one if one.spans.may_retain() else two
    assert holder.spans.may_retain()


# the pieces on their own


def test_session_tokens_in_redis_are_bounded_per_app_across_nodes(redis_server):
    apps = {"1": App(dict(app_id="1", key="k1", secret="s1"))}

    class Apps:
        load_id = staticmethod(apps.get)

    client = redis_server.client()
    nodes = []
    for _ in range(2):
        access = Access(Apps())
        access.shared = RedisTokens(client, max_tokens=3)
        access.tokens.max_tokens = 3
        # what the control channel's logout does between nodes
        access.ended = lambda ids: [node.forget(ids) for node in nodes]
        nodes.append(access)
    tokens = [nodes[index % 2].login("1", "k1", "s1")[1] for index in range(5)]
    assert client.zcard("pushi:tokens:1") == 3
    live = [token for token in tokens if nodes[0].session_app(token, "1")]
    assert live == tokens[2:]
    # the store holds SHA-256 ids, never a token itself
    names = [name.decode() for name in client.keys("pushi:token:*")]
    assert len(names) == 3
    assert not any(token in name for token in tokens for name in names)


def test_session_tokens_of_a_revoked_key_or_a_disabled_app_end_in_redis(redis_server):
    record = dict(app_id="1", key="k1", secret="s1")
    apps = {"1": App(record)}

    class Apps:
        load_id = staticmethod(apps.get)

    client = redis_server.client()
    one, two = Access(Apps()), Access(Apps())
    one.shared = two.shared = RedisTokens(client)
    by_key = one.login("1", "k1", "s1")[1]
    by_admin = one._issue(apps["1"])
    assert two.session_app(by_key, "1") and two.session_app(by_admin, "1")
    # the app's only key replaced: the key's tokens end, the admin's stay
    apps["1"] = App(dict(record, key="k2", secret="s2"))
    one.revoke_keys(apps["1"])
    two.forget(two.tokens.ids())
    assert two.session_app(by_key, "1") is None
    assert two.session_app(by_admin, "1")
    one.revoke("1")
    two.forget(two.tokens.ids())
    assert two.session_app(by_admin, "1") is None
    assert client.exists("pushi:tokens:1") == 0


def test_a_logout_on_one_node_ends_the_token_on_the_other_before_its_word_arrives(
    redis_server,
):
    apps = {"1": App(dict(app_id="1", key="k1", secret="s1"))}

    class Apps:
        load_id = staticmethod(apps.get)

    one, two = Access(Apps()), Access(Apps())
    one.shared = two.shared = RedisTokens(redis_server.client())
    token = one.login("1", "k1", "s1")[1]
    assert two.session_app(token, "1")
    # no control channel here: node 2 learns of the logout from Redis alone
    assert one.logout(token)
    assert two.session_app(token, "1") is None
    assert not two.is_live(token, "1")


def test_session_tokens_while_redis_is_away(redis_server):
    """A login is refused with 503 rather than issued on one node only; a
    token this node holds in memory keeps working; an unknown one is 503."""
    proxy = TcpProxy(("127.0.0.1", redis_server.port))
    try:
        apps = {"1": App(dict(app_id="1", key="k1", secret="s1"))}

        class Apps:
            load_id = staticmethod(apps.get)

        access = Access(Apps())
        access.shared = RedisTokens(blocking_client(proxy.url(), timeout=0.5))
        token = access.login("1", "k1", "s1")[1]
        stranger = Access(Apps())
        stranger.shared = RedisTokens(redis_server.client())
        unknown = stranger.login("1", "k1", "s1")[1]
        proxy.blackhole()
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(errors.HttpError) as refused:
            access.login("1", "k1", "s1")
        assert refused.value.status == 503
        header = "Bearer %s" % token
        assert access.authorize("1", "GET", "/", {}, b"", header).app_id == "1"
        with pytest.raises(errors.HttpError) as refused:
            access.authorize("1", "GET", "/", {}, b"", "Bearer %s" % unknown)
        assert refused.value.status == 503
        assert time.monotonic() - started < 10
        proxy.forward()
        assert access.authorize("1", "GET", "/", {}, b"", "Bearer %s" % unknown)
    finally:
        proxy.close()


def test_a_lock_has_one_holder_and_passes_on_when_it_is_not_renewed(redis_server):
    client = redis_server.client()
    assert not Lock(client, "pushi:lock:test", None, ttl=1).held()
    first = Lock(client, "pushi:lock:test", "1", ttl=1)
    second = Lock(client, "pushi:lock:test", "2", ttl=1)
    assert first.held() and not second.held() and first.held()
    wait_for(second.held, timeout=10, what="the lock passing on")
    assert not first.held()


def test_a_control_channel_started_while_redis_is_down_subscribes_once_it_is_up(
    tmp_path, redis_server
):
    state = State(Config(server_port=free_port(), data_dir=str(tmp_path)))
    state.start_server(http=False)
    proxy = TcpProxy(("127.0.0.1", redis_server.port))
    proxy.blackhole()
    url = proxy.url()
    seen = []
    try:

        def build():
            loop = NetiusLoop(state.server)
            redis = Redis(url, loop, backoff_max=0.2)
            subscriber = Subscriber(url, loop, commands=redis, backoff_max=0.2)
            # no node id yet (not registered): broadcasts only
            control = Control(redis, subscriber, None)
            control.on("late", lambda data, sender: seen.append(sender))
            redis.start()
            subscriber.start()
            control.start()
            return redis, subscriber, control

        redis, subscriber, control = state.call_in_loop(build)
        time.sleep(1.5)
        assert not state.call_in_loop(lambda: control.ready)
        proxy.forward()
        proxy.cut()
        wait_for(lambda: state.call_in_loop(lambda: control.ready), timeout=15)
        state.call_in_loop(control.rename, "5")
        wait_for(lambda: state.call_in_loop(lambda: control.ready))
        redis_server.client().publish(
            "pushi:node:5", json.dumps({"command": "late", "node": "3"})
        )
        wait_for(lambda: seen == ["3"], what="the command")
        state.call_in_loop(subscriber.close)
        state.call_in_loop(redis.close)
    finally:
        state.stop()
        proxy.close()


# the store of a cluster


def test_a_node_on_another_store_than_the_clusters_is_refused_at_start(redis_server):
    env = {"PUSHI_REDIS_URL": redis_server.url}
    first = PushiServer(env=env).start()
    servers = [first]
    try:
        # the same data dir on the same machine: the same store
        servers.append(PushiServer(data_dir=first.data_dir, env=env).start())
        other = PushiServer(env=env)
        with pytest.raises(RuntimeError) as refused:
            other.start()
        lines = [line for line in other.read_log().splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith("Refused: this node's store is the SQLite file")
        assert other.data_dir in lines[0] and first.data_dir in lines[0]
        assert "server exited" in str(refused.value)
        stored = redis_server.client().get("pushi:store").decode()
        assert first.data_dir in stored
    finally:
        for server in servers:
            server.stop()


def test_the_clusters_store_is_free_again_once_no_node_renews_it(
    tmp_path, redis_server
):
    """A cluster moves to another store once every node has stopped: the
    claim lives only while some node renews it."""
    client = redis_server.client()
    first = StoreClaim(client, "store A", ttl=1, every=0.2)
    first.claim()
    try:
        time.sleep(1.5)  # renewed meanwhile: still the cluster's
        with pytest.raises(ConfigError):
            StoreClaim(client, "store B", ttl=1).claim()
    finally:
        first.stop()
    second = StoreClaim(client, "store B", ttl=1)
    wait_for(lambda: client.get(STORE_KEY) is None, what="the claim's expiry")
    second.claim()
    second.stop()
    assert client.get(STORE_KEY) == b"store B"


def test_a_mongodb_stores_identity_has_its_hosts_and_database_not_its_password(
    store_mongo_emulator,
):
    from pushi.base.store.mongo import MongoStore

    store = MongoStore(store_mongo_emulator.url, database="pushi_identity")
    try:
        port = int(store_mongo_emulator.url.rsplit(":", 1)[1].strip("/"))
        url = "mongodb://ada:hunter2@127.0.0.1:%d/?authSource=admin" % port
        identity = store_identity(store, url)
        assert "hunter2" not in identity and "ada" not in identity
        assert "127.0.0.1:%d" % port in identity and "pushi_identity" in identity
    finally:
        store.close()
