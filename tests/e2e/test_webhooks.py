"""Webhooks end to end: a real receiver on 127.0.0.1 gets signed posts."""

import http.server
import json
import logging
import queue
import subprocess
import threading
import time

import pytest

from pushi.base import webhooks as webhooks_module
from pushi.base.apps import AppDirectory
from pushi.base.store.sqlite import SQLiteStore

from support import PushiServer, Receiver, hooked_app, join, wait_until

ADMIN = {"Authorization": "Bearer test-admin-secret-0123456789abcdef"}


@pytest.fixture
def receiver():
    instance = Receiver()
    yield instance
    instance.close()


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
        retried = failing.seen
        assert len({body for body in retried}) == 1
        client.close()
    finally:
        failing.close()


def test_invalid_webhook_settings_are_refused(server):
    for hooks in (
        "x",
        [{"url": "ftp://x"}],
        [{"url": "http://x", "events": ["nope"]}],
        [{"url": "http://x", "events": []}],
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


@pytest.fixture
def in_process(tmp_path):
    """``hooked(*urls)``: an app with those hooks, its directory and a
    running ``Webhooks`` (reports in ``.reports``), all in this process."""
    store = SQLiteStore(str(tmp_path / "data"))
    made = []

    def hooked(*urls):
        app = store.create_app(
            "hooked", settings={"webhooks": [{"url": url} for url in urls]}
        )
        directory = AppDirectory(store)
        directory.refresh()
        reports = []
        webhooks = webhooks_module.Webhooks(
            directory, emit=lambda *report: reports.append(report)
        )
        webhooks.reports = reports
        made.append(webhooks)
        return app, directory, webhooks

    hooked.store = store
    yield hooked
    for webhooks in made:
        webhooks.stop()
    store.close()


def channels(events):
    return [event["channel"] for event in events]


def test_a_failed_batch_holds_back_the_later_ones(in_process):
    """A retry keeps its place: the batches after it wait for it, so that
    the consumer gets each app's events in order, each once."""
    failing = Receiver(
        answer=lambda body: 500 if b'"first"' in body and not failing.seen[1:] else 200
    )
    try:
        app, _directory, webhooks = in_process(failing.url)
        webhooks.observe(app["app_id"], "occupied", {"channel": "first"})
        wait_until(lambda: failing.seen, 5, 0.01, "the first post")
        webhooks.observe(app["app_id"], "occupied", {"channel": "second"})
        assert channels(failing.events(app, 2)) == ["first", "second"]
        assert failing.quiet(2.5)
    finally:
        failing.close()


def delivered(receiver, app, quiet=2):
    """Every event the receiver accepts until it has been quiet for
    ``quiet`` seconds (signatures checked)."""
    events = []
    while True:
        try:
            events += receiver.events(app, 1, timeout=quiet)
        except queue.Empty:
            return events


def test_an_endpoint_that_fails_costs_no_thread_per_retry_and_a_bounded_queue(
    in_process, monkeypatch
):
    """While an endpoint answers 500 the events wait in the hook's lane
    (no timer thread each), at most ``MAX_QUEUED`` of them; those that do
    not fit are dropped, logged and reported, and the rest follow in
    order once the endpoint is back."""
    monkeypatch.setattr(webhooks_module, "MAX_QUEUED", 20)
    down = threading.Event()
    down.set()
    failing = Receiver(answer=lambda body: 500 if down.is_set() else 200)
    try:
        app, _directory, webhooks = in_process(failing.url)
        threads = threading.active_count()
        warnings = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: warnings.append(record.getMessage())
        logging.getLogger("pushi.webhooks").addHandler(handler)
        try:
            for index in range(120):
                webhooks.observe(
                    app["app_id"], "occupied", {"channel": "c%03d" % index}
                )
                time.sleep(0.005)
            time.sleep(1.5)
            assert threading.active_count() <= threads + webhooks_module.SENDERS + 1
        finally:
            logging.getLogger("pushi.webhooks").removeHandler(handler)
        assert any("dropping" in warning for warning in warnings)
        down.clear()
        events = channels(delivered(failing, app, quiet=4))
        assert events == sorted(events) and len(set(events)) == len(events)
        assert 20 <= len(events) < 120
        dropped = [
            details["events"]
            for _app_id, kind, details in webhooks.reports
            if kind == "webhook_dropped"
        ]
        assert sum(dropped) == 120 - len(events)
    finally:
        failing.close()


def test_a_batch_has_a_bounded_size(in_process):
    """However many events wait at once, a post carries ``MAX_BATCH`` of
    them at most, in order."""
    receiver = Receiver(answer=lambda body: 200)
    try:
        app, _directory, webhooks = in_process(receiver.url)
        with webhooks._condition:
            for index in range(250):
                webhooks.observe(
                    app["app_id"], "occupied", {"channel": "c%03d" % index}
                )
        events = channels(delivered(receiver, app))
        assert events == ["c%03d" % index for index in range(250)]
        sizes = [len(json.loads(body)["events"]) for body in receiver.seen]
        assert max(sizes) <= 100  # webhooks_module.MAX_BATCH
    finally:
        receiver.close()


def test_a_slow_hook_does_not_delay_its_app_s_other_hook(in_process, monkeypatch):
    monkeypatch.setattr(webhooks_module, "TIMEOUT", 60)
    slow, fast = Receiver(answer=lambda body: None), Receiver(answer=lambda body: 200)
    try:
        app, _directory, webhooks = in_process(slow.url, fast.url)
        for channel in ("a", "b"):
            webhooks.observe(app["app_id"], "occupied", {"channel": channel})
            time.sleep(0.2)
        assert channels(fast.events(app, 2, timeout=3)) == ["a", "b"]
        slow.release.set()
        assert channels(slow.events(app, 2)) == ["a", "b"]
    finally:
        slow.close()
        fast.close()


def test_removing_a_hook_or_disabling_the_app_stops_its_retries(in_process):
    for change in ({"settings": {"webhooks": []}}, {"enabled": False}):
        failing = Receiver(answer=lambda body: 500)
        try:
            app, directory, webhooks = in_process(failing.url)
            webhooks.observe(app["app_id"], "occupied", {"channel": "c"})
            wait_until(lambda failing=failing: failing.seen, 5, 0.01, "the first post")
            in_process.store.update_app(app["app_id"], **change)
            directory.refresh()
            time.sleep(0.2)
            tried = len(failing.seen)
            time.sleep(3.5)
            assert len(failing.seen) == tried, change
        finally:
            failing.close()


def failures(webhooks, timeout):
    """The ``webhook_failed`` reports once there is one (fails after
    ``timeout``)."""
    return wait_until(
        lambda: [d for _a, kind, d in webhooks.reports if kind == "webhook_failed"],
        timeout,
        0.05,
        "a webhook_failed report",
    )


def test_the_test_route_posts_one_signed_test_webhook(server, receiver):
    """``POST /apps/<id>/webhooks/test``: one signed post of a
    ``pushi_test`` event, its outcome in the answer; the admin secret only."""
    app = server.create_app("tested")
    path = "apps/%s/webhooks/test" % app["app_id"]
    status, answer = server.request("POST", path, {"url": receiver.url}, ADMIN)
    assert status == 200, answer
    assert answer == {"url": receiver.url, "sent": True, "status": 200, "error": None}
    assert receiver.events(app, 1) == [{"name": "pushi_test"}]
    # a receiver that fails: the answer says so, and nothing is retried
    receiver.fail = 1
    status, answer = server.request("POST", path, {"url": receiver.url}, ADMIN)
    assert status == 200
    assert answer["sent"] is False and answer["status"] == 500
    assert answer["error"] == "HTTP 500"
    assert receiver.quiet(1.5) and len(receiver.seen) == 2
    # nobody listening
    closed = Receiver()
    closed.close()
    closed.httpd.server_close()
    status, answer = server.request("POST", path, {"url": closed.url}, ADMIN)
    assert status == 200 and answer["sent"] is False and answer["status"] is None
    assert "Connection" in answer["error"], answer
    # refusals
    status, answer = server.request("POST", path, {"url": "ftp://x"}, ADMIN)
    assert status == 400 and answer["result"] == "error"
    status, answer = server.request(
        "POST", path, {"url": receiver.url}, server.token_headers(app)
    )
    assert status in (401, 403) and answer["result"] == "error"
    status, answer = server.request(
        "POST", "apps/999999/webhooks/test", {"url": receiver.url}, ADMIN
    )
    assert status == 404
    assert receiver.quiet(0.5) and len(receiver.seen) == 2


def test_a_redirect_is_not_followed(server):
    """A 3xx is a failed post (retried), not a GET that the receiver's
    server sends elsewhere with the app's key: the admin chose the URL,
    the receiver does not choose another."""
    elsewhere = Receiver(
        respond=lambda handler: handler.send_response(200) or handler.end_headers()
    )

    def redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", elsewhere.url)
        handler.end_headers()

    redirecting = Receiver(respond=redirect)
    try:
        app = hooked_app(server, redirecting.url, ["channel_occupied"])
        client = server.connect(app)
        client.subscribe("moved")
        assert redirecting.posts.get(timeout=10) == ("POST", "/hook")
        assert redirecting.posts.get(timeout=5) == ("POST", "/hook")  # the retry
        assert elsewhere.quiet(1)
        client.close()
    finally:
        redirecting.close()
        elsewhere.close()


def test_an_answer_dripped_past_the_timeout_is_cut(in_process, monkeypatch):
    """``TIMEOUT`` bounds the whole post, not each read: a server that
    drips its answer fails it (and is retried) in that time."""
    monkeypatch.setattr(webhooks_module, "TIMEOUT", 1.0)
    dripping = Receiver(respond=lambda handler: dripping.drip(handler))
    try:
        app, _directory, webhooks = in_process(dripping.url)
        webhooks.observe(app["app_id"], "occupied", {"channel": "c"})
        assert [d["error"] for d in failures(webhooks, 3)] == ["timed out"]
    finally:
        dripping.close()


def test_a_receiver_s_bad_certificate_is_reported(in_process, tmp_path):
    key, cer = str(tmp_path / "key.pem"), str(tmp_path / "cer.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", key, "-out", cer],
        check=True,
        capture_output=True,
    )
    secure = Receiver(
        respond=lambda handler: handler.send_response(200) or handler.end_headers(),
        tls=(key, cer),
    )
    try:
        app, _directory, webhooks = in_process(secure.url)
        webhooks.observe(app["app_id"], "occupied", {"channel": "c"})
        (failure,) = failures(webhooks, 5)
        assert failure["error"] == "TLS: self-signed certificate"
        assert secure.posts.empty()
    finally:
        secure.close()


def test_a_post_under_way_does_not_hold_up_a_stop(tmp_path):
    """SIGTERM while a receiver drips its answer: the server exits at
    once, cutting the post."""
    dripping = Receiver(respond=lambda handler: dripping.drip(handler))
    instance = PushiServer(data_dir=str(tmp_path)).start()
    try:
        app = hooked_app(instance, dripping.url, ["channel_occupied"])
        client = instance.connect(app)
        client.subscribe("slow")
        assert dripping.posts.get(timeout=10) == ("POST", "/hook")
        started = time.time()
        instance.process.terminate()
        instance.process.wait(20)
        assert time.time() - started < 4
    finally:
        instance.stop(kill=True)
        dripping.close()
