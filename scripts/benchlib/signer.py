"""Signing of Pusher HTTP API requests (protocol reference, section 6).

``auth_signature`` is the hex HMAC-SHA256, keyed with the app secret, of
``METHOD\\nPATH\\nQUERY`` where QUERY holds every query parameter except the
signature, keys lower-cased and sorted, joined as ``k=v`` with ``&`` and not
URL-escaped.  ``body_md5`` is the hex MD5 of the raw body whenever there is one.
A private or personal channel's subscription carries ``channel_auth``.
"""

import hashlib
import hmac
import time


def body_md5(body):
    """Returns the hex MD5 digest of ``body`` (bytes or str)."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    return hashlib.md5(body).hexdigest()


def string_to_sign(method, path, params):
    """Returns the string that is signed for ``method``, ``path`` and the
    query ``params`` (a dict, without ``auth_signature``)."""
    items = sorted((str(k).lower(), str(v)) for k, v in params.items())
    query = "&".join("%s=%s" % (k, v) for k, v in items)
    return "%s\n%s\n%s" % (method.upper(), path, query)


def sign(secret, method, path, params):
    """Returns the hex ``auth_signature`` for the request."""
    message = string_to_sign(method, path, params)
    return hmac.new(
        secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def signed_params(key, secret, method, path, body=None, timestamp=None, extra=None):
    """Returns the full query parameters (a dict, signature included) for a
    signed request with the optional raw ``body`` and ``extra`` parameters."""
    params = dict(extra or {})
    params["auth_key"] = key
    params["auth_timestamp"] = str(
        int(time.time()) if timestamp is None else int(timestamp)
    )
    params["auth_version"] = "1.0"
    if body:
        params["body_md5"] = body_md5(body)
    params["auth_signature"] = sign(secret, method, path, params)
    return params


def signed_query(key, secret, method, path, body=None, timestamp=None):
    """Returns the query string (without ``?``) of a signed request.  Values
    are hex, digits or the key, so no escaping is needed."""
    params = signed_params(key, secret, method, path, body, timestamp)
    return "&".join("%s=%s" % (k, v) for k, v in params.items())


def channel_auth(key, secret, socket_id, channel):
    """Returns the ``auth`` of a private or personal channel subscription:
    ``<key>:`` and the hex HMAC-SHA256 of ``<socket_id>:<channel>``."""
    message = "%s:%s" % (socket_id, channel)
    digest = hmac.new(
        secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256
    ).hexdigest()
    return "%s:%s" % (key, digest)
