"""Details of Pusher's documentation, checked over real sockets: what an
unmodified Pusher SDK would notice if Pushi did otherwise."""

import json

import pushi

from support import signed_path


def join(client, app, channel, data=None):
    answer = pushi.Pushi(
        app_id=app["app_id"], app_key=app["key"], app_secret=app["secret"]
    ).authenticate(channel, client.socket_id, data)
    return client.subscribe(channel, answer["auth"], answer.get("channel_data"))


def publish(server, app, event):
    """``(status, answer)`` of a Pusher SDK's signed ``POST events``."""
    body = json.dumps(event).encode()
    path = signed_path(app, "POST", "/apps/%s/events" % app["app_id"], None, body)
    return server.request("POST", path[1:], raw=body)


def received(client, timeout=0.5):
    """Every message that arrives until ``timeout`` passes in silence."""
    messages = []
    while True:
        try:
            messages.append(client.recv(timeout))
        except TimeoutError:
            return messages


def test_no_subscription_counts_on_presence_channels(server, app):
    """Pusher: subscription_count events "work with all channel types,
    except presence channels" (their members say who is there)."""
    server.update_app(app, settings={"subscription_count_events": True})
    alice, bob = server.connect(app), server.connect(app)
    join(alice, app, "presence-room", {"user_id": "alice"})
    join(bob, app, "presence-room", {"user_id": "bob"})
    bob.subscribe("lobby")
    messages = received(alice) + received(bob)
    counts = [
        message
        for message in messages
        if message["event"] == "pusher_internal:subscription_count"
    ]
    assert [message["channel"] for message in counts] == ["lobby"]
    assert json.loads(counts[0]["data"]) == {"subscription_count": 1}
    alice.close()
    bob.close()


def test_a_public_channel_may_start_with_peer(server, app):
    """Pushi's peer channels are ``peer-<base>:<a>&<b>``, names no Pusher
    channel can have (``:`` and ``&`` are not in Pusher's grammar); any
    other name that starts with ``peer-`` is a public channel, as on
    Pusher."""
    client = server.connect(app)
    answer = client.subscribe("peer-review")
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    assert publish(
        server, app, {"name": "note", "channel": "peer-review", "data": "hello"}
    ) == (200, {})
    received = client.recv()
    # the event's position on the channel (recovery) rides beside it
    assert received.pop("offset") == 1 and received.pop("epoch")
    assert received == {"event": "note", "channel": "peer-review", "data": "hello"}
    client.close()
