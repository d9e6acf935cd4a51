"""``GET /metrics`` (and ``PUSHI_METRICS_PORT``) and ``GET /ready``, on a
real server: the text is read with Prometheus' own parser, and the values
must move as real traffic says they should."""

import json
import signal
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import (
    ADMIN_SECRET,
    PushiServer,
    Receiver,
    free_port,
    hooked_app,
    join,
    stalled_subscriber,
    wait_until,
)

ADMIN = {"Authorization": "Bearer " + ADMIN_SECRET}


def fetch(url, headers=None):
    """``(status, content type, text)`` of a GET."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return (
                response.status,
                response.headers["Content-Type"],
                response.read().decode(),
            )
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


def parse(text):
    """``{(sample name, ((label, value), ...)): value}`` of a scrape,
    read by Prometheus' parser."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(server):
    status, content_type, text = fetch(server.base_url + "metrics", ADMIN)
    assert status == 200, text
    assert content_type.startswith("text/plain")
    return parse(text)


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


def moved(before, after, name, **labels):
    return value(after, name, **labels) - value(before, name, **labels)


def wait_for(server, check, timeout=10):
    """A scrape for which ``check(samples)`` holds (the loop counts as it
    goes: a close is counted once the server has seen it)."""

    def scraped():
        samples = scrape(server)
        return samples if check(samples) else None

    return wait_until(scraped, timeout)


@pytest.fixture
def metered(server):
    """A fresh app (client events off) of the module's server."""
    return server.create_app("metered")


def test_metrics_need_the_admin_secret(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}):
        status, content_type, text = fetch(server.base_url + "metrics", headers)
        assert status == 401, text
        assert json.loads(text)["code"] == 401
    status, _type, text = fetch(server.base_url + "metrics", ADMIN)
    assert status == 200 and "pushi_messages_delivered" in text


def test_metrics_are_off_over_rest_without_an_admin_secret():
    instance = PushiServer(env={"PUSHI_ADMIN_SECRET": ""}).start()
    try:
        status, _type, text = fetch(instance.base_url + "metrics", ADMIN)
        assert status == 403 and "PUSHI_ADMIN_SECRET" in json.loads(text)["message"]
    finally:
        instance.stop()


def test_delivered_published_connections_and_subscriptions_follow_traffic(
    server, metered
):
    app_id = metered["app_id"]
    subscribers, events = 3, 4
    before = scrape(server)
    clients = [server.connect(metered) for _ in range(subscribers)]
    pushi_client = server.connect(metered, dialect="pushi")
    try:
        for client in clients:
            assert client.subscribe("news")["event"] == (
                "pusher_internal:subscription_succeeded"
            )
        during = scrape(server)
        assert value(during, "pushi_connections", app=app_id, dialect="pusher") == 3
        assert value(during, "pushi_connections", app=app_id, dialect="pushi") == 1
        assert value(during, "pushi_channels", app=app_id) == 1
        assert value(during, "pushi_subscriptions", app=app_id) == subscribers
        assert (
            moved(
                before,
                during,
                "pushi_connections_opened_total",
                app=app_id,
                dialect="pusher",
            )
            == subscribers
        )
        assert moved(before, during, "pushi_subscribes_total", app=app_id) == 3

        api = server.client(metered)
        for index in range(events):
            api.trigger_event("news", {"n": index}, persist=False)
        for client in clients:
            for _ in range(events):
                assert client.recv_event("message")["channel"] == "news"
        # one stored publish: its commit is timed
        api.trigger_event("news", "kept", persist=True)
        for client in clients:
            client.recv_event("message")
        after = scrape(server)
        assert (
            moved(before, after, "pushi_messages_delivered_total", app=app_id)
            == (events + 1) * subscribers
        )
        assert (
            moved(before, after, "pushi_messages_published_total", app=app_id)
            == events + 1
        )
        assert moved(before, after, "pushi_publish_seconds_count") == events + 1
        assert moved(before, after, "pushi_publish_seconds_sum") > 0
        assert moved(before, after, "pushi_store_commit_seconds_count") >= 1
        # the fan-out's frames (over 50 bytes each) are counted
        assert (
            moved(before, after, "pushi_bytes_sent_total", port="websocket")
            > (events + 1) * subscribers * 50
        )
        assert moved(before, after, "pushi_bytes_received_total", port="rest") > 0
        assert value(after, "pushi_component_up", component="store") == 1
    finally:
        for client in clients + [pushi_client]:
            client.close()
    closed = wait_for(
        server,
        lambda samples: (
            value(samples, "pushi_connections", app=app_id, dialect="pusher") == 0
        ),
    )
    assert value(closed, "pushi_connections", app=app_id, dialect="pusher") == 0
    assert value(closed, "pushi_channels", app=app_id) == 0
    assert (
        moved(
            before,
            closed,
            "pushi_connections_closed_total",
            app=app_id,
            dialect="pushi",
        )
        == 1
    )


def test_presence_members_and_client_events_are_counted(server, app):
    app_id = app["app_id"]
    before = scrape(server)
    first, second = server.connect(app), server.connect(app)
    try:
        assert join(first, app, "private-chat")["event"].endswith("succeeded")
        assert join(second, app, "private-chat")["event"].endswith("succeeded")
        for number, client in enumerate((first, second)):
            answer = join(
                client, app, "presence-room", json.dumps({"user_id": "u%d" % number})
            )
            assert answer["event"] == "pusher_internal:subscription_succeeded"
        first.send({"event": "client-typing", "channel": "private-chat", "data": {}})
        assert second.recv_event("client-typing")["channel"] == "private-chat"
        after = scrape(server)
        assert value(after, "pushi_presence_members", app=app_id) == 2
        assert value(after, "pushi_channels", app=app_id) == 2
        assert value(after, "pushi_subscriptions", app=app_id) == 4
        assert moved(before, after, "pushi_client_events_total", app=app_id) == 1
        # the sender is left out of its own client event
        assert moved(before, after, "pushi_messages_delivered_total", app=app_id) == 1
    finally:
        first.close()
        second.close()


def test_refusals_are_counted_by_status_and_code(server, metered):
    before = scrape(server)
    # REST: unsigned (401), unknown app (404), too large (413)
    status, _body = server.request(
        "POST", "apps/%s/events" % metered["app_id"], {"name": "x", "channel": "a"}
    )
    assert status == 401
    status, _body = server.request("GET", "apps/999999", headers=ADMIN)
    assert status == 404
    status, _body = server.request(
        "POST",
        "apps/%s/events" % metered["app_id"],
        {"name": "x", "channel": "a", "data": "x" * 200000},
        server.token_headers(metered),
    )
    assert status == 413
    # socket: an unknown key is closed with 4001; a client event where
    # they are off is a pusher:error 4303; a bad signature a
    # subscription_error 401
    assert (
        server.connect({"key": "no-such-key"}, expect_established=False).close_code()
        == 4001
    )
    client = server.connect(metered)
    try:
        client.subscribe("private-x", auth="%s:%s" % (metered["key"], "0" * 64))
        client.send({"event": "client-x", "channel": "private-x", "data": {}})
        codes = []
        while 4303 not in codes:
            codes.append(client.recv_event("pusher:error")["data"]["code"])
    finally:
        client.close()
    after = scrape(server)
    for kind, code in (
        ("rest", "401"),
        ("rest", "404"),
        ("rest", "413"),
        ("socket", "4001"),
        ("socket", "4303"),
        ("subscription", "401"),
    ):
        assert (
            moved(before, after, "pushi_rejected_total", kind=kind, code=code) == 1
        ), (kind, code)


def test_a_slow_consumer_is_counted():
    instance = PushiServer(env={"PUSHI_MAX_BUFFER": "65536"}).start()
    try:
        app = instance.create_app("slow")
        stalled = stalled_subscriber(instance.server_port, app["key"], "flood")
        try:
            api = instance.client(app)
            payload = "x" * 9000

            def counted():
                for _ in range(10):
                    api.trigger_event("flood", payload, persist=False)
                samples = scrape(instance)
                return samples if value(samples, "pushi_slow_consumers_total") else None

            samples = wait_until(counted, 30, 0, "a slow consumer counted")
            assert value(samples, "pushi_slow_consumers_total") == 1
            assert (
                value(samples, "pushi_rejected_total", kind="socket", code="4100") == 1
            )
        finally:
            stalled.close()
    finally:
        instance.stop()


def test_webhook_posts_are_counted_by_result(server):
    receiver = Receiver(fail=1)
    try:
        app = hooked_app(server, receiver.url)
        client = server.connect(app)
        try:
            client.subscribe("news")
            assert receiver.events(app, 1)[0]["name"] == "channel_occupied"
        finally:
            client.close()
        labels = {"app": app["app_id"]}
        samples = wait_for(
            server,
            lambda samples: value(
                samples, "pushi_webhook_posts_total", result="sent", **labels
            ),
        )
        assert (
            value(samples, "pushi_webhook_posts_total", result="retry", **labels) == 1
        )
        assert value(samples, "pushi_webhook_posts_total", result="sent", **labels) == 1
    finally:
        receiver.close()


def test_loop_lag_is_measured(server):
    samples = wait_for(
        server, lambda samples: value(samples, "pushi_loop_lag_seconds_count") >= 2
    )
    assert value(samples, "pushi_loop_lag_seconds_count") >= 2
    # every sample falls in some bucket
    assert value(samples, "pushi_loop_lag_seconds_bucket", le="+Inf") == value(
        samples, "pushi_loop_lag_seconds_count"
    )


def test_metrics_port_serves_without_authentication():
    port = free_port()
    instance = PushiServer(env={"PUSHI_METRICS_PORT": str(port)}).start()
    try:
        app = instance.create_app("counted")
        client = instance.connect(app)
        try:
            client.subscribe("news")
            instance.client(app).trigger_event("news", "hello", persist=False)
            client.recv_event("message")
            status, content_type, text = fetch("http://127.0.0.1:%d/metrics" % port)
            assert status == 200 and content_type.startswith("text/plain")
            samples = parse(text)
            assert (
                value(samples, "pushi_messages_delivered_total", app=app["app_id"]) == 1
            )
            assert (
                value(samples, "pushi_connections", app=app["app_id"], dialect="pusher")
                == 1
            )
        finally:
            client.close()
        # the REST port's route still asks for the secret
        assert fetch(instance.base_url + "metrics")[0] == 401
    finally:
        instance.stop()


def test_metrics_off_answers_404_and_the_server_still_delivers():
    instance = PushiServer(env={"PUSHI_METRICS": "off"}).start()
    try:
        app = instance.create_app("unmetered")
        client = instance.connect(app)
        try:
            client.subscribe("news")
            instance.client(app).trigger_event("news", "hello", persist=False)
            assert client.recv_event("message")["data"] == "hello"
        finally:
            client.close()
        status, _type, text = fetch(instance.base_url + "metrics", ADMIN)
        assert status == 404
        assert json.loads(text)["message"] == "Metrics are off (PUSHI_METRICS=off)"
        # the secret is still asked for first: nothing told to a stranger
        assert fetch(instance.base_url + "metrics")[0] == 401
    finally:
        instance.stop()


def test_ready_until_a_stop_begins_then_503_while_draining():
    instance = PushiServer(env={"PUSHI_DRAIN_SECONDS": "4"}).start()
    try:
        assert instance.request("GET", "ready") == (200, {"status": "ready"})
        app = instance.create_app("draining")
        client = instance.connect(app)
        client.subscribe("news")
        instance.process.send_signal(signal.SIGTERM)

        def draining():
            status, answer = instance.request("GET", "ready")
            return answer if status == 503 else None

        answer = wait_until(draining, 10, 0.05, "/ready answers 503")
        assert answer == {"result": "error", "code": 503, "message": "Server stopping"}
        # still serving while the load balancer takes note: the socket
        # gets what is published, and /health answers
        instance.client(app).trigger_event("news", "still here", persist=False)
        assert client.recv_event("message")["data"] == "still here"
        assert instance.request("GET", "health")[0] == 200
        # then the stop goes on: 4200, and the process ends
        assert client.close_code(timeout=15) == 4200
        assert instance.process.wait(15) == 0
    finally:
        instance.stop()
