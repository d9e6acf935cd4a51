"""Stored events on a socket: ``pusher:latest`` reads a channel's stored
events, and the events a socket asks to store are delivered once stored,
in the order it sent them."""

import collections
import logging

from pushi.proto import errors, messages
from pushi.proto.websocket import text_frame

from ..limits import MAX_LATEST
from ..store.base import MAX_SKIP

logger = logging.getLogger("pushi.engine")

MAX_SENDING = 100
""" A socket's sends waiting for the store (and those queued behind them)
before it is told to slow down (4301) """

HISTORY_BYTES = 512 * 1024
""" The most bytes of stored events one answer on a socket carries
(``pusher:latest``, a personal channel's subscription data), newest kept;
at most half of ``PUSHI_MAX_BUFFER``, so that the answer alone never makes
its socket a slow consumer """


class StoredEvents:
    def __init__(self, engine, persist=None):
        self.engine = engine
        self.persist = persist or self._persist_offloaded

    def latest(self, session, data):
        """``pusher:latest``: stored events of a channel the socket is on."""
        engine = self.engine
        # each refusal names the channel: the client knows what it answers
        name = data.get("channel")
        if not isinstance(name, str) or name not in session.channels:
            raise errors.ProtocolError(
                errors.INVALID_MESSAGE,
                "pusher:latest needs a channel you are on",
                name if isinstance(name, str) else None,
            )
        skip, count = data.get("skip", 0), data.get("count", 10)
        if not all(isinstance(value, int) and value >= 0 for value in (skip, count)):
            raise errors.ProtocolError(
                errors.INVALID_MESSAGE, "skip and count are counts", name
            )
        if session.reading:
            # each read may scan a long history: a socket waits for its
            # answer before it asks again
            raise errors.ProtocolError(
                errors.RATE_LIMITED, "One pusher:latest at a time", name
            )
        skip, count = min(skip, MAX_SKIP), min(count, MAX_LATEST)
        app_id = session.app.app_id
        store = engine.store
        max_bytes = engine.history_bytes
        session.reading = True

        def read():
            events = store.get_events(app_id, [name], skip, count)
            return text_frame(messages.latest(name, bounded(events, max_bytes)))

        def answer(frame):
            session.reading = False
            if session.closed:
                return
            if frame is None:
                # the read failed: no history is not what the store said
                engine.metrics.reject("socket", errors.STORE_UNAVAILABLE)
                error = messages.error(
                    errors.STORE_UNAVAILABLE, "Store unavailable", name
                )
                engine.send(session, error)
                return
            session.transport.write(frame)

        engine.offload(read, answer)

    def then_deliver(self, session, record, deliver):
        """Stores ``record``, an event a socket sent, then ``deliver()``s
        it: whoever it reaches with its ``mid`` finds it in any history
        read after (as a REST publish is delivered after its commit).  An
        event that cannot be stored is not delivered, and its sender hears
        ``pusher:error`` 4305.  A socket's events keep their order: those
        it sends meanwhile wait in ``session.sending`` behind it."""
        if session.sending is None:
            session.sending = collections.deque()
        waiting = [False, deliver]
        self.wait_behind(session, waiting)

        def stored(error):
            if error is not None:
                logger.error("storing a socket's event failed: %s", error)
                waiting[1] = lambda: self._not_stored(session)
            waiting[0] = True
            sending = session.sending
            while sending and sending[0][0]:
                sending.popleft()[1]()
            if not sending:
                session.sending = None

        try:
            self.persist([record], stored)
        except Exception as error:
            stored(error)

    @staticmethod
    def wait_behind(session, entry):
        """Queues ``entry`` (``[ready, deliver]``) behind the socket's sends
        that wait for the store; past ``MAX_SENDING`` of them the socket is
        told to slow down (4301), whether it stores this one or not."""
        if len(session.sending) >= MAX_SENDING:
            raise errors.ProtocolError(
                errors.RATE_LIMITED,
                "Over %d sends waiting for the store" % MAX_SENDING,
            )
        session.sending.append(entry)

    def _not_stored(self, session):
        if not session.closed:
            self.engine.metrics.reject("socket", errors.STORE_UNAVAILABLE)
            self.engine.send(
                session,
                messages.error(
                    errors.STORE_UNAVAILABLE, "Store unavailable: not stored"
                ),
            )

    def _persist_offloaded(self, events, then):
        """Stores ``events`` on a worker, then ``then(error)`` on the loop:
        for an engine made without a ``persist`` of its server's."""
        store = self.engine.store

        def done(result):
            then(None if result else RuntimeError("events not stored"))

        # offload hands ``done`` None for a failure: a success is True
        self.engine.offload(lambda: store.add_events(events) or True, done)


def public_event(event):
    """A stored event as clients see it (no app id)."""
    return {
        "mid": event["mid"],
        "channel": event["channel"],
        "event": event["event"],
        "data": event["data"],
        "timestamp": event["timestamp"],
        "user_id": event.get("user_id"),
    }


def bounded(events, max_bytes):
    """Stored events (newest first) as clients see them, as many as fit in
    ``max_bytes`` of the message that carries them: the newest always,
    then older ones while they fit.  Runs off the loop."""
    kept: list[dict] = []
    size = 0
    for event in events:
        event = public_event(event)
        # the event as the message holds it: inside the data string
        size += len(messages.dumps(messages.dumps(event)).encode("utf-8"))
        if kept and size > max_bytes:
            break
        kept.append(event)
    return kept
