"""The events writer: a child process that inserts and commits events.

SQLite work done in the server's process holds Python's GIL for much of
its time (binding, stepping between C calls, commit bookkeeping), and the
loop thread that serves every socket then waits for it: measured, every
loop function ran about 1.7x slower while the writer thread was busy, and
persisted publishing reached half of what the same pipeline did with the
store taken out.  In a process of its own, that work runs on another core
under another GIL; the store's writer thread only sends each batch and
waits for the answer with the GIL released.

Protocol (trusted: parent and child are the same program): frames of a
4-byte big-endian length and a pickle.  The parent sends a list of row
lists, one per caller; the child answers, after its commit, a list of the
same length: None for each stored list, else ``(error class name,
message)``.  A row list that fails (a constraint) fails alone: it is
retried in its own savepoint.  The child exits when its input closes, so
it never outlives the server for long, and a batch is answered only once
it is committed.

Run by the store: ``python -m pushi.base.store.sqlite_events <path>
<synchronous>``.
"""

import os
import pickle
import signal
import sqlite3
import struct
import subprocess
import sys

_LENGTH = struct.Struct("!I")


def _read_frame(stream):
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def _write_frame(stream, value):
    data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def store_batch(connection, row_lists, insert):
    """Inserts each row list with ``insert(connection, rows)`` in ONE
    transaction: all together first; if that fails, each in a savepoint
    of its own, so a failure lands on its list only.  Returns the errors
    (None for a list that is stored); raises if the commit itself fails."""
    results = [None] * len(row_lists)
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute("SAVEPOINT events")
        try:
            insert(connection, [row for rows in row_lists for row in rows])
        except sqlite3.Error:
            connection.execute("ROLLBACK TO events")
            for index, rows in enumerate(row_lists):
                connection.execute("SAVEPOINT list")
                try:
                    insert(connection, rows)
                except sqlite3.Error as error:
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


def main(argv=None):
    from pushi.base.store import sqlite

    # Ctrl-C in a terminal reaches the whole process group: the server
    # stops gracefully and closes this child's input, which ends it after
    # its last commit
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    path, synchronous = (argv or sys.argv)[1:3]
    connection = sqlite.connect(path, synchronous)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while True:
        row_lists = _read_frame(source)
        if row_lists is None:
            break
        try:
            errors = store_batch(connection, row_lists, sqlite.insert_events)
        except Exception as error:
            errors = [error] * len(row_lists)
        _write_frame(
            sink,
            [
                None if error is None else (type(error).__name__, str(error))
                for error in errors
            ],
        )
    connection.close()


class EventsProcess:
    """The parent's handle on the events writer (the store's writer thread
    is its one user)."""

    def __init__(self, path, synchronous):
        self.path = path
        self.synchronous = synchronous
        self._process = None

    def _start(self):
        import pushi

        root = os.path.dirname(os.path.dirname(os.path.abspath(pushi.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, self.path, self.synchronous],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def store(self, row_lists):
        """Stores the row lists; returns one error (or None) per list, once
        committed.  Blocks (with the GIL released while it waits)."""
        if self._process is None or self._process.poll() is not None:
            self._start()
        try:
            _write_frame(self._process.stdin, row_lists)
            answer = _read_frame(self._process.stdout)
        except OSError:
            answer = None
        if answer is None:
            # the child died: its batch may or may not be committed, so the
            # callers hear an error; the next batch starts a new child
            self.close()
            error = sqlite3.OperationalError("events writer process failed")
            return [error] * len(row_lists)
        return [None if failure is None else _error(*failure) for failure in answer]

    def close(self):
        """Ends the child once it has committed what it was sent."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def _error(name, message):
    kind = getattr(sqlite3, name, None)
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        kind = sqlite3.Error
    return kind(message)


if __name__ == "__main__":
    main()
