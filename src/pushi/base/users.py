"""The signed-in users seam: which users of an app are online.

A user is online while one of its sockets is signed in (``pusher:signin``),
on this process or, in a cluster, on any node; watchlists hear when the
first arrives (``online``) and the last goes (``offline``).  Answers come
to a continuation (``then``) so that a twin over shared state (Redis) may
answer later, on the loop.  ``LocalUsers`` is the twin for one process:
the registry already knows its signed-in sockets, so it reads them there.

Ownership: loop thread only.
"""

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pushi.base.registry import Registry


class Users(Protocol):
    def signed_in(
        self,
        app_id: str,
        user_id: str,
        then: Callable[[bool], None],
        failed: Callable[[Exception], None] | None = None,
    ) -> None:
        """A socket signed in as ``user_id``: ``then(True)`` when it is
        the user's first (the user came online); ``failed(error)`` when it
        could not be counted."""

    def signed_out(
        self, app_id: str, user_id: str, then: Callable[[bool], None]
    ) -> None:
        """A socket of ``user_id`` went or changed user: ``then(True)``
        when it was the user's last (the user went offline)."""

    def fetch_online(
        self, app_id: str, user_ids: Iterable[str], then: Callable[[list[str]], None]
    ) -> None:
        """``then(online)``: those of ``user_ids`` that are online (loop
        thread)."""


class LocalUsers:
    """Signed-in users of this process, read from its registry (which has
    recorded the sign-in or its end before it is told)."""

    def __init__(self, registry: "Registry") -> None:
        self.registry = registry

    def signed_in(
        self,
        app_id: str,
        user_id: str,
        then: Callable[[bool], None],
        failed: Callable[[Exception], None] | None = None,
    ) -> None:
        then(len(self.registry.users.get((app_id, user_id), ())) == 1)

    def signed_out(
        self, app_id: str, user_id: str, then: Callable[[bool], None]
    ) -> None:
        then((app_id, user_id) not in self.registry.users)

    def fetch_online(
        self, app_id: str, user_ids: Iterable[str], then: Callable[[list[str]], None]
    ) -> None:
        users = self.registry.users
        then([user_id for user_id in user_ids if (app_id, user_id) in users])
