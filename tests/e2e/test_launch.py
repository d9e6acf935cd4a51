"""The launcher as an operator meets it: ``python src/pushi/base/state.py``
and the ``pushi`` command, with settings that cannot work, a second server
on the same ports, and signals."""

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

import pushi

from support import SRC, PushiServer


def launch(env, args=None, timeout=20):
    """``(returncode, output)`` of the launcher (or of ``python -m pushi
    args``) run with ``env`` on top of a fresh server's settings, once it
    ends by itself within ``timeout`` seconds."""
    instance = PushiServer(env=env)
    command = (
        [sys.executable, "-m", "pushi"] + list(args)
        if args
        else [sys.executable, os.path.join(SRC, "pushi", "base", "state.py")]
    )
    result = subprocess.run(
        command,
        env=instance.env(),
        cwd=instance.data_dir,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result.returncode, result.stdout + result.stderr


def assert_one_line_error(returncode, output, message):
    """A refused start says why in one line, and nothing else (not where
    the store is, nor Appier's "Finishing" line)."""
    assert returncode == 1, output
    assert output.strip().splitlines() == [message], output


@pytest.fixture
def held_port():
    """A port of 127.0.0.1 that another program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return str(path)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SERVER_PORT": "99999"}, "Invalid value for SERVER_PORT: '99999'"),
        ({"APP_PORT": "-1"}, "Invalid value for APP_PORT: '-1'"),
        (
            {"SERVER_SSL": "1"},
            "SERVER_SSL=1 needs SERVER_SSL_KEY and SERVER_SSL_CER (PEM files)",
        ),
        (
            {"APP_SSL": "1", "APP_SSL_KEY": "/nonexistent/key.pem"},
            "Cannot read APP_SSL_KEY (/nonexistent/key.pem): No such file or directory",
        ),
        (
            {"APP_SERVER": "bogus"},
            "Unknown APP_SERVER: 'bogus' (netius, legacy, waitress, tornado, cherry)",
        ),
        # Appier's method names are no servers
        (
            {"APP_SERVER": "final"},
            "Unknown APP_SERVER: 'final' (netius, legacy, waitress, tornado, cherry)",
        ),
        ({"PUSHI_LOG_LEVEL": "loud"}, "Invalid value for PUSHI_LOG_LEVEL: 'loud'"),
        # 0 spun the loop (and the retention thread) at full CPU
        (
            {"PUSHI_ACTIVITY_TIMEOUT": "0"},
            "Invalid value for PUSHI_ACTIVITY_TIMEOUT: '0'",
        ),
        (
            {"PUSHI_RETENTION_INTERVAL": "nan"},
            "Invalid value for PUSHI_RETENTION_INTERVAL: 'nan'",
        ),
        ({"PUSHI_MAX_PENDING": "-1"}, "Invalid value for PUSHI_MAX_PENDING: '-1'"),
        ({"PUSHI_SQLITE_SYNC": "off"}, "Invalid value for PUSHI_SQLITE_SYNC: 'off'"),
        (
            {"PUSHI_METRICS": "off", "PUSHI_METRICS_PORT": "9200"},
            "PUSHI_METRICS_PORT needs PUSHI_METRICS on",
        ),
    ],
)
def test_a_setting_that_cannot_work_is_one_line_and_exit_1(env, message):
    assert_one_line_error(*launch(env), message)


def test_a_data_dir_that_cannot_be_made_is_one_line_and_exit_1(a_file):
    message = "Cannot open the store in PUSHI_DATA_DIR (%s): Not a directory" % (
        os.path.join(a_file, "data")
    )
    env = {"PUSHI_DATA_DIR": os.path.join(a_file, "data")}
    assert_one_line_error(*launch(env), message)
    assert_one_line_error(*launch(env, ["app", "create", "x"]), message)


def test_a_websocket_port_in_use_is_one_line_and_exit_1_at_once(held_port):
    returncode, output = launch({"SERVER_PORT": str(held_port)})
    message = (
        "WebSocket server cannot listen on 127.0.0.1:%d (SERVER_HOST, SERVER_PORT):"
        " Address already in use" % held_port
    )
    assert_one_line_error(returncode, output, message)


def test_a_rest_port_in_use_is_one_line_and_exit_1(held_port):
    for server in ("netius", "legacy"):
        returncode, output = launch({"APP_PORT": str(held_port), "APP_SERVER": server})
        message = (
            "REST API cannot listen on 127.0.0.1:%d (APP_HOST, APP_PORT):"
            " Address already in use" % held_port
        )
        assert_one_line_error(returncode, output, message)


def test_a_second_server_on_the_same_ports_is_refused():
    first = PushiServer().start()
    try:
        second = {
            "APP_PORT": str(first.app_port),
            "SERVER_PORT": str(first.server_port),
        }
        message = (
            "WebSocket server cannot listen on 127.0.0.1:%d (SERVER_HOST,"
            " SERVER_PORT): Address already in use" % first.server_port
        )
        assert_one_line_error(*launch(second), message)
        # the REST port alone as well
        second["SERVER_PORT"] = "0"
        message = (
            "REST API cannot listen on 127.0.0.1:%d (APP_HOST, APP_PORT):"
            " Address already in use" % first.app_port
        )
        assert_one_line_error(*launch(second), message)
        assert first.request("GET", "health")[0] == 200
    finally:
        first.stop()


@pytest.mark.parametrize(
    "level, logged, not_logged",
    [
        ("WARNING", [], ["WebSocket server on"]),
        ("INFO", ["WebSocket server on"], ["open "]),
        ("debug", ["WebSocket server on", "open "], []),
    ],
)
def test_log_level(level, logged, not_logged):
    instance = PushiServer(env={"PUSHI_LOG_LEVEL": level}).start()
    try:
        client = instance.connect(instance.create_app())
        client.close()
    finally:
        instance.stop()
    log = instance.read_log()
    for text in logged:
        assert text in log, log
    for text in not_logged:
        assert text not in log, log


LOG_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)"
    r" (pushi|pushi\.[a-z.]+|netius) \S"
)


def test_the_log_has_one_format_for_pushi_appier_and_netius():
    """Appier's records (its welcome and "Finishing" lines) came as
    ``<time> [INFO] <message>`` among Pushi's ``<time> INFO <logger>
    <message>``.  (``APP_SERVER=legacy`` adds wsgiref's access lines, its
    own format on stderr.)"""
    instance = PushiServer(env={"PUSHI_LOG_LEVEL": "DEBUG"}).start()
    try:
        client = instance.connect(instance.create_app())
        client.close()
        assert instance.request("GET", "nowhere")[0] == 404
    finally:
        instance.stop()
    log = instance.read_log()
    assert "Pushi %s (appier " % pushi.__version__ in log, log
    assert "Finishing appier" in log, log
    for line in log.splitlines():
        assert LOG_LINE.match(line), line


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_log_says_where_it_listens_also_on_ports_the_system_chose(host, tmp_path):
    env = dict(
        PushiServer(data_dir=str(tmp_path)).env(),
        APP_HOST=host,
        SERVER_HOST=host,
        APP_PORT="0",
        SERVER_PORT="0",
    )
    process = subprocess.Popen(
        [sys.executable, os.path.join(SRC, "pushi", "base", "state.py")],
        env=env,
        cwd=str(tmp_path),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        listening, lines = {}, []
        for line in process.stderr:
            lines.append(line)
            for name in ("WebSocket server on ", "REST API on "):
                if name in line:
                    listening[name.split()[0]] = line.split(name)[1].strip()
            if len(listening) == 2:
                break
        ws_url, rest_url = listening["WebSocket"], listening["REST"]
        assert not ws_url.endswith(":0") and not rest_url.endswith(":0"), listening
        with urllib.request.urlopen(rest_url + "/health", timeout=10) as answer:
            assert json.load(answer)["status"] == "ok"
        url = urllib.parse.urlsplit(ws_url)
        assert url.hostname == host, listening
        socket.create_connection((url.hostname, url.port), 5).close()
        process.terminate()
        # what runs, and which store: not Appier's own (unused) MongoAdapter
        log = "".join(lines) + process.communicate(timeout=15)[1]
        assert "Pushi %s (appier " % pushi.__version__ in log, log
        assert "Store: SQLiteStore(%r)" % str(tmp_path) in log, log
        assert "MongoAdapter" not in log, log
    finally:
        process.terminate()
        process.wait(15)


def test_pushi_app_without_an_action_shows_the_app_commands_and_exits_2():
    returncode, output = launch({}, ["app"])
    assert returncode == 2, output
    assert "usage: pushi app" in output and "create" in output, output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("app_server", ["netius", "legacy"])
def test_a_signal_stops_it_cleanly_and_frees_its_ports(app_server, signum):
    instance = PushiServer(env={"APP_SERVER": app_server}).start()
    client = instance.connect(instance.create_app())
    instance.process.send_signal(signum)
    assert client.close_code() == 4200
    assert instance.process.wait(15) == 0
    instance.process = None
    instance.log.close()
    log = instance.read_log()
    assert "Traceback" not in log and "Unhandled" not in log, log
    for port in (instance.app_port, instance.server_port):
        with socket.socket() as probe:
            # as a server restarting binds: past connections in TIME_WAIT
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
            probe.listen()


def test_an_app_server_that_is_not_installed_is_not_installed_at_run_time(tmp_path):
    """Appier pip-installs the package of a server it lacks, into the
    interpreter that runs Pushi; here pip may find nothing (no index, no
    links), so the test changes nothing even where that is not fixed."""
    if importlib.util.find_spec("waitress") is not None:
        pytest.skip("waitress is installed here")
    env = {
        "APP_SERVER": "waitress",
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path),
        "PIP_CONFIG_FILE": os.devnull,
    }
    message = (
        "APP_SERVER=waitress needs the Python package waitress: pip install waitress"
    )
    assert_one_line_error(*launch(env), message)


def test_gunicorn_is_refused_for_it_cannot_serve_pushi():
    """Its forked workers have no event loop: every publish would time out."""
    message = (
        "APP_SERVER=gunicorn cannot serve Pushi (its forked workers have no event"
        " loop): use netius, the default"
    )
    assert_one_line_error(*launch({"APP_SERVER": "gunicorn"}), message)


@pytest.mark.parametrize("variable", ["HOME", "XDG_DATA_HOME"])
def test_without_a_data_dir_the_cli_and_the_server_share_one_store(variable, tmp_path):
    """``PUSHI_DATA_DIR`` unset: the ``pushi`` command run in one folder
    and the server started in another use the same store (``./data`` made
    a second, empty one, whose ``app_id 1`` the server refused)."""
    folder = tmp_path / "user"
    expected = (
        folder / ".local" / "share" / "pushi"
        if variable == "HOME"
        else folder / "pushi"
    )
    env = {"PUSHI_DATA_DIR": "", "XDG_DATA_HOME": "", variable: str(folder)}
    instance = PushiServer(env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pushi", "app", "create", "x", "--json"],
        env=instance.env(),
        cwd=str(elsewhere),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # stdout is the answer alone, stderr names the store
    created = json.loads(result.stdout)
    assert result.stderr.strip() == "Store: SQLiteStore(%r)" % str(expected)
    instance.start()
    try:
        instance.connect(created).close()
        assert instance.request("GET", "health")[1]["apps"] == 1
    finally:
        instance.stop()
    assert "Store: SQLiteStore(%r)" % str(expected) in instance.read_log()
    assert not (elsewhere / "data").exists()
    assert not os.path.exists(os.path.join(instance.data_dir, "data"))


def test_a_store_left_in_the_old_data_dir_is_refused_in_one_line(tmp_path):
    """An old install's folder holds its store in ``./data``: started
    there with ``PUSHI_DATA_DIR`` unset, the server and the command say
    how to keep using it rather than start on an empty store."""
    old_install = tmp_path / "old-install"
    old_install.mkdir()
    PushiServer(data_dir=str(old_install / "data")).create_app()
    home = tmp_path / "home"
    instance = PushiServer(
        data_dir=str(old_install),
        env={"PUSHI_DATA_DIR": "", "XDG_DATA_HOME": "", "HOME": str(home)},
    )
    message = (
        "./data holds a Pushi store, but the default data dir is now %s:"
        " set PUSHI_DATA_DIR=./data to keep using it"
        % os.path.join(str(home), ".local", "share", "pushi")
    )
    for args in (
        [sys.executable, os.path.join(SRC, "pushi", "base", "state.py")],
        [sys.executable, "-m", "pushi", "app", "list"],
    ):
        result = subprocess.run(
            args,
            env=instance.env(),
            cwd=str(old_install),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert_one_line_error(result.returncode, result.stdout + result.stderr, message)
    assert not home.exists()
    # as it says: with PUSHI_DATA_DIR=./data the old store is served
    env = dict(instance.env(), PUSHI_DATA_DIR="./data")
    listed = subprocess.run(
        [sys.executable, "-m", "pushi", "app", "list", "--json"],
        env=env,
        cwd=str(old_install),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert [app["app_id"] for app in json.loads(listed.stdout)] == ["1"], listed


class BareLauncher(PushiServer):
    """The launcher file run with no ``PYTHONPATH`` (so no ``pushi`` on the
    path unless installed) and with an interpreter flag of its own; the
    ``pushi`` commands of the test keep theirs."""

    def command(self):
        # env(1) execs the interpreter: the pid started is still the server's
        return ["env", "-u", "PYTHONPATH", sys.executable, "-X", "importtime"] + (
            PushiServer.command(self)[1:]
        )


def test_the_launcher_file_runs_its_checkout_in_its_own_process_with_its_flags():
    """``python src/pushi/base/state.py`` becomes ``python -m
    pushi.base.state`` of its own checkout: found without ``PYTHONPATH``,
    the interpreter's flags kept (``-X importtime`` reports its imports),
    and the same process (the signal sent to the pid started stops it)."""
    instance = BareLauncher().start()
    client = instance.connect(instance.create_app())
    instance.process.send_signal(signal.SIGTERM)
    assert client.close_code() == 4200
    assert instance.process.wait(15) == 0
    instance.process = None
    instance.log.close()
    with open(instance.log_path, encoding="utf-8", errors="replace") as file:
        log = file.read()
    assert "Traceback" not in log, log[-4000:]
    assert "import time:" in log and "pushi.base.engine" in log
