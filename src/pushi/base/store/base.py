"""The persistence seam: what the engine and the REST app ask of a store.

Two backends implement it: the embedded default (SQLite under
``PUSHI_DATA_DIR``) and MongoDB (``MONGO_URL``).  Every method is blocking
and thread-safe; none is ever called from the WebSocket loop thread (the
loop hands store work to a worker and resumes with the answer).

Records are plain dicts:

* app: ``{"app_id": "1", "name": str, "key": str, "secret": str,
  "enabled": bool, "client_events": bool, "settings": dict, "keys": list}``
  where ``app_id`` is a numeric string (Pusher SDKs require it),
  ``settings`` holds per-app limits and options (see
  ``pushi.base.limits``) and ``keys`` every live key/secret pair, oldest
  first, as ``{"key": str, "secret": str, "created": float | None}``.
  ``key`` and ``secret`` are the first of them (the app's only pair until
  another is added; ``created``, a Unix time, is None for the pair made
  with the app).
  Revoking a pair deletes it; revoking the first makes the next one first.
* event: ``{"mid": str, "app_id": str, "channel": str, "event": str,
  "data": str, "timestamp": float, "user_id": str | None}`` where ``mid``
  is unique per app and ``data`` is the exact string delivered.
* subscription: ``{"app_id": str, "user_id": str, "event": str}`` where
  ``event`` is the channel name the user keeps a stream of.
"""

import abc

MAX_APP_KEYS = 10
"""The most live key/secret pairs an app holds: enough to rotate (the old
pair and the new) with room to spare, and a bounded set to check a
signature against."""

MAX_SKIP = 2**31 - 1
"""The most events a read skips: more than any channel holds, and within
what both backends take (a larger number overflows their integers); a
caller clamps ``skip`` to it, since skipping more finds nothing either way."""


class StoreClosedError(RuntimeError):
    """Raised when a closed store is used."""


class AppKeysError(ValueError):
    """A key change the store refuses: the app would hold more than
    ``MAX_APP_KEYS`` pairs, or none (revoking its last pair)."""


class Store(abc.ABC):
    """Interface of a persistence backend (see the module docstring)."""

    # apps

    @abc.abstractmethod
    def create_app(self, name, client_events=False, settings=None):
        """Creates an app with a new numeric id and random key and secret
        (each at least 128 bits, hex) and returns its record."""

    @abc.abstractmethod
    def get_app(self, app_id):
        """Returns the app record for ``app_id`` or None."""

    @abc.abstractmethod
    def get_app_by_key(self, key):
        """Returns the app record whose key is ``key`` or None."""

    @abc.abstractmethod
    def list_apps(self):
        """Returns every app record, ordered by numeric id."""

    @abc.abstractmethod
    def update_app(self, app_id, **fields):
        """Updates ``name``, ``enabled``, ``client_events`` or ``settings``
        of an app and returns the new record (None if it does not exist)."""

    @abc.abstractmethod
    def put_app(self, record):
        """Creates the app of a full record with the id, key and secret it
        names, or replaces every field of the app with that id; returns the
        stored record.  Ids ``create_app`` hands out later come after it.
        A key that another app holds fails (the store's unique key), and
        leaves both apps as they were."""

    @abc.abstractmethod
    def add_app_key(self, app_id):
        """Adds a new random key/secret pair to an app and returns it
        (``{"key", "secret", "created"}``), or None if there is no such
        app.  Raises ``AppKeysError`` at ``MAX_APP_KEYS`` pairs."""

    @abc.abstractmethod
    def revoke_app_key(self, app_id, key):
        """Deletes one pair of an app and returns the app's new record, or
        None when the app or that key of it does not exist.  Raises
        ``AppKeysError`` when it is the app's last pair."""

    @abc.abstractmethod
    def apps_version(self):
        """A value that changes whenever any app record changes, by this
        process or another (the CLI): a running server polls it, cheaply,
        to learn of app changes it did not make."""

    # events

    @abc.abstractmethod
    def add_events(self, events):
        """Stores a batch of event records durably (committed, and for the
        embedded store synced, before returning).  Concurrent callers may
        share one commit.  An event whose ``mid`` is already stored for its
        app is skipped, so retrying a batch is harmless."""

    def add_events_then(self, events, callback, executor):
        """``add_events`` without blocking the caller: ``callback(error)``
        runs once the events are stored (``error`` None) or failed.  This
        default waits on a thread of ``executor``; a backend with its own
        writer calls back from it instead."""
        executor.submit(self.add_events, events).add_done_callback(
            lambda write: callback(write.exception())
        )

    def bind_loop(self, loop):  # noqa: B027  (optional hook, no-op default)
        """Lets a backend drive its writes from the server's loop (State
        calls it on the loop thread as the loop starts; see
        ``State.watch_read``).  The default does not."""

    @abc.abstractmethod
    def get_events(self, app_id, channels, skip=0, count=10):
        """Returns the stored events of ``app_id`` on any of ``channels`` (a
        list of names), newest first (by ``timestamp``; equal timestamps
        newest added first), skipping ``skip`` and returning at most
        ``count``."""

    @abc.abstractmethod
    def trim_events(self, app_id, max_count=None, max_age=None, now=None):
        """Enforces retention for one app: keeps at most ``max_count`` events
        per channel and none older than ``max_age`` seconds before ``now``.
        Returns how many were removed."""

    # persisted subscriptions

    @abc.abstractmethod
    def subscribe(self, app_id, user_id, event):
        """Records that ``user_id`` keeps a stream of channel ``event``;
        idempotent.  Returns the subscription record."""

    @abc.abstractmethod
    def unsubscribe(self, app_id, user_id, event):
        """Removes that subscription; returns True if it existed."""

    @abc.abstractmethod
    def list_subscriptions(self, app_id, user_id=None, event=None):
        """Returns the app's subscriptions, filtered by user and/or event."""

    # lifecycle

    def ping(self):
        """Raises when the store cannot answer now (the health a scrape of
        ``GET /metrics`` reports): a read that reaches it."""
        self.get_app("0")

    def close(self):  # noqa: B027  (optional hook, no-op default)
        """Releases connections and threads; the store is unusable after."""
