"""The embedded store: SQLite from the standard library, no server needed.

Ownership and threading (read this before touching the code):

* **One writer thread** owns every write.  Callers of ``add_events`` (and of
  the other writing methods) put a *ticket* on the writer's queue and block
  on it.  The writer drains whatever is queued and runs the batch as ONE
  transaction, commits once, and only then wakes every caller of that
  batch.  So a caller returns only after its events are committed and
  synced, while concurrent callers share the cost of one commit (group
  commit).  A ticket that fails is rolled back to its savepoint and gets
  the error; the others of its batch are unaffected.
* **Events are written by a child process** (``sqlite_events``): SQLite
  work inside the server's process would hold the GIL against the loop
  thread that serves every socket.  In a server (``bind_loop``) the loop
  itself sends it batches and reads its answers (``GroupCommit``: the same
  group commit, with no thread hand-off), and other threads' ``add_events``
  cross into the loop; without a loop the writer thread sends the batch's
  event rows and waits, with the GIL released, for the answer after the
  commit.  Other writes (apps, subscriptions, retention) are rare and run
  on the writer thread's own connection.
* **Reads use one connection per thread** in autocommit mode, so every read
  starts a fresh WAL snapshot and sees everything committed before it, by
  this process or by another one (the ``pushi app create`` CLI opens the
  same file while the server runs).  Nothing is cached in the store.
* **Several processes** may open the same data dir: each write transaction
  starts with ``BEGIN IMMEDIATE`` (the database write lock) and waits up to
  ``busy_timeout`` for it, so app ids (SQLite ``AUTOINCREMENT`` rowids) are
  allocated sequentially without duplicates across processes.

Writers check after each commit that the database file is still the one
at the data dir's path (``MovedDatabase``): committing to a removed file
would acknowledge writes that no restart finds.

Durability: WAL mode, with ``synchronous`` as the store is opened with
(``PUSHI_SQLITE_SYNC`` for a server; FULL unless told).  Either way a
commit returns only once its WAL frames are written to the file, so a
committed (acknowledged) event survives ``kill -9`` or any other death of
the process: the kernel holds what was written.  FULL also syncs the WAL
at every commit, so it survives a power loss or OS crash too; NORMAL syncs
the WAL only before each checkpoint, so such a crash may roll back the
commits since the last checkpoint (never corrupts the file), and a commit
costs no wait for the disk (see docs/benchmarks.md).

Schema (all queries are index-backed, none scans a table):

* ``apps``: ``app_id INTEGER PRIMARY KEY AUTOINCREMENT``, unique ``key``
  (the app's first key/secret pair, added at ``key_created``, NULL for the
  pair made with the app).
* ``app_keys``: the app's other live pairs, ``key`` the primary key, an
  index on ``app_id``; the rowid keeps the order they were added in.
  Revoking the first pair moves the oldest of these into ``apps``.
* ``apps_version``: one row whose ``version`` triggers on ``apps`` and
  ``app_keys`` bump on every change, whoever makes it (``apps_version``).
* ``events``: rowid ``seq`` (commit order) plus the record fields; indexes
  ``(app_id, channel, timestamp)`` (the rowid is the implicit last column,
  so it serves "newest first" on ``timestamp DESC, seq DESC`` without a
  sort), ``(app_id, timestamp)`` for age retention and unique
  ``(app_id, mid)``.
* ``channels``: per ``(app_id, channel)`` the number of stored events, kept
  by the writer, so count retention only visits channels over the limit.
* ``subscriptions``: primary key ``(app_id, user_id, event)`` and an index
  ``(app_id, event)``.
"""

import collections
import concurrent.futures
import contextlib
import heapq
import itertools
import json
import os
import queue
import secrets
import sqlite3
import threading
import time

from . import base
from .sqlite_events import EventsProcess, GroupCommit
from .sqlite_file import DATABASE_NAME, MovedDatabase, connect, file_identity

SCHEMA_VERSION = 2
"""Stored in ``PRAGMA user_version``; bump with a migration when it changes."""

MAX_BATCH_TICKETS = 1024
"""Most tickets the writer folds into one transaction."""

EVENTS_TIMEOUT = 60
"""How long a thread's ``add_events`` waits for a bound store's loop."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    app_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    secret TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    client_events INTEGER NOT NULL DEFAULT 0,
    settings TEXT NOT NULL DEFAULT '{}',
    key_created REAL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    app_id TEXT NOT NULL,
    mid TEXT NOT NULL,
    channel TEXT NOT NULL,
    event TEXT NOT NULL,
    data TEXT NOT NULL,
    timestamp REAL NOT NULL,
    user_id TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_mid ON events (app_id, mid);
CREATE INDEX IF NOT EXISTS events_by_channel
    ON events (app_id, channel, timestamp);
CREATE INDEX IF NOT EXISTS events_by_age ON events (app_id, timestamp);
CREATE TABLE IF NOT EXISTS channels (
    app_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (app_id, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscriptions (
    app_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (app_id, user_id, event)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS subscriptions_by_event
    ON subscriptions (app_id, event);
CREATE TABLE IF NOT EXISTS app_keys (
    key TEXT PRIMARY KEY,
    app_id INTEGER NOT NULL,
    secret TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS app_keys_by_app ON app_keys (app_id);
CREATE TABLE IF NOT EXISTS apps_version (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    version INTEGER NOT NULL
);
INSERT OR IGNORE INTO apps_version (id, version) VALUES (0, 0);
"""

TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS %s_%s AFTER %s ON %s BEGIN"
    " UPDATE apps_version SET version = version + 1 WHERE id = 0; END"
    % (table, change.lower(), change, table)
    for table in ("apps", "app_keys")
    for change in ("INSERT", "UPDATE", "DELETE")
]
"""Every change to an app record bumps ``apps_version`` (statements of
their own: a trigger's body holds a ``;``)."""

APP_COLUMNS = "app_id, name, key, secret, enabled, client_events, settings, key_created"
EVENT_COLUMNS = "seq, mid, app_id, channel, event, data, timestamp, user_id"
EVENT_ORDER = "ORDER BY timestamp DESC, seq DESC"
TRIM_CHUNK = 1000
"""Rows one retention transaction deletes at most: the events writer commits
between two, so a large trim never holds every app's persisted publishes
for long."""


class _Ticket:
    """One unit of work for the writer thread and the caller waiting on it.

    ``rows`` is a list of event tuples to insert; ``job`` a function of the
    writer's connection for any other write.  The writer fills ``result`` or
    ``error`` and then releases ``_done`` (a lock taken at creation: lighter
    than an Event, and exactly one caller waits on a ticket).
    """

    __slots__ = ("rows", "job", "result", "error", "callback", "_done")

    def __init__(self, rows=None, job=None, callback=None):
        self.rows = rows
        self.job = job
        self.result = None
        self.error = None
        self.callback = callback
        self._done = threading.Lock()
        self._done.acquire()

    def finish(self):
        """Called by the writer once the ticket's transaction is over."""
        self._done.release()
        if self.callback is not None:
            self.callback(self.error)

    def wait(self):
        """Blocks until the writer has finished this ticket; returns the
        job's result or raises its error."""
        self._done.acquire()
        if self.error is not None:
            raise self.error
        return self.result


_STOP = object()


class SQLiteStore(base.Store):
    """Embedded persistence in ``<data_dir>/pushi.sqlite3`` (see the module
    docstring for threading, durability and schema).

    Safe to share between threads and to open from several processes."""

    def __init__(self, data_dir, synchronous="FULL", events_address=None):
        self.data_dir = os.path.abspath(data_dir)
        # worker mode: the supervisor's shared events writer (sqlite_events)
        self.events_address = events_address
        os.makedirs(self.data_dir, exist_ok=True)
        self.path = os.path.join(self.data_dir, DATABASE_NAME)
        self.synchronous = synchronous
        self._closed = False
        self._local = threading.local()
        self._readers = {}
        self._readers_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Ticket | object] = queue.SimpleQueue()
        # Held while checking ``_closed`` and queueing, so that no ticket can
        # be queued behind the writer's stop marker and wait forever.
        self._queue_lock = threading.Lock()

        writer_connection = self._connect()
        # The writer touches every index of every insert: a page cache of
        # 32 MB (instead of 2 MB) keeps their hot pages of a large store.
        writer_connection.execute("PRAGMA cache_size = -32768")
        self._create_schema(writer_connection)
        self._database = MovedDatabase(self.path, synchronous, writer_connection)
        # started on the first events to store: the CLI never needs it
        self._events = EventsProcess(self.path, self.synchronous, events_address)
        # the events of a server: committed by a group commit on its loop
        self._group = None
        self._writer = threading.Thread(
            target=self._write_loop, name="pushi-sqlite-writer", daemon=True
        )
        self._writer.start()

    # connections

    def _connect(self):
        return connect(self.path, self.synchronous)

    def _create_schema(self, connection):
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    "%s has schema version %d, newer than this Pushi (%d)"
                    % (self.path, version, SCHEMA_VERSION)
                )
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
            columns = [row[1] for row in connection.execute("PRAGMA table_info(apps)")]
            if "key_created" not in columns:
                # version 1: when the first pair was added (None: with the app)
                connection.execute("ALTER TABLE apps ADD COLUMN key_created REAL")
            for statement in TRIGGERS:
                connection.execute(statement)
            connection.execute("PRAGMA user_version = %d" % SCHEMA_VERSION)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def _reader(self):
        """Returns this thread's read connection, opening it on first use
        (and closing those of threads that have ended)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        if self._closed:
            raise base.StoreClosedError("store is closed")
        connection = self._connect()
        current = threading.current_thread()
        with self._readers_lock:
            for thread in [thread for thread in self._readers if not thread.is_alive()]:
                self._readers.pop(thread).close()
            self._readers[current] = connection
        self._local.connection = connection
        return connection

    # the writer

    def _submit(self, ticket, wait=True):
        with self._queue_lock:
            if self._closed:
                raise base.StoreClosedError("store is closed")
            self._queue.put(ticket)
        return ticket.wait() if wait else None

    def _write(self, job):
        """Runs ``job(connection)`` on the writer thread inside a committed
        transaction and returns its result."""
        return self._submit(_Ticket(job=job))

    def _write_loop(self):
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH_TICKETS:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [ticket for ticket in batch if ticket is not _STOP]
            if batch:
                self._run_batch(batch)
        self._events.close()
        self._database.close()

    def _run_batch(self, batch):
        """Runs the tickets of ``batch`` and wakes their callers: the event
        tickets as one transaction of the events writer process, whose
        callers are woken as soon as it is committed; every other job in
        its own savepoint of one transaction here.

        The tickets of a batch are concurrent (every caller is still
        waiting), so their order is free; a ticket that fails fails alone."""
        event_tickets = [ticket for ticket in batch if ticket.rows is not None]
        job_tickets = [ticket for ticket in batch if ticket.rows is None]
        if event_tickets:
            errors = self._events.store([ticket.rows for ticket in event_tickets])
            for ticket, error in zip(event_tickets, errors, strict=True):
                ticket.error = error
                ticket.finish()
        if not job_tickets:
            return
        try:
            connection = self._database.get()
            connection.execute("BEGIN IMMEDIATE")
            try:
                for ticket in job_tickets:
                    self._in_savepoint(
                        connection,
                        ticket,
                        lambda ticket=ticket: ticket.job(connection),
                    )
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            self._database.check()
        except Exception as error:
            for ticket in job_tickets:
                ticket.error = ticket.error or error
        for ticket in job_tickets:
            ticket.finish()

    @staticmethod
    def _in_savepoint(connection, ticket, work):
        """Runs ``work()`` for ``ticket`` in a savepoint; on error rolls it
        back and records the error on the ticket only."""
        connection.execute("SAVEPOINT ticket")
        try:
            ticket.result = work()
        except Exception as error:
            connection.execute("ROLLBACK TO ticket")
            ticket.error = error
        connection.execute("RELEASE ticket")

    # apps

    def _app_record(self, row, others=None):
        """The record of an ``apps`` row; ``others`` its ``app_keys`` rows
        (read here when not given)."""
        if row is None:
            return None
        app_id, name, key, secret, enabled, client_events, settings, created = row
        if others is None:
            others = self._reader().execute(
                "SELECT key, secret, created FROM app_keys WHERE app_id = ?"
                " ORDER BY rowid",
                (app_id,),
            )
        keys = [dict(key=key, secret=secret, created=created)]
        keys += [
            dict(key=other, secret=other_secret, created=created)
            for other, other_secret, created in others
        ]
        return dict(
            app_id=str(app_id),
            name=name,
            key=key,
            secret=secret,
            enabled=bool(enabled),
            client_events=bool(client_events),
            settings=json.loads(settings),
            keys=keys,
        )

    @staticmethod
    def _numeric_id(app_id):
        """Returns ``app_id`` as an int, or None when it is not numeric (no
        such app can exist)."""
        app_id = str(app_id)
        # ASCII digits only, within SQLite's 64-bit INTEGER
        if app_id.isascii() and app_id.isdigit() and len(app_id) <= 18:
            return int(app_id)
        return None

    def create_app(self, name, client_events=False, settings=None):
        key = secrets.token_hex(16)
        secret = secrets.token_hex(32)
        settings_json = json.dumps(settings or {})

        def insert(connection):
            cursor = connection.execute(
                "INSERT INTO apps (name, key, secret, enabled, client_events,"
                " settings) VALUES (?, ?, ?, 1, ?, ?)",
                (name, key, secret, int(bool(client_events)), settings_json),
            )
            return cursor.lastrowid

        app_id = self._write(insert)
        return self.get_app(str(app_id))

    def put_app(self, record):
        numeric_id = self._numeric_id(record["app_id"])
        if numeric_id is None:
            raise ValueError("app_id must be numeric")
        row = (
            numeric_id,
            record["name"],
            record["key"],
            record["secret"],
            int(bool(record["enabled"])),
            int(bool(record["client_events"])),
            json.dumps(record["settings"] or {}),
            None,
        )

        def upsert(connection):
            # an explicit id above the AUTOINCREMENT sequence moves it on;
            # the record's pair becomes the app's only one (other pairs go),
            # and a key kept keeps when it was added
            connection.execute(
                "INSERT INTO apps (%s) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (app_id) DO UPDATE SET name = excluded.name,"
                " key_created = CASE WHEN apps.key = excluded.key"
                " THEN apps.key_created ELSE ? END,"
                " key = excluded.key, secret = excluded.secret,"
                " enabled = excluded.enabled,"
                " client_events = excluded.client_events,"
                " settings = excluded.settings" % APP_COLUMNS,
                row + (time.time(),),
            )
            connection.execute("DELETE FROM app_keys WHERE app_id = ?", (numeric_id,))

        self._write(upsert)
        return self.get_app(str(numeric_id))

    def get_app(self, app_id):
        numeric_id = self._numeric_id(app_id)
        if numeric_id is None:
            return None
        with self._snapshot() as reader:
            row = reader.execute(
                "SELECT %s FROM apps WHERE app_id = ?" % APP_COLUMNS, (numeric_id,)
            ).fetchone()
            return self._app_record(row)

    def get_app_by_key(self, key):
        with self._snapshot() as reader:
            row = reader.execute(
                "SELECT %s FROM apps WHERE key = ?" % APP_COLUMNS, (key,)
            ).fetchone()
            if row is None:
                row = reader.execute(
                    "SELECT %s FROM apps WHERE app_id ="
                    " (SELECT app_id FROM app_keys WHERE key = ?)" % APP_COLUMNS,
                    (key,),
                ).fetchone()
            return self._app_record(row)

    @contextlib.contextmanager
    def _snapshot(self):
        """This thread's reader inside one read transaction: an app row and
        its other keys read from the same commit."""
        reader = self._reader()
        reader.execute("BEGIN")
        try:
            yield reader
        finally:
            reader.execute("COMMIT")

    def list_apps(self):
        with self._snapshot() as reader:
            rows = reader.execute(
                "SELECT %s FROM apps ORDER BY app_id" % APP_COLUMNS
            ).fetchall()
            others = collections.defaultdict(list)
            for app_id, key, secret, created in reader.execute(
                "SELECT app_id, key, secret, created FROM app_keys ORDER BY rowid"
            ):
                others[app_id].append((key, secret, created))
            return [self._app_record(row, others.get(row[0], ())) for row in rows]

    def update_app(self, app_id, **fields):
        unknown = set(fields) - {"name", "enabled", "client_events", "settings"}
        if unknown:
            raise ValueError("cannot update %s" % ", ".join(sorted(unknown)))
        numeric_id = self._numeric_id(app_id)
        if numeric_id is None:
            return None
        values = {}
        if "name" in fields:
            values["name"] = fields["name"]
        if "enabled" in fields:
            values["enabled"] = int(bool(fields["enabled"]))
        if "client_events" in fields:
            values["client_events"] = int(bool(fields["client_events"]))
        if "settings" in fields:
            values["settings"] = json.dumps(fields["settings"] or {})

        def update(connection):
            if not values:
                return None
            assignments = ", ".join("%s = ?" % column for column in values)
            connection.execute(
                "UPDATE apps SET %s WHERE app_id = ?" % assignments,
                list(values.values()) + [numeric_id],
            )

        self._write(update)
        return self.get_app(app_id)

    def add_app_key(self, app_id):
        numeric_id = self._numeric_id(app_id)
        if numeric_id is None:
            return None
        pair = dict(
            key=secrets.token_hex(16), secret=secrets.token_hex(32), created=time.time()
        )

        def insert(connection):
            if not connection.execute(
                "SELECT 1 FROM apps WHERE app_id = ?", (numeric_id,)
            ).fetchone():
                return None
            (others,) = connection.execute(
                "SELECT count(*) FROM app_keys WHERE app_id = ?", (numeric_id,)
            ).fetchone()
            if others + 1 >= base.MAX_APP_KEYS:
                raise base.AppKeysError(
                    "An app holds at most %d key pairs" % base.MAX_APP_KEYS
                )
            connection.execute(
                "INSERT INTO app_keys (key, app_id, secret, created)"
                " VALUES (?, ?, ?, ?)",
                (pair["key"], numeric_id, pair["secret"], pair["created"]),
            )
            return pair

        return self._write(insert)

    def revoke_app_key(self, app_id, key):
        numeric_id = self._numeric_id(app_id)
        if numeric_id is None or not isinstance(key, str):
            return None

        def revoke(connection):
            row = connection.execute(
                "SELECT key FROM apps WHERE app_id = ?", (numeric_id,)
            ).fetchone()
            if row is None:
                return False
            if row[0] != key:
                return (
                    connection.execute(
                        "DELETE FROM app_keys WHERE app_id = ? AND key = ?",
                        (numeric_id, key),
                    ).rowcount
                    > 0
                )
            # the first pair: the oldest other one takes its place
            successor = connection.execute(
                "SELECT key, secret, created FROM app_keys WHERE app_id = ?"
                " ORDER BY rowid LIMIT 1",
                (numeric_id,),
            ).fetchone()
            if successor is None:
                raise base.AppKeysError("Cannot revoke the app's last key pair")
            connection.execute("DELETE FROM app_keys WHERE key = ?", (successor[0],))
            connection.execute(
                "UPDATE apps SET key = ?, secret = ?, key_created = ? WHERE app_id = ?",
                successor + (numeric_id,),
            )
            return True

        return self.get_app(app_id) if self._write(revoke) else None

    def apps_version(self):
        row = (
            self._reader()
            .execute("SELECT version FROM apps_version WHERE id = 0")
            .fetchone()
        )
        return row[0] if row else 0

    # events

    def add_events(self, events):
        rows = self._event_rows(events)
        if not rows:
            return
        if self._group is None:
            self._submit(_Ticket(rows=rows))
            return
        answered: concurrent.futures.Future[Exception | None] = (
            concurrent.futures.Future()
        )
        self._group.loop.call_soon(self._group.add, rows, answered.set_result)
        try:
            error = answered.result(EVENTS_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise sqlite3.OperationalError("events writer did not answer") from None
        if error is not None:
            raise error

    def add_events_then(self, events, callback, executor=None):
        """``add_events`` without waiting: ``callback(error)`` runs once the
        batch holding these events is committed (``error`` None) or failed;
        on the loop, where a bound store must be called, else on the writer
        thread."""
        rows = self._event_rows(events)
        if not rows:
            callback(None)
        elif self._closed:
            callback(base.StoreClosedError("store is closed"))
        elif self._group is not None:
            self._group.add(rows, callback)
        else:
            self._submit(_Ticket(rows=rows, callback=callback), wait=False)

    def bind_loop(self, loop):
        """From now on events are committed by a group commit that ``loop``
        drives (see ``GroupCommit``): no thread hand-off between the loop
        that publishes and the child that commits."""
        self._group = GroupCommit(
            EventsProcess(self.path, self.synchronous, self.events_address),
            loop,
            MAX_BATCH_TICKETS,
        )

    @staticmethod
    def _event_rows(events):
        # Turned into rows here, on the caller's thread, so that a malformed
        # record fails for its caller only and the writer does less work.
        return [
            (
                str(event["mid"]),
                str(event["app_id"]),
                event["channel"],
                event["event"],
                event["data"],
                float(event["timestamp"]),
                None if event.get("user_id") is None else str(event["user_id"]),
            )
            for event in events
        ]

    @staticmethod
    def _event_record(row):
        _seq, mid, app_id, channel, event, data, timestamp, user_id = row
        return dict(
            mid=mid,
            app_id=app_id,
            channel=channel,
            event=event,
            data=data,
            timestamp=timestamp,
            user_id=user_id,
        )

    def get_events(self, app_id, channels, skip=0, count=10):
        skip, count = max(int(skip), 0), max(int(count), 0)
        channels = list(dict.fromkeys(channels))
        if not channels or count == 0:
            return []
        connection = self._reader()
        query = (
            "SELECT %s FROM events WHERE app_id = ? AND channel = ? %s"
            " LIMIT ? OFFSET ?" % (EVENT_COLUMNS, EVENT_ORDER)
        )
        app_id = str(app_id)
        if len(channels) == 1:
            rows = connection.execute(query, (app_id, channels[0], count, skip))
            return [self._event_record(row) for row in rows]
        # One indexed range per channel, each already newest first, merged
        # here as the rows are stepped: reads skip + count rows and one more
        # per channel, never sorts a whole channel (an IN list would make
        # SQLite sort every match), and holds no channel's rows in memory.
        wanted = skip + count
        per_channel = [
            connection.execute(query, (app_id, channel, wanted, 0))
            for channel in channels
        ]
        merged = heapq.merge(*per_channel, key=lambda row: (-row[6], -row[0]))
        return [
            self._event_record(row)
            for row in itertools.islice(merged, skip, skip + count)
        ]

    def trim_events(self, app_id, max_count=None, max_age=None, now=None):
        app_id = str(app_id)
        if max_age is not None:
            cutoff = (time.time() if now is None else now) - max_age
        if max_count is not None:
            max_count = max(int(max_count), 0)

        def trim(connection):
            removed = 0
            if max_age is not None:
                removed += self._trim_by_age(connection, app_id, cutoff, TRIM_CHUNK)
            if max_count is not None and removed < TRIM_CHUNK:
                removed += self._trim_by_count(
                    connection, app_id, max_count, TRIM_CHUNK - removed
                )
            return removed

        # a transaction per chunk, then as long again without: SQLite's
        # busy handler polls, so the events writer must find the lock free
        # for a while to take it between two
        total = 0
        while True:
            started = time.monotonic()
            removed = self._write(trim)
            total += removed
            if removed < TRIM_CHUNK:
                return total
            time.sleep(time.monotonic() - started)

    @staticmethod
    def _delete_rows(connection, app_id, rows):
        """Deletes ``(seq, channel)`` rows and takes them off their
        channels' counts."""
        if not rows:
            return
        connection.executemany(
            "DELETE FROM events WHERE seq = ?", [(seq,) for seq, _channel in rows]
        )
        counts = collections.Counter(channel for _seq, channel in rows)
        connection.executemany(
            "UPDATE channels SET count = max(count - ?, 0)"
            " WHERE app_id = ? AND channel = ?",
            [(n, app_id, channel) for channel, n in counts.items()],
        )
        connection.execute(
            "DELETE FROM channels WHERE app_id = ? AND count = 0", (app_id,)
        )

    @classmethod
    def _trim_by_age(cls, connection, app_id, cutoff, limit):
        # Walks only the expired part of the (app_id, timestamp) index.
        expired = connection.execute(
            "SELECT seq, channel FROM events INDEXED BY events_by_age"
            " WHERE app_id = ? AND timestamp < ? LIMIT ?",
            (app_id, cutoff, limit),
        ).fetchall()
        cls._delete_rows(connection, app_id, expired)
        return len(expired)

    @classmethod
    def _trim_by_count(cls, connection, app_id, max_count, limit):
        removed = 0
        crowded = connection.execute(
            "SELECT channel FROM channels WHERE app_id = ? AND count > ?",
            (app_id, max_count),
        ).fetchall()
        for (channel,) in crowded:
            if removed >= limit:
                break
            # The newest row beyond the limit: it and everything older goes.
            boundary = connection.execute(
                "SELECT timestamp, seq FROM events WHERE app_id = ?"
                " AND channel = ? %s LIMIT 1 OFFSET ?" % EVENT_ORDER,
                (app_id, channel, max_count),
            ).fetchone()
            if boundary is not None:
                timestamp, seq = boundary
                budget = limit - removed
                beyond = connection.execute(
                    "SELECT seq, channel FROM events WHERE app_id = ? AND channel = ?"
                    " AND timestamp <= ? AND (timestamp < ? OR seq <= ?) LIMIT ?",
                    (app_id, channel, timestamp, timestamp, seq, budget),
                ).fetchall()
                cls._delete_rows(connection, app_id, beyond)
                removed += len(beyond)
                if len(beyond) == budget:
                    continue  # more of this channel in the next chunk
            # Once the channel is done, its count is made exact whatever it
            # was (it may have drifted if another process wrote events).
            remaining = connection.execute(
                "SELECT COUNT(*) FROM events WHERE app_id = ? AND channel = ?",
                (app_id, channel),
            ).fetchone()[0]
            if remaining:
                connection.execute(
                    "INSERT OR REPLACE INTO channels (app_id, channel, count)"
                    " VALUES (?, ?, ?)",
                    (app_id, channel, remaining),
                )
        return removed

    # persisted subscriptions

    def subscribe(self, app_id, user_id, event):
        record = dict(app_id=str(app_id), user_id=str(user_id), event=event)
        self._write(
            lambda connection: connection.execute(
                "INSERT OR IGNORE INTO subscriptions (app_id, user_id, event)"
                " VALUES (?, ?, ?)",
                (record["app_id"], record["user_id"], record["event"]),
            )
        )
        return record

    def unsubscribe(self, app_id, user_id, event):
        return self._write(
            lambda connection: (
                connection.execute(
                    "DELETE FROM subscriptions"
                    " WHERE app_id = ? AND user_id = ? AND event = ?",
                    (str(app_id), str(user_id), event),
                ).rowcount
                > 0
            )
        )

    def list_subscriptions(self, app_id, user_id=None, event=None):
        conditions, parameters = ["app_id = ?"], [str(app_id)]
        if user_id is not None:
            conditions.append("user_id = ?")
            parameters.append(str(user_id))
        if event is not None:
            conditions.append("event = ?")
            parameters.append(event)
        rows = self._reader().execute(
            "SELECT app_id, user_id, event FROM subscriptions WHERE %s"
            " ORDER BY user_id, event" % " AND ".join(conditions),
            parameters,
        )
        return [
            dict(app_id=app_id, user_id=user_id, event=event)
            for app_id, user_id, event in rows
        ]

    # lifecycle

    def ping(self):
        """Also fails once the writer has stopped, or when the database
        file was removed or replaced (its commits would reach no file)."""
        if self._closed or not self._writer.is_alive():
            raise base.StoreClosedError("store is closed")
        if file_identity(self.path) != self._database.identity:
            raise sqlite3.OperationalError(
                "%s was removed or replaced while in use" % self.path
            )
        base.Store.ping(self)

    def close(self):
        with self._queue_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._writer.join()
        if self._group is not None:
            self._group.close()
        with self._readers_lock:
            for connection in self._readers.values():
                connection.close()
            self._readers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return "SQLiteStore(%r)" % self.data_dir
