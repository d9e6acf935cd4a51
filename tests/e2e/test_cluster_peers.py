"""Peer channels over a cluster: a real ``redis-server`` and Pushi nodes as
subprocesses, peer members of one presence channel on different nodes.

Pairing spans the nodes as on one process: peer members on two nodes get
their ``peer-<base>:<a>&<b>`` channel on both sides, client events and
REST publishes on it cross the nodes, a third peer pairs with every other
one, and the pairing ends for the other peer when a user's last socket
anywhere leaves the presence channel (a node killed too, once reaped).
"""

import threading

from cluster_support import (
    cluster_fixture,  # noqa: F401 (the cluster fixture)
    join,
)

from pushi.proto import channels

ROOM = "presence-room"
SUCCEEDED = "pusher_internal:subscription_succeeded"
UNSUBSCRIBED = "pusher_internal:unsubscription_succeeded"


def pair(a, b):
    return channels.peer_name(channels.presence_base(ROOM), a, b)


def peer(node, app, user_id, is_peer=True):
    """A Pushi-dialect socket of ``node`` on ``ROOM`` as ``user_id``, a
    peer member with ``is_peer``."""
    client = node.connect(app, "pushi")
    answer = join(client, app, ROOM, user_id, peer=is_peer)
    assert answer["event"] == SUCCEEDED and answer["channel"] == ROOM, answer
    return client


def joined_pairs(client, count, timeout=15):
    """The channels of the next ``count`` subscription_succeeded messages
    of ``client`` (other messages skipped)."""
    return {client.recv_event(SUCCEEDED, timeout)["channel"] for _ in range(count)}


def left_pairs(client, count, timeout=15):
    return {client.recv_event(UNSUBSCRIBED, timeout)["channel"] for _ in range(count)}


def drained(client, quiet=0.5):
    """What ``client`` receives until ``quiet`` seconds pass in silence."""
    received = []
    while True:
        try:
            received.append(client.recv(quiet))
        except TimeoutError:
            return received


def says(sender, receiver, channel, text):
    """``sender``'s client event on ``channel`` reaches ``receiver``."""
    sender.send({"event": "client-say", "channel": channel, "data": text})
    message = receiver.recv_event("client-say")
    assert message["channel"] == channel and message["data"] == text, message
    return message


def test_peers_on_two_nodes_pair_talk_and_unpair(cluster):
    one, two = cluster.node(), cluster.node()
    app = cluster.make_app()
    a = peer(one, app, "a")
    lurker = peer(two, app, "lurker", is_peer=False)
    b = peer(two, app, "b")
    # each side is joined to the pair's channel by its own node
    assert joined_pairs(b, 1) == {pair("a", "b")}
    assert joined_pairs(a, 1) == {pair("a", "b")}
    # client events cross the nodes both ways, with the sender's user id
    assert says(a, b, pair("a", "b"), "hi b")["user_id"] == "a"
    assert says(b, a, pair("a", "b"), "hi a")["user_id"] == "b"
    # a REST publish on either node reaches both peers
    for node in (one, two):
        node.client(app).trigger_event(pair("a", "b"), "news", event="note")
        for client in (a, b):
            assert client.recv_event("note")["channel"] == pair("a", "b")
    # a third peer, on the first node, pairs with both
    c = peer(one, app, "c")
    assert joined_pairs(c, 2) == {pair("a", "c"), pair("b", "c")}
    assert joined_pairs(a, 1) == {pair("a", "c")}
    assert joined_pairs(b, 1) == {pair("b", "c")}
    says(b, c, pair("b", "c"), "hi c")
    says(c, a, pair("a", "c"), "hi a")
    # b leaves the presence channel: its peer channels close for a and c
    b.send({"event": "pusher:unsubscribe", "data": {"channel": ROOM}})
    assert left_pairs(b, 3) == {pair("a", "b"), pair("b", "c"), ROOM}
    assert left_pairs(a, 1) == {pair("a", "b")}
    assert left_pairs(c, 1) == {pair("b", "c")}
    a.send({"event": "client-say", "channel": pair("a", "b"), "data": "gone?"})
    assert a.recv_event("pusher:error")["data"]["code"] == 4303
    # the pair that stays still talks
    says(a, c, pair("a", "c"), "still here")
    # the member that is not a peer was never paired
    assert not [
        message
        for message in drained(lurker)
        if message["event"] in (SUCCEEDED, "client-say")
    ]
    lurker.send({"event": "client-say", "channel": pair("a", "c"), "data": "x"})
    assert lurker.recv_event("pusher:error")["data"]["code"] == 4303


def test_a_user_with_sockets_on_two_nodes_stays_paired_until_its_last_leaves(
    cluster,
):
    one, two = cluster.node(), cluster.node()
    app = cluster.make_app()
    a = peer(one, app, "a")
    b_there = peer(two, app, "b")
    assert joined_pairs(b_there, 1) == {pair("a", "b")}
    assert joined_pairs(a, 1) == {pair("a", "b")}
    # b's second socket, on a's node, is paired by its own join
    b_here = peer(one, app, "b")
    assert joined_pairs(b_here, 1) == {pair("a", "b")}
    says(a, b_there, pair("a", "b"), "to both")
    assert b_here.recv_event("client-say")["data"] == "to both"
    # one of b's sockets goes: a stays paired with the other
    b_there.close()
    assert a.nothing(1.5)
    says(a, b_here, pair("a", "b"), "still paired")
    # the last one goes: a's pair closes
    b_here.close()
    assert left_pairs(a, 1) == {pair("a", "b")}


def test_a_peer_on_a_node_killed_is_unpaired_once_reaped(cluster):
    one, two = cluster.node(), cluster.node()
    app = cluster.make_app()
    a = peer(one, app, "a")
    b = peer(two, app, "b")
    assert joined_pairs(b, 1) == {pair("a", "b")}
    assert joined_pairs(a, 1) == {pair("a", "b")}
    two.stop(kill=True)
    # reaped within seconds of its last heartbeat
    assert left_pairs(a, 1, timeout=30) == {pair("a", "b")}
    # a peer joining afterwards pairs with a only
    c = peer(one, app, "c")
    assert joined_pairs(c, 1) == {pair("a", "c")}
    assert joined_pairs(a, 1) == {pair("a", "c")}
    assert c.nothing(1)


def test_peers_joining_at_once_on_two_nodes_pair_each_pair_once(cluster):
    """Joins raced from both nodes: each peer ends on exactly one channel
    with every other peer, whether the other's member event came before,
    during or after its own join."""
    one, two = cluster.node(), cluster.node()
    app = cluster.make_app()
    users = ["u%d" % index for index in range(8)]
    clients = {
        user: (one if index % 2 else two).connect(app, "pushi")
        for index, user in enumerate(users)
    }
    barrier = threading.Barrier(len(users), timeout=30)
    answers = {}

    def arrive(user):
        barrier.wait()
        answers[user] = join(clients[user], app, ROOM, user, peer=True)

    threads = [threading.Thread(target=arrive, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(answers[user]["channel"] == ROOM for user in users), answers
    for user, client in clients.items():
        joined = [
            message["channel"]
            for message in drained(client, 1.5)
            if message["event"] == SUCCEEDED
        ]
        expected = {pair(user, other) for other in users if other != user}
        assert sorted(joined) == sorted(expected), (user, joined)
