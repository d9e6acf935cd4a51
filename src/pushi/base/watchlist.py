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


class Watchlists:
    """Per-app index from a watched user id to the sockets watching it."""

    def __init__(self):
        self.watchers = {}
        self.watched = {}

    def watch(self, session, user_ids):
        """Makes ``session`` watch ``user_ids`` (replacing what it watched)."""
        self.forget(session)
        app_id = session.app.app_id
        user_ids = tuple(dict.fromkeys(user_ids))
        self.watched[session] = user_ids
        for user_id in user_ids:
            self.watchers.setdefault((app_id, user_id), {})[session] = None

    def forget(self, session):
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

    def watchers_of(self, app_id, user_id):
        """The sockets watching one user of one app."""
        return list(self.watchers.get((app_id, user_id), ()))
