"""Who may act on an app: signed Pusher requests, Pushi session tokens,
and the admin secret.  One ``Access`` per process (built by ``State``) is
shared by the Appier controllers, the lean publish handler and the debug
console's stream, so all check credentials the same way; its ``rates``
keep each app to its per-second limits.  The WebSocket server asks it too
whether a socket may join an app (``admit_socket``).
"""

import hmac
import secrets
import threading
import time

from pushi.proto import auth, errors

from .rates import Rates

TOKEN_LIFETIME = 86400
MAX_TOKENS = 1000
"""Live session tokens per app; a new one past it ends the app's oldest."""


class NeedsStore(Exception):
    """A check on the loop thread needs the store: the request names a key
    the app in memory does not hold (one another process may have added),
    so it is answered off the loop instead."""


class Access:
    """Checks credentials against the app directory and the admin secret."""

    def __init__(self, apps, admin_secret=None, token_lifetime=TOKEN_LIFETIME):
        self.apps = apps
        self.admin_secret = admin_secret
        self.token_lifetime = token_lifetime
        self._tokens = {}  # token: (app_id, expires, key logged in with or None)
        self._by_app = {}  # app_id: its tokens, oldest (first to expire) first
        self._lock = threading.Lock()
        self.rates = Rates()

    def app(self, app_id):
        """The app, or ``HttpError`` 404."""
        app = (
            self.apps.load_id(app_id)
            if isinstance(app_id, str) and app_id.isdigit()
            else None
        )
        if app is None:
            raise errors.HttpError(404, "Unknown app")
        return app

    def login(self, app_id, key, secret):
        """A session token for an app's credentials (``POST /login``): its
        id or any live key, with that key's secret.  The token ends when
        that pair is revoked."""
        app = (
            self.apps.load_id(app_id)
            if isinstance(app_id, str) and app_id.isdigit()
            else None
        )
        if app is None and isinstance(key, str):
            app = self.apps.load_key(key)
        if app is not None and isinstance(key, str) and key not in app.secrets:
            app = self.apps.fresh(app, key)
        expected = app.secrets.get(key) if app is not None else None
        valid = (
            expected is not None
            and isinstance(secret, str)
            and hmac.compare_digest(expected.encode(), secret.encode())
        )
        if not valid:
            raise errors.HttpError(401, "Invalid app credentials")
        return app, self._issue(app, key)

    def admin_login(self, app_id, header):
        """A session token for any app, to the admin secret (``POST /login``
        with ``Authorization: Bearer <admin secret>`` and an ``app_id``):
        the debug console signs in as admin this way and keeps only the
        token, never the secret."""
        self.require_admin(header)
        app = self.app(app_id)
        return app, self._issue(app)

    def _issue(self, app, key=None):
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            # all live as long, so the oldest expire first: a few steps per
            # login keep an app's tokens bounded and none kept past expiry
            mine = self._by_app.setdefault(app.app_id, {})
            while mine:
                oldest = next(iter(mine))
                if len(mine) < MAX_TOKENS and self._tokens[oldest][1] > now:
                    break
                del mine[oldest], self._tokens[oldest]
            mine[token] = None
            self._tokens[token] = (app.app_id, now + self.token_lifetime, key)
        return token

    def revoke(self, app_id):
        """Ends every session token of an app (it was disabled)."""
        with self._lock:
            for token in self._by_app.pop(app_id, ()):
                del self._tokens[token]

    def revoke_keys(self, app):
        """Ends the session tokens of an app logged in with a key it no
        longer holds (the admin's tokens have no key and stay)."""
        with self._lock:
            mine = self._by_app.get(app.app_id, {})
            for token in list(mine):
                key = self._tokens[token][2]
                if key is not None and key not in app.secrets:
                    del mine[token], self._tokens[token]

    def logout(self, token):
        """Ends one session token (``POST /logout``); True if it was live."""
        with self._lock:
            entry = self._tokens.pop(token, None)
            if entry is None:
                return False
            del self._by_app[entry[0]][token]
            return entry[1] > time.time()

    def is_live(self, token, app_id):
        """Whether ``token`` is a live session token of ``app_id`` (memory
        only: safe on the loop)."""
        entry = self._tokens.get(token) if isinstance(token, str) else None
        return entry is not None and entry[1] > time.time() and entry[0] == app_id

    def session_app(self, token, app_id):
        """The app a live session token was issued for, when that is
        ``app_id``; else None (blocking: may read the store)."""
        return self.apps.load_id(app_id) if self.is_live(token, app_id) else None

    def bearer(self, header):
        """The token of an ``Authorization: Bearer`` header, or None."""
        if isinstance(header, str) and header[:7].lower() == "bearer ":
            return header[7:].strip()
        return None

    def is_admin(self, header):
        token = self.bearer(header)
        return bool(
            self.admin_secret
            and token
            and hmac.compare_digest(self.admin_secret.encode(), token.encode())
        )

    def require_admin(self, header):
        if not self.admin_secret:
            raise errors.HttpError(
                403, "App management over REST is off: set PUSHI_ADMIN_SECRET"
            )
        if self.is_admin(header):
            return
        token = self.bearer(header)
        if not token:
            message = "Admin secret required (Authorization: Bearer <admin secret>)"
        elif self._issued(token):
            message = (
                "A session token reaches its app only: managing apps needs the"
                " admin secret (PUSHI_ADMIN_SECRET) as Authorization: Bearer"
            )
        else:
            message = "Not the admin secret (PUSHI_ADMIN_SECRET)"
        raise errors.HttpError(401, message)

    def _issued(self, token):
        """The app id of a live session token, or None."""
        with self._lock:
            entry = self._tokens.get(token)
        return entry[0] if entry is not None and entry[1] > time.time() else None

    def _refusal(self, app, token):
        """Why ``token`` (a bearer token that is no live token of ``app``
        nor the admin secret) is refused, in words that help its sender
        and tell nothing they do not hold: the app's own secret or key sent
        as a token, another app's token, or a token unknown here (never
        issued, expired, ended, or issued before a restart)."""
        if not token:
            return "Sign the request or send Authorization: Bearer <token from /login>"
        if hmac.compare_digest(app.secret.encode(), token.encode()):
            return (
                "That is the app's secret, not a token: sign the request with"
                " it, or exchange it for a token at POST /login"
            )
        if hmac.compare_digest(app.key.encode(), token.encode()):
            return "That is the app's key, not a token: POST /login for a token"
        if self._issued(token) is not None:
            return (
                "Token of another app: log in to app %s (POST /login) for one"
                " of its own" % app.app_id
            )
        return (
            "Unknown or expired token (tokens last %d s and end at a restart):"
            " POST /login for a new one" % self.token_lifetime
        )

    def authorize(self, app_id, method, path, params, body, header, blocking=True):
        """The app a request may act on, by Pusher signature (with any of
        the app's live pairs), session token or admin secret; raises
        ``HttpError`` 401/403/404.  A disabled app answers to the admin
        secret only (who may enable it again).  Not ``blocking`` (on the
        loop, for an app in memory): raises ``NeedsStore`` rather than
        read the store."""
        app = self.app(app_id)
        if "auth_signature" in params or "auth_key" in params:
            # the pair the request names; an unknown key fails as before
            key = params.get("auth_key")
            if isinstance(key, str) and key not in app.secrets:
                if not blocking:
                    raise NeedsStore()
                app = self.apps.fresh(app, key)
            secret = app.secrets.get(key) if isinstance(key, str) else None
            if secret is None:
                key, secret = app.key, app.secret
            auth.verify_api(key, secret, method, path, params, body)
        elif not (
            self.is_live(self.bearer(header), app.app_id) or self.is_admin(header)
        ):
            raise errors.HttpError(401, self._refusal(app, self.bearer(header)))
        if not app.enabled and not self.is_admin(header):
            raise errors.HttpError(403, "App disabled")
        return app

    def admit(self, app, setting, header, cost=1):
        """Counts an authorized request of ``app`` against its per-second
        ``setting`` (``rates``); past it, ``HttpError`` 429 with the
        seconds to wait.  The admin secret's requests are the operator's,
        never counted: a tenant at its limit does not lock the operator out."""
        if self.is_admin(header):
            return
        wait = self.rates.take(app, setting, cost)
        if wait:
            raise errors.HttpError(
                429,
                "App over its %s (%d a second): retry in %d s"
                % (setting, app.limits[setting], wait),
                retry_after=wait,
            )

    def admit_socket(self, app, key, origin, open_sockets):
        """Whether a WebSocket opened with ``key`` (``app`` is the app
        that holds it, None if none does) from ``origin`` (its ``Origin``
        header, or None) may join the app: None if it may, and then it is
        counted against the app's ``max_connections_per_second``; else the
        ``(code, message)`` of the ``pusher:error`` that turns it away.
        ``open_sockets(app_id)`` counts the app's open sockets.  Memory
        only: safe on the loop."""
        if app is None or key not in app.secrets:
            return errors.UNKNOWN_APP, "App key not in this cluster"
        if not app.enabled:
            return errors.APP_DISABLED, "App disabled"
        allowed = app.limits.get("allowed_origins")
        if allowed and origin not in allowed:
            return errors.UNAUTHORIZED, "Origin not allowed for this app"
        quota = app.limits.get("max_connections")
        if quota and open_sockets(app.app_id) >= quota:
            return errors.OVER_QUOTA, "App over its connection quota"
        if self.rates.take(app, "max_connections_per_second"):
            return (
                errors.OVER_CONNECTION_RATE,
                "App over its max_connections_per_second: reconnect later",
            )
        return None
