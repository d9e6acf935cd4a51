"""Recovery: what a socket that comes back missed on a channel, from the
channel's history (see ``history``) or, by ``mid``, from the store."""

import collections
import time

from pushi.proto import errors, messages
from pushi.proto.websocket import text_frame

from ..history import frame_message
from ..limits import MAX_LATEST

MAX_RECOVERING = 10
""" A socket's recoveries reading the store at once; past them a recovery
says what it cannot recover without reading the store """

SENT_TTL = 10.0
""" Seconds a process remembers the sockets a store recovery sent a stored
event that the channel may still deliver here (see ``Recovery.sent_to``):
a stored event is published as soon as it is committed, and Redis takes
it within its command timeout or the publish fails """


class Recovery:
    def __init__(self, engine):
        self.engine = engine
        self.history = engine.history
        self.sent: dict[tuple[str, str, str], _Sent] = {}
        """ (app_id, channel, mid) -> the sockets a store recovery sent that
        stored event, which its delivery here skips (see ``sent_to``) """
        self._expiring: collections.deque = collections.deque()

    def position(self, session, name):
        """The channel's position for its subscription data (none when the
        app keeps no history)."""
        app = session.app
        current = self.history.position(app.app_id, name, app.limits, time.monotonic())
        return {} if current is None else {"epoch": current[0], "offset": current[1]}

    def recover(self, session, name, since, then):
        """``then(position, frames)``: the channel's position and, for a
        ``since`` (epoch, offset, mid), whether the events after it are
        recovered (``recovered``, else a ``reason``) and their frames.
        What the history lacks is read from the store first, by ``mid``:
        ``then`` runs when the read is done."""
        app = session.app
        position = self.position(session, name)
        if since is None:
            then(position, ())
            return
        epoch, offset, mid = since
        if session.recovering is None:
            session.recovering = {}
        session.recovering[name] = True

        def recovered(done, frames):
            # False: unsubscribed meanwhile
            wanted = session.recovering.pop(name, False)
            if session.closed or name in session.channels or not wanted:
                return
            if done is None:
                # the history did not answer (a cluster's Redis)
                self.engine.refuse(
                    session,
                    errors.SubscriptionError(
                        name, "Server unavailable: retry shortly", status=503
                    ),
                )
                return
            # where the history left the channel (the same, in one process)
            position.update(self.position(session, name))
            try:
                self._recovered(session, name, mid, position, done, frames, then)
            except errors.SubscriptionError as error:
                self.engine.refuse(session, error)

        self.history.recover(
            app.app_id, name, epoch, offset, app.limits, time.monotonic(), recovered
        )

    def _recovered(self, session, name, mid, position, recovered, frames, then):
        if recovered:
            position["recovered"] = True
            then(position, frames)
            return
        position["recovered"] = False
        position["reason"] = frames
        engine = self.engine
        if (
            mid is None
            or "epoch" not in position
            or engine.store is None
            or engine.offload is None
            or len(session.recovering or ()) >= MAX_RECOVERING
        ):
            then(position, ())
            return
        self._from_store(session, name, mid, position, then)

    def _from_store(self, session, name, mid, position, then):
        """Reads the stored events of a channel after ``mid`` off the loop,
        then hands them on (``"store": true`` in the subscription data),
        followed by those delivered during the read (each once: a stored
        one the read found is not sent again).  A stored event the read
        found that the channel has not delivered yet is left to its
        delivery, which reaches the socket once it is on the channel; when
        the tap does not know what the channel delivered, it is sent, and
        its delivery skips the socket (``sent_to``)."""
        engine = self.engine
        app = session.app
        store = engine.store
        if session.recovering is None:
            session.recovering = {}
        session.recovering[name] = True
        # what the channel delivers from now on, whatever the history drops
        tapped = self.history.tap(app.app_id, name, app.limits)

        def read():
            # oldest first, in the store's order
            return list(reversed(store.get_events(app.app_id, [name], 0, MAX_LATEST)))

        def answer(events):
            wanted = session.recovering.pop(name, False)
            self.history.untap(app.app_id, name, tapped)
            if session.closed or name in session.channels or not wanted:
                return
            frames = []
            mids: set[str] = set()
            if events is not None:
                position["store"] = True
                for event in _missed(events, mid, tapped.before):
                    mids.add(event["mid"])
                    frames.append(
                        text_frame(
                            messages.event(
                                event["event"],
                                name,
                                event["data"],
                                mid=event["mid"],
                                timestamp=event["timestamp"],
                                user_id=event.get("user_id"),
                            )
                        )
                    )
            for entry in tapped:
                if mids:
                    sent = frame_message(entry.frame).get("mid")
                    if sent in mids:
                        # delivered during the read: it does not come again
                        mids.discard(sent)
                        continue
                frames.append(entry.frame)
            if mids and tapped.before is None:
                # the channel may deliver some of them yet
                self._remember(app.app_id, name, mids, session)
            # the events delivered until now are all in ``tapped``
            position.update(self.position(session, name))
            try:
                then(position, frames)
            except errors.SubscriptionError as error:
                engine.refuse(session, error)

        engine.offload(read, answer)

    def sent_to(self, app_id, channel, mid):
        """The sockets a store recovery sent the stored event ``mid`` of
        ``channel``, or None.  A recovery that does not know the last stored
        event the channel delivered (a cluster node: another node's publish
        reaches its subscription after the commit) sends every stored event
        it read, some of them committed but not delivered here yet: their
        delivery here skips those sockets for ``SENT_TTL`` seconds, each
        gets each event once."""
        sent = self.sent.get((app_id, channel, mid))
        return None if sent is None else sent.sessions

    def _remember(self, app_id, channel, mids, session):
        deadline = time.monotonic() + SENT_TTL
        for mid in mids:
            key = (app_id, channel, mid)
            sent = self.sent.get(key)
            if sent is None:
                sent = self.sent[key] = _Sent()
            sent.deadline = deadline
            sent.sessions.add(session)
            self._expiring.append((deadline, key))

    def expire(self, now):
        """Forgets the stored events sent past their ``SENT_TTL``."""
        expiring = self._expiring
        while expiring and expiring[0][0] <= now:
            _deadline, key = expiring.popleft()
            sent = self.sent.get(key)
            if sent is not None and sent.deadline <= now:
                del self.sent[key]


class _Sent:
    """The sockets a store recovery sent one stored event, until when."""

    __slots__ = ("deadline", "sessions")

    def __init__(self):
        self.deadline = 0.0
        self.sessions: set = set()


def _missed(events, mid, before):
    """The stored ``events`` (oldest first) a recovery after ``mid`` sends
    from the store: those after the event ``mid`` in the store's order (a
    ``mid`` orders events only to the millisecond), or, when the read does
    not reach back to it, those with a greater ``mid``; and, when
    ``before`` (the last stored event the channel delivered before the
    tap) is known, none past it: those are delivered after the tap, or
    not yet (committed, their delivery to come)."""
    mids = [event["mid"] for event in events]
    if mid in mids:
        events = events[mids.index(mid) + 1 :]
    else:
        events = [event for event in events if event["mid"] > mid]
    if before is None:
        return events
    mids = [event["mid"] for event in events]
    if before not in mids:
        # delivered before ``mid``, or before what the read reaches: every
        # event read came later
        return []
    return events[: mids.index(before) + 1]
