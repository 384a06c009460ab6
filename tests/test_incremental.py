"""Incremental backups (--since FILE).

Every --complete backup records in its header where it stands: the
database's name, its instance_start_time and the sequence up to which the
file is complete.  `-b --since FILE` writes only the documents changed after
FILE's sequence, in the same layout, and a chain (full, inc1, inc2, ...)
restored oldest first gives back every leaf, every history, every
attachment, the winners and the _security object of the source.

On the stub (tests/tools/couch_stub.py): the header, what an increment holds,
refusals before any change is read, a document changed while an increment
is read, opaque sequences handed back exactly (Hypothesis).  On PouchDB
Server 4.2.0: the same chain over 5,000 documents, restored by the port and
posted as plain files to _bulk_docs.
"""

import base64
import gzip
import hashlib
import json
import os
import tempfile
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from couch_stub import CouchStub
from helpers import http, last_json, run_in_process, run_port, says
from test_complete import (CUT_PAGE, SECURITY, all_leaves, db_url, dump_lines, feed, header, leaf, leaves_of, only,
                           post_file, unique, winner, winners)

BASE = 5000
ROUND_SECURITY = {
    1: {"admins": {"names": ["boss"], "roles": ["ops"]}, "members": {"names": ["ann"], "roles": ["staff"]}},
    2: {"admins": {"names": ["boss", "eve"], "roles": []}, "members": {"names": [], "roles": ["readers"]}},
}


def digest(tag):
    return hashlib.md5(tag.encode("utf-8")).hexdigest()


def attachment(text):
    return {"content_type": "text/plain", "data": base64.b64encode(text.encode("utf-8")).decode("ascii")}


def base_documents(count=BASE):
    """The base database: `count` documents at their first revision (one in
    50 with an attachment) and a design document with a history."""
    docs = []
    for i in range(count):
        doc = leaf("doc%05d" % i, "1-%032x" % i, n=i, text="x" * (i % 40))
        if i % 50 == 0:
            doc["_attachments"] = {"a.txt": attachment("attachment of %d" % i)}
        docs.append(doc)
    docs.append(leaf("_design/app", "2-%s" % digest("app2"), digest("app1"),
                     views={"all": {"map": "function (doc) { emit(doc._id, 1); }"}}))
    return docs


# -- the changes, one round at a time, on either server ----------------

ROUNDS = {
    # round: (updated, deleted, given conflicts, attachment added to)
    1: (range(1000, 1100), range(3000, 3020), range(3500, 3510), 4000),
    # round 2 updates again half of round 1's documents, and adds to a document with an attachment
    2: (range(1050, 1150), range(3020, 3040), range(3510, 3520), 4001),
}


def apply_round(server, r):
    """The changes of round `r` (100 updated, 20 deleted, 10 given conflicts,
    one attachment added, the design document updated, _security changed,
    50 new documents); returns the ids changed."""
    updated, deleted, conflicts, attached = ROUNDS[r]
    ids = lambda numbers: ["doc%05d" % i for i in numbers]
    server.update(ids(updated), {"round": r})
    server.delete(ids(deleted))
    server.conflict(ids(conflicts), "round %d" % r)
    server.update(ids([attached]), {"_attachments": {"added%d.txt" % r: attachment("added in round %d" % r)}})
    server.update(["_design/app"], {"views": {"all": {"map": "function (doc) { emit(doc._id, %d); }" % r}}})
    server.set_security(ROUND_SECURITY[r])
    new = ["new%d_%02d" % (r, j) for j in range(50)]
    server.add([{"_id": doc_id, "round": r} for doc_id in new])
    return set(ids(updated)) | set(ids(deleted)) | set(ids(conflicts)) | set(ids([attached])) | {"_design/app"} \
        | set(new)


class StubChanges:
    """The changes of a round written into the stub, as the server would store them."""

    def __init__(self, stub, db="db"):
        self.stub, self.db = stub, db

    def child(self, doc_id, tag, parent=None, **body):
        """A new leaf: a child of the winner (or of the leaf `parent`)."""
        leaves = self.stub.leaves_of(self.db, doc_id)
        parent = leaves[parent] if parent else winner(list(leaves.values()))
        start = parent["_revisions"]["start"] + 1
        doc = {"_id": doc_id, "_rev": "%d-%s" % (start, digest(tag + doc_id)),
               "_revisions": {"start": start, "ids": [digest(tag + doc_id)] + parent["_revisions"]["ids"]}}
        doc.update(body)
        return doc

    def update(self, ids, changes):
        docs = []
        for doc_id in ids:
            current = winner(list(self.stub.leaves_of(self.db, doc_id).values()))
            body = {k: v for k, v in current.items() if not k.startswith("_") or k == "_attachments"}
            if "_attachments" in changes:
                changes = dict(changes, _attachments=dict(body.get("_attachments", {}), **changes["_attachments"]))
            docs.append(self.child(doc_id, "update %s" % json.dumps(changes), **dict(body, **changes)))
        self.stub.put_leaves(self.db, docs)

    def delete(self, ids):
        self.stub.put_leaves(self.db, [self.child(doc_id, "delete", _deleted=True) for doc_id in ids])

    def conflict(self, ids, tag):
        for doc_id in ids:
            branches = [self.child(doc_id, tag + " a", v="a"), self.child(doc_id, tag + " b", v="b")]
            self.stub.put_leaves(self.db, branches)

    def set_security(self, security):
        self.stub.store.security[self.db] = security

    def add(self, docs):
        self.stub.put_leaves(self.db, [leaf(doc["_id"], "1-%s" % digest(doc["_id"]), **{
            k: v for k, v in doc.items() if k != "_id"}) for doc in docs])


class PouchChanges:
    """The same changes made on PouchDB Server: normal edits, and conflicts
    written with new_edits:false."""

    def __init__(self, server, db):
        self.url = db_url(server, db)

    def current(self, ids):
        rows = http("POST", self.url + "/_all_docs?include_docs=true&attachments=true", {"keys": ids})["rows"]
        return [row["doc"] for row in rows]

    def post(self, docs, new_edits=True):
        answers = http("POST", self.url + "/_bulk_docs", {"docs": docs, "new_edits": new_edits})
        assert [a for a in answers if "error" in a] == []

    def update(self, ids, changes):
        docs = []
        for doc in self.current(ids):
            if "_attachments" in changes:
                changes = dict(changes, _attachments=dict(doc.get("_attachments", {}), **changes["_attachments"]))
            docs.append(dict(doc, **changes))
        self.post(docs)

    def delete(self, ids):
        self.post([{"_id": doc["_id"], "_rev": doc["_rev"], "_deleted": True} for doc in self.current(ids)])

    def conflict(self, ids, tag):
        docs = []
        for doc in self.current(ids):
            number, _, hash_ = doc["_rev"].partition("-")
            for branch in ("a", "b"):
                tip = digest("%s %s %s" % (tag, branch, doc["_id"]))
                docs.append(dict(doc, _rev="%d-%s" % (int(number) + 1, tip), v=branch,
                                 _revisions={"start": int(number) + 1, "ids": [tip, hash_]}))
        self.post(docs, new_edits=False)

    def set_security(self, security):
        http("PUT", self.url + "/_security", security)

    def add(self, docs):
        self.post(docs)


# -- running the port against the stub -------------------------------------------

def backup(stub, cwd, name, *extra):
    """`-b --complete` (or whatever `extra` says) of the stub's database "db" to `name`."""
    return run_port(["-b", "-d", "db", "-f", name, *extra], cwd, server=stub.port)


def ok(result):
    assert result.returncode == 0, says(result)
    return result


def changes_requests(requests):
    return [r for r in requests if "/_changes" in r.path]


def since_asked(request):
    """The `since` of a _changes request, as the server reads it."""
    return urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)["since"][0]


def leaf_keys(data):
    return sorted((doc["_id"], doc["_rev"]) for doc in dump_lines(data))


def expected_leaves(stub, ids, db="db"):
    return sorted((doc_id, rev) for doc_id in ids for rev in stub.leaves_of(db, doc_id))


def stub_base(**options):
    stub = CouchStub(databases=["db"], **options)
    stub.put_leaves("db", base_documents())
    stub.store.security["db"] = SECURITY
    return stub


@pytest.fixture(scope="module")
def stub_chain(tmp_path_factory):
    """On the stub: full --complete, round 1, inc1 (--since full), round 2,
    inc2 (--since inc1), then inc3 with nothing changed (--since inc2)."""
    cwd = tmp_path_factory.mktemp("stub_chain")
    stub = stub_base()
    changes = StubChanges(stub)
    chain = {"cwd": cwd, "stub": stub, "changed": {}, "expected": {}, "runs": {}, "requests": {}}
    with stub:
        chain["runs"]["full"] = backup(stub, cwd, "full.json", "--complete", "--json")
        for name, base, r in (("inc1", "full", 1), ("inc2", "inc1", 2), ("inc3", "inc2", None)):
            chain["changed"][name] = apply_round(changes, r) if r else set()
            chain["expected"][name] = expected_leaves(stub, chain["changed"][name])
            before = len(stub.requests)
            chain["runs"][name] = backup(stub, cwd, name + ".json", "--since", base + ".json", "--json")
            chain["requests"][name] = stub.requests[before:]
    return chain


def chain_file(chain, name):
    ok(chain["runs"][name])
    return (chain["cwd"] / (name + ".json")).read_bytes()


# -- the header of every complete backup ---------------------------------------------

def test_complete_backup_header_records_the_database_its_instance_start_time_and_its_sequence(stub_chain):
    stub = stub_chain["stub"]
    data = chain_file(stub_chain, "full")
    first = header(data)
    assert first["new_edits"] is False and first["_security"] == SECURITY and first["docs"] == []
    assert first["db"] == "db"
    assert first["instance_start_time"] == stub.store.instances["db"]
    # The sequence up to which the file is complete, exactly as the server gave it (a string).
    full_run = stub_chain["runs"]["full"]
    assert first["seq"] == stub.seq_text(len(base_documents()))
    assert "since" not in first
    assert last_json(full_run.stdout)["seq"] == first["seq"]
    # Still the layout of every dump: the header alone on line 1, a leaf a line.
    assert data.split(b"\n", 1)[0].startswith(b'{"new_edits":false,') and data.split(b"\n", 1)[0].endswith(
        b'"docs":[')
    assert len(dump_lines(data)) == len(base_documents())


# -- what an increment holds -------------------------------------------------------

@pytest.mark.parametrize("name", ["inc1", "inc2"])
def test_increment_holds_every_leaf_of_the_changed_documents_and_nothing_else(stub_chain, name):
    data = chain_file(stub_chain, name)
    assert leaf_keys(data) == stub_chain["expected"][name]
    assert len({doc_id for doc_id, _ in leaf_keys(data)}) == len(stub_chain["changed"][name]) == 182
    for doc in dump_lines(data):
        assert doc["_revisions"]["start"] == int(doc["_rev"].split("-")[0])


@pytest.mark.parametrize("name, base", [("inc1", "full"), ("inc2", "inc1")])
def test_increment_header_names_its_base_sequence_and_its_own(stub_chain, name, base):
    stub = stub_chain["stub"]
    first = header(chain_file(stub_chain, name))
    base_header = header(chain_file(stub_chain, base))
    assert first["since"] == base_header["seq"]
    assert first["db"] == "db" and first["instance_start_time"] == stub.store.instances["db"]
    assert first["_security"] == ROUND_SECURITY[int(name[-1])]
    assert first["new_edits"] is False
    # Its own sequence is past its base's: the feed's last_seq once read.
    assert int(first["seq"].split("-")[0]) > int(first["since"].split("-")[0])
    summary = last_json(stub_chain["runs"][name].stdout)
    assert (summary["since"], summary["seq"]) == (first["since"], first["seq"])
    assert summary["ok"] is True and summary["complete"] is True
    assert summary["leaves"] == len(stub_chain["expected"][name])


@pytest.mark.parametrize("name", ["inc1", "inc2", "inc3"])
def test_increment_reads_the_changes_feed_from_its_base_sequence_only(stub_chain, name):
    base = {"inc1": "full", "inc2": "inc1", "inc3": "inc2"}[name]
    chain_file(stub_chain, name)
    asked = changes_requests(stub_chain["requests"][name])
    assert asked and since_asked(asked[0]) == header(chain_file(stub_chain, base))["seq"]
    # Nothing but the changed documents is read.
    read = [r for r in stub_chain["requests"][name] if "/_bulk_get" in r.path]
    asked_revs = sorted((d["id"], d["rev"]) for r in read for d in json.loads(r.body)["docs"])
    assert asked_revs == stub_chain["expected"][name]


def test_increment_with_no_change_is_a_whole_file_without_document_lines(stub_chain, tmp_path):
    data = chain_file(stub_chain, "inc3")
    assert dump_lines(data) == []
    assert data.endswith(b"\n]}\n")
    first = header(data)
    assert first["since"] == header(chain_file(stub_chain, "inc2"))["seq"] == first["seq"]
    # It restores (nothing to write) and is itself a base for the next increment.
    with CouchStub(databases=["copy"]) as target:
        restored = run_port(["-r", "-d", "copy", "-f", str(stub_chain["cwd"] / "inc3.json")], tmp_path,
                            server=target.port)
    assert restored.returncode == 0, says(restored)


# -- restoring the chain -------------------------------------------------------------

def restore_chain(port, db, cwd, names, *extra):
    """Restore `names` oldest first into `db`; the results."""
    results = []
    for number, name in enumerate(names):
        create = ["-c"] if number == 0 else []
        results.append(run_port(["-r", "-d", db, "-f", str(cwd / name), *create, *extra], cwd, server=port))
        assert results[-1].returncode == 0, says(results[-1])
    return results


def test_chain_restored_oldest_first_gives_every_leaf_history_attachment_and_the_security(stub_chain):
    source = stub_chain["stub"]
    for name in ("inc1", "inc2", "inc3"):
        chain_file(stub_chain, name)
    with CouchStub() as target:
        restore_chain(target.port, "copy", stub_chain["cwd"], ["full.json", "inc1.json", "inc2.json", "inc3.json"])
        assert leaves_of(target, "copy") == leaves_of(source, "db")   # bodies, _revisions, attachments
        assert target.store.databases["copy"] == source.store.databases["db"]   # the winners
        assert target.store.security["copy"] == ROUND_SECURITY[2]


def test_restore_of_an_increment_says_it_holds_the_changes_since_its_base_and_verify_checks_its_leaves(stub_chain):
    cwd = stub_chain["cwd"]
    inc1 = chain_file(stub_chain, "inc1")
    since = header(inc1)["since"]
    with CouchStub() as target:
        restore_chain(target.port, "copy", cwd, ["full.json"])
        result = run_port(["-r", "-d", "copy", "-f", "inc1.json", "--verify", "--json"], cwd, server=target.port)
        assert result.returncode == 0, says(result)
        notice = [line for line in result.stderr.decode().splitlines() if "holds the changes since" in line]
        assert len(notice) == 1 and since in notice[0] and "restore its base first" in notice[0], says(result)
        assert "inc1.json" in notice[0]
        summary = last_json(result.stdout)
        assert summary["since"] == since and summary["complete"] is True
        # --verify asks _revs_diff about the increment's own leaves, not the whole database's.
        asked = [json.loads(r.body) for r in target.requests if r.path == "/copy/_revs_diff"]
        assert sorted((doc_id, rev) for batch in asked for doc_id, revs in batch.items() for rev in revs) \
            == leaf_keys(inc1)
        assert "... INFO: Verified: all %d revisions of the dump are in copy" % len(dump_lines(inc1)) \
            in result.stdout.decode()


def test_a_full_complete_backup_restores_without_the_increment_notice(stub_chain):
    with CouchStub() as target:
        result = restore_chain(target.port, "copy", stub_chain["cwd"], ["full.json"], "--json")[0]
    assert "holds the changes since" not in result.stderr.decode()
    assert "since" not in last_json(result.stdout)


# -- refusals: exit 1, no file, the changes never read ------------------------------------

def refusal(tmp_path, stub, base_name, *extra, name="inc.json"):
    """Run `--since base_name` and check what every refusal does: exit 1, no
    file (not even a temporary one), no change read, an ERROR line naming
    the base.  Returns that line, the result and the requests of the run."""
    before = sorted(os.listdir(tmp_path))
    first_request = len(stub.requests)
    result = backup(stub, tmp_path, name, "--since", base_name, *extra)
    assert result.returncode == 1, says(result)
    assert sorted(os.listdir(tmp_path)) == before
    requests = stub.requests[first_request:]
    assert not [r for r in requests if "/_changes" in r.path or "/_bulk_get" in r.path]
    out = result.stdout.decode()
    assert "Unknown Option" not in out, says(result)
    errors = [line for line in out.splitlines() if line.startswith("... ERROR: ")]
    assert errors and base_name in errors[-1], says(result)
    return errors[-1], result, requests


@pytest.fixture()
def full_stub(tmp_path):
    """A small database and its full --complete backup, full.json."""
    stub = CouchStub(databases=["db", "other"])
    stub.put_leaves("db", base_documents(30))
    stub.put_leaves("other", base_documents(5))
    with stub:
        ok(backup(stub, tmp_path, "full.json", "--complete"))
        yield stub


def test_since_a_default_backup_is_refused_it_is_not_a_complete_backup(tmp_path, full_stub):
    ok(backup(full_stub, tmp_path, "default.json"))
    message, _, requests = refusal(tmp_path, full_stub, "default.json")
    assert "not a complete backup" in message and "--complete" in message
    assert requests == []


def test_since_a_complete_backup_that_records_no_sequence_is_refused(tmp_path, full_stub):
    data = (tmp_path / "full.json").read_bytes()
    first, rest = data.split(b"\n", 1)
    (tmp_path / "older.json").write_bytes(b'{"new_edits":false,"_security":{},"docs":[\n' + rest)
    message, _, requests = refusal(tmp_path, full_stub, "older.json")
    assert "no sequence" in message and "--complete" in message
    assert requests == []


@pytest.mark.parametrize("how", ["no-footer", "mid-line", "gzip-cut"])
def test_since_a_cut_file_is_refused_before_any_request(tmp_path, full_stub, how):
    data = (tmp_path / "full.json").read_bytes()
    if how == "no-footer":
        cut, name = data[:data.rindex(b"]}")], "cut.json"
    elif how == "mid-line":
        cut, name = data[:len(data) // 2], "cut.json"
    else:
        packed = gzip.compress(data)
        cut, name = packed[:len(packed) - 40], "cut.json.gz"
    (tmp_path / name).write_bytes(cut)
    message, _, requests = refusal(tmp_path, full_stub, name)
    assert "cut" in message and "--complete" in message
    assert requests == []


def test_since_a_missing_file_is_refused(tmp_path, full_stub):
    message, _, requests = refusal(tmp_path, full_stub, "absent.json")
    assert "does not exist" in message
    assert requests == []


def test_since_another_databases_backup_is_refused_before_any_request(tmp_path, full_stub):
    ok(run_port(["-b", "--complete", "-d", "other", "-f", "other.json"], tmp_path, server=full_stub.port))
    message, _, requests = refusal(tmp_path, full_stub, "other.json")
    assert '"other"' in message and '"db"' in message
    assert requests == []


def test_since_a_base_of_a_database_deleted_and_created_again_is_refused(tmp_path, full_stub):
    # CouchDB gives the new database another instance_start_time.
    full_stub.store.instances["db"] = str(int(full_stub.store.instances["db"]) + 7)
    message, _, _ = refusal(tmp_path, full_stub, "full.json")
    assert "the database was deleted and created again since full.json: take a full backup with --complete" \
        in message


def test_a_database_created_again_within_the_same_second_is_told_by_its_sequence_going_back(tmp_path, full_stub):
    # Same instance_start_time (one-second resolution on CouchDB 3.5), but
    # its update_seq starts again from nothing.
    kept = full_stub.store.instances["db"]
    http("DELETE", full_stub.url + "/db")
    http("PUT", full_stub.url + "/db")
    full_stub.store.instances["db"] = kept
    full_stub.put_leaves("db", base_documents(3))
    message, _, _ = refusal(tmp_path, full_stub, "full.json")
    assert "deleted and created again since full.json" in message


def test_refusal_is_in_the_json_summary(tmp_path, full_stub):
    ok(backup(full_stub, tmp_path, "default.json"))
    _, result, _ = refusal(tmp_path, full_stub, "default.json", "--json")
    summary = last_json(result.stdout)
    assert summary["ok"] is False and summary["exit_code"] == 1 and "not a complete backup" in summary["error"]


# -- an increment is a backup like any other ---------------------------------------------

def test_increment_of_a_gzipped_base_is_the_same_written_plain_gzipped_timestamped_or_to_stdout(tmp_path, full_stub):
    changes = StubChanges(full_stub)
    changes.update(["doc00003", "doc00007"], {"round": 1})
    (tmp_path / "full.json.gz").write_bytes(gzip.compress((tmp_path / "full.json").read_bytes()))
    ok(backup(full_stub, tmp_path, "inc.json", "--since", "full.json"))
    plain = (tmp_path / "inc.json").read_bytes()
    assert leaf_keys(plain) == expected_leaves(full_stub, ["doc00003", "doc00007"])
    ok(backup(full_stub, tmp_path, "from_gz.json", "--since", "full.json.gz"))
    assert (tmp_path / "from_gz.json").read_bytes() == plain
    ok(backup(full_stub, tmp_path, "z.json", "--since", "full.json", "-z"))
    assert gzip.decompress((tmp_path / "z.json.gz").read_bytes()) == plain
    piped = ok(backup(full_stub, tmp_path, "-", "--since", "full.json"))
    assert piped.stdout == plain
    os.mkdir(tmp_path / "stamped")
    ok(run_port(["-b", "-d", "db", "-f", "inc.json", "-T", "--since", str(tmp_path / "full.json")],
                tmp_path / "stamped", server=full_stub.port))
    names = os.listdir(tmp_path / "stamped")
    assert len(names) == 1 and names[0].startswith("inc-")
    assert (tmp_path / "stamped" / names[0]).read_bytes() == plain


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_an_increment_whose_changes_feed_breaks_for_good_leaves_no_file(tmp_path, full_stub, compress):
    StubChanges(full_stub).update(["doc00003"], {"round": 1})
    full_stub.faults = only(CUT_PAGE)
    result = backup(full_stub, tmp_path, "inc.json", "--since", "full.json", *(["-z"] if compress else []))
    assert result.returncode == 1, says(result)
    assert sorted(os.listdir(tmp_path)) == ["full.json"]
    assert "... ERROR: Backup failed, no file written: " in result.stdout.decode()


# -- a document changed while an increment is read -------------------------------------------

class ChangingStub(CouchStub):
    """Changes a document once, when `armed` and `when(path)` says so."""

    armed = False
    change = None

    def answer(self, request):
        if self.armed and self.change is not None and self.when(request):
            change, self.change = self.change, None
            change()
        return super().answer(request)


def chain_of_three(stub, tmp_path, during):
    """full, then inc1 with `during` run while it is read, then inc2."""
    ok(backup(stub, tmp_path, "full.json", "--complete"))
    changes = StubChanges(stub)
    changes.update(["doc%05d" % i for i in range(20, 30)], {"round": 1})
    stub.change = during
    stub.armed = True
    ok(backup(stub, tmp_path, "inc1.json", "--since", "full.json"))
    stub.armed = False
    ok(backup(stub, tmp_path, "inc2.json", "--since", "inc1.json"))
    with CouchStub() as target:
        restore_chain(target.port, "copy", tmp_path, ["full.json", "inc1.json", "inc2.json"])
        assert leaves_of(target, "copy") == leaves_of(stub, "db")


def test_a_document_changed_after_the_last_page_is_read_is_in_the_next_increment(tmp_path):
    stub = ChangingStub(databases=["db"])
    stub.put_leaves("db", base_documents(100))
    stub.when = lambda request: "/_bulk_get" in request.path
    changes = StubChanges(stub)
    newest = []

    def during():
        changes.update(["doc00050"], {"changed": "while inc1 was read"})
        newest.extend(stub.leaves_of("db", "doc00050"))
    with stub:
        chain_of_three(stub, tmp_path, during)
    assert newest, "the change was never made: the increment read no _bulk_get"
    inc2 = (tmp_path / "inc2.json").read_bytes()
    assert leaf_keys(inc2) == [("doc00050", newest[0])]
    inc1_header, inc2_header = header((tmp_path / "inc1.json").read_bytes()), header(inc2)
    assert inc2_header["since"] == inc1_header["seq"]


def test_a_document_changed_between_two_pages_of_the_feed_is_kept_and_the_chain_restores_identical(tmp_path):
    stub = ChangingStub(databases=["db"], changes_page=3)
    stub.put_leaves("db", base_documents(100))
    changes = StubChanges(stub)
    pages = []

    def second_page(request):
        if "/_changes" in request.path:
            pages.append(request.path)
        return len(pages) == 2
    stub.when = second_page
    newest = []

    def during():
        # one already listed by the first page, one not listed at all
        changes.update(["doc00021", "doc00060"], {"changed": "between pages"})
        newest.extend(sorted((doc_id, rev) for doc_id in ("doc00021", "doc00060")
                             for rev in stub.leaves_of("db", doc_id)))
    with stub:
        chain_of_three(stub, tmp_path, during)
    assert len(newest) == 2
    written = set(leaf_keys((tmp_path / "inc1.json").read_bytes())) | set(
        leaf_keys((tmp_path / "inc2.json").read_bytes()))
    assert set(newest) <= written


# -- sequences and names as the server gives them (generated) ---------------------------------

SEQ_SUFFIXES = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
DB_NAMES = st.builds(lambda first, rest: first + rest, st.sampled_from("abcxyz"),
                     st.text(alphabet="abz09_$()+-/", max_size=8))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(suffix=SEQ_SUFFIXES, name=DB_NAMES)
def test_a_sequence_is_handed_back_exactly_as_the_server_gave_it(tmp_path, suffix, name):
    work = Path(tempfile.mkdtemp(dir=str(tmp_path)))
    stub = CouchStub(databases=[name], seq_suffix=suffix)
    stub.put_leaves(name, base_documents(3))
    port = ["-H", "127.0.0.1", "-P", None, "--no-progress", "-q"]
    with stub:
        port[3] = str(stub.port)
        full, inc = str(work / "full.json"), str(work / "inc.json")
        code, out, err = run_in_process(["-b", "--complete", "-d", name, "-f", full, *port])
        assert code == 0, (out, err)
        seq = header(open(full, "rb").read())["seq"]
        assert seq == stub.seq_text(len(base_documents(3))) and header(open(full, "rb").read())["db"] == name
        StubChanges(stub, name).update(["doc00001"], {"round": 1})
        before = len(stub.requests)
        code, out, err = run_in_process(["-b", "--since", full, "-d", name, "-f", inc, *port])
        assert code == 0, (out, err)
        asked = [r for r in stub.requests[before:] if "/_changes" in r.path]
    assert since_asked(asked[0]) == seq
    data = open(inc, "rb").read()
    assert header(data)["since"] == seq and header(data)["seq"] == stub.seq_text(len(base_documents(3)) + 1)
    assert leaf_keys(data) == expected_leaves(stub, ["doc00001"], name)


def test_help_lists_since():
    code, out, _ = run_in_process(["--help"])
    assert code == 0
    lines = [line for line in out.decode().splitlines() if line.strip().startswith("--since")]
    assert lines and "FILE" in lines[0]


# -- PouchDB Server ---------------------------------------------------------------------------

def pouch_base(server, db):
    http("PUT", db_url(server, db))
    docs = base_documents()
    for start in range(0, len(docs), 2500):
        answers = http("POST", db_url(server, db) + "/_bulk_docs",
                       {"new_edits": False, "docs": docs[start:start + 2500]})
        assert [a for a in answers if "error" in a] == []
    http("PUT", db_url(server, db) + "/_security", SECURITY)


def attachment_digests(leaves):
    return {(doc_id, rev, name): body["digest"] for (doc_id, rev), doc in leaves.items()
            for name, body in doc.get("_attachments", {}).items()}


@pytest.fixture(scope="module")
def pouch_chain(pouchdb_url, tmp_path_factory):
    """On PouchDB Server: the base, full --complete, round 1, inc1, round 2, inc2."""
    db = unique("incremental")
    cwd = tmp_path_factory.mktemp("pouch_chain")
    port = urllib.parse.urlsplit(pouchdb_url).port
    pouch_base(pouchdb_url, db)
    changes = PouchChanges(pouchdb_url, db)
    chain = {"db": db, "cwd": cwd, "port": port, "runs": {}, "changed": {}, "expected": {}}
    chain["runs"]["full"] = run_port(["-b", "--complete", "-d", db, "-f", "full.json", "--json"], cwd, server=port)
    for name, base, r in (("inc1", "full", 1), ("inc2", "inc1", 2)):
        chain["changed"][name] = apply_round(changes, r)
        now = feed(pouchdb_url, db)
        chain["expected"][name] = sorted((doc_id, rev) for doc_id in chain["changed"][name] for rev in now[doc_id][0])
        chain["runs"][name] = run_port(["-b", "--since", base + ".json", "-d", db, "-f", name + ".json", "--json"],
                                       cwd, server=port)
    chain["leaves"] = all_leaves(pouchdb_url, db)
    chain["winners"] = winners(pouchdb_url, db)
    return chain


def test_pouchdb_sequences_are_integers_and_kept_as_integers(pouch_chain):
    full, inc1, inc2 = (header(chain_file(pouch_chain, name)) for name in ("full", "inc1", "inc2"))
    assert type(full["seq"]) is int and full["seq"] >= BASE
    assert inc1["since"] == full["seq"] and type(inc1["since"]) is int
    assert inc2["since"] == inc1["seq"] > full["seq"]
    assert full["db"] == inc2["db"] == pouch_chain["db"]
    assert isinstance(full["instance_start_time"], str) and full["instance_start_time"] == inc2["instance_start_time"]


@pytest.mark.parametrize("name", ["inc1", "inc2"])
def test_pouchdb_increment_holds_only_the_changed_documents(pouch_chain, name):
    data = chain_file(pouch_chain, name)
    assert {doc["_id"] for doc in dump_lines(data)} == pouch_chain["changed"][name]
    # 182 documents, every leaf of each: 192 lines (the 10 given conflicts have two)
    assert leaf_keys(data) == pouch_chain["expected"][name]
    assert len(leaf_keys(data)) == 192


def test_pouchdb_chain_restored_by_the_port_is_the_source_leaf_for_leaf(pouchdb_url, pouch_chain):
    target = unique("chain")
    results = restore_chain(pouch_chain["port"], target, pouch_chain["cwd"], ["full.json", "inc1.json", "inc2.json"],
                            "--verify")
    assert "holds the changes since" in results[1].stderr.decode()
    assert feed(pouchdb_url, target) == feed(pouchdb_url, pouch_chain["db"])   # every leaf, deleted ones too
    restored = all_leaves(pouchdb_url, target)
    assert restored == pouch_chain["leaves"]                                   # bodies, _revisions, attachments
    assert attachment_digests(restored) == attachment_digests(pouch_chain["leaves"])
    assert len(attachment_digests(restored)) >= BASE // 50 + 2
    assert winners(pouchdb_url, target) == pouch_chain["winners"]
    assert http("GET", db_url(pouchdb_url, target) + "/_security") == ROUND_SECURITY[2]


def test_pouchdb_takes_the_files_posted_as_they_are_to_bulk_docs(pouchdb_url, pouch_chain):
    """The new header keys (db, instance_start_time, seq, since) are ignored
    by _bulk_docs: `curl -X POST -d @file` of each file still loads the chain."""
    target = unique("posted")
    http("PUT", db_url(pouchdb_url, target))
    for name in ("full", "inc1", "inc2"):
        data = chain_file(pouch_chain, name)
        assert {"db", "instance_start_time", "seq"} <= set(header(data))
        answers = post_file(db_url(pouchdb_url, target) + "/_bulk_docs", data)
        assert [a for a in answers if "error" in a] == []
    assert all_leaves(pouchdb_url, target) == pouch_chain["leaves"]
    assert winners(pouchdb_url, target) == pouch_chain["winners"]


def test_pouchdb_database_deleted_and_created_again_is_refused(pouchdb_url, tmp_path):
    db = unique("recreated")
    port = urllib.parse.urlsplit(pouchdb_url).port
    url = db_url(pouchdb_url, db)
    http("PUT", url)
    http("POST", url + "/_bulk_docs", {"docs": [{"_id": "d%d" % i} for i in range(20)]})
    ok(run_port(["-b", "--complete", "-d", db, "-f", "full.json"], tmp_path, server=port))
    http("DELETE", url)
    http("PUT", url)
    http("POST", url + "/_bulk_docs", {"docs": [{"_id": "e%d" % i} for i in range(3)]})
    result = run_port(["-b", "--since", "full.json", "-d", db, "-f", "inc.json"], tmp_path, server=port)
    assert result.returncode == 1, says(result)
    assert os.listdir(tmp_path) == ["full.json"]
    assert "deleted and created again since full.json" in result.stdout.decode(), says(result)
