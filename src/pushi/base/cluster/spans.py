"""What else spans the nodes of a cluster, hooked onto one ``State``.

``attach(state, redis, subscriber, node_id)`` makes this process a node
for everything beyond delivery and the shared counts:

* app changes (created, updated, disabled, keys added or revoked):
  ``State.app_changed`` also broadcasts ``app_changed``; every other node
  reads that app from the shared store and takes it into use at once
  (``State.sync_app``: disabled -> 4003 on its sockets, key revoked ->
  4009).  The apps poller (``PUSHI_APPS_POLL_INTERVAL``) stays the safety
  net for a command lost while a node's subscription was away;
* ``terminate_user``: every node closes the user's sockets (the REST
  answer, which has no count, comes once the local ones are closed);
* ``personal_changed``: every node's personal channels follow a persisted
  subscription added or removed over REST;
* watchlists: a user online or offline (decided once for the cluster by
  the users twin) is told to the watchers on every node
  (``watchlist``);
* subscription counts: a socket that joins or leaves a channel here
  makes every node with subscribers on it send them the channel's count
  (``subscription_count``; the webhook goes from this node alone);
* session tokens: kept in Redis (``tokens.RedisTokens``), a logout (or a
  token pushed out by newer logins) broadcast as ``logout`` so that every
  node forgets it and ends the console streams it opened;
* retention runs on the holder of ``pushi:lock:retention`` only.

A node acts locally first, then broadcasts, and ignores its own
broadcasts.  The State calls nothing here but ``may_retain``.
"""

import logging
import os
import socket
import threading

from ..access import TokensUnavailable
from .control import Control
from .stores import RETENTION_LOCK, Lock
from .tokens import RedisTokens, blocking_client

logger = logging.getLogger("pushi")

MIN_RETENTION_TTL = 30.0
""" Seconds the retention lock lives at least without renewal """

_local = threading.local()


class _Quiet:
    """Within it, this thread's app changes are not broadcast: they come
    from another node, or from the store where every node sees them."""

    def __enter__(self):
        self.before = getattr(_local, "quiet", False)
        _local.quiet = True

    def __exit__(self, *exc_info):
        _local.quiet = self.before


def _quiet():
    return getattr(_local, "quiet", False)


def attach(state, redis, subscriber, node_id, client=None):
    """Hooks the cluster's control channel, shared session tokens and
    retention lock onto ``state``, with ``redis`` and ``subscriber`` (the
    node's ``pushi.net.redis`` connections) as node ``node_id``; returns
    the ``Spans`` (also ``state.spans``).  ``node_id`` may be None until
    the node has registered (then ``node_changed``).  Call it once, on the
    loop thread or before the loop starts; ``client`` is the blocking
    redis-py client of the REST threads (by default one for ``redis.url``)."""
    spans = Spans(state, redis, subscriber, node_id, client)
    spans.hook()
    state.spans = spans
    loop = getattr(state, "_loop_thread", None)
    if loop is not None and loop.is_alive() and threading.current_thread() is not loop:
        state.call_soon(spans.control.start)
    else:
        spans.control.start()
    return spans


class Spans:
    """The cross-node parts of one State (see the module doc): ``control``
    (a ``Control``), ``tokens`` (the ``RedisTokens`` of ``state.access``),
    ``retention`` (the ``Lock`` ``may_retain`` takes)."""

    def __init__(self, state, redis, subscriber, node_id, client=None):
        self.state = state
        self.client = client or blocking_client(redis.url)
        self.control = Control(
            redis, subscriber, node_id, registry=state.metrics.registry
        )
        self.tokens = RedisTokens(self.client)
        ttl = max(3 * state.config.retention_interval, MIN_RETENTION_TTL)
        # the process, whatever its node id (None until registered, then
        # one that may change)
        holder = "%s/%d/%s" % (socket.gethostname(), os.getpid(), self.control.origin)
        self.retention = Lock(self.client, RETENTION_LOCK, holder, ttl)
        # what the wrappers call: the State's, engine's own methods
        self._app_changed = state.app_changed
        self._reload_apps = state.reload_apps
        self._terminate_user = state.engine.terminate_user
        self._personal_changed = state.engine.personal_changed
        self._tell_watchers = state.engine.signin.tell_watchers
        self._counts_changed = state.engine.counts.changed

    @property
    def node_id(self):
        return self.control.node_id

    def hook(self):
        """Wraps the State's, engine's and access's methods that must
        reach every node, and registers the handlers of their commands."""
        state, engine, control = self.state, self.state.engine, self.control
        state.app_changed = self.app_changed
        state.reload_apps = self.reload_apps
        engine.terminate_user = self.terminate_user
        engine.personal_changed = self.personal_changed
        engine.signin.tell_watchers = self.tell_watchers
        engine.counts.changed = self.counts_changed
        state.access.shared = self.tokens
        state.access.ended = self.tokens_ended
        control.on("app_changed", self._on_app_changed)
        control.on("terminate_user", self._on_terminate_user)
        control.on("personal_changed", self._on_personal_changed)
        control.on("logout", self._on_logout)
        control.on("watchlist", self._on_watchlist)
        control.on("subscription_count", self._on_subscription_count)
        control.on_gap.append(self._gap)

    def node_changed(self, node_id):
        """This node registered (again) under ``node_id`` (a ``Node``'s
        ``on_register`` hook; loop thread)."""
        self.control.rename(node_id)

    def may_retain(self):
        """Whether this node runs the retention pass now (the retention
        thread; blocking): it holds the cluster's retention lock."""
        return self.retention.held()

    # the wrapped methods: local first, then broadcast

    def app_changed(self, app):
        """``State.app_changed`` (any thread), then ``app_changed`` to the
        other nodes (not for a change they take in by themselves)."""
        self._app_changed(app)
        if not _quiet():
            self._broadcast("app_changed", {"app_id": app.app_id})

    def reload_apps(self):
        """``State.reload_apps``: changes read from the store, which every
        node reads itself: not broadcast."""
        with _Quiet():
            return self._reload_apps()

    def terminate_user(self, app_id, user_id):
        """Closes the user's sockets here (loop thread), and on the other
        nodes; returns how many were closed here."""
        closed = self._terminate_user(app_id, user_id)
        self.control.broadcast("terminate_user", {"app_id": app_id, "user_id": user_id})
        return closed

    def personal_changed(self, app_id, user_id, name, subscribed):
        """Personal channels follow a persisted subscription here (loop
        thread), and on the other nodes."""
        self._personal_changed(app_id, user_id, name, subscribed)
        self.control.broadcast(
            "personal_changed",
            {
                "app_id": app_id,
                "user_id": user_id,
                "name": name,
                "subscribed": bool(subscribed),
            },
        )

    def tell_watchers(self, app_id, user_id, name):
        """Tells the watchers of ``user_id`` here that it went ``name``
        (online, offline; loop thread), and those of the other nodes."""
        self._tell_watchers(app_id, user_id, name)
        self.control.broadcast(
            "watchlist", {"app_id": app_id, "user_id": user_id, "name": name}
        )

    def counts_changed(self, app, name, here=True):
        """A channel's subscriptions changed here: its count goes to its
        subscribers here (loop thread), and on the other nodes, when the
        app asks for counts."""
        self._counts_changed(app, name, here)
        if here and app.limits.subscription_count_events:
            self.control.broadcast(
                "subscription_count", {"app_id": app.app_id, "channel": name}
            )

    def tokens_ended(self, ids):
        """Session tokens this node ended in Redis (any thread): the other
        nodes forget them."""
        self._broadcast("logout", {"tokens": list(ids)})

    def _broadcast(self, command, data):
        """Broadcasts from any thread (through the loop)."""
        state = self.state
        loop = getattr(state, "_loop_thread", None)
        if loop is None:
            return
        if threading.current_thread() is loop:
            self.control.broadcast(command, data)
            return
        try:
            state.call_soon(self.control.broadcast, command, data)
        except Exception as error:  # the loop has ended: nobody to tell
            logger.warning("Cluster command %s not sent: %s", command, error)

    # the handlers of the other nodes' commands (loop thread)

    def _on_app_changed(self, data, sender):
        app_id = data.get("app_id")
        if not isinstance(app_id, str):
            return
        state = self.state

        def sync():
            with _Quiet():
                state.sync_app(app_id)

        # blocking (the store, then the loop): on a worker
        state.offload(sync, _ignore)

    def _on_terminate_user(self, data, sender):
        app_id, user_id = data.get("app_id"), data.get("user_id")
        if isinstance(app_id, str) and isinstance(user_id, str):
            self._terminate_user(app_id, user_id)

    def _on_personal_changed(self, data, sender):
        app_id, user_id, name = (
            data.get("app_id"),
            data.get("user_id"),
            data.get("name"),
        )
        if all(isinstance(value, str) for value in (app_id, user_id, name)):
            self._personal_changed(app_id, user_id, name, bool(data.get("subscribed")))

    def _on_watchlist(self, data, sender):
        app_id, user_id, name = (
            data.get("app_id"),
            data.get("user_id"),
            data.get("name"),
        )
        if (
            isinstance(app_id, str)
            and isinstance(user_id, str)
            and name in ("online", "offline")
        ):
            self._tell_watchers(app_id, user_id, name)

    def _on_subscription_count(self, data, sender):
        app_id, name = data.get("app_id"), data.get("channel")
        if not (isinstance(app_id, str) and isinstance(name, str)):
            return
        channel = self.state.engine.registry.channel(app_id, name)
        if channel is not None:
            # the app as this node's sockets hold it
            app = next(iter(channel.sessions)).app
            self._counts_changed(app, name, here=False)

    def _on_logout(self, data, sender):
        ids = data.get("tokens")
        if not isinstance(ids, list):
            return
        self.state.access.forget([ident for ident in ids if isinstance(ident, str)])
        self.state.console.recheck()

    def _gap(self):
        """Commands may have been lost: what can be checked again is."""
        state = self.state

        def repair():
            try:
                state.access.revalidate()
            except TokensUnavailable as error:
                logger.warning("Session tokens not checked again: %s", error)
            with _Quiet():
                self._reload_apps()

        state.offload(repair, lambda _result: state.console.recheck())


def _ignore(_result):
    pass
