"""The debug console's hub on its own (no socket): watching costs nothing
when nobody watches, entries go to their app's watchers only, the sign-in
deadline, the stats timer and the history samples.  The console over the
real server is in ``tests/e2e/test_console.py``."""

import json

from pushi.base.config import Config
from pushi.base.console import ConsoleHub, History, MinuteCounter, merge, next_sample
from pushi.base.engine import Engine
from pushi.base.limits import App

from support import RecordingTransport

# ---------------------------------------------------------------------------
# the hub on its own: an engine, a recording link, no socket
# ---------------------------------------------------------------------------


def make_hub(apps):
    """A hub whose ``authenticate`` accepts the token ``"good-<id>"``,
    whose offload runs at once and whose timers are kept for the test."""
    engine = Engine(Config())
    timers = []
    hub = ConsoleHub(
        engine,
        lambda token, app_id: apps.get(app_id) if token == "good-" + app_id else None,
        lambda token, app_id: token == "good-" + app_id,
        lambda work, then: then(work()),
        lambda work, seconds: timers.append(work),
    )
    return engine, hub, timers


def make_app(app_id):
    return App(
        {
            "app_id": app_id,
            "key": "k" * 20 + app_id,
            "secret": "s" * 40,
            "name": "app " + app_id,
        }
    )


def watch(hub, app_id, token=None):
    link = RecordingTransport()
    watcher = hub.connect(link)
    message = {
        "event": "console:watch",
        "data": {"app_id": app_id, "token": token or "good-" + app_id},
    }
    watcher.receive(json.dumps(message))
    return watcher, link


class TestHub:
    def test_observer_only_while_a_console_watches(self):
        apps = {"1": make_app("1"), "2": make_app("2")}
        engine, hub, _timers = make_hub(apps)
        assert engine.observers == []
        first, _ = watch(hub, "1")
        second, _ = watch(hub, "2")
        assert engine.observers == [hub.observe]
        first.closed()
        assert engine.observers == [hub.observe]
        second.closed()
        assert engine.observers == []
        assert hub.watchers == {} and hub.counters == {}

    def test_refused_sign_in_does_not_hook_the_engine(self):
        engine, hub, _timers = make_hub({"1": make_app("1")})
        _watcher, link = watch(hub, "1", token="bad")
        assert link.messages()[0]["event"] == "console:error"
        assert link.closed == 4009
        _watcher, link = watch(hub, "1", token="good-2")
        assert link.closed == 4009
        watcher = hub.connect(RecordingTransport())
        watcher.receive("not json")
        assert watcher.link.closed == 4009
        assert engine.observers == []

    def test_entries_go_to_the_watchers_of_their_app_only(self):
        apps = {"1": make_app("1"), "2": make_app("2")}
        engine, hub, _timers = make_hub(apps)
        _watcher, link_one = watch(hub, "1")
        _watcher, link_two = watch(hub, "2")
        assert link_one.messages()[0]["data"]["name"] == "app 1"
        link_two.messages()
        session = engine.open(RecordingTransport(), apps["2"], "pusher")
        engine.subscribe(session, {"channel": "secret-of-two"})
        engine.publish("2", ["secret-of-two"], "e", "two's data")
        assert link_one.messages() == []
        kinds = [message["data"]["type"] for message in link_two.messages()]
        assert kinds == ["connection", "occupied", "subscribed", "api_message"]

    def test_sign_in_deadline_closes_a_silent_console(self):
        _engine, hub, timers = make_hub({})
        link = RecordingTransport()
        hub.connect(link)
        assert len(timers) == 1
        timers.pop()()
        assert link.closed == 4009

    def test_stats_timer_stops_when_nobody_watches(self):
        engine, hub, timers = make_hub({"1": make_app("1")})
        watcher, link = watch(hub, "1")
        timers.clear()  # the sign-in deadline
        hub.observe(
            "1", "api_message", {"channels": ["a", "b"], "event": "e", "data": ""}
        )
        hub._tick()
        stats = link.messages()[-1]
        assert stats["event"] == "console:stats"
        assert stats["data"]["messages_last_minute"] == 2
        assert len(timers) == 1
        watcher.closed()
        timers.pop()()
        assert timers == [] and not hub._ticking

    def test_history_samples_each_apps_connections_and_messages(self):
        apps = {"1": make_app("1"), "2": make_app("2")}
        engine = Engine(Config())
        history = History(engine, every=10, size=3)
        session = engine.open(RecordingTransport(), apps["1"], "pusher")
        engine.subscribe(session, {"channel": "a"})
        history.sample(1000)
        assert history.of("1") == [[1000000, 1, 0, 0]]
        assert history.of("2") == []
        engine.publish("1", ["a", "b"], "e", "data")
        history.sample(1010)
        assert history.of("1")[-1] == [1010000, 1, 2, 1]
        history.sample(1020)
        history.sample(1030)
        # bounded: the oldest sample went
        assert [point[0] for point in history.of("1")] == [1010000, 1020000, 1030000]
        assert history.last("1") == [1030000, 1, 0, 0]
        engine.closed(session)
        for second in (1040, 1050, 1060):
            history.sample(second)
        # no connection and no traffic over the whole window: forgotten
        assert history.of("1") == [] and history.samples == {}

    def test_history_goes_to_a_console_when_it_signs_in(self):
        apps = {"1": make_app("1")}
        engine, hub, _timers = make_hub(apps)
        engine.open(RecordingTransport(), apps["1"], "pusher")
        hub.history.sample(1000)
        _watcher, link = watch(hub, "1")
        watching = link.messages()[0]
        assert watching["event"] == "console:watching"
        assert watching["data"]["history"]["samples"] == [[1000000, 1, 0, 0]]
        assert watching["data"]["history"]["every"] == 10.0
        hub._tick()
        assert link.messages()[-1]["data"]["sample"] == [1000000, 1, 0, 0]

    def test_nodes_samples_are_summed_slot_by_slot(self):
        # two nodes sampling the same instants, a few ms apart
        one = [[1000004, 1, 2, 3], [1010002, 2, 0, 1]]
        two = [[999998, 5, 1, 1], [1010007, 4, 1, 0], [1020003, 4, 0, 0]]
        assert merge([one, two], 10) == [
            [1000000, 6, 3, 4],
            [1010000, 6, 1, 1],
            [1020000, 4, 0, 0],
        ]
        # what is newer than ``until`` waits (the other node's may come)
        assert merge([one, two], 10, until=1015000)[-1][0] == 1010000
        # two samples of one node in one slot: its later count, summed traffic
        assert merge([[[1000001, 1, 1, 1], [1000900, 2, 1, 1]]], 10) == [
            [1000000, 2, 2, 2]
        ]
        assert merge([[], []], 0.5) == []

    def test_samples_are_taken_on_the_same_instants_everywhere(self):
        assert next_sample(1000.0, 10) == 10
        # a timer a little late or early aims at the same instants
        assert abs(next_sample(1010.3, 10) - 9.7) < 1e-9
        assert abs(next_sample(1019.9, 10) - 10.1) < 1e-9
        assert abs(next_sample(5.1, 0.5) - 0.4) < 1e-9

    def test_minute_counter_forgets_old_seconds(self):
        counter = MinuteCounter()
        counter.add(3, 1000.2)
        counter.add(2, 1030.9)
        assert counter.total(1031) == 5
        assert counter.total(1060) == 2
        counter.add(1, 1060.5)  # same bucket as second 1000, reused
        assert counter.total(1061) == 3
        assert counter.total(1200) == 0
