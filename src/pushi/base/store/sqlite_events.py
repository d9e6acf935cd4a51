"""The events writer: a child process that inserts and commits events.

SQLite work done in the server's process holds Python's GIL for much of
its time (binding, stepping between C calls, commit bookkeeping), and the
loop thread that serves every socket then waits for it (see
docs/benchmarks.md).  In a process of its own, that work runs on another
core under another GIL.

Two drivers use it.  A server's store is bound to the loop, and
``GroupCommit`` sends batches from the loop thread and reads the answers
when the loop sees the socket readable: no thread between the publish and
the commit, so no hand-offs per batch.  A store with no loop (the CLI, a
script) has its writer thread call the blocking ``EventsProcess.store``.

Protocol (trusted: parent and child are the same program), over a socket
pair that is the child's stdin and stdout: frames of a 4-byte big-endian
length and a pickle.  The parent sends a list of row lists, one per
caller; the answer, after the commit, is a list of the same length, None
for each stored list, else ``(error class name, message)``.  Batches are
committed and answered in the order they came, and the parent has at most
two unanswered (``GroupCommit``).  A row list that fails (a constraint)
fails alone: it is retried in its own savepoint.  The child exits when its
input closes, so it never outlives the server for long, and a batch is
answered only once it is committed.

Worker mode (``PUSHI_WORKERS``): the supervisor runs ONE shared writer
(``serve``) on a Unix socket, and each worker's ``EventsProcess`` is given
its ``address`` and connects to it instead of starting a child of its own.
Same frames, same two batches at most per connection; the shared writer
commits the batches waiting from all workers in one transaction, so the
workers never take turns at the write lock and keep one group commit.
"""

import collections
import logging
import os
import pickle
import selectors
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from typing import cast

from .base import StoreClosedError
from .sqlite_file import MovedDatabase

logger = logging.getLogger("pushi")

_LENGTH = struct.Struct("!I")
_CHILD = "from %s import main; main()" % __name__

CHECKPOINT_DELAY = 0.1
"""Seconds from a commit to the background checkpoint that copies it into
the database file: the commits of that time share one checkpoint (and its
two syncs)."""

WAL_LIMIT = 8 << 20
"""Bytes of WAL past which the writer checkpoints it itself, between two
batches, so that it restarts from its beginning (and is cut back to
this)."""


def _read_frame(stream):
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def _frame(value):
    data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def _write_frame(stream, value):
    stream.write(_frame(value))
    stream.flush()


def insert_events(connection, rows):
    """Inserts event rows and counts them per channel.  A duplicate mid (a
    retried batch) is ignored, so adding is idempotent; any other constraint
    (NOT NULL) still fails, which "INSERT OR IGNORE" would silently skip.
    The per-channel counts assume every row was new: an over-count only
    makes the next trim look at the channel (and fix its count), whereas an
    under-count could skip a needed trim."""
    connection.executemany(
        "INSERT INTO events"
        " (mid, app_id, channel, event, data, timestamp, user_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (app_id, mid) DO NOTHING",
        rows,
    )
    added: dict[tuple[str, str], int] = {}
    for row in rows:
        channel_key = (row[1], row[2])
        added[channel_key] = added.get(channel_key, 0) + 1
    connection.executemany(
        "INSERT INTO channels (app_id, channel, count) VALUES (?, ?, ?)"
        " ON CONFLICT (app_id, channel) DO UPDATE"
        " SET count = count + excluded.count",
        [(app_id, channel, n) for (app_id, channel), n in added.items()],
    )


def store_batch(connection, row_lists):
    """Inserts the row lists in ONE transaction: all together first; if that
    fails, each in a savepoint of its own, so a failure (a constraint, or a
    string SQLite cannot take as UTF-8) lands on its list only.  Returns
    the errors (None for a list that is stored); raises if the commit
    itself fails."""
    results: list[Exception | None] = [None] * len(row_lists)
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute("SAVEPOINT events")
        try:
            insert_events(connection, [row for rows in row_lists for row in rows])
        except (sqlite3.Error, ValueError):
            connection.execute("ROLLBACK TO events")
            for index, rows in enumerate(row_lists):
                connection.execute("SAVEPOINT list")
                try:
                    insert_events(connection, rows)
                except (sqlite3.Error, ValueError) as error:
                    connection.execute("ROLLBACK TO list")
                    results[index] = error
                connection.execute("RELEASE list")
        connection.execute("RELEASE events")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return results


def behind_the_loop(synchronous):
    """Makes this writer a batch task (Linux ``SCHED_BATCH``) when its
    commits are not synced: its work is then all CPU, and a batch task
    woken by the batch a loop sends does not take the loop's core from it
    in the middle of the loop's turn (it runs on a free core, or once the
    loop waits); a normal task would, and on a busy machine the loop
    might then wait behind other processes too.  With synced commits it
    stays a normal task: its wake-up after each sync would otherwise wait
    for the scheduler's tick."""
    if synchronous.upper() == "FULL" or not hasattr(os, "SCHED_BATCH"):
        return
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as error:
        logger.warning("events writer stays a normal task: %s", error)


class Checkpoints:
    """WAL checkpoints off the commit path.  SQLite's automatic checkpoint
    runs inside the commit that takes the WAL past ``wal_autocheckpoint``
    pages: that commit, and every batch behind it, waits for the copy into
    the database file and its syncs.  The writer's connection is opened
    without it (``connect(wal_limit=...)``); instead a thread of the
    writer's process, on a connection of its own, runs a PASSIVE checkpoint
    ``CHECKPOINT_DELAY`` after commits, beside the next ones (SQLite lets a
    checkpoint and a writer run at once).  A checkpoint copies only what is
    committed: an event's durability is its commit's, as before.

    The WAL restarts from its beginning at a write that finds all of it
    checkpointed.  Commits that keep landing during the background
    checkpoints would let it grow without end, so once its file passes
    ``WAL_LIMIT`` the writer runs one checkpoint itself, after answering a
    batch and before reading the next (``committed``): with no commit
    beside it, it copies everything, and the next commit restarts the WAL
    (once per ``CHECKPOINT_DELAY`` at most while it does not restart: a
    reader in the middle of the WAL may hold the restart back)."""

    def __init__(self, path, synchronous):
        self._wal = path + "-wal"
        self._database = MovedDatabase(path, synchronous, wal_limit=WAL_LIMIT)
        # one checkpoint at a time, the thread's or the writer's
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._closing = threading.Event()
        self._next_alone = 0.0
        self._thread = threading.Thread(
            target=self._run, name="pushi-checkpoints", daemon=True
        )
        self._thread.start()

    def committed(self, database):
        """After a commit has been answered: the thread checkpoints soon;
        the writer (``database``, its ``MovedDatabase``) now, when the WAL
        has outgrown ``WAL_LIMIT``."""
        self._due.set()
        try:
            size = os.path.getsize(self._wal)
        except OSError:
            return
        if size <= WAL_LIMIT:
            self._next_alone = 0.0  # restarted since the last one
        elif time.monotonic() >= self._next_alone:
            with self._lock:
                self._checkpoint(database)
            self._next_alone = time.monotonic() + CHECKPOINT_DELAY

    def _run(self):
        while True:
            self._due.wait()
            if self._closing.wait(CHECKPOINT_DELAY):
                break
            self._due.clear()
            with self._lock:
                self._checkpoint(self._database)
        self._database.close()

    @staticmethod
    def _checkpoint(database):
        try:
            database.get().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            # the file at the path is the one checkpointed (else reopened)
            database.check()
        except Exception as error:
            logger.warning("WAL checkpoint failed: %s", error)
            database.close()

    def close(self):
        self._closing.set()
        self._due.set()
        self._thread.join()


def main(argv=None):
    # Ctrl-C in a terminal and a service manager's SIGTERM reach the whole
    # process group: the server stops gracefully and closes this child's
    # input, which ends it after its last commit
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path, synchronous = (argv or sys.argv)[1:3]
    behind_the_loop(synchronous)
    database = MovedDatabase(path, synchronous, wal_limit=WAL_LIMIT)
    checkpoints = Checkpoints(path, synchronous)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while True:
        row_lists = _read_frame(source)
        if row_lists is None:
            break
        try:
            errors = store_batch(database.get(), row_lists)
            # committed to a file no path leads to any more: lost
            database.check()
        except Exception as error:
            errors = [error] * len(row_lists)
        _write_frame(sink, _answer(errors))
        checkpoints.committed(database)
    checkpoints.close()
    database.close()


def _answer(errors):
    return [
        None if error is None else (type(error).__name__, str(error))
        for error in errors
    ]


def serve(argv=None):
    """The shared events writer of worker mode: ``serve(path, synchronous,
    listening socket fd, life fd)``.  Workers connect to the listening Unix
    socket (made by the supervisor, so it outlives a restart of this
    process); the batches that are waiting from all of them are committed
    together and each is answered on its own connection.  Ends once the
    life fd (a pipe whose other end only the supervisor holds) reads end
    of file, after answering what it committed."""
    # its end is the supervisor's: a SIGTERM sent to the whole group
    # (systemd's default) must not end it before the workers' last batches
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    path, synchronous, listen_fd, life_fd = (argv or sys.argv)[1:5]
    behind_the_loop(synchronous)
    listener = socket.socket(fileno=int(listen_fd))
    listener.setblocking(False)
    life: int | None
    life = int(life_fd)  # None once the supervisor has ended
    database = MovedDatabase(path, synchronous, wal_limit=WAL_LIMIT)
    checkpoints = Checkpoints(path, synchronous)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(life, selectors.EVENT_READ)
    received = {}
    while True:
        batches = []
        for key, _events in selector.select():
            if key.fd == life:
                if not os.read(life, 64):
                    selector.unregister(life)
                    life = None
            elif key.fileobj is listener:
                try:
                    peer, _address = listener.accept()
                except OSError:
                    continue
                # answers are small and the worker reads them: a timeout
                # only guards against a worker that stopped (SIGSTOP)
                peer.settimeout(10)
                received[peer] = b""
                selector.register(peer, selectors.EVENT_READ)
            else:
                # the listener and the life pipe are handled above
                peer = cast(socket.socket, key.fileobj)
                try:
                    data = peer.recv(1 << 16)
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(peer)
                    received.pop(peer, None)
                    peer.close()
                    continue
                buffer = received[peer] + data
                while len(buffer) >= _LENGTH.size:
                    (size,) = _LENGTH.unpack_from(buffer)
                    end = _LENGTH.size + size
                    if len(buffer) < end:
                        break
                    batches.append((peer, pickle.loads(buffer[_LENGTH.size : end])))
                    buffer = buffer[end:]
                received[peer] = buffer
        if batches:
            row_lists = [rows for _peer, lists in batches for rows in lists]
            try:
                errors = store_batch(database.get(), row_lists)
                database.check()
            except Exception as error:
                errors = [error] * len(row_lists)
            for peer, lists in batches:
                answer, errors = errors[: len(lists)], errors[len(lists) :]
                if peer.fileno() < 0:
                    continue  # closed by a failed answer of this round
                try:
                    peer.sendall(_frame(_answer(answer)))
                except OSError:
                    # gone, or stopped past the timeout: closed, it reads
                    # end of file (its batch failed) when it is back
                    selector.unregister(peer)
                    received.pop(peer, None)
                    peer.close()
            checkpoints.committed(database)
        if life is None:
            break
    checkpoints.close()
    database.close()


class EventsProcess:
    """The parent's handle on the events writer, over a socket pair: either
    one thread calls ``store`` (blocking), or a loop makes ``socket``
    non-blocking, ``send_frame``s (and ``send_unsent`` when it is writable)
    and, when it is readable, ``receive``s.  With ``address`` (worker mode)
    it connects to the supervisor's shared writer there instead of starting
    a child."""

    def __init__(self, path, synchronous, address=None):
        self.path = path
        self.synchronous = synchronous
        self.address = address
        self.socket: socket.socket | None = None
        self.ended = False
        self.unsent = bytearray()
        """ What the non-blocking socket has not taken yet (``send_frame``) """
        self._process = None
        self._received = b""

    @property
    def running(self):
        if self.address is not None:
            return self.socket is not None and not self.ended
        return self._process is not None and self._process.poll() is None

    def start(self):
        """Starts the child unless it runs; returns the socket to it."""
        if self.running:
            return self.socket
        self.close()
        if self.address is not None:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connection.connect(self.address)
            except BaseException:
                connection.close()
                raise
            self.socket = connection
            return connection
        import pushi

        root = os.path.dirname(os.path.dirname(os.path.abspath(pushi.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        parent, child = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                # -c, not -m: the package has imported this module already
                [sys.executable, "-c", _CHILD, self.path, self.synchronous],
                stdin=child.fileno(),
                stdout=child.fileno(),
                env=env,
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.socket = parent
        return parent

    def send(self, row_lists):
        """Sends a batch to the started child, blocking."""
        connection = self.socket
        assert connection is not None  # sent only once started
        connection.sendall(_frame(row_lists))

    def send_frame(self, frame):
        """Sends a batch's ``_frame`` on the non-blocking socket, after what
        is ``unsent``: what it does not take now is kept for
        ``send_unsent``.  True once everything is sent; raises ``OSError``
        when the other end is gone."""
        if self.unsent:
            self.unsent += frame
            return False
        sent = self._send_some(frame)
        if sent < len(frame):
            self.unsent += frame[sent:]
            return False
        return True

    def send_unsent(self):
        """Sends what is ``unsent`` as far as the socket takes it; True once
        nothing is left."""
        del self.unsent[: self._send_some(self.unsent)]
        return not self.unsent

    def _send_some(self, data):
        connection = self.socket
        assert connection is not None  # sent only once started
        try:
            return connection.send(data)
        except (BlockingIOError, InterruptedError):
            return 0

    def receive(self, wait=False):
        """Returns the answers that have arrived, each a list with one error
        (or None) per row list of its batch; with ``wait``, blocks for at
        least one.  Sets ``ended`` once the child has closed its end."""
        flags = 0 if wait else socket.MSG_DONTWAIT
        connection = self.socket
        assert connection is not None  # received only once started
        answers: list[list[Exception | None]] = []
        while not (answers and wait) and not self.ended:
            try:
                data = connection.recv(1 << 16, flags)
            except BlockingIOError:
                break
            except OSError:
                # reset: the child died with a batch unread
                data = b""
            if not data:
                self.ended = True
            self._received += data
            while len(self._received) >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(self._received)
                end = _LENGTH.size + size
                if len(self._received) < end:
                    break
                answer = pickle.loads(self._received[_LENGTH.size : end])
                self._received = self._received[end:]
                answers.append(
                    [
                        None if failure is None else _error(*failure)
                        for failure in answer
                    ]
                )
        return answers

    def store(self, row_lists):
        """Stores the row lists; returns one error (or None) per list, once
        committed.  Blocks (with the GIL released while it waits)."""
        try:
            self.start()
            self.send(row_lists)
            answers = self.receive(wait=True)
        except OSError:
            answers = []
        if not answers:
            self.close()
            return [died()] * len(row_lists)
        return answers[0]

    def close(self):
        """Ends the child once it has committed what it was sent."""
        process, self._process = self._process, None
        connection, self.socket = self.socket, None
        self._received = b""
        self.unsent = bytearray()
        self.ended = False
        if connection is not None:
            try:
                connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if process is not None:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if connection is not None:
            connection.close()


def died():
    """The error of a batch whose child died: it may or may not be
    committed, so its callers hear an error; the next batch starts a new
    child."""
    return sqlite3.OperationalError("events writer process failed")


class GroupCommit:
    """Event rows committed by the events writer in batches, driven by one
    loop thread: the rows added in one loop turn leave together after it,
    and while the child commits a batch, the next one may already wait in
    its socket: the child takes it as soon as it has answered, without
    sleeping until it is sent.  Newer rows wait and go together once the
    older batch is answered, before that answer's callbacks run.  Batches
    are committed and answered in the order they leave.  The loop never
    waits on the socket: what it does not take goes when it is writable.

    A batch is not held back for more callers: that gained nothing.

    ``loop`` runs everything here on its thread: ``schedule(work)`` after
    the current turn, ``watch_read(socket, work)`` whenever ``socket`` is
    readable, ``watch_write(socket, work)`` whenever it is writable, and
    ``unwatch_read`` / ``unwatch_write``."""

    def __init__(self, process, loop, max_lists):
        self.process = process
        self.loop = loop
        self.max_lists = max_lists
        self.closed = False
        self._waiting = []
        # the callbacks of each batch sent and not answered yet, oldest first
        self._committing: collections.deque[list] = collections.deque()
        self._scheduled = False
        self._watched = None
        self._writing = False

    def add(self, rows, callback):
        """Queues ``rows``; ``callback(error)`` runs on the loop once they
        are committed (``error`` None) or failed."""
        self._waiting.append((rows, callback))
        if not self._scheduled and len(self._committing) < 2:
            self._scheduled = True
            self.loop.schedule(self._send)

    def _send(self):
        self._scheduled = False
        if self.closed:
            waiting, self._waiting = self._waiting, []
            self._finish(
                [callback for _rows, callback in waiting],
                [StoreClosedError("store is closed")] * len(waiting),
            )
            return
        if not self._waiting or len(self._committing) > 1:
            return
        batch = self._waiting[: self.max_lists]
        del self._waiting[: len(batch)]
        self._committing.append([callback for _rows, callback in batch])
        frame = _frame([rows for rows, _callback in batch])
        try:
            # one look at the child per batch it has none of (a waitpid on
            # the loop); one that died with a batch shows on its socket
            if len(self._committing) > 1 or self.process.running:
                connection = self.process.socket
            else:
                # before start() closes the old socket
                self._unwatch()
                connection = self.process.start()
                connection.setblocking(False)
            if self._watched is None:
                self._watched = connection
                self.loop.watch_read(connection, self._readable)
        except Exception:
            logger.exception("events writer process unavailable")
            self._lost()
            return
        try:
            if not self.process.send_frame(frame) and not self._writing:
                self._writing = True
                self.loop.watch_write(connection, self._writable)
        except OSError:
            self._cut()

    def _writable(self):
        try:
            sent = self.process.send_unsent()
        except OSError:
            self._cut()
            return
        if sent:
            self._stop_writing()

    def _cut(self):
        """A write failed: the child is gone, or is made to end (its input
        shut) once it has answered what it took.  Its answers and its end
        come to ``_readable``, which fails the batches left."""
        self._stop_writing()
        self.process.unsent.clear()
        connection = self.process.socket
        if connection is not None:
            try:
                connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _readable(self):
        answered = [
            (self._committing.popleft(), answer) for answer in self.process.receive()
        ]
        while self._waiting and len(self._committing) < 2 and not self.process.ended:
            # the next batches leave first: the child commits them while
            # the loop delivers and answers these
            self._send()
        for callbacks, answer in answered:
            self._finish(callbacks, answer)
        if self.process.ended:
            self._lost()

    def _stop_writing(self):
        if self._writing:
            self._writing = False
            self.loop.unwatch_write(self._watched)

    def _unwatch(self):
        self._stop_writing()
        if self._watched is not None:
            self.loop.unwatch_read(self._watched)
            self._watched = None

    def _lost(self):
        self._unwatch()
        self.process.close()
        lost, self._committing = self._committing, collections.deque()
        for callbacks in lost:
            self._finish(callbacks, [died()] * len(callbacks))
        if self._waiting:
            self._send()

    @staticmethod
    def _finish(callbacks, errors):
        for callback, error in zip(callbacks, errors, strict=True):
            try:
                callback(error)
            except Exception:
                logger.exception("events callback failed")

    def close(self):
        """Ends the child (the loop must have stopped); rows added after
        this fail."""
        self.closed = True
        self.process.close()


def _error(name, message):
    kind = getattr(sqlite3, name, None)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        kind = sqlite3.Error
    return kind(message)


if __name__ == "__main__":
    main()
