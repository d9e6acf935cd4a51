"""The local broker alone: events queued from any thread, drained on the
loop in one turn, publishers told before the turn's write."""

from pushi.base.broker import LocalBroker

from support import logged_failures


class Loop:
    """Stands in for the loop's ``call_soon``: runs the queued work when
    the test says a turn comes."""

    def __init__(self):
        self.queued = []

    def call_soon(self, work):
        self.queued.append(work)

    def turn(self):
        queued, self.queued = self.queued, []
        for work in queued:
            work()


def test_a_turn_delivers_every_queued_event_then_tells_then_writes():
    loop, log = Loop(), []
    broker = LocalBroker(
        loop.call_soon,
        lambda name: log.append(("deliver", name)),
        lambda: log.append("flush"),
    )
    broker.publish("a", lambda error: log.append(("done", "a", error)))
    broker.publish("b")
    broker.publish("c", lambda error: log.append(("done", "c", error)))
    assert len(loop.queued) == 1  # one wake-up for the three
    loop.turn()
    assert log == [
        ("deliver", "a"),
        ("deliver", "b"),
        ("deliver", "c"),
        ("done", "a", None),
        ("done", "c", None),
        "flush",
    ]


def test_an_event_that_fails_to_deliver_holds_back_no_other():
    loop, log = Loop(), []

    def deliver(name):
        if name == "bad":
            raise RuntimeError("a delivery that fails")
        log.append(("deliver", name))

    def done(name):
        if name == "bad done":
            raise RuntimeError("a callback that fails")
        log.append(("done", name))

    broker = LocalBroker(loop.call_soon, deliver, lambda: log.append("flush"))
    broker.publish("bad", lambda _error: done("bad"))
    broker.publish("good", lambda _error: done("bad done"))
    broker.publish("last", lambda _error: done("last"))
    with logged_failures() as failures:
        loop.turn()
    assert log == [
        ("deliver", "good"),
        ("deliver", "last"),
        ("done", "bad"),
        ("done", "last"),
        "flush",
    ]
    assert failures == ["a delivery that fails", "a callback that fails"]
    assert not broker.busy and loop.queued == []


def test_a_cluster_message_body_is_the_json_of_its_fields():
    # what ``messages.dumps`` writes, strings encoded one by one
    from pushi.base.cluster.broker import body_of
    from pushi.proto import messages

    for fields in (
        ["app", "news", "n", "plain", None, None],
        [
            "app",
            "private-a=b@c,d.e;f",
            'a "quoted" \\ name',
            '{"x": [1, "é"]}',
            None,
            None,
        ],
        [
            "app",
            "cache-x",
            "n",
            "\x00\x1f\n\t\u2028 ☃ 😀 \ud800",
            "12.34",
            {"mid": "m"},
        ],
        [
            "app",
            "presence-x",
            "pusher_internal:member_added",
            {"user_id": "u"},
            "1.2",
            None,
        ],
        ["app", "news", "n", "", None, {"mid": "m", "timestamp": 1.5, "user_id": None}],
    ):
        body = body_of(*fields)
        assert body == messages.dumps(fields)
        assert messages.loads(body) == fields
