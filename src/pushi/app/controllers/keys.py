"""An app's key/secret pairs, for rotating them: list, add, revoke.

The admin secret, or the app's own credentials (a request signed with any
of its live pairs, or a session token), manage its pairs.  A secret is
shown once, in the answer that creates it, never in a listing.
"""

import appier

from pushi.base.limits import public_keys
from pushi.base.store.base import AppKeysError
from pushi.proto import errors

from .common import APP, PushiController


class KeysController(PushiController):
    @appier.route("/apps/%s/keys" % APP, "GET", json=True)
    def list_keys(self, app_id):
        app = self.state.sync_app(self.authorize(app_id).app_id)
        return {"keys": public_keys(app.record["keys"])}

    @appier.route("/apps/%s/keys" % APP, "POST", json=True)
    def add_key(self, app_id):
        app = self.authorize(app_id)
        try:
            pair = self.state.store.add_app_key(app.app_id)
        except AppKeysError as error:
            raise errors.HttpError(400, str(error)) from None
        if pair is None:
            raise errors.HttpError(404, "Unknown app")
        self.state.sync_app(app.app_id)
        self.request.set_code(201)
        return dict(pair, app_id=app.app_id)

    @appier.route("/apps/%s/keys/<regex('[^/]+'):key>" % APP, "DELETE", json=True)
    def revoke_key(self, app_id, key):
        app = self.authorize(app_id)
        try:
            record = self.state.store.revoke_app_key(app.app_id, key)
        except AppKeysError as error:
            raise errors.HttpError(400, str(error)) from None
        if record is None:
            raise errors.HttpError(404, "Unknown key")
        app = self.state.sync_app(app.app_id)
        return {"keys": public_keys(app.record["keys"])}
