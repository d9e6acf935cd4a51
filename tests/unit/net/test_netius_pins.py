"""What Pushi relies on of netius's (and Appier's) private parts, pinned:
each exists and has the shape ``net/wire.py`` (or ``app/app.py``) uses, so
a netius or Appier upgrade that changes one fails here first, by name,
rather than somewhere downstream as a loop that no longer wakes on time or
reads a socket unfairly.

Every access to a netius underscore attribute lives in ``net/wire.py``
behind a named function (``next_delay``, ``loop_turn``); a test below
keeps it that way."""

import os
import re
import ssl
import threading
import time

import appier
import netius
import pytest

from pushi.base.config import Config
from pushi.base.state import State
from pushi.net import wire

from support import SRC as SOURCES
from support import free_port

SRC = os.path.join(SOURCES, "pushi")


@pytest.fixture
def base():
    """A netius base that is not running: its delays wait, unrun."""
    server = netius.StreamServer()
    yield server
    server.cleanup()


@pytest.fixture
def start_state(tmp_path):
    """A State running its loop on an ephemeral port."""
    state = State(Config(server_port=free_port(), data_dir=str(tmp_path)))
    state.start_server(http=False)
    yield state
    state.stop()


def noop():
    pass


# next_delay: _delayed, _delayed_n, _notified


def test_a_base_with_nothing_waiting_has_no_next_delay(base):
    assert isinstance(base._delayed, list) and base._delayed == []
    assert isinstance(base._delayed_n, list) and base._delayed_n == []
    assert isinstance(base._notified, list) and base._notified == []
    assert wire.next_delay(base) is None


def test_a_timed_delay_heads_the_heap_with_its_target_time(base):
    """``_delayed`` is a heap whose entries start with their target, a
    ``time.time()``: the earliest is at index 0."""
    now = time.time()
    base.delay(noop, timeout=30)
    base.delay(noop, timeout=5)
    assert now + 4 < base._delayed[0][0] < now + 6
    assert now + 4 < wire.next_delay(base) < now + 6


def test_a_delay_for_the_next_turn_is_due_now(base):
    """Without a timeout a delay's target is 0 (-1 when ``immediately``):
    due at the next turn."""
    base.delay(noop, timeout=30)
    base.delay(noop)
    assert base._delayed[0][0] in (0, -1, None)
    assert wire.next_delay(base) == 0
    other = netius.StreamServer()
    try:
        other.delay(noop, immediately=True)
        assert wire.next_delay(other) <= time.time()
    finally:
        other.cleanup()


def test_a_delay_from_another_thread_waits_in_delayed_n(base):
    """``delay_s`` (another thread's delay) is merged at the next turn:
    until then it is only in ``_delayed_n``."""
    thread = threading.Thread(target=lambda: base.delay_s(noop, wakeup=False))
    thread.start()
    thread.join()
    assert len(base._delayed_n) == 1 and base._delayed == []
    assert wire.next_delay(base) == 0


def test_a_notified_event_waits_in_notified(base):
    base._notified.append(("event", None))
    assert wire.next_delay(base) == 0
    del base._notified[:]
    thread = threading.Thread(target=lambda: base.notify("event"))
    thread.start()
    thread.join()
    assert base._notified == [("event", None)]


# loop_turn: _lid


def test_the_loop_turn_is_an_int_that_changes_each_turn(start_state):
    """``_lid`` counts the loop's turns (``FairReads`` gives each socket a
    new budget when it changes): two pieces of work run a turn apart see
    two values, two in the same turn one."""
    state = start_state
    server = state.server
    assert isinstance(wire.loop_turn(server), int)
    seen = []
    done = threading.Event()

    def first():
        seen.append(wire.loop_turn(server))
        seen.append(wire.loop_turn(server))
        state.schedule(second)

    def second():
        seen.append(wire.loop_turn(server))
        done.set()

    state.call_soon(first)
    assert done.wait(5)
    assert seen[0] == seen[1] != seen[2]


# what else of netius's insides wire.py and capacity.py take as given


def test_netius_keeps_its_ssl_error_lists_where_capacity_imports_them():
    from netius.base.common import SSL_SILENT_ERRORS, SSL_VALID_ERRORS

    assert ssl.SSL_ERROR_EOF in SSL_SILENT_ERRORS
    assert ssl.SSL_ERROR_WANT_READ in SSL_VALID_ERRORS


def test_netius_calls_a_watched_sockets_callbacks_with_the_event_name():
    """``watch_read``/``watch_write`` keep their work as a callback in the
    server's ``callbacks_m`` (``add_callback``); netius's stream server
    calls it with ``"read"`` or ``"write"`` and the socket."""
    import inspect

    source = inspect.getsource(netius.StreamServer.on_read)
    assert 'callback("read", _socket)' in source
    source = inspect.getsource(netius.StreamServer.on_write)
    assert 'callback("write", _socket)' in source
    server = netius.StreamServer()
    try:
        server.add_callback("socket", noop)
        assert server.callbacks_m["socket"] == [noop]
    finally:
        server.cleanup()


def test_a_connection_of_ours_has_every_attribute_netius_gives_one():
    """``wire.Connection.__init__`` is netius's, but for what it makes on
    first use (the queues, the id, the locks) and the immutable values its
    class gives: a netius upgrade that sets another attribute, or another
    value, fails here."""
    server = netius.StreamServer()
    try:
        arguments = dict(owner=server, socket=None, address=("127.0.0.1", 1))
        theirs = vars(netius.Connection(**arguments))
        ours = wire.Connection(**arguments)
        made = {"starters", "pending", "restored", "id", "pending_lock"}
        made.add("restored_lock")
        assert made <= set(theirs)
        # netius's five, then Pushi's own and wready, set by every socket
        assert list(vars(ours)) == [
            "events",
            "status",
            "owner",
            "socket",
            "address",
            "link",
            "admitted",
            "wready",
            "writes_watched",
            "turn",
            "budget",
            "quota",
        ]
        for name in set(theirs) - made:
            assert getattr(ours, name) == theirs[name], name
            if name not in vars(ours):
                assert isinstance(theirs[name], (bool, int, type(None))), name
        for name, value in (
            ("datagram", True),
            ("ssl", True),
            ("max_pending", 10),
            ("min_pending", 5),
        ):
            given = wire.Connection(**arguments, **{name: value})
            assert getattr(given, name) == value
            assert getattr(ours, name) == theirs[name]
        assert len(ours.id) == len(theirs["id"]) and ours.id == ours.id
        assert type(ours.pending_lock) is type(theirs["pending_lock"])
        assert ours.pending_lock is ours.pending_lock
        assert ours.restored_lock is not ours.pending_lock
        assert not ours.pending and not ours.restored and not ours.starters
    finally:
        server.cleanup()


def _calls(name):
    """The source of netius's ``AbstractBase.<name>`` and the names it
    calls."""
    import inspect

    from netius.base.common import AbstractBase

    source = inspect.getsource(getattr(AbstractBase, name))
    return source, set(re.findall(r"(\w+)\(", source))


def _holds(function, *lines):
    """Fails unless the source of netius's ``function`` holds each of
    ``lines``."""
    import inspect

    source = inspect.getsource(function)
    for line in lines:
        assert line in source, (function.__qualname__, line)


def test_netius_on_connection_c_only_logs_and_triggers():
    """``QuietDebug.on_connection_c`` skips netius's when debug is off and
    only triggers ``connection_c``: netius's does nothing else."""
    source, calls = _calls("on_connection_c")
    assert calls == {
        "on_connection_c",
        "debug",
        "len",
        "trigger",
    }
    assert 'self.trigger("connection_c", self, connection)' in source


def test_netius_on_connection_d_only_logs_records_and_triggers():
    """``QuietDebug.on_connection_d`` skips netius's when debug and its
    diagnostics (``wire.diagnosing``) are off and only triggers
    ``connection_d``: netius's does nothing else."""
    source, calls = _calls("on_connection_d")
    assert calls == {
        "on_connection_d",
        "debug",
        "len",
        "record_closed",
        "trigger",
    }
    assert "if is_diag or AbstractBase._DIAG_INSTANCE:" in source
    assert 'self.trigger("connection_d", self, connection)' in source
    assert wire.diagnosing() is False


def test_netius_uses_a_servers_connections_only_as_wire_connections_allows():
    """The WebSocket port keeps its open connections in a
    ``wire.Connections`` rather than netius's list: every use netius's
    base makes of a server's ``connections`` is one it supports (a new
    one, such as an index, fails here)."""
    import copy

    from netius.base import common

    base = os.path.dirname(common.__file__)
    uses = set()
    for name in sorted(os.listdir(base)):
        if name.endswith(".py"):
            with open(os.path.join(base, name), encoding="utf-8") as file:
                for line in file:
                    if re.search(r"\.connections\b", line):
                        uses.add(line.strip())
    assert uses == {
        "connections = copy.copy(self.connections)",
        "connections=len(self.connections),",
        "del self.connections[:]",
        "for _connection in base.connections:",
        "for _connection in self.connections:",
        "for connection in self.connections:",
        "if self in owner.connections:",
        "len(connection.owner.connections),",
        "owner.connections.append(self)",
        "owner.connections.remove(self)",
        "self.connections = []",
    }
    connections = wire.Connections()
    first, second, third = object(), object(), object()
    for connection in (first, second, third):
        connections.append(connection)
    assert second in connections and len(connections) == 3
    connections.remove(second)
    assert second not in connections
    with pytest.raises(ValueError):
        connections.remove(second)
    # in the order they opened, and iterable while they close
    assert list(connections) == [first, third]
    assert copy.copy(connections) == [first, third]
    for connection in connections:
        connections.remove(connection)
    assert not connections and len(connections) == 0
    connections.append(first)
    del connections[:]
    assert list(connections) == []


def test_netius_read_and_write_handlers_do_what_fair_reads_does_for_a_plain_socket():
    """``FairReads`` handles a plain socket's read and write events itself
    (``_read_plain``, ``on_write``), as netius's stream server does: its
    read loop reads chunks of ``CHUNK_SIZE`` until the socket is empty,
    closes at the peer's end with ``REASON_CLIENT_EOF``, and sorts socket
    errors into silent and valid ones; its write handler only sends what
    is queued; on epoll (edge-triggered) ``remove_write`` does nothing."""
    import inspect

    from netius.base import conn, poll

    _holds(
        netius.StreamServer.on_read,
        "if self._pending(connection):",
        "data = connection.recv(CHUNK_SIZE)",
        "self.on_data(connection, data)",
        "connection.close(reason=REASON_CLIENT_EOF)",
        "if not connection.status == OPEN:",
        "if not connection.renable == True:",
        "if not connection.socket == _socket:",
        "if error_v in SILENT_ERRORS:",
        "self.on_expected(error, connection)",
        "elif not error_v in VALID_ERRORS:",
        "self.on_exception(error, connection)",
    )
    assert conn.CHUNK_SIZE == 16384
    _holds(netius.StreamServer.on_write, "connection._send()", "if not connection:")
    assert poll.EpollPoll.is_edge(None) is True
    assert inspect.getsource(poll.EpollPoll.unsub_write).strip().endswith("pass")
    _holds(netius.Connection.remove_write, "self.owner.unsub_write(self.socket)")


def test_appier_still_calls_the_hooks_the_app_overrides():
    """``PushiApp`` overrides Appier's ``_load_logging``,
    ``_load_handlers`` and ``_print_welcome`` (one log format, no handlers
    of Appier's, the welcome line): each is still Appier's to call."""
    import inspect

    from pushi.app.app import PushiApp

    source = inspect.getsource(appier.App)
    for name in ("_load_logging", "_load_handlers", "_print_welcome"):
        assert callable(getattr(appier.App, name)), name
        assert "self.%s(" % name in source, name
        assert name in vars(PushiApp), name


def test_netius_epoll_registers_a_socket_as_plain_accept_does_for_reads_only():
    """``PlainAccept`` registers a socket with netius's epoll poll as its
    ``sub_read`` does (the same maps, the same events but writability),
    so that its ``unsub_all`` lets it go; netius asks a server whether it
    watches a socket's writability (``is_sub_write``) before it asks to
    (``sub_write``), only as a write does not go out whole
    (``Connection.ensure_write``), and its epoll's ``sub_write`` does
    nothing (every socket it registers is watched for both)."""
    import inspect
    import select
    import socket

    from netius.base import conn, poll

    _holds(
        poll.EpollPoll.sub_read,
        "self.fd_m[socket_fd] = socket",
        "self.read_o[socket] = owner",
        "self.write_o[socket] = owner",
        "self.error_o[socket] = owner",
        "select.EPOLLIN",
        "| select.EPOLLOUT",
        "| select.EPOLLERR",
        "| select.EPOLLHUP",
        "| select.EPOLLET,",
    )
    assert wire._READS_AND_WRITES == (
        select.EPOLLIN
        | select.EPOLLOUT
        | select.EPOLLERR
        | select.EPOLLHUP
        | select.EPOLLET
    )
    assert inspect.getsource(poll.EpollPoll.sub_write).strip().endswith("pass")
    _holds(poll.EpollPoll.is_sub_write, "return socket in self.write_o")
    _holds(
        conn.BaseConnection.ensure_write,
        "if self.owner.is_sub_write(self.socket):",
        "self.owner.sub_write(self.socket)",
    )
    # what wire's registration leaves, netius's unsub_all takes away
    epoll = poll.EpollPoll()
    epoll.open()
    first, second = socket.socketpair()
    try:
        owner = object()
        wire._watch_reads(epoll, first, owner)
        assert epoll.fd_m == {first.fileno(): first}
        assert epoll.read_o == epoll.write_o == epoll.error_o == {first: owner}
        wire._watch_writes(epoll, first)
        assert epoll.epoll.poll(0) == [(first.fileno(), select.EPOLLOUT)]
        epoll.unsub_all(first)
        assert not (epoll.fd_m or epoll.read_o or epoll.write_o or epoll.error_o)
    finally:
        epoll.close()
        first.close()
        second.close()


def test_netius_private_attributes_are_touched_in_wire_only():
    """The netius attributes pinned here are read in ``net/wire.py``
    only; anywhere else goes through its functions."""
    private = re.compile(r"\._(lid|delayed|delayed_n|delayed_o|notified|did)\b")
    offenders = []
    for root, _dirs, files in os.walk(SRC):
        for name in files:
            path = os.path.join(root, name)
            if not name.endswith(".py") or os.path.samefile(path, wire.__file__):
                continue
            with open(path, encoding="utf-8") as file:
                for number, line in enumerate(file, 1):
                    if private.search(line):
                        offenders.append("%s:%d" % (path, number))
    assert offenders == []
