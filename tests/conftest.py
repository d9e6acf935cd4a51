"""Shared pytest set-up: makes ``src`` (the ``pushi`` package) and ``tests``
(helpers such as ``mongo_emulator``) importable, plus the store fixtures."""

import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
for path in (os.path.join(TESTS_DIR, "..", "src"), TESTS_DIR):
    path = os.path.normpath(path)
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(scope="session")
def store_mongo_emulator():
    """One MongoDB wire-protocol emulator (mockupdb + mongomock, NOT MongoDB)
    on 127.0.0.1 for the whole session; ``.url`` is its connection string.
    Tests keep apart by using a database name of their own."""
    from mongo_emulator import MongoEmulator

    with MongoEmulator() as emulator:
        yield emulator
