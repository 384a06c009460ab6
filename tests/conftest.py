# --- PouchDB Server (a real CouchDB-compatible server) --------------------
import os as _os
import sys as _sys

import pytest


@pytest.fixture(scope="session")
def pouchdb_url():
    """URL (http://127.0.0.1:PORT, no trailing slash) of one in-memory
    PouchDB Server 4.2.0 shared by the whole test session, in "admin party"
    mode (no credentials needed; Basic auth for unknown users gets 401).

    Skips when node/npm are missing, except under CI (env CI set), where
    these tests must run, so it fails instead."""
    _tests_dir = str(_os.path.dirname(_os.path.abspath(__file__)))
    if _tests_dir not in _sys.path:
        _sys.path.insert(0, _tests_dir)
    import pouchdb_server

    reason = pouchdb_server.node_available()
    if reason:
        if _os.environ.get("CI"):
            pytest.fail(f"CI must run the PouchDB Server tests: {reason}", pytrace=False)
        pytest.skip(reason)
    pouchdb_server.ensure_installed()
    with pouchdb_server.PouchDBServer() as server:
        yield server.url
