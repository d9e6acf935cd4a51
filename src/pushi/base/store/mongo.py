"""The MongoDB store (``MONGO_URL``), with pymongo 4.x directly.

Collections of the database (``database`` argument, else the one named in
the URL, else ``pushi``):

* ``apps``: ``_id`` is the numeric id as an int (so ``list_apps`` sorts
  numerically), ``app_id`` the same as a string; ``key`` and ``secret`` the
  first key/secret pair (added at ``key_created``, missing for the pair
  made with the app), ``other_keys`` the others (``{key, secret,
  created}``, oldest first); unique indexes on ``app_id`` and ``key``, an
  index on ``other_keys.key``.  A key change rewrites the pairs with a
  filter on the ones read (compare and set), so two concurrent changes
  never lose one another.
* ``counters``: ``{"_id": "app_id", "value": n}``, bumped with a ``$inc``
  upsert in ``find_one_and_update`` so ids are sequential and never handed
  out twice, whichever process creates the app; ``{"_id": "apps_version"}``
  is bumped after every change of an app (``apps_version``).
* ``events``: the event records; ``_id`` is an ObjectId made by pymongo at
  insert, which breaks ties between equal timestamps in insertion order.
  Indexes: ``(app_id, channel, timestamp desc, _id desc)`` for newest-first
  pages (a ``$in`` over several channels becomes a merge of index scans),
  ``(app_id, timestamp)`` for age retention, unique ``(app_id, mid)``.
* ``subscriptions``: unique ``(app_id, user_id, event)`` and
  ``(app_id, event)``.

Indexes are created when the store opens (``create_index`` is idempotent).
No capped collections, sessions or transactions are used: each method is one
or a few single-document or bulk operations, which is also what the test
emulator (``tests/mongo_emulator.py``) supports.  Durability is whatever
write concern the URL asks for (``?w=majority&journal=true``); pymongo's
default is acknowledged by the primary.

Every operation gives up after ``timeoutMS`` (pymongo's client-side
operation timeout, 10 s unless the URL says otherwise): without it a server
that accepts connections but stops answering would hold a publish, and the
one thread that serves the other REST routes, for ever.
"""

import secrets
import time
import urllib.parse

import pymongo
from pymongo import errors

from . import base

DEFAULT_DATABASE = "pushi"
DEFAULT_OPTIONS = {"serverSelectionTimeoutMS": 10000, "timeoutMS": 10000}
"""Client options used unless the URL (or the caller) gives them."""
DUPLICATE_KEY = 11000
CHANGE_ATTEMPTS = 100
"""Reads and compare-and-sets of one key change before it gives up (only
as many other changes landing in between would need them)."""

APP_FIELDS = ("app_id", "name", "key", "secret", "enabled", "client_events")
EVENT_FIELDS = ("mid", "app_id", "channel", "event", "data", "timestamp", "user_id")
NEWEST_FIRST = [("timestamp", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)]


class MongoStore(base.Store):
    """Persistence in MongoDB at ``url`` (see the module docstring)."""

    def __init__(self, url, database=None, **client_options):
        # a keyword argument would override the URL's own option
        in_url = {
            name.lower()
            for name, _value in urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)
        }
        for name, value in DEFAULT_OPTIONS.items():
            if name.lower() not in in_url:
                client_options.setdefault(name, value)
        self.client = pymongo.MongoClient(url, **client_options)
        if database is None:
            default = self.client.get_default_database(default=DEFAULT_DATABASE)
            database = default.name
        self.database = self.client[database]
        self.apps = self.database["apps"]
        self.counters = self.database["counters"]
        self.events = self.database["events"]
        self.subscriptions = self.database["subscriptions"]
        try:
            self._create_indexes()
        except BaseException:
            self.client.close()
            raise

    def _create_indexes(self):
        self.apps.create_index("app_id", unique=True, name="app_id")
        self.apps.create_index("key", unique=True, name="key")
        self.apps.create_index("other_keys.key", name="other_keys")
        self.events.create_index(
            [("app_id", 1), ("channel", 1), ("timestamp", -1), ("_id", -1)],
            name="app_channel_newest",
        )
        self.events.create_index([("app_id", 1), ("timestamp", 1)], name="app_age")
        self.events.create_index(
            [("app_id", 1), ("mid", 1)], unique=True, name="app_mid"
        )
        self.subscriptions.create_index(
            [("app_id", 1), ("user_id", 1), ("event", 1)],
            unique=True,
            name="app_user_event",
        )
        self.subscriptions.create_index([("app_id", 1), ("event", 1)], name="app_event")

    # apps

    @staticmethod
    def _app_record(document):
        if document is None:
            return None
        record = {field: document.get(field) for field in APP_FIELDS}
        record["enabled"] = bool(record["enabled"])
        record["client_events"] = bool(record["client_events"])
        record["settings"] = dict(document.get("settings") or {})
        record["keys"] = [
            dict(
                key=record["key"],
                secret=record["secret"],
                created=document.get("key_created"),
            )
        ] + [
            dict(key=pair["key"], secret=pair["secret"], created=pair["created"])
            for pair in document.get("other_keys") or ()
        ]
        return record

    def _next_app_id(self):
        counter = self.counters.find_one_and_update(
            {"_id": "app_id"},
            {"$inc": {"value": 1}},
            upsert=True,
            return_document=pymongo.ReturnDocument.AFTER,
        )
        assert counter is not None  # upserted
        return counter["value"]

    def create_app(self, name, client_events=False, settings=None):
        number = self._next_app_id()
        document = {
            "_id": number,
            "app_id": str(number),
            "name": name,
            "key": secrets.token_hex(16),
            "secret": secrets.token_hex(32),
            "enabled": True,
            "client_events": bool(client_events),
            "settings": dict(settings or {}),
        }
        self.apps.insert_one(document)
        self._changed()
        return self._app_record(document)

    def put_app(self, record):
        number = int(record["app_id"])
        # create_app's next id comes after this one
        self.counters.update_one(
            {"_id": "app_id"}, {"$max": {"value": number}}, upsert=True
        )
        document = {
            "_id": number,
            "app_id": str(number),
            "name": record["name"],
            "key": record["key"],
            "secret": record["secret"],
            "enabled": bool(record["enabled"]),
            "client_events": bool(record["client_events"]),
            "settings": dict(record["settings"] or {}),
        }
        # the record's pair becomes the app's only one (other pairs go); a
        # key kept keeps when it was added
        old = self.apps.find_one({"_id": number}) or {}
        if old.get("key") == record["key"]:
            if "key_created" in old:
                document["key_created"] = old["key_created"]
        elif old:
            document["key_created"] = time.time()
        self.apps.replace_one({"_id": number}, document, upsert=True)
        self._changed()
        return self._app_record(document)

    def get_app(self, app_id):
        return self._app_record(self.apps.find_one({"app_id": str(app_id)}))

    def get_app_by_key(self, key):
        if not isinstance(key, str):
            return None
        return self._app_record(
            self.apps.find_one({"$or": [{"key": key}, {"other_keys.key": key}]})
        )

    def list_apps(self):
        return [self._app_record(document) for document in self.apps.find().sort("_id")]

    def update_app(self, app_id, **fields):
        unknown = set(fields) - {"name", "enabled", "client_events", "settings"}
        if unknown:
            raise ValueError("cannot update %s" % ", ".join(sorted(unknown)))
        values = dict(fields)
        for flag in ("enabled", "client_events"):
            if flag in values:
                values[flag] = bool(values[flag])
        if "settings" in values:
            values["settings"] = dict(values["settings"] or {})
        if not values:
            return self.get_app(app_id)
        document = self.apps.find_one_and_update(
            {"app_id": str(app_id)},
            {"$set": values},
            return_document=pymongo.ReturnDocument.AFTER,
        )
        if document is not None:
            self._changed()
        return self._app_record(document)

    def add_app_key(self, app_id):
        pair = dict(
            key=secrets.token_hex(16), secret=secrets.token_hex(32), created=time.time()
        )

        def add(document):
            others = list(document.get("other_keys") or ())
            if len(others) + 1 >= base.MAX_APP_KEYS:
                raise base.AppKeysError(
                    "An app holds at most %d key pairs" % base.MAX_APP_KEYS
                )
            return {"other_keys": others + [pair]}

        return pair if self._change_keys(app_id, add) else None

    def revoke_app_key(self, app_id, key):
        def revoke(document):
            others = list(document.get("other_keys") or ())
            if key == document["key"]:
                if not others:
                    raise base.AppKeysError("Cannot revoke the app's last key pair")
                # the first pair: the oldest other one takes its place
                successor = others.pop(0)
                return {
                    "key": successor["key"],
                    "secret": successor["secret"],
                    "key_created": successor["created"],
                    "other_keys": others,
                }
            kept = [pair for pair in others if pair["key"] != key]
            return {"other_keys": kept} if len(kept) < len(others) else None

        return self.get_app(app_id) if self._change_keys(app_id, revoke) else None

    def _change_keys(self, app_id, change):
        """Applies ``change(document) -> fields to set (None: nothing to
        do)`` to an app's pairs, again on a fresh read whenever another
        change landed in between; True once set, False if no such app or
        nothing to do."""
        while True:
            document = self.apps.find_one({"app_id": str(app_id)})
            if document is None:
                return False
            values = change(document)
            if values is None:
                return False
            # a missing ``other_keys`` is matched by null
            current = {
                "app_id": str(app_id),
                "key": document["key"],
                "other_keys": document.get("other_keys"),
            }
            if self.apps.update_one(current, {"$set": values}).matched_count:
                self._changed()
                return True
        raise errors.OperationFailure(
            "App %s keys changed too often to update" % app_id
        )

    def _changed(self):
        self.counters.update_one(
            {"_id": "apps_version"}, {"$inc": {"value": 1}}, upsert=True
        )

    def apps_version(self):
        counter = self.counters.find_one({"_id": "apps_version"})
        return counter["value"] if counter else 0

    # events

    def add_events(self, events):
        documents = [
            {
                "mid": str(event["mid"]),
                "app_id": str(event["app_id"]),
                "channel": event["channel"],
                "event": event["event"],
                "data": event["data"],
                "timestamp": float(event["timestamp"]),
                "user_id": (
                    None if event.get("user_id") is None else str(event["user_id"])
                ),
            }
            for event in events
        ]
        if not documents:
            return
        try:
            self.events.insert_many(documents, ordered=False)
        except errors.BulkWriteError as error:
            # A duplicate mid (a retried batch) is ignored, like the
            # embedded store does: adding is idempotent.
            details = error.details or {}
            real_errors = [
                write_error
                for write_error in details.get("writeErrors", [])
                if write_error.get("code") != DUPLICATE_KEY
            ]
            if real_errors or details.get("writeConcernErrors"):
                raise

    @staticmethod
    def _event_record(document):
        return {field: document.get(field) for field in EVENT_FIELDS}

    def get_events(self, app_id, channels, skip=0, count=10):
        skip, count = max(int(skip), 0), max(int(count), 0)
        channels = list(dict.fromkeys(channels))
        if not channels or count == 0:
            return []
        channel_filter = channels[0] if len(channels) == 1 else {"$in": channels}
        cursor = (
            self.events.find({"app_id": str(app_id), "channel": channel_filter})
            .sort(NEWEST_FIRST)
            .skip(skip)
            .limit(count)
        )
        return [self._event_record(document) for document in cursor]

    def trim_events(self, app_id, max_count=None, max_age=None, now=None):
        app_id = str(app_id)
        removed = 0
        if max_age is not None:
            cutoff = (time.time() if now is None else now) - max_age
            result = self.events.delete_many(
                {"app_id": app_id, "timestamp": {"$lt": cutoff}}
            )
            removed += result.deleted_count
        if max_count is not None:
            max_count = max(int(max_count), 0)
            for channel in self.events.distinct("channel", {"app_id": app_id}):
                removed += self._trim_channel(app_id, channel, max_count)
        return removed

    def _trim_channel(self, app_id, channel, max_count):
        """Removes the events of one channel beyond the newest
        ``max_count`` (index-backed: skips ``max_count`` index entries to
        find the boundary, then deletes everything at or older than it)."""
        boundary = list(
            self.events.find({"app_id": app_id, "channel": channel}, {"timestamp": 1})
            .sort(NEWEST_FIRST)
            .skip(max_count)
            .limit(1)
        )
        if not boundary:
            return 0
        timestamp, last_id = boundary[0]["timestamp"], boundary[0]["_id"]
        result = self.events.delete_many(
            {
                "app_id": app_id,
                "channel": channel,
                "$or": [
                    {"timestamp": {"$lt": timestamp}},
                    {"timestamp": timestamp, "_id": {"$lte": last_id}},
                ],
            }
        )
        return result.deleted_count

    # persisted subscriptions

    def subscribe(self, app_id, user_id, event):
        record = {"app_id": str(app_id), "user_id": str(user_id), "event": event}
        try:
            self.subscriptions.update_one(
                record, {"$setOnInsert": {"created": time.time()}}, upsert=True
            )
        except errors.DuplicateKeyError:
            pass  # a concurrent subscribe inserted it first: same outcome
        return record

    def unsubscribe(self, app_id, user_id, event):
        result = self.subscriptions.delete_one(
            {"app_id": str(app_id), "user_id": str(user_id), "event": event}
        )
        return result.deleted_count > 0

    def list_subscriptions(self, app_id, user_id=None, event=None):
        query = {"app_id": str(app_id)}
        if user_id is not None:
            query["user_id"] = str(user_id)
        if event is not None:
            query["event"] = event
        cursor = self.subscriptions.find(query, {"_id": 0}).sort(
            [("user_id", 1), ("event", 1)]
        )
        return [
            {
                "app_id": document["app_id"],
                "user_id": document["user_id"],
                "event": document["event"],
            }
            for document in cursor
        ]

    # lifecycle

    def close(self):
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return "MongoStore(%r)" % self.database.name
