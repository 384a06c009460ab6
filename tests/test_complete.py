"""Complete backups (--complete, issue #13): every leaf revision, deleted and
conflicting ones included, each with its `_revisions`, and `_security`.

The stub server (tests/tools/couch_stub.py) serves the paging, the `_bulk_get`
refusal and the faults; PouchDB Server 4.2.0 the real round trip.
"""

import gzip
import json
import os
import threading
import time
import urllib.parse
import urllib.request
import uuid

import pytest
from hypothesis import given, settings, strategies as st

import couchdb_dump
from couch_stub import CouchStub, Fault
from helpers import PROGRAM, clean_environment, http, last_json, run_port, says, stub_with

SECURITY = {"admins": {"names": ["boss"], "roles": ["ops"]}, "members": {"names": ["ann", "bob"], "roles": ["staff"]}}


# -- helpers ------------------------------------------------------------------

def revisions(rev, *ancestors):
    """`_revisions` of `rev` over `ancestors` (hashes, newest first)."""
    number, _, digest = rev.partition("-")
    return {"start": int(number), "ids": [digest, *ancestors]}


def leaf(doc_id, rev, *ancestors, **body):
    doc = {"_id": doc_id, "_rev": rev, "_revisions": revisions(rev, *ancestors)}
    doc.update(body)
    return doc


# The stub's database: conflicts, tombstones, a design document, attachments.
STUB_LEAVES = [
    leaf("three", "2-b", "a", v="b"), leaf("three", "2-c", "a", v="c"), leaf("three", "3-d", "x", "a", v="d"),
    leaf("gone", "3-c", "b", "a", _deleted=True),
    leaf("gone_conflict", "3-d", "b", "a", _deleted=True), leaf("gone_conflict", "3-e", "c", "a", _deleted=True),
    leaf("_design/app", "3-z", "y", "x", views={"all": {"map": "function (doc) { emit(doc._id, 1); }"}}),
    leaf("att", "2-b", "a", _attachments={"n.txt": {"content_type": "text/plain", "data": "aGVsbG8="}}),
    leaf("att", "2-c", "a", v=1.10),
    leaf("caf\u00e9 \"q\"", "1-a", text="\u00e9t\u00e9 \\ \U0001F600"),
]


def stub_with_leaves(count=40, **options):
    """A stub whose database "db" holds STUB_LEAVES, ``count`` plain documents and SECURITY."""
    stub = stub_with({}, **options)
    stub.put_leaves("db", STUB_LEAVES)
    stub.put_leaves("db", [{"_id": "doc%05d" % i, "_rev": "1-%032x" % i, "n": i} for i in range(count)])
    stub.store.security["db"] = SECURITY
    return stub


def backup_from(stub, cwd, *extra, name="complete.json"):
    with stub:
        result = run_port(["-b", "--complete", "-d", "db", "-f", name, *extra], cwd, server=stub.port)
    return result


def dump_lines(data):
    """The documents of a dump, one a line, parsed."""
    lines = data.decode("utf-8").split("\n")
    assert lines[-1] == "" and lines[-2] == "]}"
    return [json.loads(line.rstrip(",")) for line in lines[1:-2] if line]


def header(data):
    return json.loads(data.split(b"\n", 1)[0] + b"]}")


def winner(leaves):
    """CouchDB's winning revision: not deleted first, then the highest revision."""
    def order(doc):
        number, _, digest = doc["_rev"].partition("-")
        return (not doc.get("_deleted"), int(number), digest)
    return max(leaves, key=order)


# -- the file -----------------------------------------------------------------

def test_complete_backup_writes_every_leaf_with_its_history_and_security_in_the_header(tmp_path):
    result = backup_from(stub_with_leaves(count=5), tmp_path, "--json")
    assert result.returncode == 0, says(result)
    data = (tmp_path / "complete.json").read_bytes()
    first = data.split(b"\n", 1)[0]
    # _security first, then where the database stood (tests/test_incremental.py), then the documents
    assert first == b'{"new_edits":false,"_security":' + json.dumps(SECURITY, separators=(",", ":")).encode() \
        + b',"db":"db","instance_start_time":"1700000001","seq":"%d-g1AAAAstub","docs":[' % (len(STUB_LEAVES) + 5)
    docs = dump_lines(data)
    got = {(d["_id"], d["_rev"]) for d in docs}
    expected = {(d["_id"], d["_rev"]) for d in STUB_LEAVES} | {("doc%05d" % i, "1-%032x" % i) for i in range(5)}
    assert got == expected and len(docs) == len(expected)
    for doc in docs:
        assert doc["_revisions"]["start"] == int(doc["_rev"].split("-")[0])
        assert doc["_revisions"]["ids"][0] == doc["_rev"].split("-")[1]
    # Every document's leaves together, sorted by revision.
    ids = [d["_id"] for d in docs]
    assert all(ids.index(i) + ids.count(i) - 1 == len(ids) - 1 - ids[::-1].index(i) for i in set(ids))
    assert [d["_rev"] for d in docs if d["_id"] == "three"] == ["2-b", "2-c", "3-d"]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["ok"] is True
    assert (summary["leaves"], summary["documents"], summary["deleted"], summary["conflicted"],
            summary["design_documents"]) == (len(expected), 5 + 4, 2, 2, 1)
    assert summary["bytes"] == len(data)


def test_complete_backup_keeps_the_servers_bytes_of_each_revision(tmp_path):
    result = backup_from(stub_with_leaves(count=0), tmp_path)
    assert result.returncode == 0, says(result)
    data = (tmp_path / "complete.json").read_bytes()
    assert b'"v":1.1,' not in data or b'"v":1.10' in data
    assert '"text":"\u00e9t\u00e9 \\\\ \U0001F600"'.encode("utf-8") in data


def test_changes_read_in_pages_of_three_give_the_same_file_as_one_page(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "paged").mkdir()
    one = backup_from(stub_with_leaves(count=700), tmp_path / "one")
    paged_stub = stub_with_leaves(count=700, changes_page=3)
    paged = backup_from(paged_stub, tmp_path / "paged")
    assert one.returncode == 0 and paged.returncode == 0, says(one) + says(paged)
    changes = [r for r in paged_stub.requests if r.path.startswith("/db/_changes")]
    assert len(changes) > 200
    bulk = [r for r in paged_stub.requests if r.path.startswith("/db/_bulk_get")]
    assert all(len(json.loads(r.body)["docs"]) <= 503 for r in bulk) and len(bulk) >= 2
    assert (tmp_path / "one" / "complete.json").read_bytes() == (tmp_path / "paged" / "complete.json").read_bytes()


def test_large_revisions_are_read_in_smaller_batches_with_the_same_file(tmp_path):
    def database():
        stub = stub_with_leaves(count=2000)
        stub.put_leaves("db", [leaf("doc%05d" % i, "2-%032x" % i, "%032x" % i, n=i, pad="x" * 2000)
                               for i in range(2000)])
        return stub
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert backup_from(database(), tmp_path / "a").returncode == 0
    # The port aims at 16 MB a reply; 2 KB revisions would need 8,000 a batch
    # to reach it: a copy of the port aims at 64 KB instead.
    copy = tmp_path / "couchdb_dump.py"
    copy.write_text(PROGRAM.read_text(encoding="utf-8").replace("BATCH_BYTES = 16 << 20", "BATCH_BYTES = 64 << 10"),
                    encoding="utf-8")
    stub = database()
    with stub:
        result = run_port(["-b", "--complete", "-d", "db", "-f", "complete.json"], tmp_path / "b", server=stub.port,
                          program=copy)
    assert result.returncode == 0, says(result)
    sizes = [len(json.loads(r.body)["docs"]) for r in stub.requests if r.path.startswith("/db/_bulk_get")]
    # Up to three batches go out before the first answer tells the size of a revision.
    assert sizes.count(500) <= 3 and 0 < max(size for size in sizes if size != 500) <= 40 and sum(sizes) == 2010
    assert (tmp_path / "a" / "complete.json").read_bytes() == (tmp_path / "b" / "complete.json").read_bytes()


def test_bulk_get_answered_out_of_order_gives_the_same_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert backup_from(stub_with_leaves(), tmp_path / "a").returncode == 0
    assert backup_from(stub_with_leaves(bulk_get_reversed=True), tmp_path / "b").returncode == 0
    assert (tmp_path / "a" / "complete.json").read_bytes() == (tmp_path / "b" / "complete.json").read_bytes()


def test_two_bulk_get_batches_are_read_at_once_and_written_in_order(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    on_their_way = [0, 0]   # now, the most
    lock = threading.Lock()

    def slow_bulk_get(index, method, path):
        if path.startswith("/db/_bulk_get"):
            with lock:
                on_their_way[0] += 1
                on_their_way[1] = max(on_their_way)
            time.sleep(0.3)
            with lock:
                on_their_way[0] -= 1
        return None
    slow = backup_from(stub_with_leaves(count=2000, faults=slow_bulk_get), tmp_path / "a")
    assert slow.returncode == 0, says(slow)
    assert on_their_way[1] == 2
    assert backup_from(stub_with_leaves(count=2000, bulk_get_reversed=True), tmp_path / "b").returncode == 0
    assert (tmp_path / "a" / "complete.json").read_bytes() == (tmp_path / "b" / "complete.json").read_bytes()


@pytest.mark.parametrize("status", [404, 405])
def test_refused_bulk_get_falls_back_to_one_request_a_document_with_the_same_file(tmp_path, status):
    (tmp_path / "bulk").mkdir()
    (tmp_path / "single").mkdir()
    assert backup_from(stub_with_leaves(), tmp_path / "bulk").returncode == 0
    stub = stub_with_leaves(bulk_get_status=status)
    result = backup_from(stub, tmp_path / "single")
    assert result.returncode == 0, says(result)
    assert (tmp_path / "bulk" / "complete.json").read_bytes() == (tmp_path / "single" / "complete.json").read_bytes()
    notices = [line for line in result.stdout.decode().splitlines() if "_bulk_get" in line]
    assert len(notices) == 1 and notices[0].startswith("... WARN: The server has no _bulk_get (HTTP %d)" % status)
    assert sum(r.path.startswith("/db/_bulk_get") for r in stub.requests) == 1
    assert sum("open_revs=all" in r.path for r in stub.requests) == len({d["_id"] for d in STUB_LEAVES}) + 40
    assert any(r.path.startswith("/db/_design/app?open_revs=all") for r in stub.requests)


def only(kind, times=None):
    """A `faults` callable: requests whose path starts with `kind[0]` get the
    fault `kind[1]`, the first `times` of them (None: all)."""
    prefix, fault = kind
    seen = [0]
    lock = threading.Lock()

    def faults(index, method, path):
        if not path.startswith(prefix):
            return None
        with lock:
            seen[0] += 1
            number = seen[0]
        return fault if times is None or number <= times else None
    return faults


CUT_PAGE = ("/db/_changes", Fault("cut", body=b'{"results":[\n{"seq":"1-g1AAAAstub","id":"doc0'))
FAILED_BULK_GET = ("/db/_bulk_get", Fault("status", status=500))
DROPPED_BULK_GET = ("/db/_bulk_get", Fault("drop"))


@pytest.mark.parametrize("fault", [CUT_PAGE, FAILED_BULK_GET, DROPPED_BULK_GET], ids=["cut-page", "bulk-500",
                                                                                      "bulk-drop"])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_a_fault_that_lasts_fails_the_backup_after_the_attempts_and_leaves_no_file(tmp_path, fault, compress):
    stub = stub_with_leaves(faults=only(fault))
    result = backup_from(stub, tmp_path, *(["-z"] if compress else []))
    assert result.returncode == 1, says(result)
    assert os.listdir(tmp_path) == []
    out = result.stdout.decode()
    assert "... ERROR: Backup failed, no file written: " in out
    assert out.count("... WARN: ") == 2 and "Attempt 2/3 - Retrying..." in out
    assert sum(r.path.startswith(fault[0]) for r in stub.requests) == 3


@pytest.mark.parametrize("fault", [CUT_PAGE, FAILED_BULK_GET, DROPPED_BULK_GET], ids=["cut-page", "bulk-500",
                                                                                      "bulk-drop"])
def test_a_fault_that_happens_once_is_retried_and_gives_the_same_file(tmp_path, fault):
    (tmp_path / "clean").mkdir()
    (tmp_path / "fault").mkdir()
    assert backup_from(stub_with_leaves(), tmp_path / "clean").returncode == 0
    result = backup_from(stub_with_leaves(faults=only(fault, times=1)), tmp_path / "fault")
    assert result.returncode == 0, says(result)
    assert "Attempt 1/3 - Retrying..." in result.stdout.decode()
    assert (tmp_path / "clean" / "complete.json").read_bytes() == (tmp_path / "fault" / "complete.json").read_bytes()


def test_a_server_pushing_back_is_waited_out_without_using_an_attempt(tmp_path):
    (tmp_path / "clean").mkdir()
    (tmp_path / "busy").mkdir()
    assert backup_from(stub_with_leaves(), tmp_path / "clean").returncode == 0
    busy = ("/db/_bulk_get", Fault("status", status=429, headers={"Retry-After": "0"},
                                   body=b'{"error":"too_many_requests","reason":"slow down"}\n'))
    stub = stub_with_leaves(faults=only(busy, times=4))
    result = backup_from(stub, tmp_path / "busy")
    assert result.returncode == 0, says(result)
    assert "WARN" not in result.stdout.decode()
    assert sum(r.path.startswith("/db/_bulk_get") for r in stub.requests) == 5
    assert (tmp_path / "clean" / "complete.json").read_bytes() == (tmp_path / "busy" / "complete.json").read_bytes()


def test_a_failed_batch_ends_the_backup_without_waiting_for_the_retries_of_the_other(tmp_path):
    """Two _bulk_get batches on their way: the first fails for good, the
    second hangs.  The backup ends after the hanging read's first timeout,
    not after all its attempts (which kept the process alive, printing)."""
    def faults(index, method, path):
        if path.startswith("/db/_bulk_get"):
            # The first batch in file order (it holds "three") fails; the next hangs.
            if b'"three"' in stub.requests[index].body:
                return Fault("status", 500, b'{"error":"unknown_error","reason":"injected"}\n')
            return Fault("delay", seconds=30)
        return None
    stub = stub_with_leaves(count=2000)
    stub.faults = faults
    started = time.monotonic()
    result = backup_from(stub, tmp_path, "-a", "3", "--timeout", "3")
    elapsed = time.monotonic() - started
    assert result.returncode == 1, says(result)
    assert os.listdir(tmp_path) == []
    # attempts of the failing batch: 2 s of pauses; the hanging read: one 3 s timeout
    assert elapsed < 10, (elapsed, says(result))   # it was 13 s: 3 attempts of 3 s, 2 pauses


def test_unreadable_security_object_fails_the_backup_with_no_file(tmp_path):
    refuse = ("/db/_security", Fault("status", status=403,
                                     body=b'{"error":"forbidden","reason":"You are not a db or server admin."}\n'))
    result = backup_from(stub_with_leaves(faults=only(refuse)), tmp_path)
    assert result.returncode == 1, says(result)
    assert os.listdir(tmp_path) == []
    assert ('... ERROR: Backup failed, no file written: Reading the _security object failed after 3 attempts'
            ' (HTTP 403, CouchDB reported: {"error":"forbidden"') in result.stdout.decode()


def test_gzip_and_standard_output_carry_the_same_bytes_as_the_plain_file(tmp_path):
    assert backup_from(stub_with_leaves(), tmp_path).returncode == 0
    plain = (tmp_path / "complete.json").read_bytes()
    assert backup_from(stub_with_leaves(), tmp_path, "-z", name="z.json").returncode == 0
    assert gzip.decompress((tmp_path / "z.json.gz").read_bytes()) == plain
    piped = backup_from(stub_with_leaves(), tmp_path, name="-")
    assert piped.returncode == 0 and piped.stdout == plain


def test_timestamped_name_and_an_existing_file_work_as_in_a_normal_backup(tmp_path):
    result = backup_from(stub_with_leaves(), tmp_path, "-T", "-z")
    assert result.returncode == 0, says(result)
    names = os.listdir(tmp_path)
    assert len(names) == 1 and names[0].startswith("complete-") and names[0].endswith(".json.gz")
    assert gzip.decompress((tmp_path / names[0]).read_bytes()).startswith(b'{"new_edits":false,"_security":')
    (tmp_path / "complete.json").write_bytes(b"keep me")
    again = backup_from(stub_with_leaves(), tmp_path)
    assert again.returncode == 1
    assert "... ERROR: Output file complete.json already exists." in again.stdout.decode()
    assert (tmp_path / "complete.json").read_bytes() == b"keep me"


def test_winners_of_a_complete_backup_are_the_documents_of_a_default_backup(tmp_path):
    stub = stub_with_leaves()
    with stub:
        default = run_port(["-b", "-d", "db", "-f", "default.json"], tmp_path, server=stub.port)
        complete = run_port(["-b", "--complete", "-d", "db", "-f", "complete.json"], tmp_path, server=stub.port)
    assert default.returncode == 0 and complete.returncode == 0, says(default) + says(complete)
    plain = {d["_id"]: d for d in dump_lines((tmp_path / "default.json").read_bytes())}
    by_id = {}
    for doc in dump_lines((tmp_path / "complete.json").read_bytes()):
        by_id.setdefault(doc["_id"], []).append(doc)
    winners = {}
    for doc_id, leaves in by_id.items():
        best = winner(leaves)
        if not best.get("_deleted"):
            winners[doc_id] = {k: v for k, v in best.items() if k != "_revisions"}
    assert winners == plain


def test_documents_changed_while_the_feed_is_read_come_with_their_newest_leaves(tmp_path):
    class Changing(CouchStub):
        def _changes(self, db, query):
            answer = super()._changes(db, query)
            if "since=0" not in query and not self.store.leaves[db]["doc00001"].get("2-dead"):
                # after the second page: one listed document deleted, another updated
                old = self.leaves_of(db, "doc00001")["1-%032x" % 1]
                self.put_leaves(db, [leaf("doc00001", "2-dead", old["_rev"].split("-")[1], _deleted=True)])
                old = self.leaves_of(db, "doc00002")["1-%032x" % 2]
                self.put_leaves(db, [leaf("doc00002", "2-new", old["_rev"].split("-")[1], n="new")])
            return answer
    stub = Changing(databases=["db"], changes_page=5)
    stub.put_leaves("db", STUB_LEAVES)
    stub.put_leaves("db", [leaf("doc%05d" % i, "1-%032x" % i, n=i) for i in range(40)])
    result = backup_from(stub, tmp_path, "--json")
    assert result.returncode == 0, says(result)
    assert "WARN" not in result.stdout.decode()
    docs = dump_lines((tmp_path / "complete.json").read_bytes())
    assert [d["_rev"] for d in docs if d["_id"] == "doc00001"] == ["2-dead"]
    assert [d["_rev"] for d in docs if d["_id"] == "doc00002"] == ["2-new"]
    assert docs[-2:] == [stub.leaves_of("db", "doc00001")["2-dead"], stub.leaves_of("db", "doc00002")["2-new"]]


def test_a_document_changed_after_the_last_page_and_compacted_comes_with_its_newest_leaf(tmp_path):
    class Compacting(CouchStub):
        def _bulk_get(self, db, body):
            # after the feed's last page: "three" 3-d gets a child; 3-d is no leaf any more
            if "4-e" not in self.leaves_of(db, "three"):
                self.put_leaves(db, [leaf("three", "4-e", "d", "x", "a", v="e")])
            return super()._bulk_get(db, body)
    stub = Compacting(databases=["db"])
    stub.put_leaves("db", STUB_LEAVES)
    result = backup_from(stub, tmp_path)
    assert result.returncode == 0, says(result)
    assert "purged" not in result.stdout.decode(), says(result)
    docs = dump_lines((tmp_path / "complete.json").read_bytes())
    assert sorted(d["_rev"] for d in docs if d["_id"] == "three") == ["2-b", "2-c", "4-e"]
    assert [d for d in docs if d["_rev"] == "4-e"] == [stub.leaves_of("db", "three")["4-e"]]


def test_a_document_purged_between_its_listing_and_its_reading_is_left_out_with_a_warning(tmp_path):
    class Purging(CouchStub):
        def _bulk_get(self, db, body):
            # purged between the listing and the read
            self.store.leaves["db"].pop("three", None)
            self.store.databases["db"].pop("three", None)
            return super()._bulk_get(db, body)
    stub = Purging(databases=["db"])
    stub.put_leaves("db", STUB_LEAVES)
    result = backup_from(stub, tmp_path)
    assert result.returncode == 0, says(result)
    docs = dump_lines((tmp_path / "complete.json").read_bytes())
    assert "three" not in {d["_id"] for d in docs}
    assert len(docs) == len(STUB_LEAVES) - 3
    assert '... WARN: 1 documents were purged while the backup ran and are not in it: "three"' \
        in result.stdout.decode()


# -- restoring a complete backup (stub) ----------------------------------------

def complete_file(tmp_path, **options):
    """A complete backup of the stub's database; returns (its path, the source stub)."""
    source = stub_with_leaves(**options)
    result = backup_from(source, tmp_path)
    assert result.returncode == 0, says(result)
    return tmp_path / "complete.json", source


def restore_into(tmp_path, path, *extra, stub=None, databases=()):
    stub = stub or CouchStub(databases=list(databases))
    with stub:
        result = run_port(["-r", "-d", "copy", "-f", str(path), *extra], tmp_path, server=stub.port)
    return result, stub


def leaves_of(stub, db):
    return {doc_id: stub.leaves_of(db, doc_id) for _, doc_id in stub._feed(db)}


def test_complete_restore_sends_every_revision_to_bulk_docs_and_puts_security_after_creating(tmp_path):
    path, source = complete_file(tmp_path)
    result, stub = restore_into(tmp_path, path, "-c", "--json")
    assert result.returncode == 0, says(result)
    sent = [(r.method, r.path.split("?")[0]) for r in stub.requests]
    assert sent == [("GET", "/_all_dbs"), ("PUT", "/copy"), ("PUT", "/copy/_security"), ("POST", "/copy/_bulk_docs")]
    body = json.loads(stub.requests[-1].body)
    assert body["new_edits"] is False and body["_security"] == SECURITY
    assert {(d["_id"], d["_rev"]) for d in body["docs"]} >= {("_design/app", "3-z"), ("gone", "3-c")}
    assert leaves_of(stub, "copy") == leaves_of(source, "db")
    assert stub.store.security["copy"] == SECURITY
    out = result.stdout.decode()
    assert "Inserting Design documents" not in out
    assert "... INFO: Complete backup: every revision goes to _bulk_docs as it is, 1 design documents included." \
        in out
    summary = json.loads(out.splitlines()[-1])
    assert (summary["complete"], summary["documents"], summary["design_documents"]) == (True, len(STUB_LEAVES) + 40,
                                                                                         1)


def test_complete_restore_in_chunks_keeps_every_revision(tmp_path):
    path, source = complete_file(tmp_path)
    result, stub = restore_into(tmp_path, path, "-c", "-l", "7", "--jobs", "2")
    assert result.returncode == 0, says(result)
    assert sum(r.path == "/copy/_bulk_docs" for r in stub.requests) > 5
    assert leaves_of(stub, "copy") == leaves_of(source, "db")


def test_no_security_leaves_the_databases_security_alone(tmp_path):
    path, _ = complete_file(tmp_path)
    result, stub = restore_into(tmp_path, path, "-c", "--no-security")
    assert result.returncode == 0, says(result)
    assert not [r for r in stub.requests if "_security" in r.path]
    assert "... INFO: The _security object of copy is left as it is (--no-security)." in result.stdout.decode()


def test_empty_security_object_is_not_put(tmp_path):
    source = stub_with_leaves()
    source.store.security["db"] = {}
    assert backup_from(source, tmp_path).returncode == 0
    assert (tmp_path / "complete.json").read_bytes().startswith(b'{"new_edits":false,"_security":{},"db":')
    result, stub = restore_into(tmp_path, tmp_path / "complete.json", "-c", "--verify")
    assert result.returncode == 0, says(result)
    assert not [r for r in stub.requests if "_security" in r.path]
    assert "left as it is (the dump's is empty)" in result.stdout.decode()


def test_a_line_with_revisions_makes_a_complete_backup_without_security_in_its_header(tmp_path):
    path, source = complete_file(tmp_path)
    data = path.read_bytes()
    plain_header = b'{"new_edits":false,"docs":[' + data[data.index(b"\n"):]
    path.write_bytes(plain_header)
    result, stub = restore_into(tmp_path, path, "-c")
    assert result.returncode == 0, says(result)
    assert not [r for r in stub.requests if r.method == "PUT" and "_design" in r.path]
    assert not [r for r in stub.requests if "_security" in r.path]
    assert leaves_of(stub, "copy") == leaves_of(source, "db")


def test_verify_of_a_complete_restore_checks_every_revision_with_revs_diff(tmp_path):
    path, _ = complete_file(tmp_path)
    result, stub = restore_into(tmp_path, path, "-c", "--verify")
    assert result.returncode == 0, says(result)
    diffs = [json.loads(r.body) for r in stub.requests if r.path == "/copy/_revs_diff"]
    assert sum(len(revs) for diff in diffs for revs in diff.values()) == len(STUB_LEAVES) + 40
    assert ("GET", "/copy/_security") == (stub.requests[-1].method, stub.requests[-1].path)
    assert "... INFO: Verified: all %d revisions of the dump are in copy, and its _security object." \
        % (len(STUB_LEAVES) + 40) in result.stdout.decode()


def test_verify_names_a_lost_revision_and_a_security_object_that_did_not_stick(tmp_path):
    path, _ = complete_file(tmp_path)

    class Forgetful(CouchStub):
        def _store_leaf(self, db, doc):
            if (doc["_id"], doc["_rev"]) != ("three", "2-c"):
                super()._store_leaf(db, doc)
    ignore = only(("/copy/_security", None))

    def faults(index, method, path):
        if method == "PUT" and path == "/copy/_security":
            return Fault("status", status=200, body=b'{"ok":true}\n')
        return ignore(index, method, path)
    result, _ = restore_into(tmp_path, path, "-c", "--verify", stub=Forgetful(faults=faults))
    assert result.returncode == 1, says(result)
    out = result.stdout.decode()
    assert '... ERROR:   missing: "three" at revision 2-c' in out
    assert "... ERROR: Verify: 1 of %d revisions of the dump are missing from copy:" % (len(STUB_LEAVES) + 40) in out
    assert "... ERROR: Verify: the _security object of copy is not the dump's: {}" in out


@pytest.mark.parametrize("body", [b"<html>proxy</html>", b'["not","an","object"]'])
def test_verify_given_a_security_answer_that_is_no_object_retries_then_fails_cleanly(body, tmp_path):
    path, _ = complete_file(tmp_path)

    def faults(index, method, path):
        if method == "GET" and path == "/copy/_security":
            return Fault("status", status=200, body=body)
        return None
    result, _ = restore_into(tmp_path, path, "-c", "--verify", "-a", "2", stub=CouchStub(faults=faults))
    assert result.returncode == 1, says(result)
    out = result.stdout.decode()
    assert "Unexpected failure" not in out and b"Traceback" not in result.stderr, says(result)
    assert "... WARN: CouchDB Reported an error reading the _security object of copy - Attempt 1/2" in out
    assert "... ERROR: CouchDB Reported: HTTP 200" in out, says(result)


def test_verify_takes_a_revs_diff_entry_that_is_no_object_as_nothing_missing_there(tmp_path):
    path, _ = complete_file(tmp_path)

    def faults(index, method, path):
        if method == "POST" and path == "/copy/_revs_diff":
            return Fault("status", status=200, body=b'{"one":"odd","two":{"missing":"2-x"}}\n')
        return None
    result, _ = restore_into(tmp_path, path, "-c", "--verify", stub=CouchStub(faults=faults))
    assert b"Unexpected failure" not in result.stdout and b"Traceback" not in result.stderr, says(result)
    assert result.returncode == 0, says(result)


def test_security_refused_stops_before_any_document_and_hints_at_no_security(tmp_path):
    path, _ = complete_file(tmp_path)
    refuse = only(("/copy/_security", Fault("status", status=403, body=(
        b'{"error":"forbidden","reason":"You are not a db or server admin."}\n'))))
    result, stub = restore_into(tmp_path, path, stub=CouchStub(databases=["copy"], faults=refuse))
    assert result.returncode == 1, says(result)
    out = result.stdout.decode()
    assert '... ERROR: CouchDB Reported: {"error":"forbidden"' in out and "--no-security" in out
    assert out.count("... WARN: CouchDB Reported an error restoring _security - Attempt") == 2
    assert not [r for r in stub.requests if "_bulk_docs" in r.path]


def test_complete_file_passes_the_default_restore_path_of_an_older_dump(tmp_path, monkeypatch):
    """The path a plain dump takes (design documents PUT, the rest in
    _bulk_docs) loads a complete file too: what an older port and the bash
    script do with it."""
    import io
    path, _ = complete_file(tmp_path)
    monkeypatch.setattr(couchdb_dump, "complete_header_security", lambda header: None)
    monkeypatch.setattr(couchdb_dump, "has_revisions", lambda line: False)
    with CouchStub(databases=["copy"]) as stub:
        out = io.BytesIO()
        code = couchdb_dump.main(["-r", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "copy", "-f", str(path),
                                  "-q", "--no-progress"], clean_environment(), out)
    assert code == 0, out.getvalue()
    assert [r.path for r in stub.requests if r.method == "PUT"] == ["/copy/_design/app"]
    assert "_security" not in {r.path for r in stub.requests}


# -- PouchDB Server -----------------------------------------------------------

def post_file(url, data):
    """POST a file's bytes as they are, as `curl -X POST -d @file` does; the parsed reply."""
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as reply:
        return json.loads(reply.read())


def unique(name):
    return "complete_%s_%s" % (name, uuid.uuid4().hex[:8])


def db_url(server, db):
    return server + "/" + urllib.parse.quote(db, safe="")


def bulk_docs(server, db, docs, new_edits=False):
    answers = http("POST", db_url(server, db) + "/_bulk_docs", {"new_edits": new_edits, "docs": docs})
    assert [a for a in answers if "error" in a] == []
    return answers


def edit(server, db, doc_id, body, rev=None, delete=False):
    """A normal edit (new_edits): returns the new revision."""
    path = db_url(server, db) + "/" + ("_design/" + urllib.parse.quote(doc_id[8:], safe="")
                                       if doc_id.startswith("_design/") else urllib.parse.quote(doc_id, safe=""))
    if delete:
        return http("DELETE", path + "?rev=" + rev)["rev"]
    if rev is not None:
        body = dict(body, _rev=rev)
    return http("PUT", path, body)["rev"]


PLAIN = 20000


def fill_complete_database(server, db):
    """Everything a complete backup has to keep, and 20,000 plain documents."""
    http("PUT", db_url(server, db))
    bulk_docs(server, db, [
        # three conflicting leaves on one document
        leaf("three", "2-b", "a", v="b"), leaf("three", "2-c", "a", v="c"), leaf("three", "2-d", "a", v="d"),
        # a deleted document that had a conflict: both branches deleted
        leaf("gone_conflict", "3-d", "b", "a", _deleted=True), leaf("gone_conflict", "3-e", "c", "a", _deleted=True),
        # attachments on a conflicting leaf
        leaf("att", "2-b", "a", v="with", _attachments={
            "note.txt": {"content_type": "text/plain", "data": "aGVsbG8gd29ybGQ="},
            "bin.dat": {"content_type": "application/octet-stream", "data": "AAECAwQF/w=="}}),
        leaf("att", "2-c", "a", v="without"),
    ])
    # a document deleted after two updates
    rev = edit(server, db, "gone", {"v": 1})
    rev = edit(server, db, "gone", {"v": 2}, rev)
    edit(server, db, "gone", None, rev, delete=True)
    # a design document updated twice
    rev = edit(server, db, "_design/app", {"views": {"all": {"map": "function (doc) { emit(doc._id); }"}}})
    rev = edit(server, db, "_design/app", {"views": {"all": {"map": "function (doc) { emit(doc._id, 1); }"}}}, rev)
    edit(server, db, "_design/app", {"views": {"all": {"map": "function (doc) { emit(doc._id, 2); }"}}}, rev)
    http("PUT", db_url(server, db) + "/_local/checkpoint", {"last_seq": 3})
    http("PUT", db_url(server, db) + "/_security", SECURITY)
    for start in range(0, PLAIN, 5000):
        answers = http("POST", db_url(server, db) + "/_bulk_docs",
                       {"docs": [{"_id": "plain%05d" % i, "n": i, "text": "x" * (i % 50)}
                                 for i in range(start, start + 5000)]})
        assert not [a for a in answers if "error" in a]


def all_leaves(server, db):
    """Every leaf of `db` with its `_revisions` and attachments, by (id, rev)."""
    feed = http("GET", db_url(server, db) + "/_changes?style=all_docs")["results"]
    pairs = [{"id": row["id"], "rev": change["rev"]} for row in feed for change in row["changes"]]
    leaves = {}
    for start in range(0, len(pairs), 2000):
        reply = http("POST", db_url(server, db) + "/_bulk_get?revs=true&attachments=true",
                     {"docs": pairs[start:start + 2000]})
        for result in reply["results"]:
            for entry in result["docs"]:
                doc = entry["ok"]
                leaves[(doc["_id"], doc["_rev"])] = doc
    assert len(leaves) == len(pairs)
    return leaves


def winners(server, db):
    reply = http("GET", db_url(server, db) + "/_all_docs?include_docs=true&attachments=true")
    return {row["id"]: row["doc"] for row in reply["rows"]}


@pytest.fixture(scope="module")
def complete_source(pouchdb_url, tmp_path_factory):
    """The database, its complete backup and what both hold."""
    db = unique("source")
    fill_complete_database(pouchdb_url, db)
    cwd = tmp_path_factory.mktemp("complete")
    port = urllib.parse.urlsplit(pouchdb_url).port
    result = run_port(["-b", "--complete", "-d", db, "-f", "complete.json", "--json"], cwd, server=port)
    assert result.returncode == 0, says(result)
    return {"db": db, "cwd": cwd, "file": cwd / "complete.json", "port": port, "run": result,
            "leaves": all_leaves(pouchdb_url, db), "winners": winners(pouchdb_url, db)}


def test_complete_backup_of_pouchdb_server_holds_every_leaf_and_no_local_document(complete_source):
    data = complete_source["file"].read_bytes()
    assert header(data) == {"new_edits": False, "_security": SECURITY, "docs": [], "db": complete_source["db"],
                            "seq": header(data)["seq"], "instance_start_time": header(data)["instance_start_time"]}
    docs = dump_lines(data)
    assert {(d["_id"], d["_rev"]): d for d in docs} == complete_source["leaves"]
    assert len(docs) == len(complete_source["leaves"]) == PLAIN + 3 + 2 + 2 + 1 + 1
    assert not [d for d in docs if d["_id"].startswith("_local/")]
    summary = last_json(complete_source["run"].stdout)
    assert (summary["leaves"], summary["documents"], summary["deleted"], summary["conflicted"],
            summary["design_documents"]) == (len(docs), PLAIN + 3, 2, 2, 1)


def test_complete_file_posted_whole_to_bulk_docs_recreates_every_leaf(pouchdb_url, complete_source):
    target = unique("posted")
    http("PUT", db_url(pouchdb_url, target))
    # What `curl -X POST -d @file _bulk_docs` sends: the file's bytes as they are.
    answers = post_file(db_url(pouchdb_url, target) + "/_bulk_docs", complete_source["file"].read_bytes())
    assert [a for a in answers if "error" in a] == []
    assert all_leaves(pouchdb_url, target) == complete_source["leaves"]
    assert winners(pouchdb_url, target) == complete_source["winners"]


def feed(server, db):
    """`_changes?style=all_docs` as {id: (sorted leaf revisions, deleted)}."""
    rows = http("GET", db_url(server, db) + "/_changes?style=all_docs")["results"]
    return {row["id"]: (sorted(c["rev"] for c in row["changes"]), row.get("deleted", False)) for row in rows}


def test_complete_backup_restored_into_a_new_database_has_every_leaf_history_and_the_security(
        pouchdb_url, complete_source):
    target = unique("restored")
    result = run_port(["-r", "-d", target, "-c", "-f", "complete.json", "--verify"], complete_source["cwd"],
                      server=complete_source["port"])
    assert result.returncode == 0, says(result)
    assert feed(pouchdb_url, target) == feed(pouchdb_url, complete_source["db"])
    restored = all_leaves(pouchdb_url, target)
    assert restored == complete_source["leaves"]     # bodies, _revisions, attachments
    assert restored[("three", "2-d")]["_revisions"] == revisions("2-d", "a")
    assert winners(pouchdb_url, target) == complete_source["winners"]
    assert http("GET", db_url(pouchdb_url, target) + "/_security") == SECURITY
    design = [rev for (doc_id, rev) in restored if doc_id == "_design/app"]
    assert len(design) == 1 and design[0].startswith("3-")
    assert "Verified: all %d revisions" % len(restored) in result.stdout.decode()


def test_complete_file_through_the_default_restore_path_of_an_older_dump_succeeds(pouchdb_url, complete_source,
                                                                                   monkeypatch):
    import io
    monkeypatch.setattr(couchdb_dump, "complete_header_security", lambda header: None)
    monkeypatch.setattr(couchdb_dump, "has_revisions", lambda line: False)
    target = unique("older")
    out = io.BytesIO()
    code = couchdb_dump.main(["-r", "-H", "127.0.0.1", "-P", str(complete_source["port"]), "-d", target, "-c",
                              "-f", str(complete_source["file"]), "--no-progress"], clean_environment(), out)
    assert code == 0, out.getvalue().decode()
    assert b"Successfully imported 1 Design Documents" in out.getvalue()
    # The documents' leaves all arrive; the design document gets a new revision from its PUT.
    expected = {key for key in complete_source["leaves"] if key[0] != "_design/app"}
    got = set(all_leaves(pouchdb_url, target))
    assert {key for key in got if key[0] != "_design/app"} == expected


# -- the reply readers, with generated documents --------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
DOCS = st.lists(st.tuples(st.text(min_size=1, max_size=6), st.dictionaries(st.text(max_size=5), JSON_VALUES,
                                                                             max_size=4), st.booleans()),
                max_size=6)


@settings(max_examples=150, deadline=None)
@given(DOCS, st.sampled_from([None, 1, 2]), st.booleans())
def test_bulk_get_reply_of_any_layout_gives_each_document_as_the_server_wrote_it(docs, indent, missing):
    results, expected = [], []
    for number, (doc_id, body, deleted) in enumerate(docs):
        doc = dict(body, _id=doc_id, _rev="%d-%x" % (number + 1, number))
        if deleted:
            doc["_deleted"] = True
        results.append({"id": doc_id, "docs": [{"ok": doc}]})
        expected.append(doc)
    if missing:
        results.append({"id": "gone", "docs": [{"error": {"id": "gone", "rev": "1-x", "error": "not_found",
                                                          "reason": "missing"}}]})
        results.append({"id": "gone2", "docs": [{"missing": "2-y"}]})
    text = json.dumps({"results": results}, indent=indent, ensure_ascii=indent == 2)
    leaves, gone = couchdb_dump.read_bulk_get(text)
    assert [json.loads(leaf.line) for leaf in leaves] == expected
    assert [(leaf.doc_id, leaf.rev, leaf.deleted) for leaf in leaves] == [
        (d["_id"], d["_rev"], d.get("_deleted", False)) for d in expected]
    assert all(b"\n" not in leaf.line for leaf in leaves)
    if indent is None:   # compact: the very bytes of the server
        assert [leaf.line for leaf in leaves] == [json.dumps(d, ensure_ascii=False).encode() for d in expected]
    assert gone == ([("gone", "1-x"), ("gone2", "2-y")] if missing else [])


@pytest.mark.parametrize("reply", [
    b'{"results":[{"id":"a","docs":[{"ok":{"_id":"a","_rev":"1-a"}}]}]',   # cut
    b'{"results":[{"id":"a","docs":[{"ok":{"_id":"a","_rev":"1-a"}}]}]}x',  # trailing data
    b'{"results":{}}',
    b'[]',
])
def test_a_bulk_get_reply_that_is_not_whole_is_refused_so_that_it_is_asked_again(reply):
    with pytest.raises(ValueError):
        couchdb_dump.read_bulk_get(reply.decode())


def test_a_revision_the_server_refuses_to_give_fails_the_backup():
    reply = '{"results":[{"id":"a","docs":[{"error":{"id":"a","rev":"1-a","error":"forbidden","reason":"no"}}]}]}'
    with pytest.raises(couchdb_dump.BackupFailed):
        couchdb_dump.read_bulk_get(reply)
