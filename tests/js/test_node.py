"""Runs the Node tests of pushi.js (``tests/js/*.test.js``, ``node --test``)
as part of the suite: the client's logic that needs no browser."""

import glob
import os
import shutil
import subprocess

from support import TESTS

JS_TESTS = sorted(glob.glob(os.path.join(TESTS, "js", "*.test.js")))


def test_pushi_js_logic_under_node():
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: the pushi.js tests need Node 20+")
    assert JS_TESTS
    result = subprocess.run(
        [node, "--test", "--test-reporter=tap"] + JS_TESTS,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout, result.stdout[-6000:]
