"""The in-memory twin of the store, for unit tests and throwaway servers.

Same contract as ``base.Store``; nothing survives the process.
"""

import secrets
import threading
import time

from .base import Store


class MemoryStore(Store):
    """A ``Store`` in dicts behind one lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._apps = {}
        self._events = []
        self._subscriptions = {}
        self._next_id = 1

    def create_app(self, name, client_events=False, settings=None):
        with self._lock:
            app_id = str(self._next_id)
            self._next_id += 1
            record = {
                "app_id": app_id,
                "name": name,
                "key": secrets.token_hex(16),
                "secret": secrets.token_hex(32),
                "enabled": True,
                "client_events": bool(client_events),
                "settings": dict(settings or {}),
            }
            self._apps[app_id] = record
            return dict(record)

    def get_app(self, app_id):
        record = self._apps.get(str(app_id))
        return dict(record) if record else None

    def get_app_by_key(self, key):
        for record in list(self._apps.values()):
            if record["key"] == key:
                return dict(record)
        return None

    def list_apps(self):
        return [dict(record) for _id, record in sorted(self._apps.items(), key=lambda item: int(item[0]))]

    def update_app(self, app_id, **fields):
        with self._lock:
            record = self._apps.get(str(app_id))
            if record is None:
                return None
            for name in ("name", "enabled", "client_events", "settings"):
                if name in fields:
                    record[name] = fields[name]
            return dict(record)

    def add_events(self, events):
        with self._lock:
            self._events.extend(dict(event) for event in events)

    def get_events(self, app_id, channels, skip=0, count=10):
        channels = set(channels)
        matching = [
            dict(event)
            for event in reversed(self._events)
            if event["app_id"] == app_id and event["channel"] in channels
        ]
        return matching[skip : skip + count]

    def trim_events(self, app_id, max_count=None, max_age=None, now=None):
        now = time.time() if now is None else now
        with self._lock:
            kept = []
            per_channel = {}
            for event in reversed(self._events):
                if event["app_id"] == app_id:
                    seen = per_channel.get(event["channel"], 0)
                    if max_count and seen >= max_count:
                        continue
                    if max_age and event["timestamp"] < now - max_age:
                        continue
                    per_channel[event["channel"]] = seen + 1
                kept.append(event)
            removed = len(self._events) - len(kept)
            self._events = kept[::-1]
            return removed

    def subscribe(self, app_id, user_id, event):
        record = {"app_id": app_id, "user_id": user_id, "event": event}
        with self._lock:
            self._subscriptions[(app_id, user_id, event)] = record
        return dict(record)

    def unsubscribe(self, app_id, user_id, event):
        with self._lock:
            return self._subscriptions.pop((app_id, user_id, event), None) is not None

    def list_subscriptions(self, app_id, user_id=None, event=None):
        return [
            dict(record)
            for (app, user, name), record in list(self._subscriptions.items())
            if app == app_id
            and (user_id is None or user == user_id)
            and (event is None or name == event)
        ]
