"""What every test file gets without asking: the import path, the run in
parallel, and the live server.

The import path is set here, once: the port (couchdb_dump.py, at the top of
the checkout), what the tests share (tests/helpers.py) and the servers and
tools they use (tests/tools/: couch_stub, compat_replay, pouchdb_server).
"""

import os as _os
import sys as _sys
from pathlib import Path as _Path

import pytest

_TESTS = _Path(__file__).resolve().parent
for _folder in (_TESTS / "tools", _TESTS, _TESTS.parent):   # the last one inserted comes first
    if str(_folder) not in _sys.path:
        _sys.path.insert(0, str(_folder))


# --- running in parallel (pytest-xdist: setup.cfg's addopts say -n auto) ---

@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """Twice the processors: most of a test's time is a port run waiting on
    a server, the 1 s between attempts or a timeout, not using a processor.
    PYTEST_XDIST_AUTO_NUM_WORKERS still decides when it is set."""
    if _os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None   # xdist's own hook reads it
    processors = len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity") else _os.cpu_count()
    return 2 * (processors or 1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """The tests that share a module-scoped fixture run on one worker
    (--dist loadgroup), so that it is made once, not once a worker."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        for name in getattr(info, "names_closure", ()):
            definitions = info.name2fixturedefs.get(name)
            if definitions and definitions[-1].scope == "module":
                item.add_marker(pytest.mark.xdist_group(name))
                break


# --- PouchDB Server (a real CouchDB-compatible server) --------------------

@pytest.fixture(scope="session")
def pouchdb_url():
    """URL (http://127.0.0.1:PORT, no trailing slash) of one in-memory
    PouchDB Server 4.2.0 shared by the whole test session (one a worker
    when the suite runs in parallel: node serves on one processor, so a
    server a worker spreads the load), in "admin party" mode (no
    credentials needed; Basic auth for unknown users gets 401).

    Skips when node/npm are missing, except under CI (env CI set), where
    these tests must run, so it fails instead."""
    import pouchdb_server

    reason = pouchdb_server.node_available()
    if reason:
        if _os.environ.get("CI"):
            pytest.fail(f"CI must run the PouchDB Server tests: {reason}", pytrace=False)
        pytest.skip(reason)
    pouchdb_server.ensure_installed()
    with pouchdb_server.PouchDBServer() as server:
        yield server.url
