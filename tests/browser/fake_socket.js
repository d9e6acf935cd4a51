/**
 * A stand-in WebSocket for the client-logic tests of pushi.js that need no
 * server: pass it as `options.WebSocket`, then play the server's part with
 * `handshake`, `serverSend` and `serverClose`, and read what the client sent
 * with `sentMessages`.  A plain <script> in the browser tests (globals
 * FakeSocket, sleep, until), a CommonJS module for tests/js/ under Node.
 */
(function () {
    "use strict";

    function FakeSocket(url) {
        this.url = url;
        this.readyState = 0;
        this.sent = [];
        this.closedByClient = null;
        this.onmessage = this.onclose = this.onerror = this.onopen = null;
        FakeSocket.instances.push(this);
    }

    FakeSocket.instances = [];

    FakeSocket.last = function () {
        return FakeSocket.instances[FakeSocket.instances.length - 1];
    };

    FakeSocket.reset = function () {
        FakeSocket.instances = [];
    };

    FakeSocket.prototype.send = function (text) {
        if (this.readyState !== 1) {
            throw new Error("send on a socket that is not open");
        }
        this.sent.push(text);
    };

    FakeSocket.prototype.close = function (code) {
        this.readyState = 3;
        this.closedByClient = code === undefined ? 1005 : code;
    };

    FakeSocket.prototype.sentMessages = function () {
        return this.sent.map(function (text) {
            return JSON.parse(text);
        });
    };

    FakeSocket.prototype.serverSend = function (message) {
        this.readyState = 1;
        if (this.onmessage) {
            this.onmessage({ data: typeof message === "string" ? message : JSON.stringify(message) });
        }
    };

    FakeSocket.prototype.handshake = function (socketId, activityTimeout) {
        this.readyState = 1;
        if (this.onopen) {
            this.onopen({});
        }
        this.serverSend({
            event: "pusher:connection_established",
            data: JSON.stringify({
                socket_id: socketId || "123.456",
                activity_timeout: activityTimeout === undefined ? 120 : activityTimeout
            })
        });
    };

    FakeSocket.prototype.serverClose = function (code, reason) {
        this.readyState = 3;
        if (this.onclose) {
            this.onclose({ code: code, reason: reason || "", wasClean: code === 1000 });
        }
    };

    function sleep(ms) {
        return new Promise(function (resolve) {
            setTimeout(resolve, ms);
        });
    }

    // waits until predicate() is truthy, polling every 10 ms
    function until(predicate, timeout) {
        var limit = Date.now() + (timeout || 5000);
        return new Promise(function (resolve, reject) {
            (function poll() {
                var value;
                try {
                    value = predicate();
                } catch (error) {
                    value = false;
                }
                if (value) {
                    resolve(value);
                } else if (Date.now() > limit) {
                    reject(new Error("timed out waiting for " + predicate));
                } else {
                    setTimeout(poll, 10);
                }
            })();
        });
    }

    // a <script> in the browser tests' page, a module for tests/js/ in Node
    if (typeof module === "object" && module && module.exports) {
        module.exports = { FakeSocket: FakeSocket, sleep: sleep, until: until };
    } else {
        window.FakeSocket = FakeSocket;
        window.sleep = sleep;
        window.until = until;
    }
})();
