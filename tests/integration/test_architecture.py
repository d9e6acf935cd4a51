"""The shape of the package: no import cycle among Pushi's modules, and each
store module imports on its own in a fresh interpreter.

The import graph is read from the source with ``ast``: every ``import`` and
``from ... import`` of a ``pushi`` module, at module level or inside a
function (a deferred import only hides a cycle until the function runs).
An edge goes to the module named, not to the packages above it: importing
``pushi.a.b`` runs ``pushi/a/__init__.py`` first, before ``b`` is in
``sys.modules``, so that is no cycle.  For the same reason a module's
import of a package above itself (``import pushi`` for ``__version__``)
loads nothing and is no edge."""

import ast
import os
import subprocess
import sys

import pytest

from support import ROOT

SRC = os.path.join(ROOT, "src")
PACKAGE = os.path.join(SRC, "pushi")


def module_files():
    """``{module name: file}`` for every module of the package."""
    modules = {}
    for folder, _dirs, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, SRC)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def imports_of(module, path, modules):
    """The package's modules that ``module`` (at ``path``) imports."""
    is_package = os.path.basename(path) == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            # "from package import module" imports the module
            names = [
                (
                    origin + "." + alias.name
                    if origin + "." + alias.name in modules
                    else origin
                )
                for alias in node.names
            ]
        else:
            continue
        found.update(name for name in names if name in modules)
    return {
        name for name in found if name != module and not module.startswith(name + ".")
    }


def import_graph():
    modules = module_files()
    return {
        module: imports_of(module, path, modules) for module, path in modules.items()
    }


def find_cycle(graph):
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state = {}
    stack = []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_the_package_imports():
    graph = import_graph()
    assert "pushi.base.store.sqlite" in graph
    assert "pushi.base.store.sqlite_events" in graph["pushi.base.store.sqlite"]
    assert "pushi.base.store.base" in graph["pushi.base.store.sqlite"]


def test_find_cycle_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_pushi_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


STORE_MODULES = sorted(
    module for module in module_files() if module.startswith("pushi.base.store.")
)


@pytest.mark.parametrize("module", STORE_MODULES)
def test_store_module_imports_alone(module):
    if module == "pushi.base.store.mongo":
        pytest.importorskip("pymongo")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [SRC] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    result = subprocess.run(
        [sys.executable, "-c", "import %s" % module],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_each_exception_class_name_is_defined_once():
    """Two unrelated classes of one name (a server error and the client's
    error) make ``except`` clauses and tracebacks ambiguous."""
    defined = {}
    for module, path in module_files().items():
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                defined.setdefault(node.name, []).append(module)
    twice = {name: where for name, where in defined.items() if len(where) > 1}
    assert not twice, twice


def test_the_client_error_is_the_public_one():
    import pushi
    from pushi.api import client

    assert pushi.PushiError is client.PushiError
    assert pushi.api.PushiError is client.PushiError
    error = pushi.PushiError(404, "Not found")
    assert (error.status, error.message, str(error)) == (
        404,
        "Not found",
        "404: Not found",
    )


def test_no_module_edits_sys_path():
    """The package is found the ordinary way (installed, or ``src`` on the
    path); the file launcher re-executes itself as ``-m pushi.base.state``
    rather than put its checkout on ``sys.path`` from inside."""
    edits = []
    for module, path in module_files().items():
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read(), path)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "path"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            ):
                edits.append("%s:%d" % (module, node.lineno))
    assert edits == []
