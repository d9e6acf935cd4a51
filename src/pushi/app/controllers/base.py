"""Health, and session login and logout."""

import appier

from pushi.base.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from pushi.proto import errors

from .common import PushiController


class BaseController(PushiController):
    @appier.route("/health", "GET", json=True)
    def health(self):
        """What this process holds; ``status`` ``degraded`` while a
        component (the store, a cluster's Redis) fails its health check,
        named in ``down``."""
        connections, channels = self.state.call_in_loop(
            self.state.engine.registry.count
        )
        metrics = self.state.metrics
        down = [
            name for name in sorted(metrics.health) if not metrics.component_up(name)
        ]
        answer = {
            "status": "degraded" if down else "ok",
            "connections": connections,
            "channels": channels,
            "apps": len(self.state.apps.all()),
        }
        if down:
            answer["down"] = down
        if self.state.node is not None:
            answer["node"] = self.state.node.id
        return answer

    @appier.route("/ready", "GET", json=True)
    def ready(self):
        """For load balancers: 200 once this process takes traffic, 503
        with the reason from the moment a stop begins (``/health`` says
        what it holds, whatever its state)."""
        reason = self.state.unready()
        if reason is not None:
            raise errors.HttpError(503, reason)
        return {"status": "ready"}

    @appier.route("/metrics", "GET")
    def metrics(self):
        """Prometheus' text format, with the admin secret as
        ``Authorization: Bearer`` (``PUSHI_METRICS_PORT`` serves it
        without, on a port of its own)."""
        self.access.require_admin(self.authorization())
        if not self.state.metrics.enabled:
            raise errors.HttpError(404, "Metrics are off (PUSHI_METRICS=off)")
        self.request.set_content_type(METRICS_CONTENT_TYPE)
        return self.state.metrics.exposition()

    @appier.route("/login", "POST", json=True)
    def login(self):
        """A session token for an app's id, key and secret, sent in the
        body (never in the URL): send it back as ``Authorization: Bearer``.
        With the admin secret as ``Authorization: Bearer`` instead, the body
        needs only the ``app_id``."""
        body = self.body()
        app_id = str(body.get("app_id", ""))
        if "app_key" not in body and "app_secret" not in body and self.authorization():
            app, token = self.access.admin_login(app_id, self.authorization())
        else:
            app, token = self.access.login(
                app_id, body.get("app_key"), body.get("app_secret")
            )
        return {
            "token": token,
            "app_id": app.app_id,
            "expires_in": self.access.token_lifetime,
        }

    @appier.route("/logout", "POST", json=True)
    def logout(self):
        """Ends the session token sent as ``Authorization: Bearer`` (and
        the console streams opened with it); an unknown or expired token
        has nothing left to end, so the answer is the same."""
        token = self.access.bearer(self.authorization())
        if not token:
            raise errors.HttpError(401, "Send Authorization: Bearer <token>")
        self.state.logout(token)
        return {"result": "ok"}
