"""``GET /apps/<id>/sockets`` answers for the whole cluster from any node:
two Pushi nodes as subprocesses on one real ``redis-server``, real
clients on both, signed REST reads of each.  Worker mode (the same over a
private Redis) is in ``test_workers.py``.
"""

import os
import signal
import time

from cluster_support import cluster_fixture, rest, signin, wait_for  # noqa: F401


def listed(node, app, params=None):
    status, answer = rest(node, app, "sockets", params)
    assert status == 200, answer
    return answer


def stopped(pid):
    """Whether the kernel has stopped every thread of process ``pid``
    (its state in ``/proc``: ``T``)."""
    with open("/proc/%d/stat" % pid) as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"


def by_id(answer):
    return {entry["socket_id"]: entry for entry in answer["sockets"]}


def test_either_node_lists_the_sockets_of_both_with_channels_and_user(cluster):
    one, two = cluster.node(), cluster.node()
    app, other = cluster.make_app(), cluster.make_app()
    alice = one.connect(app)
    alice.subscribe("news")
    signin(alice, app, "alice")
    bob = two.connect(app)
    bob.subscribe("sport")
    bob.subscribe("news")
    signin(bob, app, "bob")
    stranger = two.connect(other)
    assert alice.socket_id.split(".")[0] != bob.socket_id.split(".")[0]
    for node in (one, two):
        answer = listed(node, app)
        sockets = by_id(answer)
        assert set(sockets) == {alice.socket_id, bob.socket_id}, answer
        assert sockets[alice.socket_id]["channels"] == ["news"]
        assert sockets[alice.socket_id]["user_id"] == "alice"
        assert sorted(sockets[bob.socket_id]["channels"]) == ["news", "sport"]
        assert sockets[bob.socket_id]["user_id"] == "bob"
        assert sockets[bob.socket_id]["dialect"] == "pusher"
        assert answer["total"] == 2
        assert "partial" not in answer and "truncated" not in answer
        # an app's sockets only
        assert set(by_id(listed(node, other))) == {stranger.socket_id}
    for client in (alice, bob, stranger):
        client.close()


def test_the_list_is_bounded_by_limit_and_says_it_was_cut(cluster):
    one, two = cluster.node(), cluster.node()
    app = cluster.make_app()
    clients = [node.connect(app) for node in (one, two, one, two)]
    answer = listed(one, app, {"limit": "3"})
    assert len(answer["sockets"]) == 3, answer
    assert answer["total"] == 4
    assert answer["truncated"] is True
    assert set(by_id(answer)) <= {client.socket_id for client in clients}
    counted = listed(two, app, {"limit": "0"})
    assert counted["sockets"] == [] and counted["total"] == 4
    status, bad = rest(one, app, "sockets", {"limit": "many"})
    assert status == 400, bad
    for client in clients:
        client.close()


def test_a_node_that_does_not_answer_makes_a_partial_answer(cluster):
    one, two = cluster.node(), cluster.node()
    app = cluster.make_app()
    here, there = one.connect(app), two.connect(app)
    assert set(by_id(listed(one, app))) == {here.socket_id, there.socket_id}
    # node two is frozen: its subscription stays in Redis, it answers nothing
    os.kill(two.process.pid, signal.SIGSTOP)
    try:
        # asked once the kernel says it stopped (the signal is delivered
        # as each thread next leaves the kernel)
        assert wait_for(lambda: stopped(two.process.pid), timeout=10)
        started = time.monotonic()
        answer = listed(one, app)
        assert time.monotonic() - started < 8
    finally:
        os.kill(two.process.pid, signal.SIGCONT)
    assert set(by_id(answer)) == {here.socket_id}, answer
    assert answer["partial"] is True
    assert answer["missing"] == 1
    here.close()
    there.close()
