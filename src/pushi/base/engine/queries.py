"""What the REST API asks of the live state, and what it changes there.

The changes (``terminate_user``, ``update_app``) and ``sockets`` run on
the loop thread (through ``State.call_in_loop``).  The reads of what the
seams hold (``channel_info``, ``list_channels``, ``channel_users``,
``app_stats``) run where ``State.query`` puts them: on the loop for one
process, on the REST thread for a cluster node, whose twins read Redis;
what only the loop holds (cache entries, history) they read through
``on_loop`` (a cluster's cache reads Redis on the REST thread)."""

from pushi.proto import channels, errors


class Queries:
    def __init__(self, engine):
        self.engine = engine
        self.registry = engine.registry
        self.occupancy = engine.occupancy
        self.presence = engine.presence
        # runs work(*args) on the loop: at once for queries that run there
        self.on_loop = _call

    def channel_info(self, app_id, name, info=()):
        """The ``info`` attributes a channel has: ``user_count`` for
        presence channels, ``subscription_count`` for the others (presence
        channels count users, as on Pusher), ``cache`` for cache channels;
        an attribute the channel does not have is left out."""
        count = self.occupancy.count(app_id, name)
        kind = channels.kind(name)
        result = {"occupied": count > 0}
        if "subscription_count" in info and kind != channels.PRESENCE:
            result["subscription_count"] = count
        if "user_count" in info and kind == channels.PRESENCE:
            result["user_count"] = len(self.presence.members(app_id, name))
        if "cache" in info and channels.is_cache(name):
            # asked and nothing cached: present, as null
            result["cache"] = self.engine.cache.info(app_id, name, self.on_loop)
        return result

    def app_stats(self, app_id):
        """An app's counters: open connections, occupied channels, and
        what its cache channels hold (entries, bytes, the bound) and have
        evicted to stay within it."""
        engine = self.engine
        limits = engine.limits(app_id)
        cache, recovery = self.on_loop(
            lambda: (engine.cache.stats(app_id), engine.history.stats(app_id))
        )
        cache["max_bytes"] = limits.max_cache_bytes
        recovery["max_bytes"] = limits.max_recovery_bytes
        return {
            "connections": self.occupancy.connections(app_id),
            "channels": len(self.occupancy.channels(app_id)),
            "cache": cache,
            "recovery": recovery,
        }

    def list_channels(self, app_id, prefix="", info=()):
        result = {}
        for name, count in self.occupancy.channels(app_id).items():
            if not name.startswith(prefix):
                continue
            entry = {}
            presence = channels.kind(name) == channels.PRESENCE
            if "user_count" in info and presence:
                entry["user_count"] = len(self.presence.members(app_id, name))
            if "subscription_count" in info and not presence:
                entry["subscription_count"] = count
            result[name] = entry
        return result

    def channel_users(self, app_id, name):
        return [{"id": user_id} for user_id in self.presence.members(app_id, name)]

    def terminate_user(self, app_id, user_id):
        sessions = self.registry.user_sessions(app_id, user_id)
        for session in sessions:
            self.engine.drop(session, errors.UNAUTHORIZED, "Connections terminated")
        return len(sessions)

    def update_app(self, app):
        """Points the sockets of an app at its new settings, or closes them
        (4003) when it is disabled, and (4009) those that rely on a key the
        app no longer holds."""
        engine = self.engine
        sessions = [
            session
            for session in self.registry.sessions.values()
            if session.app.app_id == app.app_id
        ]
        engine.cache.trim(app.app_id, app.limits.max_cache_bytes)
        engine.history.trim(app.app_id, app.limits)
        for session in sessions:
            session.app = app
            if not app.enabled:
                engine.drop(session, errors.APP_DISABLED, "App disabled")
            elif not all(key in app.secrets for key in session.keys):
                engine.drop(session, errors.UNAUTHORIZED, "App key revoked")

    def sockets(self, app_id, limit):
        """``(listed, total)``: this process's open sockets of an app, at
        most ``limit`` of them listed, and how many it has."""
        listed: list[dict] = []
        total = 0
        for session in self.registry.sessions.values():
            if session.app.app_id != app_id:
                continue
            total += 1
            if len(listed) < limit:
                listed.append(
                    {
                        "socket_id": session.socket_id,
                        "dialect": session.dialect,
                        "address": session.address,
                        "channels": list(session.channels),
                        "user_id": session.user_id,
                    }
                )
        return listed, total


def _call(work, *args):
    return work(*args)
