"""A MongoDB wire-protocol EMULATOR for tests.  It is NOT MongoDB.

``mockupdb`` speaks the wire protocol on a real TCP socket (127.0.0.1 only)
and ``mongomock`` answers the commands in memory, so pymongo 4.x code (the
``MongoStore``, and a whole Pushi server with ``MONGO_URL`` pointing here)
runs unchanged over a real socket, with no MongoDB server installed.

What it serves, for pymongo 4.x: the ``hello`` / ``isMaster`` handshake (as
a standalone server, wire version 17), ``ping``, ``buildInfo``, ``find``
(filter, projection, sort, skip, limit, batchSize, singleBatch) with
``getMore`` / ``killCursors``, ``count``, ``distinct``, ``aggregate``,
``insert`` / ``update`` / ``delete`` (bulk, ordered or not, upserts, write
errors per document), ``findAndModify``, ``createIndexes`` (unique indexes
are enforced, as mongomock does), ``listIndexes``, ``dropIndexes``,
``create``, ``drop``, ``dropDatabase``, ``listCollections``,
``listDatabases`` and ``endSessions``.  Session ids (``lsid``) are accepted
and ignored.

What it lacks (answered with an error rather than pretended): capped
collections, transactions, change streams, authentication, TLS, and
anything mongomock does not implement.  Data lives in memory and is lost
when the emulator stops; there is no durability to test here.  Every
engine call runs on ONE engine thread, in arrival order, whatever the
number of client connections, since mongomock is not thread-safe.

Use it as a context manager (or through the ``store_mongo_url`` pytest
fixture in ``tests/conftest.py``)::

    with MongoEmulator() as emulator:
        client = pymongo.MongoClient(emulator.url)

or standalone, for end-to-end tests that start a Pushi server with
``MONGO_URL`` pointing at it (prints one JSON line with the URL, then serves
until SIGINT / SIGTERM)::

    python tests/mongo_emulator.py --port 0
"""

import argparse
import concurrent.futures
import datetime
import itertools
import json
import signal
import sys
import threading
import traceback

import bson
import mockupdb
import mongomock
import mongomock.filtering
from bson.son import SON
from pymongo import errors

HOST = "127.0.0.1"
WIRE_VERSION = 17
"""Wire version announced in ``hello`` (MongoDB 6.0): pymongo 4.20 needs
at least 9, and nothing it does at 17 needs more than the commands above."""

DEFAULT_BATCH_SIZE = 101
"""First-batch size of a cursor when the client gives none (as mongod)."""

MAX_BATCH_BYTES = 8 * 1024 * 1024
"""A batch stops growing past this many BSON bytes (replies stay under
pymongo's 48 MB message limit whatever the documents)."""

# Arguments of every command that the emulator accepts and ignores.
GENERIC_ARGUMENTS = {
    "$db",
    "$readPreference",
    "$clusterTime",
    "lsid",
    "txnNumber",
    "writeConcern",
    "readConcern",
    "comment",
    "maxTimeMS",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "bypassDocumentValidation",
}

# Error codes of mongod that pymongo interprets.
COMMAND_NOT_FOUND = 59
CURSOR_NOT_FOUND = 43
ILLEGAL_OPERATION = 20
BAD_VALUE = 2
DUPLICATE_KEY = 11000
INTERNAL_ERROR = 1


def _install_fast_unique_check():
    """Patches mongomock's unique-index check with an equivalent fast path.

    mongomock checks a unique index on every insert or update by running a
    full query filter over every document of the collection (45 ms per
    insert at a thousand documents).  When every indexed value of the new
    document is a string and the index has no partial filter, "another
    document has the same key" means: for each key its value is that same
    string, or an array holding it (MongoDB equality on arrays).  That is
    checked here with plain comparisons; any other case (numbers, None,
    sub-documents, partial indexes) still goes to mongomock's own check.
    """
    from mongomock import collection as mongomock_collection
    from mongomock import helpers

    original = mongomock_collection.Collection._ensure_uniques
    if getattr(original, "emulator_fast_path", False):
        return

    def value_at(document, key):
        if "." not in key:
            return document.get(key)
        try:
            return helpers.get_value_by_dot(document, key)
        except (KeyError, TypeError, IndexError):
            return None

    def count_same(documents, keys, wanted):
        """How many documents hold ``wanted`` (strings) under ``keys``."""
        count = 0
        for document in documents:
            for key, value in zip(keys, wanted, strict=True):
                found = value_at(document, key)
                if found != value and not (isinstance(found, list) and value in found):
                    break
            else:
                count += 1
        return count

    def ensure_uniques(self, new_data):
        slow_path = False
        for index in self._store.indexes.values():
            if not index.get("unique"):
                continue
            keys = [key for key, _direction in index["key"]]
            wanted = [value_at(new_data, key) for key in keys]
            if index.get("partialFilterExpression") is not None or not all(
                isinstance(value, str) for value in wanted
            ):
                slow_path = True
                continue
            # new_data itself is already stored: a second holder is a clash.
            if count_same(self._store.documents, keys, wanted) > 1:
                raise mongomock.DuplicateKeyError(
                    "E11000 Duplicate Key Error", DUPLICATE_KEY
                )
        if slow_path:
            original(self, new_data)

    ensure_uniques.emulator_fast_path = True
    mongomock_collection.Collection._ensure_uniques = ensure_uniques


class _WireServer(mockupdb.MockupDB):
    """mockupdb's socket server with its own per-connection loop.

    mockupdb handles every request while holding one server-wide lock, so a
    slow command on one connection would also hold back pymongo's heartbeat
    (``hello``) on another one until pymongo gives the server up and resets
    its pool.  This loop only reads a request and hands it to ``handler``
    (which serialises engine work itself); handshakes never wait."""

    def __init__(self, handler, **options):
        super().__init__(**options)
        self._request_handler = handler

    def _server_loop(self, client, client_addr):
        while not self._stopped:
            try:
                request = mockupdb.mock_server_receive_request(client, self)
            except (OSError, ValueError, NotImplementedError):
                break  # closed by either side, or not a request we know
            try:
                self._request_handler(request)
            except OSError:
                break
        client.close()


class CommandError(Exception):
    """A command failure to answer as ``{"ok": 0, "code": ..., ...}``."""

    def __init__(self, message, code=BAD_VALUE, code_name="BadValue"):
        super().__init__(message)
        self.code = code
        self.code_name = code_name


class MongoEmulator:
    """The emulator: a mockupdb wire server bound to 127.0.0.1 in front of
    one in-memory mongomock client (see the module docstring).

    ``port`` 0 (the default) picks a free port; ``url`` is the connection
    string once started.  Start with ``start()`` or ``with``; ``stop()``
    closes the socket and drops the data."""

    def __init__(self, port=0, verbose=False):
        _install_fast_unique_check()
        self._requested_port = port
        self._verbose = verbose
        self._engine = mongomock.MongoClient()
        self._engine_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="mongo-emulator-engine"
        )
        self._cursors = {}
        self._cursor_ids = itertools.count(1)
        self._connection_ids = itertools.count(1)
        self._server = None
        self.port = None

    # lifecycle

    def start(self):
        """Binds the socket and starts serving; returns self."""
        server = _WireServer(
            self._handle,
            port=self._requested_port or None,
            verbose=self._verbose,
            request_timeout=int(1e6),
        )
        # mockupdb binds "localhost"; make sure it is the IPv4 loopback only.
        server._address = (HOST, self._requested_port or None)
        self.port = server.run()
        self._server = server
        return self

    def stop(self):
        """Stops serving and drops every database."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._engine_thread.shutdown(wait=True)

    @property
    def url(self):
        """The ``mongodb://`` connection string of the running emulator."""
        return "mongodb://%s:%d/" % (HOST, self.port)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # requests

    def _handle(self, request):
        """Answers one request (called on its connection's thread): runs the
        command on the engine thread and replies with its answer or its
        error; the handshake needs no engine and is answered at once."""
        more_to_come = mockupdb.OP_MSG_FLAGS["moreToCome"]
        if isinstance(request, mockupdb.OpMsg) and (request.flags or 0) & more_to_come:
            # Unacknowledged write (w=0): run it, no reply expected.
            self._run(request)
            return True
        request.replies(self._run(request))
        return True

    def _run(self, request):
        try:
            if self._is_handshake(request):
                return self._hello(None, None, None)
            return self._engine_thread.submit(self._dispatch, request).result()
        except CommandError as error:
            return {
                "ok": 0,
                "errmsg": str(error),
                "code": error.code,
                "codeName": error.code_name,
            }
        except errors.OperationFailure as error:
            return {
                "ok": 0,
                "errmsg": str(error),
                "code": error.code or BAD_VALUE,
                "codeName": "OperationFailure",
            }
        except Exception as error:
            traceback.print_exc()
            return {
                "ok": 0,
                "errmsg": "mongo emulator: %s: %s" % (type(error).__name__, error),
                "code": INTERNAL_ERROR,
                "codeName": "InternalError",
            }

    @staticmethod
    def _is_handshake(request):
        command_name = request.command_name if request.is_command else None
        return (command_name or "").lower() in ("hello", "ismaster")

    def _dispatch(self, request):
        command = dict(request.doc)
        if not command:
            raise CommandError("empty command")
        name = next(iter(command))
        if "startTransaction" in command or "autocommit" in command:
            raise CommandError(
                "the mongo emulator does not support transactions",
                ILLEGAL_OPERATION,
                "IllegalOperation",
            )
        handler = self._handlers().get(name.lower())
        if handler is None:
            raise CommandError(
                "no such command: '%s' (mongo emulator)" % name,
                COMMAND_NOT_FOUND,
                "CommandNotFound",
            )
        database_name = command.get("$db") or "admin"
        for key in GENERIC_ARGUMENTS:
            command.pop(key, None)
        return handler(self._engine[database_name], name, command)

    def _handlers(self):
        return {
            "hello": self._hello,
            "ismaster": self._hello,
            "ping": self._ok,
            "endsessions": self._ok,
            "buildinfo": self._build_info,
            "find": self._find,
            "getmore": self._get_more,
            "killcursors": self._kill_cursors,
            "count": self._count,
            "distinct": self._distinct,
            "aggregate": self._aggregate,
            "insert": self._insert,
            "update": self._update,
            "delete": self._delete,
            "findandmodify": self._find_and_modify,
            "createindexes": self._create_indexes,
            "listindexes": self._list_indexes,
            "dropindexes": self._drop_indexes,
            "create": self._create,
            "drop": self._drop,
            "dropdatabase": self._drop_database,
            "listcollections": self._list_collections,
            "listdatabases": self._list_databases,
        }

    # handshake and trivia

    def _hello(self, database, name, command):
        return {
            "ismaster": True,
            "isWritablePrimary": True,
            "helloOk": True,
            "maxBsonObjectSize": 16 * 1024 * 1024,
            "maxMessageSizeBytes": 48000000,
            "maxWriteBatchSize": 100000,
            "localTime": datetime.datetime.now(datetime.UTC),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": next(self._connection_ids),
            "minWireVersion": 0,
            "maxWireVersion": WIRE_VERSION,
            "readOnly": False,
            "ok": 1,
        }

    def _ok(self, database, name, command):
        return {"ok": 1}

    def _build_info(self, database, name, command):
        return {
            "version": "6.0.0-emulator",
            "versionArray": [6, 0, 0, 0],
            "gitVersion": "mongo-emulator (mockupdb + mongomock)",
            "ok": 1,
        }

    # cursors

    def _open_cursor(self, namespace, documents, batch_size, single_batch=False):
        """Returns the ``cursor`` sub-document of a reply: a first batch and,
        when documents remain, a cursor id for ``getMore``."""
        batch_size = batch_size or DEFAULT_BATCH_SIZE
        first_batch, rest = self._take_batch(documents, batch_size)
        cursor_id = 0
        if rest and not single_batch:
            cursor_id = next(self._cursor_ids)
            self._cursors[cursor_id] = (namespace, rest)
        return {
            "id": bson.int64.Int64(cursor_id),
            "ns": namespace,
            "firstBatch": first_batch,
        }

    @staticmethod
    def _take_batch(documents, batch_size):
        taken, size = [], 0
        for document in documents:
            if batch_size and len(taken) >= batch_size:
                break
            size += len(bson.encode(document))
            if taken and size > MAX_BATCH_BYTES:
                break
            taken.append(document)
        return taken, documents[len(taken) :]

    def _get_more(self, database, name, command):
        cursor_id = int(command["getMore"])
        if cursor_id not in self._cursors:
            raise CommandError(
                "cursor id %d not found" % cursor_id,
                CURSOR_NOT_FOUND,
                "CursorNotFound",
            )
        namespace, documents = self._cursors.pop(cursor_id)
        batch, rest = self._take_batch(documents, command.get("batchSize"))
        if rest:
            self._cursors[cursor_id] = (namespace, rest)
        return {
            "cursor": {
                "id": bson.int64.Int64(cursor_id if rest else 0),
                "ns": namespace,
                "nextBatch": batch,
            },
            "ok": 1,
        }

    def _kill_cursors(self, database, name, command):
        killed, not_found = [], []
        for cursor_id in command.get("cursors", []):
            if self._cursors.pop(int(cursor_id), None) is None:
                not_found.append(cursor_id)
            else:
                killed.append(cursor_id)
        return {
            "cursorsKilled": killed,
            "cursorsNotFound": not_found,
            "cursorsAlive": [],
            "cursorsUnknown": [],
            "ok": 1,
        }

    # reads

    @staticmethod
    def _namespace(database, collection_name):
        return "%s.%s" % (database.name, collection_name)

    def _find(self, database, name, command):
        collection_name = command[name]
        collection = database[collection_name]
        cursor = collection.find(
            command.get("filter") or {}, command.get("projection") or None
        )
        if command.get("sort"):
            cursor = cursor.sort(list(command["sort"].items()))
        if command.get("skip"):
            cursor = cursor.skip(int(command["skip"]))
        limit = abs(int(command.get("limit") or 0))
        if limit:
            cursor = cursor.limit(limit)
        documents = list(cursor)
        batch_size = command.get("batchSize")
        if limit and (not batch_size or batch_size > limit):
            batch_size = limit
        return {
            "cursor": self._open_cursor(
                self._namespace(database, collection_name),
                documents,
                batch_size,
                single_batch=bool(command.get("singleBatch")),
            ),
            "ok": 1,
        }

    def _count(self, database, name, command):
        options = {}
        if command.get("skip"):
            options["skip"] = int(command["skip"])
        if command.get("limit"):
            options["limit"] = abs(int(command["limit"]))
        count = database[command[name]].count_documents(
            command.get("query") or {}, **options
        )
        return {"n": count, "ok": 1}

    def _distinct(self, database, name, command):
        values = database[command[name]].distinct(
            command["key"], command.get("query") or {}
        )
        return {"values": values, "ok": 1}

    def _aggregate(self, database, name, command):
        collection_name = command[name]
        if not isinstance(collection_name, str):
            raise CommandError("database-level aggregate is not emulated")
        documents = list(database[collection_name].aggregate(command["pipeline"]))
        batch_size = (command.get("cursor") or {}).get("batchSize")
        return {
            "cursor": self._open_cursor(
                self._namespace(database, collection_name), documents, batch_size
            ),
            "ok": 1,
        }

    # writes

    @staticmethod
    def _write_error(index, error):
        code = getattr(error, "code", None) or BAD_VALUE
        return {"index": index, "code": code, "errmsg": str(error)}

    def _each_write(self, command, key, apply):
        """Runs ``apply(index, item)`` for every item of a write command,
        collecting write errors as MongoDB does: an ordered command stops
        at its first error, an unordered one goes on."""
        ordered = command.get("ordered", True)
        write_errors = []
        for index, item in enumerate(command.get(key, [])):
            try:
                apply(index, item)
            except (errors.PyMongoError, mongomock.WriteError) as error:
                write_errors.append(self._write_error(index, error))
                if ordered:
                    break
        return write_errors

    @staticmethod
    def _write_reply(reply, write_errors):
        if write_errors:
            reply["writeErrors"] = write_errors
        return reply

    def _insert(self, database, name, command):
        collection = database[command[name]]
        inserted = []
        write_errors = self._each_write(
            command,
            "documents",
            lambda index, document: inserted.append(collection.insert_one(document)),
        )
        return self._write_reply({"n": len(inserted), "ok": 1}, write_errors)

    def _update(self, database, name, command):
        collection = database[command[name]]
        counts = {"n": 0, "nModified": 0}
        upserted = []

        def apply(index, update):
            query, change = update.get("q") or {}, update["u"]
            options = {"upsert": bool(update.get("upsert"))}
            if isinstance(change, list) or any(key.startswith("$") for key in change):
                if update.get("arrayFilters"):
                    options["array_filters"] = update["arrayFilters"]
                method = (
                    collection.update_many
                    if update.get("multi")
                    else collection.update_one
                )
                result = method(query, change, **options)
            else:
                result = collection.replace_one(query, change, **options)
            if result.upserted_id is not None:
                counts["n"] += 1
                upserted.append({"index": index, "_id": result.upserted_id})
            else:
                counts["n"] += result.matched_count
                counts["nModified"] += result.modified_count

        write_errors = self._each_write(command, "updates", apply)
        reply = dict(counts, ok=1)
        if upserted:
            reply["upserted"] = upserted
        return self._write_reply(reply, write_errors)

    def _delete(self, database, name, command):
        collection = database[command[name]]
        deleted = []

        def apply(_index, delete):
            query = delete.get("q") or {}
            if delete.get("limit") == 1:
                deleted.append(collection.delete_one(query).deleted_count)
            else:
                deleted.append(collection.delete_many(query).deleted_count)

        write_errors = self._each_write(command, "deletes", apply)
        return self._write_reply({"n": sum(deleted), "ok": 1}, write_errors)

    def _find_and_modify(self, database, name, command):
        collection = database[command[name]]
        query = command.get("query") or {}
        sort = list(command["sort"].items()) if command.get("sort") else None
        projection = command.get("fields") or None
        existing = collection.find_one(query, sort=sort)
        if command.get("remove"):
            value = collection.find_one_and_delete(
                query, projection=projection, sort=sort
            )
            return {
                "lastErrorObject": {"n": int(value is not None)},
                "value": value,
                "ok": 1,
            }
        update = command.get("update")
        if update is None:
            raise CommandError("findAndModify needs either update or remove")
        upsert = bool(command.get("upsert"))
        return_new = bool(command.get("new"))
        try:
            # operators (or a pipeline) update; a plain document replaces
            operators = isinstance(update, list) or any(
                key.startswith("$") for key in update
            )
            modify = (
                collection.find_one_and_update
                if operators
                else collection.find_one_and_replace
            )
            value = modify(
                query,
                update,
                projection=projection,
                sort=sort,
                upsert=upsert,
                return_document=return_new,
            )
        except mongomock.DuplicateKeyError as error:
            raise CommandError(str(error), DUPLICATE_KEY, "DuplicateKey") from error
        last_error = {"n": int(existing is not None), "updatedExisting": False}
        if existing is not None:
            last_error["updatedExisting"] = True
        elif upsert:
            last_error["n"] = 1
            if value is not None and "_id" in value:
                last_error["upserted"] = value["_id"]
        return {"lastErrorObject": last_error, "value": value, "ok": 1}

    # collections and indexes

    def _create_indexes(self, database, name, command):
        collection = database[command[name]]
        before = len(collection.index_information())
        for index in command.get("indexes", []):
            options = {
                option: index[option]
                for option in ("unique", "sparse", "expireAfterSeconds")
                if option in index
            }
            if "partialFilterExpression" in index:
                options["partialFilterExpression"] = index["partialFilterExpression"]
            try:
                collection.create_index(
                    list(index["key"].items()), name=index["name"], **options
                )
            except mongomock.DuplicateKeyError as error:
                raise CommandError(str(error), DUPLICATE_KEY, "DuplicateKey") from error
        after = len(collection.index_information())
        return {
            "numIndexesBefore": before,
            "numIndexesAfter": after,
            "createdCollectionAutomatically": before == 0,
            "ok": 1,
        }

    def _list_indexes(self, database, name, command):
        collection_name = command[name]
        if collection_name not in database.list_collection_names():
            raise CommandError(
                "ns does not exist: %s" % self._namespace(database, collection_name),
                26,
                "NamespaceNotFound",
            )
        documents = []
        for index_name, info in database[collection_name].index_information().items():
            document = SON([("v", info.get("v", 2)), ("key", SON(info["key"]))])
            document["name"] = index_name
            for option, value in info.items():
                if option not in ("v", "key"):
                    document[option] = value
            documents.append(document)
        return {
            "cursor": self._open_cursor(
                self._namespace(database, collection_name), documents, None
            ),
            "ok": 1,
        }

    def _drop_indexes(self, database, name, command):
        collection = database[command[name]]
        index = command.get("index", "*")
        before = len(collection.index_information())
        if index == "*":
            collection.drop_indexes()
        elif isinstance(index, str):
            collection.drop_index(index)
        else:
            collection.drop_index(list(index.items()))
        return {"nIndexesWas": before, "ok": 1}

    def _create(self, database, name, command):
        if command.get("capped"):
            raise CommandError(
                "the mongo emulator does not support capped collections",
                ILLEGAL_OPERATION,
                "IllegalOperation",
            )
        try:
            database.create_collection(command[name])
        except errors.CollectionInvalid as error:
            raise CommandError(str(error), 48, "NamespaceExists") from error
        return {"ok": 1}

    def _drop(self, database, name, command):
        database.drop_collection(command[name])
        return {"ns": self._namespace(database, command[name]), "ok": 1}

    def _drop_database(self, database, name, command):
        self._engine.drop_database(database.name)
        return {"dropped": database.name, "ok": 1}

    def _list_collections(self, database, name, command):
        documents = [
            {
                "name": collection_name,
                "type": "collection",
                "options": {},
                "info": {"readOnly": False},
            }
            for collection_name in sorted(database.list_collection_names())
        ]
        query = command.get("filter") or {}
        documents = [
            document
            for document in documents
            if mongomock.filtering.filter_applies(query, document)
        ]
        if command.get("nameOnly"):
            documents = [
                {"name": document["name"], "type": "collection"}
                for document in documents
            ]
        return {
            "cursor": self._open_cursor(
                "%s.$cmd.listCollections" % database.name, documents, None
            ),
            "ok": 1,
        }

    def _list_databases(self, database, name, command):
        names = sorted(self._engine.list_database_names())
        if command.get("nameOnly"):
            databases = [{"name": database_name} for database_name in names]
        else:
            databases = [
                {"name": database_name, "sizeOnDisk": 0, "empty": False}
                for database_name in names
            ]
        return {"databases": databases, "totalSize": 0, "ok": 1}


def main(argv=None):
    """Runs the emulator until SIGINT or SIGTERM, after printing one JSON
    line ``{"url": ..., "port": ...}`` once it accepts connections."""
    parser = argparse.ArgumentParser(
        description="MongoDB wire-protocol EMULATOR for tests (not MongoDB)"
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    with MongoEmulator(port=args.port, verbose=args.verbose) as emulator:
        print(json.dumps({"url": emulator.url, "port": emulator.port}), flush=True)
        while not stopping.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
