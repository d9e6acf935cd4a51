"""The ``pushi`` command: run the server, manage apps.

    pushi                      runs the server (same as ``pushi serve``)
    pushi --workers N|auto     ... as N worker processes (``PUSHI_WORKERS``)
    pushi app create NAME [--json] [--client-events]
    pushi app list [--json]
    pushi app keys add APP_ID [--json]      adds a key/secret pair, prints it
    pushi app keys list APP_ID [--json]     the app's keys (no secrets)
    pushi app keys revoke APP_ID KEY        revokes a pair (not the last one)

App commands work on the configured store (``PUSHI_DATA_DIR`` or
``MONGO_URL``) directly, also while a server runs on it: the server
takes in a change within ``PUSHI_APPS_POLL_INTERVAL`` seconds (a revoked
key's sockets are closed then).  Each says on stderr which store it used
(stdout stays the command's answer alone).
"""

import argparse
import json
import os
import sys
import time

from pushi.base.config import Config, ConfigError
from pushi.base.limits import public_keys
from pushi.base.store.base import AppKeysError


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="pushi",
        description="Run the Pushi server (the default), manage apps.",
        epilog="Settings are environment variables (PUSHI_DATA_DIR, MONGO_URL,"
        " APP_PORT, SERVER_PORT, ...: see the README).",
    )
    workers_help = (
        "run N worker processes sharing the ports (auto: one per core; PUSHI_WORKERS)"
    )
    parser.add_argument("--workers", metavar="N", help=workers_help)
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="run the server (the default)")
    serve_parser.add_argument(
        "--workers", metavar="N", help=workers_help, default=argparse.SUPPRESS
    )
    app_parser = commands.add_parser("app", help="manage apps")
    app = app_parser.add_subparsers(dest="action")
    create = app.add_parser("create", help="create an app and print its credentials")
    create.add_argument("name")
    create.add_argument("--json", action="store_true", help="print JSON")
    create.add_argument(
        "--client-events", action="store_true", help="allow client events"
    )
    listing = app.add_parser("list", help="list apps")
    listing.add_argument("--json", action="store_true", help="print JSON")
    keys_parser = app.add_parser("keys", help="rotate an app's key/secret pairs")
    keys = keys_parser.add_subparsers(dest="keys_action")
    add = keys.add_parser("add", help="add a key/secret pair and print it")
    add.add_argument("app_id")
    add.add_argument("--json", action="store_true", help="print JSON")
    keys_list = keys.add_parser("list", help="list an app's keys (no secrets)")
    keys_list.add_argument("app_id")
    keys_list.add_argument("--json", action="store_true", help="print JSON")
    revoke = keys.add_parser("revoke", help="revoke a key/secret pair")
    revoke.add_argument("app_id")
    revoke.add_argument("key")
    args = parser.parse_args(argv)
    if args.command == "app" and args.action == "keys" and not args.keys_action:
        keys_parser.print_help(sys.stderr)
        return 2

    if args.command in (None, "serve"):
        from pushi.base.state import main as serve

        if args.workers is not None:
            # read with the other settings (and checked) by Config.from_env
            os.environ["PUSHI_WORKERS"] = args.workers
        return serve()
    if args.command == "app" and args.action:
        from pushi.base.store import open_store

        config = Config.from_env()
        try:
            store = open_store(data_dir=config.data_dir, mongo_url=config.mongo_url)
        except ConfigError as error:
            raise SystemExit(str(error)) from None
        # as the server's start log names it: the store both must share
        print("Store: %r" % store, file=sys.stderr)
        try:
            if args.action == "create":
                record = store.create_app(args.name, client_events=args.client_events)
                _print_app(record, args.json)
            elif args.action == "keys":
                return _keys(store, args)
            else:
                # secrets are shown once, at creation, never in listings
                records = [
                    dict(
                        {
                            name: value
                            for name, value in record.items()
                            if name != "secret"
                        },
                        keys=public_keys(record["keys"]),
                    )
                    for record in store.list_apps()
                ]
                if args.json:
                    print(json.dumps(records))
                for record in [] if args.json else records:
                    _print_app(record, False)
                    print()
        finally:
            store.close()
        return 0
    app_parser.print_help(sys.stderr)
    return 2


def _keys(store, args):
    """``pushi app keys add|list|revoke``: 0, or 1 with the reason on
    stderr."""
    try:
        if args.keys_action == "add":
            pair = store.add_app_key(args.app_id)
            if pair is None:
                return _fail("Unknown app %s" % args.app_id)
            if args.json:
                print(json.dumps(dict(pair, app_id=args.app_id)))
            else:
                print("key:           %s" % pair["key"])
                print("secret:        %s" % pair["secret"])
            return 0
        if args.keys_action == "revoke":
            record = store.revoke_app_key(args.app_id, args.key)
            if record is None:
                return _fail("No key %s in app %s" % (args.key, args.app_id))
            print(
                "revoked %s; live keys: %s"
                % (args.key, " ".join(pair["key"] for pair in record["keys"]))
            )
            return 0
    except AppKeysError as error:
        return _fail(str(error))
    record = store.get_app(args.app_id)
    if record is None:
        return _fail("Unknown app %s" % args.app_id)
    keys = public_keys(record["keys"])
    if args.json:
        print(json.dumps(keys))
    for pair in [] if args.json else keys:
        created = pair["created"]
        print(
            "%s  %s"
            % (
                pair["key"],
                (
                    "created with the app"
                    if created is None
                    else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
                ),
            )
        )
    return 0


def _fail(message):
    print(message, file=sys.stderr)
    return 1


def _print_app(record, as_json):
    if as_json:
        fields = ("app_id", "key", "secret", "name", "client_events")
        print(json.dumps({name: record[name] for name in fields}))
        return
    print("app_id:        %s" % record["app_id"])
    print("name:          %s" % record["name"])
    print("key:           %s" % record["key"])
    for pair in record.get("keys", [])[1:]:
        print("also key:      %s" % pair["key"])
    if "secret" in record:
        print("secret:        %s" % record["secret"])
    print("client events: %s" % ("on" if record.get("client_events") else "off"))


if __name__ == "__main__":
    sys.exit(main())
