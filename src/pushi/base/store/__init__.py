"""Persistence backends behind the ``Store`` interface."""

from .base import Store


def open_store(data_dir=None, mongo_url=None):
    """MongoDB when ``mongo_url`` is given, else the embedded store."""
    if mongo_url:
        from .mongo import MongoStore

        return MongoStore(mongo_url)
    from .sqlite import SQLiteStore

    return SQLiteStore(data_dir or "data")
