"""Shared fixtures. PostgreSQL tests run when EBT_SCALE_TEST_PG holds a server URL (scripts/test.sh and
CI start one); otherwise they are skipped with that reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PG_URL = os.environ.get("EBT_SCALE_TEST_PG")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    # Never touch the user's database or cache from a test.
    monkeypatch.delenv("EBT_SCALE_DB", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)  # piped CLI output: the wide tables, whatever the CI terminal
    monkeypatch.setenv("EBT_SCALE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))


@pytest.fixture(scope="session", autouse=True)
def _no_lock_files_left(tmp_path_factory):
    """Remove, at the end of the session, the two lock files each SQLite database leaves in the temp directory
    (``/tmp/ebt-scale-<key>.lock`` and ``.writer.lock``, db/engine.py ``lock_files``): every test database lives
    under the session's temp folder, and nothing opens it once the session is over. A database a test deleted
    (tests/test_db_vanish.py) cannot be named here and keeps its pair."""
    yield
    from ebt_scaling.db.engine import lock_files

    for folder, _, files in os.walk(tmp_path_factory.getbasetemp().resolve()):  # symlinks not followed
        for name in files:
            for lock in lock_files(Path(folder) / name):
                try:
                    os.unlink(lock)
                except FileNotFoundError:
                    pass


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """A corpus/tokenizer cache shared by the whole session (corpus preparation is slow)."""
    return tmp_path_factory.getbasetemp() / "cache"


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (tiny ops on a shared 2-core machine are faster and less noisy
    single-threaded, and summation order stays fixed); modules opt in with ``pytestmark``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pg_url_or_skip() -> str:
    if not PG_URL:
        pytest.skip("no PostgreSQL server: set EBT_SCALE_TEST_PG (scripts/test.sh starts one)")
    return PG_URL
