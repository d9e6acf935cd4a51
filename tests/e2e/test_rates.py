"""Per-app rates end to end: an app past its publishes, reads or new
connections a second is told to come back later (429 with ``Retry-After``,
or ``pusher:error`` and close 4100 after the upgrade), and one app flooding
the server does not keep another app's publishes from being answered and
delivered.

The bounds are generous (seconds, and counts with a second's slack): the
latencies themselves are a benchmark figure (``scripts/bench --scenario
abuse --attacks publish-flood``).
"""

import http.client
import json
import threading
import time

from support import ADMIN_SECRET, PushiServer, signed_path

PATIENCE = 4
""" Seconds the victim waits for an answer or an event """

FLOOD = 4
""" Seconds the attacking app publishes as fast as answered """


def set_settings(server, app, **settings):
    server.update_app(app, settings=settings)


def request(connection, app, method, path, body=None, headers=None):
    """A signed request on a kept-alive ``http.client`` connection:
    ``(status, Retry-After header, JSON answer)``."""
    data = json.dumps(body).encode() if body is not None else None
    target = signed_path(app, method, path, body=data)
    headers = dict(headers or {}, **({"Content-Type": "application/json"}))
    connection.request(method, target, data, headers)
    response = connection.getresponse()
    answer = json.loads(response.read() or b"null")
    return response.status, response.getheader("Retry-After"), answer


def rest(server):
    return http.client.HTTPConnection("127.0.0.1", server.app_port, timeout=PATIENCE)


def publish(connection, app, channel="news", data="x", channels=None):
    body = {"name": "tick", "data": data}
    if channels:
        body["channels"] = channels
    else:
        body["channel"] = channel
    return request(connection, app, "POST", "/apps/%s/events" % app["app_id"], body)


def assert_429(status, retry_after, answer, setting):
    assert status == 429, (status, answer)
    assert int(retry_after) >= 1
    assert answer["result"] == "error" and answer["code"] == 429
    assert setting in answer["message"]


def first_429(answers):
    """The first answer refused with 429 (the last answer when none is)."""
    return next((answer for answer in answers if answer[0] == 429), answers[-1])


def test_the_rates_are_operator_settings(server):
    app = server.create_app("tenant")
    headers = server.token_headers(app)
    for setting in (
        "max_backend_events_per_second",
        "max_read_requests_per_second",
        "max_connections_per_second",
    ):
        status, answer = server.request(
            "GET", "apps/%s" % app["app_id"], headers=headers
        )
        assert status == 200 and answer["settings"][setting] == 0
        status, answer = server.request(
            "PUT",
            "apps/%s" % app["app_id"],
            {"settings": {setting: 1000}},
            headers,
        )
        assert status == 403, answer


def test_a_publish_flood_gets_429s_and_another_app_is_served(server):
    attacker = server.create_app("flooder")
    set_settings(server, attacker, max_backend_events_per_second=20)
    victim = server.create_app("victim")
    listener = server.connect(victim)
    listener.subscribe("news")
    flooded = server.connect(attacker)
    flooded.subscribe("news")
    statuses = {}
    refusals = []
    elapsed = []

    def flood():
        connection = rest(server)
        start = time.monotonic()
        try:
            while time.monotonic() - start < FLOOD:
                status, retry_after, answer = publish(connection, attacker)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 429 and len(refusals) < 5:
                    refusals.append((status, retry_after, answer))
        finally:
            elapsed.append(time.monotonic() - start)
            connection.close()

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        connection = rest(server)
        sent = 0
        while thread.is_alive() and sent < 40:
            sent += 1
            status, _retry, answer = publish(connection, victim, data=str(sent))
            assert status == 200, answer
            event = listener.recv_event("tick", timeout=PATIENCE)
            assert event["data"] == str(sent)
            time.sleep(0.05)
        connection.close()
        thread.join(FLOOD + PATIENCE)
        assert not thread.is_alive()
        assert sent > 5
        assert refusals and statuses.get(429, 0) > statuses.get(200, 0)
        for refusal in refusals:
            assert_429(*refusal, "max_backend_events_per_second")
        # a second's burst, then 20 a second (a second's slack either way)
        assert statuses[200] <= 20 * (elapsed[0] + 2)
        received = 0
        while True:
            try:
                flooded.recv_event("tick", timeout=1)
            except TimeoutError:
                break
            received += 1
        assert received == statuses[200]
    finally:
        listener.close()
        flooded.close()


def test_a_publish_costs_one_per_channel(server):
    app = server.create_app("counted")
    set_settings(server, app, max_backend_events_per_second=10)
    connection = rest(server)
    try:
        channels = ["c%d" % index for index in range(10)]
        # ten channels at once use the whole second
        assert publish(connection, app, channels=channels)[0] == 200
        assert_429(*publish(connection, app), "max_backend_events_per_second")
        time.sleep(1.2)
        batch = {"batch": [{"name": "b", "channel": c, "data": "x"} for c in channels]}
        path = "/apps/%s/batch_events" % app["app_id"]
        status, _retry, answer = request(connection, app, "POST", path, batch)
        assert status == 200, answer
        assert_429(*publish(connection, app), "max_backend_events_per_second")
        # the operator's own requests are not counted
        admin = {"Authorization": "Bearer " + ADMIN_SECRET}
        status, answer = server.request(
            "POST",
            "apps/%s/events" % app["app_id"],
            {"name": "n", "channel": "c", "data": "x"},
            admin,
        )
        assert status == 200, answer
        # an invalid publish is refused for what it is, and costs nothing
        time.sleep(1.2)
        status, _retry, _answer = publish(connection, app, channel="bad name")
        assert status == 400
        assert publish(connection, app, channels=channels)[0] == 200
    finally:
        connection.close()


def test_reads_past_the_rate_get_429_and_another_app_reads(server):
    reader = server.create_app("reader")
    set_settings(server, reader, max_read_requests_per_second=5)
    other = server.create_app("other reader")
    connection = rest(server)
    try:
        answers = []
        for _ in range(15):
            answers.append(
                request(
                    connection, reader, "GET", "/apps/%s/channels" % reader["app_id"]
                )
            )
            status, _retry, answer = request(
                connection, other, "GET", "/apps/%s/channels" % other["app_id"]
            )
            assert status == 200, answer
        statuses = [answer[0] for answer in answers]
        assert statuses[:5] == [200] * 5 and set(statuses) == {200, 429}
        refusal = answers[statuses.index(429)]
        assert_429(*refusal, "max_read_requests_per_second")
        # every read route counts, a session token's reads too
        headers = server.token_headers(reader)
        path = "apps/%s/stats" % reader["app_id"]
        statuses = [server.request("GET", path, headers=headers)[0] for _ in range(15)]
        assert set(statuses) == {200, 429} or set(statuses) == {429}
        # the admin secret's are not counted
        admin = {"Authorization": "Bearer " + ADMIN_SECRET}
        status, answer = server.request(
            "GET", "apps/%s/channels" % reader["app_id"], headers=admin
        )
        assert status == 200, answer
        time.sleep(int(refusal[1]) + 0.2)
        status, _retry, answer = request(
            connection, reader, "GET", "/apps/%s/channels" % reader["app_id"]
        )
        assert status == 200, answer
    finally:
        connection.close()


def test_connections_past_the_rate_get_4100_after_the_upgrade(server):
    crowded = server.create_app("crowded")
    set_settings(server, crowded, max_connections_per_second=3)
    other = server.create_app("calm")
    kept, others = [], []
    try:
        refused = 0
        for _ in range(12):
            client = server.connect(crowded, expect_established=False)
            message = client.recv()
            if message["event"] == "pusher:connection_established":
                kept.append(client)
                continue
            assert message["event"] == "pusher:error", message
            assert message["data"]["code"] == 4100
            assert "connections" in message["data"]["message"]
            assert client.close_code() == 4100
            refused += 1
            others.append(server.connect(other))
        assert len(kept) >= 3 and refused >= 1
        # another second, another three
        time.sleep(1.2)
        kept.append(server.connect(crowded))
        # the ones admitted are served as any other
        kept[0].subscribe("news")
        status, answer = server.request(
            "POST",
            signed_path(
                crowded,
                "POST",
                "/apps/%s/events" % crowded["app_id"],
                body=b'{"name":"n","channel":"news","data":"x"}',
            )[1:],
            raw=b'{"name":"n","channel":"news","data":"x"}',
        )
        assert status == 200, answer
        assert kept[0].recv_event("n")["data"] == "x"
    finally:
        for client in kept + others:
            client.close()


def test_under_another_wsgi_server_the_rates_hold_too():
    """With APP_SERVER=legacy, publishes take the blocking WSGI path and
    reads Appier's own server: the same 429 with Retry-After."""
    instance = PushiServer(env={"APP_SERVER": "legacy"}).start()
    try:
        app = instance.create_app("legacy")
        set_settings(
            instance,
            app,
            max_backend_events_per_second=2,
            max_read_requests_per_second=2,
        )
        connection = rest(instance)
        try:
            answers = [publish(connection, app) for _ in range(10)]
            assert [answer[0] for answer in answers[:2]] == [200, 200]
            assert_429(*first_429(answers), "max_backend_events_per_second")
            path = "/apps/%s/channels" % app["app_id"]
            answers = [request(connection, app, "GET", path) for _ in range(10)]
            assert [answer[0] for answer in answers[:2]] == [200, 200]
            assert_429(*first_429(answers), "max_read_requests_per_second")
        finally:
            connection.close()
    finally:
        instance.stop()
