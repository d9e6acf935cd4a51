"""Pushi as a user installs it: a source distribution built from this tree,
a wheel built from that, installed into a virtualenv (Pushi's dependencies
come from the site-packages of the interpreter running the tests, itself
maybe in a virtualenv), then run from a folder that is not the source
tree."""

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
import urllib.request
import zipfile

import pytest

from support import ROOT, PushiServer, wait_until

IGNORED = shutil.ignore_patterns(
    ".git",
    "data",
    "artifacts",
    "node_modules",
    ".bench",
    "build",
    "dist",
    "__pycache__",
    "*.egg-info",
)


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The ``bin`` folder of a virtualenv with Pushi installed from a wheel
    built from the sdist."""
    folder = tmp_path_factory.mktemp("package")
    tree = folder / "tree"
    shutil.copytree(ROOT, tree, ignore=IGNORED, symlinks=True)
    run([sys.executable, "setup.py", "-q", "sdist", "-d", str(folder)], cwd=tree)
    (sdist,) = folder.glob("pushi-*.tar.gz")
    with tarfile.open(sdist) as archive:
        archive.extractall(folder / "unpacked")
    (unpacked,) = (folder / "unpacked").iterdir()
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps"]
        + ["-w", str(folder / "wheels"), str(unpacked)]
    )
    (wheel,) = (folder / "wheels").glob("pushi-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    for name in (
        "pushi/app/static/pushi.js",
        "pushi/app/static/example.html",
        "pushi/app/static/console/index.html",
        "pushi/app/static/console/console.js",
        "pushi/app/static/console/console.css",
    ):
        assert name in names, names
    venv = folder / "venv"
    # not --system-site-packages: that is the base interpreter's, not the
    # packages of a virtualenv the tests may run in.  A path in a .pth file
    # adds the folder only (its own .pth files, such as this tree's editable
    # install, are not read): the dependencies, not this source tree
    run([sys.executable, "-m", "venv", str(venv)])
    bin_dir = venv / "bin"
    purelib = run(
        [
            str(bin_dir / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ]
    ).strip()
    outer = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    outer.update(site.getsitepackages())
    with open(os.path.join(purelib, "outer-packages.pth"), "w") as file:
        file.write("\n".join(sorted(path for path in outer if os.path.isdir(path))))
    run([str(bin_dir / "pip"), "install", "-q", "--no-deps", str(wheel)])
    return bin_dir


def test_the_installed_pushi_runs_outside_the_source_tree(installed, tmp_path):
    instance = PushiServer(data_dir=str(tmp_path))
    env = dict(instance.env())
    env.pop("PYTHONPATH")
    # the default data dir, as a user without PUSHI_DATA_DIR has it: the
    # command run in one folder, the server in another, share it
    home = tmp_path / "home"
    env.pop("PUSHI_DATA_DIR")
    env.update(HOME=str(home), XDG_DATA_HOME="")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    created = json.loads(
        run(
            [str(installed / "pushi"), "app", "create", "x", "--json"],
            env=env,
            cwd=str(elsewhere),
        )
    )
    assert created["app_id"] == "1"
    assert (home / ".local" / "share" / "pushi" / "pushi.sqlite3").is_file()
    with open(tmp_path / "pushi.log", "w+") as log:
        process = subprocess.Popen(
            [str(installed / "pushi")],
            env=env,
            cwd=str(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until_serving(instance, process, log)
            for path in ("static/pushi.js", "static/example.html", "console"):
                with urllib.request.urlopen(
                    instance.base_url + path, timeout=10
                ) as page:
                    assert page.status == 200 and page.read(), path
            instance.connect(created).close()
            # the package came from the venv, not from the source tree
            location = run(
                [
                    str(installed / "python"),
                    "-c",
                    "import pushi; print(pushi.__file__)",
                ],
                env=env,
                cwd=str(tmp_path),
            )
            assert not location.startswith(ROOT), location
        finally:
            process.terminate()
            assert process.wait(15) == 0


def wait_until_serving(instance, process, log, timeout=30):

    def answer():
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError("the installed pushi exited:\n" + log.read())
        try:
            return instance.request("GET", "health")
        except OSError:
            return None

    return wait_until(answer, timeout, 0.2, "the installed pushi did not start")
