"""Declarative apps: ``PUSHI_APPS_FILE`` names a JSON or TOML file of apps
that the server creates or updates at start, before it listens, so that a
fresh container serves known apps with no ``pushi app create`` step.

The file (``.json`` or ``.toml``, by its name) holds a list ``apps``; each
entry has:

* ``app_id``: numeric string (or integer), required, unique in the file;
* ``key``: required, unique (also among the store's other apps);
* ``secret``, or ``secret_env``: the environment variable that holds it, so
  the file can be committed without secrets; one of them is required;
* ``name``, ``enabled`` (true), ``client_events`` (false), ``settings``
  (``{}``), validated as ``PUT /apps/<id>`` validates them.

The file wins for the apps it names: each is set to exactly what its entry
says (a field left out takes its default), and left alone when it already
is, so a second start with the same file writes nothing.  Apps the file
does not name are left as they are.  Every entry is checked, against the
file and against the store's keys, before any app is written: a bad file
raises ``AppsFileError`` (one line naming the entry and the field) and
changes nothing.
"""

import json
import logging
import os
import re
import tomllib
from collections.abc import Callable
from typing import Any

from .config import MIN_ADMIN_SECRET, ConfigError
from .limits import check_settings
from .store import is_store_error

logger = logging.getLogger("pushi")

FIELDS = (
    "app_id",
    "name",
    "key",
    "secret",
    "secret_env",
    "enabled",
    "client_events",
    "settings",
)

MIN_SECRET = MIN_ADMIN_SECRET
"""An app secret signs every request and subscription of its app: a short
one could be guessed from a single signature seen."""

_APP_ID = re.compile(r"^[1-9][0-9]{0,17}\Z")
# what the WebSocket paths /app/<key> and /<key> accept
_KEY = re.compile(r"^[A-Za-z0-9_.\-]{1,128}\Z")


class AppsFileError(ConfigError):
    """An apps file that cannot be read or applied; the message is one line
    for the operator (the launcher prints it and exits with 1)."""


class _EntryError(Exception):
    def __init__(self, field, message):
        Exception.__init__(self, message)
        self.field = field
        self.message = message


def read_apps(path, environ=None):
    """The app records the file at ``path`` declares, in its order, each
    complete (every field of a store record).  Raises ``AppsFileError``."""
    environ = os.environ if environ is None else environ
    document = _parse(path)
    entries = document.get("apps") if isinstance(document, dict) else None
    if not isinstance(entries, list) or set(document) != {"apps"}:
        raise AppsFileError(
            "Invalid PUSHI_APPS_FILE (%s): it must hold only a list of apps"
            ' ("apps")' % path
        )
    # the label of the entry that holds each app_id and each key
    ids: dict[str, str] = {}
    keys: dict[str, str] = {}
    records = []
    for number, entry in enumerate(entries, 1):
        label = "entry %d" % number
        try:
            if not isinstance(entry, dict):
                raise _EntryError(None, "an app is a table of fields")
            record = _record(entry, environ, ids, keys)
        except _EntryError as error:
            if isinstance(entry, dict) and _APP_ID.match(str(entry.get("app_id"))):
                label += " (app_id %s)" % entry["app_id"]
            field = ", field %s" % error.field if error.field else ""
            raise AppsFileError(
                "Invalid PUSHI_APPS_FILE (%s): %s%s: %s"
                % (path, label, field, error.message)
            ) from None
        ids[record["app_id"]] = label
        keys[record["key"]] = "%s (app_id %s)" % (label, record["app_id"])
        records.append(record)
    return records


def _matches(stored, record):
    """Whether the stored app is already what the file says: its fields,
    and the file's key/secret as its only pair (``put_app`` drops others)."""
    if stored is None:
        return False
    pairs = [(pair["key"], pair["secret"]) for pair in stored.get("keys") or ()]
    fields = {name: value for name, value in stored.items() if name != "keys"}
    return fields == record and pairs == [(record["key"], record["secret"])]


def apply_apps(store, records, path):
    """Creates or updates the store's apps to match ``records`` (from
    ``read_apps(path)``); returns how many were ``created``, ``updated``
    and ``unchanged``.  Raises ``AppsFileError`` before writing anything
    when a key belongs to an app of the store that keeps it."""
    try:
        current = {
            record["app_id"]: store.get_app(record["app_id"]) for record in records
        }
        changes = [
            record
            for record in records
            if not _matches(current[record["app_id"]], record)
        ]
        for record in changes:
            _check_key(store, record, records, current, path)
        for record in _key_order(changes, current, records, path):
            store.put_app(record)
            change = "updated" if current[record["app_id"]] else "created"
            logger.info("Apps file: app %s %s", record["app_id"], change)
    except Exception as error:
        if not is_store_error(error):
            raise
        reason = str(error).splitlines()[0][:200] if str(error) else repr(error)
        raise AppsFileError(
            "Cannot apply PUSHI_APPS_FILE (%s) to the store: %s" % (path, reason)
        ) from error
    counts = dict(
        created=sum(1 for record in changes if not current[record["app_id"]]),
        updated=sum(1 for record in changes if current[record["app_id"]]),
        unchanged=len(records) - len(changes),
    )
    logger.info(
        "Apps file %s: %d created, %d updated, %d unchanged (apps it does not"
        " name are left as they are)",
        path,
        counts["created"],
        counts["updated"],
        counts["unchanged"],
    )
    return counts


def _check_key(store, record, records, current, path):
    """Refuses a key that an app of the store holds and keeps: one the file
    does not name, or names with that same key."""
    holder = store.get_app_by_key(record["key"])
    if holder is None or holder["app_id"] == record["app_id"]:
        return
    if holder["app_id"] in current:
        return  # the file names that app, with another key (keys are unique)
    raise AppsFileError(
        "Invalid PUSHI_APPS_FILE (%s): %s, field key: already the key of app %s"
        " (%.64r) in the store"
        % (path, _label(record, records), holder["app_id"], holder["name"])
    )


def _key_order(changes, current, records, path):
    """``changes`` in an order the store's unique keys accept: an app that
    takes a key another app of the file gives up comes after that one."""
    # key -> app id holding it, for the apps of the file as the store has them
    held = {app["key"]: app_id for app_id, app in current.items() if app}
    waiting, order = list(changes), []
    while waiting:
        ready = [
            record
            for record in waiting
            if held.get(record["key"], record["app_id"]) == record["app_id"]
        ]
        if not ready:
            record = waiting[0]
            raise AppsFileError(
                "Invalid PUSHI_APPS_FILE (%s): %s, field key: still the key of app %s"
                " in the store, and the file moves keys in a circle: move them in"
                " two starts" % (path, _label(record, records), held[record["key"]])
            )
        for record in ready:
            before = current[record["app_id"]]
            if before:
                held.pop(before["key"], None)
            held[record["key"]] = record["app_id"]
            waiting.remove(record)
            order.append(record)
    return order


def _label(record, records):
    return "entry %d (app_id %s)" % (records.index(record) + 1, record["app_id"])


def apply_file(store, path, environ=None):
    """``read_apps`` then ``apply_apps``: what the launcher runs at start."""
    return apply_apps(store, read_apps(path, environ), path)


def _parse(path):
    parse: Callable[[str], Any]
    if path.lower().endswith(".json"):
        parse, errors = json.loads, ValueError
    elif path.lower().endswith(".toml"):
        parse, errors = tomllib.loads, tomllib.TOMLDecodeError
    else:
        raise AppsFileError(
            "Invalid PUSHI_APPS_FILE (%s): its name must end in .json or .toml" % path
        )
    try:
        with open(path, "rb") as file:
            text = file.read().decode("utf-8")
    except OSError as error:
        raise AppsFileError(
            "Cannot read PUSHI_APPS_FILE (%s): %s" % (path, error.strerror)
        ) from None
    except UnicodeDecodeError:
        raise AppsFileError(
            "Cannot read PUSHI_APPS_FILE (%s): not UTF-8" % path
        ) from None
    try:
        return parse(text)
    except errors as error:
        raise AppsFileError(
            "Invalid PUSHI_APPS_FILE (%s): %s" % (path, error)
        ) from None


def _record(entry, environ, ids, keys):
    """The store record of one entry, or ``_EntryError``."""
    for field in entry:
        if field not in FIELDS:
            raise _EntryError(
                "%.64s" % field, "unknown (known: %s)" % ", ".join(FIELDS)
            )
    app_id = entry.get("app_id")
    if isinstance(app_id, int) and not isinstance(app_id, bool):
        app_id = str(app_id)
    if not isinstance(app_id, str) or not _APP_ID.match(app_id):
        raise _EntryError(
            "app_id", "required, a number from 1 (digits, no leading 0, at most 18)"
        )
    if app_id in ids:
        raise _EntryError("app_id", "also the app_id of %s" % ids[app_id])
    key = entry.get("key")
    if not isinstance(key, str) or not _KEY.match(key):
        raise _EntryError("key", "required, 1 to 128 letters, digits, '_', '-' or '.'")
    if key in keys:
        raise _EntryError("key", "also the key of %s" % keys[key])
    secret = _secret(entry, environ)
    if secret == key:
        raise _EntryError("secret", "must differ from the key (which is public)")
    name = entry.get("name", "app %s" % app_id)
    if not isinstance(name, str) or not name.strip():
        raise _EntryError("name", "must be a non-empty string")
    flags = {}
    for flag, default in (("enabled", True), ("client_events", False)):
        flags[flag] = entry.get(flag, default)
        if not isinstance(flags[flag], bool):
            raise _EntryError(flag, "must be true or false")
    try:
        settings = check_settings(entry.get("settings"))
    except ValueError as error:
        raise _EntryError("settings", str(error)) from None
    return dict(
        app_id=app_id,
        name=name.strip(),
        key=key,
        secret=secret,
        enabled=flags["enabled"],
        client_events=flags["client_events"],
        settings=settings,
    )


def _secret(entry, environ):
    if "secret" in entry and "secret_env" in entry:
        raise _EntryError("secret_env", "give secret or secret_env, not both")
    if "secret_env" in entry:
        variable = entry["secret_env"]
        if not isinstance(variable, str) or not variable:
            raise _EntryError("secret_env", "must name an environment variable")
        secret = environ.get(variable)
        if not secret:
            raise _EntryError(
                "secret_env", "the environment variable %.64s is not set" % variable
            )
        field = "secret_env"
    else:
        secret = entry.get("secret")
        if secret is None:
            raise _EntryError(
                "secret", "required (or secret_env: the variable that holds it)"
            )
        field = "secret"
    if not isinstance(secret, str) or len(secret) < MIN_SECRET:
        raise _EntryError(
            field, "the secret must have at least %d characters" % MIN_SECRET
        )
    return secret
