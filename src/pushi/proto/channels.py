"""Channel names: grammar, kind, and the names Pushi builds itself.

The kind of a channel is read from the start of its name only.  Pusher's
grammar ``[A-Za-z0-9_\\-=@,.;]`` applies to every name; ``#`` is allowed only
in ``#server-to-user-<id>`` and ``:``/``&`` only in ``peer-<base>:<a>&<b>``.
A name such as ``peer-review``, which Pusher's grammar allows and no peer
channel can have, is a public channel, as on Pusher.
"""

import re
from typing import TypeGuard

from . import errors

MAX_NAME = 164

PUBLIC = "public"
PRIVATE = "private"
ENCRYPTED = "encrypted"
PRESENCE = "presence"
PERSONAL = "personal"
PEER = "peer"
USER = "user"

USER_PREFIX = "#server-to-user-"

_PLAIN = re.compile(r"^[A-Za-z0-9_\-=@,.;]+\Z")
_PEER = re.compile(
    r"^peer-([A-Za-z0-9_\-=@,.;]+):([A-Za-z0-9_\-=@,.;]+)&([A-Za-z0-9_\-=@,.;]+)\Z"
)


def kind(name: str) -> str:
    """The kind of channel ``name`` (one of the constants above)."""
    if name.startswith("private-encrypted-"):
        return ENCRYPTED
    if name.startswith("private-"):
        return PRIVATE
    if name.startswith("presence-"):
        return PRESENCE
    if name.startswith("personal-"):
        return PERSONAL
    if name.startswith("peer-") and _PEER.match(name):
        return PEER
    if name.startswith(USER_PREFIX):
        return USER
    return PUBLIC


def is_cache(name: str) -> bool:
    """True for the ``cache-`` variants, whose last event is replayed."""
    return (
        name.startswith("cache-")
        or name.startswith("private-cache-")
        or name.startswith("presence-cache-")
        or name.startswith("private-encrypted-cache-")
    )


def needs_auth(name: str) -> bool:
    """True for every kind that a client subscribes to with a signature."""
    return kind(name) in (PRIVATE, ENCRYPTED, PRESENCE, PERSONAL)


def is_valid(name: object, max_length: int = MAX_NAME) -> TypeGuard[str]:
    """True when ``name`` follows the grammar of its kind."""
    if not isinstance(name, str) or not name or len(name) > max_length:
        return False
    if name.startswith(USER_PREFIX):
        return bool(_PLAIN.match(name[len(USER_PREFIX) :]))
    return bool(_PLAIN.match(name) or _PEER.match(name))


def check(name: object, max_length: int = MAX_NAME) -> None:
    """Raises ``SubscriptionError`` (400) unless ``name`` is valid."""
    if not is_valid(name, max_length):
        raise errors.SubscriptionError(
            name if isinstance(name, str) else None,
            "Invalid channel name (at most %d of A-Z a-z 0-9 _ - = @ , . ;)"
            % max_length,
            status=400,
            type="InvalidChannel",
        )


def personal_user(name: str) -> str:
    """The user id of ``personal-<user_id>``."""
    return name[len("personal-") :]


def presence_base(name: str) -> str:
    """``x`` for ``presence-x``: the base shared with its peer channels."""
    return name[len("presence-") :]


def peer_name(base: str, user_a: str, user_b: str) -> str:
    """``peer-<base>:<a>&<b>`` with the two user ids sorted."""
    first, second = sorted((user_a, user_b))
    return "peer-%s:%s&%s" % (base, first, second)


def peer_presence(name: str) -> str | None:
    """``presence-<base>`` of a peer channel name, or None if not one."""
    match = _PEER.match(name)
    return "presence-" + match.group(1) if match else None


def peer_users(name: str) -> tuple[str, str] | None:
    """The two user ids of a peer channel name, or None if not one."""
    match = _PEER.match(name)
    return (match.group(2), match.group(3)) if match else None
