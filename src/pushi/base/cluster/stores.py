"""One store for the whole cluster, and the jobs that run on one node.

Every node of a cluster must use the same store: nodes on one machine
may share one SQLite data dir, nodes on several machines one MongoDB.  A
node with a store of its own would split history silently (events stored
by one node, invisible to the others' history and personal channels).
So at start a node writes the identity of its store to ``pushi:store``
(``SET NX``) and refuses to start when the cluster's is another.  The key
lives ``CLAIM_TTL`` seconds and every node renews it: once every node has
stopped it goes, and a cluster may move to another store.

The identity: for SQLite the database file's absolute path, its device
and inode (the same file, not a copy at the same path) and the host name;
for MongoDB its hosts (no credentials) and database name.

``Lock``: a job that must run on one node at a time (retention), held by
a ``SET NX PX`` renewed while held; another node takes over once the
holder stops renewing.
"""

import logging
import os
import socket
import threading
import urllib.parse

from pushi.base.config import ConfigError

logger = logging.getLogger("pushi")

STORE_KEY = "pushi:store"

CLAIM_TTL = 30.0
""" Seconds ``pushi:store`` lives unless a node renews it """

CLAIM_EVERY = 10.0
""" Seconds between two renewals by each node """

RETENTION_LOCK = "pushi:lock:retention"

# sets the key to ARGV[1] when it is free, renews it when it holds
# ARGV[1]; returns what it holds then (ARGV[1]: held, else another's)
CLAIM = """
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return current
"""


def store_identity(store, mongo_url=None):
    """A line that names the store ``store`` writes to, the same for every
    node that shares it."""
    path = getattr(store, "path", None)
    if path is not None:
        from pushi.base.store.sqlite_file import file_identity

        path = os.path.abspath(path)
        device, inode = file_identity(path) or (0, 0)
        return "SQLite file %s (device %d, inode %d) on host %s" % (
            path,
            device,
            inode,
            socket.gethostname(),
        )
    database = getattr(getattr(store, "database", None), "name", None)
    if mongo_url:
        parts = urllib.parse.urlsplit(mongo_url)
        hosts = ",".join(sorted(parts.netloc.rpartition("@")[2].split(",")))
        return "MongoDB %s://%s database %s" % (parts.scheme, hosts, database)
    return repr(store)


class StoreClaim:
    """This node's claim of the cluster's store (``claim`` at start, then
    renewed by a thread of its own until ``stop``), through ``client`` (a
    blocking redis-py client)."""

    def __init__(self, client, identity, ttl=CLAIM_TTL, every=CLAIM_EVERY):
        self.client = client
        self.identity = identity
        self.ttl = ttl
        self.every = every
        self._script = client.register_script(CLAIM)
        self._stopping = threading.Event()
        self._thread = None
        self._conflict = None

    def _claim(self):
        held = self._script(
            keys=[STORE_KEY], args=[self.identity, int(self.ttl * 1000)]
        )
        return held.decode() if isinstance(held, bytes) else held

    def claim(self):
        """Claims the store for the cluster, or raises ``ConfigError`` (one
        line) when the cluster uses another; a Redis that does not answer
        is logged, and the claim is made when it does."""
        import redis

        try:
            held = self._claim()
        except redis.RedisError as error:
            logger.warning(
                "Cluster store not checked yet (Redis: %s): checked when Redis answers",
                error,
            )
        else:
            if held != self.identity:
                raise ConfigError(
                    "Refused: this node's store is the %s, but the cluster on"
                    " this Redis uses the %s (%s): every node needs the same"
                    " store (one PUSHI_DATA_DIR on one machine, one MONGO_URL"
                    " across machines); to move the cluster to another store,"
                    " stop every node first" % (self.identity, held, STORE_KEY)
                )
        self._thread = threading.Thread(
            target=self._renew, name="pushi-store-claim", daemon=True
        )
        self._thread.start()

    def _renew(self):
        import redis

        failing = False
        while not self._stopping.wait(self.every):
            try:
                held = self._claim()
            except redis.RedisError as error:
                if not failing:
                    logger.warning("Cluster store claim not renewed: %s", error)
                failing = True
                continue
            failing = False
            if held != self.identity and held != self._conflict:
                # Redis came back empty and another store took it first
                logger.error(
                    "The cluster on this Redis now uses the %s, not this node's"
                    " %s: history is split until this node is stopped",
                    held,
                    self.identity,
                )
            self._conflict = held if held != self.identity else None

    def stop(self):
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)


class Lock:
    """A job's lock (``name``) for one holder at a time, through ``client``
    (a blocking redis-py client): ``held()`` takes it when free and renews
    it when this holder has it (for ``ttl`` seconds more); call it at
    least once per ``ttl`` to keep it."""

    def __init__(self, client, name, holder, ttl):
        self.client = client
        self.name = name
        self.holder = None if holder is None else str(holder)
        self.ttl = ttl
        self._script = client.register_script(CLAIM)
        self._failing = False

    def held(self):
        """True when this holder has the lock (now for ``ttl`` seconds);
        False when another has it, Redis does not answer, or this holder
        has no name yet (a node not registered)."""
        import redis

        if self.holder is None:
            return False
        try:
            held = self._script(
                keys=[self.name], args=[self.holder, int(self.ttl * 1000)]
            )
        except redis.RedisError as error:
            if not self._failing:
                logger.warning("Cluster lock %s not taken: %s", self.name, error)
            self._failing = True
            return False
        self._failing = False
        return (held.decode() if isinstance(held, bytes) else held) == self.holder


def claim_store(config, store):
    """Claims ``store`` as the cluster's on ``config.redis_url`` (at start,
    before anything is written to it); returns the ``StoreClaim`` (its
    renewal runs until ``stop``), or raises ``ConfigError``."""
    from .tokens import blocking_client

    claim = StoreClaim(
        blocking_client(config.redis_url), store_identity(store, config.mongo_url)
    )
    claim.claim()
    return claim
