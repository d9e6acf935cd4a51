"""Persisted subscriptions: what a user's personal channel streams."""

import appier

from pushi.proto import channels as channel_names
from pushi.proto import errors

from .common import APP, PushiController


class SubscriptionsController(PushiController):
    @appier.route("/apps/%s/subscribe" % APP, ("GET", "POST"), json=True)
    def subscribe(self, app_id):
        app = self.authorize(app_id)
        user_id, event = self._subscription()
        record = self.state.store.subscribe(app.app_id, user_id, event)
        self.state.call_soon(
            self.state.engine.personal_changed, app.app_id, user_id, event, True
        )
        return {
            "app_id": record["app_id"],
            "user_id": record["user_id"],
            "event": record["event"],
        }

    @appier.route("/apps/%s/unsubscribe" % APP, ("GET", "POST"), json=True)
    def unsubscribe(self, app_id):
        app = self.authorize(app_id)
        user_id, event = self._subscription()
        removed = self.state.store.unsubscribe(app.app_id, user_id, event)
        self.state.call_soon(
            self.state.engine.personal_changed, app.app_id, user_id, event, False
        )
        return {
            "app_id": app.app_id,
            "user_id": user_id,
            "event": event,
            "removed": removed,
        }

    @appier.route("/apps/%s/subscriptions" % APP, "GET", json=True)
    def list(self, app_id):
        app = self.authorize(app_id)
        user_id = self.param("user_id") or None
        event = self.param("event") or None
        records = self.state.store.list_subscriptions(
            app.app_id, user_id=user_id, event=event
        )
        return {
            "subscriptions": [
                {"user_id": record["user_id"], "event": record["event"]}
                for record in records
            ]
        }

    def _subscription(self):
        body = self.body() if self.request.method == "POST" else {}
        user_id = body.get("user_id", self.param("user_id"))
        event = body.get("event", self.param("event"))
        if isinstance(user_id, int) and not isinstance(user_id, bool):
            user_id = str(user_id)
        if not isinstance(user_id, str) or not user_id or len(user_id) > 128:
            raise errors.HttpError(400, "user_id is required (at most 128 characters)")
        if not channel_names.is_valid("personal-" + user_id):
            raise errors.HttpError(
                400, "user_id has characters a channel name cannot hold"
            )
        if not channel_names.is_valid(event):
            raise errors.HttpError(400, "event must be a valid channel name")
        if channel_names.kind(event) not in (
            channel_names.PUBLIC,
            channel_names.PRIVATE,
            channel_names.ENCRYPTED,
        ):
            raise errors.HttpError(400, "Only public and private channels can be kept")
        return user_id, event
