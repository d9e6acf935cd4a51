"""Who may act on an app: signed Pusher requests, Pushi session tokens,
and the admin secret.  One ``Access`` per process (built by ``State``) is
shared by the Appier controllers, the lean publish handler and the debug
console's stream, so all check credentials the same way; its ``rates``
keep each app to its per-second limits.  The WebSocket server asks it too
whether a socket may join an app (``admit_socket``).

Session tokens live in ``MemoryTokens``: the whole story of one process.
A node of a cluster also has ``shared`` tokens (``cluster/tokens.py``,
in Redis), the same interface, blocking: a token issued by any node holds
on every node, and one ended on any node ends everywhere.  The memory then
is this node's view (what the loop may read without waiting): tokens issued
here or met here, dropped when another node says they ended; the REST
threads ask the shared tokens first.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

from pushi.proto import auth, errors

from .rates import Rates

if TYPE_CHECKING:
    from .apps import AppDirectory
    from .limits import App

logger = logging.getLogger("pushi")

TOKEN_LIFETIME = 86400
MAX_TOKENS = 1000
"""Live session tokens per app; a new one past it ends the app's oldest."""

TokenEntry = tuple[str, float, "str | None"]
"""A session token's ``(app_id, expires, key or None)``."""


def token_id(token: str) -> str:
    """The name a session token is kept under: its SHA-256 (hex), so that
    no store nor message between nodes ever holds the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokensUnavailable(Exception):
    """The shared session tokens cannot be read or written now (Redis is
    down or too slow)."""


class MemoryTokens:
    """Session tokens in memory: ``id -> (app_id, expires, key or None)``
    (``key``: the app key logged in with; None for the admin's), at most
    ``max_tokens`` per app (by default ``MAX_TOKENS``; a new one past it
    ends the app's oldest).  Any thread; ``get`` takes no lock (safe on
    the loop).  The methods that end tokens return the ids they ended."""

    def __init__(self, max_tokens: int | None = None) -> None:
        self.max_tokens = max_tokens
        self._tokens: dict[str, TokenEntry] = {}
        self._by_app: dict[
            str, dict[str, None]
        ] = {}  # app_id: its token ids, oldest (first to expire) first
        self._lock = threading.Lock()

    def add(
        self, ident: str, entry: TokenEntry, lifetime: float | None = None
    ) -> list[str]:
        now = time.time()
        limit = self.max_tokens or MAX_TOKENS
        ended: list[str] = []
        with self._lock:
            # all live as long, so the oldest expire first: a few steps per
            # login keep an app's tokens bounded and none kept past expiry
            mine = self._by_app.setdefault(entry[0], {})
            while mine:
                oldest = next(iter(mine))
                if len(mine) < limit and self._tokens[oldest][1] > now:
                    break
                del mine[oldest], self._tokens[oldest]
                ended.append(oldest)
            mine[ident] = None
            self._tokens[ident] = entry
        return ended

    def get(self, ident: str) -> TokenEntry | None:
        return self._tokens.get(ident)

    def remove(self, ident: str) -> TokenEntry | None:
        """Ends one token; returns its entry, None if it was unknown."""
        with self._lock:
            entry = self._tokens.pop(ident, None)
            if entry is not None:
                del self._by_app[entry[0]][ident]
            return entry

    def revoke(self, app_id: str) -> list[str]:
        with self._lock:
            ended = list(self._by_app.pop(app_id, ()))
            for ident in ended:
                del self._tokens[ident]
        return ended

    def revoke_keys(self, app_id: str, keys: Collection[str]) -> list[str]:
        """Ends the tokens of ``app_id`` logged in with a key not in
        ``keys`` (the admin's have no key and stay)."""
        ended: list[str] = []
        with self._lock:
            mine = self._by_app.get(app_id, {})
            for ident in list(mine):
                key = self._tokens[ident][2]
                if key is not None and key not in keys:
                    del mine[ident], self._tokens[ident]
                    ended.append(ident)
        return ended

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._tokens)


class NeedsStore(Exception):
    """A check on the loop thread needs the store: the request names a key
    the app in memory does not hold (one another process may have added),
    so it is answered off the loop instead."""


class Access:
    """Checks credentials against the app directory and the admin secret."""

    def __init__(
        self,
        apps: AppDirectory,
        admin_secret: str | None = None,
        token_lifetime: float = TOKEN_LIFETIME,
    ) -> None:
        self.apps = apps
        self.admin_secret = admin_secret
        self.token_lifetime = token_lifetime
        self.tokens = MemoryTokens()
        self.shared: Any = None
        """ The cluster's tokens (``cluster/tokens.RedisTokens``), or None
        for one process """
        self.ended: Callable[[list[str]], Any] | None = None
        """ ``ended(ids)``: tokens this node ended in ``shared`` (logout,
        or pushed out by newer logins), for the other nodes to forget """
        self.rates = Rates()

    def app(self, app_id: Any) -> App:
        """The app, or ``HttpError`` 404."""
        app = (
            self.apps.load_id(app_id)
            if isinstance(app_id, str) and app_id.isdigit()
            else None
        )
        if app is None:
            raise errors.HttpError(404, "Unknown app")
        return app

    def login(self, app_id: Any, key: Any, secret: Any) -> tuple[App, str]:
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
        # a valid pair has an app: the check names it for the type checker
        if not valid or app is None:
            raise errors.HttpError(401, "Invalid app credentials")
        return app, self._issue(app, key)

    def admin_login(self, app_id: Any, header: str | None) -> tuple[App, str]:
        """A session token for any app, to the admin secret (``POST /login``
        with ``Authorization: Bearer <admin secret>`` and an ``app_id``):
        the debug console signs in as admin this way and keeps only the
        token, never the secret."""
        self.require_admin(header)
        app = self.app(app_id)
        return app, self._issue(app)

    def _issue(self, app, key=None):
        token = secrets.token_urlsafe(32)
        ident = token_id(token)
        entry = (app.app_id, time.time() + self.token_lifetime, key)
        if self.shared is not None:
            self._ended(
                self._shared(self.shared.add, ident, entry, self.token_lifetime)
            )
        self.tokens.add(ident, entry)
        return token

    def _shared(self, work, *args):
        """``work(*args)`` on the shared tokens, or ``HttpError`` 503."""
        try:
            return work(*args)
        except TokensUnavailable:
            raise errors.HttpError(
                503, "Session store unavailable: retry shortly"
            ) from None

    @staticmethod
    def _quietly(work, *args):
        """``work(*args)`` on the shared tokens after an app change the
        store already holds: a failure is logged, and the tokens it missed
        are refused anyway (``_holds`` checks the app and its keys)."""
        try:
            work(*args)
        except TokensUnavailable as error:
            logger.warning("Session tokens not ended in Redis: %s", error)

    def _ended(self, ids):
        """Tokens ended in the shared store: gone here too, and told to
        the other nodes."""
        if not ids:
            return
        self.forget(ids)
        if self.ended is not None:
            self.ended(ids)

    def forget(self, ids: Iterable[str]) -> None:
        """Drops tokens from this node's memory (another node ended them)."""
        for ident in ids:
            self.tokens.remove(ident)

    def revoke(self, app_id: str) -> None:
        """Ends every session token of an app (it was disabled)."""
        self.tokens.revoke(app_id)
        if self.shared is not None:
            self._quietly(self.shared.revoke, app_id)

    def revoke_keys(self, app: App) -> None:
        """Ends the session tokens of an app logged in with a key it no
        longer holds (the admin's tokens have no key and stay)."""
        keys = set(app.secrets)
        self.tokens.revoke_keys(app.app_id, keys)
        if self.shared is not None:
            self._quietly(self.shared.revoke_keys, app.app_id, keys)

    def logout(self, token: str) -> bool:
        """Ends one session token (``POST /logout``); True if it was live."""
        ident = token_id(token)
        entry = self.tokens.remove(ident)
        if self.shared is not None:
            entry = self._shared(self.shared.remove, ident) or entry
            self._ended([ident])
        if entry is None:
            return False
        return entry[1] > time.time()

    def revalidate(self) -> None:
        """Forgets the tokens in memory that the shared store no longer
        holds (blocking): after this node may have missed another's word
        that they ended."""
        if self.shared is None:
            return
        ids = self.tokens.ids()
        if ids:
            present = self.shared.exist(ids)
            self.forget(
                [ident for ident, held in zip(ids, present, strict=True) if not held]
            )

    def is_live(self, token: Any, app_id: str) -> bool:
        """Whether ``token`` is a live session token of ``app_id`` (memory
        only: safe on the loop)."""
        entry = self.tokens.get(token_id(token)) if isinstance(token, str) else None
        return entry is not None and entry[1] > time.time() and entry[0] == app_id

    def _lookup(self, token):
        """The entry of a live session token; None if not live.  A node
        of a cluster reads the shared tokens (then kept in memory, or
        forgotten: a logout on another node ends it here at once, before
        that node's word arrives), and its memory only while Redis does
        not answer (blocking; raises ``TokensUnavailable`` when neither
        knows the token)."""
        if not isinstance(token, str) or not token:
            return None
        ident = token_id(token)
        entry = self.tokens.get(ident)
        if self.shared is not None:
            try:
                shared = self.shared.get(ident)
            except TokensUnavailable:
                if entry is None:
                    raise
            else:
                if shared is None:
                    if entry is not None:
                        self.tokens.remove(ident)
                else:
                    self.tokens.add(ident, shared)
                entry = shared
        return entry if entry is not None and entry[1] > time.time() else None

    def _holds(self, token, app, blocking):
        """Whether ``token`` is a live session token of ``app``: from
        memory, else (a cluster's token met here first) from the shared
        tokens, which only a ``blocking`` caller may read."""
        if self.is_live(token, app.app_id):
            return True
        if self.shared is None or not token:
            return False
        if not blocking:
            raise NeedsStore()
        entry = self._shared(self._lookup, token)
        # a key revoked while Redis missed it is checked here too
        return (
            entry is not None
            and entry[0] == app.app_id
            and (entry[2] is None or entry[2] in app.secrets)
        )

    def session_app(self, token: Any, app_id: str) -> App | None:
        """The app a live session token was issued for, when that is
        ``app_id``; else None (blocking: may read the store)."""
        try:
            entry = self._lookup(token)
        except TokensUnavailable:
            return None
        if entry is None or entry[0] != app_id:
            return None
        return self.apps.load_id(app_id)

    def bearer(self, header: Any) -> str | None:
        """The token of an ``Authorization: Bearer`` header, or None."""
        if isinstance(header, str) and header[:7].lower() == "bearer ":
            return header[7:].strip()
        return None

    def is_admin(self, header: Any) -> bool:
        token = self.bearer(header)
        return bool(
            self.admin_secret
            and token
            and hmac.compare_digest(self.admin_secret.encode(), token.encode())
        )

    def require_admin(self, header: Any) -> None:
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
        try:
            entry = self._lookup(token)
        except TokensUnavailable:
            return None
        return entry[0] if entry is not None else None

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

    def authorize(
        self,
        app_id: Any,
        method: str,
        path: str,
        params: dict[str, Any],
        body: Any,
        header: Any,
        blocking: bool = True,
    ) -> App:
        """The app a request may act on, by Pusher signature (with any of
        the app's live pairs), session token or admin secret; raises
        ``HttpError`` 401/403/404.  A disabled app answers to the admin
        secret only (who may enable it again).  Not ``blocking`` (on the
        loop, for an app in memory): raises ``NeedsStore`` rather than
        read the store."""
        app = self.app(app_id)
        if "auth_signature" in params or "auth_key" in params:
            # the pair the request names; an unknown key fails as before
            key: Any = params.get("auth_key")
            if isinstance(key, str) and key not in app.secrets:
                if not blocking:
                    raise NeedsStore()
                app = self.apps.fresh(app, key)
            secret = app.secrets.get(key) if isinstance(key, str) else None
            if secret is None:
                key, secret = app.key, app.secret
            auth.verify_api(key, secret, method, path, params, body)
        elif not (
            self.is_admin(header) or self._holds(self.bearer(header), app, blocking)
        ):
            raise errors.HttpError(401, self._refusal(app, self.bearer(header)))
        if not app.enabled and not self.is_admin(header):
            raise errors.HttpError(403, "App disabled")
        return app

    def admit(self, app: App, setting: str, header: Any, cost: int = 1) -> None:
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
                % (setting, getattr(app.limits, setting), wait),
                retry_after=wait,
            )

    def admit_socket(
        self,
        app: App | None,
        key: str,
        origin: str | None,
        open_sockets: Callable[[str], int],
    ) -> tuple[int, str] | None:
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
        allowed = app.limits.allowed_origins
        if allowed and origin not in allowed:
            return errors.UNAUTHORIZED, "Origin not allowed for this app"
        quota = app.limits.max_connections
        if quota and open_sockets(app.app_id) >= quota:
            return errors.OVER_QUOTA, "App over its connection quota"
        if self.rates.take(app, "max_connections_per_second"):
            return (
                errors.OVER_CONNECTION_RATE,
                "App over its max_connections_per_second: reconnect later",
            )
        return None
