/*
 * Pushi debug console: signs in with POST /login, streams one app's live
 * traffic over a WebSocket to /console on the WebSocket server, filters it,
 * and triggers events through POST /apps/<id>/events (the REST API's path).
 * Charts the app's last hour (the server's history samples, drawn as inline
 * SVG by this file: no library).
 *
 * The session token is kept in sessionStorage (this tab only) and travels in
 * the stream's first message and in an Authorization header, never in a URL.
 * The admin secret is only used to list apps and obtain a token, then
 * forgotten. Everything from the server is shown with textContent, never as
 * HTML: event data comes from any client of the app.
 */
(function () {
    "use strict";

    var TYPES = [
        "connection",
        "disconnection",
        "subscribed",
        "unsubscribed",
        "occupied",
        "vacated",
        "member_added",
        "member_removed",
        "api_message",
        "client_event",
        "cache_miss",
        "subscription_count",
        "webhook_sent",
        "webhook_failed",
        "webhook_dropped"
    ];
    var STORAGE = "pushi.console";

    var $ = function (id) {
        return document.getElementById(id);
    };

    var session = null; // {app_id, token, name}
    var socket = null;
    var retry = 0;
    var retryTimer = null;
    var paused = false;
    var entries = []; // oldest first: {entry, row}
    var held = []; // entries received while paused
    var seen = 0; // entries received since sign-in, for tests and the title
    var admin = null; // the admin secret, while the admin panel is open
    var appList = []; // the apps as GET /apps lists them
    var managed = null; // the app whose settings and keys are shown

    // sign-in

    function signedIn(value) {
        session = value;
        sessionStorage.setItem(STORAGE, JSON.stringify(value));
        $("signin-error").textContent = "";
        $("app-secret").value = "";
        $("admin-secret").value = "";
        $("signin").hidden = true;
        $("console").hidden = false;
        $("who").hidden = false;
        $("app-name").textContent = (value.name || "app") + " (id " + value.app_id + ")";
        retry = 0;
        connect();
    }

    function signOut(reason) {
        session = null;
        sessionStorage.removeItem(STORAGE);
        if (retryTimer) clearTimeout(retryTimer);
        retryTimer = null;
        if (socket) {
            var closing = socket;
            socket = null;
            closing.close(1000);
        }
        clearLog();
        setHistory(null);
        setPaused(false);
        $("console").hidden = true;
        $("who").hidden = true;
        $("signin").hidden = false;
        $("signin-error").textContent = reason || "";
    }

    function request(method, path, body, token) {
        var headers = { "Content-Type": "application/json" };
        if (token) headers["Authorization"] = "Bearer " + token;
        return fetch(path, {
            method: method,
            headers: headers,
            body: body === undefined ? undefined : JSON.stringify(body),
            cache: "no-store"
        }).then(function (response) {
            return response.text().then(function (text) {
                var payload = null;
                try {
                    payload = text ? JSON.parse(text) : null;
                } catch (error) {
                    payload = { message: text };
                }
                if (!response.ok) {
                    var message = (payload && payload.message) || response.statusText;
                    throw new Error(response.status + ": " + message);
                }
                return payload;
            });
        });
    }

    $("signin-app").addEventListener("submit", function (event) {
        event.preventDefault();
        var appId = $("app-id").value.trim();
        request("POST", "/login", {
            app_id: appId,
            app_key: $("app-key").value.trim(),
            app_secret: $("app-secret").value.trim()
        })
            .then(function (answer) {
                signedIn({ app_id: answer.app_id, token: answer.token, name: "app" });
            })
            .catch(function (error) {
                $("signin-error").textContent = "Sign-in refused: " + error.message;
            });
    });

    $("admin-load").addEventListener("click", function () {
        var secret = $("admin-secret").value.trim();
        request("GET", "/apps", undefined, secret)
            .then(function (answer) {
                // held for the admin panel, in this closure only
                admin = secret;
                $("admin").hidden = false;
                showApps(answer.apps || []);
                $("signin-error").textContent = appList.length ? "" : "No apps yet: create one below";
            })
            .catch(function (error) {
                $("signin-error").textContent = "Admin secret refused: " + error.message;
            });
    });

    function fillSelect() {
        var select = $("admin-app");
        var chosen = select.value;
        select.textContent = "";
        appList.forEach(function (app) {
            var option = document.createElement("option");
            option.value = app.app_id;
            option.textContent = app.app_id + " - " + app.name;
            option.dataset.name = app.name;
            select.appendChild(option);
        });
        if (chosen) select.value = chosen;
        select.disabled = !select.options.length;
        $("admin-watch").disabled = !select.options.length;
    }

    $("signin-admin").addEventListener("submit", function (event) {
        event.preventDefault();
        var select = $("admin-app");
        var option = select.options[select.selectedIndex];
        if (!option) return;
        watchAsAdmin(option.value, option.dataset.name);
    });

    function watchAsAdmin(appId, name) {
        var secret = admin || $("admin-secret").value.trim();
        if (session) {
            // another app: this one's token ends first
            request("POST", "/logout", undefined, session.token).catch(function () {});
            signOut("");
        }
        return request("POST", "/login", { app_id: appId }, secret)
            .then(function (answer) {
                signedIn({ app_id: answer.app_id, token: answer.token, name: name });
            })
            .catch(function (error) {
                $("signin-error").textContent = "Sign-in refused: " + error.message;
            });
    }

    $("signout").addEventListener("click", function () {
        // the token ends on the server too, not only in this tab
        if (session) request("POST", "/logout", undefined, session.token).catch(function () {});
        signOut("");
    });

    // the stream

    function streamUrl() {
        var meta = function (name) {
            var element = document.querySelector('meta[name="' + name + '"]');
            var value = element ? element.getAttribute("content") : "";
            return value.indexOf("{{") === 0 ? "" : value;
        };
        // behind a proxy: the WebSocket server as browsers reach it
        var url = meta("pushi-ws-url");
        if (url) return url + "/console";
        var scheme = meta("pushi-ws-scheme") || (location.protocol === "https:" ? "wss" : "ws");
        var port = meta("pushi-ws-port") || "9090";
        var host = location.hostname.indexOf(":") >= 0 ? "[" + location.hostname + "]" : location.hostname;
        return scheme + "://" + host + ":" + port + "/console";
    }

    function setStatus(state, text) {
        var status = $("status");
        status.dataset.state = state;
        status.textContent = text || state;
    }

    function connect() {
        if (!session) return;
        setStatus("connecting");
        var current = new WebSocket(streamUrl());
        socket = current;
        current.onopen = function () {
            current.send(
                JSON.stringify({
                    event: "console:watch",
                    data: { app_id: session.app_id, token: session.token }
                })
            );
        };
        current.onmessage = function (message) {
            if (socket !== current) return;
            var payload;
            try {
                payload = JSON.parse(message.data);
            } catch (error) {
                return;
            }
            if (payload.event === "console:entry") {
                receive(payload.data);
            } else if (payload.event === "console:stats") {
                counters(payload.data);
                extendHistory(payload.data.sample);
            } else if (payload.event === "console:watching") {
                setHistory(payload.data.history);
                retry = 0;
                if (payload.data.name) {
                    session.name = payload.data.name;
                    sessionStorage.setItem(STORAGE, JSON.stringify(session));
                    $("app-name").textContent = session.name + " (id " + session.app_id + ")";
                }
                counters(payload.data);
                setStatus(paused ? "paused" : "live");
            } else if (payload.event === "console:error") {
                signOut("Signed out: " + payload.data.message);
            }
        };
        current.onclose = function (event) {
            if (socket !== current) return;
            socket = null;
            if (!session) return;
            if (event.code === 4009) {
                signOut("Signed out: the server refused this session");
                return;
            }
            // 4100: this console could not keep up and was dropped; any
            // other close: the server went away. Reconnect with back-off.
            setStatus(event.code === 4100 ? "dropped" : "closed", event.code === 4100 ? "dropped: too slow" : "reconnecting");
            var delay = Math.min(30000, 1000 * Math.pow(2, retry++));
            retryTimer = setTimeout(function () {
                retryTimer = null;
                connect();
            }, delay);
        };
    }

    function counters(data) {
        $("count-connections").textContent = data.connections;
        $("count-channels").textContent = data.channels;
        $("count-messages").textContent = data.messages_last_minute;
        $("count-evictions").textContent = data.cache_evictions;
    }

    // charts: [time_ms, connections, published, delivered] samples, one per
    // history.every seconds, oldest first

    var SVG = "http://www.w3.org/2000/svg";
    var WIDTH = 600;
    var HEIGHT = 170;
    var PAD = { left: 40, right: 8, top: 8, bottom: 22 };
    var history = { every: 10, size: 360, samples: [] };

    function setHistory(value) {
        history = {
            every: (value && value.every) || 10,
            size: (value && value.size) || 360,
            samples: ((value && value.samples) || []).slice()
        };
        draw();
    }

    function extendHistory(sample) {
        var samples = history.samples;
        if (!sample || (samples.length && samples[samples.length - 1][0] >= sample[0])) return;
        samples.push(sample);
        while (samples.length > history.size) samples.shift();
        draw();
    }

    function svg(name, attributes, parent) {
        var element = document.createElementNS(SVG, name);
        Object.keys(attributes).forEach(function (key) {
            element.setAttribute(key, attributes[key]);
        });
        if (parent) parent.appendChild(element);
        return element;
    }

    // the smallest of 1, 2, 5 times a power of ten at or above the value
    function ceiling(value) {
        if (value <= 0) return 1;
        var power = Math.pow(10, Math.floor(Math.log(value) / Math.LN10));
        var steps = [1, 2, 5, 10];
        for (var index = 0; index < steps.length; index++) {
            if (steps[index] * power >= value) return steps[index] * power;
        }
        return 10 * power;
    }

    function number(value) {
        if (value >= 1000) return (value / 1000).toFixed(value >= 10000 ? 0 : 1) + "k";
        return Math.round(value * 100) / 100 + "";
    }

    function chart(element, series, end) {
        element.textContent = "";
        var span = history.every * history.size * 1000;
        var start = end - span;
        var inner = { width: WIDTH - PAD.left - PAD.right, height: HEIGHT - PAD.top - PAD.bottom };
        var top = 0;
        series.forEach(function (line) {
            line.values.forEach(function (point) {
                top = Math.max(top, point[1]);
            });
        });
        top = ceiling(top);
        var x = function (time) {
            return PAD.left + ((time - start) / span) * inner.width;
        };
        var y = function (value) {
            return PAD.top + inner.height - (value / top) * inner.height;
        };
        for (var step = 0; step <= 4; step++) {
            var value = (top * step) / 4;
            svg("line", { class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(value), y2: y(value) }, element);
            svg("text", { x: PAD.left - 4, y: y(value) + 4, "text-anchor": "end" }, element).textContent = number(value);
        }
        svg("line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: HEIGHT - PAD.bottom }, element);
        svg("line", { class: "axis", x1: PAD.left, x2: WIDTH - PAD.right, y1: y(0), y2: y(0) }, element);
        var minutes = span / 60000;
        [1, 0.75, 0.5, 0.25, 0].forEach(function (fraction) {
            var label = fraction ? "-" + Math.round(minutes * fraction) + " min" : "now";
            svg("text", {
                x: PAD.left + (1 - fraction) * inner.width,
                y: HEIGHT - 6,
                "text-anchor": fraction === 1 ? "start" : fraction ? "middle" : "end"
            }, element).textContent = label;
        });
        var drawn = 0;
        series.forEach(function (line) {
            var points = line.values
                .filter(function (point) {
                    return point[0] >= start;
                })
                .map(function (point) {
                    return x(point[0]).toFixed(1) + "," + y(point[1]).toFixed(1);
                });
            drawn += points.length;
            if (points.length === 1) {
                svg("circle", { class: "line " + line.name, cx: points[0].split(",")[0], cy: points[0].split(",")[1], r: 2 }, element);
            }
            svg("polyline", { class: "line " + line.name, points: points.join(" "), "data-series": line.name }, element);
        });
        element.setAttribute("data-points", drawn);
        if (!drawn) {
            svg("text", { class: "empty", x: WIDTH / 2, y: HEIGHT / 2, "text-anchor": "middle" }, element).textContent =
                "no samples yet: one every " + history.every + " s";
        }
    }

    function draw() {
        var samples = history.samples;
        // the server's clock: the newest sample is "now", whatever this
        // machine's clock says
        var end = samples.length ? samples[samples.length - 1][0] : Date.now();
        var seconds = history.every;
        var minutes = Math.round((history.every * history.size) / 60);
        $("chart-span").textContent = minutes >= 60 && minutes % 60 === 0
            ? "last " + (minutes === 60 ? "hour" : minutes / 60 + " hours")
            : "last " + minutes + " min";
        chart($("chart-connections"), [{
            name: "connections",
            values: samples.map(function (sample) {
                return [sample[0], sample[1]];
            })
        }], end);
        chart($("chart-messages"), ["published", "delivered"].map(function (name, index) {
            return {
                name: name,
                values: samples.map(function (sample) {
                    return [sample[0], sample[2 + index] / seconds];
                })
            };
        }), end);
    }

    // the log

    function cap() {
        var value = parseInt($("cap").value, 10);
        return value > 0 ? value : 500;
    }

    // counters move with the entries at once; console:stats then corrects
    // them every few seconds from the server's own figures
    var MOVES = {
        connection: ["count-connections", 1],
        disconnection: ["count-connections", -1],
        occupied: ["count-channels", 1],
        vacated: ["count-channels", -1],
        client_event: ["count-messages", 1]
    };

    function bump(entry) {
        var move = MOVES[entry.type];
        if (entry.type === "api_message") move = ["count-messages", channelsOf(entry).length];
        if (!move) return;
        var element = $(move[0]);
        element.textContent = Math.max(0, (parseInt(element.textContent, 10) || 0) + move[1]);
    }

    function receive(entry) {
        seen++;
        bump(entry);
        if (paused) {
            held.push(entry);
            if (held.length > cap()) held.shift();
            $("held").textContent = held.length + " held while paused";
            return;
        }
        add(entry);
        trim();
    }

    function channelsOf(entry) {
        if (entry.channels) return entry.channels;
        return entry.channel ? [entry.channel] : [];
    }

    function text(value) {
        if (value === undefined || value === null) return "";
        return typeof value === "string" ? value : JSON.stringify(value);
    }

    function describe(entry) {
        var parts = [];
        var details = {};
        Object.keys(entry).forEach(function (name) {
            if (name !== "type" && name !== "time" && name !== "channel" && name !== "channels") {
                details[name] = entry[name];
            }
        });
        if (details.event !== undefined) parts.push("event " + details.event);
        if (details.socket_id) parts.push("socket " + details.socket_id);
        if (details.dialect) parts.push(details.dialect);
        if (entry.type === "connection") parts.push("origin " + (details.origin || "none"));
        if (details.user_id !== undefined && details.user_id !== null) parts.push("user " + details.user_id);
        var known = ["event", "socket_id", "dialect", "origin", "user_id", "data"];
        Object.keys(details).forEach(function (name) {
            if (known.indexOf(name) < 0) parts.push(name + " " + text(details[name]));
        });
        return { summary: parts.join(" \u00b7 "), data: "data" in details ? text(details.data) : null };
    }

    function clock(ms) {
        var date = new Date(ms);
        var pad = function (value, size) {
            return ("000" + value).slice(-size);
        };
        return (
            pad(date.getHours(), 2) + ":" + pad(date.getMinutes(), 2) + ":" +
            pad(date.getSeconds(), 2) + "." + pad(date.getMilliseconds(), 3)
        );
    }

    function cell(row, className, content) {
        var td = document.createElement("td");
        td.className = className;
        if (content !== undefined) td.textContent = content;
        row.appendChild(td);
        return td;
    }

    function add(entry) {
        var row = document.createElement("tr");
        row.className = "entry";
        row.dataset.type = entry.type;
        cell(row, "time", clock(entry.time));
        var badge = document.createElement("span");
        badge.className = "badge " + entry.type;
        badge.textContent = entry.type;
        cell(row, "type").appendChild(badge);
        cell(row, "channel", channelsOf(entry).join(", "));
        var description = describe(entry);
        var details = cell(row, "details", description.summary);
        if (description.data !== null) {
            var code = document.createElement("code");
            code.className = "data";
            code.textContent = description.data;
            details.appendChild(code);
        }
        var item = { entry: entry, row: row };
        row.hidden = !matches(entry);
        entries.push(item);
        var log = $("log");
        log.insertBefore(row, log.firstChild);
    }

    function trim() {
        var limit = cap();
        while (entries.length > limit) {
            var oldest = entries.shift();
            oldest.row.remove();
        }
    }

    function clearLog() {
        entries = [];
        held = [];
        $("log").textContent = "";
        $("held").textContent = "";
    }

    // filters

    function checkedTypes() {
        var types = {};
        document.querySelectorAll('#types input[type="checkbox"]').forEach(function (box) {
            if (box.checked) types[box.value] = true;
        });
        return types;
    }

    var filter = { types: {}, channel: "", text: "" };

    function matches(entry) {
        if (!filter.types[entry.type] && TYPES.indexOf(entry.type) >= 0) return false;
        if (filter.channel) {
            var wanted = filter.channel;
            var found = channelsOf(entry).some(function (name) {
                return name.toLowerCase().indexOf(wanted) >= 0;
            });
            if (!found) return false;
        }
        if (filter.text) {
            var haystack = (text(entry.event) + "\n" + text(entry.data)).toLowerCase();
            if (haystack.indexOf(filter.text) < 0) return false;
        }
        return true;
    }

    function refilter() {
        filter.types = checkedTypes();
        filter.channel = $("filter-channel").value.trim().toLowerCase();
        filter.text = $("filter-text").value.trim().toLowerCase();
        entries.forEach(function (item) {
            item.row.hidden = !matches(item.entry);
        });
    }

    TYPES.forEach(function (type) {
        var label = document.createElement("label");
        var box = document.createElement("input");
        box.type = "checkbox";
        box.name = "type";
        box.value = type;
        box.checked = true;
        box.addEventListener("change", refilter);
        label.appendChild(box);
        label.appendChild(document.createTextNode(type));
        $("types").appendChild(label);
    });
    $("filter-channel").addEventListener("input", refilter);
    $("filter-text").addEventListener("input", refilter);
    $("cap").addEventListener("change", trim);
    refilter();

    function setPaused(value) {
        paused = value;
        $("pause").textContent = paused ? "Resume" : "Pause";
        if (session && socket) setStatus(paused ? "paused" : "live");
        if (!paused) {
            var waiting = held;
            held = [];
            $("held").textContent = "";
            waiting.forEach(add);
            trim();
        }
    }

    $("pause").addEventListener("click", function () {
        setPaused(!paused);
    });
    $("clear").addEventListener("click", clearLog);

    // the event creator: the REST API's own publish route, with the token

    $("creator").addEventListener("submit", function (event) {
        event.preventDefault();
        var result = $("send-result");
        var data = $("send-data").value;
        if ($("send-format").value === "json") {
            try {
                data = JSON.stringify(JSON.parse(data));
            } catch (error) {
                result.className = "result failed";
                result.textContent = "Data is not valid JSON (choose text to send it as is)";
                return;
            }
        }
        var channel = $("send-channel").value.trim();
        var name = $("send-event").value.trim();
        result.className = "result";
        result.textContent = "sending...";
        request("POST", "/apps/" + encodeURIComponent(session.app_id) + "/events", {
            name: name,
            channel: channel,
            data: data
        }, session.token)
            .then(function () {
                result.className = "result sent";
                result.textContent = "Sent " + name + " to " + channel;
            })
            .catch(function (error) {
                result.className = "result failed";
                result.textContent = "Not sent: " + error.message;
            });
    });

    // the admin panel: GET/POST /apps, PUT /apps/<id>, the keys routes and
    // POST /apps/<id>/webhooks/test, each with the admin secret

    var HOOK_EVENTS = [
        "channel_occupied",
        "channel_vacated",
        "member_added",
        "member_removed",
        "client_event",
        "cache_miss",
        "subscription_count"
    ];

    function adminRequest(method, path, body) {
        return request(method, path, body, admin);
    }

    function appPath(appId, rest) {
        return "/apps/" + encodeURIComponent(appId) + (rest || "");
    }

    function say(id, text, failed) {
        var element = $(id);
        element.className = "result" + (failed === undefined ? "" : failed ? " failed" : " sent");
        element.textContent = text;
    }

    function button(text, action, parent) {
        var element = document.createElement("button");
        element.type = "button";
        element.textContent = text;
        element.dataset.action = action;
        parent.appendChild(element);
        return element;
    }

    function showApps(apps) {
        appList = apps;
        fillSelect();
        var body = $("apps-list");
        body.textContent = "";
        apps.forEach(function (app) {
            var row = document.createElement("tr");
            row.dataset.appId = app.app_id;
            if (managed && managed.app_id === app.app_id) row.className = "selected";
            cell(row, "id", app.app_id);
            cell(row, "name", app.name);
            cell(row, app.enabled ? "state" : "state off", app.enabled ? "enabled" : "disabled");
            cell(row, "client-events", app.client_events ? "on" : "off");
            var actions = cell(row, "actions");
            button("Watch", "watch", actions).addEventListener("click", function () {
                watchAsAdmin(app.app_id, app.name);
            });
            button(app.enabled ? "Disable" : "Enable", "toggle", actions).addEventListener("click", function () {
                adminRequest("PUT", appPath(app.app_id), { enabled: !app.enabled })
                    .then(function (changed) {
                        say("admin-result", (changed.enabled ? "Enabled " : "Disabled ") + changed.name, false);
                        if (managed && managed.app_id === changed.app_id) manage(changed);
                        return reloadApps();
                    })
                    .catch(function (error) {
                        say("admin-result", "Not changed: " + error.message, true);
                    });
            });
            button("Settings and keys", "manage", actions).addEventListener("click", function () {
                manage(app);
                showApps(appList);
            });
            body.appendChild(row);
        });
    }

    function reloadApps() {
        return adminRequest("GET", "/apps").then(function (answer) {
            showApps(answer.apps || []);
        });
    }

    $("create-app").addEventListener("submit", function (event) {
        event.preventDefault();
        var name = $("create-name").value.trim();
        adminRequest("POST", "/apps", { name: name, client_events: $("create-client-events").checked })
            .then(function (record) {
                // the one time the secret is shown
                $("created-id").textContent = record.app_id;
                $("created-key").textContent = record.key;
                $("created-secret").textContent = record.secret;
                $("created").hidden = false;
                $("create-name").value = "";
                say("admin-result", "Created " + record.name + ": watch it, then send it an event", false);
                return reloadApps();
            })
            .catch(function (error) {
                say("admin-result", "Not created: " + error.message, true);
            });
    });

    $("admin-forget").addEventListener("click", forgetAdmin);

    function forgetAdmin() {
        admin = null;
        managed = null;
        appList = [];
        $("admin").hidden = true;
        $("manage").hidden = true;
        $("created").hidden = true;
        $("new-key").hidden = true;
        $("apps-list").textContent = "";
        fillSelect();
    }

    function limitInput(name, value) {
        var label = document.createElement("label");
        var input = document.createElement("input");
        input.id = "limit-" + name;
        input.dataset.setting = name;
        if (typeof value === "boolean") {
            label.className = "check";
            input.type = "checkbox";
            input.checked = value;
            input.dataset.kind = "boolean";
            label.appendChild(input);
            label.appendChild(document.createTextNode(name));
        } else {
            label.appendChild(document.createTextNode(name));
            if (typeof value === "number") {
                input.type = "number";
                input.min = "0";
                input.step = "1";
                input.value = value;
                input.dataset.kind = "number";
            } else {
                // a list of strings (allowed_origins)
                input.value = (value || []).join(", ");
                input.placeholder = "comma separated";
                input.dataset.kind = "list";
            }
            label.appendChild(input);
        }
        return label;
    }

    function hookRow(hook) {
        var row = document.createElement("div");
        row.className = "hook";
        var label = document.createElement("label");
        label.className = "url";
        label.appendChild(document.createTextNode("URL"));
        var url = document.createElement("input");
        url.className = "hook-url";
        url.placeholder = "https://example.com/pusher/webhooks";
        url.value = hook.url || "";
        label.appendChild(url);
        row.appendChild(label);
        var result = document.createElement("span");
        result.className = "result hook-result";
        button("Test", "test", row).addEventListener("click", function () {
            result.className = "result hook-result";
            result.textContent = "posting a test webhook...";
            adminRequest("POST", appPath(managed.app_id, "/webhooks/test"), { url: url.value.trim() })
                .then(function (answer) {
                    result.className = "result hook-result " + (answer.sent ? "sent" : "failed");
                    result.textContent = answer.sent
                        ? "Test sent: HTTP " + answer.status
                        : "Test failed: " + answer.error;
                })
                .catch(function (error) {
                    result.className = "result hook-result failed";
                    result.textContent = "Test refused: " + error.message;
                });
        });
        button("Remove", "remove", row).addEventListener("click", function () {
            row.remove();
        });
        row.appendChild(result);
        var events = document.createElement("div");
        events.className = "events";
        var wanted = hook.events || HOOK_EVENTS;
        HOOK_EVENTS.forEach(function (name) {
            var box = document.createElement("input");
            box.type = "checkbox";
            box.value = name;
            box.checked = wanted.indexOf(name) >= 0;
            var item = document.createElement("label");
            item.className = "check";
            item.appendChild(box);
            item.appendChild(document.createTextNode(name));
            events.appendChild(item);
        });
        row.appendChild(events);
        return row;
    }

    function manage(app) {
        managed = app;
        $("manage").hidden = false;
        $("new-key").hidden = true;
        $("manage-name").textContent = app.name;
        $("manage-id").textContent = app.app_id;
        $("set-enabled").checked = app.enabled;
        $("set-client-events").checked = app.client_events;
        say("settings-result", "");
        say("keys-result", "");
        var limits = $("set-limits");
        limits.querySelectorAll("label").forEach(function (label) {
            label.remove();
        });
        var settings = app.settings || {};
        Object.keys(settings)
            .sort()
            .forEach(function (name) {
                if (name !== "webhooks") limits.appendChild(limitInput(name, settings[name]));
            });
        var hooks = $("set-hooks");
        hooks.textContent = "";
        (settings.webhooks || []).forEach(function (hook) {
            hooks.appendChild(hookRow(hook));
        });
        loadKeys();
    }

    $("add-hook").addEventListener("click", function () {
        $("set-hooks").appendChild(hookRow({}));
    });

    function readSettings() {
        var settings = {};
        document.querySelectorAll("#set-limits input").forEach(function (input) {
            var name = input.dataset.setting;
            if (input.dataset.kind === "boolean") settings[name] = input.checked;
            else if (input.dataset.kind === "number") {
                // an emptied field keeps the value it had
                var value = parseInt(input.value, 10);
                settings[name] = isNaN(value) ? managed.settings[name] : value;
            }
            else {
                settings[name] = input.value
                    .split(",")
                    .map(function (item) {
                        return item.trim();
                    })
                    .filter(Boolean);
            }
        });
        settings.webhooks = [];
        document.querySelectorAll("#set-hooks .hook").forEach(function (row) {
            var url = row.querySelector(".hook-url").value.trim();
            if (!url) return;
            var events = [];
            row.querySelectorAll(".events input").forEach(function (box) {
                if (box.checked) events.push(box.value);
            });
            var hook = { url: url };
            if (events.length < HOOK_EVENTS.length) hook.events = events;
            settings.webhooks.push(hook);
        });
        return settings;
    }

    $("settings-form").addEventListener("submit", function (event) {
        event.preventDefault();
        if (!managed) return;
        adminRequest("PUT", appPath(managed.app_id), {
            enabled: $("set-enabled").checked,
            client_events: $("set-client-events").checked,
            settings: readSettings()
        })
            .then(function (app) {
                manage(app);
                say("settings-result", "Saved", false);
                return reloadApps();
            })
            .catch(function (error) {
                say("settings-result", "Not saved: " + error.message, true);
            });
    });

    function when(seconds) {
        return seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) : "at creation";
    }

    function showKeys(keys) {
        var body = $("keys-list");
        body.textContent = "";
        keys.forEach(function (pair) {
            var row = document.createElement("tr");
            row.dataset.key = pair.key;
            cell(row, "key", pair.key);
            cell(row, "key-created", when(pair.created));
            var actions = cell(row, "actions");
            button("Revoke", "revoke", actions).addEventListener("click", function () {
                adminRequest("DELETE", appPath(managed.app_id, "/keys/" + encodeURIComponent(pair.key)))
                    .then(function (answer) {
                        say("keys-result", "Revoked " + pair.key, false);
                        showKeys(answer.keys || []);
                    })
                    .catch(function (error) {
                        say("keys-result", "Not revoked: " + error.message, true);
                    });
            });
            body.appendChild(row);
        });
    }

    function loadKeys() {
        var appId = managed.app_id;
        adminRequest("GET", appPath(appId, "/keys"))
            .then(function (answer) {
                if (managed && managed.app_id === appId) showKeys(answer.keys || []);
            })
            .catch(function (error) {
                say("keys-result", "Keys not listed: " + error.message, true);
            });
    }

    $("add-key").addEventListener("click", function () {
        adminRequest("POST", appPath(managed.app_id, "/keys"))
            .then(function (pair) {
                $("new-key-key").textContent = pair.key;
                $("new-key-secret").textContent = pair.secret;
                $("new-key").hidden = false;
                say("keys-result", "Added " + pair.key, false);
                loadKeys();
            })
            .catch(function (error) {
                say("keys-result", "Not added: " + error.message, true);
            });
    });

    // a test or a curious visitor may ask how many entries arrived
    window.pushiConsole = {
        received: function () {
            return seen;
        }
    };

    var stored = sessionStorage.getItem(STORAGE);
    if (stored) {
        try {
            signedIn(JSON.parse(stored));
        } catch (error) {
            sessionStorage.removeItem(STORAGE);
        }
    }
})();
