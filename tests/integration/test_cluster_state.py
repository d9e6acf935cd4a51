"""The Redis twins of the presence, occupancy and users seams, and the
reaper, against a real ``redis-server``.

Each "node" is a State's netius loop (on ephemeral ports) with its own
Redis command connection and its own node id; the twins' changes run on
that loop (handed over with ``call_in_loop``), their reads through the
blocking client REST threads use.  Redis itself is checked through the
test's own redis-py connection.
"""

import json
import queue
import time

import pytest

from pushi.base.cluster import lua, seams
from pushi.base.cluster.seams import ClusterState, Registered, blocking_client
from pushi.base.config import Config
from pushi.base.presence import Joined, Member
from pushi.base.state import State
from pushi.net.redis import ConnectionDown, NetiusLoop, Redis

from support import free_port

APP = "7"


class Node:
    """A Redis connection and the three twins of one node, on the loop of
    ``state`` (nodes may share one)."""

    def __init__(self, state, url, node_id):
        self.node_id = node_id
        self.state = state

        def build():
            client = Redis(url, NetiusLoop(self.state.server))
            client.start()
            return client

        self.redis = self.state.call_in_loop(build)
        self.wait_up()
        self.reader = blocking_client(url)
        self.reaped = queue.Queue()
        self.cluster = ClusterState(self.redis, node_id, self.reader, self.reaped.put)
        self.presence = self.cluster.presence
        self.occupancy = self.cluster.occupancy
        self.users = self.cluster.users

    def wait_up(self, connections=1, timeout=10):
        """Waits for the connection to be up (made ``connections`` times)."""
        deadline = time.monotonic() + timeout
        while not self.state.call_in_loop(
            lambda: self.redis.up and self.redis.connections >= connections
        ):
            assert time.monotonic() < deadline, "Redis connection not up"
            time.sleep(0.02)

    def ask(self, start, timeout=10):
        """Runs ``start(answer)`` on the loop; returns what it answered
        (``answer`` takes one value; an error given to ``failed`` too)."""
        answers = queue.Queue()
        self.state.call_in_loop(start, answers.put)
        return answers.get(timeout=timeout)

    def many(self, starts, timeout=10):
        """Runs every ``start(answer)`` in one loop turn (one write to
        Redis); returns the answers in the order they came."""
        answers = queue.Queue()

        def issue():
            for start in starts:
                start(answers.put)

        self.state.call_in_loop(issue)
        return [answers.get(timeout=timeout) for _ in starts]

    # the twins' changes, answering one value

    def join(self, channel, user_id, info=None, limit=0):
        return lambda answer: self.presence.join(
            APP, channel, user_id, Member(info, False), limit, answer, answer
        )

    def leave(self, channel, user_id):
        return lambda answer: self.presence.leave(APP, channel, user_id, answer, answer)

    def joined(self, channel):
        return lambda answer: self.occupancy.joined(
            APP, channel, lambda *args: answer(args), answer
        )

    def left(self, channel):
        return lambda answer: self.occupancy.left(
            APP, channel, lambda *args: answer(args), answer
        )

    def opened(self, limit=0):
        return lambda answer: self.occupancy.opened(APP, limit, answer, answer)

    def counted(self, delta=1):
        """``counted``; answers the app's connections in Redis once this
        turn's write of the node's share is done."""

        def start(answer):
            self.occupancy.counted(APP, delta)
            self.redis.loop.soon(
                lambda: self.redis.call(
                    lambda value: answer(int(value or 0)),
                    "GET",
                    lua.app_key(APP, "connections"),
                )
            )

        return start

    def closed(self):
        return self.counted(-1)

    def signed_in(self, user_id):
        return lambda answer: self.users.signed_in(APP, user_id, answer, answer)

    def signed_out(self, user_id):
        return lambda answer: self.users.signed_out(APP, user_id, answer, answer)

    def close(self):
        try:
            self.state.call_in_loop(self.redis.close)
        except Exception:
            pass
        self.reader.close()


@pytest.fixture
def state(tmp_path):
    """The loop the nodes run on (a State on ephemeral ports)."""
    config = Config(server_port=free_port(), data_dir=str(tmp_path))
    instance = State(config)
    instance.start_server(http=False)
    yield instance
    instance.stop()


@pytest.fixture
def nodes(state, redis_server):
    """``nodes(n)``: n nodes with ids "1".."n" on one Redis, each with its
    own connection."""
    made = []

    def make(count):
        for _ in range(count):
            made.append(Node(state, redis_server.url, str(len(made) + 1)))
        return made[-count:]

    yield make
    for node in made:
        node.close()


def at_once(*batches):
    """Fires the nodes' batches of changes (``(node, starts)``) in one loop
    turn, taking from each in turn, without waiting for any answer (each
    node's connection sends its own in one write); returns each batch's
    answers, in the order they came."""
    answers = [queue.Queue() for _ in batches]

    def issue():
        longest = max(len(starts) for _, starts in batches)
        for index in range(longest):
            for (_, starts), found in zip(batches, answers, strict=True):
                if index < len(starts):
                    starts[index](found.put)

    batches[0][0].state.call_in_loop(issue)
    return [
        [found.get(timeout=30) for _ in starts]
        for (_, starts), found in zip(batches, answers, strict=True)
    ]


def test_one_user_joining_and_leaving_on_two_nodes_is_one_member(nodes, redis_server):
    a, b = nodes(2)
    channel = "presence-room"
    for _ in range(100):
        first = a.ask(a.join(channel, "u", {"name": "U"}))
        second = b.ask(b.join(channel, "u", {"name": "other"}))
        assert isinstance(first, Joined) and isinstance(second, Joined)
        assert first.new and not second.new
        assert first.members == {"u": Member({"name": "U"}, False)}
        assert second.members == first.members
        assert a.presence.members(APP, channel) == first.members
        assert a.ask(a.leave(channel, "u")) is False
        assert b.presence.members(APP, channel) == first.members
        assert b.ask(b.leave(channel, "u")) is True
        assert a.presence.members(APP, channel) == {}
    # a hundred joins from each node at once: one new; then a hundred
    # leaves from each at once: one gone, after which nobody is left
    joins = at_once(
        (a, [a.join(channel, "u") for _ in range(100)]),
        (b, [b.join(channel, "u") for _ in range(100)]),
    )
    answers = joins[0] + joins[1]
    assert sum(1 for answer in answers if answer.new) == 1
    assert all(list(answer.members) == ["u"] for answer in answers)
    assert b.presence.count(APP, channel) == 1
    leaves = at_once(
        (a, [a.leave(channel, "u") for _ in range(100)]),
        (b, [b.leave(channel, "u") for _ in range(100)]),
    )
    assert (leaves[0] + leaves[1]).count(True) == 1
    assert a.presence.members(APP, channel) == {}
    assert a.presence.count(APP, channel) == 0
    # nothing is left behind for the reaper either
    client = redis_server.client()
    assert client.smembers(lua.owned_key("1")) == set()
    assert client.smembers(lua.owned_key("2")) == set()
    assert [key for key in client.keys("pushi:*")] == []


def test_a_member_limit_raced_from_two_nodes_admits_exactly_the_limit(nodes):
    a, b = nodes(2)
    channel = "presence-small"
    limit = 5
    answers = at_once(
        (a, [a.join(channel, "a%d" % n, limit=limit) for n in range(20)]),
        (b, [b.join(channel, "b%d" % n, limit=limit) for n in range(20)]),
    )
    admitted = [answer for answer in answers[0] + answers[1] if answer is not None]
    assert len(admitted) == limit
    assert all(answer.new for answer in admitted)
    members = a.presence.members(APP, channel)
    assert len(members) == limit
    # the snapshot each admitted socket got holds itself and those before
    assert max(len(answer.members) for answer in admitted) == limit
    # a member's other socket is still let in when full; a new user not
    inside = next(iter(members))
    again = b.ask(b.join(channel, inside, limit=limit))
    assert again is not None and not again.new
    assert b.ask(b.join(channel, "late", limit=limit)) is None
    assert len(b.presence.members(APP, channel)) == limit


def test_occupancy_across_two_nodes_sees_one_occupied_and_one_vacated(nodes):
    a, b = nodes(2)
    assert a.ask(a.joined("chat")) == (1, True)
    assert b.ask(b.joined("chat")) == (2, False)
    assert a.occupancy.count(APP, "chat") == 2
    assert b.occupancy.channels(APP) == {"chat": 2}
    assert a.ask(a.left("chat")) == (1, False)
    assert b.occupancy.count(APP, "chat") == 1
    assert b.ask(b.left("chat")) == (0, True)
    assert a.occupancy.count(APP, "chat") == 0
    assert a.occupancy.channels(APP) == {}
    # a leave of a socket this node does not count changes nothing
    assert a.ask(a.left("chat")) == (0, False)
    # raced: 50 sockets on each node come and go, one occupied, one vacated
    joins = at_once(
        (a, [a.joined("busy") for _ in range(50)]),
        (b, [b.joined("busy") for _ in range(50)]),
    )
    assert sorted(count for count, _ in joins[0] + joins[1]) == list(range(1, 101))
    assert [occupied for _, occupied in joins[0] + joins[1]].count(True) == 1
    leaves = at_once(
        (a, [a.left("busy") for _ in range(50)]),
        (b, [b.left("busy") for _ in range(50)]),
    )
    assert [vacated for _, vacated in leaves[0] + leaves[1]].count(True) == 1
    assert a.occupancy.channels(APP) == {}


def test_a_turn_of_changes_is_one_script_answering_each_as_its_own(nodes, redis_server):
    a, b = nodes(2)
    client = redis_server.client()

    def scripts():
        return client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    before = scripts()
    # joins and leaves, members (one refused: the channel is full), users
    # and a capped socket in one turn, answered in order
    answers = a.many(
        [
            a.joined("x"),
            a.joined("x"),
            a.left("x"),
            a.joined("y"),
            a.join("presence-p", "u1", limit=1),
            a.join("presence-p", "u2", limit=1),
            a.left("x"),
            a.left("x"),
            a.signed_in("s1"),
            a.opened(limit=10),
            a.leave("presence-p", "u1"),
            a.joined("x"),
        ]
    )
    assert scripts() - before == 1
    assert answers[:4] == [(1, True), (2, False), (1, False), (1, True)]
    assert answers[4].new and answers[4].members == {"u1": Member(None, False)}
    assert answers[5] is None
    assert answers[6:10] == [(0, True), (0, False), True, 1]
    assert answers[10] is True
    assert answers[11] == (1, True)
    assert b.occupancy.channels(APP) == {"x": 1, "y": 1}
    assert b.presence.members(APP, "presence-p") == {}
    # a read on the loop in the same turn comes after the turn's changes
    assert a.many(
        [a.joined("x"), lambda answer: a.occupancy.fetch_count(APP, "x", answer)]
    ) == [(2, False), 2]
    # a storm past one call's steps: calls of at most BULK, in order
    before = scripts()
    joins = a.many([a.joined("big") for _ in range(2 * seams.BULK + 1)])
    assert scripts() - before == 3
    assert [count for count, _ in joins] == list(range(1, 2 * seams.BULK + 2))
    assert b.ask(b.joined("big")) == (2 * seams.BULK + 2, False)
    leaves = a.many([a.left("big") for _ in range(2 * seams.BULK + 1)])
    assert [vacated for _, vacated in leaves].count(True) == 0
    assert b.ask(b.left("big")) == (0, True)


def test_an_answer_that_fails_costs_the_other_steps_of_its_turn_nothing(nodes):
    """Each step of a turn is answered as its own script would be: a reply
    that raises is logged, and the steps after it in the same call still
    get their answers."""
    (a,) = nodes(1)

    def failing(answer):
        def observed(*_args):
            answer("observed")
            raise RuntimeError("an observer failed")

        a.occupancy.joined(APP, "x", observed, answer)

    assert a.many([failing, a.joined("y"), a.joined("x")]) == [
        "observed",
        (1, True),
        (2, False),
    ]


def test_the_connections_of_an_app_are_capped_across_nodes(nodes):
    a, b = nodes(2)
    answers = at_once(
        (a, [a.opened(limit=7) for _ in range(10)]),
        (b, [b.opened(limit=7) for _ in range(10)]),
    )
    counted = [answer for answer in answers[0] + answers[1] if answer is not None]
    assert sorted(counted) == list(range(1, 8))
    assert a.occupancy.connections(APP) == 7
    # each node counts locally those Redis counted for it, not the refused
    held = [
        node.state.call_in_loop(lambda node=node: dict(node.occupancy.held_connections))
        for node in (a, b)
    ]
    assert sum(item.get(APP, 0) for item in held) == 7
    # a node closes only sockets it counted
    holder, other = (a, b) if any(answers[0]) else (b, a)
    if not any(answers[0] if other is a else answers[1]):
        assert other.ask(other.closed()) == 7
    assert holder.ask(holder.closed()) == 6
    assert other.ask(other.opened(limit=7)) == 7
    assert other.ask(other.opened(limit=7)) is None
    assert a.occupancy.connections(APP) == 7
    assert other.ask(other.closed()) == 6


def test_uncapped_sockets_cost_one_script_a_turn_and_add_up_with_capped_ones(
    nodes, redis_server
):
    a, b = nodes(2)
    client = redis_server.client()

    def scripts():
        return client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)

    before = scripts()
    # fifty sockets in one turn: one write of the node's share
    assert a.many([a.counted() for _ in range(50)]) == [50] * 50
    assert scripts() - before == 1
    assert b.ask(b.opened(limit=100)) == 51
    # counted and capped sockets mixed in one turn add up exactly
    a.many(
        [a.counted(), a.opened(limit=100), a.counted(-1)] * 5
        + [a.opened(limit=100), a.counted()]
    )
    assert a.occupancy.connections(APP) == 51 + 5 + 1 + 1
    assert client.hgetall(lua.app_key(APP, "conns")) == {b"1": b"57", b"2": b"1"}
    # the capped ones see the uncapped: the app is full at 58
    assert b.ask(b.opened(limit=58)) is None
    assert a.ask(a.counted(-1)) == 57
    assert b.ask(b.opened(limit=58)) == 58
    a.many([a.counted(-1) for _ in range(56)])
    b.many([b.counted(-1), b.counted(-1)])
    assert a.occupancy.connections(APP) == 0
    assert not client.exists(lua.app_key(APP, "conns"))
    for node_id in ("1", "2"):
        assert client.smembers(lua.owned_key(node_id)) == set()


def test_reads_on_any_node_agree_with_the_changes(nodes):
    a, b = nodes(2)
    a.many([a.joined("news"), a.joined("news-sport"), a.joined("other")])
    b.many([b.joined("news"), b.joined("presence-x")])
    a.ask(a.join("presence-x", "u1", {"n": 1}))
    b.ask(b.join("presence-x", "u2", [1, 2]))
    a.many([a.opened(), a.opened()])
    b.ask(b.opened())
    a.ask(a.signed_in("s1"))
    b.ask(b.signed_in("s1"))
    b.ask(b.signed_in("s2"))
    for node in (a, b):
        assert node.occupancy.channels(APP) == {
            "news": 2,
            "news-sport": 1,
            "other": 1,
            "presence-x": 1,
        }
        assert node.occupancy.channels(APP, prefix="news") == {
            "news": 2,
            "news-sport": 1,
        }
        assert node.occupancy.channels(APP, prefix="nope") == {}
        assert node.occupancy.count(APP, "news") == 2
        assert node.occupancy.count(APP, "missing") == 0
        assert node.occupancy.connections(APP) == 3
        assert node.occupancy.connections("other-app") == 0
        assert node.presence.members(APP, "presence-x") == {
            "u1": Member({"n": 1}, False),
            "u2": Member([1, 2], False),
        }
        assert node.presence.count(APP, "presence-x") == 2
        assert node.users.online(APP, ["s1", "s2", "s3"]) == ["s1", "s2"]
        # the same read on the loop, through the command connection
        assert node.ask(
            lambda answer, node=node: node.presence.fetch_members(
                APP, "presence-x", answer
            )
        ) == node.presence.members(APP, "presence-x")
        assert (
            node.ask(
                lambda answer, node=node: node.occupancy.fetch_count(
                    APP, "news", answer
                )
            )
            == 2
        )
        assert node.ask(
            lambda answer, node=node: node.users.fetch_online(
                APP, ["s3", "s2", "s1"], answer
            )
        ) == ["s2", "s1"]
    assert a.ask(a.signed_out("s1")) is False
    assert b.ask(b.signed_out("s1")) is True
    assert b.ask(b.signed_out("s1")) is False
    assert a.users.online(APP, ["s1", "s2"]) == ["s2"]


def occupy(node):
    """A node holding a bit of everything; what it holds, for a check."""
    node.many(
        [
            node.joined("only-here"),
            node.joined("only-here"),
            node.joined("shared"),
            node.joined("presence-p"),
            node.joined("presence-p"),
            node.join("presence-p", "alone", {"who": "alone"}),
            node.join("presence-p", "alone"),
            node.join("presence-p", "both", {"who": "both"}),
            node.opened(),
            node.opened(),
            node.signed_in("solo"),
            node.signed_in("twice"),
        ]
    )


def test_a_dead_node_is_reaped_once_by_one_of_two_reapers(nodes, redis_server):
    dead, b, c = nodes(3)
    occupy(dead)
    b.many(
        [
            b.joined("shared"),
            b.joined("presence-p"),
            b.join("presence-p", "both"),
            b.opened(),
            b.signed_in("twice"),
        ]
    )
    client = redis_server.client()
    now = int(time.time() * 1000)
    # the dead node's heartbeat stopped 30 s ago; the others' are fresh
    client.zadd(lua.NODES, {"1": now - 30000, "2": now, "3": now})
    owned = client.smembers(lua.owned_key("1"))
    assert len(owned) == 8

    # what either reaper reaped
    seen = queue.Queue()
    b.cluster.reaper.reaped = c.cluster.reaper.reaped = seen.put
    reapers = [(b, b.cluster.reaper), (c, c.cluster.reaper)]
    done = queue.Queue()

    def check():
        # both at once, each on its own connection
        for node, instance in reapers:
            instance.check(lambda node=node: done.put(node.node_id))

    b.state.call_in_loop(check)
    assert {done.get(timeout=10), done.get(timeout=10)} == {"2", "3"}
    reaped = seen.get(timeout=10)
    assert seen.empty(), "reaped twice"
    assert reaped.node_id == "1" and reaped.complete
    assert reaped.removed == [(APP, "presence-p", "alone")]
    assert reaped.vacated == [(APP, "only-here")]
    assert sorted(reaped.counts) == [(APP, "presence-p", 1), (APP, "shared", 1)]
    assert reaped.offline == [(APP, "solo")]
    assert reaped.connections == [(APP, 1)]
    # what is left is the living node's
    assert b.occupancy.channels(APP) == {"shared": 1, "presence-p": 1}
    assert b.occupancy.connections(APP) == 1
    assert b.presence.members(APP, "presence-p") == {
        "both": Member({"who": "both"}, False)
    }
    assert b.users.online(APP, ["solo", "twice"]) == ["twice"]
    assert client.zscore(lua.NODES, "1") is None
    assert not client.exists(lua.owned_key("1"))
    # another check finds nobody to reap
    c.state.call_in_loop(reapers[1][1].check, lambda: done.put("again"))
    assert done.get(timeout=10) == "again"
    assert seen.empty()
    # a reaper that takes it up again (the lock expired, the entries
    # listed once more) changes nothing: each entry was undone once
    client.zadd(lua.NODES, {"1": now - 30000})
    client.delete(lua.reap_key("1"))
    client.sadd(lua.owned_key("1"), *owned)
    c.state.call_in_loop(reapers[1][1].check, lambda: done.put("repeat"))
    assert done.get(timeout=10) == "repeat"
    again = seen.get(timeout=10)
    assert again.removed == again.vacated == again.offline == []
    assert b.occupancy.channels(APP) == {"shared": 1, "presence-p": 1}
    assert b.occupancy.connections(APP) == 1
    assert list(b.presence.members(APP, "presence-p")) == ["both"]
    # the dead node's own late leaves change nothing either
    assert dead.ask(dead.leave("presence-p", "both")) is False
    assert dead.ask(dead.left("shared")) == (1, False)
    assert dead.ask(dead.signed_out("twice")) is False
    assert list(b.presence.members(APP, "presence-p")) == ["both"]
    assert b.users.online(APP, ["twice"]) == ["twice"]
    # the living node's last ones still end it all
    assert b.ask(b.leave("presence-p", "both")) is True
    assert b.ask(b.left("shared")) == (0, True)


def snapshot(node):
    return (
        node.occupancy.channels(APP),
        node.occupancy.connections(APP),
        node.presence.members(APP, "presence-p"),
        node.users.online(APP, ["solo", "twice", "nobody"]),
    )


def reregister(node, node_id=None):
    return node.ask(
        lambda answer: node.cluster.reregister(node_id, answer, answer), timeout=10
    )


def restart(redis_server, *nodes):
    redis_server.restart()
    for node in nodes:
        node.wait_up(connections=2)


def test_a_settle_while_redis_is_away_again_is_done_by_the_next(nodes, redis_server):
    """A leave that failed (Redis away) leaves the node unsure whether the
    channel was vacated, which ``settle`` decides after the node wrote its
    state again; when Redis is away once more at that moment, the next
    settle decides it: the vacated is not lost."""
    (a,) = nodes(1)
    a.presence.announcer = Announcer()
    assert a.ask(a.joined("x")) == (1, True)
    assert a.ask(a.join("presence-p", "u")).new
    redis_server.kill()
    assert isinstance(a.ask(a.left("x")), ConnectionDown)
    assert isinstance(a.ask(a.leave("presence-p", "u")), ConnectionDown)
    settled = queue.Queue()

    def settle():
        a.occupancy.settle(lambda *key: settled.put(("vacated",) + key))
        a.presence.settle(lambda *key: settled.put(("removed",) + key))

    a.state.call_in_loop(settle)
    redis_server.start()
    a.wait_up(connections=2)
    assert isinstance(reregister(a), Registered)
    a.state.call_in_loop(settle)
    assert sorted(settled.get(timeout=10) for _ in range(2)) == [
        ("removed", APP, "presence-p", "u"),
        ("vacated", APP, "x"),
    ]
    assert settled.empty()


def test_after_redis_restarted_empty_reregister_restores_the_state(nodes, redis_server):
    a, b = nodes(2)
    occupy(a)
    occupy(b)
    before = snapshot(a)
    assert before[0] == {"only-here": 4, "shared": 2, "presence-p": 4}
    assert before[1] == 4
    restart(redis_server, a, b)
    assert snapshot(a) == ({}, 0, {}, [])
    registered = reregister(a)
    assert isinstance(registered, Registered)
    assert sorted(registered.occupied) == [
        (APP, "only-here"),
        (APP, "presence-p"),
        (APP, "shared"),
    ]
    assert sorted(registered.added) == [
        (APP, "presence-p", "alone", Member({"who": "alone"}, False)),
        (APP, "presence-p", "both", Member({"who": "both"}, False)),
    ]
    assert sorted(registered.online) == [(APP, "solo"), (APP, "twice")]
    assert registered.vacated == registered.removed == registered.offline == []
    assert reregister(b) == Registered([], [], [], [], [], [])
    assert snapshot(b) == before
    # once more changes nothing
    assert reregister(a) == Registered([], [], [], [], [], [])
    assert snapshot(a) == before
    # and the changes after it add up: the last sockets end everything
    for node in (a, b):
        node.many([node.leave("presence-p", "alone") for _ in range(2)])
        assert node.ask(node.leave("presence-p", "both")) is (node is b)
        node.many([node.left("only-here")] * 2 + [node.left("shared")])
        node.many([node.left("presence-p")] * 2 + [node.closed()] * 2)
        node.many([node.signed_out("solo"), node.signed_out("twice")])
    assert snapshot(a) == ({}, 0, {}, [])
    # what the reaper would find is empty as well
    client = redis_server.client()
    assert client.smembers(lua.owned_key("1")) == set()
    assert client.smembers(lua.owned_key("2")) == set()


def test_a_node_registered_again_under_a_new_id_leaves_nothing_under_the_old(
    nodes, redis_server
):
    """Between Redis's restart and the node's new id, changes go under the
    old id: the re-registration writes everything under the new one and
    reaps the old one, so nothing is counted twice or left behind."""
    a, b = nodes(2)
    occupy(a)
    occupy(b)
    before = snapshot(a)
    restart(redis_server, a, b)
    # written under the old ids before the new ones are known
    assert a.ask(a.joined("late")) == (1, True)
    assert a.ask(a.join("presence-p", "late-user", "L")).new
    b.ask(b.signed_in("solo"))
    assert b.ask(b.signed_out("solo")) is True
    registered = reregister(a, "11")
    assert (APP, "late") not in registered.occupied  # occupied already
    reregister(b, "12")
    reaped = [a.reaped.get(timeout=10), b.reaped.get(timeout=10)]
    assert sorted(item.node_id for item in reaped) == ["1", "2"]
    assert all(item.complete for item in reaped)
    # the old ids' entries were undone and the new ids' kept them
    assert all(not (item.removed or item.vacated or item.offline) for item in reaped)
    client = redis_server.client()
    assert not client.exists(lua.owned_key("1"))
    assert not client.exists(lua.owned_key("2"))
    channels, connections, members, online = snapshot(a)
    assert channels == dict(before[0], late=1)
    assert connections == before[1]
    assert members == dict(before[2], **{"late-user": Member("L", False)})
    assert online == before[3]
    assert a.occupancy.node_id == a.presence.node_id == a.users.node_id == "11"
    # the sockets now leave under the new id and end what was theirs
    assert a.ask(a.left("late")) == (0, True)
    assert a.ask(a.leave("presence-p", "late-user")) is True
    assert len(client.smembers(lua.owned_key("11"))) == 8
    assert len(client.smembers(lua.owned_key("12"))) == 8


def test_reregister_zeroes_what_redis_counts_for_the_node_and_it_does_not(
    nodes, redis_server
):
    """A change that failed in the node's eyes but ran in Redis (its
    answer lost) is undone at the next re-registration."""
    (a,) = nodes(1)
    a.ask(a.joined("kept"))
    a.ask(a.joined("lost"))
    a.ask(a.join("presence-p", "ghost"))
    a.ask(a.signed_in("ghost"))
    a.ask(a.opened())

    def forget():
        a.occupancy.held.pop((APP, "lost"))
        a.presence.held.pop((APP, "presence-p", "ghost"))
        a.users.held.pop((APP, "ghost"))
        a.occupancy.held_connections.pop(APP)

    a.state.call_in_loop(forget)
    registered = reregister(a)
    assert registered.vacated == [(APP, "lost")]
    assert registered.removed == [(APP, "presence-p", "ghost")]
    assert registered.offline == [(APP, "ghost")]
    assert a.occupancy.channels(APP) == {"kept": 1}
    assert a.occupancy.connections(APP) == 0
    assert a.presence.members(APP, "presence-p") == {}
    assert a.users.online(APP, ["ghost"]) == []
    assert redis_server.client().smembers(lua.owned_key("1")) == {b'["sub","7","kept"]'}


def test_a_change_while_redis_is_down_fails_within_a_second(nodes, redis_server):
    (a,) = nodes(1)
    redis_server.stop()
    deadline = time.monotonic() + 10
    while a.state.call_in_loop(lambda: a.redis.up):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    for start in (a.join("presence-x", "u"), a.joined("x"), a.signed_in("u")):
        assert isinstance(a.ask(start, timeout=5), ConnectionDown)
    assert time.monotonic() - started < 5
    with pytest.raises(Exception) as raised:
        a.occupancy.count(APP, "x")
    import redis

    assert isinstance(raised.value, redis.RedisError)


def test_a_started_reaper_reaps_a_silent_node_by_itself(nodes, redis_server):
    dead, b = nodes(2)
    occupy(dead)
    client = redis_server.client()
    now = int(time.time() * 1000)
    client.zadd(lua.NODES, {"1": now, "2": now})
    b.state.call_in_loop(
        lambda: b.cluster.reaper.start(NetiusLoop(b.state.server), interval=0.2)
    )
    try:
        # alive: left alone
        time.sleep(1)
        assert b.reaped.empty()
        assert b.occupancy.count(APP, "only-here") == 2
        # silent for longer than the bound: reaped
        client.zadd(lua.NODES, {"1": now - 11000})
        reaped = b.reaped.get(timeout=10)
        assert reaped.node_id == "1"
        assert sorted(reaped.vacated) == [
            (APP, "only-here"),
            (APP, "presence-p"),
            (APP, "shared"),
        ]
        assert sorted(reaped.removed) == [
            (APP, "presence-p", "alone"),
            (APP, "presence-p", "both"),
        ]
        assert b.occupancy.channels(APP) == {}
        assert client.zrange(lua.NODES, 0, -1) == [b"2"]
    finally:
        b.state.call_in_loop(b.cluster.reaper.stop)


class Announcer:
    """Member events in the broker's shape (``cluster/broker``): its meta
    key, bus and body ``[app_id, channel, name, data, exclude, extra]``."""

    def __init__(self):
        self.epochs = 0

    def _event(self, app_id, channel, name, data, exclude=None):
        self.epochs += 1
        return (
            "pushi:{%s}:ch:%s:meta" % (app_id, channel),
            (
                "pushi:m:{%s}:%s" % (app_id, channel),
                "e%d" % self.epochs,
                json.dumps([app_id, channel, name, data, exclude, None]),
                86400,
            ),
        )

    def member_added(self, app_id, channel, user_id, member, socket_id):
        data = {"user_id": user_id, "user_info": member.user_info}
        return self._event(
            app_id, channel, "pusher_internal:member_added", data, socket_id
        )

    def member_removed(self, app_id, channel, user_id):
        data = {"user_id": user_id}
        return self._event(app_id, channel, "pusher_internal:member_removed", data)


def bus_events(subscription, count, timeout=10):
    """``count`` messages of a redis-py subscription: (offset, epoch,
    name, user_id, exclude)."""
    events = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        message = subscription.get_message(timeout=0.5)
        if message is None or message["type"] != "message":
            continue
        epoch, offset, body = message["data"].split(b":", 2)
        _app, _channel, name, data, exclude, _extra = json.loads(body)
        events.append((int(offset), epoch.decode(), name, data["user_id"], exclude))
    return events


def test_member_events_are_published_in_the_step_that_decides_them(nodes, redis_server):
    """With an announcer every member gets one member_added and one
    member_removed, published by the script that decided it, and each
    join's members are exactly the members whose member_added is at or
    before the position it answers."""
    a, b, c = nodes(3)
    for node in (a, b, c):
        node.presence.announcer = Announcer()
        node.cluster.reaper.announcer = node.presence.announcer
    channel = "presence-live"
    subscription = redis_server.client().pubsub()
    subscription.subscribe("pushi:m:{%s}:%s" % (APP, channel))
    subscription.get_message(timeout=5)

    def join(node, user_id, socket_id):
        return lambda answer: node.presence.join(
            APP, channel, user_id, Member(user_id, False), 0, answer, answer, socket_id
        )

    # users 0..9 on both nodes, each twice
    answers = at_once(
        (a, [join(a, "u%d" % (n % 10), "a.%d" % n) for n in range(20)]),
        (b, [join(b, "u%d" % (n % 10), "b.%d" % n) for n in range(20)]),
    )
    answers = answers[0] + answers[1]
    added = bus_events(subscription, 10)
    assert sorted(event[3] for event in added) == ["u%d" % n for n in range(10)]
    assert [event[0] for event in added] == list(range(1, 11))
    assert len({event[1] for event in added}) == 1
    assert all(event[2] == "pusher_internal:member_added" for event in added)
    at = {event[3]: event[0] for event in added}
    for answer in answers:
        offset, epoch = answer.position
        assert epoch == added[0][1]
        assert set(answer.members) == {
            user for user, added_at in at.items() if added_at <= offset
        }
    # the joining socket is excluded from its own member_added
    new = [answer for answer in answers if answer.new]
    assert len(new) == 10
    assert all(event[4].split(".")[0] in ("a", "b") for event in added)
    # c holds u0 and u1 too, then dies; a and b's sockets of u0..u4 leave
    c.many([join(c, "u0", "c.1"), join(c, "u1", "c.2"), join(c, "solo", "c.3")])
    assert [event[3] for event in bus_events(subscription, 1)] == ["solo"]
    for node in (a, b):
        node.many([node.leave(channel, "u%d" % (n % 5)) for n in range(10)])
    removed = bus_events(subscription, 3)
    assert sorted(event[3] for event in removed) == ["u2", "u3", "u4"]
    assert [event[0] for event in removed] == [12, 13, 14]
    client = redis_server.client()
    now = int(time.time() * 1000)
    client.zadd(lua.NODES, {"3": now - 30000, "1": now, "2": now})
    a.state.call_in_loop(a.cluster.reaper.check)
    reaped = a.reaped.get(timeout=10)
    assert sorted(reaped.removed) == [
        (APP, channel, "solo"),
        (APP, channel, "u0"),
        (APP, channel, "u1"),
    ]
    removed = bus_events(subscription, 3)
    assert sorted(event[3] for event in removed) == ["solo", "u0", "u1"]
    assert [event[0] for event in removed] == [15, 16, 17]
    assert bus_events(subscription, 1, timeout=1) == []
    assert sorted(a.presence.members(APP, channel)) == ["u5", "u6", "u7", "u8", "u9"]
    subscription.close()


def test_a_node_reaped_while_alive_comes_back_whole_under_a_new_id(nodes, redis_server):
    """Reaped while cut off, the node wrote under its old id after the
    reaper listed it; registered again under a new id it writes what it
    holds and undoes the old id's rest itself, though the reaper still
    holds that id's lock: nothing is counted twice or left behind."""
    a, b = nodes(2)
    occupy(a)
    before = snapshot(a)
    client = redis_server.client()
    now = int(time.time() * 1000)
    client.zadd(lua.NODES, {"1": now - 30000, "2": now})
    b.state.call_in_loop(b.cluster.reaper.check)
    reaped = b.reaped.get(timeout=10)
    assert len(reaped.removed) == 2 and len(reaped.vacated) == 3
    assert snapshot(b) == ({}, 0, {}, [])
    assert client.get(lua.reap_key("1")) == b"2"
    # the node, unaware, goes on under its old id
    assert a.ask(a.joined("after")) == (1, True)
    registered = reregister(a, "21")
    assert sorted(registered.occupied) == [
        (APP, "only-here"),
        (APP, "presence-p"),
        (APP, "shared"),
    ]
    assert sorted(user for _, _, user, _ in registered.added) == ["alone", "both"]
    assert sorted(registered.online) == [(APP, "solo"), (APP, "twice")]
    own = a.reaped.get(timeout=10)
    assert own.node_id == "1" and own.complete
    assert own.removed == own.vacated == own.offline == []
    assert own.counts == [(APP, "after", 1)]
    assert snapshot(b) == (dict(before[0], after=1),) + before[1:]
    assert not client.exists(lua.owned_key("1"))
    assert len(client.smembers(lua.owned_key("21"))) == 9


def lingering(node, seconds, grace):
    """Has ``node``'s vacated and removed webhooks linger ``seconds`` (any
    node sweeps them ``grace`` past their deadline); the queue of what it
    posts once their linger is over."""
    posts = queue.Queue()
    linger = node.cluster.linger
    linger.seconds = lambda _app_id: seconds
    linger.grace = grace
    linger.post = lambda *args: posts.put(args)
    return posts


def test_a_lingering_vacated_is_posted_once_by_its_node_or_a_sweep(nodes, redis_server):
    a, b = nodes(2)
    posted = {a: lingering(a, 0.5, 0.5), b: lingering(b, 0.5, 0.5)}

    def joined(node, channel):
        return lambda answer: node.occupancy.joined(
            APP, channel, lambda *args, **details: answer((args, details)), answer
        )

    def left(node, channel):
        return lambda answer: node.occupancy.left(
            APP, channel, lambda *args, **details: answer((args, details)), answer
        )

    def sweep_for(node, seconds):
        """Sweeps on ``node`` every 0.05 s for ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            node.state.call_in_loop(node.cluster.linger.sweep)
            time.sleep(0.05)

    def drained():
        found = []
        for node in (a, b):
            while not posted[node].empty():
                found.append((node.node_id, posted[node].get()))
        return found

    client = redis_server.client()
    assert a.ask(joined(a, "room")) == ((1, True), {})
    # vacated on a: pending in Redis, lingering
    assert a.ask(left(a, "room")) == ((0, True), {"lingered": True})
    assert client.zcard(lua.LINGERING) == 1
    # occupied on b within the linger: undone, neither posted
    assert b.ask(joined(b, "room")) == ((1, True), {"lingered": True})
    assert client.zcard(lua.LINGERING) == 0
    sweep_for(b, 1.5)
    assert drained() == []
    # vacated on b, then a's sweeps race b's own claim: posted once
    assert b.ask(left(b, "room")) == ((0, True), {"lingered": True})
    sweep_for(a, 2)
    found = drained()
    assert [post for _, post in found] == [(APP, "vacated", {"channel": "room"})]
    assert client.zcard(lua.LINGERING) == 0
    # undone and made again: the first leave's node claims nothing, the
    # second's posts it once its own linger is over
    assert a.ask(joined(a, "room"))[0] == (1, True)
    assert a.ask(left(a, "room"))[1] == {"lingered": True}
    assert b.ask(joined(b, "room"))[1] == {"lingered": True}
    time.sleep(0.3)
    assert b.ask(left(b, "room"))[1] == {"lingered": True}
    time.sleep(1.5)
    # (a's claim, at its own deadline, took nothing)
    assert drained() == [(b.node_id, (APP, "vacated", {"channel": "room"}))]
    assert client.zcard(lua.LINGERING) == 0


def test_a_lingering_member_removed_is_undone_by_the_member_on_another_node(nodes):
    a, b = nodes(2)
    posted = {a: lingering(a, 0.5, 30), b: lingering(b, 0.5, 30)}

    def join(node, user_id):
        return lambda answer: node.presence.join(
            APP, "presence-p", user_id, Member(None, False), 0, answer, answer
        )

    def leave(node, user_id):
        return lambda answer: node.presence.leave(
            APP,
            "presence-p",
            user_id,
            lambda *args, **details: answer((args, details)),
            answer,
        )

    assert a.ask(join(a, "u")).lingered is False
    assert a.ask(leave(a, "u")) == ((True,), {"lingered": True})
    assert b.ask(join(b, "u")).lingered is True
    time.sleep(1)
    assert posted[a].empty() and posted[b].empty()
    assert b.ask(leave(b, "u")) == ((True,), {"lingered": True})
    assert posted[b].get(timeout=5) == (
        APP,
        "member_removed",
        {"channel": "presence-p", "user_id": "u"},
    )
    time.sleep(0.5)
    assert posted[a].empty() and posted[b].empty()
