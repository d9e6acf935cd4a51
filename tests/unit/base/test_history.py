"""The recovery history (``pushi.base.history``) with no socket: positions,
what a position recovers or why not, and the bounds on what is kept."""

import pytest

from pushi.base import history
from pushi.base.history import MemoryHistory, since_of, with_position
from pushi.base.limits import Limits
from pushi.proto import messages
from pushi.proto.websocket import text_frame


def limits(**changes):
    return Limits(**changes)


def deliver(store, channel, number, app_id="1", now=0.0, settings=None):
    """What the engine does for one event on one channel: the entry, or
    None when the app keeps no history."""
    settings = settings or limits()
    text = messages.event("said", channel, str(number))
    entry = store.append(app_id, channel, text, settings, now)
    if entry is not None:
        store.keep(app_id, entry, text_frame(entry.text), settings)
    return entry


def offsets(frames):
    return [history.frame_message(frame)["offset"] for frame in frames]


def test_with_position_adds_top_level_fields():
    text = messages.event("e", "c", {"a": 1}, mid="m")
    assert messages.loads(with_position(text, 7, "ep")) == {
        "event": "e",
        "channel": "c",
        "data": {"a": 1},
        "mid": "m",
        "offset": 7,
        "epoch": "ep",
    }


def test_offsets_follow_per_channel_and_recover_after_a_position():
    store = MemoryHistory()
    epoch, top = store.position("1", "a", limits(), 0)
    assert top == 0 and epoch.startswith(store.boot + "-")
    for number in range(1, 6):
        assert deliver(store, "a", number).offset == number
    assert deliver(store, "b", 1).offset == 1
    assert store.position("1", "a", limits(), 0) == (epoch, 5)
    assert store.recover("1", "a", epoch, 2, limits(), 0) == (
        True,
        store.recover("1", "a", epoch, 2, limits(), 0)[1],
    )
    assert offsets(store.recover("1", "a", epoch, 2, limits(), 0)[1]) == [3, 4, 5]
    assert store.recover("1", "a", epoch, 5, limits(), 0) == (True, [])
    assert store.recover("1", "a", epoch, 6, limits(), 0) == (False, history.UNKNOWN)


def test_reasons_it_cannot_recover():
    store = MemoryHistory()
    settings = limits(recovery_history=3, recovery_ttl=10)
    for number in range(1, 6):
        deliver(store, "a", number, settings=settings)
    epoch = store.position("1", "a", settings, 0)[0]
    assert store.recover("1", "a", epoch, 1, settings, 0) == (False, history.TOO_FAR)
    assert offsets(store.recover("1", "a", epoch, 2, settings, 0)[1]) == [3, 4, 5]
    assert store.recover("1", "a", epoch, 2, settings, 10) == (False, history.EXPIRED)
    assert store.recover("1", "a", "other-1", 2, settings, 0) == (
        False,
        history.NEW_EPOCH,
    )
    assert store.recover("1", "a", store.boot + "-99", 2, settings, 0) == (
        False,
        history.EXPIRED,
    )
    off = limits(recovery_history=0)
    assert store.recover("1", "a", epoch, 2, off, 0) == (False, history.OFF)
    assert deliver(store, "a", 6, settings=off) is None


def test_the_apps_bytes_stay_within_its_bound_evicting_the_oldest():
    store = MemoryHistory()
    settings = limits(max_recovery_bytes=20000)
    for number in range(400):
        deliver(store, "c%d" % (number % 10), number, settings=settings)
        assert store.apps["1"].bytes <= 20000
    stats = store.stats("1")
    assert stats["evictions"] > 0 and stats["bytes"] <= 20000
    # the newest events are the ones kept
    kept = [entry.offset for entry in store.apps["1"].streams["c9"].entries]
    assert kept == sorted(kept) and kept[-1] == 40 and kept[0] > 1
    # an app's bound holds for the others' too
    deliver(store, "x", 1, app_id="2")
    assert store.stats("2")["events"] == 1


def test_counts_match_what_is_held_after_every_kind_of_drop():
    """Trimmed per channel, evicted by bytes, expired, forgotten: the bytes
    and events the app counts are those its streams hold."""
    store = MemoryHistory()
    settings = limits(recovery_history=4, recovery_ttl=5, max_recovery_bytes=30000)
    now = 0.0
    for number in range(2000):
        now += 0.01
        deliver(store, "c%d" % (number % 37), number, now=now, settings=settings)
        if number % 97 == 0:
            store.expire(now)
        app = store.apps["1"]
        held = sum(
            history.STREAM_COST
            + len(stream.name)
            + sum(entry.size for entry in stream.entries)
            for stream in app.streams.values()
        )
        assert app.bytes == held
        assert len(app.entries) - app.dead == sum(
            len(stream.entries) for stream in app.streams.values()
        )
        assert len(app.entries) <= 2 * 37 * 4 + 200
    store.expire(now + 5)
    assert store.stats("1")["events"] == 0
    store.expire(now + history.STREAM_TTL + 10)
    assert "1" not in store.apps


def test_a_tap_gets_every_entry_whatever_the_window_drops():
    store = MemoryHistory()
    settings = limits(recovery_history=2)
    tapped = store.tap("1", "a", settings)
    for number in range(1, 11):
        deliver(store, "a", number, settings=settings)
    deliver(store, "b", 1, settings=settings)
    assert [entry.offset for entry in tapped] == list(range(1, 11))
    store.untap("1", "a", tapped)
    deliver(store, "a", 11, settings=settings)
    assert len(tapped) == 10 and store.apps["1"].taps == {}


def test_new_settings_apply_to_what_is_held():
    store = MemoryHistory()
    for number in range(1, 11):
        deliver(store, "a", number)
    store.trim("1", limits(recovery_history=3))
    assert store.stats("1")["events"] == 3
    store.trim("1", limits(recovery_history=0))
    assert store.stats("1")["events"] == 0


@pytest.mark.parametrize(
    "since",
    [
        "x",
        {"epoch": 1, "offset": 1},
        {"epoch": "e", "offset": -1},
        {"epoch": "e", "offset": True},
        {"epoch": "e", "offset": 1, "mid": 5},
        {"epoch": "e" * 65, "offset": 1},
    ],
)
def test_a_bad_since_is_refused(since):
    with pytest.raises(ValueError):
        since_of({"since": since})


def test_since_of():
    assert since_of({}) is None
    assert since_of({"since": {"epoch": "e", "offset": 3}}) == ("e", 3, None)
    assert since_of({"since": {"epoch": "e", "offset": 3, "mid": "m"}}) == (
        "e",
        3,
        "m",
    )


def test_positions_of_many_channels_are_bounded_too():
    store = MemoryHistory()
    settings = limits(max_recovery_bytes=20000)
    for number in range(1000):
        store.position("1", "channel-%d" % number, settings, 0)
    stats = store.stats("1")
    assert stats["bytes"] <= 20000 and stats["streams"] < 50
    # the most recently used are kept
    assert "channel-999" in store.apps["1"].streams
