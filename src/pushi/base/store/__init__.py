"""Persistence: the ``Store`` interface and its two backends.

``open_store`` picks the backend from the configuration: MongoDB when a URL
is given, else the embedded SQLite store under the data dir.
"""

import os
import re
import sqlite3
import sys
import urllib.parse

from pushi.base.config import ConfigError, default_data_dir

from .base import Store, StoreClosedError
from .sqlite import SQLiteStore


class StoreOpenError(ConfigError):
    """The configured store cannot be used at all; the message is one line
    for the operator (the launcher and the CLI print it and exit)."""


def open_store(data_dir=None, mongo_url=None, events_address=None, synchronous=None):
    """Opens the configured store: ``MongoStore(mongo_url)`` when
    ``mongo_url`` is given, else ``SQLiteStore(data_dir)`` (by default in
    ``config.default_data_dir()``; its events committed by the shared
    writer at ``events_address`` in worker mode; its commits synced as
    ``synchronous`` says, ``PUSHI_SQLITE_SYNC``, by default FULL).  Raises
    ``StoreOpenError`` when it cannot be reached, read or written."""
    data_dir = data_dir or default_data_dir()
    try:
        if mongo_url:
            from .mongo import MongoStore

            return MongoStore(mongo_url)
        return SQLiteStore(
            data_dir, synchronous or "FULL", events_address=events_address
        )
    except Exception as error:
        if not (is_store_error(error) or isinstance(error, OSError)):
            raise
        if mongo_url:
            # the hosts only: the URL may hold a password
            hosts = urllib.parse.urlsplit(mongo_url).netloc.rpartition("@")[2]
            where = "MongoDB at %s (MONGO_URL)" % hosts
        else:
            where = "the store in PUSHI_DATA_DIR (%s)" % os.path.abspath(data_dir)
        # pymongo appends its timeouts and whole topology to the reason
        reason = (
            getattr(error, "strerror", None)
            or re.split(r" \(configured timeouts|, Timeout: ", str(error))[0]
        )
        raise StoreOpenError("Cannot open %s: %s" % (where, reason.strip())) from error


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
    "MongoStore",
    "SQLiteStore",
    "Store",
    "StoreClosedError",
    "StoreOpenError",
    "is_store_error",
    "open_store",
]
