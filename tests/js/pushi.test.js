/**
 * pushi.js's client logic under Node (`node --test tests/js/`), with the
 * stand-in WebSocket of the browser tests (tests/browser/fake_socket.js)
 * playing the server: back-off, URLs, channel kinds, members, message
 * parsing, the recovery position each channel keeps, and what each close
 * code leads to.  What needs a page (the page's host, fetch, the example
 * page, a real server) stays in tests/browser/test_pushi_js.py.
 */
"use strict";

const test = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const Pushi = require(path.join(__dirname, "..", "..", "extra", "js", "pushi.js"));
const { FakeSocket, until } = require(path.join(__dirname, "..", "browser", "fake_socket.js"));

// every client a test made: disconnected afterwards, so that no timer
// keeps the process alive
const clients = [];

test.afterEach(() => {
    while (clients.length) {
        clients.pop().disconnect();
    }
    FakeSocket.reset();
});

function client(options) {
    const pushi = new Pushi(
        "key",
        Object.assign({ baseUrl: "ws://x/", WebSocket: FakeSocket }, options)
    );
    clients.push(pushi);
    return pushi;
}

function record(pushi) {
    const log = [];
    ["message", "error", "subscribe", "reconnecting", "disconnected"].forEach((kind) =>
        pushi.bind(kind, (event, data, channel) => log.push({ kind, event, data, channel }))
    );
    return log;
}

function subscribed(socket, channel, data) {
    socket.serverSend({
        event: "pusher_internal:subscription_succeeded",
        channel,
        data: JSON.stringify(data || {}),
    });
}

function subscribes(socket) {
    return socket.sentMessages().filter((message) => message.event === "pusher:subscribe");
}

test("the back-off is exponential, capped and jittered", () => {
    const options = { minReconnectDelay: 100, maxReconnectDelay: 1000, reconnectJitter: 0.5 };
    const attempts = [0, 1, 2, 3, 4, 5, 40];
    assert.deepEqual(
        attempts.map((attempt) => Pushi.backoff(attempt, options, 0)),
        [100, 200, 400, 800, 1000, 1000, 1000]
    );
    assert.deepEqual(
        attempts.map((attempt) => Pushi.backoff(attempt, options, 1)),
        [50, 100, 200, 400, 500, 500, 500]
    );
    const random = Array.from({ length: 200 }, () => Pushi.backoff(3, options));
    assert.ok(random.every((delay) => delay >= 400 && delay <= 800));
    assert.ok(new Set(random).size > 10);
    const first = Pushi.backoff(0);
    assert.ok(first >= 500 && first <= 1000, first);
});

test("URLs from a base URL, from host and port, and tls", () => {
    assert.equal(Pushi.buildUrl("k", { baseUrl: "ws://h:1" }), "ws://h:1/k");
    assert.equal(Pushi.buildUrl("k", { baseUrl: "ws://h:1/", tls: true }), "wss://h:1/k");
    assert.equal(Pushi.buildUrl("k", { baseUrl: "https://h/" }), "wss://h/k");
    assert.equal(
        Pushi.buildUrl("k", { host: "push.example.com", port: 443, tls: true }),
        "wss://push.example.com:443/k"
    );
});

test("channel kinds by name", () => {
    const names = {
        global: "public",
        "private-a": "private",
        "private-encrypted-a": "private",
        "presence-room": "presence",
        "personal-42": "personal",
        "peer-room:a&b": "peer",
        "peer-review": "public",
        "cache-x": "public",
    };
    for (const name in names) {
        assert.equal(Pushi.channelKind(name), names[name], name);
    }
});

test("presence members in the Pusher and the Pushi shapes", () => {
    assert.deepEqual(Pushi.readMembers({ presence: { hash: { 1: { n: "a" } } } }), {
        1: { n: "a" },
    });
    assert.deepEqual(
        Pushi.readMembers({ members: { a: { user_id: "a", user_info: { n: 1 } }, b: null } }),
        { a: { n: 1 }, b: null }
    );
    assert.deepEqual(Pushi.readMembers({ members: [{ user_id: 7, user_info: "x" }, "z"] }), {
        7: "x",
        z: null,
    });
    assert.deepEqual(Pushi.readMembers({ members: '["y"]' }), { y: null });
    assert.deepEqual(Pushi.readMembers({}), {});
    assert.deepEqual(Pushi.readMembers(null), {});
});

test("loads with require() and talks through options.WebSocket", () => {
    const pushi = client({ baseUrl: "ws://127.0.0.1:9090" });
    const log = record(pushi);
    pushi.subscribe("news");
    const socket = FakeSocket.last();
    assert.equal(socket.url, "ws://127.0.0.1:9090/key");
    socket.handshake("1.1");
    assert.equal(pushi.state, "connected");
    assert.equal(pushi.socketId, "1.1");
    assert.deepEqual(socket.sentMessages(), [
        { event: "pusher:subscribe", data: { channel: "news" } },
    ]);
    socket.serverSend({ event: "hi", channel: "news", data: "x" });
    assert.deepEqual(
        log.filter((entry) => entry.kind === "message").map((entry) => [entry.event, entry.data, entry.channel]),
        [["hi", "x", "news"]]
    );
    assert.equal(typeof Pushi.VERSION, "string");
});

test("message data: JSON objects and arrays are decoded, other text stays text", () => {
    const pushi = client();
    const log = record(pushi);
    pushi.subscribe("news");
    const socket = FakeSocket.last();
    socket.handshake();
    for (const data of ['{"a":1}', "[1,2]", "123", "[not json", " {\"b\":2}", "plain"]) {
        socket.serverSend({ event: "e", channel: "news", data });
    }
    assert.deepEqual(
        log.filter((entry) => entry.kind === "message").map((entry) => entry.data),
        [{ a: 1 }, [1, 2], "123", "[not json", { b: 2 }, "plain"]
    );
    const raw = client({ decodeData: false });
    const rawLog = record(raw);
    FakeSocket.last().handshake();
    FakeSocket.last().serverSend({ event: "e", data: '{"a":1}' });
    assert.deepEqual(rawLog.filter((entry) => entry.kind === "message")[0].data, '{"a":1}');
});

test("garbage from the server is ignored, protocol events are never messages", () => {
    const pushi = client();
    const log = record(pushi);
    const socket = FakeSocket.last();
    socket.handshake();
    for (const garbage of ["not json", "null", "[]", "42", '{"data":"no event"}', '{"event":7}']) {
        socket.serverSend(garbage);
    }
    socket.serverSend({ event: "pusher:something_new", data: "{}" });
    assert.deepEqual(
        log.filter((entry) => entry.kind === "message"),
        []
    );
    socket.serverSend({ event: "pusher:error", data: JSON.stringify({ code: 4301, message: "slow down" }) });
    assert.deepEqual(
        log.filter((entry) => entry.kind === "error").map((entry) => entry.data),
        [{ code: 4301, message: "slow down" }]
    );
    assert.equal(pushi.state, "connected");
});

test("each channel keeps its position and drops what it already has", () => {
    const pushi = client();
    const log = record(pushi);
    const channel = pushi.subscribe("news");
    const socket = FakeSocket.last();
    socket.handshake();
    subscribed(socket, "news", { epoch: "E1", offset: 4 });
    assert.deepEqual(channel.position, { epoch: "E1", offset: 4, mid: undefined });
    socket.serverSend({ event: "e", channel: "news", data: "5", epoch: "E1", offset: 5, mid: "m5" });
    socket.serverSend({ event: "e", channel: "news", data: "5 again", epoch: "E1", offset: 5 });
    socket.serverSend({ event: "e", channel: "news", data: "3", epoch: "E1", offset: 3 });
    socket.serverSend({ event: "e", channel: "news", data: "6", epoch: "E1", offset: 6 });
    // a new epoch (the server lost the channel's history): taken as it comes
    socket.serverSend({ event: "e", channel: "news", data: "1", epoch: "E2", offset: 1 });
    assert.deepEqual(
        log.filter((entry) => entry.kind === "message").map((entry) => entry.data),
        ["5", "6", "1"]
    );
    assert.deepEqual(channel.position, { epoch: "E2", offset: 1, mid: "m5" });
});

test("after a lost connection each channel asks for what it missed", async () => {
    const pushi = client({ minReconnectDelay: 5, maxReconnectDelay: 5, reconnectJitter: 0 });
    const news = pushi.subscribe("news");
    pushi.subscribe("personal-7", {});
    let socket = FakeSocket.last();
    socket.handshake("1.1");
    subscribed(socket, "news", { epoch: "E1", offset: 0 });
    socket.serverSend({ event: "e", channel: "news", data: "x", epoch: "E1", offset: 9, mid: "m9" });
    socket.serverClose(1006);
    assert.equal(pushi.state, "reconnecting");
    assert.equal(news.subscribed, false);
    await until(() => FakeSocket.instances.length === 2, 2000);
    socket = FakeSocket.last();
    socket.handshake("2.2");
    assert.deepEqual(subscribes(socket), [
        {
            event: "pusher:subscribe",
            data: { channel: "news", since: { epoch: "E1", offset: 9, mid: "m9" } },
        },
    ]);
    // not recovered: the client goes on from the channel's position now
    subscribed(socket, "news", { epoch: "E3", offset: 20, recovered: false });
    assert.equal(news.recovered, false);
    assert.deepEqual(news.position, { epoch: "E3", offset: 20, mid: "m9" });
});

test("a recovered subscription keeps the position the missed events move", async () => {
    const pushi = client({ minReconnectDelay: 5, maxReconnectDelay: 5, reconnectJitter: 0 });
    const news = pushi.subscribe("news");
    let socket = FakeSocket.last();
    socket.handshake();
    subscribed(socket, "news", { epoch: "E1", offset: 3 });
    socket.serverClose(1006);
    await until(() => FakeSocket.instances.length === 2, 2000);
    socket = FakeSocket.last();
    socket.handshake();
    subscribed(socket, "news", { epoch: "E1", offset: 8, recovered: true });
    assert.equal(news.recovered, true);
    assert.deepEqual(news.position, { epoch: "E1", offset: 3, mid: undefined });
    socket.serverSend({ event: "e", channel: "news", data: "4", epoch: "E1", offset: 4 });
    assert.equal(news.position.offset, 4);
});

test("close codes: 4000-4099 stop, 4200-4299 come back at once, others back off", async () => {
    const refused = client({ minReconnectDelay: 5000 });
    const refusedLog = record(refused);
    FakeSocket.last().handshake();
    FakeSocket.last().serverClose(4001, "unknown app");
    assert.equal(refused.state, "disconnected");
    assert.deepEqual(
        refusedLog.filter((entry) => entry.kind === "error").map((entry) => entry.data),
        [{ code: 4001, message: "unknown app" }]
    );
    assert.equal(refused.lastClose.willReconnect, false);
    FakeSocket.reset();

    const now = client({ minReconnectDelay: 5000 });
    const nowLog = record(now);
    FakeSocket.last().handshake();
    FakeSocket.last().serverClose(4200, "going away");
    const [reconnecting] = nowLog.filter((entry) => entry.kind === "reconnecting");
    assert.equal(reconnecting.data.delay, 0);
    await until(() => FakeSocket.instances.length === 2, 1000);
    FakeSocket.reset();

    const later = client({ minReconnectDelay: 5000, reconnectJitter: 0 });
    const laterLog = record(later);
    FakeSocket.last().handshake();
    FakeSocket.last().serverClose(1006);
    assert.deepEqual(
        laterLog.filter((entry) => entry.kind === "reconnecting").map((entry) => entry.data),
        [{ attempt: 1, delay: 5000, code: 1006, reason: "" }]
    );
    assert.equal(later.state, "reconnecting");
});

test("maxReconnectAttempts: gives up after that many failed attempts", async () => {
    const pushi = client({
        minReconnectDelay: 1,
        maxReconnectDelay: 1,
        reconnectJitter: 0,
        maxReconnectAttempts: 2,
    });
    FakeSocket.last().serverClose(1006);
    await until(() => FakeSocket.instances.length === 2, 1000);
    FakeSocket.last().serverClose(1006);
    await until(() => FakeSocket.instances.length === 3, 1000);
    FakeSocket.last().serverClose(1006);
    assert.equal(pushi.state, "disconnected");
    assert.equal(FakeSocket.instances.length, 3);
});
