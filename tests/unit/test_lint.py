"""The code's static checks, run with the unit tests: ruff (``ruff.toml``)
over the whole repository and mypy (``mypy.ini``) over ``src/pushi``, each
failing with its findings."""

import subprocess
import sys

import pytest

from support import ROOT

pytestmark = pytest.mark.unit


def check(*command):
    """Runs ``python -m <command>`` at the repository's root; fails with its
    output unless it exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff():
    """No ruff finding, in every Python file of the repository (no paths:
    ruff finds them, so a new folder is not left out)."""
    check("ruff", "check", "--output-format", "concise")


def test_mypy():
    """No mypy finding in the package, with every function of ``proto/``,
    ``api/`` and the seams' interfaces typed."""
    check("mypy")
