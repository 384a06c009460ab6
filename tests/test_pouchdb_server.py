"""The test server fixture really starts PouchDB Server 4.2.0."""

import json
import urllib.request


def test_pouchdb_url_answers_get_root_with_welcome_json(pouchdb_url):
    assert pouchdb_url.startswith("http://127.0.0.1:")
    req = urllib.request.Request(pouchdb_url + "/", headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        body = json.loads(resp.read())
    assert body["express-pouchdb"] == "Welcome!"
    assert body["version"] == "4.2.0"
    assert "memory" in body["pouchdb-adapters"]


def test_pouchdb_url_serves_admin_party_database_creation(pouchdb_url):
    req = urllib.request.Request(pouchdb_url + "/fixture_smoke", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201
        assert json.loads(resp.read()) == {"ok": True}
    with urllib.request.urlopen(pouchdb_url + "/_all_dbs", timeout=10) as resp:
        assert "fixture_smoke" in json.loads(resp.read())
