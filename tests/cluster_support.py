"""Support of the cluster tests that run real nodes: nodes as subprocesses
on one ``redis-server`` and one data dir, signed REST reads, presence
joins, and the member events a socket has seen."""

import json
import shutil
import tempfile
import time

import pytest

import pushi

from support import ADMIN_SECRET, PushiServer, signed_path

ADMIN = {"Authorization": "Bearer " + ADMIN_SECRET}


@pytest.fixture(name="cluster")
def cluster_fixture(redis_server):
    """Starts nodes on ``redis_server`` sharing one data dir:
    ``cluster.node()``; ``cluster.make_app(**settings)`` makes an app
    (with client events) on the shared store, which every node serves."""
    made = []
    data_dir = tempfile.mkdtemp(prefix="pushi-cluster-")

    class Cluster:
        nodes = made
        redis = redis_server

        def node(self):
            node = PushiServer(data_dir=data_dir, redis_url=redis_server.url)
            made.append(node)
            node.start()
            return node

        def store_app(self, **settings):
            """An app written to the shared store by another process (as
            ``pushi app create`` does): no node hears of it until a socket
            of it comes (or the apps poller reads it)."""
            from pushi.base.store.sqlite import SQLiteStore

            store = SQLiteStore(data_dir)
            try:
                return store.create_app("stored", True, settings)
            finally:
                store.close()

        def make_app(self, **settings):
            status, app = made[0].request(
                "POST",
                "apps",
                {"name": "cluster", "client_events": True, "settings": settings},
                ADMIN,
            )
            assert status == 200, app
            return app

    yield Cluster()
    for node in made:
        node.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


class TwoNodes:
    """Two nodes on one ``redis-server`` and one data dir, used where one
    ``PushiServer`` is: REST calls, the CLI and the apps go through node
    ``a``; clients connect to node ``b`` first, then (for the next clients
    of an app) alternate between ``a`` and ``b``, so that a publish, a
    query or a client event crosses the nodes. One Pushi behind a load
    balancer should not tell the difference."""

    def __init__(self):
        from redis_support import RedisServer

        self.redis = RedisServer()
        self.data_dir = tempfile.mkdtemp(prefix="pushi-cluster-")
        self.a = self.b = None
        # app key -> how many clients of it connected so far
        self._connected = {}

    def start(self):
        self.redis.start()
        self.a = PushiServer(data_dir=self.data_dir, redis_url=self.redis.url)
        self.b = PushiServer(data_dir=self.data_dir, redis_url=self.redis.url)
        self.a.start()
        self.b.start()
        return self

    def stop(self):
        for node in (self.a, self.b):
            if node is not None:
                node.stop()
        self.redis.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __getattr__(self, name):
        # REST, CLI and app set-up: node a
        if name in ("a", "b"):
            raise AttributeError(name)
        return getattr(self.a, name)

    @property
    def server_port(self):
        return self.b.server_port

    @property
    def ws_url(self):
        return self.b.ws_url

    def next_node(self, app):
        """The node the next client of ``app`` connects to: b, a, b, ..."""
        count = self._connected.get(app["key"], 0)
        self._connected[app["key"]] = count + 1
        return self.b if count % 2 == 0 else self.a

    def next_ws_port(self, app):
        return self.next_node(app).server_port

    def connect(self, app, dialect="pusher", **kwargs):
        return self.next_node(app).connect(app, dialect, **kwargs)

    def socket_ids(self, app, expected=None, timeout=15):
        """The ids of an app's open sockets on both nodes, as node ``a``
        lists them (any node lists every node's)."""
        return self.a.socket_ids(app, expected, timeout)


def rest(node, app, path, params=None):
    """``(status, answer)`` of a signed GET of ``/apps/<id>/<path>``."""
    full = "/apps/%s/%s" % (app["app_id"], path)
    return node.request("GET", signed_path(app, "GET", full, params)[1:])


def member(user_id, peer=False):
    data = {"user_id": user_id, "user_info": {"name": user_id}}
    if peer:
        data["peer"] = True
    return data


def join(client, app, channel, user_id, peer=False):
    """Subscribes ``client`` to a presence channel as ``user_id`` (a peer
    member with ``peer``); the answer (``subscription_succeeded`` or
    ``subscription_error``)."""
    signed = pushi.Pushi(
        app_id=app["app_id"], app_key=app["key"], app_secret=app["secret"]
    ).authenticate(channel, client.socket_id, member(user_id, peer))
    answer = client.subscribe(channel, signed["auth"], signed["channel_data"])
    # member events of the channel (another socket of the user) may come
    # before the answer
    while answer["event"].startswith("pusher_internal:member_"):
        answer = client.recv()
    return answer


def data_of(message):
    data = message["data"]
    return json.loads(data) if isinstance(data, str) else data


def joined(node, app, channel, user_id):
    """A Pusher-dialect client of ``node`` on a presence channel as
    ``user_id``, and its members when it joined (user id -> info)."""
    client = node.connect(app)
    answer = join(client, app, channel, user_id)
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    return client, data_of(answer)["presence"]["hash"]


class MemberView:
    """What one observer socket knows of a presence channel: the members
    of its subscription data, then each member event it receives."""

    def __init__(self, client, members):
        self.client = client
        self.members = set(members)
        self.events = []
        self.errors = []

    def drain(self, seconds=0.5):
        """Reads what arrives until ``seconds`` pass in silence."""
        while True:
            try:
                message = self.client.recv(seconds)
            except TimeoutError:
                return self
            name = message.get("event")
            if name not in (
                "pusher_internal:member_added",
                "pusher_internal:member_removed",
            ):
                continue
            user_id = data_of(message)["user_id"]
            self.events.append((name.rsplit("_", 1)[1], user_id))
            if name.endswith("added"):
                if user_id in self.members:
                    self.errors.append(("added twice", user_id))
                self.members.add(user_id)
            else:
                if user_id not in self.members:
                    self.errors.append(("removed unknown", user_id))
                self.members.discard(user_id)

    def of(self, user_id):
        return [kind for kind, user in self.events if user == user_id]

    def wait(self, check, timeout=20):
        """Drains until ``check(self)`` holds (returned)."""
        deadline = time.time() + timeout
        while not check(self) and time.time() < deadline:
            self.drain(0.2)
        return check(self)


def wait_for(check, timeout=20, step=0.2):
    """Polls ``check()`` until it returns a true value (returned)."""
    deadline = time.time() + timeout
    while True:
        value = check()
        if value or time.time() > deadline:
            return value
        time.sleep(step)


class Hooks:
    """A webhook receiver: every event of every post (answered 200)."""

    def __init__(self):
        import http.server
        import threading

        self.events = []
        hooks = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hooks.events.extend(json.loads(body)["events"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = "http://127.0.0.1:%d/hook" % self.httpd.server_address[1]

    def named(self, name, channel=None):
        return [
            event
            for event in list(self.events)
            if event["name"] == name and channel in (None, event["channel"])
        ]

    def close(self):
        self.httpd.shutdown()


def signin(client, app, user_id, watchlist=None):
    """Signs ``client`` in as ``user_id`` (watching ``watchlist``); the
    answer."""
    from pushi.proto import auth

    user = {"id": user_id}
    if watchlist is not None:
        user["watchlist"] = watchlist
    user_data = json.dumps(user)
    token = auth.token(
        app["key"], app["secret"], auth.user_string(client.socket_id, user_data)
    )
    client.send(
        {"event": "pusher:signin", "data": {"auth": token, "user_data": user_data}}
    )
    return client.recv_event("pusher:signin_success")
