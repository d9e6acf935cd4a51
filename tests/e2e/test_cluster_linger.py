"""The webhook linger over a cluster: a real ``redis-server``, Pushi nodes
as subprocesses and a real webhook receiver.

``channel_vacated`` and ``member_removed`` wait 3 s as on one process,
and the ``channel_occupied`` / ``member_added`` that undoes one in that
window cancels it whichever node each comes to: neither is posted.  One
that is not undone is posted once for the cluster, also when the node
that decided it is killed with ``kill -9`` during its linger.
"""

import time

from cluster_support import (
    Hooks,
    cluster_fixture,  # noqa: F401 (the cluster fixture)
    joined,
    rest,
    wait_for,
)

KINDS = ["channel_occupied", "channel_vacated", "member_added", "member_removed"]

TEAM = "presence-team"


def occupied(node, app, channel):
    status, answer = rest(node, app, "channels/%s" % channel)
    assert status == 200, answer
    return answer["occupied"]


def users(node, app, channel):
    status, answer = rest(node, app, "channels/%s/users" % channel)
    assert status == 200, answer
    return sorted(user["id"] for user in answer["users"])


def counts(hooks):
    """How many times each (name, channel[, user_id]) was posted."""
    found = {}
    for event in list(hooks.events):
        key = (event["name"], event["channel"]) + (
            (event["user_id"],) if "user_id" in event else ()
        )
        found[key] = found.get(key, 0) + 1
    return found


def subscribed(node, app, channel):
    client = node.connect(app)
    assert client.subscribe(channel)["event"].endswith("subscription_succeeded")
    return client


def test_vacated_on_one_node_and_occupied_on_another_within_the_linger(cluster):
    hooks = Hooks()
    try:
        a, b = cluster.node(), cluster.node()
        app = cluster.make_app(webhooks=[{"url": hooks.url, "events": KINDS}])
        first = subscribed(a, app, "room")
        member = joined(a, app, TEAM, "u1")[0]
        assert wait_for(lambda: len(hooks.events) == 3), hooks.events
        # gone from a, and back on b within the linger (once the cluster
        # saw them go)
        first.close()
        member.close()
        assert wait_for(lambda: not occupied(b, app, "room"), step=0.05)
        assert wait_for(lambda: not occupied(b, app, TEAM), step=0.05)
        again = subscribed(b, app, "room")
        member = joined(b, app, TEAM, "u1")[0]
        # neither the vacated nor the removed, nor what undid them
        time.sleep(8)
        assert counts(hooks) == {
            ("channel_occupied", "room"): 1,
            ("channel_occupied", TEAM): 1,
            ("member_added", TEAM, "u1"): 1,
        }, hooks.events
        # gone for good: each posted once for the cluster (its node claims
        # it after 3 s, the other node's sweep finds nothing left)
        again.close()
        member.close()
        assert wait_for(lambda: len(hooks.events) == 6), hooks.events
        names = [event["name"] for event in hooks.events[3:]]
        assert sorted(names) == [
            "channel_vacated",
            "channel_vacated",
            "member_removed",
        ], hooks.events
        time.sleep(8)
        assert counts(hooks) == {
            ("channel_occupied", "room"): 1,
            ("channel_occupied", TEAM): 1,
            ("member_added", TEAM, "u1"): 1,
            ("channel_vacated", "room"): 1,
            ("channel_vacated", TEAM): 1,
            ("member_removed", TEAM, "u1"): 1,
        }, hooks.events
    finally:
        hooks.close()


def test_a_member_leaving_one_node_for_another_within_the_linger(cluster):
    """The channel stays occupied (another member on b): only the member
    moves, and its removed and added cancel out."""
    hooks = Hooks()
    try:
        a, b = cluster.node(), cluster.node()
        app = cluster.make_app(webhooks=[{"url": hooks.url, "events": KINDS}])
        stay = joined(b, app, TEAM, "stay")[0]
        moving = joined(a, app, TEAM, "u1")[0]
        assert wait_for(lambda: len(hooks.events) == 3), hooks.events
        moving.close()
        assert wait_for(lambda: users(b, app, TEAM) == ["stay"], step=0.05)
        moving = joined(b, app, TEAM, "u1")[0]
        time.sleep(8)
        assert counts(hooks) == {
            ("channel_occupied", TEAM): 1,
            ("member_added", TEAM, "stay"): 1,
            ("member_added", TEAM, "u1"): 1,
        }, hooks.events
        moving.close()
        stay.close()
    finally:
        hooks.close()


def test_the_deciding_node_killed_during_the_linger(cluster):
    """The node whose leaves vacated the channel and removed the member
    dies before their linger is over: the other node posts them, once."""
    hooks = Hooks()
    try:
        a, b = cluster.node(), cluster.node()
        app = cluster.make_app(webhooks=[{"url": hooks.url, "events": KINDS}])
        # b serves the app too (and posts its webhooks)
        watcher = subscribed(b, app, "elsewhere")
        first = subscribed(a, app, "room")
        member = joined(a, app, TEAM, "u1")[0]
        assert wait_for(lambda: len(hooks.events) == 4), hooks.events
        first.close()
        member.close()
        assert wait_for(lambda: not occupied(b, app, "room"), step=0.05)
        assert wait_for(lambda: not occupied(b, app, TEAM), step=0.05)
        a.stop(kill=True)
        assert wait_for(lambda: len(hooks.events) == 7, timeout=30), hooks.events
        time.sleep(6)
        assert counts(hooks) == {
            ("channel_occupied", "elsewhere"): 1,
            ("channel_occupied", "room"): 1,
            ("channel_occupied", TEAM): 1,
            ("member_added", TEAM, "u1"): 1,
            ("channel_vacated", "room"): 1,
            ("channel_vacated", TEAM): 1,
            ("member_removed", TEAM, "u1"): 1,
        }, hooks.events
        watcher.close()
    finally:
        hooks.close()
