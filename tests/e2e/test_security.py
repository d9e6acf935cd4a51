"""What a holder of less than the admin secret cannot do: change a signed
request's query by repeating a name, lift the limits the operator set or
point the server's webhooks anywhere, queue unbounded store reads or hold
unbounded channels from one anonymous socket."""

import json
import types

import pytest

from support import ADMIN_SECRET, signed_path

ADMIN = {"Authorization": "Bearer " + ADMIN_SECRET}


def test_a_repeated_query_name_is_400_not_a_second_reading(server, app):
    proxy = server.client(app)
    proxy.trigger_event(channel="private-payroll", data="secret", event="e")
    path = "/apps/%s/events" % app["app_id"]
    query = signed_path(app, "GET", path, {"channel": "news"})[1:]
    assert server.request("GET", query)[0] == 200
    # the signed query with another value in front: the signature checks
    # the last, a route reading the first would answer for payroll
    route, _, rest = query.partition("?")
    status, answer = server.request("GET", route + "?channel=private-payroll&" + rest)
    assert status == 400, answer
    assert answer["message"] == "Repeated query parameter"


def test_a_publish_with_a_repeated_query_name_is_400(server, app):
    body = json.dumps({"name": "e", "channel": "c", "data": "x"}).encode()
    path = "/apps/%s/events" % app["app_id"]
    query = signed_path(app, "POST", path, body=body)[1:]
    status, answer = server.request("POST", query + "&auth_version=1.0", raw=body)
    assert status == 400, answer


def test_one_pusher_latest_at_a_time_per_socket(server, app):
    server.client(app).trigger_event(channel="news", data="x", event="e")
    client = server.connect(app)
    client.subscribe("news")
    for _ in range(20):
        client.send({"event": "pusher:latest", "data": {"channel": "news"}})
    messages = [client.recv() for _ in range(20)]
    answers = [message["event"] for message in messages]
    assert "pusher_internal:latest" in answers
    # a refusal names the channel of the request it answers
    assert {
        message.get("channel")
        for message in messages
        if message["event"] == "pusher:error"
    } == {"news"}
    refused = answers.count("pusher:error")
    assert refused and refused + answers.count("pusher_internal:latest") == 20
    # once answered, the socket may ask again
    client.send({"event": "pusher:latest", "data": {"channel": "news"}})
    assert client.recv()["event"] == "pusher_internal:latest"
    client.close()


def test_channels_per_socket_are_bounded(server, app):
    server.update_app(app, settings={"max_socket_channels": 3})
    client = server.connect(app)
    for name in ("a", "b", "c"):
        assert client.subscribe(name)["event"].endswith("subscription_succeeded")
    refused = client.subscribe("d")
    assert refused["event"] == "pusher:subscription_error"
    assert refused["data"]["type"] == "LimitReached"
    assert refused["data"]["status"] == 429
    client.send({"event": "pusher:unsubscribe", "data": {"channel": "a"}})
    assert client.subscribe("d")["event"].endswith("subscription_succeeded")
    client.close()


@pytest.mark.parametrize(
    "settings",
    [
        {"max_connections": 0},
        # left out: back to the default, unlimited
        {"allowed_origins": []},
        {"max_connections": 5, "client_event_rate": 1000},
        {"max_connections": 5, "webhooks": [{"url": "http://127.0.0.1:1/"}]},
        # how much history one subscribe reads
        {"max_connections": 5, "latest_count": 100},
    ],
)
def test_an_apps_own_credentials_cannot_lift_its_limits(server, app, settings):
    server.update_app(app, settings={"max_connections": 5})
    path = "apps/%s" % app["app_id"]
    status, answer = server.request(
        "PUT", path, {"settings": settings}, server.token_headers(app)
    )
    assert status == 403, answer
    assert answer["message"].endswith("needs the admin secret")
    kept = server.request("GET", path, headers=ADMIN)[1]["settings"]
    assert kept["max_connections"] == 5 and kept["client_event_rate"] == 10
    assert kept["webhooks"] == []
    # what is the app's own to choose, it may change
    own = {"max_connections": 5, "allowed_origins": ["https://example.com"]}
    status, answer = server.request(
        "PUT", path, {"settings": own}, server.token_headers(app)
    )
    assert status == 200
    assert answer["settings"]["allowed_origins"] == ["https://example.com"]
    # and the admin may change anything
    changed = server.update_app(app, settings=settings)["settings"]
    assert {name: changed[name] for name in settings} == settings


def test_an_apps_session_tokens_are_bounded_and_expire(monkeypatch):
    """Logins of one app keep at most ``MAX_TOKENS`` live tokens (a new one
    ends its oldest) and none past its expiry, with no other app's touched:
    each login does a few steps, however many came before."""
    from pushi.base import access as access_module
    from pushi.base.limits import App

    apps = {
        app_id: App(dict(app_id=app_id, key="k" + app_id, secret="s" + app_id))
        for app_id in ("1", "2")
    }

    class Apps:
        load_id = staticmethod(apps.get)

    access = access_module.Access(Apps())
    monkeypatch.setattr(access_module, "MAX_TOKENS", 5)
    other = access.login("2", "k2", "s2")[1]
    tokens = [access.login("1", "k1", "s1")[1] for _ in range(7)]
    live = [token for token in tokens if access.is_live(token, "1")]
    assert live == tokens[2:] and access.is_live(other, "2")
    assert len(access.tokens.ids()) == 6
    assert access.logout(tokens[-1]) and not access.logout(tokens[-1])
    assert not access.is_live(tokens[-1], "1")
    # a day later the next login finds the app's old tokens gone
    now = access_module.time.time()
    later = now + access_module.TOKEN_LIFETIME + 1
    monkeypatch.setattr(
        access_module, "time", types.SimpleNamespace(time=lambda: later)
    )
    fresh = access.login("1", "k1", "s1")[1]
    assert set(access.tokens.ids()) == {
        access_module.token_id(fresh),
        access_module.token_id(other),
    }
    access.revoke("2")
    assert set(access.tokens.ids()) == {access_module.token_id(fresh)}
