"""What both servers of the loop need of netius: ports of their own, a loop
whose timers are on time, a connection class of their own, reads shared
fairly between sockets, a write that skips netius's per-write machinery,
and debug records dropped before they are built."""

import collections
import errno
import logging
import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import netius
from netius.base import common as netius_common
from netius.base import conn as netius_conn
from netius.base import poll as netius_poll

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
"""The one format of the process's log lines: Pushi's, Appier's (logger
``pushi``) and netius's (named ``netius``: its loggers' own names end in a
random id)."""


# The mixins below extend a netius server's methods: their super() calls
# reach the host class's, which mypy cannot see from the mixin alone (hence
# their ``type: ignore[misc]``); the attributes they read are declared.


class OneLogFormat:
    """A netius server mixin: its own log handler (netius's loggers do not
    reach the root logger) writes in ``LOG_FORMAT``, not netius's."""

    def load_logging(self, level=logging.DEBUG, format=None, unique=False):
        super().load_logging(  # type: ignore[misc]
            level, LOG_FORMAT.replace("%(name)s", "netius"), unique
        )


class QuietDebug:
    """A netius server mixin.  Netius builds and routes every debug record
    (four per connection: created, counted, deleted, counted) before its
    logger drops it: loop time spent on nothing, most of all when many
    sockets connect or close at once.  Here the level is checked first."""

    # the netius server's, which the host class provides
    logger: logging.Logger | None

    def debug(self, object, *args, **kwargs):
        if self.logger is not None and self.logger.isEnabledFor(logging.DEBUG):
            super().debug(object, *args, **kwargs)  # type: ignore[misc]

    def on_connection_c(self, connection):
        # netius's logs the connection's id (made for it, see ``_Made``)
        # before its debug drops the record: without them, its trigger
        if self.logger is not None and self.logger.isEnabledFor(logging.DEBUG):
            super().on_connection_c(connection)  # type: ignore[misc]
        else:
            self.trigger("connection_c", self, connection)  # type: ignore[attr-defined]

    def on_connection_d(self, connection):
        # the same as a connection closes; netius's also keeps it for its
        # diagnostics, when they are on
        if (
            self.logger is not None and self.logger.isEnabledFor(logging.DEBUG)
        ) or diagnosing():
            super().on_connection_d(connection)  # type: ignore[misc]
        else:
            self.trigger("connection_d", self, connection)  # type: ignore[attr-defined]


class OwnPort:
    """A netius server mixin.  Netius sets ``SO_REUSEPORT`` on the sockets
    it listens on, so a second Pushi started on ports already served would
    bind them too, and the kernel would split the new connections between
    two processes that know nothing of each other's sockets: a publish to
    one would miss the subscribers of the other.  Cleared here, the second
    one fails to bind (address in use).

    A worker of ``PUSHI_WORKERS`` sets ``reuse_port``: the workers share
    each port on purpose, and their supervisor keeps another Pushi out
    (``base/workers.py``)."""

    reuse_port = False

    def socket_tcp(self, *args, **kwargs):
        _socket = super().socket_tcp(*args, **kwargs)  # type: ignore[misc]
        if hasattr(socket, "SO_REUSEPORT"):
            _socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEPORT, 1 if self.reuse_port else 0
            )
        return _socket


# Linux gives an accepted TCP socket its listening socket's keep-alive and
# no-delay options (elsewhere, netius sets them on each socket)
_INHERITS_OPTIONS = sys.platform.startswith("linux")


class PlainAccept:
    """A netius stream server mixin: a plain TCP socket is taken in as
    netius's ``on_socket_c`` takes it, less what it repeats per socket: the
    keep-alive and no-delay options that its listening socket has
    (netius's ``socket_tcp`` sets both) and that the accepted socket
    inherits, its family read as an enum, the check against an
    allowed-address list that is empty.  A TLS socket, an allowed list or
    socket buffer sizes go through netius's.

    On netius's epoll, such a socket is polled for reads only, until a
    write does not go out whole (``_open_reading``)."""

    # the netius stream server's, which the host class provides
    ssl: Any
    allowed: list[str]
    receive_buffer_c: int | None
    send_buffer_c: int | None
    build_connection: Callable[..., Any]
    poll: Any
    connections: Any
    connections_m: dict[Any, Any]
    new_connection: Callable[..., Any]

    def on_socket_c(self, socket_c, address):
        if (
            self.ssl
            or self.allowed
            or self.receive_buffer_c
            or self.send_buffer_c
            or not _INHERITS_OPTIONS
        ):
            super().on_socket_c(socket_c, address)  # type: ignore[misc]
            return
        socket_c.setblocking(False)
        # netius's also runs the connection's starters (a plain socket has
        # none) and reads what it holds already (nothing, before a read)
        connection = self.build_connection(socket_c, address, ssl=False)
        if connection.__class__ is Connection and _epoll(self.poll):
            self._open_reading(connection)
        else:
            connection.open()

    def _open_reading(self, connection):
        """Netius's ``Connection.open`` for a plain socket of ours, but for
        what the poll watches: its reads only, not its writability too,
        which netius's epoll would report once the socket is registered,
        then again with every read event, each a call of the write handler
        with nothing to write (writes go straight to the socket).  The
        socket is new, so writable (``wready``); netius asks to watch its
        writability (``sub_write``) once a write does not go out whole,
        and from then on it is."""
        _socket = connection.socket
        _watch_reads(self.poll, _socket, self)
        self.connections.append(connection)
        self.connections_m[_socket] = connection
        connection.status = netius.OPEN
        connection.wready = True
        connection.writes_watched = False
        self.new_connection(connection)
        connection.trigger("open", connection)

    def is_sub_write(self, _socket):
        # netius's reads the poll's map, which holds such a socket too
        if self._reads_only(_socket):
            return False
        return super().is_sub_write(_socket)  # type: ignore[misc]

    def sub_write(self, _socket):
        if self._reads_only(_socket):
            self.connections_m[_socket].writes_watched = True
            _watch_writes(self.poll, _socket)
            return None
        return super().sub_write(_socket)  # type: ignore[misc]

    def _reads_only(self, _socket):
        connection = self.connections_m.get(_socket)
        return connection is not None and not connection.writes_watched


class Loop(netius.Container):
    """Netius's loop (each turn: its bases' ticks, which run the delays
    that are due, then one poll), with two changes.

    The poll wakes for the next delay.  Netius polls with a fixed timeout
    (a quarter second), so a delay due in a millisecond would wait for the
    next socket event or that timeout.

    Work for the next turn (``soon``) skips netius's delays: each of those
    is merged from a locked list and pushed on two heaps of Python-compared
    entries, which makes a turn that runs one piece of work markedly
    dearer (see docs/benchmarks.md).  ``soon`` is a deque, drained after the
    delays, that any thread may append to (then wake the poll with the
    owner's netius ``wakeup``); its work handles its own failures (the
    owner's ``run``)."""

    def __init__(self, *args, **kwargs):
        netius.Container.__init__(self, *args, **kwargs)
        self.soon: collections.deque[Callable[[], Any]] = collections.deque()

    def ticks(self):
        netius.Container.ticks(self)
        soon = self.soon
        # what is added meanwhile waits for the next turn
        for _ in range(len(soon)):
            soon.popleft()()
        self.poll.timeout = 0 if soon else self.next_timeout()

    def next_timeout(self):
        """Seconds until the earliest delay of any base is due (0 when one
        waits for the next turn), at most the poll's usual timeout."""
        timeout = self.poll_timeout
        now = time.time()
        for base in self.bases:
            target = next_delay(base)
            if target is not None:
                if target <= now:
                    return 0
                timeout = min(timeout, target - now)
        return timeout


# What Pushi relies on of netius's private attributes, in one place: each
# is pinned by tests/test_netius_pins.py, so that a netius upgrade that
# changes one fails there first.


def next_delay(base):
    """When the earliest delay of the netius ``base`` is due, as a
    ``time.time()`` (0 when work waits for the next turn), or None when
    none waits.  Reads netius's ``_notified`` (events for the next turn),
    ``_delayed_n`` (delays added from other threads, merged at the next
    turn) and ``_delayed`` (the heap of ``(target, ...)`` entries, target
    0, -1 or None for the next turn, else a ``time.time()``)."""
    if base._notified or base._delayed_n:
        return 0
    if base._delayed:
        return base._delayed[0][0] or 0
    return None


def diagnosing():
    """Whether netius keeps closed connections for its diagnostics (its
    ``DIAG`` setting, or a diagnostics instance started): reads its
    ``is_diag`` and ``AbstractBase._DIAG_INSTANCE``."""
    return bool(netius_common.is_diag or netius_common.AbstractBase._DIAG_INSTANCE)


def _epoll(poll):
    """Whether ``poll`` is netius's epoll poll (edge-triggered, its
    registrations in ``fd_m``, ``read_o``, ``write_o``, ``error_o``)."""
    return type(poll) is netius_poll.EpollPoll


# what netius's epoll ``sub_read`` registers a socket for, and the same
# without writability
_READS_AND_WRITES = (
    select.EPOLLIN
    | select.EPOLLOUT
    | select.EPOLLERR
    | select.EPOLLHUP
    | select.EPOLLET
)
_READS = _READS_AND_WRITES & ~select.EPOLLOUT


def _watch_reads(poll, _socket, owner):
    """Netius's epoll ``sub_read`` of a socket not yet registered, for
    reads only: its maps filled as that fills them (``unsub_all`` undoes
    both)."""
    fd = _socket.fileno()
    poll.fd_m[fd] = _socket
    poll.read_o[_socket] = owner
    poll.write_o[_socket] = owner
    poll.error_o[_socket] = owner
    poll.epoll.register(fd, _READS)


def _watch_writes(poll, _socket):
    """Adds writability to what a ``_watch_reads`` socket is registered
    for: the poll reports it at its next turn if it is writable already,
    else once it is."""
    poll.epoll.modify(_socket.fileno(), _READS_AND_WRITES)


def loop_turn(base):
    """The number of the netius ``base``'s current loop turn (its
    ``_lid``, one more at each turn): what tells a new turn from the
    current one."""
    return base._lid


READ_BUDGET = 65536
""" Bytes read from one socket in one loop turn (a whole WebSocket message
of the largest size, or a REST request with a 64 KB body) """


DISCARD_CHUNKS = 16
""" Chunks of ``READ_BUDGET`` bytes a closing socket reads away at most
(a peer that sends more than that meanwhile is reset) """


class _NoQueue(tuple):
    """What a connection's queue reads as until something is queued: empty
    (the reads of an empty ``deque`` work on it, the writes go through the
    connection's methods, which make the queue first).  An empty tuple:
    its truth, length and iteration cost no call of Python's."""

    __slots__ = ()

    def clear(self):
        pass

    def pop(self):
        raise IndexError("pop from an empty deque")

    popleft = pop

    def remove(self, value):
        raise ValueError("deque.remove(x): x not in deque")


_NO_QUEUE = _NoQueue()


def _queue(connection, name):
    """One of netius's per-connection queues (``pending``, ``restored``,
    ``starters``), made on its first write: each ``deque`` takes a block
    of 64 slots when made, and most sockets never queue anything (writes
    go straight to the socket, reads are not restored, plain sockets have
    no starter).  Until then the connection's class gives ``_NO_QUEUE``
    (read as a plain attribute: no call per read)."""
    queue = connection.__dict__.get(name)
    if queue is None:
        queue = connection.__dict__[name] = collections.deque()
    return queue


class _Made:
    """A connection attribute made on its first read (then kept in the
    instance's ``__dict__``, which reads find first): netius makes a
    uuid4 id and two locks for each connection, which Pushi's loop-thread
    connections use only in logs and lookups by id (the id), or never (the
    locks)."""

    def __init__(self, make):
        self.make = make

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.make()
        return value


class Connection(netius.Connection):
    """A netius connection of ours.  Netius calls a server's own
    ``on_connection_d`` only for connections of a subclass (for a plain
    ``Connection`` it calls the base hook), and that hook is where a socket
    that vanished without a goodbye is forgotten.

    Its reads are metered for ``FairReads``: ``budget`` bytes may still be
    read this turn, ``quota`` messages (or requests) may still be handled;
    ``held`` stops reading until the protocol above releases it, and
    ``resuming`` says a read of it is scheduled for the next turn.  The
    bytes read are added to the server's ``bytes_received``.  It reads away
    what is left unread as it closes (see ``_discard_unread``).

    Its three queues (data to send, data to read again, starters) are made
    on their first write (``_queue``), its id and locks on their first
    read (``_Made``): the memory and setup time of an idle socket."""

    budget = READ_BUDGET
    quota = 0
    # whether the poll reports the socket writable (``PlainAccept``)
    writes_watched = True
    # the loop turn (``loop_turn``) the budget and quota are for
    turn = -1
    held = False
    resuming = False

    pending: Any = _NO_QUEUE
    restored: Any = _NO_QUEUE
    starters: Any = _NO_QUEUE

    # what netius's __init__ sets on every connection, immutable values
    # read from the class until one is set: fewer stores for each socket,
    # and a smaller instance dict for its life
    connecting = False
    upgrading = False
    datagram = False
    ssl = False
    ssl_host = None
    ssl_fingerprint = None
    ssl_handshake = False
    ssl_connecting = False
    ssl_dump = False
    max_pending = -1
    min_pending = -1
    renable = True
    wready = False
    pending_s = 0
    restored_s = 0
    close_reason = None
    close_error = None
    close_timestamp = None
    _starter = None

    id = _Made(lambda: str(uuid.uuid4()))
    pending_lock = _Made(threading.RLock)
    restored_lock = _Made(threading.RLock)

    def __init__(
        self,
        owner=None,
        socket=None,
        address=None,
        datagram=False,
        ssl=False,
        max_pending=-1,
        min_pending=-1,
    ):
        # netius's BaseConnection.__init__ (and its Observable's), but for
        # the queues, the id and the locks, made when first used, and the
        # constants the class gives, set on the instance once one changes
        self.events = {}
        self.status = netius.PENDING
        self.owner = owner
        self.socket = socket
        self.address = address
        # what every socket sets later, set first and in one order: the
        # first sockets then size the class's shared key table for all of
        # them, and no later attribute turns a socket's attributes into a
        # dict of its own (about 460 bytes each)
        self.link = None
        self.admitted = None
        self.wready = False
        self.writes_watched = True
        self.turn = -1
        self.budget = READ_BUDGET
        self.quota = 0
        if datagram:
            self.datagram = datagram
        if ssl:
            self.ssl = ssl
        if max_pending != -1:
            self.max_pending = max_pending
        if min_pending != -1:
            self.min_pending = min_pending

    def pend(self, data, back=True):
        _queue(self, "pending")
        netius.Connection.pend(self, data, back=back)

    def _send(self):
        # every new socket is reported writable at once (the poll watches
        # writability from the start): with nothing queued, netius's would
        # only take the pending lock, and so make it
        if not self.pending and not self.connecting:
            self.wready = True
            self.remove_write()
            return
        netius.Connection._send(self)

    def restore(self, data, back=True):
        _queue(self, "restored")
        netius.Connection.restore(self, data, back=back)

    def add_starter(self, starter, back=True):
        _queue(self, "starters")
        netius.Connection.add_starter(self, starter, back=back)

    def recv(self, *args, **kwargs):
        if self.spent():
            # what netius's read loop takes for an empty socket
            raise BlockingIOError(errno.EAGAIN, "read budget spent")
        data = netius.Connection.recv(self, *args, **kwargs)
        self.took(data)
        return data

    def spent(self):
        """Whether this turn reads no more of it: held, or its budget
        spent (then it is read again at the next turn)."""
        if self.held:
            return True
        if self.budget <= 0:
            self.owner.resume_reads(self)
            return True
        return False

    def took(self, data):
        """Counts ``data`` read from it against the turn's budget."""
        self.budget -= len(data)
        self.owner.bytes_received += len(data)

    def close(self, flush=False, destroy=True, reason=None, error=None):
        # a peer's end (netius's reason for it) leaves nothing unread
        if (
            self.status == netius.OPEN
            and not flush
            and reason != netius_conn.REASON_CLIENT_EOF
        ):
            self._discard_unread()
        return netius.Connection.close(self, flush, destroy, reason, error)

    def _discard_unread(self):
        """Reads away what the peer sent and nobody read (a held socket's
        bytes wait in the kernel): a socket closed with bytes unread is
        reset, and the kernel drops what it has not sent yet, the last
        frames and the close frame among them."""
        for _ in range(DISCARD_CHUNKS):
            try:
                if not self.socket.recv(READ_BUDGET):
                    return
            except (OSError, ValueError):
                # nothing more now, or a socket (or TLS layer) already down
                return


class Connections:
    """A server's open connections in the order they opened, as netius
    keeps them in its ``connections`` list (``append``, ``remove``, ``in``,
    ``len``, iteration, ``copy.copy``, ``del [:]``), each operation in
    constant time: netius checks and removes a closing connection with a
    list's scan, so a port with tens of thousands of sockets would scan
    thousands of entries at each close.  Iterating takes a snapshot (a
    connection may close meanwhile)."""

    __slots__ = ("_items",)

    def __init__(self):
        self._items: dict[Any, None] = {}

    def append(self, connection):
        self._items[connection] = None

    def remove(self, connection):
        try:
            del self._items[connection]
        except KeyError:
            raise ValueError("Connections.remove(x): x not in it") from None

    def __contains__(self, connection):
        return connection in self._items

    def __len__(self):
        return len(self._items)

    def __bool__(self):
        return bool(self._items)

    def __iter__(self):
        return iter(list(self._items))

    def __copy__(self):
        return list(self._items)

    def __delitem__(self, index):
        if index != slice(None):
            raise TypeError("only all of it: del connections[:]")
        self._items.clear()


def _ours(server, connection, _socket):
    """Whether ``connection`` is an open plain (not TLS) socket of ours
    that no callback watches: netius's read and write handlers would
    handle it as they handle any."""
    return (
        connection.__class__ is Connection
        and connection.status == netius.OPEN
        and not connection.ssl
        and _socket not in server.callbacks_m
    )


def _plain(server, connection, _socket):
    """Whether netius's read handler would only read ``connection``
    (``_ours``): its reads enabled, nothing restored to it to read again,
    no starter waiting."""
    return (
        _ours(server, connection, _socket)
        and connection.renable
        and not connection.restored_s
        and connection._starter is None
        and not connection.starters
    )


_TCP_INFO = getattr(socket, "TCP_INFO", None)
# the first byte of Linux's struct tcp_info, its state, while no FIN came
_ESTABLISHED = b"\x01"


def _drained(_socket):
    """Whether a socket that a read has just emptied (it gave less than
    asked for) has nothing more to read: its peer's end has not come (its
    TCP state is still ESTABLISHED).  Whatever comes after the read raises
    a new event of the edge-triggered poll; the peer's end that came
    before it would not, and is read by one more ``recv``.  That ``recv``
    of an empty socket is what this spares: its ``BlockingIOError``, made
    and caught, costs more than the ``getsockopt``."""
    if _TCP_INFO is None:
        return False
    try:
        return _socket.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 1) == _ESTABLISHED
    except OSError:
        # not TCP
        return False


class FairReads:
    """A netius stream server mixin: each loop turn, each socket is read
    for at most ``READ_BUDGET`` bytes and handled for at most ``quota``
    messages, so a socket that keeps its buffer full gets its share of
    the loop, not all of it, while timers, other sockets and the other
    port go on.

    Netius reads a readable socket until it is empty, and its poll is
    edge-triggered: a socket left with bytes unread is not reported
    again.  So a socket cut short (its byte budget or its message quota
    spent) is read again at the next turn by ``resume_reads``, which also
    runs the protocol's ``on_reads_resumed(connection)`` first, to work off
    the messages it held back.  (Netius's own ``resume`` and ``on_resume``
    are its loop's, hence these names.)  A protocol stops reading a socket with
    ``hold_reads`` (the peer waits for an answer, or is being closed) and
    starts again with ``release_reads``."""

    quota = 64
    """ Messages (or requests) handled per socket per loop turn """

    # the netius stream server's, which the host class provides
    connections_m: dict[Any, Any]
    callbacks_m: dict[Any, Any]
    bytes_received: int
    poll: Any
    delay: Callable[..., Any]
    on_data: Callable[..., Any]
    on_expected: Callable[..., Any]
    on_exception: Callable[..., Any]

    def on_read(self, _socket):
        connection = self.connections_m.get(_socket, None)
        if connection is not None:
            if connection.held or connection.resuming:
                # the edge is noted: a release or the resume reads it all
                return
            self._new_turn(connection)
            if _plain(self, connection, _socket):
                self._read_plain(connection, _socket)
                return
        super().on_read(_socket)  # type: ignore[misc]

    def _read_plain(self, connection, _socket):
        """Netius's read loop (its stream server's ``on_read``) for a plain
        socket of ours (``_plain``), less the layers it passes for each
        ``recv`` (the connection's, its restored data, its starters) and
        for each failure: reads until the socket is empty (the poll is
        edge-triggered), the turn's budget is spent or the socket is
        held or closed; the peer's end closes it, as a socket error
        does.  A read shorter than asked for emptied the socket: the
        one after it is left out unless the peer's end came meanwhile
        (``_drained``)."""
        recv = _socket.recv
        try:
            while not connection.spent():
                try:
                    data = recv(netius_conn.CHUNK_SIZE)
                except (BlockingIOError, InterruptedError):
                    return
                if not data:
                    connection.close(reason=netius_conn.REASON_CLIENT_EOF)
                    return
                connection.took(data)
                self.on_data(connection, data)
                if (
                    connection.status != netius.OPEN
                    or not connection.renable
                    or connection.socket is not _socket
                ):
                    return
                if len(data) < netius_conn.CHUNK_SIZE and _drained(_socket):
                    return
        except OSError as error:
            # what netius's makes of a socket error
            if error.errno in netius_common.SILENT_ERRORS:
                self.on_expected(error, connection)
            elif error.errno not in netius_common.VALID_ERRORS:
                self.on_exception(error, connection)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exception:
            self.on_exception(exception, connection)

    def on_write(self, _socket):
        connection = self.connections_m.get(_socket, None)
        if connection is None:
            if _socket not in self.callbacks_m:
                # closed this turn, before its write event
                return
        elif (
            not connection.pending
            and not connection.connecting
            and _ours(self, connection, _socket)
        ):
            # every read event of a socket polled for writability is also
            # a write event: nothing queued, nothing to do but what
            # ``Connection._send`` does then (its ``remove_write`` a no-op
            # on an edge-triggered poll)
            connection.wready = True
            if not self.poll.is_edge():
                connection.remove_write()
            return
        super().on_write(_socket)  # type: ignore[misc]

    def _new_turn(self, connection):
        """A new turn's budget and quota, once a turn: a turn that resumed
        a socket may also see it readable."""
        turn = loop_turn(self)
        if connection.turn != turn:
            connection.turn = turn
            connection.budget = READ_BUDGET
            connection.quota = self.quota

    def resume_reads(self, connection):
        """Reads ``connection`` again at the next turn (once, however
        often it is asked this turn)."""
        if connection.resuming or connection.status != netius.OPEN:
            return
        connection.resuming = True
        # at the next turn: netius runs "immediately" delays added while it
        # runs its delays in the same turn, which would never end
        self.delay(lambda: self._resumed(connection))

    def _resumed(self, connection):
        connection.resuming = False
        if connection.status != netius.OPEN:
            return
        self._new_turn(connection)
        self.on_reads_resumed(connection)
        if not connection.held and connection.budget > 0:
            self.on_read(connection.socket)

    def on_reads_resumed(self, connection):
        """The protocol's turn to handle what it held back from the last
        one (it may spend the quota again, then it is resumed again)."""

    def spend(self, connection, count):
        """Counts ``count`` messages handled; False once the turn's quota
        is spent (then nothing more is read this turn, and the connection
        is resumed at the next)."""
        connection.quota -= count
        if connection.quota > 0:
            return True
        connection.budget = 0
        self.resume_reads(connection)
        return False

    def hold_reads(self, connection):
        """Reads nothing more from ``connection`` until ``release_reads``."""
        connection.held = True

    def release_reads(self, connection):
        if connection.held:
            connection.held = False
            self.resume_reads(connection)


def send(connection, data):
    """Writes ``data``: straight to the socket when nothing is queued before
    it, through netius's queue (which writes when the socket is ready) for
    what a short write leaves and on TLS.  False if the connection is
    closed or fails."""
    if connection.status != netius.OPEN:
        return False
    if not connection.pending and not connection.ssl:
        try:
            sent = connection.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            connection.close()
            return False
        if sent == len(data):
            return True
        data = data[sent:]
    connection.send(data, delay=False)
    return True


class _Watch:
    """What the loop runs for one watched socket (not a client's): its
    ``read`` work when it becomes readable, its ``write`` work when it
    becomes writable; kept as the socket's netius callback."""

    __slots__ = ("server", "read", "write")

    def __init__(self, server):
        self.server = server
        self.read = None
        self.write = None

    def __call__(self, event, _socket):
        # netius calls back for every event of the socket: with epoll a
        # socket is always polled for writability too, and reported
        # writable again each time its peer reads
        work = (
            self.read if event == "read" else self.write if event == "write" else None
        )
        if work is not None:
            self.server.run(work)


def _watch(server, socket):
    for callback in server.callbacks_m.get(socket, ()):
        if isinstance(callback, _Watch):
            return callback
    watch = _Watch(server)
    server.add_callback(socket, watch)
    return watch


def _let_go(server, socket, watch):
    if watch.read is None and watch.write is None:
        # all of it: netius's unsub_read leaves the socket registered for
        # writability, and its poll unregisters that (by then closed)
        # descriptor again when the loop stops
        server.unsub_all(socket)
        server.callbacks_m.pop(socket, None)


def watch_read(server, socket, work):
    """Runs ``work()`` on ``server``'s loop (as an entry point: its
    ``run``) whenever ``socket`` becomes readable.  ``socket`` is one of
    the process's own (a store's pipe, a Redis connection), non-blocking;
    the poll is edge-triggered, so ``work`` reads all there is.  Loop
    thread only, like ``unwatch_read``."""
    _watch(server, socket).read = work
    server.sub_read(socket)


def unwatch_read(server, socket):
    """Stops ``watch_read``; the socket is let go of entirely (it may be
    closed then) unless it is watched for writing."""
    watch = _watch(server, socket)
    watch.read = None
    if watch.write is not None:
        server.unsub_read(socket)
    _let_go(server, socket, watch)


def watch_write(server, socket, work):
    """Runs ``work()`` on ``server``'s loop once at its next turn, then
    whenever ``socket`` becomes writable again: for a non-blocking client
    socket whose send buffer filled (a short ``send``), ``work`` sends the
    rest and calls ``unwatch_write`` once nothing is left.  ``work`` may
    run when the socket has no room yet (it sends what it can, and the
    next edge calls it again).  Loop thread only."""
    watch = _watch(server, socket)
    watch.write = work
    # epoll polls a registered socket for both; other polls need asking
    server.sub_read(socket)
    server.sub_write(socket)
    # with an edge-triggered poll a socket already registered and
    # writable is not reported again: the first try is this one
    server.soon(lambda: watch.write is work and work())


def unwatch_write(server, socket):
    """Stops ``watch_write``; the socket is let go of entirely (it may be
    closed then) unless it is watched for reading."""
    watch = _watch(server, socket)
    watch.write = None
    server.unsub_write(socket)
    _let_go(server, socket, watch)


def unwatch(server, socket):
    """Stops ``watch_read`` and ``watch_write`` at once: the socket is let
    go of entirely (before it is closed)."""
    for callback in server.callbacks_m.get(socket, ()):
        if isinstance(callback, _Watch):
            callback.read = callback.write = None
    server.unsub_all(socket)
    server.callbacks_m.pop(socket, None)
