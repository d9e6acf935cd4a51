"""A client that reconnects gets what it missed (issue #21), over real
sockets against the real server: it says where it stopped (``since``), and
the server sends every event after that position, in order and once, then
the live ones, or says it cannot (``recovered: false`` with a ``reason``)."""

import json
import threading
import time

import pytest

from support import PushiServer


@pytest.fixture
def server():
    server = PushiServer().start()
    yield server
    server.stop()


def subscribe(client, channel, since=None, **extra):
    """Subscribes; returns the data of ``subscription_succeeded`` (a dict)."""
    data = dict(extra, channel=channel)
    if since is not None:
        data["since"] = since
    client.send({"event": "pusher:subscribe", "data": data})
    succeeded = client.recv_event("pusher_internal:subscription_succeeded")
    assert succeeded["channel"] == channel
    return json.loads(succeeded["data"])


def events(client, count, name="said"):
    """The next ``count`` events named ``name``."""
    return [client.recv_event(name) for _ in range(count)]


def publish(api, channel, first, last, persist=True):
    """Events ``said`` with data ``"<n>"`` for n from first to last."""
    for number in range(first, last + 1):
        api.trigger_event(channel, str(number), event="said", persist=persist)


def position(event):
    return {"epoch": event["epoch"], "offset": event["offset"]}


def test_reconnect_gets_the_missed_events_in_order_then_live(server):
    app = server.create_app()
    api = server.client(app)
    client = server.connect(app, dialect="pushi")
    state = subscribe(client, "news")
    assert state["offset"] == 0 and state["epoch"]
    publish(api, "news", 1, 10)
    received = events(client, 10)
    assert [event["data"] for event in received] == [str(n) for n in range(1, 11)]
    assert [event["offset"] for event in received] == list(range(1, 11))
    assert all(event["epoch"] == state["epoch"] and event["mid"] for event in received)
    client.close()
    publish(api, "news", 11, 30)
    client = server.connect(app, dialect="pushi")
    state = subscribe(client, "news", since=position(received[-1]))
    assert state["recovered"] is True and state["offset"] == 30
    missed = events(client, 20)
    assert [event["data"] for event in missed] == [str(n) for n in range(11, 31)]
    assert [event["offset"] for event in missed] == list(range(11, 31))
    publish(api, "news", 31, 31)
    live = client.recv_event("said")
    assert (live["data"], live["offset"]) == ("31", 31)
    assert client.nothing()
    client.close()


def test_recovery_racing_publishes_loses_and_repeats_nothing(server):
    """A publisher publishes without pause while a client reconnects again
    and again with its position: every event reaches it once, in order."""
    app = server.create_app()
    server.update_app(app, settings={"recovery_history": 1000})
    api = server.client(app)
    total = 400
    client = server.connect(app, dialect="pushi")
    since = None
    state = subscribe(client, "race")
    since = {"epoch": state["epoch"], "offset": state["offset"]}
    seen = []

    def publisher():
        for number in range(1, total + 1):
            api.trigger_event("race", str(number), event="said", persist=False)
            # paced, so that the client comes back many times meanwhile
            time.sleep(0.005)

    thread = threading.Thread(target=publisher)
    thread.start()
    reconnections = 0
    try:
        while not seen or seen[-1] != total:
            # read for a moment, then drop the connection and come back
            deadline = time.time() + 0.05 + (reconnections % 5) * 0.02
            while time.time() < deadline and (not seen or seen[-1] != total):
                try:
                    message = client.recv(max(0.01, deadline - time.time()))
                except TimeoutError:
                    break
                if message.get("event") == "said":
                    seen.append(int(message["data"]))
                    since = position(message)
            if seen and seen[-1] == total:
                break
            client.close()
            client = server.connect(app, dialect="pushi")
            state = subscribe(client, "race", since=since)
            assert state["recovered"] is True, state
            reconnections += 1
            assert reconnections < 2000
    finally:
        thread.join(60)
        client.close()
    assert reconnections >= 10
    assert seen == list(range(1, total + 1))


def test_too_far_behind_is_not_recovered(server):
    app = server.create_app()
    server.update_app(app, settings={"recovery_history": 5})
    api = server.client(app)
    client = server.connect(app, dialect="pushi")
    subscribe(client, "news")
    publish(api, "news", 1, 2, persist=False)
    stopped = position(events(client, 2)[-1])
    client.close()
    publish(api, "news", 3, 9, persist=False)
    client = server.connect(app, dialect="pushi")
    state = subscribe(client, "news", since=stopped)
    assert state["recovered"] is False and state["reason"] == "too_far_behind"
    assert state["offset"] == 9
    assert client.nothing()
    # within the window: recovered
    client.close()
    client = server.connect(app, dialect="pushi")
    state = subscribe(client, "news", since=dict(stopped, offset=5))
    assert state["recovered"] is True
    assert [event["offset"] for event in events(client, 4)] == [6, 7, 8, 9]
    client.close()


def test_expired_history_is_not_recovered(server):
    app = server.create_app()
    server.update_app(app, settings={"recovery_ttl": 1})
    api = server.client(app)
    client = server.connect(app, dialect="pushi")
    subscribe(client, "news")
    publish(api, "news", 1, 1, persist=False)
    stopped = position(events(client, 1)[-1])
    client.close()
    publish(api, "news", 2, 3, persist=False)
    time.sleep(2.5)
    client = server.connect(app, dialect="pushi")
    state = subscribe(client, "news", since=stopped)
    assert state["recovered"] is False and state["reason"] == "expired"
    assert client.nothing()
    client.close()


def test_a_quiet_channel_recovers_nothing_missed(server):
    app = server.create_app()
    client = server.connect(app, dialect="pushi")
    state = subscribe(client, "quiet")
    client.close()
    client = server.connect(app, dialect="pushi")
    since = {"epoch": state["epoch"], "offset": 0}
    assert subscribe(client, "quiet", since=since)["recovered"] is True
    assert client.nothing()
    client.close()


def test_a_restart_is_a_new_epoch(server):
    app = server.create_app()
    api = server.client(app)
    client = server.connect(app, dialect="pushi")
    subscribe(client, "news")
    publish(api, "news", 1, 3, persist=False)
    stopped = position(events(client, 3)[-1])
    client.close()
    server.restart()
    publish(api, "news", 4, 5, persist=False)
    client = server.connect(app, dialect="pushi")
    state = subscribe(client, "news", since=stopped)
    assert state["recovered"] is False and state["reason"] == "new_epoch"
    assert state["epoch"] != stopped["epoch"] and state["offset"] == 2
    client.close()


def test_pusher_dialect_recovers_with_since_in_subscribe_data(server):
    app = server.create_app()
    api = server.client(app)
    client = server.connect(app)
    state = subscribe(client, "news")
    assert state == {"epoch": state["epoch"], "offset": 0}
    publish(api, "news", 1, 4, persist=False)
    received = events(client, 4)
    assert [event["offset"] for event in received] == [1, 2, 3, 4]
    client.close()
    publish(api, "news", 5, 7, persist=False)
    client = server.connect(app)
    state = subscribe(client, "news", since=position(received[1]))
    assert state["recovered"] is True
    assert [event["data"] for event in events(client, 5)] == list("34567")
    client.close()


def test_stored_events_are_recovered_by_mid_beyond_the_window(server):
    """Past the in-memory window, a ``since`` with a ``mid`` gets the
    stored events after it (``store: true``), then those published during
    that read and after, once each."""
    app = server.create_app()
    server.update_app(app, settings={"recovery_history": 5})
    api = server.client(app)
    client = server.connect(app, dialect="pushi")
    subscribe(client, "news")
    publish(api, "news", 1, 10)
    last = events(client, 10)[-1]
    client.close()
    publish(api, "news", 11, 30)
    client = server.connect(app, dialect="pushi")
    since = dict(position(last), mid=last["mid"])
    state = subscribe(client, "news", since=since)
    assert state["recovered"] is False and state["reason"] == "too_far_behind"
    assert state["store"] is True and state["offset"] == 30
    missed = events(client, 20)
    assert [event["data"] for event in missed] == [str(n) for n in range(11, 31)]
    publish(api, "news", 31, 31)
    assert client.recv_event("said")["data"] == "31"
    assert client.nothing()
    client.close()


def test_history_off_gives_no_positions(server):
    app = server.create_app()
    server.update_app(app, settings={"recovery_history": 0})
    api = server.client(app)
    client = server.connect(app, dialect="pushi")
    assert subscribe(client, "news") == {}
    publish(api, "news", 1, 1)
    event = client.recv_event("said")
    assert "offset" not in event and "epoch" not in event
    client.close()
    client = server.connect(app, dialect="pushi")
    state = subscribe(client, "news", since={"epoch": "x", "offset": 1})
    assert state == {"recovered": False, "reason": "history_off"}
    # nor from the store: what was missed meanwhile is not known
    state = subscribe(
        client, "other", since={"epoch": "x", "offset": 1, "mid": event["mid"]}
    )
    assert state == {"recovered": False, "reason": "history_off"}
    client.close()


def test_a_bad_since_is_a_subscription_error(server):
    app = server.create_app()
    client = server.connect(app, dialect="pushi")
    for since in ("1", {"epoch": 1, "offset": 1}, {"epoch": "e", "offset": -1}):
        client.send(
            {"event": "pusher:subscribe", "data": {"channel": "news", "since": since}}
        )
        error = client.recv_event("pusher:subscription_error")
        assert error["channel"] == "news" and error["data"]["status"] == 400
        assert error["data"]["type"] == "InvalidSince"
    # the socket still works
    assert "epoch" in subscribe(client, "news")
    client.close()


def test_history_stays_within_the_apps_bound(server):
    """Many channels with large events: the app's history holds at most
    its ``max_recovery_bytes``, evicting the oldest."""
    app = server.create_app()
    bound = 200000
    server.update_app(app, settings={"max_recovery_bytes": bound})
    api = server.client(app)
    data = "x" * 5000
    for index in range(20):
        names = ["c%d-%d" % (index, n) for n in range(10)]
        api.trigger_event(names, data, event="said", persist=False)
    status, stats = server.request(
        "GET", "apps/%s/stats" % app["app_id"], headers=server.token_headers(app)
    )
    assert status == 200, stats
    recovery = stats["recovery"]
    assert recovery["max_bytes"] == bound
    assert 0 < recovery["bytes"] <= bound and recovery["evictions"] > 0
    assert recovery["events"] < 200


def test_store_recovery_racing_publishes_loses_and_repeats_nothing(server):
    """Recoveries from the store again and again while stored events keep
    coming: each gets every event after its ``mid`` once, in order, those
    published while the store was read included."""
    app = server.create_app()
    server.update_app(app, settings={"recovery_history": 3})
    api = server.client(app)
    client = server.connect(app, dialect="pushi")
    subscribe(client, "news")
    publish(api, "news", 1, 10)
    last = events(client, 10)[-1]
    client.close()
    publish(api, "news", 11, 20)
    since = dict(position(last), mid=last["mid"])
    total = 95

    def publisher():
        for number in range(21, total + 1):
            api.trigger_event("news", str(number), event="said")
            time.sleep(0.02)

    thread = threading.Thread(target=publisher)
    thread.start()
    recoveries = 0
    try:
        while thread.is_alive() or recoveries < 3:
            client = server.connect(app, dialect="pushi")
            state = subscribe(client, "news", since=since)
            assert state["recovered"] is False and state["store"] is True, state
            seen = []
            deadline = time.time() + 0.15
            while time.time() < deadline:
                try:
                    message = client.recv(max(0.01, deadline - time.time()))
                except TimeoutError:
                    break
                if message.get("event") == "said":
                    seen.append(int(message["data"]))
            client.close()
            assert seen == list(range(11, 11 + len(seen))), seen
            assert len(seen) >= 10
            recoveries += 1
    finally:
        thread.join(60)
    assert recoveries >= 5


@pytest.mark.parametrize("channel", ["private-desk", "presence-room"])
def test_private_and_presence_channels_recover_too(server, channel):
    """The missed events follow the subscription data (with the presence
    members, on a presence channel), from the store too."""
    app = server.create_app()
    server.update_app(app, settings={"recovery_history": 5})
    api = server.client(app)

    def join(since=None):
        client = server.connect(app, dialect="pushi")
        member = {"user_id": "ann", "user_info": {}}
        signed = api.authenticate(
            channel,
            client.socket_id,
            channel_data=member if channel.startswith("presence-") else None,
        )
        return client, subscribe(client, channel, since, **signed)

    client, state = join()
    publish(api, channel, 1, 3)
    last = events(client, 3)[-1]
    client.close()
    publish(api, channel, 4, 6)
    client, state = join(position(last))
    assert state["recovered"] is True
    if channel.startswith("presence-"):
        assert state["presence"]["ids"] == ["ann"]
    assert [event["data"] for event in events(client, 3)] == ["4", "5", "6"]
    client.close()
    # beyond the window (5), from the store by mid
    publish(api, channel, 7, 14)
    client, state = join(dict(position(last), mid=last["mid"]))
    assert state["recovered"] is False and state["store"] is True
    assert [event["data"] for event in events(client, 11)] == [
        str(number) for number in range(4, 15)
    ]
    assert client.nothing()
    client.close()
