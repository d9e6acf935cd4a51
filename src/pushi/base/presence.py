"""The presence seam: who is on each presence channel, one member per user.

A presence channel has one member per ``user_id`` however many sockets
the user has there (on this process or, in a cluster, on any node): the
member arrives with the user's first socket and leaves with the last.
``join`` and ``leave`` decide that, and whether a channel is full,
atomically for every socket of the server; their answer comes to a
continuation (``then``) so that a twin over shared state (Redis) may
answer later, on the loop.  ``LocalPresence`` is the twin for one
process: it answers at once.  The reads are two: ``members`` for the
REST side (on the loop for this twin, on a REST thread for a shared one)
and ``fetch_members``, which answers on the loop.

Which of this process's sockets belong to a member (for peer channels) is
the registry's (``Channel.members``); this seam holds the members.

Ownership: loop thread only.
"""

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol


class Member(NamedTuple):
    """A presence member as the channel knows it."""

    user_info: Any
    peer: bool


def added_data(user_id: str, member: Member) -> dict[str, Any]:
    """The data of a member's ``member_added`` event: its ``peer`` flag
    travels with it to every process, whose peer sockets pair with the
    member (``engine/presence``); clients get the user id and info
    only."""
    data = {"user_id": user_id, "user_info": member.user_info}
    if member.peer:
        data["peer"] = True
    return data


class Joined(NamedTuple):
    """The answer to a join: ``new`` when the user was not a member yet,
    and the channel's members with it (user id to ``Member``); in a
    cluster, ``position`` (offset, epoch) of the channel's events when the
    members were read: member events up to it are in ``members``; and
    ``lingered`` when the join undid the user's ``member_removed`` whose
    webhook lingered (``cluster/linger``: neither is posted)."""

    new: bool
    members: dict[str, Member]
    position: Any = None
    lingered: bool = False


class Presence(Protocol):
    def join(
        self,
        app_id: str,
        channel: str,
        user_id: str,
        member: Member,
        limit: int,
        then: Callable[[Joined | None], None],
        failed: Callable[[Exception], None] | None = None,
        socket_id: str | None = None,
    ) -> None:
        """Adds one socket (``socket_id``) of ``user_id`` to ``channel``;
        ``then(None)`` when the user is not a member and the channel
        already has ``limit`` members (0: no limit); ``failed(error)``
        instead when a shared twin could not decide (the socket is not
        counted)."""

    def leave(
        self,
        app_id: str,
        channel: str,
        user_id: str,
        then: Callable[..., None],
        linger: bool = True,
    ) -> None:
        """Takes one socket of ``user_id`` off ``channel``; ``then(True)``
        when it was the user's last (the member left), ``then(True,
        lingered=True)`` from a shared twin that keeps its webhook's
        linger (``cluster/linger``), which it does not with ``linger``
        False."""

    def members(self, app_id: str, channel: str) -> dict[str, Member]:
        """The members of a channel, by user id (for the REST side)."""

    def fetch_members(
        self, app_id: str, channel: str, then: Callable[[dict[str, Member]], None]
    ) -> None:
        """``then(members)``: the members of a channel (loop thread)."""


class LocalPresence:
    """The members of this process's presence channels."""

    def __init__(self) -> None:
        # (app_id, channel) -> user_id -> [Member, sockets]
        self.channels: dict[tuple[str, str], dict[str, list]] = {}

    def join(
        self,
        app_id: str,
        channel: str,
        user_id: str,
        member: Member,
        limit: int,
        then: Callable[[Joined | None], None],
        failed: Callable[[Exception], None] | None = None,
        socket_id: str | None = None,
    ) -> None:
        members = self.channels.setdefault((app_id, channel), {})
        entry = members.get(user_id)
        if entry is None:
            if limit and len(members) >= limit:
                if not members:
                    del self.channels[(app_id, channel)]
                then(None)
                return
            entry = members[user_id] = [member, 0]
        entry[1] += 1
        then(Joined(entry[1] == 1, self._view(members)))

    def leave(
        self,
        app_id: str,
        channel: str,
        user_id: str,
        then: Callable[..., None],
        linger: bool = True,
    ) -> None:
        key = (app_id, channel)
        members = self.channels.get(key, {})
        entry = members.get(user_id)
        if entry is None:
            then(False)
            return
        entry[1] -= 1
        if entry[1]:
            then(False)
            return
        del members[user_id]
        if not members:
            del self.channels[key]
        then(True)

    def members(self, app_id: str, channel: str) -> dict[str, Member]:
        return self._view(self.channels.get((app_id, channel), {}))

    def fetch_members(
        self, app_id: str, channel: str, then: Callable[[dict[str, Member]], None]
    ) -> None:
        then(self.members(app_id, channel))

    @staticmethod
    def _view(members: dict[str, list[Any]]) -> dict[str, Member]:
        return {user_id: entry[0] for user_id, entry in members.items()}
