"""Input that Python's parsers take but the protocols do not: an escaped
surrogate that pairs with nothing (no UTF-8 text can carry it), NaN and
numbers out of a float's range, nesting too deep to parse, Unicode digits
where ASCII ones are meant, a newline that a ``$`` lets through.  Each
gets a clear refusal, nothing reaches another client or the store, and
the server logs no traceback.  Appier's own habits are covered too: the
"payload" list that runs a route once per item, a path that is not UTF-8,
a server error's text in its answer."""

import json
import socket

import pytest

from pushi.base.config import Config
from pushi.base.state import State
from pushi.proto import auth

from support import ADMIN_SECRET, free_port, signed_path

LONE = "\\ud800"
""" A JSON escape of half a surrogate pair, as a client can send it """

DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture
def client(server, app):
    client = server.connect(app)
    yield client
    client.close()


def assert_no_traceback(server):
    assert "Traceback" not in server.read_log()


def signed_subscribe(client, app, channel, channel_data):
    signature = auth.channel_auth(
        app["key"], app["secret"], client.socket_id, channel, channel_data
    )
    return client.subscribe(channel, signature, channel_data)


@pytest.mark.parametrize(
    "text",
    [
        '{"event":"pusher:subscribe","data":{"channel":"%s"}}' % LONE,
        '{"event":"pusher:%s"}' % LONE,
        '{"event":"pusher:subscribe","data":{"channel":"private-a","auth":"%s"}}'
        % LONE,
        '{"event":"client-x","channel":"private-a","data":{"v":NaN}}',
        '{"event":"client-x","channel":"private-a","data":{"v":1e400}}',
        '{"event":"client-x","channel":"private-a","data":{"v":-Infinity}}',
    ],
)
def test_messages_json_cannot_carry_are_4300(server, client, text):
    client.send(text)
    message = client.recv()
    assert message["event"] == "pusher:error"
    assert message["data"]["code"] == 4300
    # the socket still serves
    assert client.subscribe("after")["event"].endswith("subscription_succeeded")
    assert_no_traceback(server)


@pytest.mark.parametrize(
    "channel_data",
    [
        '{"user_id":"%s"}' % LONE,
        '{"user_id":"u","user_info":{"name":"%s"}}' % LONE,
        '{"user_id":1e400}',
        '{"user_id":"u","user_info":NaN}',
        pytest.param(DEEP, id="deep"),
    ],
)
def test_presence_channel_data_json_cannot_carry_is_refused(
    server, app, client, channel_data
):
    watcher = server.connect(app)
    try:
        assert signed_subscribe(watcher, app, "presence-room", '{"user_id":"w"}')[
            "event"
        ].endswith("subscription_succeeded")
        answer = signed_subscribe(client, app, "presence-room", channel_data)
        assert answer["event"] == "pusher:subscription_error"
        assert answer["data"]["status"] == 400
        assert watcher.nothing()
    finally:
        watcher.close()
    assert_no_traceback(server)


@pytest.mark.parametrize(
    "user_data", ['{"id":"%s"}' % LONE, pytest.param(DEEP, id="deep")]
)
def test_signin_user_data_json_cannot_carry_is_refused(server, client, app, user_data):
    signature = auth.token(
        app["key"], app["secret"], auth.user_string(client.socket_id, user_data)
    )
    client.send(
        {"event": "pusher:signin", "data": {"user_data": user_data, "auth": signature}}
    )
    message = client.recv()
    assert message["event"] == "pusher:error"
    assert message["data"]["code"] == 4009
    assert client.close_code() == 4009
    assert_no_traceback(server)


def publish(server, app, body):
    """``(status, answer)`` of a signed publish of raw ``body`` bytes."""
    path = signed_path(app, "POST", "/apps/%s/events" % app["app_id"], body=body)
    return server.request("POST", path[1:], raw=body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"name":"e","channel":"c","data":"%s"}' % LONE.encode(),
        b'{"name":"e%s","channel":"c","data":"x"}' % LONE.encode(),
        # the same half pair, raw: bytes that are not UTF-8
        b'{"name":"e","channel":"c","data":"\xed\xa0\x80"}',
        b'{"event":"e","channel":"c","data":{"v":NaN}}',
        b'{"event":"e","channel":"c","data":{"v":1e999}}',
        pytest.param(
            b'{"event":"e","channel":"c","data":' + DEEP.encode() + b"}", id="deep"
        ),
        b'{"name":"e","channel":"news\\n","data":"x"}',
        b'{"name":"e","channel":"c","data":"x","socket_id":"1.2\\n"}',
        b'{"name":"e","channel":"c","data":"x","socket_id":"\\u0661.2"}',
    ],
)
def test_publishes_json_cannot_carry_are_400(server, app, client, body):
    client.subscribe("c")
    for persist in (False, True):
        if persist:
            body = body[:-1] + b',"persist":true}'
        status, answer = publish(server, app, body)
        assert status == 400, answer
        assert answer["message"]
    assert client.nothing()
    assert_no_traceback(server)


def test_one_bad_publish_among_stored_ones_fails_alone(server, app):
    good = b'{"event":"e","channel":"c","data":"fine","persist":true}'
    bad = b'{"event":"e%s","channel":"c","data":"x","persist":true}' % LONE.encode()
    assert publish(server, app, bad)[0] == 400
    status, answer = publish(server, app, good)
    assert status == 200 and answer["mid"]
    assert_no_traceback(server)


def test_login_body_too_deep_is_400(server, app):
    status, answer = server.request("POST", "login", raw=('{"a":%s}' % DEEP).encode())
    assert status == 400, answer
    assert "Recursion" not in json.dumps(answer)


def test_appier_payload_lists_do_not_repeat_a_route(server):
    """Appier runs a route once per item of a body's ``payload``: Pushi's
    routes answer the body once."""
    admin = {"Authorization": "Bearer " + ADMIN_SECRET}
    body = {"name": "payload-once", "payload": [{}, {}, {}]}
    status, answer = server.request("POST", "apps", body, admin)
    assert status == 200, answer
    _status, listing = server.request("GET", "apps", headers=admin)
    names = [record["name"] for record in listing["apps"]]
    assert names.count("payload-once") == 1


def test_a_payload_with_no_length_is_no_server_error(server, app):
    credentials = {"app_key": app["key"], "app_secret": app["secret"]}
    body = dict(credentials, app_id=app["app_id"], payload=5)
    status, answer = server.request("POST", "login", body)
    assert status == 200, answer


@pytest.mark.parametrize(
    "path",
    [
        "apps/%FF",
        "apps/1/channels/%FF%FE",
        "apps/1/users/%FF/terminate_connections",
    ],
)
def test_paths_that_are_not_utf8_are_400(server, path):
    status, answer = server.request("GET", path)
    assert status == 400, answer
    assert answer["message"] == "Path is not UTF-8"


@pytest.mark.parametrize(
    "settings",
    [
        {"allowed_origins": 5},
        {"allowed_origins": None},
        {"latest_count": -5},
        {"retention_count": 10**30},
    ],
)
def test_settings_of_the_wrong_shape_are_400(server, app, settings):
    status, answer = server.request(
        "PUT",
        "apps/%s" % app["app_id"],
        {"settings": settings},
        {"Authorization": "Bearer " + ADMIN_SECRET},
    )
    assert status == 400, answer
    assert answer["message"].startswith(("Setting", "allowed_origins"))


@pytest.mark.parametrize("app_id", ["9" * 5000, "\u00b2", "1" * 30])
def test_login_to_an_app_id_out_of_range_is_401(server, app, app_id):
    status, answer = server.request(
        "POST", "login", {"app_id": app_id, "app_key": "k", "app_secret": "s"}
    )
    assert status == 401, answer


def test_a_server_error_answers_no_detail(tmp_path, monkeypatch):
    """A failure inside a route is logged; its answer says only "Internal
    error", never the exception's class or text."""
    state = State(
        Config(server_port=free_port(), app_port=free_port(), data_dir=str(tmp_path))
    )
    state.start_server(http=True)
    try:
        record = state.store.create_app("errors")

        def fails(*args, **kwargs):
            raise RuntimeError("a detail for the log only")

        monkeypatch.setattr(state.store, "list_subscriptions", fails)
        path = signed_path(record, "GET", "/apps/%s/subscriptions" % record["app_id"])
        sock = socket.create_connection(("127.0.0.1", state.config.app_port), 10)
        sock.sendall(
            ("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode()
        )
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 500")
        assert json.loads(body) == {
            "result": "error",
            "code": 500,
            "message": "Internal error",
        }
    finally:
        state.stop()
