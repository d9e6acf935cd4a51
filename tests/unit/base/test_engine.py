"""The engine on its own: no socket, a recording transport per client."""

import json
import time

import pytest

from pushi.base.config import Config
from pushi.base.engine import Engine
from pushi.proto import auth, messages

from support import connect, make_app, send


@pytest.fixture
def engine():
    return Engine(Config())


def presence(engine, session, app, channel, user_id, info=None, peer=None):
    member = {"user_id": user_id, "user_info": info or {}}
    if peer is not None:
        member["peer"] = peer
    data = json.dumps(member)
    token = auth.channel_auth(app.key, app.secret, session.socket_id, channel, data)
    send(
        engine,
        session,
        "pusher:subscribe",
        {"channel": channel, "auth": token, "channel_data": data},
    )


def test_public_subscribe_and_delivery(engine):
    app = make_app()
    a, ta = connect(engine, app)
    send(engine, a, "pusher:subscribe", {"channel": "news"})
    succeeded = ta.messages()[0]
    assert succeeded["event"] == "pusher_internal:subscription_succeeded"
    epoch = json.loads(succeeded["data"])["epoch"]
    assert json.loads(succeeded["data"]) == {"epoch": epoch, "offset": 0}
    engine.publish(app.app_id, ["news"], "hello", "world")
    assert ta.messages() == [
        {
            "event": "hello",
            "channel": "news",
            "data": "world",
            "offset": 1,
            "epoch": epoch,
        }
    ]


def test_apps_are_isolated(engine):
    one, two = make_app("1"), make_app("2")
    a, ta = connect(engine, one)
    b, tb = connect(engine, two)
    send(engine, a, "pusher:subscribe", {"channel": "news"})
    send(engine, b, "pusher:subscribe", {"channel": "news"})
    ta.messages(), tb.messages()
    engine.publish("1", ["news"], "e", "d")
    assert len(ta.messages()) == 1 and tb.messages() == []


def test_private_needs_a_valid_signature_of_this_socket(engine):
    app = make_app()
    a, ta = connect(engine, app)
    b, _tb = connect(engine, app)
    send(engine, a, "pusher:subscribe", {"channel": "private-x"})
    error = ta.messages()[0]
    assert (
        error["event"] == "pusher:subscription_error" and error["data"]["status"] == 401
    )
    stolen = auth.channel_auth(app.key, app.secret, b.socket_id, "private-x")
    send(engine, a, "pusher:subscribe", {"channel": "private-x", "auth": stolen})
    assert ta.messages()[0]["event"] == "pusher:subscription_error"
    foreign = auth.channel_auth("other", app.secret, a.socket_id, "private-x")
    send(engine, a, "pusher:subscribe", {"channel": "private-x", "auth": foreign})
    assert ta.messages()[0]["event"] == "pusher:subscription_error"
    good = auth.channel_auth(app.key, app.secret, a.socket_id, "private-x")
    send(engine, a, "pusher:subscribe", {"channel": "private-x", "auth": good})
    assert ta.messages()[0]["event"] == "pusher_internal:subscription_succeeded"
    assert ta.closed is None


def test_presence_members_multi_tab_and_dialects(engine):
    app = make_app()
    a1, ta1 = connect(engine, app)
    a2, ta2 = connect(engine, app, "pushi")
    b, tb = connect(engine, app, "pushi")
    presence(engine, a1, app, "presence-room", 1, {"name": "A"})
    data = json.loads(ta1.messages()[0]["data"])
    assert data["presence"] == {"ids": ["1"], "hash": {"1": {"name": "A"}}, "count": 1}
    presence(engine, b, app, "presence-room", "2")
    tb.messages()
    added = ta1.messages()
    assert added[0]["event"] == "pusher_internal:member_added"
    assert json.loads(added[0]["data"])["user_id"] == "2"
    # a second tab of user 1: nobody hears of it, counts stay distinct
    presence(engine, a2, app, "presence-room", "1", {"name": "A"})
    state = json.loads(ta2.messages()[0]["data"])
    assert state["presence"]["count"] == 2 and set(state["members"]) == {"1", "2"}
    assert ta1.messages() == [] and tb.messages() == []
    engine.closed(a1)
    assert tb.messages() == []
    send(engine, a2, "pusher:unsubscribe", {"channel": "presence-room"})
    removed = tb.messages()
    assert removed[0]["event"] == "pusher:member_removed"
    assert json.loads(removed[0]["member"]) == {"user_id": "1"}


def test_presence_limits(engine):
    app = make_app(settings={"max_presence_members": 1, "max_user_info": 10})
    a, ta = connect(engine, app)
    b, tb = connect(engine, app)
    presence(engine, a, app, "presence-r", "1", {"long": "x" * 20})
    assert ta.messages()[0]["data"]["status"] == 413
    presence(engine, a, app, "presence-r", "1")
    ta.messages()
    presence(engine, b, app, "presence-r", "2")
    assert tb.messages()[0]["data"]["type"] == "LimitReached"


def test_spoofed_channel_data_is_refused(engine):
    app = make_app()
    a, ta = connect(engine, app)
    signed = json.dumps({"user_id": "1"})
    token = auth.channel_auth(app.key, app.secret, a.socket_id, "presence-r", signed)
    send(
        engine,
        a,
        "pusher:subscribe",
        {
            "channel": "presence-r",
            "auth": token,
            "channel_data": json.dumps({"user_id": "admin"}),
        },
    )
    assert ta.messages()[0]["event"] == "pusher:subscription_error"


def two_on_private_c(engine, app, dialect="pusher"):
    """Two sockets of ``app`` on ``private-c``, what they were told read."""
    pairs = [connect(engine, app, dialect) for _ in range(2)]
    for session, transport in pairs:
        token = auth.channel_auth(app.key, app.secret, session.socket_id, "private-c")
        send(
            engine, session, "pusher:subscribe", {"channel": "private-c", "auth": token}
        )
        transport.messages()
    return pairs


def test_client_events_rules(engine):
    app = make_app()
    (a, ta), (b, tb) = two_on_private_c(engine, app)
    send(engine, a, "client-typing", {"x": 1}, channel="private-c")
    received = tb.messages()
    assert [(message.pop("offset"), "epoch" in message) for message in received] == [
        (1, True)
    ]
    del received[0]["epoch"]
    assert received == [
        {"event": "client-typing", "channel": "private-c", "data": {"x": 1}}
    ]
    assert ta.messages() == []
    send(engine, a, "typing", {}, channel="private-c")
    assert ta.messages()[0]["data"]["code"] == 4303
    send(engine, a, "client-x", {}, channel="private-other")
    assert ta.messages()[0]["data"]["code"] == 4303
    send(engine, a, "pusher:subscribe", {"channel": "public"})
    ta.messages()
    send(engine, a, "client-x", {}, channel="public")
    assert ta.messages()[0]["data"]["code"] == 4303
    for _ in range(12):
        send(engine, a, "client-x", "d", channel="private-c")
    assert ta.messages()[-1]["data"]["code"] == 4301
    assert ta.closed is None


def test_client_events_are_at_most_the_rate_in_any_second(engine, monkeypatch):
    """``client_event_rate`` (10) in any second, not per second of the
    clock: 20 within 0.1 s across a whole second are 10 delivered, and
    more pass as the first ones get a second old."""
    from pushi.base.engine import client_events

    clock = [100.95]
    monkeypatch.setattr(client_events.time, "monotonic", lambda: clock[0])
    app = make_app()
    (a, ta), (b, tb) = two_on_private_c(engine, app)

    def delivered_at(times):
        for at in times:
            clock[0] = at
            send(engine, a, "client-x", {}, channel="private-c")
        return len([m for m in tb.messages() if m["event"] == "client-x"])

    assert delivered_at([100.95 + index * 0.005 for index in range(20)]) == 10
    assert ta.messages()[-1]["data"]["code"] == 4301
    # a second after the first: one more, then none until the next is
    assert delivered_at([101.95, 101.951]) == 1
    assert delivered_at([101.956]) == 1


def test_client_events_off_by_default(engine):
    app = make_app(client_events=False)
    a, ta = connect(engine, app)
    token = auth.channel_auth(app.key, app.secret, a.socket_id, "private-c")
    send(engine, a, "pusher:subscribe", {"channel": "private-c", "auth": token})
    ta.messages()
    send(engine, a, "client-x", {}, channel="private-c")
    assert ta.messages()[0]["data"]["code"] == 4303


def test_pushi_send_with_echo(engine):
    app = make_app()
    a, ta = connect(engine, app, "pushi")
    token = auth.channel_auth(app.key, app.secret, a.socket_id, "private-c")
    send(engine, a, "pusher:subscribe", {"channel": "private-c", "auth": token})
    ta.messages()
    send(engine, a, "chat", "hi", channel="private-c", echo=True)
    assert ta.messages()[0]["event"] == "chat"


def two_on_a_held_store(tmp_path, **settings):
    """An engine whose store answers when the test says (``waiting``: the
    ``then`` of each persist), and two Pushi-dialect sockets on
    ``private-c``."""
    from pushi.base.store.sqlite import SQLiteStore

    waiting = []
    store = SQLiteStore(str(tmp_path))
    engine = Engine(
        Config(), store=store, persist=lambda events, then: waiting.append(then)
    )
    app = make_app(settings=settings)
    pairs = two_on_private_c(engine, app, "pushi")
    return waiting, store, engine, pairs[0], pairs[1]


def test_a_stored_send_is_delivered_once_stored_and_in_order(tmp_path):
    """A Pushi send to store reaches the channel when the store says it is
    stored (the engine's ``persist`` hand-off, held here to pick the order
    of the answers); what the socket sends meanwhile waits behind it; one
    that cannot be stored is never delivered and its sender hears 4305."""
    waiting, store, engine, (a, ta), (b, tb) = two_on_a_held_store(tmp_path)
    send(engine, a, "chat", "first", channel="private-c")
    send(engine, a, "chat", "quick", channel="private-c", persist=False)
    send(engine, a, "chat", "third", channel="private-c")
    assert len(waiting) == 2 and tb.messages() == []
    waiting[1](None)
    assert tb.messages() == []
    waiting[0](OSError("disk full"))
    assert [message["data"] for message in tb.messages()] == ["quick", "third"]
    assert ta.messages() == [
        {
            "event": "pusher:error",
            "data": {"code": 4305, "message": "Store unavailable: not stored"},
        }
    ]
    assert a.sending is None
    send(engine, a, "chat", "later", channel="private-c", persist=False)
    assert [message["data"] for message in tb.messages()] == ["later"]
    store.close()


def test_sends_behind_a_stored_one_are_bounded_too(tmp_path):
    """While a socket's stored send waits for the store, what it sends
    behind it waits too, stored or not, and at most ``MAX_SENDING`` in all:
    past that the socket hears 4301 (a store that stalls costs each
    socket a bounded queue)."""
    from pushi.base.engine import MAX_SENDING

    waiting, store, engine, (a, ta), (b, tb) = two_on_a_held_store(
        tmp_path, client_event_rate=1000
    )
    send(engine, a, "chat", "stored", channel="private-c")
    for index in range(MAX_SENDING + 20):
        send(engine, a, "chat", str(index), channel="private-c", persist=False)
    assert len(a.sending) == MAX_SENDING
    assert [message["data"]["code"] for message in ta.messages()] == [4301] * 21
    waiting[0](None)
    assert len(tb.messages()) == MAX_SENDING and a.sending is None
    store.close()


def test_leaves_no_entry_behind(engine):
    app = make_app()
    sessions = []
    for index in range(200):
        session, _ = connect(engine, app)
        send(engine, session, "pusher:subscribe", {"channel": "c%d" % (index % 7)})
        presence(engine, session, app, "presence-p", str(index % 13))
        sessions.append(session)
    for index, session in enumerate(sessions):
        if index % 2:
            send(engine, session, "pusher:unsubscribe", {"channel": "presence-p"})
        engine.closed(session)
    registry = engine.registry
    assert (
        registry.apps == {} and registry.sessions == {} and registry.app_sessions == {}
    )
    assert registry.count() == (0, 0)


def test_ping_and_unknown_events(engine):
    app = make_app()
    a, ta = connect(engine, app)
    send(engine, a, "pusher:ping", {})
    assert ta.messages() == [{"event": "pusher:pong", "data": {}}]
    send(engine, a, "pusher:nonsense", {})
    assert ta.messages()[0]["data"]["code"] == 4304
    engine.receive(a, "not json")
    assert ta.messages()[0]["data"]["code"] == 4300


def test_sweep_pings_then_closes(engine):
    app = make_app()
    a, ta = connect(engine, app)
    engine.sweep(now=a.last_seen + 121)
    assert ta.messages() == [{"event": "pusher:ping", "data": {}}]
    engine.sweep(now=a.last_seen + 140)
    assert ta.closed is None
    engine.sweep(now=a.last_seen + 152)
    assert ta.closed == 4201


def test_signin_and_user_channel(engine):
    app = make_app()
    a, ta = connect(engine, app)
    send(engine, a, "pusher:subscribe", {"channel": "#server-to-user-7"})
    assert ta.messages()[0]["event"] == "pusher:subscription_error"
    user_data = json.dumps({"id": "7"})
    token = auth.token(app.key, app.secret, auth.user_string(a.socket_id, user_data))
    send(engine, a, "pusher:signin", {"auth": token, "user_data": user_data})
    assert ta.messages()[0]["event"] == "pusher:signin_success"
    send(engine, a, "pusher:subscribe", {"channel": "#server-to-user-7"})
    assert ta.messages()[0]["event"] == "pusher_internal:subscription_succeeded"
    engine.publish("1", ["#server-to-user-7"], "note", "hi")
    assert ta.messages()[0]["channel"] == "#server-to-user-7"
    b, tb = connect(engine, app)
    send(engine, b, "pusher:signin", {"auth": token, "user_data": user_data})
    assert tb.messages()[0]["data"]["code"] == 4009 and tb.closed == 4009


def a_store_recovery(tmp_path, **settings):
    """An engine on a store whose recovery reads run when the test says
    (``reads``: each ``(read, answer)`` handed to ``offload``), an app that
    keeps 3 events per channel (and ``settings``), a socket on ``news``
    (its epoch) and ``stored(data, mid)``: an event stored, and
    ``delivered(...)`` it."""
    from pushi.base.store.sqlite import SQLiteStore

    reads = []
    store = SQLiteStore(str(tmp_path))
    app = make_app(settings=dict({"recovery_history": 3}, **settings))

    class Apps:
        def by_id(self, app_id):
            return app if app_id == app.app_id else None

    engine = Engine(
        Config(),
        store=store,
        offload=lambda work, then: reads.append((work, then)),
        apps=Apps(),
    )
    a, ta = connect(engine, app, "pushi")
    send(engine, a, "pusher:subscribe", {"channel": "news"})
    epoch = json.loads(ta.messages()[0]["data"])["epoch"]
    clock = [1000.0]

    def stored(data, mid):
        clock[0] += 1
        event = {"mid": mid, "app_id": app.app_id, "channel": "news"}
        event.update(event="said", data=data, timestamp=clock[0])
        store.add_events([event])

        def delivered():
            extra = {"mid": mid, "timestamp": clock[0]}
            engine.publish(app.app_id, ["news"], "said", data, extra=extra)

        return delivered

    return reads, store, engine, app, epoch, stored


def recover_from(engine, app, epoch, offset, mid):
    b, tb = connect(engine, app, "pushi")
    since = {"epoch": epoch, "offset": offset, "mid": mid}
    send(engine, b, "pusher:subscribe", {"channel": "news", "since": since})
    return b, tb


def test_a_store_recovery_leaves_a_committed_undelivered_event_to_its_delivery(
    tmp_path,
):
    """An event committed before the store is read but delivered after the
    read's answer reaches the socket once: by its delivery, not also from
    the store."""
    reads, store, engine, app, epoch, stored = a_store_recovery(tmp_path)
    mids = [messages.message_id(1700000000 + n) for n in range(1, 13)]
    for n in range(1, 11):
        stored(str(n), mids[n - 1])()
    b, tb = recover_from(engine, app, epoch, 5, mids[4])
    ((read, answer),) = reads
    stored("11", mids[10])()  # delivered during the read, and read
    late = stored("12", mids[11])  # read, not delivered yet
    answer(read())
    late()
    received = tb.messages()
    data = json.loads(received[0]["data"])
    assert data["store"] is True and data["recovered"] is False
    said = [message["data"] for message in received if message["event"] == "said"]
    assert said == ["6", "7", "8", "9", "10", "11", "12"]
    store.close()


def test_a_store_recovery_knows_what_was_delivered_past_events_not_stored(
    tmp_path,
):
    """The last stored event the channel delivered is known however many
    events that are not stored followed it: one committed but not yet
    delivered still reaches the socket once."""
    reads, store, engine, app, epoch, stored = a_store_recovery(tmp_path)
    mids = [messages.message_id(1700000000 + n) for n in range(1, 12)]
    for n in range(1, 11):
        stored(str(n), mids[n - 1])()
    for _ in range(3):
        engine.publish(app.app_id, ["news"], "said", "not stored")
    b, tb = recover_from(engine, app, epoch, 5, mids[4])
    ((read, answer),) = reads
    late = stored("11", mids[10])
    answer(read())
    late()
    said = [message["data"] for message in tb.messages() if message["event"] == "said"]
    assert said == ["6", "7", "8", "9", "10", "11"]
    store.close()


def test_a_store_recovery_that_knows_no_delivery_sends_a_late_event_once(
    tmp_path,
):
    """A recovery from an earlier epoch, on a channel that has delivered no
    stored event here yet, cannot tell a stored event still to be delivered
    from one delivered before: it sends every one it read, and the late
    one's delivery skips that socket (and only that one)."""
    reads, store, engine, app, epoch, stored = a_store_recovery(tmp_path)
    mids = [messages.message_id(1700000000 + n) for n in range(1, 13)]
    for n in range(1, 11):
        stored(str(n), mids[n - 1])  # delivered by an earlier process
    c, tc = connect(engine, app, "pushi")
    send(engine, c, "pusher:subscribe", {"channel": "news"})
    b, tb = recover_from(engine, app, "0000-1", 5, mids[4])
    ((read, answer),) = reads
    late = stored("11", mids[10])  # read, not delivered yet
    answer(read())
    late()
    stored("12", mids[11])()
    received = tb.messages()
    data = json.loads(received[0]["data"])
    assert data["store"] is True and data["reason"] == "new_epoch"
    said = [message["data"] for message in received if message["event"] == "said"]
    assert said == ["6", "7", "8", "9", "10", "11", "12"]
    said = [message["data"] for message in tc.messages() if message["event"] == "said"]
    assert said == ["11", "12"]
    # forgotten once past its time
    engine.sweep(now=time.monotonic() + 60)
    assert not engine.recovery.sent
    store.close()


def test_a_store_recovery_orders_by_the_store_not_by_mid(tmp_path):
    """Two events of one millisecond have ``mid``s in no particular order:
    the recovery takes the events after the socket's one in the store's
    order, so the next one is not lost and the one before not repeated."""
    reads, store, engine, app, epoch, stored = a_store_recovery(tmp_path)
    same = "%012x" % 1700000000000
    mids = [messages.message_id(1600000000 + n) for n in range(1, 4)]
    mids += [same + "f" * 16, same + "8" + "0" * 15, same + "0" * 16]
    mids += [messages.message_id(1800000000 + n) for n in range(7, 11)]
    for n in range(1, 11):
        stored(str(n), mids[n - 1])()
    b, tb = recover_from(engine, app, epoch, 5, mids[4])
    ((read, answer),) = reads
    answer(read())
    said = [message["data"] for message in tb.messages() if message["event"] == "said"]
    assert said == ["6", "7", "8", "9", "10"]
    store.close()


def test_an_unsubscribe_while_a_store_recovery_reads_holds(tmp_path):
    """A socket that leaves a channel whose recovery still reads the store
    is told it left, and the read's answer does not put it back; one that
    subscribes again meanwhile gets that answer."""
    reads, store, engine, app, _epoch, _stored = a_store_recovery(tmp_path)
    b, tb = recover_from(engine, app, "0000-1", 5, messages.message_id(1700000000))
    ((read, answer),) = reads
    send(engine, b, "pusher:unsubscribe", {"channel": "news"})
    assert [m["event"] for m in tb.messages()] == [
        "pusher_internal:unsubscription_succeeded"
    ]
    answer(read())
    engine.publish(app.app_id, ["news"], "said", "after")
    assert "news" not in b.channels and tb.messages() == []
    since = {"epoch": "0000-1", "offset": 5, "mid": messages.message_id(1700000000)}
    send(engine, b, "pusher:subscribe", {"channel": "news", "since": since})
    ((read, answer),) = reads[1:]
    send(engine, b, "pusher:unsubscribe", {"channel": "news"})
    send(engine, b, "pusher:subscribe", {"channel": "news", "since": since})
    answer(read())
    assert [m["event"] for m in tb.messages()] == [
        "pusher_internal:unsubscription_succeeded",
        "pusher_internal:subscription_succeeded",
    ]
    assert "news" in b.channels and len(reads) == 2
    store.close()


def test_max_socket_channels_counts_the_subscriptions_that_wait(tmp_path):
    reads, store, engine, app, _epoch, _stored = a_store_recovery(
        tmp_path, max_socket_channels=2
    )
    b, tb = connect(engine, app, "pushi")
    since = {"epoch": "0000-1", "offset": 5, "mid": messages.message_id(1700000000)}
    for index in range(4):
        send(engine, b, "pusher:subscribe", {"channel": "c%d" % index, "since": since})
    assert len(reads) == 2
    refused = [m for m in tb.messages() if m["event"] == "pusher:subscription_error"]
    assert [m["channel"] for m in refused] == ["c2", "c3"]
    for read, answer in reads:
        answer(read())
    assert sorted(b.channels) == ["c0", "c1"]
    store.close()


def test_a_socket_signed_in_as_another_user_leaves_the_first_users_channel(engine):
    """Signed in as ``a`` and on ``#server-to-user-a``, then signed in as
    ``b``: the socket is no longer ``a`` and gets nothing sent to ``a``."""
    app = make_app()
    s, ts = connect(engine, app)

    def signin(user_id):
        user_data = json.dumps({"id": user_id})
        signed = auth.user_string(s.socket_id, user_data)
        token = auth.token(app.key, app.secret, signed)
        send(engine, s, "pusher:signin", {"auth": token, "user_data": user_data})

    signin("a")
    send(engine, s, "pusher:subscribe", {"channel": "#server-to-user-a"})
    signin("b")
    ts.messages()
    assert "#server-to-user-a" not in s.channels
    engine.publish(app.app_id, ["#server-to-user-a"], "note", "for a only")
    assert ts.messages() == []


def test_a_personal_channel_load_leaves_a_pending_subscription_its_answer(tmp_path):
    """A socket subscribes to ``news`` itself (its recovery reading the
    store) and to ``personal-u``, which covers ``news``: the personal
    channel's load answering first leaves ``news`` to the socket's own
    subscription, which is answered, and leaving ``personal-u`` keeps the
    socket on it."""
    reads, store, engine, app, _epoch, _stored = a_store_recovery(tmp_path)
    store.subscribe(app.app_id, "u", "news")
    b, tb = recover_from(engine, app, "0000-1", 5, messages.message_id(1700000000))
    token = auth.channel_auth(app.key, app.secret, b.socket_id, "personal-u")
    send(engine, b, "pusher:subscribe", {"channel": "personal-u", "auth": token})
    (recovery_read, recovery_answer), (load, loaded) = reads
    loaded(load())
    assert "news" not in b.channels
    recovery_answer(recovery_read())
    succeeded = [
        m["channel"]
        for m in tb.messages()
        if m["event"] == "pusher_internal:subscription_succeeded"
    ]
    assert succeeded == ["personal-u", "news"]
    send(engine, b, "pusher:unsubscribe", {"channel": "personal-u"})
    assert "news" in b.channels
    store.close()


def test_leaving_a_pending_subscription_a_personal_channel_covers(tmp_path):
    """The socket leaves ``news`` while its own subscription waits, its
    personal channel covering ``news``: it stays on ``news`` through the
    personal channel alone, as after leaving a joined one."""
    reads, store, engine, app, _epoch, _stored = a_store_recovery(tmp_path)
    store.subscribe(app.app_id, "u", "news")
    b, tb = recover_from(engine, app, "0000-1", 5, messages.message_id(1700000000))
    token = auth.channel_auth(app.key, app.secret, b.socket_id, "personal-u")
    send(engine, b, "pusher:subscribe", {"channel": "personal-u", "auth": token})
    (recovery_read, recovery_answer), (load, loaded) = reads
    loaded(load())
    send(engine, b, "pusher:unsubscribe", {"channel": "news"})
    recovery_answer(recovery_read())
    assert "news" in b.channels and "news" in b.via_personal
    send(engine, b, "pusher:unsubscribe", {"channel": "personal-u"})
    assert "news" not in b.channels
    store.close()
