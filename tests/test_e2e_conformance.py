"""Details of Pusher's documentation, checked over real sockets: what an
unmodified Pusher SDK would notice if Pushi did otherwise."""

import json

import pushi


def join(client, app, channel, data=None):
    answer = pushi.Pushi(
        app_id=app["app_id"], app_key=app["key"], app_secret=app["secret"]
    ).authenticate(channel, client.socket_id, data)
    return client.subscribe(channel, answer["auth"], answer.get("channel_data"))


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
