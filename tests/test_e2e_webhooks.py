"""Webhooks end to end: a real receiver on 127.0.0.1 gets signed posts."""

import hashlib
import hmac
import http.server
import json
import queue
import threading
import time

import pytest

import pushi
from pushi.base import webhooks as webhooks_module
from pushi.base.apps import AppDirectory
from pushi.base.store.sqlite import SQLiteStore

ADMIN = {"Authorization": "Bearer test-admin-secret-0123456789abcdef"}


class Receiver:
    """An HTTP endpoint recording webhook posts; fails the first ``fail``."""

    def __init__(self, fail=0):
        self.posts = queue.Queue()
        self.fail = fail
        self.refused = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.fail > 0:
                    receiver.fail -= 1
                    receiver.refused.append(body)
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.posts.put((dict(self.headers), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = "http://127.0.0.1:%d/hook" % self.httpd.server_address[1]

    def events(self, app, count, timeout=15):
        """The next ``count`` events, checking every post's signature."""
        events = []
        deadline = time.time() + timeout
        while len(events) < count:
            headers, body = self.posts.get(timeout=max(0.1, deadline - time.time()))
            assert headers["X-Pusher-Key"] == app["key"]
            expected = hmac.new(
                app["secret"].encode(), body, hashlib.sha256
            ).hexdigest()
            assert hmac.compare_digest(headers["X-Pusher-Signature"], expected)
            self.last = body
            payload = json.loads(body)
            assert payload["time_ms"] > 0
            events += payload["events"]
        return events

    def quiet(self, seconds):
        try:
            self.posts.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def receiver():
    instance = Receiver()
    yield instance
    instance.close()


def hooked_app(server, url, events=None, **settings):
    hook = {"url": url}
    if events:
        hook["events"] = events
    status, app = server.request(
        "POST",
        "apps",
        {
            "name": "hooked",
            "client_events": True,
            "settings": dict(settings, webhooks=[hook]),
        },
        ADMIN,
    )
    assert status == 200, app
    return app


def join(client, app, channel, data=None):
    answer = pushi.Pushi(
        app_id=app["app_id"], app_key=app["key"], app_secret=app["secret"]
    ).authenticate(channel, client.socket_id, data)
    return client.subscribe(channel, answer["auth"], answer.get("channel_data"))


def test_occupied_vacated_and_the_linger_window(server, receiver):
    app = hooked_app(server, receiver.url)
    client = server.connect(app)
    client.subscribe("room")
    assert receiver.events(app, 1) == [{"name": "channel_occupied", "channel": "room"}]
    # leaving and coming back within 3 s: the consumer hears nothing
    client.send({"event": "pusher:unsubscribe", "data": {"channel": "room"}})
    client.subscribe("room")
    assert receiver.quiet(4)
    client.close()
    assert receiver.events(app, 1) == [{"name": "channel_vacated", "channel": "room"}]


def test_members_client_events_and_cache_miss(server, receiver):
    app = hooked_app(
        server,
        receiver.url,
        ["member_added", "member_removed", "client_event", "cache_miss"],
    )
    alice, bob = server.connect(app), server.connect(app)
    join(alice, app, "presence-room", {"user_id": "alice"})
    assert receiver.events(app, 1) == [
        {"name": "member_added", "channel": "presence-room", "user_id": "alice"}
    ]
    join(bob, app, "presence-room", {"user_id": "bob"})
    receiver.events(app, 1)
    alice.send({"event": "client-wave", "channel": "presence-room", "data": {"hi": 1}})
    event = receiver.events(app, 1)[0]
    assert event == {
        "name": "client_event",
        "channel": "presence-room",
        "event": "client-wave",
        "data": '{"hi":1}',
        "socket_id": alice.socket_id,
        "user_id": "alice",
    }
    bob.subscribe("cache-prices")
    assert receiver.events(app, 1) == [
        {"name": "cache_miss", "channel": "cache-prices"}
    ]
    alice.close()
    assert receiver.events(app, 1) == [
        {"name": "member_removed", "channel": "presence-room", "user_id": "alice"}
    ]
    bob.close()


def test_subscription_count_when_the_app_counts(server, receiver):
    """Pusher's subscription_count webhook: the channel's connections after
    each change, on every kind of channel but presence, once the app turns
    subscription counts on."""
    quiet = hooked_app(server, receiver.url, ["subscription_count"])
    client = server.connect(quiet)
    client.subscribe("room")
    assert receiver.quiet(1)
    client.close()
    app = hooked_app(
        server, receiver.url, ["subscription_count"], subscription_count_events=True
    )
    alice, bob = server.connect(app), server.connect(app)
    alice.subscribe("room")
    assert receiver.events(app, 1) == [
        {"name": "subscription_count", "channel": "room", "subscription_count": 1}
    ]
    bob.subscribe("room")
    assert receiver.events(app, 1) == [
        {"name": "subscription_count", "channel": "room", "subscription_count": 2}
    ]
    bob.send({"event": "pusher:unsubscribe", "data": {"channel": "room"}})
    assert receiver.events(app, 1) == [
        {"name": "subscription_count", "channel": "room", "subscription_count": 1}
    ]
    join(bob, app, "presence-room", {"user_id": "bob"})
    assert receiver.quiet(1)
    alice.close()
    bob.close()


def test_failed_posts_are_retried(server):
    failing = Receiver(fail=2)
    try:
        app = hooked_app(server, failing.url, ["channel_occupied"])
        client = server.connect(app)
        client.subscribe("retry")
        assert failing.events(app, 1, timeout=20) == [
            {"name": "channel_occupied", "channel": "retry"}
        ]
        assert failing.fail == 0
        # a retry is the same webhook: its time_ms still says when it was
        # made, so that the consumer can tell how late it comes
        retried = failing.refused + [failing.last]
        assert len({body for body in retried}) == 1
        client.close()
    finally:
        failing.close()


def test_invalid_webhook_settings_are_refused(server):
    for hooks in (
        "x",
        [{"url": "ftp://x"}],
        [{"url": "http://x", "events": ["nope"]}],
        [{"uri": "http://x"}],
    ):
        status, answer = server.request(
            "POST", "apps", {"name": "bad", "settings": {"webhooks": hooks}}, ADMIN
        )
        assert status == 400, hooks


def test_an_app_whose_server_hangs_delays_only_its_own_webhooks(
    tmp_path, receiver, monkeypatch
):
    """In process: one app's endpoint holds its post open for as long as
    the test wants (the post's timeout raised past it); another app's
    webhooks still arrive meanwhile, and the held app's next ones follow
    it in order."""
    monkeypatch.setattr(webhooks_module, "TIMEOUT", 60)
    held = threading.Event()
    release = threading.Event()

    class Hanging(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            held.set()
            release.wait(30)
            hanging.posts.put((dict(self.headers), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    hanging = Receiver()
    hanging.httpd.shutdown()
    hanging.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hanging)
    threading.Thread(target=hanging.httpd.serve_forever, daemon=True).start()
    hanging.url = "http://127.0.0.1:%d/hook" % hanging.httpd.server_address[1]
    store = SQLiteStore(str(tmp_path / "data"))
    webhooks = None
    try:
        slow, fast = (
            store.create_app(name, settings={"webhooks": [{"url": url}]})
            for name, url in (("slow", hanging.url), ("fast", receiver.url))
        )
        directory = AppDirectory(store)
        directory.refresh()
        webhooks = webhooks_module.Webhooks(directory)
        webhooks.observe(slow["app_id"], "occupied", {"channel": "first"})
        assert held.wait(10)
        webhooks.observe(slow["app_id"], "occupied", {"channel": "second"})
        webhooks.observe(fast["app_id"], "occupied", {"channel": "news"})
        try:
            assert receiver.events(fast, 1, timeout=10) == [
                {"name": "channel_occupied", "channel": "news"}
            ]
        finally:
            release.set()
        assert hanging.events(slow, 2) == [
            {"name": "channel_occupied", "channel": "first"},
            {"name": "channel_occupied", "channel": "second"},
        ]
    finally:
        release.set()
        if webhooks is not None:
            webhooks.stop()
        hanging.close()
        store.close()
