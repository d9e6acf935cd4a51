"""Declarative apps (``PUSHI_APPS_FILE``) as an operator meets them: the
real server started with a JSON or a TOML file on each store serves the
file's apps at once (the ``pusher`` PyPI SDK publishes with the file's
credentials, a WebSocket client receives), a restart with the same file
writes nothing, one with a changed file updates the apps it names and no
other, and a bad file stops the start with one line naming the entry and
the field."""

import json
import os
import subprocess
import sys
import uuid

import pusher.errors
import pytest

from interop_support import python_sdk
from support import ADMIN_SECRET, SRC, PushiServer

SECRET_ONE = "one-secret-0123456789abcdef"
SECRET_TWO = "two-secret-0123456789abcdef"

JSON_FILE = """{
  "apps": [
    {"app_id": "%(first_id)s", "name": "Chat", "key": "%(first_key)s",
     "secret_env": "APP_ONE_SECRET", "client_events": %(client_events)s,
     "settings": {"max_batch": %(max_batch)d, "allowed_origins": []}},
    {"app_id": "12", "key": "second-key", "secret_env": "APP_TWO_SECRET",
     "enabled": %(enabled)s}
  ]
}
"""

TOML_FILE = """# committed without secrets: they come from the environment
[[apps]]
app_id = "%(first_id)s"
name = "Chat"
key = "%(first_key)s"
secret_env = "APP_ONE_SECRET"
client_events = %(client_events)s

[apps.settings]
max_batch = %(max_batch)d
allowed_origins = []

[[apps]]
app_id = "12"
key = "second-key"
secret_env = "APP_TWO_SECRET"
enabled = %(enabled)s
"""


def write_apps(path, **values):
    """Writes the two-app file (JSON or TOML by ``path``'s name)."""
    fields = dict(
        first_id="3",
        first_key="first-key",
        client_events="true",
        max_batch=5,
        enabled="true",
    )
    fields.update(values)
    text = TOML_FILE if str(path).endswith(".toml") else JSON_FILE
    path.write_text(text % fields)
    return str(path)


def file_app(app_id, key, secret):
    return {"app_id": app_id, "key": key, "secret": secret}


def admin_app(server, app_id):
    status, body = server.request(
        "GET", "apps/%s" % app_id, headers={"Authorization": "Bearer " + ADMIN_SECRET}
    )
    assert status == 200, body
    return body


def publish_and_receive(server, app, channel="news"):
    """The SDK publishes with ``app``'s credentials and a subscriber of the
    app gets the event."""
    client = server.connect(app)
    try:
        answer = client.subscribe(channel)
        assert answer["event"] == "pusher_internal:subscription_succeeded", answer
        assert python_sdk(server, app).trigger(channel, "said", {"n": 1}) == {}
        assert json.loads(client.recv_event("said")["data"]) == {"n": 1}
    finally:
        client.close()


@pytest.fixture(params=["sqlite", "mongo-emulator"])
def backend(request):
    if request.param == "sqlite":
        return {}
    emulator = request.getfixturevalue("store_mongo_emulator")
    return {"MONGO_URL": emulator.url.rstrip("/") + "/pushi_apps_" + uuid.uuid4().hex}


@pytest.mark.parametrize("extension", ["json", "toml"])
def test_a_fresh_server_serves_the_files_apps_and_a_changed_file_updates_them(
    backend, extension, tmp_path
):
    path = write_apps(tmp_path / ("apps." + extension))
    secrets = {"APP_ONE_SECRET": SECRET_ONE, "APP_TWO_SECRET": SECRET_TWO}
    server = PushiServer(env=dict(backend, PUSHI_APPS_FILE=path, **secrets))
    first = file_app("3", "first-key", SECRET_ONE)
    second = file_app("12", "second-key", SECRET_TWO)
    try:
        server.start()
        publish_and_receive(server, first)
        publish_and_receive(server, second)
        record = admin_app(server, "3")
        assert record["name"] == "Chat" and record["client_events"] is True
        assert record["settings"]["max_batch"] == 5
        assert admin_app(server, "12")["name"] == "app 12"
        # an app made meanwhile with the CLI gets an id after the file's
        made = server.create_app("made-by-hand")
        assert made["app_id"] == "13"
        assert "2 created, 0 updated, 0 unchanged" in server.read_log()

        # the same file again: nothing written
        server.restart()
        assert "0 created, 0 updated, 2 unchanged" in server.read_log()
        publish_and_receive(server, first)

        # a changed file: new key and secret, settings, switches
        write_apps(
            tmp_path / ("apps." + extension),
            first_key="first-key-2",
            client_events="false",
            max_batch=7,
            enabled="false",
        )
        server.extra_env["APP_ONE_SECRET"] = SECRET_ONE + "-rotated"
        server.restart()
        assert "0 created, 2 updated, 0 unchanged" in server.read_log()
        changed = file_app("3", "first-key-2", SECRET_ONE + "-rotated")
        publish_and_receive(server, changed)
        with pytest.raises(pusher.errors.PusherBadAuth):
            python_sdk(server, dict(changed, secret=SECRET_ONE)).trigger(
                "news", "e", "x"
            )
        old = server.connect(first, expect_established=False)
        assert old.recv_event("pusher:error")["data"]["code"] == 4001
        old.close()
        record = admin_app(server, "3")
        assert record["client_events"] is False
        assert record["settings"]["max_batch"] == 7
        assert admin_app(server, "12")["enabled"] is False
        disabled = server.connect(second, expect_established=False)
        assert disabled.recv_event("pusher:error")["data"]["code"] == 4003
        disabled.close()
        # an app the file does not name is left alone
        publish_and_receive(server, made)
        assert admin_app(server, "13")["name"] == "made-by-hand"
    finally:
        server.stop()


def launch(server, apps_file, **env):
    """``(returncode, output)`` of the launcher on ``server``'s settings
    with the apps file ``apps_file``, once it ends by itself."""
    environ = dict(server.env(), PUSHI_APPS_FILE=apps_file, **env)
    result = subprocess.run(
        [sys.executable, os.path.join(SRC, "pushi", "base", "state.py")],
        env=environ,
        cwd=server.data_dir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode, result.stdout + result.stderr


def assert_refused(returncode, output, message):
    assert returncode == 1, output
    assert "Traceback" not in output, output
    assert output.strip().splitlines()[-1] == message, output


GOOD = {"app_id": "1", "key": "good-key", "secret": SECRET_ONE}


@pytest.mark.parametrize(
    "entries, message",
    [
        (
            [GOOD, {"app_id": "2", "secret": SECRET_TWO}],
            "entry 2 (app_id 2), field key: required, 1 to 128 letters, digits,"
            " '_', '-' or '.'",
        ),
        (
            [{"key": "k", "secret": SECRET_ONE}],
            "entry 1, field app_id: required, a number from 1 (digits, no leading"
            " 0, at most 18)",
        ),
        (
            [{"app_id": "1", "key": "k"}],
            "entry 1 (app_id 1), field secret: required (or secret_env: the"
            " variable that holds it)",
        ),
        (
            [dict(GOOD, settings={"max_batch": "ten"})],
            "entry 1 (app_id 1), field settings: Setting max_batch must be a int",
        ),
        (
            [dict(GOOD, settings={"max_batch": -1})],
            "entry 1 (app_id 1), field settings: Setting max_batch must be from 0"
            " to 2147483647",
        ),
        (
            [dict(GOOD, settings={"webhooks": [{"url": "ftp://x"}]})],
            "entry 1 (app_id 1), field settings: webhook url must be http:// or"
            " https://",
        ),
        (
            [GOOD, {"app_id": "2", "key": "good-key", "secret": SECRET_TWO}],
            "entry 2 (app_id 2), field key: also the key of entry 1 (app_id 1)",
        ),
        (
            [GOOD, dict(GOOD, key="other")],
            "entry 2 (app_id 1), field app_id: also the app_id of entry 1",
        ),
        (
            [{"app_id": "1", "key": "k", "secret_env": "APP_ONE_SECRET"}],
            "entry 1 (app_id 1), field secret_env: the environment variable"
            " APP_ONE_SECRET is not set",
        ),
        (
            [dict(GOOD, secret="short")],
            "entry 1 (app_id 1), field secret: the secret must have at least 16"
            " characters",
        ),
        (
            [dict(GOOD, secret_env="X")],
            "entry 1 (app_id 1), field secret_env: give secret or secret_env, not both",
        ),
        (
            [dict(GOOD, secert="typo")],
            "entry 1 (app_id 1), field secert: unknown (known: app_id, name, key,"
            " secret, secret_env, enabled, client_events, settings)",
        ),
        (
            [dict(GOOD, enabled="yes")],
            "entry 1 (app_id 1), field enabled: must be true or false",
        ),
        ([GOOD, "app"], "entry 2: an app is a table of fields"),
    ],
)
def test_a_bad_entry_stops_the_start_naming_entry_and_field(entries, message, tmp_path):
    server = PushiServer(data_dir=str(tmp_path))
    path = tmp_path / "apps.json"
    path.write_text(json.dumps({"apps": entries}))
    expected = "Invalid PUSHI_APPS_FILE (%s): %s" % (path, message)
    assert_refused(*launch(server, str(path)), expected)
    # a refused file changes nothing, not even its good entries
    assert json.loads(server.cli("app", "list", "--json")) == []


def test_a_key_another_app_of_the_store_holds_names_both(tmp_path):
    server = PushiServer(data_dir=str(tmp_path / "data"))
    other = server.create_app("chat")
    path = tmp_path / "apps.toml"
    path.write_text(
        '[[apps]]\napp_id = "2"\nname = "mine"\nkey = "k1"\nsecret = "%s"\n\n'
        '[[apps]]\napp_id = "5"\nkey = "%s"\nsecret_env = "APP_ONE_SECRET"\n'
        % (SECRET_ONE, other["key"])
    )
    expected = (
        "Invalid PUSHI_APPS_FILE (%s): entry 2 (app_id 5), field key: already the"
        " key of app 1 ('chat') in the store" % path
    )
    assert_refused(*launch(server, str(path), APP_ONE_SECRET=SECRET_TWO), expected)
    # nothing applied, not even entry 1
    listing = json.loads(server.cli("app", "list", "--json"))
    assert [(app["app_id"], app["name"], app["key"]) for app in listing] == [
        ("1", "chat", other["key"])
    ]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.json", None, "Cannot read PUSHI_APPS_FILE (%s): No such file or"),
        ("folder.json", "dir", "Cannot read PUSHI_APPS_FILE (%s): Is a directory"),
        ("latin.json", b'{"apps": ["\xe9"]}', "Cannot read PUSHI_APPS_FILE (%s):"),
        (
            "apps.yaml",
            "apps: []",
            "Invalid PUSHI_APPS_FILE (%s): its name must end in .json or .toml",
        ),
        (
            "broken.json",
            '{"apps": [}',
            "Invalid PUSHI_APPS_FILE (%s): Expecting value: line 1 column 11 (char 10)",
        ),
        (
            "broken.toml",
            "[[apps]]\napp_id = \n",
            "Invalid PUSHI_APPS_FILE (%s): Invalid value (at line 2, column 10)",
        ),
        (
            "list.json",
            "[]",
            'Invalid PUSHI_APPS_FILE (%s): it must hold only a list of apps ("apps")',
        ),
    ],
)
def test_a_file_that_cannot_be_read_stops_the_start(name, content, message, tmp_path):
    server = PushiServer(data_dir=str(tmp_path))
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    returncode, output = launch(server, str(path))
    assert returncode == 1 and "Traceback" not in output, output
    assert output.strip().splitlines()[-1].startswith(message % path), output
