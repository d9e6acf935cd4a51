"""The apps file (``pushi.base.appsfile``) applied to each real store:
keys that move between the file's apps, and what a refused file leaves.
The server end to end is in ``test_e2e_appsfile.py``."""

import json
import uuid

import pytest

from pushi.base.appsfile import AppsFileError, apply_file
from pushi.base.store import MongoStore, SQLiteStore

SECRET = "s3cret-0123456789abcdef"


@pytest.fixture(params=["sqlite", "mongo-emulator"])
def store(request, tmp_path):
    if request.param == "sqlite":
        store = SQLiteStore(str(tmp_path / "data"))
    else:
        emulator = request.getfixturevalue("store_mongo_emulator")
        store = MongoStore(emulator.url, database="pushi_apps_" + uuid.uuid4().hex)
    yield store
    store.close()


def write(tmp_path, *apps):
    path = tmp_path / "apps.json"
    path.write_text(
        json.dumps({"apps": [dict(app, secret=SECRET + app["key"]) for app in apps]})
    )
    return str(path)


def keys(store):
    return {app["app_id"]: app["key"] for app in store.list_apps()}


def test_a_key_moves_to_another_app_of_the_file_in_one_start(store, tmp_path):
    apply_file(store, write(tmp_path, {"app_id": "1", "key": "a"}))
    # app 2 (listed first) takes app 1's key, app 1 takes a new one
    path = write(tmp_path, {"app_id": "2", "key": "a"}, {"app_id": "1", "key": "b"})
    assert apply_file(store, path) == dict(created=1, updated=1, unchanged=0)
    assert keys(store) == {"1": "b", "2": "a"}
    assert apply_file(store, path) == dict(created=0, updated=0, unchanged=2)


def test_keys_in_a_circle_are_refused_and_nothing_changes(store, tmp_path):
    apply_file(
        store, write(tmp_path, {"app_id": "1", "key": "a"}, {"app_id": "2", "key": "b"})
    )
    path = write(
        tmp_path,
        {"app_id": "3", "key": "c"},
        {"app_id": "1", "key": "b"},
        {"app_id": "2", "key": "a"},
    )
    with pytest.raises(AppsFileError) as refused:
        apply_file(store, path)
    assert str(refused.value) == (
        "Invalid PUSHI_APPS_FILE (%s): entry 2 (app_id 1), field key: still the"
        " key of app 2 in the store, and the file moves keys in a circle: move"
        " them in two starts" % path
    )
    assert keys(store) == {"1": "a", "2": "b"}


def test_a_key_of_an_app_the_file_does_not_name_is_refused(store, tmp_path):
    other = store.create_app("chat")
    path = write(
        tmp_path, {"app_id": "4", "key": "d"}, {"app_id": "5", "key": other["key"]}
    )
    with pytest.raises(AppsFileError) as refused:
        apply_file(store, path)
    assert str(refused.value) == (
        "Invalid PUSHI_APPS_FILE (%s): entry 2 (app_id 5), field key: already the"
        " key of app 1 ('chat') in the store" % path
    )
    assert keys(store) == {"1": other["key"]}
