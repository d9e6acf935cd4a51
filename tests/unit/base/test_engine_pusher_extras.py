"""The engine's opt-in Pusher features, on their own (no socket):
subscription counts, watchlists, cache expiry, user termination."""

import json
import time

import pytest

from pushi.app.publish import _batch_item
from pushi.base import engine as engine_module
from pushi.base.config import Config
from pushi.base.engine import Engine
from pushi.proto import auth

from support import connect, make_app, send


@pytest.fixture
def engine():
    return Engine(Config())


def signin(engine, session, app, user):
    user_data = json.dumps(user)
    token = auth.token(
        app.key, app.secret, auth.user_string(session.socket_id, user_data)
    )
    send(engine, session, "pusher:signin", {"auth": token, "user_data": user_data})


def events(transport, name):
    return [message for message in transport.messages() if message["event"] == name]


def test_subscription_counts_only_when_enabled(engine):
    quiet = make_app("1")
    a, ta = connect(engine, quiet)
    b, tb = connect(engine, quiet)
    for session in (a, b):
        send(engine, session, "pusher:subscribe", {"channel": "room"})
    assert not events(ta, "pusher_internal:subscription_count")

    app = make_app("2", settings={"subscription_count_events": True})
    a, ta = connect(engine, app)
    b, tb = connect(engine, app)
    send(engine, a, "pusher:subscribe", {"channel": "room"})
    send(engine, b, "pusher:subscribe", {"channel": "room"})
    engine.sweep(now=time.monotonic() + 2)  # the end of the interval
    counts = [
        json.loads(m["data"]) for m in events(ta, "pusher_internal:subscription_count")
    ]
    assert counts == [{"subscription_count": 1}, {"subscription_count": 2}]
    send(engine, b, "pusher:unsubscribe", {"channel": "room"})
    engine.closed(b)
    engine.sweep(now=time.monotonic() + 2)
    (left,) = events(ta, "pusher_internal:subscription_count")
    assert left["channel"] == "room" and json.loads(left["data"]) == {
        "subscription_count": 1
    }


def counts_of(transport):
    return [
        json.loads(m["data"])["subscription_count"]
        for m in events(transport, "pusher_internal:subscription_count")
    ]


def test_subscription_counts_of_a_storm_are_coalesced_to_the_latest():
    timers = []
    engine = Engine(Config(), schedule=lambda work, seconds: timers.append(work))
    app = make_app(settings={"subscription_count_events": True})
    first, tf = connect(engine, app)
    send(engine, first, "pusher:subscribe", {"channel": "room"})
    assert counts_of(tf) == [1]
    others = [connect(engine, app) for _ in range(50)]
    for session, _transport in others:
        send(engine, session, "pusher:subscribe", {"channel": "room"})
    engine.closed(others[0][0])
    # held until the interval ends, once, whatever the number of joins
    assert counts_of(tf) == [] and len(timers) == 1
    timers.pop()()
    assert counts_of(tf) == [50]
    assert [counts_of(transport) for _session, transport in others[1:3]] == [
        [50],
        [50],
    ]
    # nothing held: a timer that comes late sends nothing more
    engine.sweep(now=time.monotonic() + 10)
    assert counts_of(tf) == []


def test_a_held_count_goes_out_with_the_sweep_without_a_scheduler(engine):
    app = make_app(settings={"subscription_count_events": True})
    a, ta = connect(engine, app)
    b, _ = connect(engine, app)
    send(engine, a, "pusher:subscribe", {"channel": "room"})
    send(engine, b, "pusher:subscribe", {"channel": "room"})
    assert counts_of(ta) == [1]
    engine.sweep(now=time.monotonic() + 2)
    assert counts_of(ta) == [2]


def test_watchlist_online_offline_and_nothing_left_behind(engine):
    app = make_app(settings={"watchlist_events": True})
    already, _ = connect(engine, app)
    signin(engine, already, app, {"id": "y"})
    watcher, tw = connect(engine, app)
    signin(engine, watcher, app, {"id": "w", "watchlist": ["x", "y"]})
    messages = tw.messages()
    assert [m["event"] for m in messages] == [
        "pusher:signin_success",
        "pusher_internal:watchlist_events",
    ]
    assert json.loads(messages[1]["data"]) == {
        "events": [{"name": "online", "user_ids": ["y"]}]
    }
    first, _ = connect(engine, app)
    second, _ = connect(engine, app)
    signin(engine, first, app, {"id": "x"})
    signin(engine, second, app, {"id": "x"})
    (online,) = events(tw, "pusher_internal:watchlist_events")
    assert json.loads(online["data"])["events"] == [
        {"name": "online", "user_ids": ["x"]}
    ]
    engine.closed(first)
    assert not events(tw, "pusher_internal:watchlist_events")
    engine.closed(second)
    (offline,) = events(tw, "pusher_internal:watchlist_events")
    assert json.loads(offline["data"])["events"] == [
        {"name": "offline", "user_ids": ["x"]}
    ]
    engine.closed(watcher)
    engine.closed(already)
    assert engine.watchlists.watchers == {} and engine.watchlists.watched == {}
    assert engine.registry.users == {}


def test_watchlist_limit_is_4302_without_close(engine):
    app = make_app(settings={"watchlist_events": True, "max_watchlist": 2})
    session, transport = connect(engine, app)
    signin(engine, session, app, {"id": "a", "watchlist": ["1", "2", "3"]})
    messages = transport.messages()
    assert messages[0]["event"] == "pusher:signin_success"
    assert (
        messages[1]["event"] == "pusher:error" and messages[1]["data"]["code"] == 4302
    )
    assert transport.closed is None
    assert engine.watchlists.watched == {}


def test_watchlist_off_by_default(engine):
    app = make_app()
    watcher, tw = connect(engine, app)
    signin(engine, watcher, app, {"id": "w", "watchlist": ["x"]})
    other, _ = connect(engine, app)
    signin(engine, other, app, {"id": "x"})
    engine.closed(other)
    assert not events(tw, "pusher_internal:watchlist_events")
    assert engine.watchlists.watched == {}


def test_cache_expires_after_its_ttl(engine):
    app = make_app()
    engine.publish(app.app_id, ["cache-a"], "state", "1")
    info = engine.channel_info(app.app_id, "cache-a", ("cache",))
    assert info["cache"]["event"] == "state" and info["cache"]["data"] == "1"
    assert (
        engine_module.CACHE_TTL - 2 <= info["cache"]["ttl"] <= engine_module.CACHE_TTL
    )
    engine.sweep(now=time.monotonic() + engine_module.CACHE_TTL + 1)
    assert engine.cache.stats(app.app_id) == {
        "entries": 0,
        "bytes": 0,
        "evictions": 0,
    }
    session, transport = connect(engine, app)
    send(engine, session, "pusher:subscribe", {"channel": "cache-a"})
    assert [m["event"] for m in transport.messages()] == [
        "pusher_internal:subscription_succeeded",
        "pusher:cache_miss",
    ]


def test_terminate_says_why_then_closes(engine):
    app = make_app()
    session, transport = connect(engine, app)
    signin(engine, session, app, {"id": "u"})
    transport.messages()
    assert engine.terminate_user(app.app_id, "u") == 1
    (error,) = transport.messages()
    assert error["event"] == "pusher:error" and error["data"]["code"] == 4009
    assert transport.closed == 4009


def test_batch_answers_carry_channel_attributes_directly():
    answer = {"channels": {"a": {"subscription_count": 2, "user_count": 1}}}
    assert _batch_item(answer) == {"subscription_count": 2, "user_count": 1}
    assert _batch_item({}) == {}


def test_cache_is_bounded_per_app_oldest_evicted_first():
    small = make_app("1", settings={"max_cache_bytes": 50000})
    other = make_app("2")

    class Apps:
        def by_id(self, app_id):
            return {"1": small, "2": other}.get(app_id)

    engine = Engine(Config(), apps=Apps())
    data = "x" * 10000
    for index in range(20):
        engine.publish("1", ["cache-%d" % index], "state", data)
    engine.publish("2", ["cache-0"], "state", data)
    stats = engine.cache.stats("1")
    assert stats["bytes"] <= 50000 and stats["evictions"] == 20 - stats["entries"]
    assert 0 < stats["entries"] < 20
    kept = ["cache-%d" % index for index in range(20 - stats["entries"], 20)]
    assert list(engine.cache.apps["1"].entries) == kept
    # an evicted channel is one with nothing cached; another app keeps its own
    session, transport = connect(engine, small)
    send(engine, session, "pusher:subscribe", {"channel": "cache-0"})
    send(engine, session, "pusher:subscribe", {"channel": kept[-1]})
    assert [m["event"] for m in transport.messages()] == [
        "pusher_internal:subscription_succeeded",
        "pusher:cache_miss",
        "pusher_internal:subscription_succeeded",
        "state",
    ]
    assert engine.cache.stats("2")["entries"] == 1


def test_one_publish_to_many_cache_channels_holds_its_event_once(engine):
    app = make_app()
    names = ["cache-%d" % index for index in range(100)]
    engine.publish(app.app_id, names, "state", "x" * 10000, extra={"mid": "m1"})
    stats = engine.cache.stats(app.app_id)
    assert stats["entries"] == 100 and stats["bytes"] < 2 * 10000 + 100 * 300
    session, transport = connect(engine, app)
    send(engine, session, "pusher:subscribe", {"channel": "cache-7"})
    replayed = transport.messages()[-1]
    assert replayed == {
        "event": "state",
        "channel": "cache-7",
        "data": "x" * 10000,
        "mid": "m1",
    }
    info = engine.channel_info(app.app_id, "cache-7", ("cache",))
    assert info["cache"]["event"] == "state" and info["cache"]["data"] == "x" * 10000
    # rewriting every channel lets the first event go
    engine.publish(app.app_id, names, "state", "y")
    assert engine.cache.stats(app.app_id)["bytes"] < 100 * 300


def test_a_client_event_on_a_private_cache_channel_is_cached_within_the_bound():
    roomy, tight = make_app("1"), make_app("2", settings={"max_cache_bytes": 100})

    class Apps:
        def by_id(self, app_id):
            return {"1": roomy, "2": tight}.get(app_id)

    engine = Engine(Config(), apps=Apps())
    for app, expected in ((roomy, "client-state"), (tight, "pusher:cache_miss")):
        sender, _ = connect(engine, app)
        token = auth.channel_auth(
            app.key, app.secret, sender.socket_id, "private-cache-x"
        )
        send(
            engine,
            sender,
            "pusher:subscribe",
            {"channel": "private-cache-x", "auth": token},
        )
        send(engine, sender, "client-state", {"v": 1}, channel="private-cache-x")
        late, transport = connect(engine, app)
        token = auth.channel_auth(
            app.key, app.secret, late.socket_id, "private-cache-x"
        )
        send(
            engine,
            late,
            "pusher:subscribe",
            {"channel": "private-cache-x", "auth": token},
        )
        assert transport.messages()[-1]["event"] == expected
    assert engine.cache.stats("1")["evictions"] == 0
    assert engine.cache.stats("2") == {"entries": 0, "bytes": 0, "evictions": 1}
    info = engine.channel_info("1", "private-cache-x", ("cache",))
    assert info["cache"]["event"] == "client-state"
    assert info["cache"]["data"] == {"v": 1}
