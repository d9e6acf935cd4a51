"""Key rotation: an app holds several key/secret pairs; a revoked pair
stops working at once, on a running server, whether it is revoked over
REST or with the ``pushi app keys`` CLI on the server's store.

Real server processes (SQLite, and MongoDB through the wire-protocol
emulator of ``tests/mongo_emulator.py``), raw WebSocket clients for the
sockets and private channel auth, the ``pusher`` PyPI SDK and
``pushi.Pushi`` for REST.
"""

import hashlib
import hmac
import json
import uuid

import pusher.errors
import pytest

from interop_support import python_sdk
from support import ADMIN_SECRET, PushiServer, Receiver, signed_path

ADMIN = {"Authorization": "Bearer " + ADMIN_SECRET}


@pytest.fixture(scope="module", params=["sqlite", "mongo-emulator"])
def server(request):
    env = {"PUSHI_APPS_POLL_INTERVAL": "0.5"}
    if request.param == "mongo-emulator":
        emulator = request.getfixturevalue("store_mongo_emulator")
        env["MONGO_URL"] = "%s/pushi_keys_%s" % (
            emulator.url.rstrip("/"),
            uuid.uuid4().hex[:8],
        )
    instance = PushiServer(env=env).start()
    yield instance
    instance.stop()


def with_pair(app, pair):
    """The app's credentials as a client of ``pair`` has them."""
    return dict(app, key=pair["key"], secret=pair["secret"])


def private(server, app, channel):
    """A socket on ``app``'s key subscribed to ``channel``, signed by the
    app's auth endpoint (``pushi.Pushi.authenticate``) with the same pair."""
    client = server.connect(app)
    token = server.client(app).authenticate(channel, client.socket_id)["auth"]
    answer = client.subscribe(channel, auth=token)
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    return client


def refused(client, code=4009):
    """The socket got ``pusher:error`` ``code``, then a close with it."""
    error = client.recv_event("pusher:error")
    assert error["data"]["code"] == code, error
    assert client.close_code() == code


def published(client, channel, event):
    message = client.recv_event(event)
    assert message["channel"] == channel
    return json.loads(message["data"])


def add_key(server, app, signer):
    status, pair = server.request(
        "POST",
        signed_path(signer, "POST", "/apps/%s/keys" % app["app_id"]).lstrip("/"),
    )
    assert status == 201, pair
    return pair


def listed(server, app, signer):
    status, body = server.request(
        "GET", signed_path(signer, "GET", "/apps/%s/keys" % app["app_id"]).lstrip("/")
    )
    assert status == 200, body
    assert "secret" not in json.dumps(body)
    return [entry["key"] for entry in body["keys"]]


def test_rotation_over_rest(server):
    app = server.create_app("rotate")
    old_socket = private(server, app, "private-old")
    token_headers = server.token_headers(app)

    new = add_key(server, app, app)
    assert new["key"] != app["key"] and len(new["secret"]) >= 32
    rotated = with_pair(app, new)
    assert listed(server, app, rotated) == [app["key"], new["key"]]

    # the new pair: a socket on its key, private auth with its secret, REST
    new_socket = private(server, rotated, "private-new")
    # a socket on the new key whose subscription the old pair signed
    mixed = server.connect(rotated)
    token = server.client(app).authenticate("private-mixed", mixed.socket_id)
    assert token["auth"].startswith(app["key"] + ":")
    answer = mixed.subscribe("private-mixed", auth=token["auth"])
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    sdk = python_sdk(server, rotated)
    sdk.trigger(["private-old", "private-new"], "before", {"n": 1})
    assert published(old_socket, "private-old", "before") == {"n": 1}
    assert published(new_socket, "private-new", "before") == {"n": 1}

    # revoked with the new pair's signature
    path = "/apps/%s/keys/%s" % (app["app_id"], app["key"])
    status, body = server.request(
        "DELETE", signed_path(rotated, "DELETE", path).lstrip("/")
    )
    assert status == 200, body
    assert body == {"keys": [{"key": new["key"], "created": new["created"]}]}

    refused(old_socket)
    refused(mixed)
    sdk.trigger("private-new", "after", {"n": 2})
    assert published(new_socket, "private-new", "after") == {"n": 2}

    # the old key: no new socket, no REST, no login, no session token
    late = server.connect(app, expect_established=False)
    refused(late, 4001)
    with pytest.raises(pusher.errors.PusherBadAuth):
        python_sdk(server, app).trigger("private-new", "e", "x")
    status, body = server.request(
        "POST",
        signed_path(app, "POST", "/apps/%s/events" % app["app_id"]).lstrip("/"),
        {"name": "e", "channel": "c", "data": "x"},
    )
    assert status == 401, body
    status, body = server.request(
        "POST",
        "login",
        {"app_id": app["app_id"], "app_key": app["key"], "app_secret": app["secret"]},
    )
    assert status == 401, body
    status, body = server.request(
        "GET", "apps/%s" % app["app_id"], headers=token_headers
    )
    assert status == 401, body
    status, body = server.request("GET", "apps/%s" % app["app_id"], headers=ADMIN)
    assert status == 200 and "secret" not in json.dumps(body), body
    assert body["key"] == new["key"]

    # the last pair stays; an unknown one is not found
    status, body = server.request(
        "DELETE",
        signed_path(
            rotated, "DELETE", "/apps/%s/keys/%s" % (app["app_id"], new["key"])
        ).lstrip("/"),
    )
    assert status == 400 and "last" in body["message"], body
    status, body = server.request(
        "DELETE", "apps/%s/keys/%s" % (app["app_id"], "f" * 32), headers=ADMIN
    )
    assert status == 404, body
    assert server.login(rotated)
    new_socket.close()


def test_other_apps_credentials_manage_no_keys(server):
    app = server.create_app("mine")
    other = server.create_app("other")
    path = "/apps/%s/keys" % app["app_id"]
    status, body = server.request("POST", signed_path(other, "POST", path)[1:])
    assert status == 401, body
    status, body = server.request("GET", path[1:])
    assert status == 401, body
    status, body = server.request("POST", path[1:], headers=ADMIN)
    assert status == 201 and body["app_id"] == app["app_id"], body
    status, body = server.request("DELETE", "%s/%s" % (path[1:], app["key"]))
    assert status == 401, body


def test_cli_keys_on_a_running_server(server):
    app = server.create_app("cli")
    old_socket = private(server, app, "private-cli")

    new = json.loads(server.cli("app", "keys", "add", app["app_id"], "--json"))
    rotated = with_pair(app, new)
    listing = json.loads(server.cli("app", "keys", "list", app["app_id"], "--json"))
    assert [entry["key"] for entry in listing] == [app["key"], new["key"]]
    assert "secret" not in json.dumps(listing)
    assert new["key"] in server.cli("app", "keys", "list", app["app_id"])
    listed_apps = json.loads(server.cli("app", "list", "--json"))
    assert new["secret"] not in json.dumps(listed_apps)

    # the server learns of the new pair on its first use, for every check
    new_socket = private(server, rotated, "private-cli")
    server.client(rotated).trigger_event("private-cli", {"n": 1}, event="hello")
    assert published(new_socket, "private-cli", "hello") == {"n": 1}
    assert published(old_socket, "private-cli", "hello") == {"n": 1}

    assert new["key"] in server.cli("app", "keys", "revoke", app["app_id"], app["key"])
    # within the poll interval (0.5 s here), well inside the wait
    refused(old_socket)
    late = server.connect(app, expect_established=False)
    refused(late, 4001)
    with pytest.raises(pusher.errors.PusherBadAuth):
        python_sdk(server, app).trigger("private-cli", "e", "x")
    server.client(rotated).trigger_event("private-cli", {"n": 2}, event="still")
    assert published(new_socket, "private-cli", "still") == {"n": 2}

    with pytest.raises(RuntimeError) as last:
        server.cli("app", "keys", "revoke", app["app_id"], new["key"])
    assert "last" in str(last.value)
    with pytest.raises(RuntimeError):
        server.cli("app", "keys", "revoke", app["app_id"], app["key"])
    new_socket.close()


def test_sign_in_with_a_pair_that_is_then_revoked(server):
    app = server.create_app("signin")
    new = add_key(server, app, app)
    rotated = with_pair(app, new)
    client = server.connect(rotated)
    user_data = json.dumps({"id": "ann"})
    # signed by the old pair, on a socket of the new key
    answer = server.client(app).authenticate_user(client.socket_id, user_data)
    client.send({"event": "pusher:signin", "data": dict(answer, user_data=user_data)})
    assert client.recv_event("pusher:signin_success")
    status, body = server.request(
        "DELETE", "apps/%s/keys/%s" % (app["app_id"], app["key"]), headers=ADMIN
    )
    assert status == 200, body
    refused(client)


def test_webhooks_are_signed_with_the_newest_pair(server):
    receiver = Receiver()
    try:
        status, app = server.request(
            "POST",
            "apps",
            {"name": "hooked", "settings": {"webhooks": [{"url": receiver.url}]}},
            ADMIN,
        )
        assert status == 200, app
        new = add_key(server, app, app)
        client = server.connect(app)
        client.subscribe("room")
        headers, body = receiver.posts.get(timeout=15)
        assert headers["X-Pusher-Key"] == new["key"]
        expected = hmac.new(new["secret"].encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Pusher-Signature"], expected)
        # what a back end on the new pair checks with the pusher SDK
        sdk = python_sdk(server, with_pair(app, new))
        hook = sdk.validate_webhook(
            headers["X-Pusher-Key"], headers["X-Pusher-Signature"], body
        )
        assert hook["events"] == [{"name": "channel_occupied", "channel": "room"}]
        client.close()
    finally:
        receiver.close()


def test_a_pair_count_is_bounded(server):
    app = server.create_app("bounded")
    for _ in range(9):
        add_key(server, app, app)
    status, body = server.request(
        "POST",
        signed_path(app, "POST", "/apps/%s/keys" % app["app_id"]).lstrip("/"),
    )
    assert status == 400 and "at most 10" in body["message"], body
    assert len(listed(server, app, app)) == 10


def test_a_pair_added_with_the_cli_works_at_once():
    # polling too slowly to help: the first use of the new key syncs the app
    instance = PushiServer(env={"PUSHI_APPS_POLL_INTERVAL": "600"}).start()
    try:
        app = instance.create_app("first-use")
        old_socket = private(instance, app, "private-now")
        new = json.loads(instance.cli("app", "keys", "add", app["app_id"], "--json"))
        rotated = with_pair(app, new)
        assert instance.login(rotated)
        python_sdk(instance, rotated).trigger("private-now", "rest", {"n": 1})
        assert published(old_socket, "private-now", "rest") == {"n": 1}
        new_socket = private(instance, rotated, "private-now")
        # the socket open before the pair was added takes it too
        token = instance.client(rotated).authenticate(
            "private-too", old_socket.socket_id
        )
        answer = old_socket.subscribe("private-too", auth=token["auth"])
        assert answer["event"] == "pusher_internal:subscription_succeeded", answer
        new_socket.close()
        old_socket.close()
    finally:
        instance.stop()
