"""The docs say what the code does, and the README's quick start works.

Fast checks, no server: every environment variable ``Config`` reads and
every app setting of ``limits.DEFAULTS`` is in docs/configuration.md (and
nothing there is gone from the code), every REST route the app serves is in
docs/rest-api.md, every close and error code is in docs/protocol.md, and
every relative link of the docs leads to a file and heading that exist.

One end-to-end check: the README's quick start, as written. Its commands
start a real server and create an app, its Python snippet publishes with
the Python client, and its HTML snippet runs in headless Chromium (as
tests/browser/test_pushi_js.py does), which must show the event.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

import appier
import pytest

import pushi.app.app  # registers the app's routes
import pushi.app.controllers  # noqa: F401  (and the controllers')
from pushi.app import publish
from pushi.base import limits
from pushi.base.config import Config
from pushi.proto import errors
from pushi.proto import websocket as ws

from support import ROOT, SRC, PushiServer, chromium, signed_path, wait_until

DOCS = os.path.join(ROOT, "docs")
README = os.path.join(ROOT, "README.md")


def read(path):
    with open(path, encoding="utf-8") as file:
        return file.read()


def section(text, heading):
    """The text under ``## heading`` up to the next heading of that level."""
    match = re.search(
        r"^## %s\n(.*?)(?=^## |\Z)" % re.escape(heading), text, re.M | re.S
    )
    assert match, "no section %r" % heading
    return match.group(1)


def table_rows(text):
    """``{first cell without backticks: whole row}`` of the Markdown tables
    in ``text`` (one name per first cell)."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"^\| `([^`]+)` \|", line)
        if match:
            rows[match.group(1)] = line
    return rows


def code_block(text, language):
    """The first fenced block of ``language`` in ``text``."""
    match = re.search(r"^```%s\n(.*?)^```" % language, text, re.M | re.S)
    assert match, "no %s block" % language
    return match.group(1)


def without_code(text):
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


# ---------------------------------------------------------------------------
# configuration.md
# ---------------------------------------------------------------------------


def _number(value):
    """How a default number shows in the docs: as it is, or with commas."""
    return (str(value), f"{value:,}")


def test_every_environment_variable_is_documented_with_its_default():
    rows = table_rows(
        section(read(os.path.join(DOCS, "configuration.md")), "Environment variables")
    )
    for _name, variable, default, _cast in Config.FIELDS:
        assert variable in rows, "%s is not in docs/configuration.md" % variable
        if isinstance(default, int) and not isinstance(default, bool):
            assert any(
                "`%s`" % shown in rows[variable] for shown in _number(default)
            ), "%s: default %s not in its row" % (variable, default)


def test_every_variable_config_py_reads_is_named_in_the_docs():
    """Beside ``Config.FIELDS``, what ``config.py`` reads by name (such as
    the XDG folder the data dir defaults to) is named in the page too."""
    source = read(os.path.join(SRC, "pushi", "base", "config.py"))
    text = read(os.path.join(DOCS, "configuration.md"))
    names = re.findall(r"""environ(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']""", source)
    for name in names:
        assert name in text, "%s is read by config.py but not in the docs" % name


def test_no_documented_variable_is_gone_from_the_code():
    text = read(os.path.join(DOCS, "configuration.md"))
    documented = set(table_rows(section(text, "Environment variables")))
    documented |= set(table_rows(section(text, "Client side")))
    read_by_config = {variable for _name, variable, _default, _cast in Config.FIELDS}
    sources = "\n".join(
        read(path)
        for path in glob.glob(os.path.join(SRC, "pushi", "**", "*.py"), recursive=True)
    )
    for variable in documented - read_by_config:
        # read elsewhere (the Python client's PUSHI_URL): as a literal
        assert '"%s"' % variable in sources, (
            "%s is documented but read nowhere" % variable
        )


def test_every_app_setting_is_documented_with_its_default_and_who_changes_it():
    rows = table_rows(
        section(read(os.path.join(DOCS, "configuration.md")), "App settings")
    )
    assert set(rows) == set(limits.DEFAULTS), "settings documented != limits.DEFAULTS"
    for name, default in limits.DEFAULTS.items():
        cells = [cell.strip() for cell in rows[name].strip("|").split("|")]
        if isinstance(default, bool):
            shown = ["`%s`" % str(default).lower()]
        elif isinstance(default, int):
            shown = ["`%s`" % value for value in _number(default)]
        else:
            shown = ["`%s`" % (default,)]
        assert any(cells[1].startswith(value) for value in shown), (name, cells[1])
        who = "admin secret" if name in limits.OPERATOR_SETTINGS else "app"
        assert cells[2] == who, "%s: changed by %s, docs say %s" % (name, who, cells[2])


# ---------------------------------------------------------------------------
# rest-api.md
# ---------------------------------------------------------------------------


def _route_path(base):
    """An Appier route as the docs write it: ``/apps/<id>/channels/<name>``."""
    path = re.sub(r"<[^<>]*:app_id>", "<id>", base)
    return re.sub(r"<[^<>]*:(\w+)>", r"<\1>", path)


def served_routes():
    """``METHOD /path`` of every route: Appier's, and the publish routes
    answered ahead of it (``app/publish.py``)."""
    routes = set()
    for route in appier.App._BASE_ROUTES:
        if not route[2].__module__.startswith("pushi."):
            continue
        for method in route[0]:
            routes.add("%s %s" % (method, _route_path(route[4]["base"])))
    names = re.search(r"\(([a-z_|]+)\)", publish.ROUTE.pattern).group(1)
    for name in names.split("|"):
        routes.add("POST /apps/<id>/%s" % name)
    return routes


def test_every_rest_route_is_documented():
    text = read(os.path.join(DOCS, "rest-api.md"))
    routes = served_routes()
    assert len(routes) > 20
    for route in sorted(routes):
        assert re.search(r"`%s[`?]" % re.escape(route), text), (
            "%s is not in docs/rest-api.md" % route
        )


# ---------------------------------------------------------------------------
# protocol.md
# ---------------------------------------------------------------------------


def _codes(module, prefix=""):
    return {
        name: value
        for name, value in vars(module).items()
        if name.isupper() and name.startswith(prefix) and isinstance(value, int)
    }


def test_every_close_and_error_code_is_documented():
    text = read(os.path.join(DOCS, "protocol.md"))
    close = section(text, "Close codes")
    message = section(text, "Error codes")
    for name, code in _codes(errors).items():
        table = close if code < 4300 else message
        row = re.search(r"^\| %d \|.*$" % code, table, re.M)
        assert row, "%s (%d) is not in docs/protocol.md" % (name, code)
        assert "`%s`" % name in row.group(0), "%s not named in the row of %d" % (
            name,
            code,
        )
    for name, code in _codes(ws, "CLOSE_").items():
        row = re.search(r"^\| %d \| `%s` \|" % (code, name), close, re.M)
        assert row, "%s (%d) is not in docs/protocol.md" % (name, code)


def test_no_documented_code_is_gone_from_the_code():
    text = read(os.path.join(DOCS, "protocol.md"))
    known = set(_codes(errors).values()) | set(_codes(ws, "CLOSE_").values())
    for heading in ("Close codes", "Error codes"):
        for code in re.findall(r"^\| (\d{4}) \|", section(text, heading), re.M):
            assert int(code) in known, "%s is documented but not in the code" % code


# ---------------------------------------------------------------------------
# links
# ---------------------------------------------------------------------------


def _anchor(heading):
    """GitHub's anchor of a heading."""
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def test_relative_links_lead_somewhere():
    pages = [README] + sorted(glob.glob(os.path.join(DOCS, "*.md")))
    anchors = {}
    for page in pages:
        text = read(page)
        names = {_anchor(h) for h in re.findall(r"^#+ (.*)$", without_code(text), re.M)}
        anchors[page] = names | set(re.findall(r'<a id="([^"]+)"', text))
    for page in pages:
        for link in re.findall(r"\]\(([^)\s]+)\)", without_code(read(page))):
            if re.match(r"[a-z]+:", link):
                continue
            path, _, fragment = link.partition("#")
            target = (
                os.path.normpath(os.path.join(os.path.dirname(page), path))
                if path
                else page
            )
            assert os.path.exists(target), "%s: %s leads nowhere" % (page, link)
            if fragment and target.endswith(".md"):
                assert fragment in anchors[target], "%s: no heading for %s" % (
                    page,
                    link,
                )


# ---------------------------------------------------------------------------
# the README's quick start
# ---------------------------------------------------------------------------


def test_ci_runs_the_readme_commands():
    commands = [
        line.split("#")[0].strip()
        for line in code_block(read(README), "sh").splitlines()
    ]
    assert "scripts/install" in commands and "scripts/test" in commands
    ci = [
        line.strip()
        for line in read(os.path.join(ROOT, ".ci", "run")).splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert ci == ["scripts/install", "scripts/test"]


def pushi_command():
    """The ``pushi`` command as the README runs it: the installed one when
    there is one, else the same entry point through ``python -m pushi``."""
    found = shutil.which("pushi")
    return [found] if found else [sys.executable, "-m", "pushi"]


class ReadmeServer(PushiServer):
    """The server started with the README's own command (``pushi``)."""

    def __init__(self, command):
        PushiServer.__init__(self)
        self.command_line = command

    def command(self):
        return pushi_command() + self.command_line[1:]


@pytest.mark.browser
def test_readme_quick_start_runs_as_written():
    readme = read(README)
    commands = [
        line.split("#")[0].strip().split()
        for line in code_block(readme, "sh").splitlines()
        if line.startswith("pushi")
    ]
    serve, create = commands
    assert serve == ["pushi"] and create[:2] == ["pushi", "app"]
    quick = section(readme, "Quick start")
    python = code_block(quick, "python")
    html = code_block(quick, "html")

    server = ReadmeServer(serve).start()
    try:
        output = subprocess.run(
            pushi_command() + create[1:],
            env=server.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        app = dict(re.findall(r"^(app_id|key|secret):\s+(\S+)$", output, re.M))
        assert set(app) == {"app_id", "key", "secret"}, output

        def fill(snippet):
            # the README's placeholders and default ports, for this server's
            return (
                snippet.replace('app_id="1"', 'app_id="%s"' % app["app_id"])
                .replace("APP_KEY", app["key"])
                .replace("APP_SECRET", app["secret"])
                .replace("127.0.0.1:8080", "127.0.0.1:%d" % server.app_port)
                .replace("127.0.0.1:9090", "127.0.0.1:%d" % server.server_port)
            )

        with chromium({"width": 800, "height": 600}) as browser:
            page = browser.new_page()
            page.set_content(fill(html))
            # the snippet's subscription, as the server sees it
            path = signed_path(app, "GET", "/apps/%s/channels" % app["app_id"])
            wait_until(
                lambda: (
                    server.request("GET", path[1:])[1].get("channels") == {"global": {}}
                ),
                15,
                message="the page subscribed to no channel global",
            )
            exec(compile(fill(python), "README.md", "exec"), {})
            page.wait_for_function(
                "document.body.textContent.indexOf('hello world') >= 0", timeout=15000
            )
    finally:
        server.stop()
