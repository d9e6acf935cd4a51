"""``pushi.net.redis`` on a real netius loop (a State on ephemeral ports)
against a real ``redis-server``: pipelining, scripts, errors, the command
timeout, reconnection, resubscription and the subscription's probe.

The clients live on the loop; the test hands them work with
``call_in_loop`` and reads what their callbacks recorded.  Redis itself is
checked through redis-py, a separate blocking connection.
"""

import queue
import socket
import threading
import time

import pytest

from pushi.base.config import Config
from pushi.base.state import State
from pushi.net.redis import (
    AuthError,
    CommandTimeout,
    ConnectionDown,
    NetiusLoop,
    Overloaded,
    Redis,
    ReplyError,
    Script,
    Subscriber,
    parse_url,
    redacted,
)

from redis_support import RedisServer, TcpProxy, require_redis
from support import free_port


@pytest.fixture
def state(tmp_path):
    config = Config(server_port=free_port(), data_dir=str(tmp_path))
    instance = State(config)
    instance.start_server(http=False)
    yield instance
    instance.stop()


class Hooks:
    """What a client's hooks saw, in order, readable from the test."""

    def __init__(self):
        self.events = queue.Queue()
        self.seen = []

    def hook(self, name):
        def record(*args):
            self.events.put((name,) + args)

        return record

    def wait(self, name, timeout=10, where=None):
        """The next event ``name`` (skipping others, kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    "no %s within %ss; saw %r" % (name, timeout, self.seen)
                )
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(event)
            if event[0] == name and (where is None or where(event)):
                return event


@pytest.fixture
def clients(state):
    """Makes clients on the loop (``make(cls, url, **settings)``), with
    their hooks recorded in a ``Hooks``; closes them after the test."""
    made = []

    def make(cls, url, hooks=None, **settings):
        hooks = hooks or Hooks()

        def build():
            client = cls(
                url,
                NetiusLoop(state.server),
                on_up=hooks.hook("up"),
                on_down=hooks.hook("down"),
                **settings,
            )
            client.start()
            return client

        client = state.call_in_loop(build)
        made.append(client)
        return client, hooks

    yield make
    for client in made:
        try:
            state.call_in_loop(client.close)
        except Exception:
            pass


def calls(state, client, *commands, timeout=10, ordered=True):
    """Issues ``commands`` in one loop turn; returns their replies (or
    errors) in the order of the commands, and what ``call`` returned; the
    callbacks ran in that order too (unless not ``ordered``)."""
    replies = []
    done = threading.Event()

    def issue():
        returned = []
        for index, command in enumerate(commands):

            def callback(reply, index=index):
                replies.append((index, reply))
                if len(replies) == len(commands):
                    done.set()

            returned.append(client.call(callback, *command))
        return returned

    returned = state.call_in_loop(issue)
    assert done.wait(timeout), "only %d of %d replies" % (len(replies), len(commands))
    if ordered:
        assert [index for index, _ in replies] == list(range(len(commands)))
    return [reply for _, reply in sorted(replies, key=lambda item: item[0])], returned


def evalsha(state, client, script, keys=(), args=()):
    result = queue.Queue()
    state.call_in_loop(client.evalsha, result.put, script, keys, args)
    return result.get(timeout=10)


def test_a_url_is_parsed_and_its_password_never_shown():
    assert parse_url("redis://:pw@10.0.0.1:6380/3") == dict(
        host="10.0.0.1", port=6380, path=None, username=None, password="pw", db=3
    )
    assert parse_url("unix:///run/redis.sock?db=2")["path"] == "/run/redis.sock"
    assert parse_url("unix:///run/redis.sock?db=2")["db"] == 2
    with pytest.raises(ValueError):
        parse_url("http://localhost")
    assert "pw" not in redacted("redis://:pw@host:1/0")
    assert "pw" not in redacted("redis://user:pw@host:1/0")
    assert "pw" not in redacted("unix:///s.sock?db=1&password=pw")


def test_a_thousand_pipelined_commands_are_answered_in_order(
    state, clients, redis_server
):
    client, hooks = clients(Redis, redis_server.url)
    up = hooks.wait("up")
    assert up[1] == redis_server.client().info("server")["run_id"]
    commands = [("INCR", "counter") for _ in range(1000)]
    commands[500] = ("SET", "other", "x")
    writes = state.call_in_loop(lambda: client.writes)
    replies, returned = calls(state, client, *commands)
    assert all(returned)
    # issued in one turn, sent in one write
    assert state.call_in_loop(lambda: client.writes) == writes + 1
    expected = list(range(1, 1000))
    assert replies[:500] == expected[:500]
    assert replies[500] == b"OK"
    assert replies[501:] == expected[500:]
    assert redis_server.client().get("counter") == b"999"


def test_a_batch_is_written_as_it_returns_in_one_write(state, clients, redis_server):
    client, hooks = clients(Redis, redis_server.url)
    hooks.wait("up")
    replies = queue.Queue()

    def batch():
        before = client.writes
        client.batch(lambda: [client.call(replies.put, "INCR", "n") for _ in range(3)])
        # out before the loop's next turn, all three in one write
        return client.writes - before, len(client._out)

    assert state.call_in_loop(batch) == (1, 0)
    assert [replies.get(timeout=10) for _ in range(3)] == [1, 2, 3]


def test_a_write_larger_than_the_socket_buffer_goes_out_whole(
    state, clients, redis_server
):
    """Writes that meet a full send buffer wait for writability."""
    client, hooks = clients(Redis, redis_server.url)
    hooks.wait("up")
    value = b"v" * (8 << 20)
    replies, _ = calls(
        state,
        client,
        ("SET", "a", value),
        ("SET", "b", value),
        ("STRLEN", "a"),
        ("STRLEN", "b"),
        timeout=30,
    )
    assert replies == [b"OK", b"OK", len(value), len(value)]


def test_an_error_reply_reaches_only_its_callback(state, clients, redis_server):
    client, hooks = clients(Redis, redis_server.url)
    hooks.wait("up")
    replies, _ = calls(
        state,
        client,
        ("SET", "text", "not a number"),
        ("INCR", "text"),
        ("NOSUCHCOMMAND",),
        ("GET", "text"),
    )
    assert replies[0] == b"OK"
    assert isinstance(replies[1], ReplyError) and "not an integer" in str(replies[1])
    assert isinstance(replies[2], ReplyError) and "unknown command" in str(replies[2])
    assert replies[3] == b"not a number"
    assert client.up
    assert calls(state, client, ("PING",))[0] == [b"PONG"]


def test_evalsha_loads_the_script_and_again_after_a_script_flush(
    state, clients, redis_server
):
    client, hooks = clients(Redis, redis_server.url)
    hooks.wait("up")
    script = Script("return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}")
    side = redis_server.client()
    assert side.script_exists(script.sha) == [False]
    assert evalsha(state, client, script, ["k"], ["a"]) == [b"k", b"a", 1]
    assert side.script_exists(script.sha) == [True]
    side.script_flush()
    assert side.script_exists(script.sha) == [False]
    # several at once: each is answered, in order, once
    results = queue.Queue()

    def many():
        for index in range(5):
            client.evalsha(results.put, script, ["k"], [str(index)])

    state.call_in_loop(many)
    answers = [results.get(timeout=10) for _ in range(5)]
    assert answers == [[b"k", str(i).encode(), 2 + i] for i in range(5)]
    assert results.empty()
    bad = Script("return redis.call('NOSUCHCOMMAND')")
    assert isinstance(evalsha(state, client, bad), ReplyError)
    assert evalsha(state, client, script, ["k"], ["z"]) == [b"k", b"z", 7]


def test_too_many_pending_replies_fail_fast(state, clients, redis_server):
    client, hooks = clients(Redis, redis_server.url, max_pending=10)
    hooks.wait("up")
    # the refused ones are answered at once, before the others
    replies, returned = calls(state, client, *[("PING",)] * 15, ordered=False)
    assert returned == [True] * 10 + [False] * 5
    assert replies[:10] == [b"PONG"] * 10
    assert all(isinstance(reply, Overloaded) for reply in replies[10:])


def test_a_paused_redis_fails_pending_calls_by_the_timeout_and_new_ones_at_once(
    state, clients, redis_server
):
    client, hooks = clients(Redis, redis_server.url, timeout=1.0)
    first = hooks.wait("up")
    redis_server.pause()
    try:
        started = time.monotonic()
        replies, returned = calls(state, client, *[("INCR", "n")] * 5, timeout=10)
        assert time.monotonic() - started < 5
        assert all(isinstance(reply, CommandTimeout) for reply in replies)
        assert isinstance(hooks.wait("down")[1], CommandTimeout)
        assert not client.up
        started = time.monotonic()
        replies, returned = calls(state, client, ("PING",))
        assert returned == [False]
        assert isinstance(replies[0], ConnectionDown)
        assert time.monotonic() - started < 1
    finally:
        redis_server.resume()
    # back by itself, the same Redis
    again = hooks.wait("up")
    assert again[1] == first[1]
    assert calls(state, client, ("PING",))[0] == [b"PONG"]


def test_a_restarted_empty_redis_is_reconnected_and_subscriptions_made_again(
    state, clients, redis_server
):
    commands, command_hooks = clients(Redis, redis_server.url)
    first = command_hooks.wait("up")
    hooks = Hooks()
    subscriber, _ = clients(
        Subscriber,
        redis_server.url,
        hooks=hooks,
        commands=commands,
        on_message=hooks.hook("message"),
        on_resubscribed=hooks.hook("resubscribed"),
    )
    hooks.wait("up")
    state.call_in_loop(subscriber.subscribe, "ch", hooks.hook("confirmed"))
    assert hooks.wait("confirmed") == ("confirmed", None)
    assert redis_server.client().publish("ch", "one") == 1
    assert hooks.wait("message") == ("message", b"ch", b"one")

    redis_server.restart()
    assert isinstance(command_hooks.wait("down")[1], ConnectionDown)
    again = command_hooks.wait("up", timeout=15)
    assert again[1] != first[1]
    assert again[1] == redis_server.client().info("server")["run_id"]
    assert hooks.wait("resubscribed", timeout=15) == ("resubscribed", [b"ch"])
    assert redis_server.client().publish("ch", "two") == 1
    assert hooks.wait("message") == ("message", b"ch", b"two")
    assert calls(state, commands, ("GET", "nothing"))[0] == [None]


def test_subscribe_is_confirmed_unsubscribe_stops_messages_and_down_fails_at_once(
    state, clients, redis_server
):
    hooks = Hooks()
    subscriber, _ = clients(
        Subscriber, redis_server.url, hooks=hooks, on_message=hooks.hook("message")
    )
    hooks.wait("up")
    state.call_in_loop(subscriber.subscribe, b"a", hooks.hook("confirmed"))
    state.call_in_loop(subscriber.subscribe, b"b", hooks.hook("confirmed"))
    hooks.wait("confirmed")
    hooks.wait("confirmed")
    side = redis_server.client()
    side.publish("a", "1")
    assert hooks.wait("message") == ("message", b"a", b"1")
    state.call_in_loop(subscriber.unsubscribe, "a")
    deadline = time.monotonic() + 10
    while side.publish("a", "2") and time.monotonic() < deadline:
        time.sleep(0.05)
    side.publish("b", "3")
    assert hooks.wait("message") == ("message", b"b", b"3")
    assert state.call_in_loop(lambda: subscriber.channels) == [b"b"]

    redis_server.kill()
    hooks.wait("down")
    failed = queue.Queue()
    assert state.call_in_loop(subscriber.subscribe, "c", failed.put) is False
    assert isinstance(failed.get(timeout=1), ConnectionDown)


@pytest.mark.parametrize("fault", ["blackhole", "server_to_client"])
def test_a_deaf_subscription_is_found_by_the_probe_and_made_again(
    state, clients, redis_server, fault
):
    """The subscription goes through a proxy that stops passing Redis's
    side (or everything); the socket stays open.  The probe, published
    over the direct command connection, does not come back: the
    subscription is reconnected, and once the proxy passes again it is
    made again and messages flow."""
    proxy = TcpProxy(("127.0.0.1", redis_server.port))
    try:
        commands, command_hooks = clients(Redis, redis_server.url)
        command_hooks.wait("up")
        hooks = Hooks()
        subscriber, _ = clients(
            Subscriber,
            proxy.url(),
            hooks=hooks,
            commands=commands,
            probe_interval=0.5,
            timeout=0.5,
            on_message=hooks.hook("message"),
            on_resubscribed=hooks.hook("resubscribed"),
        )
        hooks.wait("up")
        state.call_in_loop(subscriber.subscribe, "ch", hooks.hook("confirmed"))
        hooks.wait("confirmed")
        side = redis_server.client()
        side.publish("ch", "before")
        assert hooks.wait("message") == ("message", b"ch", b"before")

        if fault == "blackhole":
            proxy.blackhole()
        else:
            proxy.drop_one_direction(server_to_client=True)
        down = hooks.wait("down", timeout=10)
        assert isinstance(down[1], CommandTimeout)
        assert state.call_in_loop(lambda: subscriber.probes) >= 1
        side.publish("ch", "lost")
        proxy.forward()
        assert hooks.wait("resubscribed", timeout=15) == ("resubscribed", [b"ch"])
        side.publish("ch", "after")
        assert hooks.wait("message") == ("message", b"ch", b"after")
        assert ("message", b"ch", b"lost") not in hooks.seen
    finally:
        proxy.close()


def test_a_cut_connection_reconnects_and_resubscribes(state, clients, redis_server):
    proxy = TcpProxy(("127.0.0.1", redis_server.port))
    try:
        hooks = Hooks()
        subscriber, _ = clients(
            Subscriber,
            proxy.url(),
            hooks=hooks,
            on_message=hooks.hook("message"),
            on_resubscribed=hooks.hook("resubscribed"),
        )
        hooks.wait("up")
        state.call_in_loop(subscriber.subscribe, "ch", hooks.hook("confirmed"))
        hooks.wait("confirmed")
        proxy.cut()
        hooks.wait("down")
        assert hooks.wait("resubscribed", timeout=15) == ("resubscribed", [b"ch"])
        redis_server.client().publish("ch", "x")
        assert hooks.wait("message") == ("message", b"ch", b"x")
    finally:
        proxy.close()


def test_the_loop_lets_go_of_each_socket_a_client_is_done_with(
    state, clients, redis_server
):
    """The sockets are watched through ``net.wire``: a reconnection lets
    go of the old one, ``close`` of the last; none stays watched."""
    proxy = TcpProxy(("127.0.0.1", redis_server.port))
    try:
        client, hooks = clients(Redis, proxy.url())
        hooks.wait("up")
        proxy.cut()
        hooks.wait("down")
        hooks.wait("up", timeout=15)
        assert calls(state, client, ("PING",))[0] == [b"PONG"]
        state.call_in_loop(client.close)

        def watched():
            return [
                sock
                for sock in state.server.callbacks_m
                if isinstance(sock, socket.socket) and sock.fileno() == -1
            ]

        assert state.call_in_loop(watched) == []
    finally:
        proxy.close()


def test_a_unix_socket_url_works(state, clients):
    require_redis()
    server = RedisServer(unix_socket=True).start()
    try:
        client, hooks = clients(Redis, server.unix_url)
        hooks.wait("up")
        replies, _ = calls(state, client, ("SET", "k", "v"), ("GET", "k"))
        assert replies == [b"OK", b"v"]
    finally:
        server.close()


def test_auth_with_the_password_works_and_a_wrong_one_says_so(state, clients):
    require_redis()
    server = RedisServer(password="s3cret-pw").start()
    try:
        client, hooks = clients(Redis, server.url)
        hooks.wait("up")
        assert calls(state, client, ("PING",))[0] == [b"PONG"]

        wrong, wrong_hooks = clients(
            Redis, "redis://:not-it@127.0.0.1:%d/0" % server.port
        )
        down = wrong_hooks.wait("down")
        assert isinstance(down[1], AuthError)
        assert "WRONGPASS" in str(down[1])
        assert "not-it" not in str(down[1])
        replies, returned = calls(state, wrong, ("PING",))
        assert returned == [False]
        assert isinstance(replies[0], ConnectionDown)
        assert "credentials" in str(replies[0])

        none, none_hooks = clients(Redis, "redis://127.0.0.1:%d/0" % server.port)
        assert isinstance(none_hooks.wait("down")[1], AuthError)
    finally:
        server.close()


def test_select_picks_the_database(state, clients, redis_server):
    """(By a name: ``localhost`` may also be ::1, where Redis does not
    listen; the next attempt takes the next address.)"""
    client, hooks = clients(Redis, "redis://localhost:%d/3" % redis_server.port)
    hooks.wait("up")
    calls(state, client, ("SET", "in-three", "yes"))
    import redis

    assert redis.Redis(port=redis_server.port, db=3).get("in-three") == b"yes"
    assert redis_server.client().get("in-three") is None


def test_a_client_started_before_redis_reports_down_then_connects(state, clients):
    """A node may start before its Redis: down at once (calls fail), up by
    itself once Redis listens."""
    require_redis()
    server = RedisServer()
    try:
        client, hooks = clients(Redis, server.url)
        down = hooks.wait("down")
        assert isinstance(down[1], ConnectionDown)
        assert "refused" in str(down[1]).lower()
        replies, returned = calls(state, client, ("PING",))
        assert returned == [False] and isinstance(replies[0], ConnectionDown)
        server.start()
        hooks.wait("up", timeout=15)
        assert calls(state, client, ("PING",))[0] == [b"PONG"]
    finally:
        server.close()


def test_a_channel_let_go_while_subscriptions_are_made_again(
    state, clients, redis_server
):
    """``on_resubscribed`` lists the channels made again, even when one
    is unsubscribed before Redis confirmed it again (here from ``on_up``,
    which runs before any confirmation can arrive)."""
    proxy = TcpProxy(("127.0.0.1", redis_server.port))
    holder = {}

    class LetGo(Hooks):
        def hook(self, name):
            record = Hooks.hook(self, name)
            if name != "up":
                return record

            def up(run_id):
                # the first up may come before the test holds the subscriber
                subscriber = holder.get("subscriber")
                if subscriber is not None and subscriber.connections > 1:
                    subscriber.unsubscribe("a")
                record(run_id)

            return up

    try:
        hooks = LetGo()
        subscriber, _ = clients(
            Subscriber,
            proxy.url(),
            hooks=hooks,
            on_message=hooks.hook("message"),
            on_resubscribed=hooks.hook("resubscribed"),
        )
        holder["subscriber"] = subscriber
        hooks.wait("up")
        for channel in ("a", "b"):
            state.call_in_loop(subscriber.subscribe, channel, hooks.hook("confirmed"))
            hooks.wait("confirmed")
        proxy.cut()
        assert hooks.wait("resubscribed", timeout=15) == ("resubscribed", [b"b"])
        assert state.call_in_loop(lambda: subscriber.channels) == [b"b"]
    finally:
        proxy.close()


@pytest.mark.parametrize("when", ["before_the_write", "before_the_read"])
def test_a_loop_held_up_past_the_timeout_does_not_declare_redis_down(
    state, clients, redis_server, when
):
    """The loop is busy for longer than the command timeout (a large
    fan-out, a process starved of CPU) while a reply is awaited: Redis
    answers in time, only the loop could not look.  The command is
    written after the hold-up, or answered during it: ``BLPOP`` holds the
    reply back until a message's handler holds the loop up, as a fan-out
    does (the message published by another connection once its own
    ``BLPOP`` ends).  Either way the reply arrives and the connection
    stays up."""
    client, hooks = clients(Redis, redis_server.url, timeout=0.5)
    hooks.wait("up")
    other, other_hooks = clients(Redis, redis_server.url)
    other_hooks.wait("up")
    holder, holder_hooks = clients(
        Subscriber, redis_server.url, on_message=lambda *_: time.sleep(1.5)
    )
    holder_hooks.wait("up")
    state.call_in_loop(holder.subscribe, "hold", holder_hooks.hook("confirmed"))
    holder_hooks.wait("confirmed")
    replies = queue.Queue()

    def held_up():
        if when == "before_the_write":
            client.call(replies.put, "PING")
            time.sleep(1.5)
        else:
            client.call(replies.put, "BLPOP", "nothing", "0.3")
            other.call(lambda _reply: None, "BLPOP", "nothing", "0.1")
            other.call(lambda _reply: None, "PUBLISH", "hold", "now")

    state.call_in_loop(held_up)
    reply = replies.get(timeout=10)
    assert not isinstance(reply, Exception), reply
    assert state.call_in_loop(lambda: client.up)
    assert calls(state, client, ("PING",))[0] == [b"PONG"]
    assert [event for event in hooks.seen if event[0] == "down"] == []
    assert hooks.events.empty()


def test_a_subscription_confirmed_after_a_held_up_loop_stays_up(
    state, clients, redis_server
):
    """A subscription asked for just before the loop is held up past the
    timeout is confirmed, and the subscription connection stays up
    (messages published meanwhile would otherwise be lost)."""
    hooks = Hooks()
    subscriber, _ = clients(
        Subscriber,
        redis_server.url,
        hooks=hooks,
        timeout=0.5,
        on_message=hooks.hook("message"),
    )
    hooks.wait("up")

    def held_up():
        subscriber.subscribe("ch", hooks.hook("confirmed"))
        time.sleep(1.5)

    state.call_in_loop(held_up)
    assert hooks.wait("confirmed") == ("confirmed", None)
    redis_server.client().publish("ch", "after")
    assert hooks.wait("message") == ("message", b"ch", b"after")
    assert [event for event in hooks.seen if event[0] == "down"] == []
    assert state.call_in_loop(lambda: subscriber.up)


def test_a_deep_pipeline_answered_in_turn_is_not_a_timeout(
    state, clients, redis_server
):
    """Commands sent together that Redis needs longer than the timeout to
    work through, replying all along (six ``BLPOP`` of 0.15 s: the last
    reply comes 0.9 s after it was asked for, with a 0.5 s timeout): the
    replies in turn show Redis alive, and every one arrives."""
    client, hooks = clients(Redis, redis_server.url, timeout=0.5)
    hooks.wait("up")
    replies, returned = calls(state, client, *[("BLPOP", "nothing", "0.15")] * 6)
    assert returned == [True] * 6
    assert replies == [None] * 6
    assert [event for event in hooks.seen if event[0] == "down"] == []
    assert state.call_in_loop(lambda: client.up)
