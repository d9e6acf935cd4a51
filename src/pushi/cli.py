"""The ``pushi`` command: run the server, manage apps.

    pushi                      runs the server (same as ``pushi serve``)
    pushi app create NAME [--json] [--client-events]
    pushi app list [--json]

App commands work on the configured store (``PUSHI_DATA_DIR`` or
``MONGO_URL``) directly, also while a server runs on it.
"""

import argparse
import json
import sys

from pushi.base.config import Config, ConfigError


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="pushi",
        description="Run the Pushi server (the default), manage apps.",
        epilog="Settings are environment variables (PUSHI_DATA_DIR, MONGO_URL,"
        " APP_PORT, SERVER_PORT, ...: see the README).",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the server (the default)")
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
    args = parser.parse_args(argv)

    if args.command in (None, "serve"):
        from pushi.base.state import main as serve

        return serve()
    if args.command == "app" and args.action:
        from pushi.base.store import open_store

        config = Config.from_env()
        try:
            store = open_store(data_dir=config.data_dir, mongo_url=config.mongo_url)
        except ConfigError as error:
            raise SystemExit(str(error))
        try:
            if args.action == "create":
                record = store.create_app(args.name, client_events=args.client_events)
                _print_app(record, args.json)
            else:
                # secrets are shown once, at creation, never in listings
                records = [
                    {name: value for name, value in record.items() if name != "secret"}
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


def _print_app(record, as_json):
    if as_json:
        fields = ("app_id", "key", "secret", "name", "client_events")
        print(json.dumps({name: record[name] for name in fields}))
        return
    print("app_id:        %s" % record["app_id"])
    print("name:          %s" % record["name"])
    print("key:           %s" % record["key"])
    if "secret" in record:
        print("secret:        %s" % record["secret"])
    print("client events: %s" % ("on" if record.get("client_events") else "off"))


if __name__ == "__main__":
    sys.exit(main())
