"""Signatures: channel and user auth, the signed HTTP API, webhooks.

Every signature is a hex HMAC-SHA256 with the app secret, compared in
constant time.  Pure functions over strings: no socket, no store.
"""

import hashlib
import hmac
import time
from collections.abc import Mapping

from . import errors

API_TIMESTAMP_WINDOW = 600
""" Seconds an HTTP API request's ``auth_timestamp`` may be off server time """


def sign(secret: str, string_to_sign: str) -> str:
    """Hex HMAC-SHA256 of ``string_to_sign`` keyed with ``secret``."""
    return hmac.new(
        secret.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def channel_string(
    socket_id: str, channel: str, channel_data: str | None = None
) -> str:
    """The string a private/presence/personal subscription signs."""
    if channel_data is None:
        return "%s:%s" % (socket_id, channel)
    return "%s:%s:%s" % (socket_id, channel, channel_data)


def user_string(socket_id: str, user_data: str) -> str:
    """The string a ``pusher:signin`` signs."""
    return "%s::user::%s" % (socket_id, user_data)


def token(key: str, secret: str, string_to_sign: str) -> str:
    """The ``<key>:<hex>`` token a client presents."""
    return "%s:%s" % (key, sign(secret, string_to_sign))


def channel_auth(
    key: str,
    secret: str,
    socket_id: str,
    channel: str,
    channel_data: str | None = None,
) -> str:
    """What an app's auth endpoint returns in ``auth`` for a channel."""
    return token(key, secret, channel_string(socket_id, channel, channel_data))


def verify_token(key: str, secret: str, string_to_sign: str, presented: object) -> bool:
    """True when ``presented`` is ``<key>:<hex>`` for this app and string.

    The whole token, key prefix included, is compared in constant time.
    """
    if not isinstance(presented, str):
        return False
    expected = token(key, secret, string_to_sign)
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))


def verify_any(
    secrets: Mapping[str, str], string_to_sign: str, presented: object
) -> str | None:
    """The key of ``secrets`` (key: secret, an app's live pairs) whose
    pair signed ``presented`` (``<key>:<hex>``), or None.  The pair is the
    one the token names: keys are public, only the signature is compared
    (in constant time)."""
    if not isinstance(presented, str):
        return None
    key = presented.partition(":")[0]
    secret = secrets.get(key)
    if secret is None or not verify_token(key, secret, string_to_sign, presented):
        return None
    return key


def body_md5(body: bytes) -> str:
    """Hex MD5 of a raw request body (bytes)."""
    return hashlib.md5(body).hexdigest()


def api_string(method: str, path: str, params: Mapping[str, str]) -> str:
    """``METHOD\\nPATH\\nQUERY`` with QUERY the sorted, lower-cased,
    unescaped ``k=v`` pairs of every parameter but ``auth_signature``."""
    pairs = sorted(
        (name.lower(), value)
        for name, value in params.items()
        if name.lower() != "auth_signature"
    )
    query = "&".join("%s=%s" % pair for pair in pairs)
    return "%s\n%s\n%s" % (method.upper(), path, query)


def sign_api(secret: str, method: str, path: str, params: Mapping[str, str]) -> str:
    """The ``auth_signature`` of an HTTP API request."""
    return sign(secret, api_string(method, path, params))


def signed_params(
    key: str,
    secret: str,
    method: str,
    path: str,
    params: Mapping[str, str] | None = None,
    body: bytes | None = None,
    now: float | None = None,
) -> dict[str, str]:
    """Query parameters of a signed HTTP API request (what SDKs send)."""
    params = dict(params or {})
    params.update(
        auth_key=key,
        auth_timestamp=str(int(now if now is not None else time.time())),
        auth_version="1.0",
    )
    if body:
        params["body_md5"] = body_md5(body)
    params["auth_signature"] = sign_api(secret, method, path, params)
    return params


def verify_api(
    key: str,
    secret: str,
    method: str,
    path: str,
    params: Mapping[str, str],
    body: bytes | None,
    now: float | None = None,
) -> None:
    """Checks a signed HTTP API request; raises ``HttpError`` 401 if not.

    ``params`` is the decoded query (one value per name), ``body`` the raw
    bytes.  ``body_md5`` is recomputed from the body whenever there is one.
    """
    if params.get("auth_key") != key:
        raise errors.HttpError(401, "Unknown auth_key")
    now = time.time() if now is None else now
    try:
        skew = abs(now - int(params.get("auth_timestamp", "")))
    except (ValueError, OverflowError):
        # OverflowError: an integer too large for the float it meets
        raise errors.HttpError(401, "Missing or invalid auth_timestamp") from None
    if skew > API_TIMESTAMP_WINDOW:
        raise errors.HttpError(
            401, "Timestamp expired: not within 600 s of server time"
        )
    # the only version whose signing rules these are
    if params.get("auth_version") != "1.0":
        raise errors.HttpError(401, "auth_version must be 1.0")
    if body:
        presented = params.get("body_md5", "")
        if not hmac.compare_digest(body_md5(body).encode(), presented.encode()):
            raise errors.HttpError(401, "body_md5 does not match the body")
    signature = params.get("auth_signature")
    if not isinstance(signature, str):
        raise errors.HttpError(401, "Missing auth_signature")
    expected = sign_api(secret, method, path, params)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise errors.HttpError(401, "Invalid signature")


def webhook_signature(secret: str, body: bytes) -> str:
    """``X-Pusher-Signature`` of a webhook body (bytes)."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
