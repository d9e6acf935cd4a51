"""One state, two dialects: a Pushi-dialect socket (path ``/<key>``, as
pushi.js connects) and a pusher-js client on the same channels see each
other's events and presence."""

import json

import pytest

from interop_support import NodeAgent, python_sdk


@pytest.fixture
def agent(server, app):
    instance = NodeAgent(server, app)
    yield instance
    instance.close()


@pytest.fixture
def signer(server, app):
    """The PyPI SDK, as the Pushi-dialect socket's auth endpoint."""
    return python_sdk(server, app)


def test_public_channel_events_reach_both(server, app, agent):
    pushi = server.connect(app, dialect="pushi")
    assert (
        pushi.subscribe("shared")["event"] == "pusher_internal:subscription_succeeded"
    )
    agent.call("connect", client="js")
    agent.call("subscribe", client="js", channel="shared")
    agent.sdk("trigger", "shared", "from-sdk", {"via": "npm"})
    server.client(app).trigger_event(
        channel="shared", data="plain", event="from-pushi", persist=False
    )
    assert json.loads(pushi.recv_event("from-sdk")["data"]) == {"via": "npm"}
    assert pushi.recv_event("from-pushi")["data"] == "plain"
    assert agent.wait(type="event", client="js", event="from-sdk")["data"] == {
        "via": "npm"
    }
    assert agent.wait(type="event", client="js", event="from-pushi")["data"] == "plain"
    pushi.close()


def test_private_channel_client_events_cross_dialects(server, app, agent, signer):
    channel = "private-shared"
    pushi = server.connect(app, dialect="pushi")
    token = signer.authenticate(channel=channel, socket_id=pushi.socket_id)["auth"]
    assert (
        pushi.subscribe(channel, auth=token)["event"]
        == "pusher_internal:subscription_succeeded"
    )
    agent.call("connect", client="js")
    assert agent.call("subscribe", client="js", channel=channel)["succeeded"]
    agent.call(
        "trigger",
        client="js",
        channel=channel,
        event="client-hello",
        data={"from": "js"},
    )
    assert pushi.recv_event("client-hello")["data"] == {"from": "js"}
    pushi.send({"event": "client-back", "channel": channel, "data": {"from": "pushi"}})
    back = agent.wait(type="event", client="js", event="client-back")
    assert back["data"] == {"from": "pushi"}
    # Pushi's Channel.send: any event name, echoed to the sender on request
    pushi.send({"event": "chat", "channel": channel, "data": "hi all", "echo": True})
    assert agent.wait(type="event", client="js", event="chat")["data"] == "hi all"
    assert pushi.recv_event("chat")["data"] == "hi all"
    pushi.close()


def test_presence_members_cross_dialects(server, app, agent, signer):
    channel = "presence-mixed"
    agent.call(
        "connect",
        client="js",
        presence={"user_id": "js", "user_info": {"lib": "pusher-js"}},
    )
    assert agent.call("subscribe", client="js", channel=channel)["succeeded"]
    pushi = server.connect(app, dialect="pushi")
    token = signer.authenticate(
        channel=channel,
        socket_id=pushi.socket_id,
        custom_data={"user_id": "pushi", "user_info": {"lib": "pushi.js"}},
    )
    joined = pushi.subscribe(
        channel, auth=token["auth"], channel_data=token["channel_data"]
    )
    state = json.loads(joined["data"])
    assert sorted(state["presence"]["ids"]) == ["js", "pushi"]
    assert state["members"]["js"] == {"lib": "pusher-js"}
    added = agent.wait(type="event", client="js", event="pusher:member_added")
    assert added["data"] == {"id": "pushi", "info": {"lib": "pushi.js"}}
    agent.call("disconnect", client="js")
    removed = pushi.recv_event("pusher:member_removed")
    assert json.loads(removed["member"]) == {"user_id": "js"}
    pushi.close()
