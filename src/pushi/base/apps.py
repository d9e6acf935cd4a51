"""The app directory: the store's apps as ``App`` objects in memory, by id
and by every live key of each.

Read from any thread without a lock: the two maps are replaced whole,
never changed in place.  Writers (the REST thread that changes an app, the
workers that load one) take turns under a lock, so that none replaces the
maps with a copy older than another's change.  A key or id that is not in
memory yet (an app the CLI created while the server runs) is loaded from
the store on demand, off the loop; an app that arrived in the meantime is
kept, being at least as new.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .limits import App


class AppDirectory:
    """Apps by key and by id, filled from the store."""

    def __init__(self, store: Any) -> None:
        self.store = store
        # ``sync(app_id)``: takes the store's record of a known app into
        # use and returns it (State.sync_app); set by the server
        self.sync: Callable[[str], App | None] | None = None
        # ``loaded(app)``: an app loaded on demand is new here (any
        # thread); set by the server
        self.loaded: Callable[[App], Any] | None = None
        self._by_key: dict[str, App] = {}
        self._by_id: dict[str, App] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Reloads every app from the store (blocking; a change recorded
        meanwhile waits, then lands on the fresh maps)."""
        with self._lock:
            apps = [App(record) for record in self.store.list_apps()]
            self._by_id = {app.app_id: app for app in apps}
            self._by_key = {key: app for app in apps for key in app.secrets}

    def put(self, app: App) -> App:
        """Records a new or changed app; returns it."""
        with self._lock:
            return self._put(app)

    def _put(self, app):
        by_id = dict(self._by_id)
        by_key = {
            key: known
            for key, known in self._by_key.items()
            if known.app_id != app.app_id
        }
        by_id[app.app_id] = app
        by_key.update(dict.fromkeys(app.secrets, app))
        self._by_id, self._by_key = by_id, by_key
        return app

    def by_key(self, key: str) -> App | None:
        return self._by_key.get(key)

    def by_id(self, app_id: str) -> App | None:
        return self._by_id.get(app_id)

    def load_key(self, key: str) -> App | None:
        """``by_key``, asking the store on a miss (blocking).  A key added
        to a known app by another process makes that app sync now."""
        app = self._by_key.get(key)
        if app is None:
            record = self.store.get_app_by_key(key)
            app = self._loaded(App(record)) if record else None
            if app is not None and key not in app.secrets:
                app = self.fresh(app, key)
        return app

    def fresh(self, app: App, key: str) -> App:
        """``app``, synced with the store when it lacks ``key`` (one that
        another process may have added; blocking)."""
        if key in app.secrets or self.sync is None:
            return app
        return self.sync(app.app_id) or app

    def load_id(self, app_id: str) -> App | None:
        """``by_id``, asking the store on a miss (blocking)."""
        app = self._by_id.get(app_id)
        if app is None:
            record = self.store.get_app(app_id)
            app = self._loaded(App(record)) if record else None
        return app

    def _loaded(self, app):
        with self._lock:
            known = self._by_id.get(app.app_id)
            if known is not None:
                return known
            self._put(app)
        if self.loaded is not None:
            self.loaded(app)
        return app

    def all(self) -> list[App]:
        return sorted(self._by_id.values(), key=lambda app: int(app.app_id))
