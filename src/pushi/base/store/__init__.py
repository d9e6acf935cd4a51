"""Persistence: the ``Store`` interface and its two backends.

``open_store`` picks the backend from the configuration: MongoDB when a URL
is given, else the embedded SQLite store under the data dir.
"""

import sqlite3
import sys

from .base import Store
from .sqlite import SQLiteStore, StoreClosedError

DEFAULT_DATA_DIR = "data"
"""Data dir of the embedded store when none is configured (relative to the
working directory)."""


def open_store(data_dir=None, mongo_url=None):
    """Opens the configured store: ``MongoStore(mongo_url)`` when
    ``mongo_url`` is given, else ``SQLiteStore(data_dir)``."""
    if mongo_url:
        from .mongo import MongoStore

        return MongoStore(mongo_url)
    return SQLiteStore(data_dir or DEFAULT_DATA_DIR)


def is_store_error(exception):
    """True when ``exception`` is the store failing (unreachable, full,
    corrupt, timed out, closed), which a caller answers with "Store
    unavailable" rather than as a bug."""
    if isinstance(exception, (sqlite3.Error, StoreClosedError)):
        return True
    # pymongo is imported only with the MongoDB store
    mongo_errors = sys.modules.get("pymongo.errors")
    return mongo_errors is not None and isinstance(exception, mongo_errors.PyMongoError)


def __getattr__(name):
    # MongoStore is imported lazily so that the embedded store does not
    # need pymongo installed.
    if name == "MongoStore":
        from .mongo import MongoStore

        return MongoStore
    raise AttributeError(name)


__all__ = [
    "Store",
    "SQLiteStore",
    "MongoStore",
    "StoreClosedError",
    "is_store_error",
    "open_store",
]
