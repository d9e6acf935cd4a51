"""A Redis client on Pushi's netius loop: the command and the subscription
connection of a node (the Redis broker's ground).

Everything runs on the loop thread: non-blocking sockets (connect
included) watched by the loop (``NetiusLoop``, over ``net.wire``'s
socket watching), replies parsed by ``hiredis.Reader``, commands encoded by
``hiredis.pack_command``.  A callback gets the reply, or an exception
instance (``ReplyError`` for an error reply, ``ConnectionDown`` or
``CommandTimeout`` when the connection went or is away, ``Overloaded``
when too many replies are awaited): nothing is raised into the loop, and
nothing waits without bound.  While a connection is down a call fails at
once (its callback runs before ``call`` returns); a reply overdue by the
command timeout declares the connection down, fails every pending call and
starts a reconnection with back-off.  The timeout is Redis's silence: a
reply is overdue once the timeout passed since it was asked for and since
the last reply came (pipelined replies come in order: a deep pipeline
that Redis works through is not a dead connection), and it counts only
the time the loop could look: a check that runs late (``LATE``) reads what
arrived meanwhile and waits another timeout for the rest.

The hostname of a ``redis://`` URL is resolved with a blocking lookup at
each connection attempt: give an address (or a name ``/etc/hosts``
answers) where the loop must never wait on DNS.

Loop thread only: another thread hands work over with the State's
``call_soon``.  ``close()`` a client before its loop stops.
"""

import collections
import errno
import hashlib
import itertools
import logging
import os
import socket
import time
import urllib.parse
from typing import Any

import hiredis

from pushi.net import wire

logger = logging.getLogger("pushi")

TIMEOUT = 1.0
""" Seconds a reply (or a connection attempt) may take before the
connection is declared down """

LATE = 0.1
""" Seconds past its time after which a check of a timeout (or of the
probe) is late: the loop was held up meanwhile (a large fan-out, a
process starved of CPU), so a reply may have arrived unread.  A late check
reads the socket first and gives what is still awaited another timeout:
the time the loop could not look is not counted against Redis """

MAX_PENDING = 10000
""" Replies a command connection awaits at most; a call past it fails
at once with ``Overloaded`` """

BACKOFF_MIN = 0.1
""" Seconds before the first reconnection attempt; doubled after each
failed one up to ``BACKOFF_MAX`` """

BACKOFF_MAX = 2.0

PROBE_INTERVAL = 5.0
""" Seconds without anything received on the subscription connection
before a probe checks that it still receives """

READ_CHUNK = 65536

READ_BUDGET = 1048576
""" Bytes read from one Redis socket in one loop turn; the rest is read
in the next turn, so that a burst does not hold the loop """


class RedisError(Exception):
    """What a callback may get instead of a reply."""


class ReplyError(RedisError):
    """An error reply of Redis (``str(error)`` is Redis's message, e.g.
    ``"NOSCRIPT No matching script..."``)."""


class ConnectionDown(RedisError, ConnectionError):
    """The connection is not up (or went down before the reply came):
    the command may or may not have run."""


class CommandTimeout(ConnectionDown, TimeoutError):
    """A reply (or the connection attempt) took longer than the command
    timeout: the connection was declared down."""


class AuthError(ConnectionDown):
    """Redis refused the credentials of the URL (or asked for some)."""


class Overloaded(RedisError):
    """Too many replies are awaited already: the call was not sent."""


class Script:
    """A Lua script for ``Redis.evalsha``: its text and its SHA-1."""

    def __init__(self, lua):
        self.lua = lua.encode() if isinstance(lua, str) else lua
        self.sha = hashlib.sha1(self.lua).hexdigest()

    def __repr__(self):
        return "Script(%s)" % self.sha[:12]


def parse_url(url):
    """The parts of ``redis://[[user]:password@]host[:port][/db]`` or
    ``unix:///path/to.sock[?db=N][&password=P]``: a dict with ``host``,
    ``port``, ``path`` (for a Unix socket), ``username``, ``password`` and
    ``db``.  Raises ``ValueError`` for anything else (``rediss://``
    included: TLS is not supported)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    unquote = urllib.parse.unquote
    result: dict[str, Any] = dict(
        host=None,
        port=None,
        path=None,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        db=0,
    )
    if "password" in query:
        result["password"] = query["password"][0]
    if "db" in query:
        result["db"] = query["db"][0]
    if parts.scheme == "redis":
        result["host"] = parts.hostname or "localhost"
        result["port"] = parts.port or 6379
        if parts.path.strip("/"):
            result["db"] = parts.path.strip("/")
    elif parts.scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// Redis URL without a path")
        result["path"] = parts.path
    elif parts.scheme == "rediss":
        raise ValueError("rediss:// (TLS) is not supported: use redis:// or unix://")
    else:
        raise ValueError("not a Redis URL (redis:// or unix://)")
    try:
        result["db"] = int(result["db"])
    except ValueError:
        raise ValueError("the Redis database must be a number") from None
    return result


def redacted(url):
    """The URL without its password (for logs and errors)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None and "password=" not in parts.query:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    if parts.username:
        netloc = parts.username + ":***@" + netloc
    elif parts.password is not None:
        netloc = ":***@" + netloc
    query = "&".join(
        item for item in parts.query.split("&") if not item.startswith("password=")
    )
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, query, parts.fragment)
    )


class NetiusLoop:
    """The loop glue: watches a socket through ``net.wire`` (the one glue
    onto netius's socket watching) and runs timers and next-turn work on a
    netius server's loop (Pushi's WebSocket server: its ``run`` logs a
    failure and flushes).  Loop thread only."""

    def __init__(self, server):
        self.server = server

    def watch_read(self, sock, work):
        """Runs ``work()`` whenever the socket becomes readable
        (edge-triggered: ``work`` reads all it can)."""
        wire.watch_read(self.server, sock, work)

    def watch_write(self, sock, work):
        """Runs ``work()`` at the next turn, then whenever the socket
        becomes writable again, until ``unwatch_write``."""
        wire.watch_write(self.server, sock, work)

    def unwatch_write(self, sock):
        wire.unwatch_write(self.server, sock)

    def unwatch(self, sock):
        """Lets go of the socket (before it is closed)."""
        wire.unwatch(self.server, sock)

    def later(self, seconds, work):
        """Runs ``work()`` in ``seconds``; returns a handle whose
        ``cancel()`` stops it."""
        timer = _Timer(work)
        self.server.delay(lambda: self.server.run(timer.fire), timeout=seconds)
        return timer

    def soon(self, work):
        """Runs ``work()`` at the loop's next turn (before its next poll)."""
        self.server.soon(work)

    def every(self, seconds, work):
        """Runs ``work()`` every ``seconds``, the first time in ``seconds``;
        returns a handle whose ``cancel()`` stops it."""
        repeat = _Timer(work)

        def fire():
            if repeat.work is not None:
                repeat.work()
                self.later(seconds, fire)

        self.later(seconds, fire)
        return repeat


class _Timer:
    __slots__ = ("work",)

    def __init__(self, work):
        self.work = work

    def fire(self):
        work, self.work = self.work, None
        if work is not None:
            work()

    def cancel(self):
        self.work = None


class _Call:
    """A command awaiting its reply: ``kind`` says who handles it."""

    __slots__ = ("callback", "deadline", "kind", "extra")

    def __init__(self, callback, deadline, kind=None, extra=None):
        self.callback = callback
        self.deadline = deadline
        self.kind = kind
        self.extra = extra


def run_callback(callback, *args):
    """Runs a user's callback: its failure is logged, never raised into
    the client's own state changes."""
    try:
        callback(*args)
    except Exception:
        logger.exception("Redis callback failed")


class _Link:
    """One Redis connection, kept up: connect, AUTH / SELECT / ``INFO
    server`` (the ``run_id``), pipelined writes, ordered replies, the
    command timeout, reconnection with back-off and the ``on_up`` /
    ``on_down`` hooks.  ``Redis`` and ``Subscriber`` are its two uses."""

    name = "redis"

    def __init__(
        self,
        url,
        loop,
        timeout=TIMEOUT,
        backoff_min=BACKOFF_MIN,
        backoff_max=BACKOFF_MAX,
        on_up=None,
        on_down=None,
    ):
        self.url = url
        self.address = parse_url(url)
        self.loop = loop
        self.timeout = timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.on_up = on_up
        self.on_down = on_down
        self.up = False
        """ True once the connection is ready (handshake done) """
        self.run_id = None
        """ Redis's ``run_id`` read at the last (re)connection: it changes
        when Redis restarted (empty, without persistence) """
        self.last_error = None
        """ Why the connection is (or last went) down """
        self.connections = 0
        """ Connections made ready so far (1 after the first) """
        self._sock = None
        self._reader = None
        self._out = bytearray()
        self._pending: collections.deque = collections.deque()
        self._flushing = False
        self._blocked = False
        self._connecting = False
        self._connect_deadline = 0
        self._timer = None
        # when the armed check is due, the deadline a late one set, and
        # when the last reply came
        self._due = 0.0
        self._grace = 0.0
        self._answered = 0.0
        self._retry = None
        self._backoff = backoff_min
        self._closed = False
        self._reported = False
        self._generation = 0
        self._last_seen = 0.0
        self._attempts = -1
        self.writes = 0
        """ Writes (``send`` calls) so far: one per loop turn that has
        commands, more only when the socket's buffer is full """

    # life cycle

    def start(self):
        """Connects (loop thread); reconnects by itself from then on."""
        self._closed = False
        self._connect()

    def close(self):
        """Disconnects for good: pending callbacks get ``ConnectionDown``."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._drop(ConnectionDown("Redis client closed"), report=False)

    def _connect(self):
        self._retry = None
        if self._closed:
            return
        self._generation += 1
        self._attempts += 1
        generation = self._generation
        address = self.address
        try:
            if address["path"]:
                family, target = socket.AF_UNIX, address["path"]
            else:
                infos = socket.getaddrinfo(
                    address["host"], address["port"], type=socket.SOCK_STREAM
                )
                # each attempt tries the next address (a name may have an
                # IPv6 and an IPv4 one, Redis listening on one of them)
                info = infos[self._attempts % len(infos)]
                family, target = info[0], info[4]
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as error:
            self._failed(ConnectionDown("Redis unreachable: %s" % error))
            return
        sock.setblocking(False)
        if family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self._sock = sock
        self._reader = hiredis.Reader(replyError=ReplyError, notEnoughData=_NO_REPLY)
        self._connecting = True
        self._connect_deadline = time.monotonic() + self.timeout
        code = sock.connect_ex(target)
        # watched once connecting: an unconnected socket reads as hung up
        self.loop.watch_read(sock, lambda: self._on_event(generation, "read"))
        if code in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            self._want_write(generation)
            self._arm()
        elif code == 0:
            self._connected()
        else:
            self._failed(ConnectionDown("Redis unreachable: %s" % os.strerror(code)))

    def _on_event(self, generation, event):
        if generation != self._generation or self._sock is None:
            return
        if self._connecting:
            # a failed connect is readable too: its error says why
            code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._failed(
                    ConnectionDown("Redis unreachable: %s" % os.strerror(code))
                )
                return
            try:
                self._sock.getpeername()
            except OSError:
                return  # not connected yet: its next edge says when
            self.loop.unwatch_write(self._sock)
            self._connected()
            return
        if event == "write":
            if self._blocked:
                self._write()
        else:
            self._read()

    def _connected(self):
        """The socket is connected: the handshake goes out first (AUTH,
        SELECT, ``INFO server``), then whatever the use adds."""
        self._connecting = False
        address = self.address
        now = time.monotonic()
        if address["password"] is not None:
            credentials: tuple[str, ...] = (address["password"],)
            if address["username"]:
                credentials = (address["username"], address["password"])
            self._send(("AUTH",) + credentials, _Call(None, now + self.timeout, "auth"))
        if address["db"]:
            self._send(("SELECT", address["db"]), _Call(None, now + self.timeout, "hs"))
        self._send(("INFO", "server"), _Call(None, now + self.timeout, "info"))
        self._flush()

    def _handshake(self, call, reply):
        """A reply of the handshake: the connection is up after ``INFO``."""
        if isinstance(reply, ReplyError):
            message = str(reply)
            error: ConnectionDown
            if call.kind == "auth" or message.startswith(("NOAUTH", "WRONGPASS")):
                error = AuthError(
                    "Redis refused the connection's credentials: %s" % message
                )
            else:
                error = ConnectionDown("Redis refused the connection: %s" % message)
            self._failed(error)
            return
        if call.kind != "info":
            return
        run_id = None
        for line in reply.decode("utf-8", "replace").splitlines():
            if line.startswith("run_id:"):
                run_id = line[7:].strip()
        self.run_id = run_id
        self.up = True
        self.connections += 1
        self._backoff = self.backoff_min
        # the next connection starts with this address
        self._attempts -= 1
        self.last_error = None
        if self._reported:
            logger.warning(
                "Redis %s connection is back (%s)", self.name, redacted(self.url)
            )
        self._reported = False
        self._ready()
        if self.on_up is not None:
            run_callback(self.on_up, run_id)

    def _ready(self):
        """The use's own start once the handshake is done."""

    def _failed(self, error):
        """The connection (or the attempt) failed: down, then a new attempt
        after the back-off."""
        self._drop(error)
        if self._closed or self._retry is not None:
            return
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)
        self._retry = self.loop.later(delay, self._connect)

    def _drop(self, error, report=True):
        """Closes the socket and fails every pending call with ``error``."""
        self._generation += 1
        was_up = self.up
        self.up = False
        self._connecting = False
        self._blocked = False
        if self._sock is not None:
            try:
                self.loop.unwatch(self._sock)
            except (OSError, KeyError, ValueError):
                pass
            self._sock.close()
            self._sock = None
        self._reader = None
        self._out = bytearray()
        self._answered = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.last_error = error
        pending, self._pending = self._pending, collections.deque()
        self._lost(error)
        for call in pending:
            if call.callback is not None:
                run_callback(call.callback, error)
        if report and not self._reported:
            self._reported = True
            logger.warning(
                "Redis %s connection %s (%s): %s",
                self.name,
                "lost" if was_up else "failed",
                redacted(self.url),
                error,
            )
            if self.on_down is not None:
                run_callback(self.on_down, error)

    def _lost(self, error):
        """The use's own clean-up as the connection goes down."""

    # writes

    def _send(self, args, call):
        """Queues a command for this turn's write; ``call`` awaits its
        reply."""
        self._out += hiredis.pack_command(args)
        self._pending.append(call)
        if self._timer is None:
            self._arm()
        if not self._flushing:
            self._flushing = True
            self.loop.soon(self._flush)

    def batch(self, work):
        """Runs ``work()``, which sends commands, and writes them as it
        returns rather than at the loop's next turn: a turn fewer for a
        caller that has a turn of its own (loop thread)."""
        scheduled = self._flushing
        # the commands sent meanwhile schedule no write of their own
        self._flushing = True
        try:
            work()
        finally:
            if not scheduled:
                self._flush()

    def _flush(self):
        self._flushing = False
        if self._sock is not None and not self._connecting and not self._blocked:
            self._write()

    def _write(self):
        out = self._out
        sock = self._sock
        assert sock is not None  # written only while connected
        while out:
            try:
                self.writes += 1
                sent = sock.send(out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._failed(ConnectionDown("Redis connection lost: %s" % error))
                return
            if not sent:
                if not self._blocked:
                    self._blocked = True
                    self._want_write(self._generation)
                return
            del out[:sent]
        if self._blocked:
            self._blocked = False
            self.loop.unwatch_write(self._sock)

    def _want_write(self, generation):
        """The socket's writability is watched (connecting, or its send
        buffer full)."""
        self.loop.watch_write(self._sock, lambda: self._on_event(generation, "write"))

    # reads

    def _read(self):
        self._last_seen = time.monotonic()
        budget = READ_BUDGET
        generation = self._generation
        sock, reader = self._sock, self._reader
        assert sock is not None and reader is not None  # read only while connected
        while budget > 0:
            try:
                data = sock.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                self._failed(ConnectionDown("Redis connection lost: %s" % error))
                return
            if not data:
                self._failed(ConnectionDown("Redis closed the connection"))
                return
            budget -= len(data)
            reader.feed(data)
            if not self._replies(generation):
                return
        else:
            self.loop.soon(lambda: self._more(generation))

    def _more(self, generation):
        if generation == self._generation and self._sock is not None:
            self._read()

    def _replies(self, generation):
        """Hands each whole reply on; False once the connection went down
        meanwhile (what is left belongs to the old one)."""
        reader = self._reader
        assert reader is not None  # read only while connected
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as error:
                self._failed(ConnectionDown("Redis protocol error: %s" % error))
                return False
            if reply is _NO_REPLY:
                return True
            self._answered = time.monotonic()
            self._reply(reply)
            if generation != self._generation:
                return False

    def _reply(self, reply):
        if not self._pending:
            self._failed(ConnectionDown("Redis sent a reply nobody asked for"))
            return
        call = self._pending.popleft()
        if call.kind is None:
            run_callback(call.callback, reply)
        else:
            self._special(call, reply)

    def _special(self, call, reply):
        self._handshake(call, reply)

    # the timeout

    def _deadline(self):
        """When the connection attempt or the oldest pending reply is
        overdue (None: nothing awaited)."""
        if self._connecting:
            deadline = self._connect_deadline
        elif self._pending:
            deadline = max(self._pending[0].deadline, self._answered + self.timeout)
        else:
            return None
        return max(deadline, self._grace)

    def _arm(self):
        """Wakes at the next deadline (the connection attempt's or the
        oldest pending reply's)."""
        deadline = self._deadline()
        if deadline is None:
            return
        generation = self._generation
        now = time.monotonic()
        delay = max(deadline - now, 0.001)
        self._due = now + delay
        self._timer = self.loop.later(delay, lambda: self._check(generation))

    def _check(self, generation):
        self._timer = None
        if generation != self._generation:
            return
        if self._caught_up(self._due, generation):
            self._grace = time.monotonic() + self.timeout
        elif generation != self._generation:
            return
        deadline = self._deadline()
        if deadline is None or deadline > time.monotonic():
            self._arm()
        elif self._connecting:
            self._failed(CommandTimeout("Redis connection attempt timed out"))
        else:
            self._failed(
                CommandTimeout("Redis did not answer within %gs" % self.timeout)
            )

    def _caught_up(self, due, generation):
        """Whether a check due at ``due`` runs late (``LATE``): then what
        Redis sent meanwhile is read first, and True.  False when it runs
        on time, or when the connection went down as it was read."""
        if time.monotonic() - due <= LATE:
            return False
        if self._sock is not None and not self._connecting:
            self._read()
        return generation == self._generation


_NO_REPLY = object()


class Redis(_Link):
    """The command connection: pipelined calls answered in order.

    ``call(callback, *args)`` sends a command with the other commands of
    the turn (one write) and runs ``callback(reply)`` on the loop with the
    reply or an exception instance (``ReplyError``, ``ConnectionDown``,
    ``CommandTimeout``, ``Overloaded``).  ``evalsha`` runs a ``Script``
    (loaded on the connection before its first use, and again on NOSCRIPT).

    Hooks: ``on_up(run_id)`` each time the connection is ready (compare
    the ``run_id`` to notice an empty, restarted Redis), ``on_down(error)``
    once as it goes down (or the first attempt fails), ``on_relieved()``
    once the replies awaited fell to half of ``max_pending`` after calls
    were refused ``Overloaded`` (what they would have changed was not
    made)."""

    name = "command"

    def __init__(self, url, loop, max_pending=MAX_PENDING, on_relieved=None, **kwargs):
        _Link.__init__(self, url, loop, **kwargs)
        self.max_pending = max_pending
        self.on_relieved = on_relieved
        self._loaded = set()
        self._overloaded = False

    @property
    def pending(self):
        """Replies awaited."""
        return len(self._pending)

    def call(self, callback, *args):
        """Sends the command ``args``; ``callback(reply)`` runs with its
        reply.  Returns False when it failed at once (down or overloaded:
        the callback has run already with the error)."""
        error = self._refusal()
        if error is not None:
            run_callback(callback, error)
            return False
        self._send(args, _Call(callback, time.monotonic() + self.timeout))
        return True

    def evalsha(self, callback, script, keys=(), args=(), urgent=False):
        """Runs ``script`` (a ``Script``) with ``keys`` and ``args``; its
        text is sent once per connection (``SCRIPT LOAD`` right before its
        first ``EVALSHA``, so order holds), and again on NOSCRIPT (someone
        ran ``SCRIPT FLUSH``: that one ``EVALSHA`` is retried after the
        commands already sent).  ``urgent`` (a heartbeat): sent past
        ``max_pending`` too."""
        error = self._refusal(urgent)
        if error is not None:
            run_callback(callback, error)
            return False
        command = ("EVALSHA", script.sha, len(keys)) + tuple(keys) + tuple(args)
        self._evalsha(callback, script, command, retry=True)
        return True

    def _evalsha(self, callback, script, command, retry):
        deadline = time.monotonic() + self.timeout
        if script.sha not in self._loaded:
            self._loaded.add(script.sha)
            self._send(("SCRIPT", "LOAD", script.lua), _Call(None, deadline, "load"))
        if retry:
            self._send(command, _Call(callback, deadline, "evalsha", (script, command)))
        else:
            self._send(command, _Call(callback, deadline))

    def _refusal(self, urgent=False):
        if not self.up:
            return ConnectionDown(
                "Redis unavailable: %s" % (self.last_error or "not connected")
            )
        if len(self._pending) >= self.max_pending and not urgent:
            self._overloaded = True
            return Overloaded(
                "Redis answers too slowly: %d replies awaited" % len(self._pending)
            )
        return None

    def _reply(self, reply):
        _Link._reply(self, reply)
        if self._overloaded and len(self._pending) <= self.max_pending // 2:
            self._overloaded = False
            if self.on_relieved is not None:
                run_callback(self.on_relieved)

    def _special(self, call, reply):
        if call.kind == "evalsha":
            if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                script, command = call.extra
                self._loaded.discard(script.sha)
                self._evalsha(call.callback, script, command, retry=False)
            else:
                run_callback(call.callback, reply)
        elif call.kind == "load":
            if isinstance(reply, ReplyError):
                logger.warning("Redis refused a script: %s", reply)
        else:
            self._handshake(call, reply)

    def _lost(self, error):
        self._loaded.clear()
        # ``on_up`` follows: what was refused is for its hook to set right
        self._overloaded = False


class Subscriber(_Link):
    """The subscription connection.

    ``subscribe(channel, confirmed)``: ``confirmed(None)`` runs once Redis
    confirms the subscription (messages published after that reach
    ``on_message``), or ``confirmed(error)`` if it cannot be made (down:
    at once; lost before the confirmation; unsubscribed meanwhile): the
    channel is then not subscribed.  ``unsubscribe(channel)``.
    ``on_message(channel, data)`` (bytes both) for each message.

    After a reconnection every subscribed channel is subscribed again and
    ``on_resubscribed(channels)`` runs once all are confirmed: messages
    published while the connection was away are lost, the caller repairs
    (from its history) what it needs.  ``on_up(run_id)`` / ``on_down(error)``
    as for ``Redis``.

    A probe checks a connection that has received nothing for
    ``probe_interval`` seconds: it publishes to ``probe_channel`` (a
    channel private to this node, subscribed here) through ``commands``
    (a ``Redis``; over this connection with PING while that one is down),
    and reconnects if the probe is not back within the command timeout:
    a connection that silently stopped receiving is repaired."""

    name = "subscription"

    def __init__(
        self,
        url,
        loop,
        commands=None,
        probe_channel=None,
        probe_interval=PROBE_INTERVAL,
        on_message=None,
        on_resubscribed=None,
        **kwargs,
    ):
        _Link.__init__(self, url, loop, **kwargs)
        self.commands = commands
        self.probe_channel = _bytes(
            probe_channel or "pushi:probe:%s" % os.urandom(8).hex()
        )
        self.probe_interval = probe_interval
        self.on_message = on_message
        self.on_resubscribed = on_resubscribed
        self.probes = 0
        """ Probes that found the connection deaf (and reconnected it) """
        self._channels = {}
        # channel -> True once confirmed, False while awaited
        self._probe_timer = None
        self._probe_token = None
        self._probe_deadline = 0
        self._probe_due = 0.0
        self._tokens = itertools.count(1)
        self._resubscribing = None
        self._resubscribed = []

    @property
    def channels(self):
        """The channels subscribed (confirmed)."""
        return [channel for channel, done in self._channels.items() if done]

    def subscribe(self, channel, confirmed):
        channel = _bytes(channel)
        if not self.up:
            run_callback(
                confirmed,
                ConnectionDown(
                    "Redis unavailable: %s" % (self.last_error or "not connected")
                ),
            )
            return False
        if self._channels.get(channel):
            run_callback(confirmed, None)
            return True
        self._channels[channel] = False
        self._send(
            ("SUBSCRIBE", channel),
            _Call(confirmed, time.monotonic() + self.timeout, "subscribe", channel),
        )
        return True

    def unsubscribe(self, channel):
        channel = _bytes(channel)
        if self._channels.pop(channel, None) is None:
            return
        if self._resubscribing is not None and channel in self._resubscribing:
            self._resubscribing.discard(channel)
            self._resubscribed.remove(channel)
            self._resubscribe_done()
        for call in self._pending:
            if call.kind == "subscribe" and call.extra == channel and call.callback:
                callback, call.callback = call.callback, None
                run_callback(
                    callback, RedisError("unsubscribed before Redis confirmed")
                )
        if self.up:
            self._send(
                ("UNSUBSCRIBE", channel),
                _Call(None, time.monotonic() + self.timeout, "unsubscribe", channel),
            )

    def _ready(self):
        """Subscribes the probe's channel, then every channel again."""
        now = time.monotonic()
        deadline = now + self.timeout
        self._last_seen = now
        self._send(
            ("SUBSCRIBE", self.probe_channel),
            _Call(None, deadline, "subscribe", self.probe_channel),
        )
        channels = [channel for channel, done in self._channels.items() if done]
        if self.connections > 1:
            self._resubscribing = set(channels)
            self._resubscribed = list(channels)
        for channel in channels:
            self._channels[channel] = False
            self._send(
                ("SUBSCRIBE", channel), _Call(None, deadline, "subscribe", channel)
            )
        self._resubscribe_done()
        self._schedule_probe()

    def _resubscribe_done(self):
        if self._resubscribing is not None and not self._resubscribing:
            self._resubscribing = None
            logger.warning(
                "Redis subscription: %d channels subscribed again",
                len(self._resubscribed),
            )
            if self.on_resubscribed is not None:
                run_callback(self.on_resubscribed, self._resubscribed)

    def _lost(self, error):
        # awaited subscriptions fail (their callbacks run from the pending
        # calls); confirmed ones are made again on the next connection
        for channel, done in list(self._channels.items()):
            if not done and (
                self._resubscribing is None or channel not in self._resubscribing
            ):
                del self._channels[channel]
        if self._resubscribing is not None:
            for channel in self._resubscribing:
                self._channels[channel] = True
        self._resubscribing = None
        self._probe_token = None
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None

    def _reply(self, reply):
        if isinstance(reply, list) and reply:
            kind = reply[0]
            if kind == b"message":
                self._message(reply[1], reply[2])
                return
            if kind == b"pmessage":
                return
        if not self._pending:
            self._failed(ConnectionDown("Redis sent a reply nobody asked for"))
            return
        call = self._pending.popleft()
        if call.kind in ("subscribe", "unsubscribe"):
            if isinstance(reply, ReplyError):
                self._failed(ConnectionDown("Redis refused a subscription: %s" % reply))
                if call.callback is not None:
                    run_callback(call.callback, reply)
                return
            if call.kind == "subscribe":
                self._confirmed(call)
        elif call.kind == "ping":
            pass
        else:
            self._handshake(call, reply)

    def _confirmed(self, call):
        channel = call.extra
        if channel in self._channels:
            self._channels[channel] = True
            if self._resubscribing is not None:
                self._resubscribing.discard(channel)
                self._resubscribe_done()
        if call.callback is not None:
            run_callback(call.callback, None)

    def _message(self, channel, data):
        if channel == self.probe_channel and data.startswith(b"\x00probe:"):
            if data == self._probe_token:
                self._probe_token = None
            if channel not in self._channels:
                return
        if channel in self._channels and self.on_message is not None:
            run_callback(self.on_message, channel, data)

    # the probe

    def _schedule_probe(self, delay=None):
        if self._probe_timer is not None:
            self._probe_timer.cancel()
        generation = self._generation
        delay = self.probe_interval if delay is None else delay
        self._probe_due = time.monotonic() + delay
        self._probe_timer = self.loop.later(delay, lambda: self._probe(generation))

    def _probe(self, generation):
        self._probe_timer = None
        if generation != self._generation or not self.up:
            return
        now = time.monotonic()
        if self._probe_token is not None:
            if now >= self._probe_deadline:
                if self._caught_up(self._probe_due, generation):
                    # the probe may have come back with what was read
                    if self._probe_token is None:
                        self._schedule_probe()
                    else:
                        self._probe_deadline = time.monotonic() + self.timeout
                        self._schedule_probe(self.timeout)
                    return
                if generation != self._generation:
                    return
                self.probes += 1
                self._failed(
                    CommandTimeout(
                        "Redis subscription deaf: a probe did not come back"
                        " within %gs" % self.timeout
                    )
                )
                return
            self._schedule_probe(self._probe_deadline - now)
            return
        quiet = now - self._last_seen
        if quiet < self.probe_interval:
            self._schedule_probe(self.probe_interval - quiet)
            return
        token = b"\x00probe:%d" % next(self._tokens)
        self._probe_token = token
        self._probe_deadline = now + self.timeout
        if self.commands is not None and self.commands.up:

            def published(reply):
                if self._probe_token != token:
                    return
                if isinstance(reply, Exception):
                    # the command connection could not carry it: ask here
                    self._probe_token = None
                    self._ping(generation)
                elif reply == 0 and generation == self._generation:
                    # Redis knows no subscriber of the probe's channel
                    self.probes += 1
                    self._failed(ConnectionDown("Redis lost the node's subscription"))

            self.commands.call(published, "PUBLISH", self.probe_channel, token)
        else:
            self._probe_token = None
            self._ping(generation)
        self._schedule_probe(self.timeout)

    def _ping(self, generation):
        if generation == self._generation and self.up:
            self._send(("PING",), _Call(None, time.monotonic() + self.timeout, "ping"))


def _bytes(value):
    return value.encode() if isinstance(value, str) else value
