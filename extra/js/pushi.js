/**
 * pushi.js: the browser client of Pushi, a self-hosted real-time push server.
 *
 * Speaks the Pushi dialect of the protocol (WebSocket path `/<app_key>`):
 * public, private, presence, personal and peer channels, client messages with
 * echo and persistence, the last persisted events of a channel, presence
 * members, pings both ways and reconnection with exponential back-off.
 * After a reconnection every channel is subscribed again from where it
 * stopped: the server sends the events missed meanwhile, or says it cannot
 * (`recovered` false on the channel's "subscribe" event: reload its state).
 *
 * No dependency, ES5 syntax, works as a plain <script> (global `Pushi`) and as
 * a CommonJS module (`module.exports`, pass `options.WebSocket` outside a
 * browser).
 *
 * Quick start:
 *
 *     var pushi = new Pushi("YOU_APP_KEY", { baseUrl: "ws://127.0.0.1:9090/" });
 *     pushi.bind("message", function(event, data) { document.body.append(data); });
 *
 * Every listener, on the Pushi object or on a Channel, is called as
 * `listener(event, data, channelName, channel)` with `this` set to the object
 * it was bound on. Channel events reach the listeners bound to their own name
 * and the listeners of "message". Life-cycle events (reserved names):
 * "connecting", "connected" (alias "connect"), "disconnected" (alias
 * "disconnect"), "reconnecting", "state_change", "error", "subscribe",
 * "subscription_error", "unsubscribe", "member_added", "member_removed",
 * "latest".
 *
 * Options (all optional):
 *   baseUrl          WebSocket base URL, the app key is appended
 *                    (default ws[s]://<page host>:9090/)
 *   host, port, tls  build the base URL when baseUrl is not given; tls: true
 *                    also turns a ws:// or http:// baseUrl into wss://
 *   authEndpoint     URL of your server that signs private, presence and
 *                    personal subscriptions (POST socket_id, channel_name and
 *                    channel_data, answers {"auth": "...", "channel_data": "..."})
 *   authTransport    "form" (default, application/x-www-form-urlencoded) or "json"
 *   authHeaders      extra request headers for the auth endpoint
 *   authParams       extra body fields (object, or function(channelName))
 *   withCredentials  send cookies to a cross-origin auth endpoint (false)
 *   authorizer       function(channelName, socketId, channelData, callback)
 *                    replacing the HTTP call; callback(error, {auth, channel_data})
 *   authTimeout      ms for the auth endpoint to answer (10000)
 *   connectTimeout   ms from opening the socket to the handshake (10000)
 *   activityTimeout  ms of silence before the client pings (default: the
 *                    server's activity_timeout from the handshake)
 *   pongTimeout      ms to wait for any answer to a ping (30000)
 *   latestTimeout    ms to wait for the answer to Channel.latest (10000)
 *   reconnect        reconnect after a lost connection (true)
 *   minReconnectDelay, maxReconnectDelay  back-off bounds in ms (1000, 30000)
 *   reconnectJitter  fraction of the delay taken off at random (0.5)
 *   maxReconnectAttempts  give up after that many failed attempts (Infinity)
 *   stableAfter      ms a connection must last before the back-off starts
 *                    afresh (10000): a server that closes every new socket at
 *                    once, even with 42xx ("reconnect now"), meets a growing
 *                    back-off, not a tight loop
 *   autoConnect      connect from the constructor (true)
 *   decodeData       JSON-decode event data strings holding an object or an
 *                    array (true)
 *   WebSocket        WebSocket constructor (default: the global one)
 *
 * License: Apache License, Version 2.0.
 */
(function (root, factory) {
    var Pushi = factory(root);
    if (typeof module === "object" && module && module.exports) {
        module.exports = Pushi;
    }
    if (root) {
        root.Pushi = Pushi;
    }
})(
    typeof globalThis !== "undefined"
        ? globalThis
        : typeof window !== "undefined"
        ? window
        : typeof self !== "undefined"
        ? self
        : this,
    function (root) {
        "use strict";

        var VERSION = "1.0.0";

        var DEFAULTS = {
            port: 9090,
            authTransport: "form",
            withCredentials: false,
            authTimeout: 10000,
            connectTimeout: 10000,
            pongTimeout: 30000,
            latestTimeout: 10000,
            reconnect: true,
            minReconnectDelay: 1000,
            maxReconnectDelay: 30000,
            reconnectJitter: 0.5,
            maxReconnectAttempts: Infinity,
            stableAfter: 10000,
            autoConnect: true,
            decodeData: true
        };

        // activity timeout used until the handshake tells the server's one
        var DEFAULT_ACTIVITY_TIMEOUT = 120000;

        // ------------------------------------------------------------------
        // small helpers
        // ------------------------------------------------------------------

        function extend(target) {
            for (var index = 1; index < arguments.length; index++) {
                var source = arguments[index];
                if (!source) {
                    continue;
                }
                for (var key in source) {
                    if (Object.prototype.hasOwnProperty.call(source, key)) {
                        target[key] = source[key];
                    }
                }
            }
            return target;
        }

        function startsWith(value, prefix) {
            return value.slice(0, prefix.length) === prefix;
        }

        /**
         * Decodes a JSON string, returning the value unchanged when it is not
         * a string or not valid JSON (the protocol carries `data` either way).
         */
        function parseJson(value) {
            if (typeof value !== "string") {
                return value;
            }
            try {
                return JSON.parse(value);
            } catch (error) {
                return value;
            }
        }

        /**
         * Decodes event data: only strings that hold a JSON object or array,
         * so that a plain text message such as "123" stays the text it was.
         */
        function decodeEventData(value) {
            if (typeof value !== "string") {
                return value;
            }
            var first = value.replace(/^\s+/, "").charAt(0);
            if (first !== "{" && first !== "[") {
                return value;
            }
            return parseJson(value);
        }

        function rethrowLater(error) {
            setTimeout(function () {
                throw error;
            }, 0);
        }

        // ------------------------------------------------------------------
        // event emitter shared by Pushi and Channel
        // ------------------------------------------------------------------

        function Emitter() {}

        /**
         * Registers `callback` for `event`; with `oneshot` it runs once.
         * Returns the emitter so that calls may be chained.
         */
        Emitter.prototype.bind = function (event, callback, oneshot) {
            if (typeof callback !== "function") {
                throw new TypeError("callback must be a function");
            }
            var listeners = this._listeners || (this._listeners = {});
            var list = listeners[event] || (listeners[event] = []);
            list.push({ callback: callback, oneshot: !!oneshot });
            return this;
        };

        /** Registers `callback` for the next `event` only. */
        Emitter.prototype.once = function (event, callback) {
            return this.bind(event, callback, true);
        };

        /**
         * Removes `callback` from `event`; without a callback every listener
         * of the event, without arguments every listener of every event.
         */
        Emitter.prototype.unbind = function (event, callback) {
            var listeners = this._listeners;
            if (!listeners) {
                return this;
            }
            if (event === undefined || event === null) {
                this._listeners = {};
                return this;
            }
            if (!callback) {
                delete listeners[event];
                return this;
            }
            var list = listeners[event] || [];
            for (var index = list.length - 1; index >= 0; index--) {
                if (list[index].callback === callback) {
                    list.splice(index, 1);
                }
            }
            if (!list.length) {
                delete listeners[event];
            }
            return this;
        };

        /**
         * Calls the listeners of `name` with `args`. A listener that throws
         * does not stop the others: the error is rethrown asynchronously so
         * that it still shows in the console.
         */
        Emitter.prototype._emit = function (name, args) {
            var listeners = this._listeners && this._listeners[name];
            if (!listeners || !listeners.length) {
                return false;
            }
            var list = listeners.slice();
            for (var index = 0; index < list.length; index++) {
                var listener = list[index];
                if (listener.oneshot) {
                    this.unbind(name, listener.callback);
                }
                try {
                    listener.callback.apply(this, args);
                } catch (error) {
                    rethrowLater(error);
                }
            }
            return true;
        };

        // ------------------------------------------------------------------
        // channel names
        // ------------------------------------------------------------------

        /**
         * Kind of a channel from its name: "public", "private" (including the
         * encrypted and cache variants), "presence", "personal" or "peer".
         */
        function channelKind(name) {
            if (startsWith(name, "private-")) {
                return "private";
            }
            if (startsWith(name, "presence-")) {
                return "presence";
            }
            if (startsWith(name, "personal-")) {
                return "personal";
            }
            // peer-<base>:<a>&<b> only: ":" and "&" are in no other name,
            // so "peer-review" is a public channel, as on the server
            if (/^peer-[^:&]+:[^:&]+&[^:&]+$/.test(name)) {
                return "peer";
            }
            return "public";
        }

        function needsAuth(kind) {
            return kind === "private" || kind === "presence" || kind === "personal";
        }

        /**
         * Normalises the presence members of subscription data into an
         * object mapping user id to user info, reading the Pusher shape
         * (`presence.hash`) or the Pushi one (`members`, an object or a list).
         */
        function readMembers(data) {
            var members = {};
            if (!data || typeof data !== "object") {
                return members;
            }
            var key;
            if (data.presence && data.presence.hash) {
                for (key in data.presence.hash) {
                    members[String(key)] = data.presence.hash[key];
                }
                return members;
            }
            var raw = parseJson(data.members);
            if (raw instanceof Array) {
                for (var index = 0; index < raw.length; index++) {
                    var item = parseJson(raw[index]);
                    if (item && typeof item === "object" && item.user_id !== undefined) {
                        members[String(item.user_id)] =
                            item.user_info === undefined ? null : item.user_info;
                    } else if (item !== null && item !== undefined) {
                        members[String(item)] = null;
                    }
                }
            } else if (raw && typeof raw === "object") {
                for (key in raw) {
                    var value = parseJson(raw[key]);
                    if (value && typeof value === "object" && "user_info" in value) {
                        value = value.user_info;
                    }
                    members[String(key)] = value === undefined ? null : value;
                }
            }
            return members;
        }

        /**
         * Delay in ms before reconnection attempt number `attempt` (0 based):
         * exponential from minReconnectDelay, capped at maxReconnectDelay,
         * minus a random share of at most reconnectJitter of it.
         */
        function backoff(attempt, options, random) {
            options = extend({}, DEFAULTS, options);
            if (random === undefined) {
                random = Math.random();
            }
            var exponent = Math.min(Math.max(attempt, 0), 30);
            var delay = Math.min(
                options.maxReconnectDelay,
                options.minReconnectDelay * Math.pow(2, exponent)
            );
            var jitter = Math.min(Math.max(options.reconnectJitter, 0), 1);
            return Math.round(delay * (1 - jitter * random));
        }

        /**
         * The WebSocket URL for an app key: `<baseUrl><app_key>`, the base
         * built from host, port and tls when no baseUrl is given.
         */
        function buildUrl(appKey, options) {
            options = options || {};
            var base = options.baseUrl;
            var location = root && root.location;
            if (!base) {
                var tls =
                    options.tls !== undefined && options.tls !== null
                        ? !!options.tls
                        : !!(location && location.protocol === "https:");
                var host = options.host || (location && location.hostname) || "127.0.0.1";
                var port = options.port || DEFAULTS.port;
                base = (tls ? "wss" : "ws") + "://" + host + ":" + port + "/";
            } else {
                base = base.replace(/^http(s?):/i, "ws$1:");
                if (options.tls === true) {
                    base = base.replace(/^ws:/i, "wss:");
                }
            }
            if (base.charAt(base.length - 1) !== "/") {
                base += "/";
            }
            return base + encodeURIComponent(appKey);
        }

        // ------------------------------------------------------------------
        // the default authorizer: an HTTP POST to options.authEndpoint
        // ------------------------------------------------------------------

        function encodeForm(params) {
            var parts = [];
            for (var key in params) {
                if (params[key] === undefined || params[key] === null) {
                    continue;
                }
                parts.push(encodeURIComponent(key) + "=" + encodeURIComponent(params[key]));
            }
            return parts.join("&");
        }

        function httpAuthorize(options, params, callback) {
            var done = false;
            function finish(error, result) {
                if (done) {
                    return;
                }
                done = true;
                callback(error, result);
            }
            if (!options.authEndpoint) {
                finish(error("no authEndpoint configured for " + params.channel_name, 0));
                return;
            }
            var Request = root && root.XMLHttpRequest;
            if (!Request) {
                finish(error("XMLHttpRequest is not available, use options.authorizer", 0));
                return;
            }
            var json = options.authTransport === "json";
            var request = new Request();
            request.open("POST", options.authEndpoint, true);
            request.setRequestHeader(
                "Content-Type",
                json ? "application/json" : "application/x-www-form-urlencoded"
            );
            var headers = options.authHeaders || {};
            for (var name in headers) {
                request.setRequestHeader(name, headers[name]);
            }
            request.withCredentials = !!options.withCredentials;
            request.timeout = options.authTimeout;
            request.onload = function () {
                if (request.status < 200 || request.status >= 300) {
                    finish(error("auth endpoint answered " + request.status, request.status));
                    return;
                }
                var answer = parseJson(request.responseText);
                if (!answer || typeof answer !== "object" || typeof answer.auth !== "string") {
                    finish(error("auth endpoint answer has no auth", request.status));
                    return;
                }
                finish(null, answer);
            };
            request.onerror = function () {
                finish(error("auth endpoint unreachable", 0));
            };
            request.ontimeout = function () {
                finish(error("auth endpoint timed out", 0));
            };
            request.send(json ? JSON.stringify(params) : encodeForm(params));
        }

        function error(message, status) {
            var result = new Error(message);
            result.status = status;
            return result;
        }

        // ------------------------------------------------------------------
        // Channel
        // ------------------------------------------------------------------

        /**
         * One channel of a Pushi connection, obtained from `pushi.subscribe`
         * (or created for a peer channel the server joined the socket to).
         *
         * Exposes `name`, `kind`, `subscribed`, `data` (the subscription data
         * object), `members` (user id -> user info, presence channels),
         * `events` (the last persisted events sent on subscription),
         * `presence` and `me` (the channel data this socket subscribed with),
         * `position` (`{epoch, offset, mid}` of the last event received, what
         * a resubscription recovers from) and `recovered` (after a
         * resubscription: true when the missed events were sent, false when
         * they could not be, with the server's `reason` in `data`; null on a
         * first subscription).
         */
        function Channel(pushi, name, options) {
            this.pushi = pushi;
            this.name = name;
            this.kind = channelKind(name);
            this.options = options || {};
            this.subscribed = false;
            this.data = null;
            this.members = {};
            this.events = [];
            this.presence = null;
            this.me = null;
            this.position = null;
            this.recovered = null;
            this._wanted = true;
            this._asked = null;
        }

        Channel.prototype = new Emitter();
        Channel.prototype.constructor = Channel;

        /**
         * Sends an event on this channel. `echo` also delivers it back to
         * this socket, `persist` makes the server store it. Needs the app to
         * allow client events. Returns false when not connected.
         */
        Channel.prototype.send = function (event, data, echo, persist) {
            return this.pushi._send({
                event: event,
                channel: this.name,
                data: data,
                echo: !!echo,
                persist: !!persist
            });
        };

        /**
         * Asks the server for the persisted events of this channel:
         * `callback(events, data)` (events null and data an Error on
         * failure). Without a callback a Promise is returned when available.
         */
        Channel.prototype.latest = function (skip, count, callback) {
            if (typeof skip === "function") {
                callback = skip;
                skip = undefined;
            } else if (typeof count === "function") {
                callback = count;
                count = undefined;
            }
            var self = this;
            var promise = null;
            if (!callback && typeof Promise === "function") {
                promise = new Promise(function (resolve, reject) {
                    callback = function (events, data) {
                        if (events === null) {
                            reject(data);
                        } else {
                            resolve(events);
                        }
                    };
                });
            }
            this.pushi._latest(self, skip || 0, count === undefined ? 10 : count, callback);
            return promise || this;
        };

        /** Leaves the channel; its listeners stay bound to this object. */
        Channel.prototype.unsubscribe = function () {
            this.pushi.unsubscribe(this.name);
            return this;
        };

        /** Number of distinct members of a presence channel. */
        Channel.prototype.memberCount = function () {
            var count = 0;
            for (var key in this.members) {
                count++;
            }
            return count;
        };

        Channel.prototype._dispatch = function (event, data) {
            var args = [event, data, this.name, this];
            this._emit(event, args);
            if (event !== "message") {
                this._emit("message", args);
            }
        };

        Channel.prototype._lifecycle = function (event, data) {
            var args = [event, data, this.name, this];
            this._emit(event, args);
            this.pushi._emit(event, args);
        };

        /**
         * Moves a channel's position to an event's; false for an event at or
         * before it (already received: dropped).
         */
        Channel.prototype._advance = function (message) {
            var position = this.position;
            if (typeof message.offset === "number" && typeof message.epoch === "string") {
                if (position && position.epoch === message.epoch && message.offset <= position.offset) {
                    return false;
                }
                position = this.position = {
                    epoch: message.epoch,
                    offset: message.offset,
                    mid: position ? position.mid : undefined
                };
            }
            if (position && typeof message.mid === "string") {
                position.mid = message.mid;
            }
            return true;
        };

        Channel.prototype._succeeded = function (data) {
            this._asked = null;
            this.subscribed = true;
            this.data = data;
            this.recovered = typeof data.recovered === "boolean" ? data.recovered : null;
            // recovered: the missed events follow and move the position;
            // else the client goes on from the channel's current position
            if (data.recovered !== true && typeof data.epoch === "string") {
                this.position = {
                    epoch: data.epoch,
                    offset: data.offset,
                    mid: this.position ? this.position.mid : undefined
                };
            }
            this.members = readMembers(data);
            this.presence = (data && data.presence) || null;
            var events = data && parseJson(data.events);
            this.events = events instanceof Array ? events : [];
            this._lifecycle("subscribe", data);
        };

        // ------------------------------------------------------------------
        // Pushi
        // ------------------------------------------------------------------

        /**
         * A connection to a Pushi server for one app key. See the header of
         * this file for the options; `callback`, when given, runs on the first
         * successful connection.
         */
        function Pushi(appKey, options, callback) {
            if (!(this instanceof Pushi)) {
                return new Pushi(appKey, options, callback);
            }
            if (typeof options === "function") {
                callback = options;
                options = {};
            }
            this.appKey = appKey;
            this.options = extend({}, DEFAULTS, options);
            this.url = buildUrl(appKey, this.options);
            this.state = "disconnected";
            this.socketId = null;
            this.activityTimeout = null;
            this.channels = {};
            this.socket = null;
            this.attempt = 0;
            this.lastClose = null;
            this._wanted = false;
            this._timers = {};
            // Channel.latest requests: the server reads one at a time per
            // socket, so the others wait here, oldest first
            this._latestQueue = [];
            this._latestSent = null;
            if (callback) {
                this.bind("connected", callback, true);
            }
            this._watchNetwork();
            if (this.options.autoConnect) {
                this.connect();
            }
        }

        Pushi.prototype = new Emitter();
        Pushi.prototype.constructor = Pushi;

        Pushi.VERSION = VERSION;
        Pushi.Channel = Channel;
        Pushi.backoff = backoff;
        Pushi.buildUrl = buildUrl;
        Pushi.channelKind = channelKind;
        Pushi.readMembers = readMembers;

        /** Opens the connection (no-op when already open or opening). */
        Pushi.prototype.connect = function () {
            this._wanted = true;
            if (this.socket) {
                return this;
            }
            this._clearTimer("reconnect");
            this.attempt = 0;
            this._open();
            return this;
        };

        /** Closes the connection for good: no reconnection follows. */
        Pushi.prototype.disconnect = function () {
            this._wanted = false;
            this._clearTimers();
            var socket = this.socket;
            var wasConnected = this.state === "connected";
            if (socket) {
                this._detach(socket);
                try {
                    socket.close(1000);
                } catch (ignored) {}
            }
            this._lost({ code: 1000, reason: "disconnect requested", wasClean: true }, wasConnected);
            return this;
        };

        /**
         * Subscribes to a channel and returns its Channel (the same object on
         * every call for one name). `options.channelData` (object or JSON
         * string) is sent to the auth endpoint for presence channels. Before
         * the connection is up the subscription waits for it, and every
         * channel is subscribed again after a reconnection.
         */
        Pushi.prototype.subscribe = function (name, options) {
            var channel = this.channels[name];
            if (!channel) {
                channel = new Channel(this, name, options);
                this.channels[name] = channel;
            } else if (options) {
                channel.options = options;
            }
            channel._wanted = true;
            var asked = channel._asked !== null && channel._asked === this.socketId;
            if (this.state === "connected" && !channel.subscribed && !asked) {
                this._subscribe(channel);
            }
            return channel;
        };

        /** Leaves a channel by name. */
        Pushi.prototype.unsubscribe = function (name) {
            var channel = this.channels[name];
            if (!channel) {
                return this;
            }
            delete this.channels[name];
            this._failLatest(name, error("unsubscribed", 0));
            channel._wanted = false;
            var wasSubscribed = channel.subscribed;
            channel.subscribed = false;
            if (this.state === "connected") {
                this._send({ event: "pusher:unsubscribe", data: { channel: name } });
            }
            if (wasSubscribed) {
                channel._lifecycle("unsubscribe", null);
            }
            return this;
        };

        /** The Channel of a name, or undefined. */
        Pushi.prototype.channel = function (name) {
            return this.channels[name];
        };

        /** The channels this connection knows, as a list. */
        Pushi.prototype.allChannels = function () {
            var result = [];
            for (var name in this.channels) {
                result.push(this.channels[name]);
            }
            return result;
        };

        // -- socket life ---------------------------------------------------

        /**
         * When the browser says the network is back, a pending reconnection
         * is tried at once instead of waiting for its back-off delay.
         */
        Pushi.prototype._watchNetwork = function () {
            var self = this;
            if (!root || typeof root.addEventListener !== "function") {
                return;
            }
            root.addEventListener("online", function () {
                if (self._wanted && !self.socket && self._timers.reconnect) {
                    self._clearTimer("reconnect");
                    self._open();
                }
            });
        };

        Pushi.prototype._open = function () {
            var Socket = this.options.WebSocket || (root && root.WebSocket);
            var self = this;
            if (!Socket) {
                throw new Error("no WebSocket implementation, pass options.WebSocket");
            }
            this._setState(this.attempt > 0 ? "reconnecting" : "connecting");
            this._emit("connecting", ["connecting", { url: this.url, attempt: this.attempt }, null, null]);
            var socket;
            try {
                socket = new Socket(this.url);
            } catch (failure) {
                this._onClose(null, { code: 1006, reason: String(failure), wasClean: false });
                return;
            }
            this.socket = socket;
            socket.onmessage = function (event) {
                if (self.socket === socket) {
                    self._onMessage(event.data);
                }
            };
            socket.onclose = function (event) {
                if (self.socket === socket) {
                    self._onClose(socket, event);
                }
            };
            socket.onerror = function () {
                // a close event always follows, it does the work
            };
            this._setTimer("connect", this.options.connectTimeout, function () {
                self._abort(1006, "connection timed out");
            });
        };

        Pushi.prototype._detach = function (socket) {
            socket.onmessage = socket.onclose = socket.onerror = socket.onopen = null;
            if (this.socket === socket) {
                this.socket = null;
            }
        };

        /** Drops the current socket as if the server had closed it with `code`. */
        Pushi.prototype._abort = function (code, reason) {
            var socket = this.socket;
            if (!socket) {
                return;
            }
            this._detach(socket);
            try {
                socket.close(1000);
            } catch (ignored) {}
            this._onClose(socket, { code: code, reason: reason, wasClean: false });
        };

        Pushi.prototype._onClose = function (socket, event) {
            var wasConnected = this.state === "connected";
            if (socket) {
                this._detach(socket);
            }
            this.socket = null;
            this._clearTimers();
            var close = {
                code: event && event.code !== undefined ? event.code : 1006,
                reason: (event && event.reason) || "",
                wasClean: !!(event && event.wasClean)
            };
            var code = close.code;
            if (code >= 4000 && code <= 4099) {
                // the server says: do not come back
                this._wanted = false;
                this._emit("error", ["error", { code: code, message: close.reason }, null, null]);
            }
            var options = this.options;
            var retry =
                this._wanted && options.reconnect && this.attempt < options.maxReconnectAttempts;
            if (!retry) {
                this._wanted = false;
                this._lost(close, wasConnected);
                return;
            }
            var delay;
            if (code >= 4200 && code <= 4299 && this.attempt === 0) {
                delay = 0;
            } else {
                delay = backoff(this.attempt, options);
            }
            close.willReconnect = true;
            this._resetChannels();
            this.socketId = null;
            this.lastClose = close;
            this._setState("reconnecting");
            if (wasConnected) {
                this._emitPair("disconnected", "disconnect", close);
            }
            var attempt = this.attempt++;
            this._emit("reconnecting", [
                "reconnecting",
                { attempt: attempt + 1, delay: delay, code: code, reason: close.reason },
                null,
                null
            ]);
            var self = this;
            this._setTimer("reconnect", delay, function () {
                if (self._wanted && !self.socket) {
                    self._open();
                }
            });
        };

        /** The connection is gone and no reconnection follows. */
        Pushi.prototype._lost = function (close, wasConnected) {
            var previous = this.state;
            this._resetChannels();
            this.socketId = null;
            this.lastClose = close;
            close.willReconnect = false;
            this._setState("disconnected");
            if (wasConnected || previous !== "disconnected") {
                this._emitPair("disconnected", "disconnect", close);
            }
        };

        Pushi.prototype._resetChannels = function () {
            for (var name in this.channels) {
                this.channels[name].subscribed = false;
            }
            this._failLatest(null, error("connection lost", 0));
            this._latestSent = null;
        };

        Pushi.prototype._setState = function (state) {
            var previous = this.state;
            if (previous === state) {
                return;
            }
            this.state = state;
            this._emit("state_change", [
                "state_change",
                { previous: previous, current: state },
                null,
                null
            ]);
        };

        Pushi.prototype._emitPair = function (name, alias, data) {
            this._emit(name, [name, data, null, null]);
            this._emit(alias, [alias, data, null, null]);
        };

        Pushi.prototype._setTimer = function (name, delay, callback) {
            this._clearTimer(name);
            this._timers[name] = setTimeout(callback, delay);
        };

        Pushi.prototype._clearTimer = function (name) {
            if (this._timers[name]) {
                clearTimeout(this._timers[name]);
                delete this._timers[name];
            }
        };

        Pushi.prototype._clearTimers = function () {
            for (var name in this._timers) {
                clearTimeout(this._timers[name]);
            }
            this._timers = {};
        };

        /**
         * Any message is activity: restart the idle timer, after which the
         * client pings and waits pongTimeout for any answer before dropping
         * the socket (close 4201 semantics: reconnect at once).
         */
        Pushi.prototype._activity = function () {
            if (this.state !== "connected") {
                return;
            }
            var self = this;
            this._clearTimer("pong");
            var timeout = this.options.activityTimeout || this.activityTimeout || DEFAULT_ACTIVITY_TIMEOUT;
            this._setTimer("activity", timeout, function () {
                self._send({ event: "pusher:ping", data: {} });
                self._setTimer("pong", self.options.pongTimeout, function () {
                    self._abort(4201, "pong timed out");
                });
            });
        };

        Pushi.prototype._send = function (message) {
            var socket = this.socket;
            if (!socket || this.state !== "connected" || socket.readyState !== 1) {
                return false;
            }
            socket.send(JSON.stringify(message));
            return true;
        };

        // -- incoming messages ---------------------------------------------

        Pushi.prototype._onMessage = function (raw) {
            var message = parseJson(raw);
            if (!message || typeof message !== "object" || typeof message.event !== "string") {
                return;
            }
            var event = message.event;
            if (event === "pusher:connection_established") {
                this._established(parseJson(message.data) || {});
                return;
            }
            this._activity();
            switch (event) {
                case "pusher:ping":
                    this._send({ event: "pusher:pong", data: {} });
                    return;
                case "pusher:pong":
                    return;
                case "pusher:error":
                    var failure = parseJson(message.data) || {};
                    // a refused Channel.latest names its channel
                    var sent = this._latestSent;
                    if (sent && message.channel === sent.name) {
                        this._latestDone(
                            sent,
                            null,
                            error(String(failure.message || "latest refused"), failure.code || 0)
                        );
                    }
                    this._emit("error", ["error", failure, null, null]);
                    return;
                case "pusher_internal:subscription_succeeded":
                    this._subscriptionSucceeded(message.channel, parseJson(message.data));
                    return;
                case "pusher:subscription_error":
                    this._subscriptionError(message.channel, parseJson(message.data));
                    return;
                case "pusher_internal:unsubscription_succeeded":
                    this._unsubscriptionSucceeded(message.channel);
                    return;
                case "pusher:member_added":
                case "pusher_internal:member_added":
                    this._member(message, true);
                    return;
                case "pusher:member_removed":
                case "pusher_internal:member_removed":
                    this._member(message, false);
                    return;
                case "pusher_internal:latest":
                case "pusher:latest":
                    this._latestAnswer(message);
                    return;
            }
            if (startsWith(event, "pusher:") || startsWith(event, "pusher_internal:")) {
                // other protocol events are told by name, never as messages
                this._emit(event, [event, parseJson(message.data), message.channel || null, null]);
                return;
            }
            var name = message.channel === undefined ? null : message.channel;
            var channel = name === null ? undefined : this.channels[name];
            if (channel && !channel._advance(message)) {
                return;
            }
            var data = this.options.decodeData ? decodeEventData(message.data) : message.data;
            var args = [event, data, name, channel];
            if (channel) {
                channel._dispatch(event, data);
            }
            this._emit(event, args);
            if (event !== "message") {
                this._emit("message", args);
            }
        };

        Pushi.prototype._established = function (data) {
            this._clearTimer("connect");
            this.socketId = data.socket_id || null;
            this.activityTimeout = data.activity_timeout ? data.activity_timeout * 1000 : null;
            var self = this;
            this._setTimer("stable", this.options.stableAfter, function () {
                self.attempt = 0;
            });
            this._setState("connected");
            this._activity();
            this._emitPair("connected", "connect", data);
            for (var name in this.channels) {
                var channel = this.channels[name];
                if (this.state !== "connected") {
                    break;
                }
                // not those a "connected" listener has just asked for
                if (channel._wanted && !channel.subscribed && channel._asked !== this.socketId) {
                    this._subscribe(channel);
                }
            }
        };

        Pushi.prototype._subscribe = function (channel) {
            if (channel.kind === "peer") {
                // peer channels are joined by the server, never asked for
                return;
            }
            var self = this;
            var socketId = this.socketId;
            // asked once per socket: a second subscribe() waits for the answer
            channel._asked = socketId;
            if (!needsAuth(channel.kind)) {
                this._send({ event: "pusher:subscribe", data: this._since(channel, { channel: channel.name }) });
                return;
            }
            var channelData = channel.options.channelData;
            if (channelData !== undefined && channelData !== null && typeof channelData !== "string") {
                channelData = JSON.stringify(channelData);
            }
            var authParams = this.options.authParams;
            if (typeof authParams === "function") {
                authParams = authParams(channel.name);
            }
            var params = extend({}, authParams, {
                socket_id: socketId,
                channel_name: channel.name
            });
            if (channel.kind === "presence" && channelData) {
                params.channel_data = channelData;
            }
            var done = function (failure, answer) {
                // the answer is stale when the socket or the wish changed
                if (
                    self.socketId !== socketId ||
                    self.state !== "connected" ||
                    self.channels[channel.name] !== channel ||
                    !channel._wanted
                ) {
                    return;
                }
                if (failure) {
                    self._subscriptionError(channel.name, {
                        type: "AuthError",
                        error: failure.message || String(failure),
                        status: failure.status || 0
                    });
                    return;
                }
                var data = { channel: channel.name, auth: answer.auth };
                var signed = answer.channel_data;
                if (signed !== undefined && signed !== null && typeof signed !== "string") {
                    signed = JSON.stringify(signed);
                }
                signed = signed || params.channel_data;
                if (signed && channel.kind === "presence") {
                    data.channel_data = signed;
                    channel.me = parseJson(signed);
                }
                self._send({ event: "pusher:subscribe", data: self._since(channel, data) });
            };
            var authorizer = this.options.authorizer;
            try {
                if (authorizer) {
                    authorizer.call(this, channel.name, socketId, params.channel_data, done);
                } else {
                    httpAuthorize(this.options, params, done);
                }
            } catch (failure) {
                done(failure);
            }
        };

        /** Subscribe data with where the channel stopped, when it has been on. */
        Pushi.prototype._since = function (channel, data) {
            var position = channel.position;
            if (position && channel.kind !== "personal") {
                data.since = { epoch: position.epoch, offset: position.offset };
                if (position.mid) {
                    data.since.mid = position.mid;
                }
            }
            return data;
        };

        Pushi.prototype._subscriptionSucceeded = function (name, data) {
            if (typeof name !== "string") {
                return;
            }
            var channel = this.channels[name];
            if (!channel) {
                if (channelKind(name) !== "peer") {
                    // the late answer to a channel left before it came
                    return;
                }
                // a channel the server joined this socket to
                channel = new Channel(this, name, {});
                channel.server = true;
                this.channels[name] = channel;
            }
            channel._succeeded(data && typeof data === "object" ? data : {});
        };

        Pushi.prototype._subscriptionError = function (name, data) {
            var channel = typeof name === "string" ? this.channels[name] : undefined;
            if (channel) {
                channel.subscribed = false;
                channel._asked = null;
                channel._lifecycle("subscription_error", data);
            } else {
                this._emit("subscription_error", ["subscription_error", data, name || null, undefined]);
            }
        };

        Pushi.prototype._unsubscriptionSucceeded = function (name) {
            var channel = this.channels[name];
            if (!channel || !channel.server) {
                // the answer to our own unsubscribe: already handled
                return;
            }
            // the server took the socket out of a channel it had put it in
            delete this.channels[name];
            channel.subscribed = false;
            channel._wanted = false;
            channel._lifecycle("unsubscribe", null);
        };

        Pushi.prototype._member = function (message, added) {
            var member = parseJson(message.member !== undefined ? message.member : message.data);
            if (!member || typeof member !== "object" || member.user_id === undefined) {
                return;
            }
            var channel = this.channels[message.channel];
            var id = String(member.user_id);
            var event = added ? "member_added" : "member_removed";
            if (!channel) {
                this._emit(event, [event, member, message.channel || null, undefined]);
                return;
            }
            if (added) {
                channel.members[id] = member.user_info === undefined ? null : member.user_info;
            } else {
                delete channel.members[id];
            }
            channel._lifecycle(event, member);
        };

        Pushi.prototype._latest = function (channel, skip, count, callback) {
            var self = this;
            var entry = {
                name: channel.name,
                request: {
                    event: "pusher:latest",
                    data: { channel: channel.name, skip: skip, count: count }
                },
                callback: callback || function () {},
                timer: null,
                done: false
            };
            if (this.state !== "connected") {
                setTimeout(function () {
                    entry.callback(null, error("not connected", 0));
                }, 0);
                return;
            }
            // the time-out counts from the call, waiting in the queue included
            entry.timer = setTimeout(function () {
                var index = self._latestQueue.indexOf(entry);
                if (index >= 0) {
                    self._latestQueue.splice(index, 1);
                }
                // one already sent stays in flight (its answer will come
                // and be dropped): the next waits for it, as the server does
                self._finish(entry, null, error("latest timed out", 0));
            }, this.options.latestTimeout);
            this._latestQueue.push(entry);
            this._nextLatest();
        };

        /** Sends the oldest waiting Channel.latest once none is in flight. */
        Pushi.prototype._nextLatest = function () {
            while (!this._latestSent && this._latestQueue.length) {
                var entry = this._latestQueue.shift();
                if (this._send(entry.request)) {
                    this._latestSent = entry;
                } else {
                    this._finish(entry, null, error("not connected", 0));
                }
            }
        };

        /** Fails the waiting requests of a channel (all when name is null). */
        Pushi.prototype._failLatest = function (name, failure) {
            var queue = this._latestQueue;
            this._latestQueue = [];
            for (var index = 0; index < queue.length; index++) {
                if (name === null || queue[index].name === name) {
                    this._finish(queue[index], null, failure);
                } else {
                    this._latestQueue.push(queue[index]);
                }
            }
            var sent = this._latestSent;
            if (sent && (name === null || sent.name === name)) {
                this._finish(sent, null, failure);
            }
        };

        /** The answer (or refusal) of the request in flight: the next goes. */
        Pushi.prototype._latestDone = function (entry, events, data) {
            this._latestSent = null;
            this._finish(entry, events, data);
            this._nextLatest();
        };

        Pushi.prototype._finish = function (entry, events, data) {
            if (entry.done) {
                return;
            }
            entry.done = true;
            clearTimeout(entry.timer);
            try {
                entry.callback(events, data);
            } catch (failure) {
                rethrowLater(failure);
            }
        };

        Pushi.prototype._latestAnswer = function (message) {
            var data = parseJson(message.data);
            if (!data || typeof data !== "object") {
                data = { events: [] };
            }
            var name = data.channel || message.channel;
            var events = parseJson(data.events);
            events = events instanceof Array ? events : [];
            var sent = this._latestSent;
            if (sent && sent.name === name) {
                this._latestDone(sent, events, data);
            }
            var channel = this.channels[name];
            if (channel) {
                channel._lifecycle("latest", events);
            } else {
                this._emit("latest", ["latest", events, name || null, undefined]);
            }
        };

        return Pushi;
    }
);
