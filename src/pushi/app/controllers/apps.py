"""Apps: list and create (admin secret), show and update."""

import appier

from pushi.base.limits import DEFAULTS, OPERATOR_SETTINGS, App, check_settings
from pushi.base.webhooks import check_hooks
from pushi.proto import errors

from .common import APP, PushiController


class AppsController(PushiController):
    @appier.route("/apps", "GET", json=True)
    def list(self):
        self.access.require_admin(self.authorization())
        self.state.reload_apps()
        return {"apps": [app.public() for app in self.state.apps.all()]}

    @appier.route("/apps", "POST", json=True)
    def create(self):
        self.access.require_admin(self.authorization())
        body = self.body()
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise errors.HttpError(400, "name is required")
        settings = _settings(body.get("settings"))
        record = self.state.store.create_app(
            name.strip(),
            client_events=body.get("client_events") is True,
            settings=settings,
        )
        self.state.app_changed(App(record))
        return record

    @appier.route("/apps/%s" % APP, "GET", json=True)
    def show(self, app_id):
        return self.authorize(app_id).public()

    @appier.route("/apps/%s" % APP, ("PUT", "POST"), json=True)
    def update(self, app_id):
        app = self.authorize(app_id)
        body = self.body()
        fields = {}
        if "name" in body:
            if not isinstance(body["name"], str) or not body["name"].strip():
                raise errors.HttpError(400, "name must be a non-empty string")
            fields["name"] = body["name"].strip()
        for flag in ("enabled", "client_events"):
            if flag in body:
                if not isinstance(body[flag], bool):
                    raise errors.HttpError(400, "%s must be true or false" % flag)
                fields[flag] = body[flag]
        if "settings" in body:
            settings = _settings(body["settings"])
            if not self.access.is_admin(self.authorization()):
                # settings are replaced whole: one left out returns to its
                # default, which must not lift a limit either
                for name in sorted(OPERATOR_SETTINGS):
                    if settings.get(name, DEFAULTS[name]) != getattr(app.limits, name):
                        raise errors.HttpError(
                            403, "Setting %s needs the admin secret" % name
                        )
            fields["settings"] = settings
        record = self.state.store.update_app(app_id, **fields)
        if record is None:
            raise errors.HttpError(404, "Unknown app")
        app = App(record)
        self.state.app_changed(app)
        return app.public()

    @appier.route("/apps/%s/webhooks/test" % APP, "POST", json=True)
    def test_webhook(self, app_id):
        """Posts one test webhook (admin secret): ``{"url": ...}``, any
        http(s) URL, saved as a hook or not yet.  The answer tells how the
        receiver answered: ``sent`` (a 2xx), its ``status``, the ``error``."""
        self.access.require_admin(self.authorization())
        app = self.authorize(app_id)
        url = self.body().get("url")
        error = check_hooks([{"url": url}])
        if error is not None:
            raise errors.HttpError(400, error)
        status, error = self.state.webhooks.test(app, url)
        return {"url": url, "sent": error is None, "status": status, "error": error}


def _settings(settings):
    """Validates per-app settings (``limits.check_settings``) for a request:
    a setting that cannot be is a 400."""
    try:
        return check_settings(settings)
    except ValueError as error:
        raise errors.HttpError(400, str(error)) from None
