"""What every controller needs: the state and request authorization."""

import appier

from pushi.app.publish import json_object, query_params
from pushi.base import rates

APP = "<regex('[0-9]+'):app_id>"
""" The route part of an app id (numeric, as Pusher SDKs require) """


class PushiController(appier.Controller):
    """Base of Pushi's controllers."""

    @property
    def state(self):
        return self.owner.state

    @property
    def access(self):
        return self.owner.access

    def params(self):
        """The decoded query, one value per name (what a signature covers;
        400 if a name repeats)."""
        return query_params(self.request.query)

    def param(self, name, default=None):
        """One query value, as signed (never Appier's ``field``, which also
        reads form bodies and takes the first of repeated names)."""
        return self.params().get(name, default)

    def authorize(self, app_id):
        """The app this request may act on (signature, token or admin); a
        read (``GET``) counts against the app's read rate (429 past it)."""
        request = self.request
        app = self.access.authorize(
            app_id,
            request.method,
            request.path,
            self.params(),
            request.get_data() or b"",
            self.authorization(),
        )
        if request.method == "GET":
            self.access.admit(app, rates.READS, self.authorization())
        return app

    def authorization(self):
        """The request's Authorization header (see ``PushiApp.application``)."""
        return self.request.environ.get("pushi.authorization")

    def body(self):
        """The JSON body as a dict (form fields when not JSON)."""
        data = self.request.get_data() or b""
        content_type = self.request.get_header("Content-Type") or ""
        if "json" in content_type or data[:1] == b"{":
            return json_object(data)
        return {name: values[0] for name, values in self.request.post.items() if values}
