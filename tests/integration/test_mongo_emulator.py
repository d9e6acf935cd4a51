"""The MongoDB wire-protocol emulator (``tests/mongo_emulator.py``), through
pymongo 4.x over a real socket: the parts the store suite does not reach
(cursor batches, write errors, refusals) and the standalone mode used by the
end-to-end tests."""

import json
import os
import signal
import subprocess
import sys
import uuid

import pymongo
import pytest
from pymongo import errors

from support import TESTS

EMULATOR_SCRIPT = os.path.join(TESTS, "mongo_emulator.py")


@pytest.fixture
def store_emulator_db(store_mongo_emulator):
    """A fresh database on the session's emulator."""
    client = pymongo.MongoClient(
        store_mongo_emulator.url, serverSelectionTimeoutMS=5000
    )
    name = "emulator_test_" + uuid.uuid4().hex
    yield client[name]
    client.drop_database(name)
    client.close()


def test_handshake_announces_a_standalone_primary(store_emulator_db):
    hello = store_emulator_db.client.admin.command("hello")

    assert hello["isWritablePrimary"] is True
    assert hello["maxWireVersion"] >= 9  # what pymongo 4.20 needs
    assert "setName" not in hello
    assert store_emulator_db.client.admin.command("ping")["ok"] == 1


def test_find_in_batches_with_get_more_and_kill_cursors(
    store_emulator_db, store_mongo_emulator
):
    collection = store_emulator_db["numbers"]
    collection.insert_many([{"n": n} for n in range(250)])

    found = [
        document["n"] for document in collection.find({}, batch_size=7).sort("n", -1)
    ]
    assert found == list(range(249, -1, -1))
    # Past the default first batch of 101, without a batch size.
    assert len(list(collection.find({"n": {"$gte": 10}}))) == 240
    window = collection.find({}, {"_id": 0}).sort("n", 1).skip(100).limit(3)
    assert list(window) == [{"n": 100}, {"n": 101}, {"n": 102}]

    open_before = len(store_mongo_emulator._cursors)
    cursor = collection.find({}, batch_size=5)
    assert next(cursor)["n"] == 0
    assert len(store_mongo_emulator._cursors) == open_before + 1
    cursor.close()  # sends killCursors for the open cursor
    assert len(store_mongo_emulator._cursors) == open_before


def test_aggregate_count_and_distinct(store_emulator_db):
    collection = store_emulator_db["things"]
    collection.insert_many([{"kind": kind, "n": n} for n, kind in enumerate("aabbbc")])

    assert collection.count_documents({"kind": "b"}) == 3
    assert collection.count_documents({}, skip=1, limit=3) == 3
    assert collection.estimated_document_count() == 6
    assert sorted(collection.distinct("kind")) == ["a", "b", "c"]
    grouped = collection.aggregate(
        [{"$group": {"_id": "$kind", "total": {"$sum": "$n"}}}, {"$sort": {"_id": 1}}]
    )
    assert list(grouped) == [
        {"_id": "a", "total": 1},
        {"_id": "b", "total": 9},
        {"_id": "c", "total": 5},
    ]


def test_unique_indexes_are_enforced(store_emulator_db):
    collection = store_emulator_db["people"]
    collection.create_index([("app", 1), ("name", 1)], unique=True)
    collection.insert_one({"app": "1", "name": "ann"})
    collection.insert_one({"app": "2", "name": "ann"})

    with pytest.raises(errors.DuplicateKeyError):
        collection.insert_one({"app": "1", "name": "ann"})
    with pytest.raises(errors.BulkWriteError) as raised:
        collection.insert_many(
            [
                {"app": "1", "name": "bob"},
                {"app": "1", "name": "ann"},
                {"app": "1", "name": "cy"},
            ],
            ordered=False,
        )
    assert raised.value.details["nInserted"] == 2
    assert [error["index"] for error in raised.value.details["writeErrors"]] == [1]
    with pytest.raises(errors.DuplicateKeyError):
        collection.update_one({"name": "bob"}, {"$set": {"name": "ann"}})
    assert collection.count_documents({}) == 4

    twins = store_emulator_db["twins"]
    twins.insert_many([{"k": "x"}, {"k": "x"}])
    with pytest.raises(errors.DuplicateKeyError):
        twins.create_index("k", unique=True)


def test_updates_upserts_and_find_one_and_update(store_emulator_db):
    collection = store_emulator_db["counters"]

    values = [
        collection.find_one_and_update(
            {"_id": "ids"},
            {"$inc": {"value": 1}},
            upsert=True,
            return_document=pymongo.ReturnDocument.AFTER,
        )["value"]
        for _ in range(3)
    ]
    assert values == [1, 2, 3]
    result = collection.update_one({"_id": "other"}, {"$set": {"v": 1}}, upsert=True)
    assert result.upserted_id == "other"
    assert collection.update_many({}, {"$set": {"seen": True}}).modified_count == 2
    assert collection.replace_one({"_id": "other"}, {"v": 9}).matched_count == 1
    assert collection.find_one({"_id": "other"}) == {"_id": "other", "v": 9}
    assert collection.find_one_and_delete({"_id": "other"})["v"] == 9
    assert collection.delete_many({}).deleted_count == 1


def test_unsupported_features_are_refused_not_faked(store_emulator_db):
    with pytest.raises(errors.OperationFailure, match="capped"):
        store_emulator_db.create_collection("log", capped=True, size=4096)
    with pytest.raises(errors.OperationFailure, match="no such command"):
        store_emulator_db.command("replSetGetStatus")


def test_standalone_mode_prints_its_url_and_stops_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, EMULATOR_SCRIPT, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        announced = json.loads(process.stdout.readline())
        assert announced["url"] == "mongodb://127.0.0.1:%d/" % announced["port"]
        client = pymongo.MongoClient(announced["url"], serverSelectionTimeoutMS=5000)
        client.pushi.apps.insert_one({"_id": 1, "name": "chat"})
        assert client.pushi.apps.find_one({"_id": 1})["name"] == "chat"
        client.close()

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
