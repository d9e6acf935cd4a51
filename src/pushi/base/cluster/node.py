"""This process as a node of the cluster: its id, its heartbeat, and the
two Redis connections every part of the cluster shares.

The node id comes from ``INCR pushi:node_seq`` at the first connection; it
names the node's sockets (``<node id>.<n>``, ``Registry.new_socket_id``),
so socket ids are unique across the cluster and say their node.  Every
``HEARTBEAT`` seconds the node refreshes its entry of ``pushi:nodes`` (a
sorted set: node id -> Redis's own clock in ms, ``TIME``, so that the
nodes' clocks do not matter); a reaper on another node removes what a
node silent for longer than its bound left behind.

Fencing: a node that could not refresh its entry for ``FENCE_AFTER``
seconds is about to be reaped, and its clients would stay connected but
deaf and invisible: it closes its sockets with 4200 (reconnect now: a
load balancer sends them to a node that reaches Redis), and while it stays
cut off it closes the sockets that connect meanwhile with 4100 (reconnect
with back-off) and ``/ready`` answers 503.

Registering again: when Redis comes back with another ``run_id`` (it
restarted, empty, as a Redis without persistence does) or the heartbeat
finds the node gone from ``pushi:nodes`` (it was reaped), the node
registers again and runs the ``on_reregister`` hooks, where the parts that
keep entries in Redis (presence, occupancy, users) write this node's
entries again.  On a restarted Redis it keeps its id when no node took it
meanwhile (its sockets' ids stay its own); a reaped node takes a new one
(a reaper may still be removing the old one's entries).  A new id is above
every id the node saw given (``pushi:node_seq``, read with each
heartbeat): after a restart of Redis it does not take the id of a node
whose sockets are still open, unless that node registered in the last
heartbeat before the restart.

Health: ``up`` (both connections ready, registered, not fenced) and
``check`` (raises while not: ``Metrics.health["redis"]``, which ``/health``
and ``pushi_component_up`` report).

Loop thread only, as ``net/redis``.
"""

import logging
import threading
import time

from pushi.net.redis import MAX_PENDING, Redis, Script, Subscriber, redacted
from pushi.proto import errors

logger = logging.getLogger("pushi")

HEARTBEAT = 2.0
""" Seconds between two refreshes of the node's ``pushi:nodes`` entry """

FENCE_AFTER = 8.0
""" Seconds without a refreshed heartbeat after which the node closes its
sockets (a reaper removes a node silent for 10 s) """

TICK = 1.0
""" Seconds between two checks of the heartbeat and the fence """

NODE_SEQ = "pushi:node_seq"
NODES = "pushi:nodes"

REGISTER = Script(
    """
local id = tonumber(ARGV[2])
if id == 0 or redis.call('ZSCORE', KEYS[2], id) then
  id = redis.call('INCR', KEYS[1])
  local floor = tonumber(ARGV[1])
  if id <= floor then
    id = floor + 1
  end
end
if id > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], id)
end
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], now[1] * 1000 + math.floor(now[2] / 1000), id)
return id
"""
)
""" KEYS: ``pushi:node_seq``, ``pushi:nodes``; ARGV: the highest node id
this node saw in use, and the id it wants to keep (0: a new one).  The
wanted id is kept when no node holds it in ``pushi:nodes``; otherwise a new
id comes from ``INCR``, above the highest seen.  Returns the id, already in
``pushi:nodes``. """

HEARTBEAT_SCRIPT = Script(
    """
local seq = redis.call('GET', KEYS[2]) or '0'
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {0, seq}
end
local now = redis.call('TIME')
redis.call('ZADD', KEYS[1], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[1])
return {1, seq}
"""
)
""" KEYS: ``pushi:nodes``, ``pushi:node_seq``; ARGV: the node id.  Returns
``{1, seq}`` once refreshed, ``{0, seq}`` when the node is no longer in
``pushi:nodes`` (reaped: it registers again); ``seq`` is the highest id
given so far. """


class Node:
    """This process's registration in the cluster and its Redis
    connections: ``commands`` (a ``Redis``) and ``subscriber`` (a
    ``Subscriber``, whose messages the broker takes)."""

    def __init__(
        self,
        url,
        loop,
        engine,
        heartbeat=HEARTBEAT,
        fence_after=FENCE_AFTER,
        tick=TICK,
        max_pending=MAX_PENDING,
        **settings,
    ):
        self.url = url
        self.loop = loop
        self.engine = engine
        self.heartbeat = heartbeat
        self.fence_after = fence_after
        self.tick = tick
        self.commands = Redis(
            url,
            loop,
            max_pending=max_pending,
            on_up=self._on_up,
            on_relieved=self._on_relieved,
            **settings,
        )
        self.subscriber = Subscriber(url, loop, commands=self.commands, **settings)
        self.id = None
        """ The node id (an int) once registered """
        self.on_register = []
        """ Hooks ``hook(node_id)`` run each time the node registered, the
        first time too (before the ``on_reregister`` ones): what follows
        the node's id """
        self.on_reregister = []
        """ Hooks ``hook(node_id)`` run each time the node registered again
        (a new Redis, or reaped): write this node's entries again """
        self.on_reconnect = []
        """ Hooks ``hook(node_id)`` run each time the command connection
        is back on the same Redis, the node registered, and once it caught
        up after refusing changes (too many replies awaited): changes that
        failed meanwhile may or may not have been made """
        self.redis_restarted = False
        """ Whether the last registration again was on a restarted Redis
        (rather than after the node was reaped) """
        self.fenced = False
        """ True while the node cannot refresh its heartbeat for longer than
        ``fence_after`` (its sockets are closed) """
        self.registered = threading.Event()
        """ Set at the first registration (the State waits for it at start) """
        self.reregistrations = 0
        self._run_id = None
        self._highest = 0
        self._registering = False
        self._refused = False
        self._beating = False
        self._beat_sent = 0.0
        self._last_beat = time.monotonic()
        self._timer = None
        self._closed = False

    # life cycle (loop thread)

    def start(self):
        """Connects both connections and starts the heartbeat."""
        self._closed = False
        self._last_beat = time.monotonic()
        self.commands.start()
        self.subscriber.start()
        self._timer = self.loop.later(self.tick, self._tick)

    def close(self):
        """Stops the heartbeat and disconnects (before the loop stops)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.subscriber.close()
        self.commands.close()

    # health

    @property
    def up(self):
        """True while the node serves as part of the cluster."""
        return (
            self.commands.up
            and self.subscriber.up
            and self.id is not None
            # registered on this Redis (not one that restarted since)
            and self.commands.run_id == self._run_id
            and not self.fenced
        )

    def check(self):
        """Raises while the node is not ``up`` (a health check; any
        thread: it reads flags only)."""
        if self.up:
            return
        if self.fenced:
            raise ConnectionError("cut off from Redis: sockets closed")
        if not self.commands.up or not self.subscriber.up:
            link = self.commands if not self.commands.up else self.subscriber
            raise ConnectionError(
                "Redis unavailable: %s" % (link.last_error or "not connected")
            )
        raise ConnectionError("not registered in the cluster (yet, or again)")

    # registration

    def _on_up(self, run_id):
        if self.id is None or run_id != self._run_id:
            self._register()
            return
        self._reconnected()

    def _on_relieved(self):
        logger.warning(
            "Redis caught up with cluster node %s after refusing changes (more"
            " than %d replies awaited): writing its entries again",
            self.id,
            self.commands.max_pending,
        )
        if self.id is not None and not self._registering:
            self._reconnected()

    def _reconnected(self):
        for hook in list(self.on_reconnect):
            try:
                hook(self.id)
            except Exception:
                logger.exception("a reconnection hook failed")

    def _register(self):
        if self._registering or self._closed:
            return
        self._registering = True
        run_id = self.commands.run_id
        sent = time.monotonic()
        # a Redis that restarted (empty) knows no node: this node keeps its
        # id, so its sockets' ids stay its own; one that was reaped takes a
        # new one (the reaper may still be removing the old one's entries)
        keep = self.id if self.id is not None and run_id != self._run_id else 0

        def registered(reply):
            self._registering = False
            if isinstance(reply, Exception):
                if not self._refused:
                    # once until it succeeds: the tick tries again each second
                    self._refused = True
                    logger.warning("Cluster node registration failed: %s", reply)
                return
            self._refused = False
            self._registered(int(reply), run_id, sent)

        self.commands.evalsha(
            registered, REGISTER, (NODE_SEQ, NODES), (self._highest, keep)
        )

    def _registered(self, node_id, run_id, sent):
        old, previous = self.id, self._run_id
        self.id = node_id
        self._run_id = run_id
        self._highest = max(self._highest, node_id)
        self._last_beat = max(self._last_beat, sent)
        self._beat_sent = sent
        self.engine.registry.node = node_id
        self._unfence()
        for hook in list(self.on_register):
            try:
                hook(node_id)
            except Exception:
                logger.exception("a registration hook failed")
        if old is None:
            logger.info("Cluster node %d on Redis %s", node_id, redacted(self.url))
            self.registered.set()
            return
        self.reregistrations += 1
        self.redis_restarted = run_id != previous
        logger.warning(
            "Cluster node %d registered again as node %d (%s)",
            old,
            node_id,
            "Redis restarted" if run_id != previous else "reaped",
        )
        for hook in list(self.on_reregister):
            try:
                hook(node_id)
            except Exception:
                logger.exception("a re-registration hook failed")

    # heartbeat and fence

    def _tick(self):
        self._timer = None
        if self._closed:
            return
        self._timer = self.loop.later(self.tick, self._tick)
        now = time.monotonic()
        if self.commands.up and not self._registering:
            if self.id is None or self.commands.run_id != self._run_id:
                self._register()
            elif not self._beating and now - self._beat_sent >= self.heartbeat:
                self._beat(now)
        if now - self._last_beat >= self.fence_after:
            self._fence()

    def _beat(self, sent):
        self._beating = True
        self._beat_sent = sent
        node_id = self.id

        def beaten(reply):
            self._beating = False
            if isinstance(reply, Exception) or self._closed:
                return
            present, seq = reply
            self._highest = max(self._highest, int(seq))
            if node_id != self.id:
                return
            if not present:
                logger.warning("Cluster node %d was reaped", node_id)
                self._register()
                return
            self._last_beat = max(self._last_beat, sent)
            self._unfence()

        # past the cap on replies awaited: a backlog is not a cut
        self.commands.evalsha(
            beaten, HEARTBEAT_SCRIPT, (NODES, NODE_SEQ), (node_id,), urgent=True
        )

    def _fence(self):
        """Closes the sockets of a node that nobody can reach: with 4200
        as it is fenced, with 4100 those that connect while it stays so."""
        sessions = list(self.engine.registry.sessions.values())
        if not self.fenced:
            self.fenced = True
            logger.warning(
                "Cluster node %s could not reach Redis for %gs: closing its"
                " %d sockets (4200, reconnect now)",
                self.id,
                self.fence_after,
                len(sessions),
            )
            code, reason = errors.GOING_AWAY, "Cut off from the cluster: reconnect now"
        else:
            code, reason = errors.OVER_CAPACITY, "Cut off from the cluster: retry later"
        for session in sessions:
            session.transport.close(code, reason)

    def _unfence(self):
        if self.fenced:
            self.fenced = False
            logger.warning("Cluster node %s reaches Redis again", self.id)
