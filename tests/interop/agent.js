/*
 * A remote-controlled Pusher toolbox for the interoperability tests.
 *
 * It drives the unmodified npm packages against a running Pushi server:
 * any number of pusher-js clients (the Node build) and one `pusher` server
 * SDK instance, which also backs the clients' channel authorizer and user
 * authenticator (as an app's auth endpoint would).
 *
 * Protocol: one JSON command per line on stdin,
 *   {"id": 1, "op": "connect", "client": "a", ...}
 * one JSON answer per line on stdout,
 *   {"id": 1, "ok": true, "result": ...}   or   {"id": 1, "ok": false, "error": "..."}
 * and, unsolicited, one line per thing a client saw:
 *   {"type": "event" | "message" | "state" | "error" | "user_event" | "watchlist", "client": "a", ...}
 *
 * The `echo_*` operations drive Laravel Echo (`laravel-echo`, unmodified,
 * with its Pusher broadcaster over the same pusher-js): each Echo client is
 * a client like the others, whose Echo callbacks report as
 *   {"type": "echo" | "echo_all" | "here" | "joining" | "leaving", "client": "a", ...}
 * Echo clients authorize channels with Echo's `authorizer` option, or with
 * its `authEndpoint` and `bearerToken` against a small auth endpoint served
 * here on 127.0.0.1, as a Laravel app's /broadcasting/auth would.
 *
 * Settings come from the environment: PUSHI_WS_PORT, PUSHI_APP_PORT,
 * PUSHI_APP_ID, PUSHI_KEY, PUSHI_SECRET, PUSHI_MASTER_KEY (base64, 32 bytes).
 * A `connect` or `echo_connect` may name a `wsPort` of its own (another
 * node of a cluster) instead of PUSHI_WS_PORT.
 */

"use strict";

const fs = require("fs");
const http = require("http");
const path = require("path");
const readline = require("readline");
const PusherJS = require("pusher-js");
const PusherSDK = require("pusher");

const settings = {
  wsPort: Number(process.env.PUSHI_WS_PORT),
  appPort: Number(process.env.PUSHI_APP_PORT),
  appId: process.env.PUSHI_APP_ID,
  key: process.env.PUSHI_KEY,
  secret: process.env.PUSHI_SECRET,
  masterKey: process.env.PUSHI_MASTER_KEY,
};

/** The server SDK, configured as the README's "Switching from Pusher" says. */
function makeSdk(secret) {
  return new PusherSDK({
    appId: settings.appId,
    key: settings.key,
    secret: secret,
    host: "127.0.0.1",
    port: settings.appPort,
    useTLS: false,
    encryptionMasterKeyBase64: settings.masterKey,
  });
}

const sdk = makeSdk(settings.secret);
const clients = {};

function emit(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

function withTimeout(promise, what, ms) {
  let timer;
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error("timed out: " + what)), ms || 10000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** A pusher-js client; `presence` is its channel_data, `user` its sign-in data. */
function connect(args) {
  const name = args.client;
  const signer = args.badSecret ? makeSdk(args.badSecret) : sdk;
  const entry = { presence: args.presence || null, user: args.user || null };
  const pusher = new PusherJS(settings.key, {
    wsHost: "127.0.0.1",
    wsPort: args.wsPort || settings.wsPort,
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "local",
    disableStats: true,
    channelAuthorization: {
      customHandler: (params, callback) => {
        try {
          const presence = params.channelName.startsWith("presence-") ? entry.presence : undefined;
          callback(null, signer.authorizeChannel(params.socketId, params.channelName, presence));
        } catch (error) {
          callback(error, null);
        }
      },
    },
    userAuthentication: {
      customHandler: (params, callback) => {
        try {
          callback(null, signer.authenticateUser(params.socketId, entry.user));
        } catch (error) {
          callback(error, null);
        }
      },
    },
  });
  entry.pusher = pusher;
  clients[name] = entry;
  watch(name, pusher);
  pusher.user.bind_global((event, data) =>
    emit({ type: "user_event", client: name, event: event, data: data })
  );
  for (const kind of ["online", "offline"]) {
    pusher.user.watchlist.bind(kind, (event) =>
      emit({ type: "watchlist", client: name, name: event.name, user_ids: event.user_ids })
    );
  }
  return connected(name, pusher);
}

/** Reports what a client's connection sees: states, errors, every message. */
function watch(name, pusher) {
  pusher.connection.bind("state_change", (states) =>
    emit({ type: "state", client: name, previous: states.previous, current: states.current })
  );
  pusher.connection.bind("error", (error) =>
    emit({ type: "error", client: name, error: error && error.data ? error.data : String(error) })
  );
  pusher.connection.bind("message", (message) =>
    emit({ type: "message", client: name, message: message })
  );
}

function connected(name, pusher) {
  return withTimeout(
    new Promise((resolve, reject) => {
      pusher.connection.bind("connected", () =>
        resolve({ socket_id: pusher.connection.socket_id })
      );
      pusher.connection.bind("failed", () => reject(new Error("connection failed")));
    }),
    "connect " + name
  );
}

function client(args) {
  const entry = clients[args.client];
  if (!entry) {
    throw new Error("no client " + args.client);
  }
  return entry.pusher;
}

function channelState(channel) {
  const state = {
    name: channel.name,
    subscribed: channel.subscribed,
    subscriptionCount: channel.subscriptionCount === undefined ? null : channel.subscriptionCount,
  };
  if (channel.members) {
    const ids = [];
    channel.members.each((member) => ids.push(member.id));
    state.members = {
      count: channel.members.count,
      me: channel.members.me,
      ids: ids.sort(),
    };
  }
  return state;
}

function subscribe(args) {
  const pusher = client(args);
  const channel = pusher.subscribe(args.channel);
  channel.bind_global((event, data) =>
    emit({ type: "event", client: args.client, channel: args.channel, event: event, data: data })
  );
  return withTimeout(
    new Promise((resolve) => {
      channel.bind("pusher:subscription_succeeded", () =>
        resolve(Object.assign({ succeeded: true }, channelState(channel)))
      );
      channel.bind("pusher:subscription_error", (error) =>
        resolve({ succeeded: false, error: error })
      );
    }),
    "subscribe " + args.channel
  );
}

/** Binds one event name, to see the metadata (user_id) pusher-js passes. */
function bind(args) {
  const channel = client(args).channel(args.channel);
  channel.bind(args.event, (data, metadata) =>
    emit({
      type: "bound",
      client: args.client,
      channel: args.channel,
      event: args.event,
      data: data,
      metadata: metadata || null,
    })
  );
  return true;
}

async function signin(args) {
  const pusher = client(args);
  pusher.signin();
  await withTimeout(pusher.user.signinDonePromise, "signin");
  const channel = pusher.user.serverToUserChannel;
  if (channel && !channel.subscribed) {
    await withTimeout(
      new Promise((resolve) => channel.bind("pusher:subscription_succeeded", resolve)),
      "subscribe to " + channel.name
    );
  }
  return {
    user_data: pusher.user.user_data,
    channel: channel ? channel.name : null,
    subscribed: channel ? channel.subscribed : false,
  };
}

/** Calls the server SDK; answers the HTTP status and the parsed body. */
async function callSdk(args) {
  const method = args.method;
  if (!["trigger", "triggerBatch", "get", "post", "sendToUser", "terminateUserConnections"].includes(method)) {
    throw new Error("unknown sdk method " + method);
  }
  const target = args.badSecret ? makeSdk(args.badSecret) : sdk;
  try {
    const response = await target[method](...args.args);
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : null };
  } catch (error) {
    if (error.status) {
      let body = error.body;
      try {
        body = JSON.parse(error.body);
      } catch (_ignored) {
        // not JSON: reported as text
      }
      return { status: error.status, body: body };
    }
    throw error;
  }
}

/* Laravel Echo */

let Echo = null;
let authServer = null;
const tokens = {};

/** laravel-echo is an ES module: its `require` entry loads as an empty
 * module under Node 20, so it comes in through import(). */
async function loadEcho() {
  if (!Echo) {
    Echo = (await import("laravel-echo")).default;
  }
  return Echo;
}

/** A Laravel-style channel auth endpoint (POST, form body, bearer token),
 * signing with the npm SDK; answers its URL. */
function authEndpoint() {
  if (!authServer) {
    authServer = new Promise((resolve, reject) => {
      const server = http.createServer((request, response) => {
        let body = "";
        request.on("data", (chunk) => (body += chunk));
        request.on("end", () => {
          const form = new URLSearchParams(body);
          const header = request.headers.authorization || "";
          const token = header.startsWith("Bearer ") ? header.substring(7) : null;
          const channel = form.get("channel_name");
          emit({ type: "auth_request", token: token, channel: channel, socket_id: form.get("socket_id") });
          const user = tokens[token];
          if (request.method !== "POST" || !user) {
            response.writeHead(403, { "Content-Type": "application/json" });
            response.end(JSON.stringify({ message: "Forbidden" }));
            return;
          }
          const presence = channel.startsWith("presence-") ? user.presence : undefined;
          const answer = user.signer.authorizeChannel(form.get("socket_id"), channel, presence);
          response.writeHead(200, { "Content-Type": "application/json" });
          response.end(JSON.stringify(answer));
        });
      });
      server.on("error", reject);
      server.listen(0, "127.0.0.1", () => {
        server.unref();
        resolve("http://127.0.0.1:" + server.address().port + "/broadcasting/auth");
      });
    });
  }
  return authServer;
}

/** An Echo client with the Pusher broadcaster, set up as the README's
 * "Switching from Pusher" says; `presence` is its channel_data. */
async function echoConnect(args) {
  const EchoClass = await loadEcho();
  const name = args.client;
  const signer = args.badSecret ? makeSdk(args.badSecret) : sdk;
  const options = {
    broadcaster: "pusher",
    key: settings.key,
    cluster: "local",
    wsHost: "127.0.0.1",
    wsPort: args.wsPort || settings.wsPort,
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    Pusher: PusherJS,
  };
  if (args.namespace !== undefined) {
    options.namespace = args.namespace;
  }
  if (args.token !== undefined) {
    // Echo's authEndpoint and bearerToken, against the endpoint above
    options.authEndpoint = await authEndpoint();
    options.bearerToken = args.token;
    // Echo writes the token into its default `auth.headers`, one object
    // shared by every Echo instance: each client brings its own
    options.auth = { headers: {} };
    options.userAuthentication = { endpoint: "/broadcasting/user-auth", headers: {} };
    if (args.registerToken !== false) {
      tokens[args.token] = { presence: args.presence, signer: signer };
    }
  } else {
    // Echo's authorizer option, calling the npm SDK as an app's endpoint would
    options.authorizer = (channel) => ({
      authorize: (socketId, callback) => {
        try {
          const presence = channel.name.startsWith("presence-") ? args.presence : undefined;
          callback(null, signer.authorizeChannel(socketId, channel.name, presence));
        } catch (error) {
          callback(error, null);
        }
      },
    });
  }
  const echo = new EchoClass(options);
  const pusher = echo.connector.pusher;
  clients[name] = { echo: echo, pusher: pusher };
  watch(name, pusher);
  await connected(name, pusher);
  return { socket_id: echo.socketId() };
}

function echo(args) {
  const entry = clients[args.client];
  if (!entry || !entry.echo) {
    throw new Error("no Echo client " + args.client);
  }
  return entry.echo;
}

/** Echo.channel(name), Echo.private(name) or Echo.join(name). */
function echoChannel(args) {
  const kinds = { channel: "channel", private: "private", join: "join" };
  if (!kinds[args.kind]) {
    throw new Error("unknown Echo channel kind " + args.kind);
  }
  return echo(args)[kinds[args.kind]](args.name);
}

/** Subscribes through Echo (with here/joining/leaving on a join); answers
 * once Echo's subscribed() or error() callback runs. */
function echoSubscribe(args) {
  const channel = echoChannel(args);
  const report = (type, fields) =>
    emit(Object.assign({ type: type, client: args.client, channel: channel.name }, fields));
  if (args.kind === "join") {
    channel
      .here((members) => report("here", { members: members }))
      .joining((member) => report("joining", { member: member }))
      .leaving((member) => report("leaving", { member: member }));
  }
  return withTimeout(
    new Promise((resolve) => {
      channel
        .subscribed(() => resolve({ succeeded: true, name: channel.name }))
        .error((error) => resolve({ succeeded: false, name: channel.name, error: error }));
    }),
    "Echo subscribe " + args.name
  );
}

/** channel.listen(event, cb), or channel.listenForWhisper(event, cb). */
function echoListen(args) {
  const channel = echoChannel(args);
  const callback = (data, metadata) =>
    emit({
      type: "echo",
      client: args.client,
      channel: channel.name,
      listen: args.event,
      whisper: Boolean(args.whisper),
      data: data,
      metadata: metadata || null,
    });
  if (args.whisper) {
    channel.listenForWhisper(args.event, callback);
  } else {
    channel.listen(args.event, callback);
  }
  return true;
}

const operations = {
  echo_connect: echoConnect,
  echo_subscribe: echoSubscribe,
  echo_listen: echoListen,
  echo_listen_all: (args) => {
    const channel = echoChannel(args);
    channel.listenToAll((event, data) =>
      emit({ type: "echo_all", client: args.client, channel: channel.name, event: event, data: data })
    );
    return true;
  },
  echo_whisper: (args) => {
    echoChannel(args).whisper(args.event, args.data);
    return true;
  },
  // Echo.leave(name) / Echo.leaveChannel(fullName): answers the channels Echo still holds
  echo_leave: (args) => {
    const instance = echo(args);
    if (args.full) {
      instance.leaveChannel(args.name);
    } else {
      instance.leave(args.name);
    }
    return Object.keys(instance.connector.channels).sort();
  },
  echo_socket_id: (args) => echo(args).socketId(),
  connect: connect,
  subscribe: subscribe,
  bind: bind,
  signin: signin,
  sdk: callSdk,
  unsubscribe: (args) => {
    client(args).unsubscribe(args.channel);
    return true;
  },
  trigger: (args) => client(args).channel(args.channel).trigger(args.event, args.data),
  state: (args) => {
    const pusher = client(args);
    const channel = args.channel ? pusher.channel(args.channel) : null;
    return {
      connection: pusher.connection.state,
      socket_id: pusher.connection.socket_id || null,
      channel: channel ? channelState(channel) : null,
    };
  },
  disconnect: (args) => {
    client(args).disconnect();
    return true;
  },
  versions: () => ({
    "pusher-js": require("pusher-js/package.json").version,
    pusher: require("pusher/package.json").version,
    tweetnacl: require("tweetnacl/package.json").version,
    // (its "exports" hide package.json from require)
    "laravel-echo": JSON.parse(
      fs.readFileSync(path.join(__dirname, "node_modules", "laravel-echo", "package.json"), "utf8")
    ).version,
    node: process.version,
  }),
};

readline.createInterface({ input: process.stdin }).on("line", async (line) => {
  if (!line.trim()) {
    return;
  }
  let command = {};
  try {
    command = JSON.parse(line);
    const operation = operations[command.op];
    if (!operation) {
      throw new Error("unknown op " + command.op);
    }
    const result = await operation(command);
    emit({ id: command.id, ok: true, result: result === undefined ? null : result });
  } catch (error) {
    emit({ id: command.id, ok: false, error: String(error && error.stack ? error.stack : error) });
  }
});

process.stdin.on("end", () => {
  for (const entry of Object.values(clients)) {
    entry.pusher.disconnect();
  }
  process.exit(0);
});
