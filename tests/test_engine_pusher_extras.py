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
from test_engine import connect, make_app, send


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
    counts = [
        json.loads(m["data"]) for m in events(ta, "pusher_internal:subscription_count")
    ]
    assert counts == [{"subscription_count": 1}, {"subscription_count": 2}]
    send(engine, b, "pusher:unsubscribe", {"channel": "room"})
    engine.closed(b)
    (left,) = events(ta, "pusher_internal:subscription_count")
    assert left["channel"] == "room" and json.loads(left["data"]) == {
        "subscription_count": 1
    }


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
    assert engine.cache == {}
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
