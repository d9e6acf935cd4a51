"""Private and presence channels and client events over real sockets, in
both dialects (issue: signed access)."""

import json
import socket

import pytest

from support import ADMIN_SECRET, wait_until

ADMIN = {"Authorization": "Bearer " + ADMIN_SECRET}


def member(user_id, **info):
    return {"user_id": user_id, "user_info": info}


def join(client, server, app, channel, channel_data=None):
    """Subscribes with what the app's auth endpoint would answer."""
    answer = server.client(app).authenticate(channel, client.socket_id, channel_data)
    return client.subscribe(channel, answer["auth"], answer.get("channel_data"))


@pytest.mark.parametrize("dialect", ["pusher", "pushi"])
def test_private_channel_needs_this_apps_signature(server, app, dialect):
    client = server.connect(app, dialect)
    assert client.subscribe("private-room")["data"]["status"] == 401
    # and Pusher's own answer to a bad signature
    assert client.recv()["data"]["code"] == 4306
    other = server.create_app("other")
    forged = server.client(other).authenticate("private-room", client.socket_id)["auth"]
    assert (
        client.subscribe("private-room", forged)["event"] == "pusher:subscription_error"
    )
    assert client.recv()["event"] == "pusher:error"
    assert (
        join(client, server, app, "private-room")["event"]
        == "pusher_internal:subscription_succeeded"
    )
    server.client(app).trigger_event(
        channel="private-room", data="secret", event="e", persist=False
    )
    assert client.recv_event("e")["data"] == "secret"
    client.close()


def test_authenticate_answers_like_an_auth_endpoint(server, app):
    answer = server.client(app).authenticate("presence-x", "1.2", member("7"))
    assert answer["channel_data"] == '{"user_id":"7","user_info":{}}'
    assert answer["auth"].startswith(app["key"] + ":")
    assert set(server.client(app).authenticate("private-x", "1.2")) == {"auth"}


def test_presence_members_across_dialects_and_tabs(server, app):
    alice_tab1 = server.connect(app, "pusher")
    alice_tab2 = server.connect(app, "pushi")
    bob = server.connect(app, "pushi")
    carol = server.connect(app, "pusher")
    first = join(
        alice_tab1, server, app, "presence-team", member("alice", name="Alice")
    )
    assert json.loads(first["data"])["presence"] == {
        "ids": ["alice"],
        "hash": {"alice": {"name": "Alice"}},
        "count": 1,
    }
    join(bob, server, app, "presence-team", member(42, name="Bob"))
    added = alice_tab1.recv_event("pusher_internal:member_added")
    assert json.loads(added["data"]) == {"user_id": "42", "user_info": {"name": "Bob"}}
    joined = join(
        alice_tab2, server, app, "presence-team", member("alice", name="Alice")
    )
    state = json.loads(joined["data"])
    assert state["presence"]["count"] == 2 and set(state["members"]) == {"alice", "42"}
    join(carol, server, app, "presence-team", member("carol"))
    for client, event in (
        (alice_tab1, "pusher_internal:member_added"),
        (bob, "pusher:member_added"),
    ):
        message = client.recv_event(event)
        assert json.loads(message["data"])["user_id"] == "carol"
    # a second tab joining told nobody; the first tab leaving tells nobody
    alice_tab1.close()
    carol.send({"event": "pusher:ping", "data": {}})
    assert carol.recv()["event"] == "pusher:pong"
    status, users = server.request(
        "GET",
        "apps/%s/channels/presence-team/users" % app["app_id"],
        headers=server.token_headers(app),
    )
    assert status == 200 and sorted(user["id"] for user in users["users"]) == [
        "42",
        "alice",
        "carol",
    ]
    alice_tab2.close()
    removed = bob.recv_event("pusher:member_removed")
    assert json.loads(removed["member"]) == {"user_id": "alice"}
    assert json.loads(carol.recv_event("pusher_internal:member_removed")["data"]) == {
        "user_id": "alice"
    }
    bob.close()
    carol.close()


def test_spoofed_presence_user_id_is_refused(server, app):
    client = server.connect(app)
    signed = server.client(app).authenticate(
        "presence-team", client.socket_id, member("guest")
    )
    spoofed = json.dumps(member("admin"))
    error = client.subscribe("presence-team", signed["auth"], spoofed)
    assert (
        error["event"] == "pusher:subscription_error" and error["data"]["status"] == 401
    )
    assert client.recv()["event"] == "pusher:error"
    assert client.subscribe("presence-team", signed["auth"])["data"]["status"] == 400
    client.close()


def test_presence_limits_per_app(server):
    created = server.request(
        "POST",
        "apps",
        {"name": "small", "settings": {"max_presence_members": 2, "max_user_info": 64}},
        ADMIN,
    )[1]
    clients = [server.connect(created) for _ in range(3)]
    join(clients[0], server, created, "presence-x", member("1"))
    join(clients[1], server, created, "presence-x", member("2"))
    full = join(clients[2], server, created, "presence-x", member("3"))
    assert (
        full["event"] == "pusher:subscription_error"
        and full["data"]["type"] == "LimitReached"
    )
    big = join(clients[2], server, created, "presence-y", member("3", bio="x" * 100))
    assert big["data"]["status"] == 413
    for client in clients:
        client.close()


@pytest.mark.parametrize("dialect", ["pusher", "pushi"])
def test_client_events_and_their_refusals(server, app, dialect):
    sender = server.connect(app, dialect)
    receiver = server.connect(app, "pusher")
    for client, user in ((sender, "s"), (receiver, "r")):
        join(client, server, app, "presence-chat", member(user))
        join(client, server, app, "private-chat")
    sender.subscribe("public-chat")
    sender.send(
        {"event": "client-typing", "channel": "presence-chat", "data": {"on": True}}
    )
    message = receiver.recv_event("client-typing")
    assert message["data"] == {"on": True} and message["user_id"] == "s"
    sender.send({"event": "client-typing", "channel": "private-chat", "data": "x"})
    assert "user_id" not in receiver.recv_event("client-typing")
    for refused in (
        {"event": "client-x", "channel": "public-chat", "data": 1},
        {"event": "client-x", "channel": "private-not-joined", "data": 1},
    ):
        sender.send(refused)
        assert sender.recv_event("pusher:error")["data"]["code"] == 4303
    for _ in range(12):
        sender.send({"event": "client-burst", "channel": "private-chat", "data": 1})
    assert sender.recv_event("pusher:error")["data"]["code"] == 4301
    sender.send({"event": "pusher:ping", "data": {}})
    assert sender.recv_event("pusher:pong")
    # never echoed to the sender
    sender.send({"event": "pusher:ping", "data": {}})
    while True:
        message = sender.recv()
        assert message["event"] != "client-typing"
        if message["event"] == "pusher:pong":
            break
    sender.close()
    receiver.close()


def test_encrypted_channels_take_no_client_events(server, app):
    client = server.connect(app)
    join(client, server, app, "private-encrypted-vault")
    client.send(
        {"event": "client-x", "channel": "private-encrypted-vault", "data": "x"}
    )
    assert client.recv_event("pusher:error")["data"]["code"] == 4303
    client.close()


def test_client_events_off_until_the_app_allows_them(server):
    plain = server.create_app("plain")
    client = server.connect(plain)
    join(client, server, plain, "private-c")
    client.send({"event": "client-x", "channel": "private-c", "data": 1})
    assert client.recv_event("pusher:error")["data"]["code"] == 4303
    status, _ = server.request(
        "PUT",
        "apps/%s" % plain["app_id"],
        {"client_events": True},
        server.token_headers(plain),
    )
    assert status == 200
    peer = server.connect(plain)
    join(peer, server, plain, "private-c")
    client.send({"event": "client-x", "channel": "private-c", "data": 2})
    assert peer.recv_event("client-x")["data"] == 2
    client.close()
    peer.close()


def test_pushi_send_follows_the_same_rules(server, app):
    sender = server.connect(app, "pushi")
    listener = server.connect(app, "pushi")
    sender.subscribe("open")
    listener.subscribe("open")
    sender.send(
        {"event": "chat", "channel": "open", "data": "anyone?", "persist": False}
    )
    assert sender.recv_event("pusher:error")["data"]["code"] == 4303
    sender.send({"event": "chat", "channel": "private-nope", "data": "x"})
    assert sender.recv_event("pusher:error")["data"]["code"] == 4303
    join(sender, server, app, "private-room")
    join(listener, server, app, "private-room")
    sender.send(
        {
            "event": "chat",
            "channel": "private-room",
            "data": "hi",
            "echo": True,
            "persist": False,
        }
    )
    assert listener.recv_event("chat")["data"] == "hi"
    assert sender.recv_event("chat")["data"] == "hi"
    sender.close()
    listener.close()


def test_many_joins_and_leaves_leave_nothing_behind(server):
    fresh = server.create_app("churn")
    token = server.token_headers(fresh)
    for _ in range(3):
        clients = [
            server.connect(fresh, "pusher" if index % 2 else "pushi")
            for index in range(20)
        ]
        for index, client in enumerate(clients):
            client.subscribe("c%d" % (index % 3))
            join(client, server, fresh, "presence-p", member(str(index % 5)))
        for index, client in enumerate(clients):
            if index % 2:
                client.send(
                    {"event": "pusher:unsubscribe", "data": {"channel": "presence-p"}}
                )
            client.close()

    def left():
        _status, channels = server.request(
            "GET", "apps/%s/channels" % fresh["app_id"], headers=token
        )
        _status, sockets = server.request(
            "GET", "apps/%s/sockets" % fresh["app_id"], headers=token
        )
        return channels["channels"] == {} and sockets["sockets"] == []

    wait_until(left, message="no channel and no socket left")


def test_a_socket_that_vanishes_without_a_close_frame_is_forgotten(server, app):
    """A dropped TCP connection (no close frame) leaves the presence
    channel like a clean close: the others hear member_removed, and the
    socket is no longer listed."""
    watcher = server.connect(app)
    join(watcher, server, app, "presence-drop", member("stays"))
    leaver = server.connect(app)
    join(leaver, server, app, "presence-drop", member("vanishes"))
    watcher.recv_event("pusher_internal:member_added")
    # close the TCP socket under the client: no WebSocket close frame
    leaver.ws.socket.shutdown(socket.SHUT_RDWR)
    leaver.ws.socket.close()
    removed = watcher.recv_event("pusher_internal:member_removed")
    assert json.loads(removed["data"]) == {"user_id": "vanishes"}
    assert server.socket_ids(app, expected=1) == [watcher.socket_id]
    watcher.close()


def test_each_refused_bearer_token_says_what_is_wrong(server, app):
    """An unknown token, another app's token and the app's secret sent as
    a token were all "Sign the request or send Authorization: Bearer
    <token from /login>": each says what it is now, and no answer holds
    what was sent, a secret, or the other app's id."""
    other = server.create_app("other")
    other_token = server.login(other)
    own_token = server.login(app)
    path = "apps/%s/channels" % app["app_id"]
    sent = {
        "nothing": None,
        "an unknown token": "no-such-token-0123456789",
        "another app's token": other_token,
        "the app's secret": app["secret"],
        "the app's key": app["key"],
    }
    messages = {}
    for what, token in sent.items():
        headers = {"Authorization": "Bearer " + token} if token else {}
        status, answer = server.request("GET", path, headers=headers)
        assert status == 401, (what, answer)
        messages[what] = answer["message"]
    assert len(set(messages.values())) == len(messages), messages
    assert "Sign the request" in messages["nothing"]
    assert "Unknown or expired token" in messages["an unknown token"]
    assert "another app" in messages["another app's token"]
    assert "app's secret" in messages["the app's secret"]
    assert "app's key" in messages["the app's key"]
    for message in messages.values():
        for secret in (other_token, own_token, app["secret"], other["secret"]):
            assert secret not in message, message
        assert "app %s " % other["app_id"] not in message, message
        assert ADMIN_SECRET not in message, message
    # the admin routes: a session token or a wrong secret are told apart
    admin = {}
    for what, token in (
        ("nothing", None),
        ("a session token", own_token),
        ("a wrong secret", "not-the-admin-secret-0123456789"),
    ):
        headers = {"Authorization": "Bearer " + token} if token else {}
        status, answer = server.request("GET", "apps", headers=headers)
        assert status == 401, (what, answer)
        admin[what] = answer["message"]
    assert len(set(admin.values())) == 3, admin
    assert "PUSHI_ADMIN_SECRET" in admin["a session token"], admin
    # the token still works where it belongs
    bearer = {"Authorization": "Bearer " + own_token}
    assert server.request("GET", path, headers=bearer)[0] == 200
