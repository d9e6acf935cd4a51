"""One State as a node of a cluster: what ``PUSHI_REDIS_URL`` builds.

``Cluster(config)`` makes the node's Redis connections (``node``), the
twins of the presence, occupancy and signed-in users seams over them and
the reaper of dead nodes (``shared``), the recovery history and the cache
channels' last events in Redis (``history``, ``cache``), all before the
engine, which takes them; ``bind(state)``
then joins them to the State's loop, engine and metrics, with the broker
over Redis and what else spans the nodes (``spans``); ``start`` runs on
the loop once it runs; the debug console's cluster side (``console``)
relays each app's console entries to the nodes that watch it, and
``sockets`` asks every node for an app's sockets (``cluster/sockets``).  A
re-registration of the node (a new Redis, or
this node reaped) writes what it holds back (``ClusterState.reregister``);
what a reaper takes from a dead node reaches this node's sockets, watchers
and observers once (``reaped``).  The webhooks' linger is the cluster's
(``cluster/linger``): the State's webhooks post what it holds.
"""

import logging
from typing import Any

from pushi.net.redis import NetiusLoop

from .. import webhooks
from ..broker import Event
from .broker import RedisBroker
from .console import ConsoleRelay
from .history import RedisCache, RedisHistory
from .node import Node
from .seams import ClusterState, blocking_client
from .sockets import SocketsQuery
from .spans import attach

logger = logging.getLogger("pushi")

REAP_INTERVAL = 2.0
""" Seconds between two looks for dead nodes """

SETTLE_AFTER = 4.0
""" Seconds after a registration on a restarted Redis before what failed
meanwhile is settled (``settle``): the other nodes have written their
entries again by then (they look every second) """


class Cluster:
    def __init__(self, config):
        self.loop = NetiusLoop(None)
        self.node = Node(
            config.redis_url, self.loop, None, max_pending=config.redis_max_pending
        )
        self.reader = blocking_client(config.redis_url)
        self.shared = ClusterState(
            self.node.commands, lambda: self.node.id, self.reader, self.reaped
        )
        self.history = RedisHistory()
        self.cache = RedisCache(self.node.commands, self.reader)
        # set by ``bind``, before the loop starts
        self.engine: Any = None
        self.broker = None
        self.spans: Any = None
        self.console: Any = None
        self.sockets: Any = None
        self._joined = False

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

        # (the State makes its webhooks after this)
        def lingers(app_id):
            app = state.apps.by_id(app_id)
            return state.webhooks.linger if app and app.limits.webhooks else 0

        def post(app_id, kind, details):
            state.webhooks.post(app_id, kind, details)

        self.shared.linger.seconds = lingers
        self.shared.linger.post = post
        state.metrics.health["redis"] = self.node.check
        # what only the loop holds, read for the REST threads' queries
        state.engine.queries.on_loop = state.call_in_loop
        self.node.on_register.append(self._registered)
        self.node.on_reregister.append(self._reregistered)
        self.node.on_reconnect.append(self._reconnected)
        self.spans = attach(
            state,
            self.node.commands,
            self.node.subscriber,
            self.node.id,
            client=self.reader,
        )
        # one console sees every node's part of its app
        self.console = ConsoleRelay(
            state.console,
            state.engine,
            self.node.commands,
            self.node.subscriber,
            self.spans.control,
            self.loop,
        )
        # the REST ``/sockets`` of any node lists every node's
        self.sockets = SocketsQuery(state.engine, self.spans.control, self.loop)
        return self.broker

    def start(self):
        """On the loop, once it runs: registers the node and looks for dead
        nodes from then on."""
        self.node.start()
        self.shared.reaper.start(self.loop, interval=REAP_INTERVAL)
        self.shared.linger.start(self.loop)
        self.console.start()

    def joined(self):
        """Whether the node joined the cluster (loop thread): registered,
        and subscribed to the control channels where the other nodes'
        commands and questions reach it.  Until then it takes no traffic
        (``GET /ready``); once joined, later outages are the fence's
        (``Node.fenced``) and ``/health``'s."""
        if not self._joined:
            self._joined = self.node.up and self.spans.control.ready
        return self._joined

    def stop(self):
        """On the loop, before it ends."""
        self.shared.reaper.stop()
        self.shared.linger.stop()
        self.console.stop()
        self.node.close()

    def _registered(self, node_id):
        """The node registered (the first time too): the spans follow its
        id (its own control channel, where the answers to its questions
        come)."""
        self.spans.node_changed(node_id)

    def _reregistered(self, node_id):
        """The node registered again: what it holds is written back under
        its id."""
        restarted = self.node.redis_restarted
        self.shared.reregister(
            node_id, then=lambda registered: self.restored(registered, restarted)
        )

    def _reconnected(self, node_id):
        """The command connection is back on the same Redis: what failed
        meanwhile may or may not have been made there; the node's
        entries are written again (its strays zeroed)."""
        self.shared.reregister(then=lambda registered: self.restored(registered))

    def restored(self, registered, restarted=False):
        """What writing the node's entries again changed (a
        ``Registered``): members and channels that the node held in Redis
        but no longer has (a leave that failed) are removed (their
        ``member_removed`` to every node's sockets) and vacated, users
        gone offline are told.  What it wrote back (members, channels,
        users again) is no news: the sockets and observers knew of them.
        On a restarted Redis, which held nothing to zero, the leaves that
        failed meanwhile are settled once every node wrote its entries."""
        engine = self.engine
        if engine is None:
            return
        self._gone(registered.removed, registered.vacated, registered.offline)
        if registered.removed or registered.vacated:
            logger.info(
                "Cluster: node's entries written again (%d members removed,"
                " %d channels vacated)",
                len(registered.removed),
                len(registered.vacated),
            )
        if restarted:
            self.loop.later(SETTLE_AFTER, self.settle)
        else:
            self.shared.presence.unsure.clear()
            self.shared.occupancy.unsure.clear()

    def _gone(self, removed, vacated, offline, announced=False, lingered=()):
        """Members, channels and users that a change this node alone saw
        took away: ``member_removed`` to every node's sockets (unless the
        scripts published it, ``announced``), and the observers (webhooks)
        and watchers hear of it (of those in ``lingered`` as held by the
        cluster's webhook linger, see ``cluster/linger``)."""
        engine = self.engine
        for app_id, channel, user_id in removed:
            if not announced:
                engine.broker.send(
                    Event(
                        app_id,
                        (channel,),
                        "pusher_internal:member_removed",
                        {"user_id": user_id},
                    )
                )
            engine.emit(
                app_id,
                "member_removed",
                channel=channel,
                user_id=user_id,
                **webhooks.lingered((app_id, channel, user_id) in lingered),
            )
        for app_id, channel in vacated:
            engine.emit(
                app_id,
                "vacated",
                channel=channel,
                **webhooks.lingered((app_id, channel) in lingered),
            )
        for app_id, user_id in offline:
            engine.signin.tell_watchers(app_id, user_id, "offline")

    def settle(self):
        """After a restarted Redis: the members whose join or leave failed
        meanwhile and who are no members now leave (``member_removed``),
        the channels whose leave failed and that nobody holds now are
        vacated."""
        engine = self.engine

        def removed(app_id, channel, user_id):
            engine.emit(app_id, "member_removed", channel=channel, user_id=user_id)

        def vacated(app_id, channel):
            engine.emit(app_id, "vacated", channel=channel)

        self.shared.presence.settle(removed)
        self.shared.occupancy.settle(vacated)

    def reaped(self, reaped):
        """What a dead node's reaping changed, seen by this node alone:
        its members leave the channels (``member_removed`` to every node's
        sockets, published by the reaper's scripts), and the observers
        (webhooks) and watchers hear of it."""
        engine = self.engine
        if engine is None:
            return
        self._gone(
            reaped.removed,
            reaped.vacated,
            reaped.offline,
            announced=self.shared.reaper.announcer is not None,
            lingered=reaped.lingered,
        )
        logger.info(
            "Cluster: node %s reaped (%d members, %d channels vacated)",
            reaped.node_id,
            len(reaped.removed),
            len(reaped.vacated),
        )
