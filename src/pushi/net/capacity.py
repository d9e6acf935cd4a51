"""How many sockets each port may hold, and what happens beyond.

Every socket costs a file descriptor, and a process out of descriptors can
accept nothing: not a WebSocket, not a REST request (``/health``, a
publish), not a file of the store.  So the descriptors are shared out
(``plan``): the WebSocket port admits at most ``max_connections`` sockets
(and, optionally, ``max_per_address`` from one client address), the REST
port a share of the reserve, and the rest of the reserve stays for the
store, the log, webhooks and the loop itself.

Beyond its cap a port still accepts a few sockets (``max_refusing``; with a
cap per address, at most as many from one address at a time as it admits
from it, the others closed unanswered) to say why it turns them away: a
WebSocket gets its upgrade answered, then ``pusher:error`` 4100 and a close
with 4100 (reconnect with back-off), a REST request a 503.  When those are
all in use, or the system says the descriptors are exhausted, the port
stops accepting (``Admission``): the clients wait in the kernel's backlog
until a socket of the port closes (on the REST port, also until one has
idled long enough to be closed to make room), and one warning says so for
the whole episode, not one per socket.

Ownership: the counts are the loop thread's, like the sockets they count.
"""

import _socket
import errno
import logging
import os
import resource
import socket
import ssl
from collections.abc import Callable
from typing import Any

from netius.base.common import SSL_SILENT_ERRORS, SSL_VALID_ERRORS

from . import forwarded

logger = logging.getLogger("pushi.net")

RESERVE = 64
""" Descriptors kept out of the WebSocket port's share at least (or a
tenth of the limit, if more, up to ``MAX_RESERVE``) """

MAX_RESERVE = 1024
""" The reserve's ceiling: what the rest of the process opens (the REST
port's share, the store, the log, webhooks, Redis) does not grow with the
number of WebSocket sockets, so past ten thousand descriptors a tenth
would only take sockets away from the WebSocket port """

MAX_REFUSING = 256
""" Sockets a port holds at most to refuse them: each lives only until its
refusal is written, so a few hundred answer a storm at the pace it can be
answered, the rest waiting in the backlog """

ACCEPTS = 64
""" Sockets a port accepts in one loop turn: a storm of connections is
taken in at that pace, while the sockets already open are served """

PER_ADDRESS = "Over capacity: too many connections from this address"
""" Why a socket over ``max_per_address`` is refused (4100) """

RETRY = 1.0
""" Seconds between tries to accept again once the system said the
descriptors are exhausted (they may be freed by anything in the process) """

UNLIMITED = 1048576
""" What an unlimited descriptor limit is taken for """

_PROXIED = object()
""" What an admitted socket from a trusted proxy is counted under until its
upgrade names the client (``readmit``) """

_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
# a client that left while it waited in the backlog: the next one may not
_GONE = frozenset(
    (errno.ECONNABORTED, errno.ECONNRESET, errno.ENOTCONN, errno.EPROTO, errno.EPERM)
)


def raise_fd_limit():
    """Raises this process's soft limit of open files to its hard limit
    (what the system allows without privileges); returns ``(soft,
    hard)`` as they are afterwards, and logs them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            # an unlimited hard limit that the system will not give (macOS)
            try:
                wanted = (
                    max(soft, UNLIMITED) if soft != resource.RLIM_INFINITY else soft
                )
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            except (ValueError, OSError):
                pass
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    logger.info(
        "Open files: soft limit %s, hard limit %s", _number(soft), _number(hard)
    )
    return soft, hard


def fd_limit():
    """The soft limit of open files now (an unlimited one as ``UNLIMITED``)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED if soft == resource.RLIM_INFINITY else soft


def _number(limit):
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


class Plan:
    """The caps of both ports for a descriptor limit (see ``plan``)."""

    __slots__ = (
        "fd_limit",
        "reserve",
        "max_connections",
        "max_refusing",
        "max_per_address",
        "http_max_connections",
        "http_max_refusing",
        "clamped",
    )

    def __init__(self, **values):
        for name in self.__slots__:
            setattr(self, name, values[name])


def plan(limit, max_connections=None, max_per_address=None):
    """Shares ``limit`` descriptors out: a reserve (a tenth of the limit,
    ``RESERVE`` at least and ``MAX_RESERVE`` at most; half of a tiny
    limit) for the REST port, the store, the log and the loop; the rest to
    the WebSocket port, ``max_refusing`` of it (a sixteenth,
    ``MAX_REFUSING`` at most) for sockets being refused.
    ``max_connections`` (the operator's) lowers the WebSocket cap, never
    raises it past what the descriptors allow (``clamped`` then says so).
    The REST port gets a quarter of the reserve (16 at least), an eighth
    of that again to refuse with."""
    reserve = min(max(RESERVE, min(MAX_RESERVE, limit // 10)), limit // 2)
    budget = limit - reserve
    refusing = max(2, min(MAX_REFUSING, budget // 16))
    derived = max(1, budget - refusing)
    clamped = max_connections is not None and max_connections > derived
    http_max = min(max(16, reserve // 4), reserve // 2)
    return Plan(
        fd_limit=limit,
        reserve=reserve,
        max_connections=(
            derived if max_connections is None else min(max_connections, derived)
        ),
        max_refusing=refusing,
        max_per_address=max_per_address,
        http_max_connections=http_max,
        http_max_refusing=max(2, http_max // 8),
        clamped=clamped,
    )


def _plain_accept(listener):
    """``listener.accept`` for a plain (not TLS) listening socket, less
    what Python's costs per socket: it reads the listener's family and
    type (as enums) for every socket, here once; and it wraps the
    descriptor in ``socket.socket``, a Python layer over the C socket
    (``_socket.socket``) for what nothing here uses (``makefile``'s
    reference count, which its ``close`` checks, weak references, the
    enum family and type), at the cost of a Python ``__init__`` and
    ``close`` per socket and of an object the garbage collector tracks.
    The C socket is what is taken in.  None for a TLS listener (its
    ``accept`` wraps the socket)."""
    if type(listener) is not socket.socket:
        return None
    family, kind, proto = int(listener.family), int(listener.type), listener.proto

    def accept():
        # Python's, for a non-blocking listener, less its wrapper
        fd, address = listener._accept()  # type: ignore[attr-defined]
        try:
            return _socket.socket(family, kind, proto, fd), address
        except BaseException:
            os.close(fd)
            raise

    return accept


class Admission:
    """A netius stream server mixin: an accept loop that admits at most
    ``max_connections`` sockets (``max_per_address`` from one address),
    accepts ``max_refusing`` more to refuse them (of those, as many as
    ``max_per_address`` from one address at a time: its sockets past that
    are closed at once, unanswered), and then stops accepting
    until one of its sockets closes, or the server can close one to make
    room (``make_room``, tried every ``RETRY`` seconds where
    ``makes_room``); exhausted descriptors (``EMFILE``) stop it too, tried
    again every ``RETRY`` seconds.

    Netius's own loop accepts until ``accept`` fails: at ``EMFILE`` it
    logs a failure and, its poll being edge-triggered, leaves the clients
    in the backlog until another one connects.

    The server calls ``admit(connection)`` as it builds a connection (the
    reason to refuse it, or None) and ``release(connection)`` once it is
    closed.  With no ``limit`` call every socket is admitted.

    A socket from a trusted proxy (``trusted_proxies``) is admitted by the
    overall cap only: its client is named by the request's headers, which
    have not arrived yet, so the server calls ``readmit(connection,
    client)`` once they have and it is counted against ``max_per_address``
    for that client then."""

    max_connections = None
    max_refusing = 0
    max_per_address = None
    admitted = 0
    refusing = 0
    accept_paused = False
    accept_resuming = False
    # a warning went out for the clients now waiting; cleared once the
    # backlog is drained
    crowded = False
    retrying = False
    # admitted and refused sockets per client address, set by ``limit``
    # (read only once it has run)
    by_address: dict[str, int]
    refused_by_address: dict[str, int]
    trusted_proxies = ()
    port_name = "port"
    # whether ``make_room`` may free a slot later: then a stopped port
    # tries again every ``RETRY`` seconds (its sockets may become closable
    # without any closing)
    makes_room = False

    # the netius stream server's, which the host class provides
    socket: socket.socket | None
    connections: Any  # a list, or wire.Connections
    delay: Callable[..., Any]
    sub_read: Callable[..., Any]
    unsub_read: Callable[..., Any]
    on_socket_c: Callable[..., Any]
    on_expected_s: Callable[..., Any]
    on_exception_s: Callable[..., Any]

    def limit(self, max_connections, max_refusing, max_per_address=None):
        """Sets the caps (before the port accepts its first socket)."""
        self.max_connections = max_connections
        self.max_refusing = max_refusing
        self.max_per_address = max_per_address
        self.by_address = {}
        self.refused_by_address = {}

    def admit(self, connection):
        """Counts a new socket in; returns why it is refused (None if it is
        admitted).  A refused socket is answered, then closed."""
        if self.max_connections is None:
            connection.admitted = None
            return None
        address = connection.address
        host = address[0] if isinstance(address, tuple) else ""
        if self.admitted >= self.max_connections:
            reason = "Over capacity"
        elif self.max_per_address and forwarded.trusted(host, self.trusted_proxies):
            self.admitted += 1
            connection.admitted = _PROXIED
            return None
        elif (
            self.max_per_address
            and self.by_address.get(host, 0) >= self.max_per_address
        ):
            reason = PER_ADDRESS
        else:
            self.admitted += 1
            self.by_address[host] = self.by_address.get(host, 0) + 1
            connection.admitted = host
            return None
        self._refusing(connection, host)
        return reason

    def _refusing(self, connection, host):
        """Counts ``connection``, from ``host``, among those refused."""
        self.refusing += 1
        connection.admitted = False
        connection.refused_from = host
        self.refused_by_address[host] = self.refused_by_address.get(host, 0) + 1

    def readmit(self, connection, client):
        """Counts a socket from a trusted proxy against ``max_per_address``
        for its ``client`` (the address the proxy named); returns why it is
        refused (None if it stays admitted)."""
        if connection.admitted is not _PROXIED:
            return None
        # admitted as proxied only under a cap per address
        assert self.max_per_address is not None
        if self.by_address.get(client, 0) >= self.max_per_address:
            self.admitted -= 1
            self._refusing(connection, client)
            return PER_ADDRESS
        self.by_address[client] = self.by_address.get(client, 0) + 1
        connection.admitted = client
        return None

    def release(self, connection):
        """Counts a closed socket out (once), and lets the port accept
        again if it had stopped."""
        host = getattr(connection, "admitted", None)
        if host is None:
            return
        connection.admitted = None
        if host is False:
            self.refusing -= 1
            host = connection.refused_from
            count = self.refused_by_address[host] - 1
            if count:
                self.refused_by_address[host] = count
            else:
                del self.refused_by_address[host]
        elif host is _PROXIED:
            self.admitted -= 1
        else:
            self.admitted -= 1
            count = self.by_address[host] - 1
            if count:
                self.by_address[host] = count
            else:
                del self.by_address[host]
        if self.accept_paused:
            # not from inside the close: the accept loop runs on its own
            self.delay(self._resume)

    def _crowding(self, address):
        """Whether ``address`` already has its ``max_per_address`` sockets
        admitted and as many again being refused: its next ones are closed
        unanswered, so that one address cannot take the port's refusing
        slots (and descriptors) from everyone else."""
        if not self.max_per_address:
            return False
        host = address[0] if isinstance(address, tuple) else ""
        return (
            self.by_address.get(host, 0) >= self.max_per_address
            and self.refused_by_address.get(host, 0) >= self.max_per_address
        )

    def at_cap(self):
        """True when the next socket would be refused."""
        return self.max_connections is not None and (
            self.admitted >= self.max_connections
        )

    def make_room(self):
        """At the port's full count, closes a socket the server may close
        to make room for the next one; True if it did.  Here, none."""
        return False

    def _full(self):
        return (
            self.max_connections is not None
            and self.admitted + self.refusing
            >= self.max_connections + self.max_refusing
        )

    def on_read_s(self, _socket):
        if self.accept_paused or self.accept_resuming:
            return
        try:
            self._accept(_socket)
        except Exception as exception:
            # never out of the loop: that would end it
            self.on_exception_s(exception)

    def _accept_again(self):
        self.accept_resuming = False
        if self.socket is not None:
            self.on_read_s(self.socket)

    def _accept(self, _socket):
        accept = _plain_accept(_socket) or _socket.accept
        for _ in range(ACCEPTS):
            if self._full() and not (self.make_room() and not self._full()):
                self._pause(
                    "%d sockets open, %d of them being refused"
                    % (len(self.connections), self.refusing),
                    retry=self.makes_room,
                )
                return
            try:
                socket_c, address = accept()
            except (BlockingIOError, InterruptedError):
                self._drained()
                return
            except OSError as error:
                if error.errno in _GONE:
                    continue
                if error.errno not in _EXHAUSTED:
                    self.on_exception_s(error)
                # tried again later: clients may be waiting (and the poll
                # is edge-triggered: it says so only once)
                self._pause(error.strerror or str(error), retry=True)
                return
            if self._crowding(address):
                socket_c.close()
                continue
            try:
                self.on_socket_c(socket_c, address)
            except Exception as exception:
                socket_c.close()
                self._failed(exception)
        else:
            # the backlog may hold more, and the poll is edge-triggered:
            # the rest at the next turn
            self.accept_resuming = True
            self.delay(self._accept_again)

    def _failed(self, exception):
        """A socket that failed as it was taken in, logged as netius logs
        it (a TLS client that hung up is expected)."""
        if isinstance(exception, ssl.SSLError):
            code = exception.args[0] if exception.args else None
            if code in SSL_VALID_ERRORS:
                return
            if code in SSL_SILENT_ERRORS:
                self.on_expected_s(exception)
                return
        self.on_exception_s(exception)

    def _pause(self, why, retry=False):
        self.accept_paused = True
        try:
            self.unsub_read(self.socket)
        except (OSError, ValueError):
            pass  # the port is closing
        if not self.crowded:
            self.crowded = True
            logger.warning(
                "%s stopped accepting (%s); clients wait in the backlog"
                " until sockets close",
                self.port_name,
                why,
            )
        if retry and not self.retrying:
            self.retrying = True
            self.delay(self._retry, timeout=RETRY)

    def _retry(self):
        self.retrying = False
        self._resume()

    def _resume(self):
        if not self.accept_paused or self.socket is None:
            return
        self.accept_paused = False
        try:
            self.sub_read(self.socket)
        except (OSError, ValueError):
            return  # the port is closing
        # what waited meanwhile raised no new event (edge-triggered poll)
        self.on_read_s(self.socket)

    def _drained(self):
        if self.crowded:
            self.crowded = False
            logger.warning(
                "%s accepting again (%d sockets open)",
                self.port_name,
                len(self.connections),
            )
