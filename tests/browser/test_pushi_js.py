"""pushi.js in a real browser: headless Debian Chromium driven by Playwright.

Two groups of tests:

* client logic that needs no server (URL building from the page, dispatch,
  subscriptions, auth requests, pings, reconnection), run on a page served by
  Playwright's request routing with a stand-in WebSocket
  (``tests/browser/fake_socket.js``); the back-off, channel kinds, members,
  message parsing and recovery positions, which need no browser, are in
  ``tests/js/pushi.test.js`` under Node;
* end to end against the real server: the example page is loaded from the
  app (``/static/example.html``), connects over a real WebSocket, receives
  events triggered over REST, subscribes to private and presence channels
  through an auth endpoint run by this test process, sees member events from a
  second page, talks on a peer channel and survives a server restart.

The suite saves a screenshot of the example page to ``artifacts/``.

Needs Debian ``chromium`` and the ``playwright`` Python package (which drives
the system chromium; no browser is downloaded). Without them the tests skip,
unless CI is set, where they fail.
"""

import http.server
import json
import os
import shutil
import threading
import time
import urllib.parse
import urllib.request

import pytest

from support import ROOT, chromium, wait_until

JS_DIR = os.path.join(ROOT, "extra", "js")
BROWSER_DIR = os.path.join(ROOT, "tests", "browser")
ARTIFACTS_DIR = os.path.join(ROOT, "artifacts")

# origin of the pages of the server-less tests (answered by page.route)
UNIT_ORIGIN = "http://pushi.test"


@pytest.fixture(scope="module")
def browser():
    """One Chromium with a new empty profile for the whole module."""
    with chromium({"width": 1000, "height": 760}) as context:
        yield context


def read_text(*parts):
    with open(os.path.join(*parts), encoding="utf-8") as file:
        return file.read()


UNIT_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>pushi.js unit</title></head>
<body><script src="/pushi.js"></script><script src="/fake_socket.js"></script>
<script src="/recorder.js"></script></body></html>"""


class AuthRecorder:
    """What the routed auth endpoint of the server-less tests saw and says."""

    def __init__(self):
        self.requests = []
        self.status = 200
        self.answer = {"auth": "key:signature"}


@pytest.fixture
def unit(browser):
    """A page with pushi.js, the fake socket and the recorder, no server."""
    page = browser.new_page()
    auth = AuthRecorder()
    files = {
        "/pushi.js": read_text(JS_DIR, "pushi.js"),
        "/fake_socket.js": read_text(BROWSER_DIR, "fake_socket.js"),
        "/recorder.js": read_text(BROWSER_DIR, "recorder.js"),
        "/unit.html": UNIT_HTML,
    }

    def handle(route):
        request = route.request
        path = urllib.parse.urlsplit(request.url).path
        if path == "/auth":
            auth.requests.append(
                {
                    "method": request.method,
                    "headers": request.headers,
                    "body": request.post_data,
                }
            )
            route.fulfill(
                status=auth.status,
                content_type="application/json",
                body=json.dumps(auth.answer),
            )
        elif path in files:
            kind = "text/html" if path.endswith(".html") else "application/javascript"
            route.fulfill(status=200, content_type=kind, body=files[path])
        else:
            route.fulfill(status=404, body="not found")

    page.route(UNIT_ORIGIN + "/**", handle)
    page.goto(UNIT_ORIGIN + "/unit.html")
    page.auth = auth
    try:
        yield page
    finally:
        page.close()


# ---------------------------------------------------------------------------
# client logic, no server
# ---------------------------------------------------------------------------


def test_urls_from_base_url_host_port_and_tls(unit):
    result = unit.evaluate(
        """() => ({
        quickStart: new Pushi("YOU_APP_KEY", {baseUrl: "ws://127.0.0.1:9090/", autoConnect: false}).url,
        noSlash: Pushi.buildUrl("k", {baseUrl: "ws://h:1"}),
        tlsBase: Pushi.buildUrl("k", {baseUrl: "ws://h:1/", tls: true}),
        httpsBase: Pushi.buildUrl("k", {baseUrl: "https://h/"}),
        hostPort: Pushi.buildUrl("k", {host: "push.example.com", port: 443, tls: true}),
        pageHost: Pushi.buildUrl("k", {}),
    })"""
    )
    assert result == {
        "quickStart": "ws://127.0.0.1:9090/YOU_APP_KEY",
        "noSlash": "ws://h:1/k",
        "tlsBase": "wss://h:1/k",
        "httpsBase": "wss://h/k",
        "hostPort": "wss://push.example.com:443/k",
        "pageHost": "ws://pushi.test:9090/k",
    }


def test_quick_start_verbatim_receives_messages(unit):
    result = unit.evaluate(
        """() => {
        window.WebSocket = FakeSocket;
        var pushi = new Pushi("YOU_APP_KEY", { baseUrl: "ws://127.0.0.1:9090/" });
        pushi.bind("message", function(event, data) { document.body.append(data); });
        const socket = FakeSocket.last();
        socket.handshake("1.2");
        socket.serverSend({event: "hello", channel: "global", data: "world"});
        return {url: socket.url, state: pushi.state, socketId: pushi.socketId,
                appended: document.body.lastChild.nodeValue};
    }"""
    )
    assert result == {
        "url": "ws://127.0.0.1:9090/YOU_APP_KEY",
        "state": "connected",
        "socketId": "1.2",
        "appended": "world",
    }


def test_events_reach_channel_and_global_listeners(unit):
    result = unit.evaluate(
        """() => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket});
        const global = [], own = [], all = [];
        pushi.bind("message", (event, data, channel, object) =>
            global.push([event, data, channel, !!object]));
        pushi.bind("update", () => { throw new Error("a failing listener stops nobody"); });
        const news = pushi.subscribe("news");
        news.bind("update", (event, data, channel) => own.push([event, data, channel]));
        news.bind("message", (event) => all.push(event));
        const socket = FakeSocket.last();
        const beforeHandshake = socket.sent.length;
        socket.handshake();
        socket.serverSend({event: "pusher_internal:subscription_succeeded", channel: "news",
            data: JSON.stringify({events: [{event: "old", data: "x"}]})});
        socket.serverSend({event: "update", channel: "news", data: '{"a": 1}'});
        socket.serverSend({event: "other", channel: "news", data: "123"});
        socket.serverSend({event: "update", channel: "elsewhere", data: {b: 2}});
        news.unbind("update");
        socket.serverSend({event: "update", channel: "news", data: "late"});
        return {beforeHandshake, sent: socket.sentMessages(), global, own, all,
                subscribed: news.subscribed, events: news.events,
                same: pushi.subscribe("news") === news};
    }"""
    )
    assert result["beforeHandshake"] == 0
    assert result["sent"] == [
        {"event": "pusher:subscribe", "data": {"channel": "news"}}
    ]
    assert result["subscribed"] is True
    assert result["events"] == [{"event": "old", "data": "x"}]
    assert result["global"] == [
        ["update", {"a": 1}, "news", True],
        ["other", "123", "news", True],
        ["update", {"b": 2}, "elsewhere", False],
        ["update", "late", "news", True],
    ]
    assert result["own"] == [["update", {"a": 1}, "news"]]
    assert result["all"] == ["update", "other", "update"]
    assert result["same"] is True


def test_connection_states_and_events(unit):
    result = unit.evaluate(
        """async () => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            minReconnectDelay: 20, maxReconnectDelay: 40});
        const log = recordPushi(pushi);
        const initial = pushi.state;
        FakeSocket.last().handshake("9.9", 60);
        const timeout = pushi.activityTimeout;
        FakeSocket.last().serverClose(1006);
        const afterLoss = pushi.state;
        await until(() => FakeSocket.instances.length === 2);
        FakeSocket.last().handshake("9.10");
        pushi.disconnect();
        return {initial, timeout, afterLoss, final: pushi.state,
                states: log.filter(e => e.kind === "state_change").map(e => e.data.current),
                kinds: log.filter(e => e.kind !== "state_change").map(e => e.kind)};
    }"""
    )
    assert result["initial"] == "connecting"
    assert result["timeout"] == 60000
    assert result["afterLoss"] == "reconnecting"
    assert result["final"] == "disconnected"
    assert result["states"] == [
        "connected",
        "reconnecting",
        "connected",
        "disconnected",
    ]
    assert result["kinds"] == [
        "connected",
        "disconnected",
        "reconnecting",
        "connected",
        "disconnected",
    ]


def test_private_subscription_posts_a_form_to_the_auth_endpoint(unit):
    unit.auth.answer = {"auth": "key:abc"}
    result = unit.evaluate(
        """async () => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            authEndpoint: "/auth", authHeaders: {"X-Csrf": "t"}, authParams: {extra: "1"}});
        const socket = FakeSocket.last();
        socket.handshake("11.22");
        pushi.subscribe("private-orders");
        await until(() => socket.sent.length === 1);
        return socket.sentMessages();
    }"""
    )
    assert result == [
        {
            "event": "pusher:subscribe",
            "data": {"channel": "private-orders", "auth": "key:abc"},
        }
    ]
    (request,) = unit.auth.requests
    assert request["method"] == "POST"
    assert request["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert request["headers"]["x-csrf"] == "t"
    assert urllib.parse.parse_qs(request["body"]) == {
        "extra": ["1"],
        "socket_id": ["11.22"],
        "channel_name": ["private-orders"],
    }


def test_presence_subscription_json_auth_channel_data_and_members(unit):
    signed = json.dumps({"user_id": "u1", "user_info": {"name": "Ann"}})
    unit.auth.answer = {"auth": "key:def", "channel_data": signed}
    result = unit.evaluate(
        """async () => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            authEndpoint: "/auth", authTransport: "json"});
        const log = recordPushi(pushi);
        const room = pushi.subscribe("presence-room", {channelData: {user_id: "u1"}});
        const roomLog = [];
        room.bind("member_added", (event, member) => roomLog.push(["added", member.user_id]));
        room.bind("member_removed", (event, member) => roomLog.push(["removed", member.user_id]));
        const socket = FakeSocket.last();
        socket.handshake("5.6");
        await until(() => socket.sent.length === 1);
        socket.serverSend({event: "pusher_internal:subscription_succeeded", channel: "presence-room",
            data: JSON.stringify({presence: {ids: ["u1", "u2"], count: 2,
                hash: {u1: {name: "Ann"}, u2: {name: "Bob"}}}, events: []})});
        const first = Object.assign({}, room.members);
        socket.serverSend({event: "pusher:member_added", channel: "presence-room",
            member: JSON.stringify({user_id: 3, user_info: {name: "Cy"}})});
        socket.serverSend({event: "pusher:member_removed", channel: "presence-room",
            member: JSON.stringify({user_id: "u2"})});
        return {sent: socket.sentMessages(), first, members: room.members, me: room.me,
                count: room.memberCount(), roomLog,
                global: log.filter(e => e.kind.startsWith("member_")).map(e => [e.kind, e.channel])};
    }"""
    )
    assert result["sent"] == [
        {
            "event": "pusher:subscribe",
            "data": {
                "channel": "presence-room",
                "auth": "key:def",
                "channel_data": signed,
            },
        }
    ]
    (request,) = unit.auth.requests
    assert request["headers"]["content-type"] == "application/json"
    assert json.loads(request["body"]) == {
        "socket_id": "5.6",
        "channel_name": "presence-room",
        "channel_data": '{"user_id":"u1"}',
    }
    assert result["first"] == {"u1": {"name": "Ann"}, "u2": {"name": "Bob"}}
    assert result["members"] == {"u1": {"name": "Ann"}, "3": {"name": "Cy"}}
    assert result["count"] == 2
    assert result["me"] == {"user_id": "u1", "user_info": {"name": "Ann"}}
    assert result["roomLog"] == [["added", 3], ["removed", "u2"]]
    assert result["global"] == [
        ["member_added", "presence-room"],
        ["member_removed", "presence-room"],
    ]


def test_auth_failure_is_a_subscription_error(unit):
    unit.auth.status = 403
    unit.auth.answer = {"error": "no"}
    result = unit.evaluate(
        """async () => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            authEndpoint: "/auth"});
        const log = recordPushi(pushi);
        const channel = pushi.subscribe("private-secret");
        FakeSocket.last().handshake();
        await until(() => countOf(log, "subscription_error"));
        const error = log.find(e => e.kind === "subscription_error");
        return {sent: FakeSocket.last().sent.length, error: error.data, channel: error.channel,
                subscribed: channel.subscribed};
    }"""
    )
    assert result["sent"] == 0
    assert result["channel"] == "private-secret"
    assert result["error"]["type"] == "AuthError"
    assert result["error"]["status"] == 403
    assert result["subscribed"] is False


def test_custom_authorizer_and_server_subscription_error(unit):
    result = unit.evaluate(
        """() => {
        const calls = [];
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            authorizer: (name, socketId, channelData, callback) => {
                calls.push([name, socketId]);
                callback(null, {auth: "key:" + name});
            }});
        const log = recordPushi(pushi);
        const socket = FakeSocket.last();
        socket.handshake("1.1");
        pushi.subscribe("personal-42");
        socket.serverSend({event: "pusher:subscription_error", channel: "personal-42",
            data: {type: "AuthError", error: "bad", status: 401}});
        return {calls, sent: socket.sentMessages(),
                errors: log.filter(e => e.kind === "subscription_error").map(e => e.data.status)};
    }"""
    )
    assert result["calls"] == [["personal-42", "1.1"]]
    assert result["sent"] == [
        {
            "event": "pusher:subscribe",
            "data": {"channel": "personal-42", "auth": "key:personal-42"},
        }
    ]
    assert result["errors"] == [401]


def test_peer_channel_is_created_when_the_server_joins_it(unit):
    result = unit.evaluate(
        """() => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket});
        const received = [];
        const joined = [];
        pushi.bind("subscribe", (event, data, name, channel) => {
            joined.push([name, channel.kind]);
            channel.bind("client-hi", (event, data) => received.push(data));
        });
        const socket = FakeSocket.last();
        socket.handshake();
        socket.serverSend({event: "pusher_internal:subscription_succeeded",
            channel: "peer-room:a&b", data: "{}"});
        const peer = pushi.channel("peer-room:a&b");
        socket.serverSend({event: "client-hi", channel: "peer-room:a&b", data: "yo"});
        const sent = peer.send("client-hi", "back", true, false);
        socket.serverSend({event: "pusher_internal:unsubscription_succeeded",
            channel: "peer-room:a&b", data: "{}"});
        const messages = socket.sentMessages();
        const review = pushi.subscribe("peer-review");
        return {joined, received, sent, review: [review.kind, socket.sentMessages().pop()],
                messages,
                subscribedBefore: peer.subscribed === false, gone: !pushi.channel("peer-room:a&b")};
    }"""
    )
    assert result["joined"] == [["peer-room:a&b", "peer"]]
    assert result["review"] == [
        "public",
        {"event": "pusher:subscribe", "data": {"channel": "peer-review"}},
    ]
    assert result["received"] == ["yo"]
    assert result["sent"] is True
    assert result["messages"] == [
        {
            "event": "client-hi",
            "channel": "peer-room:a&b",
            "data": "back",
            "echo": True,
            "persist": False,
        }
    ]
    assert result["gone"] is True


def test_send_and_latest(unit):
    result = unit.evaluate(
        """async () => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket});
        const channel = pushi.subscribe("news");
        const offline = channel.send("chat", "early");
        const socket = FakeSocket.last();
        socket.handshake();
        channel.send("chat", {text: "hi"}, true, true);
        channel.send("chat", "plain");
        const got = [];
        channel.latest(5, 3, (events, data) => got.push([events, data.channel]));
        const promise = channel.latest();
        // the server reads one at a time per socket: the second waits
        const before = socket.sentMessages().length;
        socket.serverSend({event: "pusher_internal:latest", channel: "news",
            data: JSON.stringify({channel: "news", events: [{event: "a"}]})});
        socket.serverSend({event: "pusher_internal:latest",
            data: {channel: "news", events: [{event: "b"}, {event: "c"}]}});
        const second = await promise;
        channel.latest(0, 1, () => {});
        let failure = null;
        const pending = channel.latest().catch(error => { failure = error.message; });
        pushi.disconnect();
        await pending;
        return {offline, sent: socket.sentMessages().slice(1), before, got, second,
            failure};
    }"""
    )
    assert result["offline"] is False
    assert result["sent"] == [
        {
            "event": "chat",
            "channel": "news",
            "data": {"text": "hi"},
            "echo": True,
            "persist": True,
        },
        {
            "event": "chat",
            "channel": "news",
            "data": "plain",
            "echo": False,
            "persist": False,
        },
        {"event": "pusher:latest", "data": {"channel": "news", "skip": 5, "count": 3}},
        {"event": "pusher:latest", "data": {"channel": "news", "skip": 0, "count": 10}},
        {"event": "pusher:latest", "data": {"channel": "news", "skip": 0, "count": 1}},
    ]
    assert result["before"] == 4
    assert result["got"] == [[[{"event": "a"}], "news"]]
    assert result["second"] == [{"event": "b"}, {"event": "c"}]
    assert result["failure"] == "connection lost"


def test_latest_one_at_a_time_and_its_refusals(unit):
    """Requests wait for the one in flight; a pusher:error naming the
    channel of the one in flight fails it (with the code) and sends the
    next; one without a channel does not; leaving a channel fails its
    waiting requests; a request timed out in flight still holds the next
    until its answer comes."""
    result = unit.evaluate(
        """async () => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            latestTimeout: 80});
        const news = pushi.subscribe("news");
        const other = pushi.subscribe("other");
        const socket = FakeSocket.last();
        socket.handshake();
        const asked = () => socket.sentMessages()
            .filter(message => message.event === "pusher:latest")
            .map(message => message.data.channel + "/" + message.data.skip);
        const outcome = promise => promise.then(
            events => "events " + events.length,
            failure => failure.message + " " + failure.status);
        const first = outcome(news.latest(1));
        const second = outcome(other.latest(2));
        const third = outcome(news.latest(3));
        const queued = outcome(other.latest(4));
        const steps = [asked()];
        socket.serverSend({event: "pusher:error",
            data: {code: 4301, message: "Rate limited"}});
        steps.push(asked());
        socket.serverSend({event: "pusher:error", channel: "news",
            data: {code: 4305, message: "Store unavailable"}});
        steps.push(asked());
        socket.serverSend({event: "pusher:latest",
            data: {channel: "other", events: [{event: "x"}]}});
        steps.push(asked());
        pushi.unsubscribe("other");
        const results = [await first, await second, await queued];
        // news/3 in flight times out, and holds the next until answered
        const late = outcome(news.latest(5));
        const timedOut = await third;
        steps.push(asked());
        socket.serverSend({event: "pusher:latest", data: {channel: "news", events: []}});
        steps.push(asked());
        socket.serverSend({event: "pusher:latest", data: {channel: "news", events: []}});
        results.push(timedOut, await late);
        return {steps, results};
    }"""
    )
    assert result["steps"] == [
        ["news/1"],
        ["news/1"],
        ["news/1", "other/2"],
        ["news/1", "other/2", "news/3"],
        ["news/1", "other/2", "news/3"],
        ["news/1", "other/2", "news/3", "news/5"],
    ]
    assert result["results"] == [
        "Store unavailable 4305",
        "events 1",
        "unsubscribed 0",
        "latest timed out 0",
        "events 0",
    ]


def test_latest_times_out_without_an_answer(unit):
    result = unit.evaluate(
        """async () => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            latestTimeout: 50});
        const channel = pushi.subscribe("news");
        FakeSocket.last().handshake();
        const started = Date.now();
        const message = await channel.latest().then(() => "answered", error => error.message);
        // a late answer after the time-out is ignored
        FakeSocket.last().serverSend({event: "pusher_internal:latest",
            data: {channel: "news", events: []}});
        return {message, waited: Date.now() - started >= 40};
    }"""
    )
    assert result == {"message": "latest timed out", "waited": True}


def test_subscribe_twice_asks_once(unit):
    result = unit.evaluate(
        """async () => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket});
        const socket = FakeSocket.last();
        socket.handshake();
        const first = pushi.subscribe("news");
        const second = pushi.subscribe("news");
        socket.serverSend({event: "pusher:subscription_error", channel: "news",
            data: {type: "LimitReached", error: "full", status: 403}});
        pushi.subscribe("news");
        return {same: first === second, sent: socket.sent.length};
    }"""
    )
    assert result == {"same": True, "sent": 2}


def test_unsubscribe(unit):
    result = unit.evaluate(
        """() => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket});
        const log = recordPushi(pushi);
        const channel = pushi.subscribe("news");
        const socket = FakeSocket.last();
        socket.handshake();
        socket.serverSend({event: "pusher_internal:subscription_succeeded", channel: "news", data: "{}"});
        channel.unsubscribe();
        socket.serverSend({event: "pusher_internal:unsubscription_succeeded", channel: "news", data: "{}"});
        socket.serverSend({event: "update", channel: "news", data: "x"});
        return {sent: socket.sentMessages(), known: !!pushi.channel("news"),
                unsubscribes: countOf(log, "unsubscribe"), subscribed: channel.subscribed};
    }"""
    )
    assert result["sent"][-1] == {
        "event": "pusher:unsubscribe",
        "data": {"channel": "news"},
    }
    assert result["known"] is False
    assert result["unsubscribes"] == 1
    assert result["subscribed"] is False


def test_answers_pings_and_pings_when_idle(unit):
    result = unit.evaluate(
        """async () => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            activityTimeout: 150, pongTimeout: 200});
        const socket = FakeSocket.last();
        socket.handshake("1.1", 120);
        socket.serverSend({event: "pusher:ping", data: {}});
        const answered = socket.sentMessages();
        await until(() => socket.sent.length === 2);
        const pinged = socket.sentMessages()[1];
        socket.serverSend({event: "pusher:pong", data: {}});
        await sleep(60);
        const stillThere = FakeSocket.instances.length === 1 && pushi.state === "connected";
        // this time nobody answers: the socket is dropped and a new one opened at once
        await until(() => socket.sent.length === 3);
        await until(() => FakeSocket.instances.length === 2, 2000);
        return {answered, pinged, stillThere, third: socket.sentMessages()[2],
                closed: socket.closedByClient, state: pushi.state};
    }"""
    )
    assert result["answered"] == [{"event": "pusher:pong", "data": {}}]
    assert result["pinged"] == {"event": "pusher:ping", "data": {}}
    assert result["stillThere"] is True
    assert result["third"] == {"event": "pusher:ping", "data": {}}
    assert result["closed"] == 1000
    assert result["state"] == "reconnecting"


def test_idle_ping_uses_the_handshake_activity_timeout(unit):
    result = unit.evaluate(
        """async () => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket});
        const socket = FakeSocket.last();
        socket.handshake("1.1", 1);
        await sleep(500);
        const early = socket.sent.length;
        await until(() => socket.sent.length === 1, 3000);
        pushi.disconnect();
        return {early, timeout: pushi.activityTimeout, ping: socket.sentMessages()[0]};
    }"""
    )
    assert result == {
        "early": 0,
        "timeout": 1000,
        "ping": {"event": "pusher:ping", "data": {}},
    }


def test_reconnects_with_backoff_and_resubscribes(unit):
    result = unit.evaluate(
        """async () => {
        const auths = [];
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            minReconnectDelay: 40, maxReconnectDelay: 160, reconnectJitter: 0,
            stableAfter: 100,
            authorizer: (name, socketId, data, callback) => {
                auths.push(socketId); callback(null, {auth: "key:" + socketId}); }});
        const log = recordPushi(pushi);
        pushi.subscribe("news");
        pushi.subscribe("private-a");
        FakeSocket.last().handshake("1.1");
        for (const name of ["news", "private-a"]) {
            FakeSocket.last().serverSend({event: "pusher_internal:subscription_succeeded",
                channel: name, data: "{}"});
        }
        const subscribedBefore = pushi.channel("news").subscribed;
        FakeSocket.last().serverClose(1006);
        const subscribedDuring = pushi.channel("news").subscribed;
        // three refused attempts in a row, then the server is back
        for (let count = 2; count <= 4; count++) {
            await until(() => FakeSocket.instances.length === count, 2000);
            FakeSocket.last().serverClose(1006);
        }
        await until(() => FakeSocket.instances.length === 5, 2000);
        FakeSocket.last().handshake("2.2");
        const resent = FakeSocket.last().sentMessages();
        const attemptConnected = pushi.attempt;
        // the back-off starts afresh once the connection has held
        await until(() => pushi.attempt === 0, 2000);
        return {subscribedBefore, subscribedDuring, resent, auths, attemptConnected,
                attempt: pushi.attempt,
                delays: log.filter(e => e.kind === "reconnecting").map(e => e.data.delay),
                state: pushi.state};
    }"""
    )
    assert result["subscribedBefore"] is True
    assert result["subscribedDuring"] is False
    assert result["delays"] == [40, 80, 160, 160]
    assert result["resent"] == [
        {"event": "pusher:subscribe", "data": {"channel": "news"}},
        {
            "event": "pusher:subscribe",
            "data": {"channel": "private-a", "auth": "key:2.2"},
        },
    ]
    assert result["auths"] == ["1.1", "2.2"]
    assert result["attemptConnected"] == 4
    assert result["attempt"] == 0
    assert result["state"] == "connected"


def test_a_server_closing_each_new_socket_at_once_meets_a_growing_backoff(unit):
    result = unit.evaluate(
        """async () => {
        FakeSocket.reset();
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            minReconnectDelay: 40, maxReconnectDelay: 160, reconnectJitter: 0});
        const log = recordPushi(pushi);
        for (let count = 1; count <= 4; count++) {
            await until(() => FakeSocket.instances.length === count, 2000);
            FakeSocket.last().handshake(count + ".1");
            FakeSocket.last().serverClose(4200, "going away");
        }
        pushi.disconnect();
        return log.filter(e => e.kind === "reconnecting").map(e => e.data.delay);
    }"""
    )
    # "reconnect now" once; then a draining server is not hammered
    assert result == [0, 80, 160, 160]


def test_a_channel_asked_for_on_connected_is_asked_for_once(unit):
    result = unit.evaluate(
        """async () => {
        FakeSocket.reset();
        const auths = [];
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            minReconnectDelay: 10, reconnectJitter: 0,
            authorizer: (name, socketId, data, callback) => {
                auths.push(socketId); callback(null, {auth: "key:" + socketId}); }});
        pushi.bind("connected", () => pushi.subscribe("private-x"));
        FakeSocket.last().handshake("1.1");
        const first = FakeSocket.last().sentMessages();
        FakeSocket.last().serverClose(1006);
        await until(() => FakeSocket.instances.length === 2, 2000);
        FakeSocket.last().handshake("2.2");
        return {first, second: FakeSocket.last().sentMessages(), auths};
    }"""
    )
    for socket_id, sent in (("1.1", result["first"]), ("2.2", result["second"])):
        assert sent == [
            {
                "event": "pusher:subscribe",
                "data": {"channel": "private-x", "auth": "key:" + socket_id},
            }
        ]
    assert result["auths"] == ["1.1", "2.2"]


def test_a_late_answer_for_a_channel_left_is_ignored(unit):
    result = unit.evaluate(
        """() => {
        FakeSocket.reset();
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket});
        const log = recordPushi(pushi);
        FakeSocket.last().handshake();
        pushi.subscribe("news");
        pushi.unsubscribe("news");
        FakeSocket.last().serverSend({event: "pusher_internal:subscription_succeeded",
            channel: "news", data: "{}"});
        return {subscribes: countOf(log, "subscribe"), known: !!pushi.channel("news")};
    }"""
    )
    assert result == {"subscribes": 0, "known": False}


def test_close_codes_decide_reconnection(unit):
    result = unit.evaluate(
        """async () => {
        const make = () => new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            minReconnectDelay: 5000});
        FakeSocket.reset();
        const refused = make();
        const refusedLog = recordPushi(refused);
        FakeSocket.last().handshake();
        FakeSocket.last().serverClose(4001, "unknown app");
        FakeSocket.reset();
        const now = make();
        const nowLog = recordPushi(now);
        FakeSocket.last().handshake();
        FakeSocket.last().serverClose(4200, "going away");
        await until(() => FakeSocket.instances.length === 2, 1000);
        await sleep(50);
        return {
            refusedState: refused.state,
            refusedError: refusedLog.find(e => e.kind === "error").data,
            refusedRetries: countOf(refusedLog, "reconnecting"),
            nowDelay: nowLog.find(e => e.kind === "reconnecting").data.delay,
            nowSockets: FakeSocket.instances.length,
        };
    }"""
    )
    assert result["refusedState"] == "disconnected"
    assert result["refusedError"] == {"code": 4001, "message": "unknown app"}
    assert result["refusedRetries"] == 0
    assert result["nowDelay"] == 0
    assert result["nowSockets"] == 2


def test_network_back_online_retries_at_once(unit):
    result = unit.evaluate(
        """async () => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            minReconnectDelay: 60000});
        FakeSocket.last().handshake();
        FakeSocket.last().serverClose(1006);
        await sleep(20);
        const before = FakeSocket.instances.length;
        window.dispatchEvent(new Event("online"));
        const after = FakeSocket.instances.length;
        pushi.disconnect();
        return {before, after};
    }"""
    )
    assert result["after"] == result["before"] + 1


def test_connect_timeout_retries(unit):
    result = unit.evaluate(
        """async () => {
        const pushi = new Pushi("key", {baseUrl: "ws://x/", WebSocket: FakeSocket,
            connectTimeout: 50, minReconnectDelay: 10, maxReconnectDelay: 10});
        await until(() => FakeSocket.instances.length === 2, 2000);
        pushi.disconnect();
        return {first: FakeSocket.instances[0].closedByClient, state: pushi.state};
    }"""
    )
    assert result == {"first": 1000, "state": "disconnected"}


# ---------------------------------------------------------------------------
# end to end: the real server
# ---------------------------------------------------------------------------


class AuthEndpoint:
    """The user's server in the tests: signs subscriptions for `?user=<id>`
    with the Python client's ``authenticate``. Presence members get
    ``{"user_id": <id>, "user_info": {"name": <Id>}, "peer": true}``. It
    answers with CORS headers since the page comes from the app's origin.
    """

    def __init__(self, client):
        self.client = client
        self.requests = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def cors(self):
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Access-Control-Allow-Headers", "Content-Type")
                self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")

            def do_OPTIONS(self):
                self.send_response(204)
                self.cors()
                self.end_headers()

            def do_POST(self):
                url = urllib.parse.urlsplit(self.path)
                user = urllib.parse.parse_qs(url.query).get("user", ["anonymous"])[0]
                body = self.rfile.read(
                    int(self.headers.get("Content-Length") or 0)
                ).decode()
                if "json" in (self.headers.get("Content-Type") or ""):
                    params = json.loads(body or "{}")
                else:
                    params = {k: v[0] for k, v in urllib.parse.parse_qs(body).items()}
                endpoint.requests.append(dict(params, user=user))
                try:
                    answer, status = endpoint.sign(params, user), 200
                except Exception as error:
                    answer, status = {"error": str(error)}, 403
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.cors()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def sign(self, params, user):
        channel = params["channel_name"]
        channel_data = None
        if channel.startswith("presence-"):
            channel_data = {
                "user_id": user,
                "user_info": {"name": user.title()},
                "peer": True,
            }
        return self.client.authenticate(
            channel, params["socket_id"], channel_data=channel_data
        )

    def url(self, user):
        return "http://127.0.0.1:%d/auth?user=%s" % (
            self.server.server_address[1],
            user,
        )

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Live:
    """A running server (``tests/support.py``) with an app, its Python
    client and an auth endpoint."""

    def __init__(self, name):
        from support import PushiServer

        self.server = PushiServer()
        self.auth = None
        try:
            self.server.start()
            self.app = self.server.create_app(name, client_events=True)
            self.client = self.server.client(self.app)
            self.auth = AuthEndpoint(self.client)
        except Exception:
            self.close()
            raise
        try:
            with urllib.request.urlopen(
                self.server.base_url + "static/pushi.js", timeout=15
            ) as got:
                served = got.status == 200 and b"Pushi" in got.read()
        except OSError:
            served = False
        if not served:
            self.close()
            pytest.skip(
                "the app does not serve extra/js at /static/ yet (GET /static/pushi.js)"
            )

    @property
    def http_base(self):
        return self.server.base_url.rstrip("/")

    @property
    def ws_base(self):
        return self.server.ws_url

    def trigger(self, channel, event, data):
        return self.client.trigger_event(channel=channel, data=data, event=event)

    def example_url(self, user=None, **query):
        params = {"key": self.app["key"], "url": self.ws_base}
        if user:
            params["auth"] = self.auth.url(user)
        params.update(query)
        return self.http_base + "/static/example.html?" + urllib.parse.urlencode(params)

    def close(self):
        if self.auth is not None:
            self.auth.close()
        self.server.stop()
        shutil.rmtree(self.server.data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def live(browser):
    live = Live("browser")
    try:
        yield live
    finally:
        live.close()


@pytest.fixture
def pages(browser):
    """Opens pages on demand and closes them after the test."""
    opened = []

    def open_page(url):
        page = browser.new_page()
        opened.append(page)
        page.goto(url)
        page.add_script_tag(path=os.path.join(BROWSER_DIR, "recorder.js"))
        return page

    try:
        yield open_page
    finally:
        for page in opened:
            if not page.is_closed():
                page.close()


def connect(page, live, user=None, **options):
    """A new Pushi object in the page, as `window.client`, recorded in `window.log`."""
    options = dict(options, baseUrl=live.ws_base)
    if user:
        options["authEndpoint"] = live.auth.url(user)
    page.evaluate(
        """([key, options]) => {
        window.client = new Pushi(key, options);
        window.log = recordPushi(window.client);
    }""",
        [live.app["key"], options],
    )
    page.wait_for_function("() => window.client.state === 'connected'", timeout=15000)


def wait_subscribed(page, *names, client="client"):
    page.wait_for_function(
        """([client, names]) => names.every(name => {
            const channel = window[client].channel(name);
            return channel && channel.subscribed;
        })""",
        arg=[client, list(names)],
        timeout=15000,
    )


def subscription_errors(page):
    return page.evaluate("() => log.filter(e => e.kind === 'subscription_error')")


def test_e2e_example_page_connects_receives_and_sends(live, pages):
    page = pages(live.example_url(user="alice", connect="1", channel="global"))
    page.wait_for_function(
        "() => window.pushi && window.pushi.state === 'connected'", timeout=15000
    )
    page.evaluate("() => { window.log = recordPushi(window.pushi); }")
    page.wait_for_function(
        "() => window.pushi.channel('global').subscribed", timeout=15000
    )
    assert page.text_content("#state") == "connected"

    live.trigger("global", "hello", "from REST")
    page.wait_for_function(
        "() => log.some(e => e.kind === 'message' && e.event === 'hello' && e.data === 'from REST')",
        timeout=15000,
    )

    # the page's own form: subscribe to a private channel and send on it, with echo
    page.fill("#channel", "private-example")
    page.click("#subscribe")
    page.wait_for_function(
        "() => window.pushi.channel('private-example').subscribed", timeout=15000
    )
    page.fill("#send-channel", "private-example")
    page.fill("#event", "chat")
    page.fill("#data", "hello from the page")
    page.click("#send")
    page.wait_for_function(
        "() => log.some(e => e.kind === 'message' && e.channel === 'private-example'"
        " && e.data === 'hello from the page')",
        timeout=15000,
    )
    assert "from REST" in page.text_content("#log")

    os.makedirs(ARTIFACTS_DIR, exist_ok=True)
    path = os.path.join(ARTIFACTS_DIR, "pushi-js-example.png")
    page.screenshot(path=path, full_page=True)
    assert os.path.getsize(path) > 1000


def log_lines(page, kind):
    return page.eval_on_selector_all(
        "#log li." + kind, "items => items.map(item => item.textContent)"
    )


def test_e2e_example_page_subscribes_shows_refusals_and_fits_1280(live, pages):
    """``connect=1`` alone subscribed to nothing; Send defaulted to a public
    channel and said "sent" next to the server's refusal; Disconnect
    wrapped to a line of its own at 1280 px."""
    page = pages(live.example_url(connect="1"))
    page.set_viewport_size({"width": 1280, "height": 800})
    page.wait_for_function(
        "() => window.pushi && window.pushi.channel('my-channel')"
        " && window.pushi.channel('my-channel').subscribed",
        timeout=15000,
    )
    live.trigger("my-channel", "hello", "from REST")
    page.wait_for_function(
        "() => document.querySelector('#log').textContent"
        ".includes('my-channel / hello: from REST')",
        timeout=15000,
    )

    # each row of fields and buttons is one line at 1280 px
    for first, last in (("#key", "#disconnect"), ("#channel", "#unsubscribe")):
        top, bottom = (
            page.locator(first).bounding_box(),
            page.locator(last).bounding_box(),
        )
        assert (
            abs((top["y"] + top["height"] / 2) - (bottom["y"] + bottom["height"] / 2))
            < 4
        ), (first, top, last, bottom)
    top, bottom = (
        page.locator("#send-channel").bounding_box(),
        page.locator("#send").bounding_box(),
    )
    assert (
        abs((top["y"] + top["height"] / 2) - (bottom["y"] + bottom["height"] / 2)) < 4
    )

    # no auth endpoint: the page says what sending needs, and sends nothing
    assert page.input_value("#send-channel").startswith("private-")
    page.click("#send")
    page.wait_for_function(
        "() => document.querySelectorAll('#log li.refused').length === 1"
    )
    assert "needs an Auth endpoint" in log_lines(page, "refused")[0]
    assert log_lines(page, "sent") == []

    # an app with client events off: the server's refusal, not "sent"
    quiet = live.server.create_app("quiet")
    quiet_auth = AuthEndpoint(live.server.client(quiet))
    try:
        params = {
            "key": quiet["key"],
            "url": live.ws_base,
            "auth": quiet_auth.url("bob"),
            "connect": "1",
        }
        refused = pages(
            live.http_base + "/static/example.html?" + urllib.parse.urlencode(params)
        )
        refused.wait_for_function(
            "() => window.pushi && window.pushi.state === 'connected'", timeout=15000
        )
        refused.click("#send")
        refused.wait_for_function(
            "() => document.querySelector('#log li.refused')", timeout=15000
        )
        (line,) = log_lines(refused, "refused")
        assert "Client events are off for this app" in line, line
        time.sleep(2)  # past the page's wait for a refusal: still no "sent"
        assert log_lines(refused, "sent") == [], log_lines(refused, "sent")
    finally:
        quiet_auth.close()

    # client events on and an auth endpoint: the default channel sends
    page.fill("#auth", live.auth.url("alice"))
    page.click("#connect")
    page.wait_for_function("() => window.pushi.state === 'connected'", timeout=15000)
    page.fill("#data", "hello from the page")
    page.click("#send")
    page.wait_for_function(
        "() => document.querySelector('#log li.sent')", timeout=15000
    )
    # Connect subscribed to the Subscribe channel again
    assert page.evaluate("() => window.pushi.channel('my-channel').subscribed")
    (sent,) = log_lines(page, "sent")
    assert "private-my-channel / chat: hello from the page" in sent, sent
    assert "echoed back" in sent, sent

    os.makedirs(ARTIFACTS_DIR, exist_ok=True)
    path = os.path.join(ARTIFACTS_DIR, "pushi-js-example-1280.png")
    page.screenshot(path=path, full_page=True)
    refused.screenshot(
        path=os.path.join(ARTIFACTS_DIR, "pushi-js-example-refused.png"),
        full_page=True,
    )


def test_e2e_private_and_presence_channels_with_member_events(live, pages):
    alice = pages(live.http_base + "/static/example.html")
    connect(alice, live, user="alice")
    alice.evaluate(
        "() => { client.subscribe('private-orders'); client.subscribe('presence-team'); }"
    )
    wait_subscribed(alice, "private-orders", "presence-team")
    assert subscription_errors(alice) == []
    assert alice.evaluate("() => client.channel('presence-team').members") == {
        "alice": {"name": "Alice"}
    }

    live.trigger("private-orders", "created", {"id": 7})
    alice.wait_for_function(
        "() => log.some(e => e.kind === 'message' && e.channel === 'private-orders'"
        " && e.event === 'created')",
        timeout=15000,
    )
    assert alice.evaluate(
        "() => log.find(e => e.kind === 'message' && e.event === 'created').data"
    ) == {"id": 7}

    bob = pages(live.http_base + "/static/example.html")
    connect(bob, live, user="bob")
    bob.evaluate("() => client.subscribe('presence-team')")
    wait_subscribed(bob, "presence-team")
    assert sorted(
        bob.evaluate("() => Object.keys(client.channel('presence-team').members)")
    ) == [
        "alice",
        "bob",
    ]
    alice.wait_for_function(
        "() => log.some(e => e.kind === 'member_added' && e.data.user_id === 'bob')",
        timeout=15000,
    )
    assert alice.evaluate("() => client.channel('presence-team').members.bob") == {
        "name": "Bob"
    }

    bob.close()
    alice.wait_for_function(
        "() => log.some(e => e.kind === 'member_removed' && e.data.user_id === 'bob')",
        timeout=30000,
    )
    assert alice.evaluate(
        "() => Object.keys(client.channel('presence-team').members)"
    ) == ["alice"]


def test_e2e_peer_channel_send_and_receive(live, pages):
    alice = pages(live.http_base + "/static/example.html")
    bob = pages(live.http_base + "/static/example.html")
    connect(alice, live, user="alice")
    connect(bob, live, user="bob")
    alice.evaluate("() => client.subscribe('presence-chat')")
    wait_subscribed(alice, "presence-chat")
    bob.evaluate("() => client.subscribe('presence-chat')")
    peer = "peer-chat:alice&bob"
    wait_subscribed(alice, peer)
    wait_subscribed(bob, peer)
    assert alice.evaluate("name => client.channel(name).kind", peer) == "peer"

    assert alice.evaluate(
        "name => client.channel(name).send('hi', 'hello bob', true, false)", peer
    )
    for page in (bob, alice):  # bob receives it, alice gets her echo
        page.wait_for_function(
            """name => log.some(e => e.kind === 'message' && e.channel === name
                && e.event === 'hi' && e.data === 'hello bob')""",
            arg=peer,
            timeout=15000,
        )
    bob.evaluate("name => client.channel(name).send('hi', 'hello alice')", peer)
    alice.wait_for_function(
        "name => log.some(e => e.kind === 'message' && e.channel === name && e.data === 'hello alice')",
        arg=peer,
        timeout=15000,
    )
    # no echo asked: bob does not get his own message back
    time.sleep(0.5)
    assert (
        bob.evaluate(
            "name => log.filter(e => e.kind === 'message' && e.data === 'hello alice').length",
            peer,
        )
        == 0
    )

    # bob leaves the presence channel: the server closes the peer channel for alice
    bob.evaluate("() => client.unsubscribe('presence-chat')")
    alice.wait_for_function(
        "name => !client.channel(name) && log.some(e => e.kind === 'unsubscribe' && e.channel === name)",
        arg=peer,
        timeout=15000,
    )


def test_e2e_persisted_send_and_latest(live, pages):
    page = pages(live.http_base + "/static/example.html")
    connect(page, live, user="carol", latestTimeout=3000)
    page.evaluate("() => client.subscribe('private-history')")
    wait_subscribed(page, "private-history")
    page.evaluate(
        """() => {
        const channel = client.channel('private-history');
        channel.send('note', 'first', false, true);
        channel.send('note', 'second', false, true);
    }"""
    )
    fetch = """() => client.channel('private-history').latest(0, 10)
        .then(events => ({events}), error => ({error: error.message}))"""
    errors = page.evaluate("() => log.filter(e => e.kind === 'error').map(e => e.data)")

    def both_stored():
        answer = page.evaluate(fetch)
        return answer if "error" in answer or len(answer["events"]) >= 2 else None

    answer = wait_until(both_stored, 15, 0.3, "two events stored (%s)" % errors)
    assert "error" not in answer, (answer, errors)
    assert "first" in json.dumps(answer["events"]) and "second" in json.dumps(
        answer["events"]
    )


def test_e2e_reconnects_and_resubscribes_after_a_server_restart(browser, pages):
    live = Live("restart")
    try:
        page = pages(live.http_base + "/static/example.html")
        connect(page, live, user="dave", minReconnectDelay=200, maxReconnectDelay=1000)
        page.evaluate(
            "() => ['global', 'private-r', 'presence-r'].forEach(n => client.subscribe(n))"
        )
        wait_subscribed(page, "global", "private-r", "presence-r")
        first_socket = page.evaluate("() => client.socketId")

        live.server.restart()
        page.wait_for_function(
            "() => log.some(e => e.kind === 'reconnecting')", timeout=15000
        )
        page.wait_for_function(
            "() => client.state === 'connected' && client.socketId !== %s"
            % json.dumps(first_socket),
            timeout=30000,
        )
        wait_subscribed(page, "global", "private-r", "presence-r")
        assert page.evaluate("() => client.channel('presence-r').members") == {
            "dave": {"name": "Dave"}
        }

        live.trigger("global", "after", "restart")
        live.trigger("private-r", "after", "restart private")
        page.wait_for_function(
            "() => ['restart', 'restart private'].every(d => log.some(e => e.kind === 'message' && e.data === d))",
            timeout=15000,
        )
        states = page.evaluate(
            "() => log.filter(e => e.kind === 'state_change').map(e => e.data.current)"
        )
        assert states[-2:] == ["reconnecting", "connected"] or "reconnecting" in states
    finally:
        live.close()


class CuttableProxy:
    """A TCP relay to the server's WebSocket port that the test can cut:
    ``down()`` drops every relayed connection and refuses new ones (a
    network gone), ``up()`` lets them through again."""

    def __init__(self, port):
        import socket

        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = []
        self.passing = True
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if not self.passing:
                    client.close()
                    continue
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
                self.open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self.pump, args=(source, sink), daemon=True
                ).start()

    @staticmethod
    def pump(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            try:
                end.close()
            except OSError:
                pass

    def down(self):
        import socket

        with self.lock:
            self.passing = False
            for end in self.open:
                try:
                    end.shutdown(socket.SHUT_RDWR)
                    end.close()
                except OSError:
                    pass
            self.open = []

    def up(self):
        with self.lock:
            self.passing = True

    def close(self):
        self.down()
        self.listener.close()


def test_e2e_recovers_missed_events_after_a_dropped_connection_and_a_restart(
    browser, pages
):
    """The page subscribes once and only listens: when its connection drops,
    the events published meanwhile still reach it, once each and in order
    (``recovered`` true); after a server restart (a new epoch) the stored
    ones are sent from the store and the channel says ``recovered`` false
    with the reason."""
    live = Live("recovery")
    proxy = CuttableProxy(live.server.server_port)
    try:
        page = pages(live.http_base + "/static/example.html")
        page.evaluate(
            """([key, options]) => {
            window.client = new Pushi(key, options);
            window.log = recordPushi(window.client);
            window.client.subscribe('news');
        }""",
            [
                live.app["key"],
                {
                    "baseUrl": "ws://127.0.0.1:%d/" % proxy.port,
                    "minReconnectDelay": 200,
                    "maxReconnectDelay": 500,
                },
            ],
        )
        wait_subscribed(page, "news")
        received = (
            "() => log.filter(e => e.kind === 'message' && e.channel === 'news')"
            ".map(e => e.data)"
        )

        def wait_for(count):
            try:
                page.wait_for_function(
                    "() => (%s)().length >= %d" % (received, count), timeout=20000
                )
            except Exception as error:
                raise AssertionError(page.evaluate("() => log")) from error

        for number in range(1, 4):
            live.trigger("news", "said", str(number))
        wait_for(3)

        # a dropped connection: the page reconnects and recovers by itself
        proxy.down()
        page.wait_for_function("() => client.state !== 'connected'", timeout=15000)
        for number in range(4, 9):
            live.trigger("news", "said", str(number))
        proxy.up()
        wait_for(8)
        page.wait_for_function("() => client.channel('news').subscribed")
        assert page.evaluate("() => client.channel('news').recovered") is True
        recovered = page.evaluate(
            "() => log.filter(e => e.kind === 'subscribe').map(e => e.data.recovered)"
        )
        assert recovered[-1] is True

        # a restart: a new epoch, the stored events come from the store
        proxy.down()
        live.server.restart()
        for number in range(9, 12):
            live.trigger("news", "said", str(number))
        proxy.up()
        wait_for(11)
        page.wait_for_function("() => client.channel('news').subscribed")
        data = page.evaluate("() => client.channel('news').data")
        assert data["recovered"] is False and data["reason"] == "new_epoch"
        assert data["store"] is True
        live.trigger("news", "said", "12")
        wait_for(12)
        time.sleep(0.5)
        assert page.evaluate(received) == [str(number) for number in range(1, 13)]
    finally:
        proxy.close()
        live.close()
