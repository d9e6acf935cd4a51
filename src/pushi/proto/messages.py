"""Client messages in, server messages out, for both dialects.

``parse`` validates one client text message into a dict with ``event``
(str), ``data`` and ``channel`` (str or None).  The builders return the
JSON text of each server message; broadcasts are built once and framed
once by the caller.
"""

import json
import math
import os
import re
import time
from collections.abc import Iterable
from typing import Any, NoReturn

from . import errors

MAX_EVENT_NAME = 200

MAX_DEPTH = 100
""" Arrays and objects a client's JSON may nest: every later encoding of
it (the size check, the delivery, the webhooks, the console) recurses as
deep """

PUSHI = "pushi"
PUSHER = "pusher"

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# what ``_dumps`` makes of a string (``JSONEncoder.encode`` without
# ensure_ascii)
_encode_string = json.encoder.encode_basestring


_RANDOM_HEX: list[str] = []
""" 64 random bits each (16 hex digits), from one ``os.urandom`` call per
512 message ids rather than one each: ``pop`` and ``extend`` are atomic,
so threads never share one, and a forked child starts without them """
os.register_at_fork(after_in_child=_RANDOM_HEX.clear)


def _random_hex() -> str:
    try:
        return _RANDOM_HEX.pop()
    except IndexError:
        digits = os.urandom(4096).hex()
        _RANDOM_HEX.extend([digits[i : i + 16] for i in range(0, len(digits), 16)])
        return _RANDOM_HEX.pop()


def message_id(now: float | None = None) -> str:
    """A stored event's ``mid``: 12 hex digits of milliseconds, then 64
    random bits.  Ids grow with time, so a store's unique index on them
    takes each new one at its end instead of at a random page."""
    milliseconds = int((time.time() if now is None else now) * 1000)
    return "%012x%s" % (milliseconds, _random_hex())


def dumps(value: Any) -> str:
    """Compact JSON text, UTF-8 characters kept as they are."""
    return _dumps(value)


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("Number out of range: %.32s" % text)
    return value


def _constant(name: str) -> NoReturn:
    raise ValueError("Not a JSON value: %s" % name)


_strict = json.JSONDecoder(parse_float=_finite, parse_constant=_constant).decode
_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


class TooDeep(ValueError):
    """JSON nested over ``MAX_DEPTH`` arrays and objects."""

    def __init__(self) -> None:
        ValueError.__init__(self, "JSON nested over %d levels" % MAX_DEPTH)


def loads(text: str | bytes) -> Any:
    """Parses JSON from a client: ``text`` a str, or bytes that must be
    UTF-8.  Raises ``ValueError`` for what the standard refuses but Python
    accepts (NaN, Infinity, a number out of a float's range, an escaped
    surrogate that pairs with nothing, which no UTF-8 text can carry), and
    ``TooDeep`` for nesting over ``MAX_DEPTH``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        value = _strict(text)
    except RecursionError:
        raise TooDeep() from None
    # nesting needs as many opening brackets: most messages skip the walk
    if text.count("[") + text.count("{") > MAX_DEPTH and _deeper(value, MAX_DEPTH):
        raise TooDeep()
    # pairs decode to one character: only a lone half fails to encode
    if _SURROGATE.search(text) is not None:
        _dumps(value).encode("utf-8")
    return value


def _deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` nests over ``limit`` arrays and objects (walked
    without recursion, so that any depth can be measured)."""
    if not isinstance(value, (dict, list)):
        return False
    stack = [(value, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def parse(text: str | bytes, max_event_name: int = MAX_EVENT_NAME) -> dict[str, Any]:
    """Parses one client message; raises ``ProtocolError`` (4300) if bad."""
    try:
        message = loads(text)
    except TooDeep as error:
        raise errors.ProtocolError(errors.INVALID_MESSAGE, str(error)) from None
    except ValueError:
        raise errors.ProtocolError(
            errors.INVALID_MESSAGE, "Message is not valid JSON"
        ) from None
    if not isinstance(message, dict):
        raise errors.ProtocolError(
            errors.INVALID_MESSAGE, "Message is not a JSON object"
        )
    event = message.get("event")
    if not isinstance(event, str) or not event:
        raise errors.ProtocolError(errors.INVALID_MESSAGE, "Message has no event name")
    if len(event) > max_event_name:
        raise errors.ProtocolError(
            errors.INVALID_MESSAGE, "Event name over %d characters" % max_event_name
        )
    channel = message.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise errors.ProtocolError(errors.INVALID_MESSAGE, "Channel is not a string")
    data = message.get("data")
    # pusher-js sends the data of pusher: events as an object; some clients
    # send it as a JSON string: accept both for the protocol's own events
    if event.startswith("pusher:") and isinstance(data, str) and data[:1] == "{":
        try:
            data = loads(data)
        except ValueError:
            pass
    message["data"] = data
    message["channel"] = channel
    return message


def connection_established(socket_id: str, activity_timeout: int) -> str:
    """First message: ``data`` is a JSON string, as pysher expects."""
    # built as text: what ``dumps`` of the two dicts gives, for the one
    # message every socket gets (``dumps`` of a string is
    # ``_encode_string``'s)
    data = (
        '{"socket_id":'
        + _encode_string(socket_id)
        + ',"activity_timeout":'
        + str(int(activity_timeout))
        + "}"
    )
    return (
        '{"event":"pusher:connection_established","data":' + _encode_string(data) + "}"
    )


def error(code: int, message: str, channel: str | None = None) -> str:
    """``pusher:error`` with ``{code, message}`` data (and the ``channel``
    of the request it refuses, when there is one)."""
    error: dict[str, Any] = {
        "event": "pusher:error",
        "data": {"code": code, "message": message},
    }
    if channel is not None:
        error["channel"] = channel
    return dumps(error)


def pong() -> str:
    return '{"event":"pusher:pong","data":{}}'


def ping() -> str:
    return '{"event":"pusher:ping","data":{}}'


def subscription_succeeded(channel: str, data: dict[str, Any]) -> str:
    """``data`` (a dict) travels as a JSON string."""
    return dumps(
        {
            "event": "pusher_internal:subscription_succeeded",
            "channel": channel,
            "data": dumps(data),
        }
    )


def subscription_error(
    channel: str | None, type: str, message: str, status: int
) -> str:
    return dumps(
        {
            "event": "pusher:subscription_error",
            "channel": channel,
            "data": {"type": type, "error": message, "status": status},
        }
    )


def unsubscription_succeeded(channel: str) -> str:
    return dumps(
        {
            "event": "pusher_internal:unsubscription_succeeded",
            "channel": channel,
            "data": "{}",
        }
    )


def event(name: str, channel: str, data: Any, **extra: Any) -> str:
    """A channel event; ``extra`` fields (``user_id``, ``mid``,
    ``timestamp``) ride at the top level, where pusher-js ignores them."""
    message = {"event": name, "channel": channel, "data": data}
    for key, value in extra.items():
        if value is not None:
            message[key] = value
    return dumps(message)


def member_added(channel: str, user_id: str, user_info: Any, dialect: str) -> str:
    """Member joined, in the words of each dialect."""
    member = {"user_id": user_id, "user_info": user_info}
    return _member("member_added", channel, member, dialect)


def member_removed(channel: str, user_id: str, dialect: str) -> str:
    """Member left (its last socket on the channel), in each dialect."""
    return _member("member_removed", channel, {"user_id": user_id}, dialect)


def _member(name: str, channel: str, member: dict[str, Any], dialect: str) -> str:
    """Pusher clients read ``pusher_internal:<name>`` with the member as a
    JSON string in ``data``; Pushi clients read ``pusher:<name>`` with it
    in ``member`` (and ``data``)."""
    text = dumps(member)
    if dialect == PUSHI:
        message = {"event": "pusher:" + name, "member": text}
    else:
        message = {"event": "pusher_internal:" + name}
    message.update(channel=channel, data=text)
    return dumps(message)


def signin_success(user_data: str) -> str:
    return dumps({"event": "pusher:signin_success", "data": {"user_data": user_data}})


def latest(channel: str, events: list[Any]) -> str:
    return dumps(
        {
            "event": "pusher_internal:latest",
            "channel": channel,
            "data": dumps({"channel": channel, "events": events}),
        }
    )


def subscription_count(channel: str, count: int) -> str:
    """``pusher_internal:subscription_count``: pusher-js keeps it in
    ``channel.subscriptionCount`` and emits ``pusher:subscription_count``."""
    return dumps(
        {
            "event": "pusher_internal:subscription_count",
            "channel": channel,
            "data": dumps({"subscription_count": count}),
        }
    )


def watchlist_events(events: Iterable[tuple[str, Iterable[str]]]) -> str:
    """``pusher_internal:watchlist_events`` with ``events`` a list of
    ``(name, user_ids)``, name ``online`` or ``offline``."""
    data = {
        "events": [
            {"name": name, "user_ids": list(user_ids)} for name, user_ids in events
        ]
    }
    return dumps({"event": "pusher_internal:watchlist_events", "data": dumps(data)})
