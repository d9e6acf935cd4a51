"""One State as a node of a cluster: what ``PUSHI_REDIS_URL`` builds.

``Cluster(config)`` makes the node's Redis connections (``node``), the
twins of the presence, occupancy and signed-in users seams over them and
the reaper of dead nodes (``shared``), the recovery history and the cache
channels' last events in Redis (``history``, ``cache``), all before the
engine, which takes them; ``bind(state)``
then joins them to the State's loop, engine and metrics, with the broker
over Redis and what else spans the nodes (``spans``); ``start`` runs on
the loop once it runs.  A re-registration of the node (a new Redis, or
this node reaped) writes what it holds back (``ClusterState.reregister``);
what a reaper takes from a dead node reaches this node's sockets, watchers
and observers once (``reaped``).
"""

import logging

from pushi.net.redis import NetiusLoop

from ..broker import Event
from .broker import RedisBroker
from .history import RedisCache, RedisHistory
from .node import Node
from .seams import ClusterState, blocking_client
from .spans import attach

logger = logging.getLogger("pushi")

REAP_INTERVAL = 2.0
""" Seconds between two looks for dead nodes """


class Cluster:
    def __init__(self, config):
        self.loop = NetiusLoop(None)
        self.node = Node(config.redis_url, self.loop, None)
        self.reader = blocking_client(config.redis_url)
        self.shared = ClusterState(
            self.node.commands, lambda: self.node.id, self.reader, self.reaped
        )
        self.history = RedisHistory()
        self.cache = RedisCache(self.node.commands, self.reader)
        self.engine = None
        self.broker = None
        self.spans = None

    def engine_seams(self):
        """What the engine takes instead of its in-process twins."""
        return {
            "presence": self.shared.presence,
            "occupancy": self.shared.occupancy,
            "users": self.shared.users,
            "history": self.history,
            "cache": self.cache,
        }

    def bind(self, state):
        """Joins the node to ``state``'s loop, engine and metrics (before
        the loop starts)."""
        self.loop.server = state.server
        self.engine = self.node.engine = state.engine
        self.broker = RedisBroker(
            self.node,
            state.engine,
            state.call_soon,
            state.metrics,
            max_pending=state.config.max_pending,
        )
        self.history.broker = self.broker
        # member events go out in the script that decides them, so that
        # every node sees them in the channel's one order
        self.shared.presence.announcer = self.broker
        self.shared.reaper.announcer = self.broker
        state.metrics.health["redis"] = self.node.check
        # what only the loop holds, read for the REST threads' queries
        state.engine.queries.on_loop = state.call_in_loop
        self.node.on_reregister.append(self._reregistered)
        self.spans = attach(
            state,
            self.node.commands,
            self.node.subscriber,
            self.node.id,
            client=self.reader,
        )
        return self.broker

    def start(self):
        """On the loop, once it runs: registers the node and looks for dead
        nodes from then on."""
        self.node.start()
        self.shared.reaper.start(self.loop, interval=REAP_INTERVAL)

    def stop(self):
        """On the loop, before it ends."""
        self.shared.reaper.stop()
        self.node.close()

    def _reregistered(self, node_id):
        """The node registered (again): what it holds is written back
        under its id, and the spans follow it."""
        self.spans.node_changed(node_id)
        self.shared.reregister(node_id)

    def reaped(self, reaped):
        """What a dead node's reaping changed, seen by this node alone:
        its members leave the channels (``member_removed`` to every node's
        sockets, published by the reaper's scripts), and the observers
        (webhooks) and watchers hear of it."""
        engine = self.engine
        if engine is None:
            return
        for app_id, channel, user_id in reaped.removed:
            if self.shared.reaper.announcer is None:
                engine.broker.send(
                    Event(
                        app_id,
                        (channel,),
                        "pusher_internal:member_removed",
                        {"user_id": user_id},
                    )
                )
            engine.emit(app_id, "member_removed", channel=channel, user_id=user_id)
        for app_id, channel in reaped.vacated:
            engine.emit(app_id, "vacated", channel=channel)
        for app_id, user_id in reaped.offline:
            engine.signin.tell_watchers(app_id, user_id, "offline")
        logger.info(
            "Cluster: node %s reaped (%d members, %d channels vacated)",
            reaped.node_id,
            len(reaped.removed),
            len(reaped.vacated),
        )
