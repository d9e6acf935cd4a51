"""Every environment variable Pushi reads, in one place.

``Config.from_env()`` is called once by the launcher; everything else gets
the resulting object, so tests build a ``Config`` directly.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

MIN_ADMIN_SECRET = 16
"""The admin secret reaches every app and is the operator's choice (app
secrets are generated): a short one could be guessed over the REST port."""


OLD_DATA_DIR = "data"
"""The data dir before it moved out of the working directory (relative to
it): a store found there and not at the default is refused, never used or
replaced silently."""


def default_data_dir(environ: Mapping[str, str] | None = None) -> str:
    """Where the embedded store lives when ``PUSHI_DATA_DIR`` is unset:
    ``$XDG_DATA_HOME/pushi``, else ``~/.local/share/pushi``; the same
    whatever the working directory, so that the ``pushi`` command and the
    server find one store."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_DATA_HOME")
    # the XDG spec: a relative path is invalid and ignored
    if not base or not os.path.isabs(base):
        home = environ.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".local", "share")
    return os.path.join(base, "pushi")


class ConfigError(Exception):
    """A setting this process cannot run with (a port in use, a data dir it
    cannot write, a TLS file missing): the launcher and the ``pushi``
    command say it in one line and exit with 1."""


def _flag(value):
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _port(value):
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError("port out of range")
    return port


def _positive(cast):
    """A cast to a number above 0 (a timeout, an interval or a bound of 0
    would spin a loop or refuse everything)."""

    def positive(value):
        number = cast(value)
        if not 0 < number < float("inf"):
            raise ValueError("not above 0")
        return number

    return positive


def _networks(value):
    """Comma-separated addresses or CIDRs (``10.0.0.0/8, ::1``) as a tuple
    of ``ipaddress`` networks."""
    return tuple(
        ipaddress.ip_network(item.strip(), strict=False)
        for item in str(value).split(",")
        if item.strip()
    )


def _ws_url(value):
    """A ``ws://`` or ``wss://`` URL with a host and nothing after its path,
    kept without its trailing slash."""
    parts = urllib.parse.urlsplit(str(value).strip())
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError("not a ws:// or wss:// URL")
    # it goes into the console's HTML and its Content-Security-Policy
    if parts.query or parts.fragment or any(c in value for c in "@ ;,\"'<>\\"):
        raise ValueError("a URL with a host and a path only")
    return urllib.parse.urlunsplit(parts[:3] + ("", "")).rstrip("/")


def _not_negative(value):
    """Seconds, 0 included (0: none)."""
    number = float(value)
    if not 0 <= number < float("inf"):
        raise ValueError("below 0")
    return number


def _sync(value):
    """How the embedded store syncs its commits: ``normal`` or ``full``
    (SQLite's ``synchronous``, in WAL mode; see docs/configuration.md)."""
    from pushi.base.store.sqlite_file import SYNC_MODES

    value = str(value).strip().upper()
    if value not in SYNC_MODES:
        raise ValueError("normal or full")
    return value


def _workers(value):
    """A number of worker processes above 0, or ``auto``: one per core."""
    value = str(value).strip().lower()
    if value == "auto":
        return os.cpu_count() or 1
    return _positive(int)(value)


def _redis_url(value):
    """A ``redis://`` or ``unix://`` URL (``net/redis.parse_url``)."""
    from pushi.net.redis import parse_url

    value = str(value).strip()
    parse_url(value)
    return value


def _shown(variable, raw):
    """A value as an error may show it: a URL without its password."""
    if variable == "PUSHI_REDIS_URL":
        from pushi.net.redis import redacted

        try:
            return redacted(raw)
        except ValueError:
            return "(not a URL)"
    return raw


def _level(value):
    name = str(value).strip().upper()
    if not isinstance(logging.getLevelName(name), int):
        raise ValueError("unknown logging level")
    return name


class Config:
    """Settings of one Pushi process (see docs/configuration.md)."""

    FIELDS = (
        # name, environment variable, default, cast
        ("app_host", "APP_HOST", "127.0.0.1", str),
        ("app_port", "APP_PORT", 8080, _port),
        ("app_server", "APP_SERVER", "netius", str),
        ("app_ssl", "APP_SSL", False, _flag),
        ("app_ssl_key", "APP_SSL_KEY", None, str),
        ("app_ssl_cer", "APP_SSL_CER", None, str),
        ("server_host", "SERVER_HOST", "127.0.0.1", str),
        ("server_port", "SERVER_PORT", 9090, _port),
        ("server_ssl", "SERVER_SSL", False, _flag),
        ("server_ssl_key", "SERVER_SSL_KEY", None, str),
        ("server_ssl_cer", "SERVER_SSL_CER", None, str),
        # None: default_data_dir()
        ("data_dir", "PUSHI_DATA_DIR", None, str),
        ("mongo_url", "MONGO_URL", None, str),
        # NORMAL: a commit survives the process's death (kill -9), maybe not
        # a power loss or OS crash; FULL: those too, at a disk sync a commit
        ("sqlite_sync", "PUSHI_SQLITE_SYNC", "NORMAL", _sync),
        ("admin_secret", "PUSHI_ADMIN_SECRET", None, str),
        # apps created or updated at start (base/appsfile.py)
        ("apps_file", "PUSHI_APPS_FILE", None, str),
        ("activity_timeout", "PUSHI_ACTIVITY_TIMEOUT", 120, _positive(int)),
        ("pong_timeout", "PUSHI_PONG_TIMEOUT", 30, _positive(int)),
        ("max_buffer", "PUSHI_MAX_BUFFER", 1048576, _positive(int)),
        ("retention_interval", "PUSHI_RETENTION_INTERVAL", 10, _positive(float)),
        ("apps_poll_interval", "PUSHI_APPS_POLL_INTERVAL", 2, _positive(float)),
        ("max_pending", "PUSHI_MAX_PENDING", 1000, _positive(int)),
        ("console_max_buffer", "PUSHI_CONSOLE_MAX_BUFFER", 262144, _positive(int)),
        (
            "console_history_every",
            "PUSHI_CONSOLE_HISTORY_EVERY",
            10,
            _positive(float),
        ),
        ("token_lifetime", "PUSHI_TOKEN_LIFETIME", 86400, _positive(int)),
        # None: as many as the open-files limit allows (net/capacity.py)
        ("max_connections", "PUSHI_MAX_CONNECTIONS", None, _positive(int)),
        (
            "max_connections_per_ip",
            "PUSHI_MAX_CONNECTIONS_PER_IP",
            None,
            _positive(int),
        ),
        ("log_level", "PUSHI_LOG_LEVEL", "INFO", _level),
        # the proxies whose X-Forwarded-For / X-Forwarded-Proto are believed
        ("trusted_proxies", "PUSHI_TRUSTED_PROXIES", (), _networks),
        # the WebSocket port as browsers reach it (behind a proxy): the
        # console page streams from there
        ("public_ws_url", "PUSHI_PUBLIC_WS_URL", None, _ws_url),
        # off: no GET /metrics and no histograms (the console's counters stay)
        ("metrics", "PUSHI_METRICS", True, _flag),
        # None: GET /metrics on the REST port only, with the admin secret
        ("metrics_port", "PUSHI_METRICS_PORT", None, _port),
        ("metrics_host", "PUSHI_METRICS_HOST", "127.0.0.1", str),
        # seconds a stop keeps serving with /ready at 503 before closing
        ("drain_seconds", "PUSHI_DRAIN_SECONDS", 0, _not_negative),
        # None: one process; set: a node of the cluster on that Redis
        ("redis_url", "PUSHI_REDIS_URL", None, _redis_url),
        # replies a node awaits from Redis before its changes are refused
        # (and written again once Redis caught up)
        ("redis_max_pending", "PUSHI_REDIS_MAX_PENDING", 10000, _positive(int)),
        # above 1: a supervisor and that many worker processes sharing the
        # ports (base/workers.py); "auto": one per core
        ("workers", "PUSHI_WORKERS", 1, _workers),
    )

    # each field's type, for the type checker (``__init__`` sets them)
    app_host: str
    app_port: int
    app_server: str
    app_ssl: bool
    app_ssl_key: str | None
    app_ssl_cer: str | None
    server_host: str
    server_port: int
    server_ssl: bool
    server_ssl_key: str | None
    server_ssl_cer: str | None
    data_dir: str | None
    mongo_url: str | None
    sqlite_sync: str
    admin_secret: str | None
    apps_file: str | None
    activity_timeout: int
    pong_timeout: int
    max_buffer: int
    retention_interval: float
    apps_poll_interval: float
    max_pending: int
    console_max_buffer: int
    console_history_every: float
    token_lifetime: int
    max_connections: int | None
    max_connections_per_ip: int | None
    log_level: str
    # ``ipaddress`` networks (Any: the net/ servers declare theirs as ``()``)
    trusted_proxies: Any
    public_ws_url: str | None
    metrics: bool
    metrics_port: int | None
    metrics_host: str
    drain_seconds: float
    redis_url: str | None
    redis_max_pending: int
    workers: int

    def __init__(self, **values: Any) -> None:
        for name, _variable, default, _cast in self.FIELDS:
            setattr(self, name, values.pop(name, default))
        if values:
            raise TypeError("Unknown settings: %s" % ", ".join(sorted(values)))

    def listen(self, side: str) -> dict[str, Any]:
        """Where one port listens, as netius and Appier take it: ``host``,
        ``port``, ``ssl``, ``key_file`` and ``cer_file`` of ``"app"`` (the
        REST port) or ``"server"`` (the WebSocket port)."""
        return dict(
            host=getattr(self, side + "_host"),
            port=getattr(self, side + "_port"),
            ssl=getattr(self, side + "_ssl"),
            key_file=getattr(self, side + "_ssl_key"),
            cer_file=getattr(self, side + "_ssl_cer"),
        )

    def check_tls(self) -> None:
        """Raises ``ConfigError`` when a port with TLS on lacks a key or a
        certificate file it can read (netius would otherwise serve with the
        test key it ships, which anyone can read)."""
        for side in ("app", "server"):
            if not getattr(self, side + "_ssl"):
                continue
            prefix = side.upper() + "_SSL"
            for name in (prefix + "_KEY", prefix + "_CER"):
                path = getattr(self, name.lower())
                if not path:
                    raise ConfigError(
                        "%s=1 needs %s_KEY and %s_CER (PEM files)"
                        % (prefix, prefix, prefix)
                    )
                try:
                    with open(path, "rb"):
                        pass
                except OSError as error:
                    raise ConfigError(
                        "Cannot read %s (%s): %s" % (name, path, error.strerror)
                    ) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, variable, _default, cast in cls.FIELDS:
            raw = environ.get(variable)
            if raw not in (None, ""):
                try:
                    values[name] = cast(raw)
                except ValueError:
                    raise SystemExit(
                        "Invalid value for %s: %r" % (variable, _shown(variable, raw))
                    ) from None
        if len(values.get("admin_secret", "x" * MIN_ADMIN_SECRET)) < MIN_ADMIN_SECRET:
            raise SystemExit(
                "PUSHI_ADMIN_SECRET must have at least %d characters (it reaches"
                " every app); e.g. python -c 'import secrets;"
                " print(secrets.token_hex(32))'" % MIN_ADMIN_SECRET
            )
        if values.get("metrics") is False and "metrics_port" in values:
            raise SystemExit("PUSHI_METRICS_PORT needs PUSHI_METRICS on")
        if "data_dir" not in values and "mongo_url" not in values:
            values["data_dir"] = default_data_dir(environ)
            _refuse_old_data_dir(values["data_dir"])
        return cls(**values)


def _refuse_old_data_dir(data_dir):
    """Raises ``SystemExit`` (one line) when the default data dir holds no
    store but ``./data`` holds one: a server started from an old install's
    folder would otherwise start empty, its apps still there but unused."""
    from pushi.base.store.sqlite_file import DATABASE_NAME

    old = os.path.join(OLD_DATA_DIR, DATABASE_NAME)
    if os.path.isfile(old) and not os.path.exists(
        os.path.join(data_dir, DATABASE_NAME)
    ):
        raise SystemExit(
            "./%s holds a Pushi store, but the default data dir is now %s:"
            " set PUSHI_DATA_DIR=./%s to keep using it"
            % (OLD_DATA_DIR, data_dir, OLD_DATA_DIR)
        )


def url_host(host: str) -> str:
    """``host`` as a URL has it (an IPv6 address in brackets)."""
    return "[%s]" % host if ":" in host else host


def listen_error(
    what: str, prefix: str, listen: Mapping[str, Any], error: Exception
) -> ConfigError:
    """The one-line refusal of a port that cannot be listened on."""
    return ConfigError(
        "%s cannot listen on %s:%s (%s_HOST, %s_PORT): %s"
        % (
            what,
            url_host(listen["host"]),
            listen["port"],
            prefix,
            prefix,
            getattr(error, "strerror", None) or error,
        )
    )
