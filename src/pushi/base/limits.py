"""Per-app settings and limits, and their defaults.

An app record's ``settings`` dict overrides any of ``DEFAULTS``; ``App`` is
the immutable in-memory view of an app that the loop and the REST side
share (replaced, never mutated, when the app changes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from .webhooks import check_hooks


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """An app's settings: ``DEFAULTS`` overridden by its record's
    ``settings`` (checked by ``check_settings``)."""

    max_event_data: int = 10240
    max_publish_channels: int = 100
    max_batch: int = 10
    max_event_name: int = 200
    max_channel_name: int = 164
    max_socket_channels: int = 1000
    max_presence_members: int = 100
    max_user_info: int = 1024
    max_user_id: int = 128
    client_event_rate: int = 10
    max_connections: int = 0
    max_connections_per_second: int = 0
    max_backend_events_per_second: int = 0
    max_read_requests_per_second: int = 0
    allowed_origins: list = dataclasses.field(default_factory=list)
    latest_count: int = 10
    retention_count: int = 0
    retention_age: int = 0
    webhooks: list = dataclasses.field(default_factory=list)
    subscription_count_events: bool = False
    watchlist_events: bool = False
    max_watchlist: int = 100
    max_cache_bytes: int = 1048576
    recovery_history: int = 100
    recovery_ttl: int = 300
    max_recovery_bytes: int = 4194304

    def settings(self) -> dict[str, Any]:
        """Every setting by name (a new dict)."""
        return dataclasses.asdict(self)


DEFAULT_LIMITS = Limits()
""" The limits of an app whose record changes none """

DEFAULTS = DEFAULT_LIMITS.settings()
""" Every setting's default, by name """

MAX_SETTING = 2**31 - 1
""" The largest value of a number setting (0 is the least) """

MAX_LATEST = 100
""" The most stored events one read on a socket returns (``pusher:latest``,
and a personal channel's subscription data): it bounds what one read
costs the store and a worker (at the default event size, 10 KB, about
1 MB); older events are paged with ``skip`` """

MAX_RECOVERY_HISTORY = 10000
""" The most events one channel keeps for recovery """

MAX_RECOVERY_TTL = 86400
""" The most seconds an event is kept for recovery """

SETTING_MAX = {
    "latest_count": MAX_LATEST,
    "recovery_history": MAX_RECOVERY_HISTORY,
    "recovery_ttl": MAX_RECOVERY_TTL,
}
""" Number settings with a hard cap below ``MAX_SETTING``, even for the
admin secret """

OPERATOR_SETTINGS = frozenset(
    [name for name in DEFAULTS if name.startswith("max_")]
    + [
        "client_event_rate",
        "latest_count",
        "retention_count",
        "retention_age",
        "webhooks",
        "subscription_count_events",
    ]
)
""" The settings only the admin secret changes: the limits an app's
tenant must not lift, webhooks, whose URLs the server itself calls, and
subscription counts, which cost a frame per subscriber of a channel """


def check_settings(settings: Any) -> dict[str, Any]:
    """Validates per-app settings against the known limits: returns them
    (``{}`` for None), or raises ``ValueError`` saying what is wrong.  The
    REST API (``PUT /apps/<id>``) and the apps file (``PUSHI_APPS_FILE``)
    both validate with it."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ValueError("settings must be an object")
    for name, value in settings.items():
        if name not in DEFAULTS:
            raise ValueError("Unknown setting %.64r" % name)
        if name == "webhooks":
            problem = check_hooks(value)
            if problem:
                raise ValueError(problem)
        expected = type(DEFAULTS[name])
        if not isinstance(value, expected) or isinstance(value, bool) != (
            expected is bool
        ):
            raise ValueError("Setting %s must be a %s" % (name, expected.__name__))
        most = SETTING_MAX.get(name, MAX_SETTING)
        if expected is int and not 0 <= value <= most:
            raise ValueError("Setting %s must be from 0 to %d" % (name, most))
        if name == "allowed_origins" and not all(
            isinstance(item, str) for item in value
        ):
            raise ValueError("allowed_origins is a list of origins")
    return settings


class App:
    """An app as the server uses it: credentials, switches and limits."""

    __slots__ = (
        "app_id",
        "name",
        "key",
        "secret",
        "secrets",
        "enabled",
        "client_events",
        "limits",
        "record",
    )

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.app_id = str(record["app_id"])
        self.name = record.get("name", "")
        self.key = record["key"]
        self.secret = record["secret"]
        # every live pair, oldest first; a record without ``keys`` is an
        # app with its one pair
        self.secrets = {
            pair["key"]: pair["secret"] for pair in record.get("keys") or [record]
        }
        self.enabled = record.get("enabled", True)
        self.client_events = record.get("client_events", False)
        self.limits = Limits(**(record.get("settings") or {}))

    @property
    def signing_key(self) -> tuple[str, str]:
        """The newest live key, and its secret: what signs the webhooks.
        While keys rotate, the newest is the pair back ends are moving to
        and the one left once the old pair is revoked."""
        key = next(reversed(self.secrets))
        return key, self.secrets[key]

    def public(self) -> dict[str, Any]:
        """The record without any secret, for listings."""
        record = dict(self.record)
        record.pop("secret", None)
        record["keys"] = public_keys(record.get("keys") or [record])
        record["settings"] = self.limits.settings()
        return record


def public_keys(pairs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """An app's key pairs without their secrets."""
    return [{"key": pair["key"], "created": pair.get("created")} for pair in pairs]
