"""Watchlists: who is told when which signed-in user comes and goes.

A socket that signs in (``pusher:signin``) with a ``watchlist`` in its
``user_data`` watches those user ids: it gets
``pusher_internal:watchlist_events`` with ``online`` when one of them gets
its first signed-in socket and ``offline`` when its last one closes.
Opt-in per app (``watchlist_events`` setting), at most ``max_watchlist``
ids per socket.

Ownership: like the registry, only the loop thread reads or writes a
``Watchlists``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .registry import Session


class Watchlists:
    """Per-app index from a watched user id to the sockets watching it."""

    def __init__(self) -> None:
        self.watchers: dict[tuple[str, Any], dict[Session, None]] = {}
        self.watched: dict[Session, tuple[Any, ...]] = {}

    def watch(self, session: Session, user_ids: Iterable[Any]) -> None:
        """Makes ``session`` watch ``user_ids`` (replacing what it watched)."""
        self.forget(session)
        app_id = session.app.app_id
        user_ids = tuple(dict.fromkeys(user_ids))
        self.watched[session] = user_ids
        for user_id in user_ids:
            self.watchers.setdefault((app_id, user_id), {})[session] = None

    def forget(self, session: Session) -> None:
        """Drops everything ``session`` watched; leaves no entry behind."""
        user_ids = self.watched.pop(session, ())
        app_id = session.app.app_id
        for user_id in user_ids:
            key = (app_id, user_id)
            sessions = self.watchers.get(key)
            if sessions is not None:
                sessions.pop(session, None)
                if not sessions:
                    del self.watchers[key]

    def watchers_of(self, app_id: str, user_id: Any) -> list[Session]:
        """The sockets watching one user of one app."""
        return list(self.watchers.get((app_id, user_id), ()))
