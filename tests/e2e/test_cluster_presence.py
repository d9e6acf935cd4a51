"""Presence, occupancy, queries and webhooks over a cluster: a real
``redis-server`` and Pushi nodes as subprocesses, real WebSocket clients
spread over the nodes.

One member per user id across the nodes (member_added with the first
socket anywhere, member_removed with the last), the member limit raced
from two nodes, the REST queries answering for the whole cluster from any
node, webhooks once for the cluster, a node killed with ``kill -9`` (its
members removed once, counts dropped, no ghost) and Redis restarted empty
(the counts match the sockets really connected).
"""

import threading
import time

from cluster_support import (
    Hooks,
    MemberView,
    cluster_fixture,  # noqa: F401 (the cluster fixture)
    data_of,
    join,
    joined,
    rest,
    signin,
    wait_for,
)

ROOM = "presence-room"


def users(node, app, channel):
    status, answer = rest(node, app, "channels/%s/users" % channel)
    assert status == 200, answer
    return sorted(user["id"] for user in answer["users"])


def channel_list(node, app, prefix, info):
    status, answer = rest(
        node, app, "channels", {"filter_by_prefix": prefix, "info": info}
    )
    assert status == 200, answer
    return answer["channels"]


def observers(a, b, app, channel=ROOM):
    """An observer socket on each node (users ``obs-a`` and ``obs-b``),
    each knowing of the other."""
    on_a = MemberView(*joined(a, app, channel, "obs-a"))
    on_b = MemberView(*joined(b, app, channel, "obs-b"))
    assert on_a.wait(lambda view: view.members == {"obs-a", "obs-b"})
    assert on_b.members == {"obs-a", "obs-b"}
    return on_a, on_b


def test_one_member_per_user_across_two_nodes(cluster):
    a, b = cluster.node(), cluster.node()
    app = cluster.make_app()
    on_a, on_b = observers(a, b, app)
    first, members = joined(a, app, ROOM, "u")
    assert set(members) == {"obs-a", "obs-b", "u"}
    for view in (on_a, on_b):
        assert view.wait(lambda view: view.of("u") == ["added"])
    # the same user's second socket, on the other node: no new member
    second, members = joined(b, app, ROOM, "u")
    assert set(members) == {"obs-a", "obs-b", "u"}
    for node in (a, b):
        assert users(node, app, ROOM) == ["obs-a", "obs-b", "u"]
    first.close()
    for view in (on_a, on_b):
        view.drain(1.5)
        assert view.of("u") == ["added"]
    for node in (a, b):
        assert users(node, app, ROOM) == ["obs-a", "obs-b", "u"]
    # the last socket anywhere leaves: the member leaves, once
    second.close()
    for view in (on_a, on_b):
        assert view.wait(lambda view: view.of("u") == ["added", "removed"])
        view.drain(1)
        assert view.of("u") == ["added", "removed"] and not view.errors
    assert wait_for(lambda: users(a, app, ROOM) == ["obs-a", "obs-b"])
    assert users(b, app, ROOM) == ["obs-a", "obs-b"]


def test_the_same_user_joining_and_leaving_on_two_nodes_many_times(
    cluster,
):
    a, b = cluster.node(), cluster.node()
    app = cluster.make_app()
    on_a, on_b = observers(a, b, app)
    rounds = 40
    clients = {a: a.connect(app), b: b.connect(app)}
    barrier = threading.Barrier(2, timeout=30)
    refused = []

    def churn(node, offset):
        client = clients[node]
        for index in range(rounds):
            barrier.wait()
            answer = join(client, app, ROOM, "u")
            if answer["event"] != "pusher_internal:subscription_succeeded":
                refused.append(answer)
            # leave in a different order each round
            if (index + offset) % 2:
                time.sleep(0.01)
            client.send({"event": "pusher:unsubscribe", "data": {"channel": ROOM}})

    late = []

    def arrive():
        # sockets joining meanwhile: their members and the member events
        # after them neither miss nor repeat one
        for index in range(8):
            node = (a, b)[index % 2]
            late.append(MemberView(*joined(node, app, ROOM, "late-%d" % index)))
            time.sleep(0.05)

    threads = [
        threading.Thread(target=churn, args=(node, offset))
        for offset, node in enumerate((a, b))
    ] + [threading.Thread(target=arrive)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not refused
    truth = {"obs-a", "obs-b"} | {"late-%d" % index for index in range(8)}
    for view in late:
        view.drain(2)
        assert not view.errors, (view.errors, view.events)
        assert view.members == truth
    for view in (on_a, on_b):
        view.drain(2)
        seen = view.of("u")
        # one member at a time: added and removed alternate, none repeated
        # nor missing, and the channel ends without the user
        assert not view.errors, (view.errors, seen)
        assert seen == ["added", "removed"] * (len(seen) // 2), seen
        # the user's sockets overlap in some rounds, not in others
        assert 1 <= len(seen) // 2 <= 2 * rounds
        assert view.members == truth
    # both nodes saw the one order of the channel's member events
    assert on_a.of("u") == on_b.of("u")
    for node in (a, b):
        assert users(node, app, ROOM) == sorted(truth)
    # a socket joining now sees the truth
    _last, members = joined(b, app, ROOM, "last")
    assert set(members) == truth | {"last"}


def test_the_member_limit_raced_from_two_nodes_admits_exactly_the_limit(
    cluster,
):
    a, b = cluster.node(), cluster.node()
    app = cluster.make_app(max_presence_members=5)
    clients = [(a if index % 2 else b).connect(app) for index in range(10)]
    barrier = threading.Barrier(len(clients), timeout=30)
    answers = [None] * len(clients)

    def race(index):
        barrier.wait()
        answers[index] = join(clients[index], app, ROOM, "user-%d" % index)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    admitted = [
        index
        for index, answer in enumerate(answers)
        if answer["event"] == "pusher_internal:subscription_succeeded"
    ]
    refused = [
        answer
        for answer in answers
        if answer["event"] != "pusher_internal:subscription_succeeded"
    ]
    assert len(admitted) == 5, answers
    assert len(refused) == 5
    for answer in refused:
        assert answer["event"] == "pusher:subscription_error", answer
        assert data_of(answer)["status"] == 403
    expected = sorted("user-%d" % index for index in admitted)
    for node in (a, b):
        assert users(node, app, ROOM) == expected
        status, info = rest(node, app, "channels/%s" % ROOM, {"info": "user_count"})
        assert status == 200 and info["user_count"] == 5, info


def test_rest_queries_answer_for_the_whole_cluster_from_any_node(cluster):
    a, b = cluster.node(), cluster.node()
    app = cluster.make_app()
    sockets = []
    for node in (a, b, b):
        client = node.connect(app)
        assert client.subscribe("news")["event"].endswith("subscription_succeeded")
        sockets.append(client)
    client = b.connect(app)
    assert client.subscribe("news-extra")["event"].endswith("subscription_succeeded")
    sockets.append(client)
    for node, user_id in ((a, "u1"), (b, "u1"), (b, "u2")):
        sockets.append(joined(node, app, "presence-team", user_id)[0])
    expected = {
        "channels": {
            "news": {"subscription_count": 3},
            "news-extra": {"subscription_count": 1},
        },
        "presence": {"presence-team": {"user_count": 2}},
        "news": {"occupied": True, "subscription_count": 3},
        "team": {"occupied": True, "user_count": 2},
        "users": ["u1", "u2"],
    }
    answers = []
    for node in (a, b):
        answers.append(
            {
                "channels": channel_list(node, app, "news", "subscription_count"),
                "presence": channel_list(
                    node, app, "presence-", "user_count,subscription_count"
                ),
                "news": rest(
                    node, app, "channels/news", {"info": "subscription_count"}
                )[1],
                "team": rest(
                    node, app, "channels/presence-team", {"info": "user_count"}
                )[1],
                "users": users(node, app, "presence-team"),
            }
        )
    assert answers[0] == expected
    assert answers[1] == expected
    # a channel nobody is on
    for node in (a, b):
        assert rest(node, app, "channels/nobody")[1] == {"occupied": False}


def test_webhooks_fire_once_for_the_cluster(cluster):
    hooks = Hooks()
    try:
        a, b = cluster.node(), cluster.node()
        kinds = [
            "channel_occupied",
            "channel_vacated",
            "member_added",
            "member_removed",
        ]
        app = cluster.make_app(webhooks=[{"url": hooks.url, "events": kinds}])
        sockets = []
        for node in (a, b, a):
            client = node.connect(app)
            assert client.subscribe("room")["event"].endswith("subscription_succeeded")
            sockets.append(client)
        for node, user_id in ((a, "u1"), (b, "u1"), (b, "u2"), (a, "u2")):
            sockets.append(joined(node, app, "presence-team", user_id)[0])
        assert wait_for(lambda: len(hooks.named("member_added")) >= 2, timeout=15)
        for client in sockets:
            client.close()
        # vacated and removed linger 3 s before they go
        assert wait_for(lambda: len(hooks.named("member_removed")) >= 2, timeout=15)
        assert wait_for(lambda: len(hooks.named("channel_vacated")) >= 2, timeout=15)
        time.sleep(5)
        for channel in ("room", "presence-team"):
            assert len(hooks.named("channel_occupied", channel)) == 1, hooks.events
            assert len(hooks.named("channel_vacated", channel)) == 1, hooks.events
        for name in ("member_added", "member_removed"):
            assert sorted(event["user_id"] for event in hooks.named(name)) == [
                "u1",
                "u2",
            ], hooks.events
        assert len(hooks.events) == 8, hooks.events
    finally:
        hooks.close()


def test_a_node_killed_has_its_members_removed_once_and_no_ghost(cluster):
    hooks = Hooks()
    try:
        a, b = cluster.node(), cluster.node()
        kinds = [
            "channel_occupied",
            "channel_vacated",
            "member_added",
            "member_removed",
        ]
        app = cluster.make_app(webhooks=[{"url": hooks.url, "events": kinds}])
        on_b = MemberView(*joined(b, app, ROOM, "obs"))
        beside = MemberView(*joined(b, app, ROOM, "obs2"))
        doomed = []
        for user_id in ("gone-1", "gone-2", "both"):
            doomed.append(joined(a, app, ROOM, user_id)[0])
        staying = joined(b, app, ROOM, "both")[0]
        for channel in ("only-a", "shared"):
            client = a.connect(app)
            assert client.subscribe(channel)["event"].endswith("subscription_succeeded")
            doomed.append(client)
        shared = b.connect(app)
        assert shared.subscribe("shared")["event"].endswith("subscription_succeeded")
        every = ["both", "gone-1", "gone-2", "obs", "obs2"]
        for view in (on_b, beside):
            assert view.wait(lambda view: view.members == set(every))
        assert users(b, app, ROOM) == every
        assert wait_for(lambda: len(hooks.named("channel_occupied")) == 3), hooks.events
        a.stop(kill=True)
        started = time.monotonic()
        for view in (on_b, beside):
            assert view.wait(
                lambda view: view.members == {"both", "obs", "obs2"}, timeout=20
            ), view.events
        assert time.monotonic() - started < 20
        for view in (on_b, beside):
            view.drain(1)
            assert not view.errors, view.errors
            for user_id in ("gone-1", "gone-2"):
                assert view.of(user_id) == ["added", "removed"] or view.of(user_id) == [
                    "removed"
                ], view.events
            assert "removed" not in view.of("both")
        assert users(b, app, ROOM) == ["both", "obs", "obs2"]
        status, info = rest(b, app, "channels/shared", {"info": "subscription_count"})
        assert info == {"occupied": True, "subscription_count": 1}, info
        assert rest(b, app, "channels/only-a")[1] == {"occupied": False}
        assert channel_list(b, app, "", "") == {ROOM: {}, "shared": {}}
        # the app's sockets: those of b alone
        assert rest(b, app, "stats")[1]["connections"] == 4
        assert wait_for(lambda: hooks.named("channel_vacated"), timeout=15)
        time.sleep(4)
        assert [event["channel"] for event in hooks.named("channel_vacated")] == [
            "only-a"
        ], hooks.events
        assert sorted(event["user_id"] for event in hooks.named("member_removed")) == [
            "gone-1",
            "gone-2",
        ], hooks.events
        # the other node's sockets were untouched
        staying.send({"event": "pusher:ping", "data": {}})
        assert staying.recv_event("pusher:pong")
    finally:
        hooks.close()


def test_redis_restarted_empty_the_counts_match_the_sockets_connected(
    cluster,
):
    a, b = cluster.node(), cluster.node()
    app = cluster.make_app()
    sockets = []
    for node in (a, b, b):
        client = node.connect(app)
        assert client.subscribe("news")["event"].endswith("subscription_succeeded")
        sockets.append(client)
    for node, user_id in ((a, "u1"), (b, "u1"), (b, "u2")):
        sockets.append(joined(node, app, "presence-team", user_id)[0])
    gone = a.connect(app)
    assert gone.subscribe("brief")["event"].endswith("subscription_succeeded")
    expected = {"news": {"subscription_count": 3}, "presence-team": {}}
    cluster.redis.kill()
    # a socket that leaves while Redis is away is not counted once it is back
    gone.close()
    time.sleep(0.5)
    cluster.redis.start()  # empty: no persistence

    def healthy():
        return all(
            node.request("GET", "health")[1]["status"] == "ok" for node in (a, b)
        )

    assert wait_for(healthy, timeout=15)
    for node in (a, b):
        assert wait_for(
            lambda node=node: (
                channel_list(node, app, "", "subscription_count") == expected
            ),
            timeout=10,
        ), channel_list(node, app, "", "subscription_count")
        assert users(node, app, "presence-team") == ["u1", "u2"]
        status, info = rest(node, app, "channels/presence-team", {"info": "user_count"})
        assert info == {"occupied": True, "user_count": 2}, info
        assert rest(node, app, "stats")[1]["connections"] == len(sockets)
    # and the sockets are still served
    for client in sockets:
        client.send({"event": "pusher:ping", "data": {}})
        assert client.recv_event("pusher:pong")


def test_watchers_on_every_node_hear_a_user_come_and_go(cluster):
    a, b = cluster.node(), cluster.node()
    app = cluster.make_app(watchlist_events=True)
    watchers = []
    for node in (a, b):
        watcher = node.connect(app)
        signin(watcher, app, "watcher-%d" % len(watchers), ["bob"])
        watchers.append(watcher)
    bob = a.connect(app)
    signin(bob, app, "bob")
    for watcher in watchers:
        told = watcher.recv_event("pusher_internal:watchlist_events")
        assert data_of(told)["events"] == [{"name": "online", "user_ids": ["bob"]}]
    # a second socket of bob, on the other node: bob was online already
    again = b.connect(app)
    signin(again, app, "bob")
    bob.close()
    assert all(watcher.nothing(1) for watcher in watchers)
    again.close()
    for watcher in watchers:
        told = watcher.recv_event("pusher_internal:watchlist_events")
        assert data_of(told)["events"] == [{"name": "offline", "user_ids": ["bob"]}]
        assert watcher.nothing(0.5)


def test_subscription_counts_reach_the_subscribers_of_every_node(cluster):
    hooks = Hooks()
    try:
        a, b = cluster.node(), cluster.node()
        app = cluster.make_app(
            subscription_count_events=True,
            webhooks=[{"url": hooks.url, "events": ["subscription_count"]}],
        )

        def count(client):
            told = client.recv_event("pusher_internal:subscription_count")
            return data_of(told)["subscription_count"]

        first = a.connect(app)
        assert first.subscribe("room")["event"].endswith("subscription_succeeded")
        assert count(first) == 1
        second = b.connect(app)
        assert second.subscribe("room")["event"].endswith("subscription_succeeded")
        # the join on b reaches the subscriber on a
        assert count(first) == 2
        assert count(second) == 2
        second.close()
        assert count(first) == 1
        # the webhook of each count goes from the node of the change alone
        assert wait_for(lambda: len(hooks.named("subscription_count")) >= 2)
        time.sleep(2)
        counts = [e["subscription_count"] for e in hooks.named("subscription_count")]
        assert sorted(counts)[:2] == [1, 2] and counts.count(2) == 1, hooks.events
        first.close()
    finally:
        hooks.close()


def test_an_apps_connection_quota_holds_across_the_nodes(cluster):
    a, b = cluster.node(), cluster.node()
    app = cluster.make_app(max_connections=3)
    sockets = [a.connect(app), a.connect(app), b.connect(app)]

    def connections(node):
        status, stats = rest(node, app, "stats")
        assert status == 200, stats
        return stats["connections"]

    # the app's sockets on every node, from any node
    assert [connections(node) for node in (a, b)] == [3, 3]
    over = b.connect(app, expect_established=False)
    error = over.recv()
    assert error["event"] == "pusher:error" and error["data"]["code"] == 4004, error
    assert over.close_code() == 4004
    assert [connections(node) for node in (a, b)] == [3, 3]
    # a socket that closes on one node makes room on the other
    sockets.pop(0).close()
    assert wait_for(lambda: connections(b) == 2)
    sockets.append(b.connect(app))
    assert [connections(node) for node in (a, b)] == [3, 3]


def test_a_socket_admitted_while_redis_is_away_counts_once_it_is_back(
    cluster, redis_server
):
    a, b = cluster.node(), cluster.node()
    app = cluster.make_app(max_connections=2)
    redis_server.pause()
    try:
        # admitted (the app's count cannot be read), its subscriptions 503
        early = a.connect(app)
    finally:
        redis_server.resume()

    def connections(node):
        status, stats = rest(node, app, "stats")
        return stats["connections"] if status == 200 else None

    def health(node):
        return node.request("GET", "health")[1]["status"]

    # back, and the node's entries written again hold it (the count Redis
    # made of the call it answered late is written over)
    assert wait_for(lambda: health(a) == "ok")
    assert steady(lambda: connections(b)) == 1
    second = b.connect(app)
    over = b.connect(app, expect_established=False)
    error = over.recv()
    assert error["event"] == "pusher:error" and error["data"]["code"] == 4004, error
    assert [connections(node) for node in (a, b)] == [2, 2]
    # and it is taken off as it closes
    early.close()
    assert wait_for(lambda: connections(b) == 1)
    second.close()


def steady(read, seconds=1.5, step=0.1):
    """What ``read()`` answers once it answered the same for ``seconds``."""
    value, since = read(), time.monotonic()
    deadline = since + 20
    while time.monotonic() < deadline:
        time.sleep(step)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return value
    raise AssertionError("never steady: %r" % value)


def leaves_while_redis_is_away(cluster, away, back):
    """A member of node a leaves while Redis is away (``away()``); once it
    is back (``back()``), the other node's sockets hear it left, once,
    and the users and counts are the sockets really connected."""
    a, b = cluster.node(), cluster.node()
    app = cluster.make_app()
    on_b = MemberView(*joined(b, app, ROOM, "obs"))
    leaving, _members = joined(a, app, ROOM, "leaving")
    staying, _members = joined(a, app, ROOM, "staying")
    assert on_b.wait(lambda view: view.members == {"obs", "leaving", "staying"})
    away()

    def health(node):
        return node.request("GET", "health")[1]["status"]

    # the leave cannot reach Redis: node a knows it is away
    assert wait_for(lambda: health(a) == "degraded", timeout=10)
    leaving.close()
    time.sleep(0.5)
    back()

    def healthy():
        return all(health(node) == "ok" for node in (a, b))

    assert wait_for(healthy, timeout=20)
    assert on_b.wait(lambda view: view.members == {"obs", "staying"}, timeout=15), (
        on_b.events
    )
    on_b.drain(4)
    assert on_b.of("leaving") == ["added", "removed"], on_b.events
    assert on_b.of("staying") == ["added"] and not on_b.errors, on_b.events
    for node in (a, b):
        assert wait_for(lambda node=node: users(node, app, ROOM) == ["obs", "staying"])
        status, info = rest(node, app, "channels/%s" % ROOM, {"info": "user_count"})
        assert info == {"occupied": True, "user_count": 2}, info
        assert rest(node, app, "stats")[1]["connections"] == 2
    staying.close()
    assert on_b.wait(lambda view: view.members == {"obs"})


def test_a_member_that_left_while_redis_restarted_empty_is_removed(cluster):
    leaves_while_redis_is_away(cluster, cluster.redis.kill, cluster.redis.start)


def test_a_member_that_left_while_redis_paused_is_removed(cluster):
    # resumed before the nodes fence themselves: the same Redis comes back
    # to nodes whose connection went down
    leaves_while_redis_is_away(cluster, cluster.redis.pause, cluster.redis.resume)


def test_pusher_js_on_two_nodes_sees_one_member_per_user(cluster):
    from interop_support import NodeAgent

    a, b = cluster.node(), cluster.node()
    app = cluster.make_app()
    on_a, on_b = NodeAgent(a, app), NodeAgent(b, app)
    try:
        ann = {"user_id": "1", "user_info": {"name": "Ann"}}
        bob = {"user_id": "2", "user_info": {"name": "Bob"}}
        on_a.call("connect", client="ann", presence=ann)
        on_b.call("connect", client="bob", presence=bob)
        on_a.call("connect", client="bob-too", presence=bob)
        first = on_a.call("subscribe", client="ann", channel=ROOM)
        assert first["members"]["ids"] == ["1"]
        second = on_b.call("subscribe", client="bob", channel=ROOM)
        assert second["members"]["count"] == 2
        added = on_a.wait(type="event", client="ann", event="pusher:member_added")
        assert added["data"] == {"id": "2", "info": {"name": "Bob"}}
        # Bob's second socket, on the other node: the same member
        third = on_a.call("subscribe", client="bob-too", channel=ROOM)
        assert third["members"]["count"] == 2
        on_b.call("disconnect", client="bob")
        time.sleep(1.5)
        assert on_a.call("state", client="ann", channel=ROOM)["channel"]["members"][
            "ids"
        ] == ["1", "2"]
        on_a.call("disconnect", client="bob-too")
        removed = on_a.wait(type="event", client="ann", event="pusher:member_removed")
        assert removed["data"] == {"id": "2", "info": {"name": "Bob"}}
        assert on_a.call("state", client="ann", channel=ROOM)["channel"]["members"][
            "ids"
        ] == ["1"]
        assert len(on_a.seen(client="ann", event="pusher:member_added")) == 1
        assert len(on_a.seen(client="ann", event="pusher:member_removed")) == 1
    finally:
        on_a.close()
        on_b.close()


def test_a_presence_join_redis_does_not_answer_is_refused_with_503(cluster):
    a = cluster.node()
    app = cluster.make_app()
    # the node's subscription of the channel is made: a join needs only
    # the presence script then
    _observer, _members = joined(a, app, ROOM, "obs")
    client = a.connect(app)
    cluster.redis.pause()
    try:
        answer = join(client, app, ROOM, "late")
        assert answer["event"] == "pusher:subscription_error", answer
        assert data_of(answer)["status"] == 503
    finally:
        cluster.redis.resume()
    # once Redis answers, the socket may join
    assert wait_for(lambda: a.request("GET", "health")[1]["status"] == "ok", timeout=15)
    answer = join(client, app, ROOM, "late")
    assert answer["event"] == "pusher_internal:subscription_succeeded", answer
    assert set(data_of(answer)["presence"]["hash"]) == {"obs", "late"}


def test_a_node_sends_the_webhooks_of_an_app_it_loaded_for_a_socket(cluster):
    hooks = Hooks()
    try:
        a = cluster.node()
        kinds = ["channel_occupied", "member_added"]
        app = cluster.store_app(webhooks=[{"url": hooks.url, "events": kinds}])
        # the node knows the app from its first socket on
        _client, _members = joined(a, app, ROOM, "first")
        assert wait_for(lambda: len(hooks.events) == 2, timeout=10), hooks.events
        assert sorted(event["name"] for event in hooks.events) == sorted(kinds)
    finally:
        hooks.close()


def test_a_member_refused_for_the_limit_is_not_written_back_after_a_restart(
    cluster,
):
    a = cluster.node()
    app = cluster.make_app(max_presence_members=1)
    _first, _members = joined(a, app, ROOM, "first")
    refused = join(a.connect(app), app, ROOM, "second")
    assert data_of(refused)["status"] == 403, refused
    cluster.redis.kill()
    cluster.redis.start()  # empty: the node writes what it holds again
    assert wait_for(lambda: a.request("GET", "health")[1]["status"] == "ok")
    time.sleep(1)
    assert users(a, app, ROOM) == ["first"]
