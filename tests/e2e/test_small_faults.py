"""Small faults of the hardening issue, each over real sockets against the
real server: user channels of sockets that never signed in, console
streams that outlive their token, JSON nested too deep, response headers
and the console's Content-Security-Policy, install paths in static
errors, the signed API's ``auth_version``, and Pusher's answers to a
refused subscription and to ``info`` attributes a channel does not have."""

import http.client
import json
import time
import urllib.parse
import urllib.request

import pytest

import pushi
from pushi.proto import auth

from support import SRC, Client, PushiServer, signed_path


def join(client, app, channel, data=None):
    answer = pushi.Pushi(
        app_id=app["app_id"], app_key=app["key"], app_secret=app["secret"]
    ).authenticate(channel, client.socket_id, data)
    return client.subscribe(channel, answer["auth"], answer.get("channel_data"))


def signin(client, app, user_id):
    user_data = json.dumps({"id": user_id})
    token = auth.token(
        app["key"], app["secret"], auth.user_string(client.socket_id, user_data)
    )
    client.send(
        {"event": "pusher:signin", "data": {"auth": token, "user_data": user_data}}
    )
    return client.recv()


def publish(server, app, event):
    """``(status, answer)`` of a Pusher SDK's signed ``POST events``."""
    body = json.dumps(event).encode()
    path = signed_path(app, "POST", "/apps/%s/events" % app["app_id"], None, body)
    return server.request("POST", path[1:], raw=body)


def get(server, app, path, params=None):
    """``(status, answer)`` of a signed ``GET`` under the app."""
    signed = signed_path(app, "GET", "/apps/%s/%s" % (app["app_id"], path), params)
    return server.request("GET", signed[1:])


def console(server, app_id, token):
    client = Client(server.ws_url + "console", expect_established=False)
    client.send({"event": "console:watch", "data": {"app_id": app_id, "token": token}})
    watching = client.recv()
    assert watching["event"] == "console:watching", watching
    return client


def ended(client, timeout=20):
    """The close code of a console stream once it ends (its entries and
    stats until then skipped), after a ``console:error``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        message = client.recv(max(0.01, deadline - time.time()))
        if message["event"] == "console:error":
            assert message["data"]["message"] == "Session ended"
            return client.close_code()
    raise AssertionError("the stream went on")


def still_answers(client):
    client.send({"event": "pusher:ping", "data": {}})
    assert client.recv_event("pusher:pong")["event"] == "pusher:pong"


def response_of(server, method, path, body=None):
    """``(status, headers, body bytes)`` of a raw request."""
    request = urllib.request.Request(server.base_url + path, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


class TestUserChannels:
    def test_only_a_socket_signed_in_as_the_user_gets_its_channel(self, server, app):
        client = server.connect(app)
        # a socket that never signed in has no user: not even "None"
        refused = client.subscribe("#server-to-user-None")
        assert refused["event"] == "pusher:subscription_error", refused
        assert refused["data"]["status"] == 403
        assert signin(client, app, "alice")["event"] == "pusher:signin_success"
        for name in ("#server-to-user-None", "#server-to-user-bob"):
            assert client.subscribe(name)["event"] == "pusher:subscription_error"
        answer = client.subscribe("#server-to-user-alice")
        assert answer["event"] == "pusher_internal:subscription_succeeded"
        client.close()


class TestConsoleTokens:
    def test_a_token_pushed_out_by_newer_logins_ends_its_stream(self, server, app):
        from pushi.base.access import MAX_TOKENS

        client = console(server, app["app_id"], server.login(app))
        kept_token = None
        body = json.dumps(
            {
                "app_id": app["app_id"],
                "app_key": app["key"],
                "app_secret": app["secret"],
            }
        )
        connection = http.client.HTTPConnection("127.0.0.1", server.app_port, 15)
        try:
            for _ in range(MAX_TOKENS):
                connection.request(
                    "POST", "/login", body, {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                assert response.status == 200
                kept_token = json.loads(response.read())["token"]
        finally:
            connection.close()
        assert ended(client) == 4009
        # the newest token still streams
        console(server, app["app_id"], kept_token).close()

    def test_an_expired_token_ends_its_stream_and_a_late_logout_too(self):
        server = PushiServer(env={"PUSHI_TOKEN_LIFETIME": "3"}).start()
        try:
            app = server.create_app("expiring")
            status, answer = server.request(
                "POST",
                "login",
                {
                    "app_id": app["app_id"],
                    "app_key": app["key"],
                    "app_secret": app["secret"],
                },
            )
            assert status == 200 and answer["expires_in"] == 3
            client = console(server, app["app_id"], answer["token"])
            assert ended(client) == 4009
            bearer = {"Authorization": "Bearer " + answer["token"]}
            assert (
                server.request("GET", "apps/%s" % app["app_id"], headers=bearer)[0]
                == 401
            )
            assert server.request("POST", "logout", headers=bearer)[0] == 200
        finally:
            server.stop()


class TestDeepJson:
    def test_a_client_event_nested_too_deep_is_an_invalid_message(self, server, app):
        sender, receiver = server.connect(app), server.connect(app)
        for client in (sender, receiver):
            join(client, app, "private-deep")
        deep = {"event": "client-x", "channel": "private-deep", "data": None}
        # around the depth where the parser stops: some depths parsed, then
        # failed when measured (close 1011), deeper ones failed to parse
        for depth in range(960, 1000, 2):
            sender.send(json.dumps(deep).replace("null", "[" * depth + "]" * depth))
            refused = sender.recv()
            assert refused["event"] == "pusher:error", refused
            assert refused["data"]["code"] == 4300
        still_answers(sender)
        # nesting within the bound goes through
        sender.send(json.dumps(dict(deep, data=[[[{"a": [1]}]]])))
        assert receiver.recv()["data"] == [[[{"a": [1]}]]]
        log = server.read_log()
        assert "RecursionError" not in log and "Traceback" not in log
        sender.close()
        receiver.close()

    def test_a_publish_nested_too_deep_is_400(self, server, app):
        headers = server.token_headers(app)
        path = "apps/%s/events" % app["app_id"]
        for depth in range(960, 1000, 4):
            body = '{"event":"e","channel":"c","data":%s}' % ("[" * depth + "]" * depth)
            status, answer = server.request(
                "POST", path, raw=body.encode(), headers=headers
            )
            assert status == 400, (depth, answer)
            assert answer["result"] == "error" and "nested" in answer["message"]
        # the signed Pusher body, where data is a string, and the app route
        pusher_body = json.dumps({"name": "e", "channel": "c", "data": "x", "n": 0})
        pusher_body = pusher_body.replace("0", "[" * 990 + "]" * 990)
        assert publish_raw(server, app, pusher_body.encode())[0] == 400
        assert "Traceback" not in server.read_log()


def publish_raw(server, app, body):
    path = signed_path(app, "POST", "/apps/%s/events" % app["app_id"], None, body)
    return server.request("POST", path[1:], raw=body)


class TestHeaders:
    def test_nosniff_is_spelled_as_browsers_read_it(self, server, app):
        body = json.dumps({"name": "e", "channel": "c", "data": "x"}).encode()
        path = signed_path(app, "POST", "/apps/%s/events" % app["app_id"], None, body)
        for method, url, data in (
            ("GET", "health", None),
            ("GET", "nope", None),
            ("GET", "console", None),
            ("GET", "static/pushi.js", None),
            ("POST", path[1:], body),
            ("POST", path[1:] + "x", body),
        ):
            _status, headers, _body = response_of(server, method, url, data)
            assert headers["X-Content-Type-Options"] == "nosniff", url
            assert "X-Content-Type-Option" not in headers, url

    def test_the_console_runs_its_own_script_only(self, server):
        for path in ("console", "static/console/index.html"):
            status, headers, _body = response_of(server, "GET", path)
            assert status == 200
            policy = headers["Content-Security-Policy"]
            directives = dict(
                (part.split() + [""])[:2] for part in policy.split(";") if part.strip()
            )
            script = [
                part for part in policy.split(";") if part.split()[:1] == ["script-src"]
            ]
            assert script == [" script-src 'self'"], policy
            assert directives["default-src"] == "'none'"
            assert "unsafe" not in policy and " * " not in policy + " "
            assert "ws://*:%d" % server.server_port in policy


class TestStaticErrors:
    @pytest.mark.parametrize(
        "path",
        [
            "static/",
            "static/console",
            "static/console/",
            "static/nope.js",
            "static/../app.py",
            "static//etc/passwd",
            "appier/static/",
            "appier/static/nope",
        ],
    )
    def test_no_install_path_in_a_static_error(self, server, path):
        status, headers, body = response_of(server, "GET", path)
        assert status == 404
        assert headers["Content-Type"].startswith("application/json")
        answer = json.loads(body)
        assert answer == {"result": "error", "code": 404, "message": "Not found"}
        assert SRC.encode() not in body and b"site-packages" not in body


class TestAuthVersion:
    @pytest.mark.parametrize("version", ["2.0", "1", "", None])
    def test_only_auth_version_1_0_is_accepted(self, server, app, version):
        path = "/apps/%s/channels" % app["app_id"]
        params = auth.signed_params(app["key"], app["secret"], "GET", path)
        if version is None:
            del params["auth_version"]
        else:
            params["auth_version"] = version
        params["auth_signature"] = auth.sign_api(app["secret"], "GET", path, params)
        status, answer = server.request(
            "GET", path[1:] + "?" + urllib.parse.urlencode(params)
        )
        assert status == 401, answer
        assert answer["result"] == "error" and "auth_version" in answer["message"]


class TestPusherAnswers:
    def test_a_bad_signature_gets_both_refusals(self, server, app):
        client = server.connect(app)
        refused = client.subscribe("private-x", app["key"] + ":" + "0" * 64)
        assert refused["event"] == "pusher:subscription_error"
        assert refused["channel"] == "private-x"
        assert refused["data"]["status"] == 401
        error = client.recv()
        assert error["event"] == "pusher:error"
        assert error["data"]["code"] == 4306
        assert "signature" in error["data"]["message"]
        still_answers(client)
        client.close()

    def test_a_trigger_counts_no_subscriptions_of_presence(self, server, app):
        client = server.connect(app)
        join(client, app, "presence-x", {"user_id": "u"})
        client.subscribe("news")
        status, answer = publish(
            server,
            app,
            {
                "name": "e",
                "channels": ["presence-x", "news"],
                "data": "x",
                "info": "subscription_count",
            },
        )
        assert status == 200, answer
        assert answer == {
            "channels": {"presence-x": {}, "news": {"subscription_count": 1}}
        }
        status, answer = publish(
            server,
            app,
            {
                "name": "e",
                "channel": "presence-x",
                "data": "x",
                "info": "user_count,subscription_count",
            },
        )
        assert answer == {"channels": {"presence-x": {"user_count": 1}}}
        client.close()

    def test_an_attribute_the_channel_has_not_is_400(self, server, app):
        client = server.connect(app)
        join(client, app, "presence-x", {"user_id": "u"})
        for name, info in (
            ("presence-x", "subscription_count"),
            ("news", "user_count"),
            ("news", "cache"),
        ):
            status, answer = get(server, app, "channels/" + name, {"info": info})
            assert status == 400, (name, info, answer)
            assert answer["result"] == "error" and info in answer["message"]
        assert get(server, app, "channels/presence-x", {"info": "user_count"}) == (
            200,
            {"occupied": True, "user_count": 1},
        )
        client.close()

    def test_nothing_cached_is_a_null_cache(self, server, app):
        client = server.connect(app)
        client.subscribe("cache-x")
        assert get(server, app, "channels/cache-x", {"info": "cache"}) == (
            200,
            {"occupied": True, "cache": None},
        )
        publish(server, app, {"name": "e", "channel": "cache-x", "data": "1"})
        status, answer = get(server, app, "channels/cache-x", {"info": "cache"})
        assert answer["cache"]["event"] == "e" and answer["cache"]["data"] == "1"
        client.close()
