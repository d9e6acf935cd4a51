"""What both servers of the loop need of netius: ports of their own, a loop
whose timers are on time, a connection class of their own, a write that
skips netius's per-write machinery, and debug records dropped before they
are built."""

import collections
import logging
import socket
import time

import netius


class QuietDebug:
    """A netius server mixin.  Netius builds and routes every debug record
    (four per connection: created, counted, deleted, counted) before its
    logger drops it; measured, about a tenth of the loop's CPU in a storm of
    connections.  Here the level is checked first."""

    def debug(self, object, *args, **kwargs):
        if self.logger is not None and self.logger.isEnabledFor(logging.DEBUG):
            super().debug(object, *args, **kwargs)


class OwnPort:
    """A netius server mixin.  Netius sets ``SO_REUSEPORT`` on the sockets
    it listens on, so a second Pushi started on ports already served bound
    them too, and the kernel split the new connections between two
    processes that know nothing of each other's sockets: a publish to one
    missed the subscribers of the other.  Cleared here, the second one
    fails to bind (address in use)."""

    def socket_tcp(self, *args, **kwargs):
        _socket = super().socket_tcp(*args, **kwargs)
        if hasattr(socket, "SO_REUSEPORT"):
            _socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
        return _socket


class Loop(netius.Container):
    """Netius's loop (each turn: its bases' ticks, which run the delays
    that are due, then one poll), with two changes.

    The poll wakes for the next delay.  Netius polls with a fixed timeout
    (a quarter second), so a delay due in a millisecond waited for the next
    socket event or that timeout (the group commit once held a batch on
    such a timer: a lone persisted publish after a burst took 250 ms).

    Work for the next turn (``soon``) skips netius's delays: each of those
    is merged from a locked list and pushed on two heaps of Python-compared
    entries; a turn that runs one piece of work cost 18-23 us of CPU that
    way, 11-13 us this way (measured).  ``soon`` is a deque, drained after the
    delays, that any thread may append to (then wake the poll with the
    owner's netius ``wakeup``); its work handles its own failures (the
    owner's ``run``)."""

    def __init__(self, *args, **kwargs):
        netius.Container.__init__(self, *args, **kwargs)
        self.soon = collections.deque()

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
            if base._notified or base._delayed_n:
                return 0
            if base._delayed:
                # the heap's head: the earliest target; 0, -1 or None for
                # the next turn, else a time.time()
                target = base._delayed[0][0]
                if not target or target <= now:
                    return 0
                timeout = min(timeout, target - now)
        return timeout


class Connection(netius.Connection):
    """A netius connection of ours.  Netius calls a server's own
    ``on_connection_d`` only for connections of a subclass (for a plain
    ``Connection`` it calls the base hook), and that hook is where a socket
    that vanished without a goodbye is forgotten."""


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
