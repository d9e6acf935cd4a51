"""Pusher's query API: channels, users, connections of an app."""

import appier

from pushi.proto import channels as channel_names
from pushi.proto import errors

from .common import APP, PushiController
from .events import _count

CHANNEL = "<regex('[^/]+'):name>"

SOCKETS = 1000
""" Sockets ``/sockets`` lists unless told otherwise (``?limit=``) """

MAX_SOCKETS = 10000
""" Sockets ``/sockets`` lists at most """


class ChannelsController(PushiController):
    @appier.route("/apps/%s/channels" % APP, "GET", json=True)
    def list(self, app_id):
        app = self.authorize(app_id)
        prefix = self.param("filter_by_prefix", "") or ""
        info = _info(self.param("info", ""))
        if "user_count" in info and not prefix.startswith("presence-"):
            raise errors.HttpError(
                400, "info=user_count needs filter_by_prefix=presence-"
            )
        channels = self.state.query(
            self.state.engine.list_channels, app.app_id, prefix, info
        )
        return {"channels": channels}

    @appier.route("/apps/%s/channels/%s" % (APP, CHANNEL), "GET", json=True)
    def show(self, app_id, name):
        app = self.authorize(app_id)
        _check(name)
        info = _info(self.param("info", ""))
        presence = channel_names.kind(name) == channel_names.PRESENCE
        # an attribute the channel does not have is a bad request (Pusher)
        if "user_count" in info and not presence:
            raise errors.HttpError(400, "user_count is for presence channels only")
        if "subscription_count" in info and presence:
            raise errors.HttpError(
                400, "subscription_count is not for presence channels: use user_count"
            )
        if "cache" in info and not channel_names.is_cache(name):
            raise errors.HttpError(400, "cache is for cache channels only")
        return self.state.query(self.state.engine.channel_info, app.app_id, name, info)

    @appier.route("/apps/%s/channels/%s/users" % (APP, CHANNEL), "GET", json=True)
    def users(self, app_id, name):
        app = self.authorize(app_id)
        _check(name)
        if channel_names.kind(name) != channel_names.PRESENCE:
            raise errors.HttpError(400, "Users are listed for presence channels only")
        users = self.state.query(self.state.engine.channel_users, app.app_id, name)
        return {"users": users}

    @appier.route(
        "/apps/%s/users/<regex('[^/]+'):user_id>/terminate_connections" % APP,
        "POST",
        json=True,
    )
    def terminate(self, app_id, user_id):
        app = self.authorize(app_id)
        self.state.call_in_loop(self.state.engine.terminate_user, app.app_id, user_id)
        return self.empty()

    @appier.route(
        "/users/<regex('[^/]+'):user_id>/terminate_connections", "POST", json=True
    )
    def terminate_by_key(self, user_id):
        """The same, at the path the ``pusher`` PyPI SDK (3.3) signs and
        calls, without the ``/apps/<id>`` prefix: the app is the one of
        the signed request's ``auth_key``."""
        key = self.params().get("auth_key")
        app = self.state.apps.load_key(key) if isinstance(key, str) else None
        if app is None:
            raise errors.HttpError(401, "Sign the request with an app's auth_key")
        return self.terminate(app.app_id, user_id)

    def empty(self):
        """Pusher's success body, ``{}`` (Appier turns an empty dict into
        ``{"result": "success"}``)."""
        self.request.set_content_type("application/json")
        return "{}"

    @appier.route("/apps/%s/sockets" % APP, "GET", json=True)
    def sockets(self, app_id):
        """``?limit=``: the app's open sockets over every node (at most
        ``limit``, ``MAX_SOCKETS`` at most) and their ``total``;
        ``truncated`` when some are not listed, ``partial`` (and how many
        nodes are ``missing``, when known) when a node did not answer in
        time."""
        app = self.authorize(app_id)
        limit = min(_count(self.param("limit", str(SOCKETS)), "limit"), MAX_SOCKETS)
        found = self.state.sockets(app.app_id, limit)
        answer = {"sockets": found["sockets"], "total": found["total"]}
        if found["total"] > len(found["sockets"]):
            answer["truncated"] = True
        if found["missing"] is None:
            answer["partial"] = True
        elif found["missing"]:
            answer["partial"] = True
            answer["missing"] = found["missing"]
        return answer

    @appier.route("/apps/%s/stats" % APP, "GET", json=True)
    def stats(self, app_id):
        """The app's counters, cache evictions among them."""
        app = self.authorize(app_id)
        return self.state.query(self.state.engine.app_stats, app.app_id)

    @appier.route("/apps/%s/ping" % APP, "GET", json=True)
    def ping(self, app_id):
        self.authorize(app_id)
        return {"pong": True}


def _info(value):
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _check(name):
    if not channel_names.is_valid(name):
        raise errors.HttpError(400, "Invalid channel name")
