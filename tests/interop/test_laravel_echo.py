"""Laravel Echo (Pusher broadcaster) against the real server.

Every Echo client is the unmodified ``laravel-echo`` npm package over the
pinned ``pusher-js`` Node build (``tests/interop``, installed by
``scripts/install``), configured as docs/from-pusher.md says. Channels are
authorized either by Echo's ``authorizer`` option or by its ``authEndpoint``
and ``bearerToken`` against an endpoint the agent serves on 127.0.0.1, both
signing with the npm SDK's ``authorizeChannel``, as a Laravel app's
``/broadcasting/auth`` would. Events come from the npm SDK or Pushi's Python
client, named as Laravel's broadcaster names them.
"""

import json
import os

import pytest

import pushi

from interop_support import INTEROP, NodeAgent
from support import wait_until

ANN = {"user_id": "1", "user_info": {"id": 1, "name": "Ann"}}
BOB = {"user_id": "2", "user_info": {"id": 2, "name": "Bob"}}


@pytest.fixture
def agent(server, app):
    instance = NodeAgent(server, app)
    yield instance
    instance.close()


def subscribe(agent, client, kind, name):
    """Echo.channel / private / join(name); asserts Echo's subscribed()."""
    answer = agent.call("echo_subscribe", client=client, kind=kind, name=name)
    assert answer["succeeded"], answer
    return answer["name"]


def sync(agent, client, channel):
    """A marker event on ``channel`` (the full name), seen by ``client`` on
    the wire: whatever the server sent that client before is in by then."""
    marker = "sync-%d" % agent.mark()
    assert agent.sdk("trigger", channel, "marker", marker)["status"] == 200
    agent.wait(type="message", client=client, message=wire(channel, "marker", marker))


def wire(channel, event, data):
    """A Pusher event as pusher-js reports its frame (data decoded)."""
    return {"event": event, "channel": channel, "data": data}


def wait_subscriptions(agent, channel, count, timeout=10):
    """Waits until the server counts ``count`` subscriptions on ``channel``
    (a REST query through the npm SDK): it has handled the unsubscribes."""

    def counted():
        info = agent.sdk(
            "get",
            {"path": "/channels/" + channel, "params": {"info": "subscription_count"}},
        )["body"]
        return info.get("subscription_count", 0) == count

    wait_until(counted, timeout, message="%d subscriptions on %s" % (count, channel))


def echo_events(agent, after=0, **match):
    return [event["data"] for event in agent.seen(after=after, type="echo", **match)]


@pytest.mark.one_server
def test_installed_version_is_the_pinned_one(agent):
    with open(os.path.join(INTEROP, "package.json")) as file:
        pins = json.load(file)["dependencies"]
    assert agent.call("versions")["laravel-echo"] == pins["laravel-echo"]


class TestPublicChannels:
    def test_dotted_and_namespaced_event_names(self, agent):
        agent.call("echo_connect", client="a")
        subscribe(agent, "a", "channel", "orders")
        listen = dict(client="a", kind="channel", name="orders")
        # a leading dot: the name as broadcast; none: Echo's App.Events namespace
        agent.call("echo_listen", event=".order.shipped", **listen)
        agent.call("echo_listen", event="OrderShipped", **listen)
        agent.call("echo_listen_all", **listen)
        sent = [
            ("order.shipped", {"id": 1}),
            ("App\\Events\\OrderShipped", {"id": 2}),
            # neither listener's name: only listenToAll hears it
            ("OrderShipped", {"id": 3}),
        ]
        for name, data in sent:
            assert agent.sdk("trigger", "orders", name, data) == {
                "status": 200,
                "body": {},
            }
        sync(agent, "a", "orders")
        assert echo_events(agent, listen=".order.shipped") == [{"id": 1}]
        assert echo_events(agent, listen="OrderShipped") == [{"id": 2}]
        every = [
            (event["event"], event["data"])
            for event in agent.seen(type="echo_all", client="a")
            if event["event"] != ".marker"
        ]
        # listenToAll strips the namespace and dots the rest, as Echo does
        assert every == [
            (".order.shipped", {"id": 1}),
            ("OrderShipped", {"id": 2}),
            (".OrderShipped", {"id": 3}),
        ]

    def test_custom_namespace_and_the_python_client(self, server, app, agent):
        agent.call("echo_connect", client="a", namespace="Shop.Events")
        subscribe(agent, "a", "channel", "invoices")
        agent.call(
            "echo_listen",
            client="a",
            kind="channel",
            name="invoices",
            event="Invoice.Paid",
        )
        proxy = pushi.Pushi(
            app_id=app["app_id"],
            app_key=app["key"],
            app_secret=app["secret"],
            base_url=server.base_url,
        )
        proxy.trigger_event(
            channel="invoices",
            data={"total": 12.5},
            event="Shop\\Events\\Invoice\\Paid",
            persist=False,
        )
        event = agent.wait(type="echo", client="a", listen="Invoice.Paid")
        assert event["channel"] == "invoices" and event["data"] == {"total": 12.5}


class TestPrivateChannels:
    def test_authorizer_event_and_whisper(self, agent):
        for name in ("a", "b"):
            agent.call("echo_connect", client=name)
            assert subscribe(agent, name, "private", "chat.7") == "private-chat.7"
        agent.call(
            "echo_listen", client="b", kind="private", name="chat.7", event=".message"
        )
        for name in ("a", "b"):
            agent.call(
                "echo_listen",
                client=name,
                kind="private",
                name="chat.7",
                event="typing",
                whisper=True,
            )
        agent.sdk("trigger", "private-chat.7", "message", {"text": "hi"})
        assert agent.wait(type="echo", client="b", listen=".message")["data"] == {
            "text": "hi"
        }
        agent.call(
            "echo_whisper",
            client="a",
            kind="private",
            name="chat.7",
            event="typing",
            data={"name": "Ann"},
        )
        typing = agent.wait(type="echo", client="b", listen="typing", whisper=True)
        assert typing["data"] == {"name": "Ann"}
        # the whisper went out as a client event, and is never echoed back
        agent.wait(
            type="message",
            client="b",
            message=wire("private-chat.7", "client-typing", {"name": "Ann"}),
        )
        sync(agent, "a", "private-chat.7")
        assert not agent.seen(type="echo", client="a", listen="typing")

    def test_bad_signature_reaches_echo_error(self, agent):
        agent.call("echo_connect", client="bad", badSecret="not-the-secret")
        answer = agent.call(
            "echo_subscribe", client="bad", kind="private", name="vault"
        )
        assert not answer["succeeded"]
        assert answer["name"] == "private-vault"
        assert answer["error"]["status"] == 401
        agent.call("echo_connect", client="good")
        subscribe(agent, "good", "private", "vault")
        agent.sdk("trigger", "private-vault", "opened", "x")
        agent.wait(
            type="message", client="good", message=wire("private-vault", "opened", "x")
        )
        # the refused socket stays open and usable
        subscribe(agent, "bad", "channel", "after")
        sync(agent, "bad", "after")
        assert not agent.seen(
            client="bad", message=wire("private-vault", "opened", "x")
        )

    def test_auth_endpoint_with_a_bearer_token(self, agent):
        agent.call("echo_connect", client="a", token="token-a")
        agent.call(
            "echo_connect", client="stranger", token="unknown", registerToken=False
        )
        subscribe(agent, "a", "private", "account.1")
        request = agent.wait(type="auth_request", token="token-a")
        assert request["channel"] == "private-account.1"
        assert request["socket_id"] == agent.call("echo_socket_id", client="a")
        refused = agent.call(
            "echo_subscribe", client="stranger", kind="private", name="account.1"
        )
        assert not refused["succeeded"] and refused["error"]["status"] == 403
        agent.call(
            "echo_listen",
            client="a",
            kind="private",
            name="account.1",
            event=".balance",
        )
        agent.sdk("trigger", "private-account.1", "balance", {"eur": 5})
        assert agent.wait(type="echo", client="a", listen=".balance")["data"] == {
            "eur": 5
        }


class TestPresence:
    def test_here_joining_leaving_and_whisper(self, agent):
        agent.call("echo_connect", client="a", presence=ANN)
        agent.call("echo_connect", client="b", presence=BOB, token="token-b")
        assert subscribe(agent, "a", "join", "room.1") == "presence-room.1"
        here = agent.wait(type="here", client="a")
        assert here["channel"] == "presence-room.1"
        assert here["members"] == [ANN["user_info"]]
        subscribe(agent, "b", "join", "room.1")
        members = agent.wait(type="here", client="b")["members"]
        assert sorted(members, key=lambda member: member["id"]) == [
            ANN["user_info"],
            BOB["user_info"],
        ]
        assert agent.wait(type="joining", client="a")["member"] == BOB["user_info"]
        # a whisper on presence carries the sender's user_id
        agent.call(
            "echo_listen",
            client="a",
            kind="join",
            name="room.1",
            event="typing",
            whisper=True,
        )
        agent.call(
            "echo_whisper",
            client="b",
            kind="join",
            name="room.1",
            event="typing",
            data={"typing": True},
        )
        typing = agent.wait(type="echo", client="a", listen="typing")
        assert typing["data"] == {"typing": True}
        assert typing["metadata"] == {"user_id": "2"}
        assert agent.call("echo_leave", client="b", name="room.1") == []
        assert agent.wait(type="leaving", client="a")["member"] == BOB["user_info"]
        users = agent.sdk("get", {"path": "/channels/presence-room.1/users"})
        assert users["body"] == {"users": [{"id": "1"}]}
        assert not agent.seen(type="joining", client="b")
        assert not agent.seen(type="leaving", client="b")


class TestLeave:
    def test_leave_stops_every_variant_of_a_name(self, agent):
        for name in ("a", "b"):
            agent.call("echo_connect", client=name)
            subscribe(agent, name, "channel", "news")
            subscribe(agent, name, "private", "news")
        for kind in ("channel", "private"):
            agent.call(
                "echo_listen", client="a", kind=kind, name="news", event=".story"
            )
        agent.sdk("trigger", ["news", "private-news"], "story", {"n": 1})
        agent.wait(type="echo", client="a", channel="news", data={"n": 1})
        agent.wait(type="echo", client="a", channel="private-news", data={"n": 1})
        # Echo.leave('news') leaves news, private-news and the rest
        assert agent.call("echo_leave", client="a", name="news") == []
        wait_subscriptions(agent, "news", 1)
        wait_subscriptions(agent, "private-news", 1)
        mark = agent.mark()
        agent.sdk("trigger", ["news", "private-news"], "story", {"n": 2})
        sync(agent, "b", "news")
        sync(agent, "b", "private-news")
        # a stays connected, on another channel: its wire is in order
        subscribe(agent, "a", "channel", "after")
        sync(agent, "a", "after")
        assert not echo_events(agent, after=mark, client="a")
        assert not [
            event
            for event in agent.seen(after=mark, type="message", client="a")
            if event["message"].get("event") == "story"
        ]

    def test_leave_channel_by_full_name(self, agent):
        agent.call("echo_connect", client="a")
        subscribe(agent, "a", "channel", "alerts")
        subscribe(agent, "a", "private", "alerts")
        agent.call(
            "echo_listen", client="a", kind="channel", name="alerts", event=".alert"
        )
        agent.call(
            "echo_listen", client="a", kind="private", name="alerts", event=".alert"
        )
        kept = agent.call("echo_leave", client="a", name="private-alerts", full=True)
        assert kept == ["alerts"]
        wait_subscriptions(agent, "private-alerts", 0)
        agent.sdk("trigger", "private-alerts", "alert", "private")
        agent.sdk("trigger", "alerts", "alert", "public")
        agent.wait(type="echo", client="a", channel="alerts", data="public")
        assert echo_events(agent, client="a") == ["public"]
        assert not agent.seen(
            client="a", message=wire("private-alerts", "alert", "private")
        )


class TestToOthers:
    def test_socket_id_excludes_the_sender(self, server, app, agent):
        sender = agent.call("echo_connect", client="sender")["socket_id"]
        agent.call("echo_connect", client="other")
        assert agent.call("echo_socket_id", client="sender") == sender
        assert sender in server.socket_ids(app, expected=2)
        for name in ("sender", "other"):
            subscribe(agent, name, "channel", "orders")
            agent.call(
                "echo_listen",
                client=name,
                kind="channel",
                name="orders",
                event="OrderShipped",
            )
        # what Laravel's broadcast(...)->toOthers() sends, from both server SDKs
        name = "App\\Events\\OrderShipped"
        agent.sdk("trigger", "orders", name, {"id": 1}, {"socket_id": sender})
        pushi.Pushi(
            app_id=app["app_id"],
            app_key=app["key"],
            app_secret=app["secret"],
            base_url=server.base_url,
        ).trigger_event(
            channel="orders",
            data={"id": 2},
            event=name,
            persist=False,
            socket_id=sender,
        )
        agent.wait(type="echo", client="other", data={"id": 1})
        agent.wait(type="echo", client="other", data={"id": 2})
        sync(agent, "sender", "orders")
        assert not agent.seen(type="echo", client="sender")
        # and without the exclusion the sender hears it
        agent.sdk("trigger", "orders", name, {"id": 3})
        assert agent.wait(type="echo", client="sender")["data"] == {"id": 3}
