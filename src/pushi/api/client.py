"""The Python client of a Pushi server's REST API.

Every request is signed with the app secret (Pusher's HTTP API
signature), so the secret itself never travels.

    import pushi
    proxy = pushi.Pushi(app_id="1", app_key="...", app_secret="...")
    proxy.trigger_event(channel="global", data="hello world", event="message")
"""

import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from pushi.proto import auth

DEFAULT_URL = "http://127.0.0.1:8080/"


class PushiError(Exception):
    """A REST call that failed: ``status`` is the server's HTTP status and
    ``message`` its reason, or ``status`` is None when no answer came (the
    server unreachable, a timeout, a broken connection or TLS check)."""

    def __init__(self, status: int | None, message: str) -> None:
        Exception.__init__(
            self, message if status is None else "%d: %s" % (status, message)
        )
        self.status = status
        self.message = message


class Pushi:
    """A proxy to one app of a Pushi server."""

    def __init__(
        self,
        app_id: str | int,
        app_key: str,
        app_secret: str,
        base_url: str | None = None,
        timeout: float = 30,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``ssl_context`` (an ``ssl.SSLContext``) checks an ``https://``
        server, e.g. one with a certificate of your own CA."""
        self.app_id = str(app_id)
        self.app_key = app_key
        self.app_secret = app_secret
        self.base_url = base_url or os.environ.get("PUSHI_URL") or DEFAULT_URL
        if not self.base_url.endswith("/"):
            self.base_url += "/"
        self.timeout = timeout
        self.ssl_context = ssl_context

    def trigger_event(
        self,
        channel: str | list[str] | tuple[str, ...],
        data: Any,
        event: str = "message",
        persist: bool | None = None,
        socket_id: str | None = None,
    ) -> Any:
        """Sends ``event`` with ``data`` to ``channel`` (a name or a list).

        ``data`` goes as it is (a string, or any JSON value); ``persist``
        stores it (the server's default for this body is to store);
        ``socket_id`` excludes that socket from the delivery.
        """
        body: dict[str, Any] = {"event": event, "data": data}
        if isinstance(channel, (list, tuple)):
            body["channels"] = list(channel)
        else:
            body["channel"] = channel
        if persist is not None:
            body["persist"] = bool(persist)
        if socket_id is not None:
            body["socket_id"] = socket_id
        return self._request("POST", "apps/%s/events" % self.app_id, body=body)

    def get_events(self, channel: str, skip: int = 0, count: int = 10) -> Any:
        """Stored events of ``channel``, newest first."""
        return self._request(
            "GET",
            "apps/%s/events" % self.app_id,
            params={"channel": channel, "skip": str(skip), "count": str(count)},
        )

    def subscribe(self, user_id: str, event: str) -> Any:
        """Makes ``user_id`` keep a stream of channel ``event``."""
        return self._request(
            "POST",
            "apps/%s/subscribe" % self.app_id,
            body={"user_id": user_id, "event": event},
        )

    def unsubscribe(self, user_id: str, event: str) -> Any:
        return self._request(
            "POST",
            "apps/%s/unsubscribe" % self.app_id,
            body={"user_id": user_id, "event": event},
        )

    def authenticate(
        self, channel: str, socket_id: str, channel_data: Any = None
    ) -> dict[str, str]:
        """What an app's auth endpoint answers for a private, presence or
        personal subscription: ``{"auth": ...}`` (plus ``channel_data``).

        ``channel_data`` may be a dict (serialised here, once) or the exact
        string to sign.
        """
        if channel_data is not None and not isinstance(channel_data, str):
            channel_data = json.dumps(channel_data, separators=(",", ":"))
        result = {
            "auth": auth.channel_auth(
                self.app_key, self.app_secret, socket_id, channel, channel_data
            )
        }
        if channel_data is not None:
            result["channel_data"] = channel_data
        return result

    def authenticate_user(self, socket_id: str, user_data: Any) -> dict[str, str]:
        """What a user authentication endpoint answers for ``pusher:signin``."""
        if not isinstance(user_data, str):
            user_data = json.dumps(user_data, separators=(",", ":"))
        return {
            "auth": auth.token(
                self.app_key, self.app_secret, auth.user_string(socket_id, user_data)
            ),
            "user_data": user_data,
        }

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        data = json.dumps(body).encode("utf-8") if body is not None else b""
        signed = auth.signed_params(
            self.app_key, self.app_secret, method, "/" + path, params, data
        )
        url = self.base_url + path + "?" + urllib.parse.urlencode(signed)
        request = urllib.request.Request(url, data=data or None, method=method)
        if data:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self.ssl_context
            ) as response:
                status, answer = response.status, response.read()
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("message", error.reason)
            except Exception:
                message = error.reason
            raise PushiError(error.code, message) from None
        except (OSError, http.client.HTTPException) as error:
            # URLError (refused, unknown host, TLS), timeouts, resets, and a
            # malformed answer; the query is left out of the message
            reason = getattr(error, "reason", None) or error
            raise PushiError(
                None, "%s %s%s failed: %s" % (method, self.base_url, path, reason)
            ) from error
        try:
            return json.loads(answer or b"{}")
        except ValueError:
            raise PushiError(status, "the answer is not JSON") from None
