"""The SQLite file as every writer and reader opens it: the connection
settings (``connect``) and the check that the file a writer commits to is
still the one at its path (``MovedDatabase``).

Shared by the store (``sqlite``), the events writer's child process
(``sqlite_events``), which imports nothing else of the store, and the
configuration (the file name).
"""

import os
import sqlite3
import time
import urllib.parse

DATABASE_NAME = "pushi.sqlite3"
"""File name of the database inside the data dir."""

SYNC_MODES = ("NORMAL", "FULL")
"""The ``synchronous`` settings a store may run with (``PUSHI_SQLITE_SYNC``),
both in WAL mode: NORMAL writes each commit to the WAL before it returns
and syncs the WAL only at checkpoints, FULL syncs it at every commit."""

BUSY_TIMEOUT_MS = 30000
"""How long a connection waits for another process's write lock."""


def connect(path, synchronous, create=True, wal_limit=None):
    """A connection as every user of the file opens it (WAL, ``synchronous``,
    autocommit, waiting up to ``BUSY_TIMEOUT_MS`` for the write lock);
    without ``create``, fails when there is no file at ``path``.  With
    ``wal_limit`` (bytes), its commits never checkpoint the WAL (whoever
    opens it so checkpoints it: see ``sqlite_events``) and the one that
    restarts the WAL cuts its file back to ``wal_limit``."""
    connection = sqlite3.connect(
        path if create else "file:%s?mode=rw" % urllib.parse.quote(path),
        timeout=BUSY_TIMEOUT_MS / 1000.0,
        isolation_level=None,
        check_same_thread=False,
        uri=not create,
    )
    connection.execute("PRAGMA busy_timeout = %d" % BUSY_TIMEOUT_MS)
    _set_wal(connection)
    connection.execute("PRAGMA synchronous = %s" % synchronous)
    connection.execute("PRAGMA foreign_keys = OFF")
    if wal_limit is not None:
        connection.execute("PRAGMA wal_autocheckpoint = 0")
        connection.execute("PRAGMA journal_size_limit = %d" % wal_limit)
    return connection


def _set_wal(connection):
    """``journal_mode = WAL``.  Processes opening a new file at once race
    to make it a WAL file, and SQLite answers the losers "database is
    locked" at once, without its busy handler: they try again, for
    ``BUSY_TIMEOUT_MS`` at most, as a busy handler would."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000.0
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def file_identity(path):
    """``(device, inode)`` of the file at ``path``, None if there is none."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


class MovedDatabase:
    """A writer's connection that notices when its database file is removed
    or replaced while it runs (an operator's ``rm``, a restored backup).

    An open connection keeps writing to the file it opened, even once no
    path leads to it: its commits succeed but a restart finds none of them.
    So after each commit ``check`` compares the file at ``path`` with the
    one opened, and a writer reports failure instead; the next ``get``
    opens whatever file is at ``path`` then (never creating one)."""

    def __init__(self, path, synchronous, connection=None, wal_limit=None):
        self.path = path
        self.synchronous = synchronous
        self.wal_limit = wal_limit
        self.connection = connection
        self.identity = file_identity(path) if connection is not None else None

    def get(self):
        """The connection, reopened if the file was found moved."""
        if self.connection is None:
            connection = connect(self.path, self.synchronous, False, self.wal_limit)
            self.connection, self.identity = connection, file_identity(self.path)
        return self.connection

    def check(self):
        """Raises (and drops the connection) if the file at ``path`` is not
        the one committed to."""
        if file_identity(self.path) != self.identity:
            self.close()
            raise sqlite3.OperationalError(
                "%s was removed or replaced while in use" % self.path
            )

    def close(self):
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()
