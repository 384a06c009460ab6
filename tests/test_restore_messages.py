"""What a restore says when it does not end well: words a person can act on (issue #12).

Each test runs the port against the in-process stub (tests/tools/couch_stub.py)
and reads what it printed: stdout stays the script's, the explanations go
to stderr and to --json's ``error``.
"""

import json

from couch_stub import CouchStub, Fault
from helpers import last_json, make_dump, run_port

UNAUTHORIZED = b'{"error":"unauthorized","reason":"Name or password is incorrect."}\n'


def restore(tmp_path, args, dump, databases=("db",), faults_for=None, before=None):
    """Run a restore of ``dump`` into the stub's ``db``; returns (result, stub)."""
    (tmp_path / "dump.json").write_bytes(dump)
    with CouchStub(databases=databases) as stub:
        if faults_for is not None:
            stub.faults = faults_for(stub)
        for doc in before or ():
            stub.store.databases["db"][doc["_id"]] = doc
        result = run_port(["-r", "-d", "db", "-f", "dump.json", *args], tmp_path, server=stub.port)
    return result, stub


def stderr_lines(result, start):
    return [line for line in result.stderr.decode("utf-8", "replace").splitlines() if line.startswith(start)]


def test_failed_restore_tells_what_this_run_wrote_and_what_the_database_holds(tmp_path):
    # The second chunk is stored every time, but its answer never arrives:
    # the run confirms 1 document while the database holds 3.
    def faults_for(stub):
        def faults(index, method, path):
            if method == "POST" and b'"doc001"' in stub.requests[index].body:
                return Fault("drop_after")
            return None
        return faults
    result, stub = restore(tmp_path, ["-l", "2", "-a", "2", "--json"], make_dump(5)[0], faults_for=faults_for)
    assert result.returncode == 1
    assert sorted(stub.store.databases["db"]) == ["doc000", "doc001", "doc002"]
    assert stderr_lines(result, "couchdb_dump: the restore stopped") == [
        "couchdb_dump: the restore stopped at dump.json.splitaab: this run wrote 1 of the dump's 5 documents;"
        " the database holds 3 documents now (its doc_count, with any it held before)"]
    assert [(r.method, r.path) for r in stub.requests][-1] == ("GET", "/db")
    assert last_json(result.stdout)["documents"] == 1


def test_failed_restore_says_when_the_database_cannot_tell_its_count(tmp_path):
    def faults_for(stub):
        def faults(index, method, path):
            if method == "POST" and b'"doc001"' in stub.requests[index].body or method == "GET" and path == "/db":
                return Fault("status", 500)
            return None
        return faults
    result, stub = restore(tmp_path, ["-l", "2", "-a", "1", "--json"], make_dump(5)[0], faults_for=faults_for)
    assert result.returncode == 1
    assert stderr_lines(result, "couchdb_dump: the restore stopped") == [
        "couchdb_dump: the restore stopped at dump.json.splitaab: this run wrote 1 of the dump's 5 documents;"
        " the database did not say how many documents it holds now"]


def test_wrong_password_on_restore_says_the_server_answered_401(tmp_path):
    refuse = Fault("status", 401, UNAUTHORIZED)
    result, stub = restore(tmp_path, ["-a", "1", "-u", "admin", "-p", "wrong"], make_dump(3)[0],
                           faults_for=lambda stub: lambda index, method, path: refuse)
    assert result.returncode == 1
    stdout = result.stdout.decode().splitlines()
    assert "... WARN: Curl failed to get the list of databases - Continuing" in stdout
    assert stderr_lines(result, "couchdb_dump: the server answered") == [
        "couchdb_dump: the server answered HTTP 401 to the list of databases: it did not accept the user name"
        " and password (-u/-p, or COUCHDB_USER/COUCHDB_PASS)",
        # and of the _bulk_docs that ended the run
        "couchdb_dump: the server answered HTTP 401: the user name and password were not accepted"
        " (-u/-p, or COUCHDB_USER/COUCHDB_PASS)"]
    assert "wrong" not in result.stderr.decode() + result.stdout.decode()


def test_verify_still_runs_and_reports_when_documents_were_refused(tmp_path):
    refusal = Fault("status", 201, b'[{"id":"doc001","error":"forbidden","reason":"no"},{"id":"doc002","ok":true}]\n')

    def faults_for(stub):
        def faults(index, method, path):
            if method == "POST":
                # Store every document but doc001, answer that doc001 was refused.
                payload = json.loads(stub.requests[index].body)
                for doc in payload["docs"]:
                    if doc["_id"] != "doc001":
                        stub.store.databases["db"][doc["_id"]] = doc
                return refusal
            return None
        return faults
    result, stub = restore(tmp_path, ["--verify", "--json"], make_dump(3)[0], faults_for=faults_for)
    assert result.returncode == 1
    stdout = result.stdout.decode().splitlines()
    assert '... ERROR: Document "doc001" was refused: forbidden: no' in stdout
    assert "... ERROR: 1 documents were refused by the server: the restore is incomplete." in stdout
    assert "... INFO: Verifying db against dump.json" in stdout
    assert "... ERROR: Verify: 1 of 3 documents of the dump are missing from db or at another revision:" in stdout
    assert '... ERROR:   missing: "doc001" at revision 1-001' in stdout
    assert last_json(result.stdout)["error"] == (
        "1 documents were refused by the server: the restore is incomplete.; "
        "Verify: 1 of 3 documents of the dump are missing from db or at another revision")


def test_json_error_of_a_failed_verify_is_its_summary_not_the_last_missing_id(tmp_path):
    def faults_for(stub):
        def faults(index, method, path):
            if method == "POST":
                payload = json.loads(stub.requests[index].body)
                for doc in payload["docs"]:
                    if doc["_id"] not in ("doc001", "doc003"):
                        stub.store.databases["db"][doc["_id"]] = doc
                return Fault("status", 201, b"[]\n")
            return None
        return faults
    result, stub = restore(tmp_path, ["--verify", "--json"], make_dump(5)[0], faults_for=faults_for)
    assert result.returncode == 1
    assert result.stdout.decode().splitlines()[-2] == '... ERROR:   missing: "doc003" at revision 1-003'
    summary = last_json(result.stdout)
    assert summary["ok"] is False
    assert summary["error"] == "Verify: 2 of 5 documents of the dump are missing from db or at another revision"


def test_design_document_conflict_gets_a_hint_on_stderr_and_the_scripts_stdout(tmp_path):
    existing = {"_id": "_design/d0", "_rev": "1-other", "views": {}}
    result, stub = restore(tmp_path, ["-a", "2"], make_dump(3, designs=1)[0], before=[existing])
    assert result.returncode == 1
    assert result.stdout.decode().splitlines()[-2:] == [
        "... WARN: CouchDB Reported an error during import - Attempt 1/2 - Retrying...",
        '... ERROR: CouchDB Reported: {"error":"conflict","reason":"Document update conflict."}']
    assert stderr_lines(result, "couchdb_dump: db already holds") == [
        "couchdb_dump: db already holds the design document _design/d0: to restore the dump over what the"
        " database holds, add --resume (it updates what differs) or --recreate (it deletes the database first)"]
    # The script's options: the database is not asked for its count.
    assert [(r.method, r.path) for r in stub.requests] == [
        ("GET", "/_all_dbs"), ("PUT", "/db/_design/d0"), ("PUT", "/db/_design/d0")]
