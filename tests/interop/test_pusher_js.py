"""pusher-js (Node build) and the pusher npm SDK against the real server.

Every client here is the unmodified npm package (``tests/interop``,
installed by ``scripts/install``), configured as docs/from-pusher.md
says; the channel authorizer and the user
authenticator are the npm SDK's ``authorizeChannel`` and
``authenticateUser``, as an app's auth endpoint would call them.
"""

import json
import os

import pytest

from interop_support import INTEROP, MASTER_KEY, NodeAgent, python_sdk


@pytest.fixture
def agent(server, app):
    instance = NodeAgent(server, app)
    yield instance
    instance.close()


def sync(agent, client, channel):
    """Sends one marker event on ``channel`` and waits until ``client``
    has it: whatever the server sent that client before is in by then."""
    marker = "sync-%d" % len(agent.events)
    assert agent.sdk("trigger", channel, "marker", marker)["status"] == 200
    agent.wait(
        type="event", client=client, channel=channel, event="marker", data=marker
    )


@pytest.mark.one_server
def test_installed_versions_are_the_pinned_ones(agent):
    with open(os.path.join(INTEROP, "package.json")) as file:
        pins = json.load(file)["dependencies"]
    versions = agent.call("versions")
    assert versions["pusher-js"] == pins["pusher-js"]
    assert versions["pusher"] == pins["pusher"]


def test_the_clients_of_a_test_alternate_over_the_nodes(server, app, agent):
    """On ``cluster2`` a test's clients, pusher-js and raw sockets alike,
    connect to node b, then a, then b: what two of them do crosses the
    nodes."""
    ids = [agent.call("connect", client=name)["socket_id"] for name in "xy"]
    ids.append(server.connect(app).socket_id)
    assert sorted(server.socket_ids(app, expected=3)) == sorted(ids)
    if hasattr(server, "b"):
        # a socket id names its node; either node lists both nodes' sockets
        nodes = [socket_id.split(".")[0] for socket_id in ids]
        assert nodes[0] == nodes[2] != nodes[1], ids
        assert sorted(server.b.socket_ids(app, expected=3)) == sorted(ids)


class TestChannels:
    def test_public_channel(self, agent):
        for name in ("a", "b"):
            agent.call("connect", client=name)
            assert agent.call("subscribe", client=name, channel="news")["succeeded"]
        answer = agent.sdk("trigger", "news", "headline", {"title": "hello"})
        assert answer == {"status": 200, "body": {}}
        for name in ("a", "b"):
            event = agent.wait(
                type="event", client=name, channel="news", event="headline"
            )
            assert event["data"] == {"title": "hello"}

    def test_private_channel_and_a_bad_signature(self, agent):
        agent.call("connect", client="good")
        agent.call("connect", client="bad", badSecret="not-the-secret")
        assert agent.call("subscribe", client="good", channel="private-orders")[
            "succeeded"
        ]
        refused = agent.call("subscribe", client="bad", channel="private-orders")
        assert not refused["succeeded"]
        assert refused["error"]["status"] == 401
        agent.sdk("trigger", "private-orders", "order", "#1")
        assert agent.wait(type="event", client="good", event="order")["data"] == "#1"
        # the refused socket stays open and usable
        assert agent.call("subscribe", client="bad", channel="after")["succeeded"]
        sync(agent, "bad", "after")
        assert not agent.seen(client="bad", event="order")

    def test_presence_members(self, agent):
        agent.call(
            "connect",
            client="a",
            presence={"user_id": "1", "user_info": {"name": "Ann"}},
        )
        agent.call(
            "connect", client="b", presence={"user_id": 2, "user_info": {"name": "Bob"}}
        )
        first = agent.call("subscribe", client="a", channel="presence-room")
        assert first["members"] == {
            "count": 1,
            "me": {"id": "1", "info": {"name": "Ann"}},
            "ids": ["1"],
        }
        second = agent.call("subscribe", client="b", channel="presence-room")
        assert second["members"]["count"] == 2 and second["members"]["ids"] == [
            "1",
            "2",
        ]
        added = agent.wait(type="event", client="a", event="pusher:member_added")
        assert added["data"] == {"id": "2", "info": {"name": "Bob"}}
        users = agent.sdk("get", {"path": "/channels/presence-room/users"})
        assert sorted(user["id"] for user in users["body"]["users"]) == ["1", "2"]
        info = agent.sdk(
            "get",
            {"path": "/channels/presence-room", "params": {"info": "user_count"}},
        )
        assert info["body"] == {"occupied": True, "user_count": 2}
        # presence channels count users, not subscriptions (Pusher)
        info = agent.sdk(
            "get",
            {
                "path": "/channels/presence-room",
                "params": {"info": "user_count,subscription_count"},
            },
        )
        assert info["status"] == 400, info
        agent.call("disconnect", client="b")
        removed = agent.wait(type="event", client="a", event="pusher:member_removed")
        assert removed["data"] == {"id": "2", "info": {"name": "Bob"}}
        assert agent.call("state", client="a", channel="presence-room")["channel"][
            "members"
        ]["ids"] == ["1"]

    def test_client_events_private_and_presence(self, agent):
        agent.call("connect", client="a", presence={"user_id": "ann"})
        agent.call("connect", client="b", presence={"user_id": "bob"})
        for channel in ("private-chat", "presence-chat"):
            for name in ("a", "b"):
                assert agent.call("subscribe", client=name, channel=channel)[
                    "succeeded"
                ]
        agent.call("bind", client="b", channel="presence-chat", event="client-typing")
        assert agent.call(
            "trigger",
            client="a",
            channel="private-chat",
            event="client-typing",
            data={"n": 1},
        )
        assert agent.call(
            "trigger",
            client="a",
            channel="presence-chat",
            event="client-typing",
            data={"n": 2},
        )
        private = agent.wait(
            type="event", client="b", channel="private-chat", event="client-typing"
        )
        assert private["data"] == {"n": 1}
        bound = agent.wait(type="bound", client="b", channel="presence-chat")
        assert bound["data"] == {"n": 2} and bound["metadata"] == {"user_id": "ann"}
        # never echoed to the sender
        sync(agent, "a", "private-chat")
        sync(agent, "a", "presence-chat")
        assert not agent.seen(type="event", client="a", event="client-typing")

    def test_client_events_refused_when_the_app_has_them_off(self, server):
        app = server.create_app("no-client-events", client_events=False)
        agent = NodeAgent(server, app)
        try:
            agent.call("connect", client="a")
            agent.call("connect", client="b")
            for name in ("a", "b"):
                agent.call("subscribe", client=name, channel="private-quiet")
            agent.call(
                "trigger",
                client="a",
                channel="private-quiet",
                event="client-x",
                data={},
            )
            error = agent.wait(type="error", client="a")
            assert error["error"]["code"] == 4303
            sync(agent, "b", "private-quiet")
            assert not agent.seen(client="b", event="client-x")
            assert agent.call("state", client="a")["connection"] == "connected"
        finally:
            agent.close()


class TestUsers:
    def test_signin_send_to_user_and_terminate(self, server, app, agent):
        agent.call("connect", client="a", user={"id": "u1", "name": "Ann"})
        agent.call("connect", client="b", user={"id": "u2"})
        signed = agent.call("signin", client="a")
        assert signed == {
            "user_data": {"id": "u1", "name": "Ann"},
            "channel": "#server-to-user-u1",
            "subscribed": True,
        }
        agent.call("signin", client="b")
        answer = agent.sdk("sendToUser", "u1", "note", {"from": "npm"})
        assert answer == {"status": 200, "body": {}}
        python_sdk(server, app, encryption_master_key_base64=MASTER_KEY).send_to_user(
            "u1", "note", {"from": "pypi"}
        )
        assert (
            agent.wait(type="user_event", client="a", data={"from": "npm"})["event"]
            == "note"
        )
        assert agent.wait(type="user_event", client="a", data={"from": "pypi"})
        assert not agent.seen(type="user_event", client="b")
        assert agent.sdk("terminateUserConnections", "u1") == {
            "status": 200,
            "body": {},
        }
        assert agent.wait(type="error", client="a")["error"]["code"] == 4009
        agent.wait(type="state", client="a", current="disconnected")
        assert agent.call("state", client="b")["connection"] == "connected"
        # the PyPI SDK calls /users/<id>/terminate_connections (no /apps/<id>)
        assert (
            python_sdk(
                server, app, encryption_master_key_base64=MASTER_KEY
            ).terminate_user_connections("u2")
            == {}
        )
        assert agent.wait(type="error", client="b")["error"]["code"] == 4009

    @pytest.mark.one_server
    def test_bad_signin_is_refused(self, agent):
        agent.call("connect", client="a", user={"id": "u1"}, badSecret="wrong")
        agent.call("signin", client="a")
        assert agent.wait(type="error", client="a")["error"]["code"] == 4009
        agent.wait(type="state", client="a", current="disconnected")

    def test_watchlist_online_and_offline(self, server, app, agent):
        server.update_app(app, settings=dict(watchlist_events=True))
        agent.call("connect", client="early", user={"id": "y"})
        agent.call("signin", client="early")
        agent.call(
            "connect", client="watcher", user={"id": "w", "watchlist": ["x", "y"]}
        )
        agent.call("signin", client="watcher")
        initial = agent.wait(type="watchlist", client="watcher", name="online")
        assert initial["user_ids"] == ["y"]
        agent.call("connect", client="x", user={"id": "x"})
        agent.call("signin", client="x")
        agent.wait(type="watchlist", client="watcher", name="online", user_ids=["x"])
        agent.call("disconnect", client="x")
        agent.wait(type="watchlist", client="watcher", name="offline", user_ids=["x"])
        assert not agent.seen(type="watchlist", client="early")

    def test_watchlist_over_the_limit_is_4302_and_the_socket_stays(
        self, server, app, agent
    ):
        server.update_app(app, settings=dict(watchlist_events=True, max_watchlist=3))
        agent.call(
            "connect", client="a", user={"id": "a", "watchlist": ["1", "2", "3", "4"]}
        )
        agent.call("signin", client="a")
        assert agent.wait(type="error", client="a")["error"]["code"] == 4302
        assert agent.call("state", client="a")["connection"] == "connected"

    def test_watchlist_is_off_by_default(self, agent):
        agent.call("connect", client="watcher", user={"id": "w", "watchlist": ["x"]})
        agent.call("signin", client="watcher")
        agent.call("connect", client="x", user={"id": "x"})
        agent.call("signin", client="x")
        agent.call("subscribe", client="watcher", channel="later")
        sync(agent, "watcher", "later")
        assert not agent.seen(type="watchlist")


class TestEncryptedAndCache:
    def test_encrypted_channel_round_trip(self, server, app, agent):
        channel = "private-encrypted-vault"
        agent.call("connect", client="a")
        assert agent.call("subscribe", client="a", channel=channel)["succeeded"]
        agent.sdk("trigger", channel, "secret", {"code": 42})
        python_sdk(server, app, encryption_master_key_base64=MASTER_KEY).trigger(
            channel, "secret", {"code": 43}
        )
        assert agent.wait(type="event", client="a", event="secret", data={"code": 42})
        assert agent.wait(type="event", client="a", event="secret", data={"code": 43})
        # what travelled is ciphertext: the server never sees the plain data
        # (the marker comes after both on the wire, so both are in by then)
        sync(agent, "a", channel)
        wire = [
            event["message"]
            for event in agent.seen(type="message", client="a")
            if event["message"].get("event") == "secret"
        ]
        assert len(wire) == 2
        for message in wire:
            assert set(message["data"]) == {"nonce", "ciphertext"}
            # (a quoted key: base64 has no quotes, while digits such as 42
            # turn up in random ciphertext now and then)
            assert '"code"' not in json.dumps(message)

    @pytest.mark.one_server
    def test_encrypted_channel_refuses_client_events(self, server, app):
        sdk = python_sdk(server, app, encryption_master_key_base64=MASTER_KEY)
        raw = server.connect(app)
        channel = "private-encrypted-vault"
        token = sdk.authenticate(channel=channel, socket_id=raw.socket_id)["auth"]
        assert raw.subscribe(channel, auth=token)["event"] == (
            "pusher_internal:subscription_succeeded"
        )
        raw.send({"event": "client-x", "channel": channel, "data": {}})
        error = raw.recv_event("pusher:error")
        assert error["data"]["code"] == 4303
        raw.close()

    def test_cache_channel(self, agent):
        agent.call("connect", client="first")
        assert agent.call("subscribe", client="first", channel="cache-price")[
            "succeeded"
        ]
        agent.wait(type="event", client="first", event="pusher:cache_miss")
        empty = agent.sdk(
            "get", {"path": "/channels/cache-price", "params": {"info": "cache"}}
        )
        assert empty["body"] == {"occupied": True, "cache": None}
        agent.sdk("trigger", "cache-price", "price", {"eur": 10})
        agent.wait(type="event", client="first", event="price")
        agent.call("connect", client="late")
        assert agent.call("subscribe", client="late", channel="cache-price")[
            "succeeded"
        ]
        replay = agent.wait(type="event", client="late", event="price")
        assert replay["data"] == {"eur": 10}
        assert not agent.seen(client="late", event="pusher:cache_miss")
        cached = agent.sdk(
            "get", {"path": "/channels/cache-price", "params": {"info": "cache"}}
        )
        cache = cached["body"]["cache"]
        assert cache["event"] == "price" and json.loads(cache["data"]) == {"eur": 10}
        assert 0 < cache["ttl"] <= 1800


class TestSubscriptionCount:
    def test_counts_reach_pusher_js_when_enabled(self, server, app, agent):
        server.update_app(app, settings=dict(subscription_count_events=True))
        for name in ("a", "b"):
            agent.call("connect", client=name)
        count = dict(type="event", client="a", event="pusher:subscription_count")
        agent.call("subscribe", client="a", channel="room")
        assert agent.wait(**count)["data"] == {"subscription_count": 1}
        mark = agent.mark()
        agent.call("subscribe", client="b", channel="room")
        assert agent.wait(after=mark, **count)["data"] == {"subscription_count": 2}
        state = agent.call("state", client="a", channel="room")
        assert state["channel"]["subscriptionCount"] == 2
        mark = agent.mark()
        agent.call("unsubscribe", client="b", channel="room")
        assert agent.wait(after=mark, **count)["data"] == {"subscription_count": 1}
        state = agent.call("state", client="a", channel="room")
        assert state["channel"]["subscriptionCount"] == 1

    def test_no_counts_by_default(self, agent):
        agent.call("connect", client="a")
        agent.call("subscribe", client="a", channel="room")
        agent.call("connect", client="b")
        agent.call("subscribe", client="b", channel="room")
        sync(agent, "a", "room")
        assert not agent.seen(type="event", event="pusher:subscription_count")


class TestServerSdk:
    def test_trigger_multi_channel_exclusion_and_info(self, agent):
        a = agent.call("connect", client="a")["socket_id"]
        agent.call("connect", client="b")
        for name in ("a", "b"):
            for channel in ("one", "two"):
                agent.call("subscribe", client=name, channel=channel)
        answer = agent.sdk(
            "trigger",
            ["one", "two"],
            "multi",
            "m",
            {"socket_id": a, "info": "subscription_count"},
        )
        assert answer == {
            "status": 200,
            "body": {
                "channels": {
                    "one": {"subscription_count": 2},
                    "two": {"subscription_count": 2},
                }
            },
        }
        agent.wait(type="event", client="b", channel="one", event="multi")
        agent.wait(type="event", client="b", channel="two", event="multi")
        sync(agent, "a", "one")
        sync(agent, "a", "two")
        assert not agent.seen(client="a", event="multi")

    def test_batch(self, agent):
        agent.call("connect", client="a")
        agent.call("subscribe", client="a", channel="batched")
        batch = [
            {"channel": "batched", "name": "first", "data": {"n": 1}},
            {"channel": "batched", "name": "second", "data": "two"},
        ]
        assert agent.sdk("triggerBatch", batch) == {"status": 200, "body": {}}
        assert agent.wait(type="event", client="a", event="first")["data"] == {"n": 1}
        assert agent.wait(type="event", client="a", event="second")["data"] == "two"
        with_info = agent.sdk(
            "triggerBatch",
            [
                {
                    "channel": "batched",
                    "name": "third",
                    "data": "3",
                    "info": "subscription_count",
                }
            ],
        )
        # Pusher's shape: each event's channel attributes, directly
        assert with_info == {
            "status": 200,
            "body": {"batch": [{"subscription_count": 1}]},
        }

    def test_queries(self, agent):
        agent.call("connect", client="a", presence={"user_id": "7"})
        for channel in ("presence-lobby", "private-a=b@c,d.e;f", "plain"):
            assert agent.call("subscribe", client="a", channel=channel)["succeeded"]
        listing = agent.sdk("get", {"path": "/channels"})["body"]["channels"]
        assert set(listing) == {"presence-lobby", "private-a=b@c,d.e;f", "plain"}
        presence = agent.sdk(
            "get",
            {
                "path": "/channels",
                "params": {"filter_by_prefix": "presence-", "info": "user_count"},
            },
        )
        assert presence["body"] == {"channels": {"presence-lobby": {"user_count": 1}}}
        punctuated = agent.sdk(
            "get",
            {
                "path": "/channels/private-a=b@c,d.e;f",
                "params": {"info": "subscription_count"},
            },
        )
        assert punctuated["body"] == {"occupied": True, "subscription_count": 1}
        empty = agent.sdk("get", {"path": "/channels/nobody-here"})
        assert empty["body"] == {"occupied": False}
        agent.sdk("trigger", "private-a=b@c,d.e;f", "odd", "name")
        agent.wait(type="event", client="a", channel="private-a=b@c,d.e;f", event="odd")

    @pytest.mark.one_server
    def test_errors_have_pusher_status_codes(self, server, app, agent):
        wrong = agent.sdk("trigger", "news", "e", "x", badSecret="wrong")
        assert wrong["status"] == 401 and "message" in wrong["body"]
        too_big = agent.sdk("trigger", "news", "e", "x" * 11000)
        assert too_big["status"] == 413
        user_count = agent.sdk(
            "get", {"path": "/channels", "params": {"info": "user_count"}}
        )
        assert user_count["status"] == 400
        server.update_app(app, enabled=False)
        assert agent.sdk("trigger", "news", "e", "x")["status"] == 403
