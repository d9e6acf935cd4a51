"""The occupancy seam: how many sockets are on each channel and each app.

The engine tells it each socket that joins or leaves a channel and each
that connects or goes; it answers with the new count and whether the
channel became occupied (its first subscriber) or vacated (its last left),
counted over every socket of the server.  Exactly one join sees a
channel's ``occupied`` and one leave its ``vacated``, which is what fires
their webhooks once.  Answers come to a continuation (``then``) so that a
twin over shared state (Redis) may answer later, on the loop.

``LocalOccupancy`` is the twin for one process: the registry already
counts this process's sockets, so it reads them there.

Ownership: loop thread only.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pushi.base.registry import Registry


class Occupancy(Protocol):
    def joined(self, app_id: str, channel: str, then: Callable[..., None]) -> None:
        """A socket joined ``channel``: ``then(count, occupied)``; a
        shared twin that keeps the webhook linger (``cluster/linger``)
        adds ``lingered=True`` when occupying it undid a lingering
        vacated."""

    def left(self, app_id: str, channel: str, then: Callable[..., None]) -> None:
        """A socket left ``channel``: ``then(count, vacated)``; a shared
        twin adds ``lingered=True`` when the vacated's webhook lingers
        there."""

    def hold_until_shared(self, transport: Any) -> None:
        """Holds what ``transport`` (a socket that just joined) is sent
        next until this turn's joins are where every server reads them, so
        that any server asked after the socket heard it is subscribed
        counts it (``transport.hold_frames``, then ``release_frames``)."""

    def count(self, app_id: str, channel: str) -> int:
        """The sockets on a channel (for the REST side)."""

    def fetch_count(
        self, app_id: str, channel: str, then: Callable[[int], None]
    ) -> None:
        """``then(count)``: the sockets on a channel (loop thread)."""

    def channels(self, app_id: str) -> dict[str, int]:
        """The occupied channels of an app, with their counts."""

    def connections(self, app_id: str) -> int:
        """The open sockets of an app."""


class LocalOccupancy:
    """Occupancy of this process, read from its registry (which has
    counted the join or leave before it is told).  Its reads are the
    loop's, like the registry: the REST side reads them through the loop."""

    def __init__(self, registry: "Registry") -> None:
        self.registry = registry

    def joined(
        self, app_id: str, channel: str, then: Callable[[int, bool], None]
    ) -> None:
        count = self.count(app_id, channel)
        then(count, count == 1)

    def left(
        self, app_id: str, channel: str, then: Callable[[int, bool], None]
    ) -> None:
        count = self.count(app_id, channel)
        then(count, count == 0)

    def hold_until_shared(self, transport: Any) -> None:
        # the registry this process reads has counted the join already
        pass

    def count(self, app_id: str, channel: str) -> int:
        found = self.registry.channel(app_id, channel)
        return len(found.sessions) if found is not None else 0

    def fetch_count(
        self, app_id: str, channel: str, then: Callable[[int], None]
    ) -> None:
        then(self.count(app_id, channel))

    def channels(self, app_id: str) -> dict[str, int]:
        return {
            name: len(channel.sessions)
            for name, channel in self.registry.channels(app_id).items()
        }

    def connections(self, app_id: str) -> int:
        return self.registry.app_count(app_id)
