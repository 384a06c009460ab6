"""A whole server in one run: `-d PATTERN` backs up every database it matches
to a folder, one file each, and restores a folder of them (issue #18).

`-d` holding `*`, `?` or `[` (characters no CouchDB database name holds) is a
shell-style pattern over `GET /_all_dbs`, read in pages; `*` leaves out the
system databases (`_users`, ...), which only a pattern beginning with `_`
takes in; `--exclude` leaves more out.  Each database goes to
`DIR/<name with / as %2F>.json` (`.json.gz` with `-z`, `DIR/<stamp>/` with
`-T`), byte for byte the file a single-database run writes, whole or absent.
One line per database, a summary, `--json` with every database's own object,
exit 0 only when every database succeeded.

Against tests/tools/couch_stub.py (faults, counting, 1,000 databases) and a PouchDB
Server of our own (a pattern sees every database of the server, so the
session's shared one would hold other tests' databases).
"""

import base64
import copy
import gzip
import os
import re
import signal
import subprocess
import sys
import time
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from couch_stub import CouchStub, Fault, database_of, endpoint_of
from helpers import http, interrupt, last_json, run_in_process, run_port, says, start_port

SYSTEM = ["_users", "_replicator", "_global_changes"]

# Every character a database name may hold after its first letter: a-z 0-9 _ $ ( ) + - /
SPECIAL = ["a/b", "c$d", "e(f)+g-h", "i_j", "k0-9", "m+n", "o(p)", "q$r$", "s/t/u", "v-w_x", "y(z)",
           "z9+-/$()_"]
ATTACHMENTS = "with-attachments"
DESIGNS = "with-designs"
NAMES = SPECIAL + [ATTACHMENTS, DESIGNS] + ["db%02d" % i for i in range(36)]
assert len(NAMES) == 50
EMPTY = {"c$d", "db00", "db09", "db18", "db27"}

SUCCESS_LINE = re.compile(r"\.\.\. INFO: (Backed up|Restored) (\S+): (\d+) documents, ([\d.]+) MB in ([\d.]+) s\Z")


# -- the server's databases ---------------------------------------------------

def documents_of(name, index):
    if name in EMPTY:
        return []
    docs = [{"_id": "d%02d" % k, "_rev": "1-%032x" % (index * 100 + k), "db": name, "n": k,
             "text": "\u00e9t\u00e9 \u2603 \"q\" \\"} for k in range(index % 7 + 2)]
    if name == ATTACHMENTS:
        for k, doc in enumerate(docs):
            data = base64.b64encode(("attachment %d of %s\n" % (k, name)).encode()).decode()
            doc["_attachments"] = {"note.txt": {"content_type": "text/plain", "revpos": 1, "data": data}}
    if name == DESIGNS:
        docs += [{"_id": "_design/app", "_rev": "1-%032x" % 7, "views": {"all": {"map": "function(d){emit(d._id)}"}}},
                 {"_id": "_design/zz", "_rev": "2-%032x" % 8, "language": "javascript"}]
    return docs


def seed(stub, names=NAMES, system=SYSTEM):
    for index, name in enumerate(names):
        stub.store.databases[name] = {doc["_id"]: doc for doc in documents_of(name, index)}
    for name in system:
        stub.store.databases[name] = {"org.couchdb.user:ann": {"_id": "org.couchdb.user:ann", "_rev": "1-aaa",
                                                               "type": "user", "name": "ann"}}
    return stub


def server(names=NAMES, system=SYSTEM, **options):
    return seed(CouchStub(**options), names, system)


def file_name(db, compress=False):
    return db.replace("/", "%2F") + (".json.gz" if compress else ".json")


# -- running the port ---------------------------------------------------------

def single_backup(stub, db, folder, *extra):
    """The file a single-database run writes for ``db`` (the reference)."""
    folder.mkdir(exist_ok=True)
    target = folder / file_name(db)
    code, out, err = run_in_process(["-b", "-q", "-H", "127.0.0.1", "-P", str(stub.port), "-d", db,
                                     "-f", str(target), *extra])
    assert code == 0, (db, out, err)
    return (folder / (target.name + (".gz" if "-z" in extra else ""))).read_bytes()


def listing(folder):
    return sorted(os.listdir(folder))


def success_lines(result):
    """{database: documents} of the per-database lines of stdout."""
    found = {}
    for line in result.stdout.decode("utf-8").splitlines():
        match = SUCCESS_LINE.match(line)
        if match:
            assert match.group(2) not in found, "two lines for %s" % match.group(2)
            found[match.group(2)] = int(match.group(3))
    return found


def requests_to(stub, db):
    return [r for r in stub.requests if database_of(r.path) == db]


def contents(stub, names):
    return {name: copy.deepcopy(stub.store.databases[name]) for name in names}


def assert_restored(stub, before):
    """Every database holds what it held: documents with their revisions;
    design documents (PUT, as the script does) with their content."""
    for name, docs in before.items():
        assert name in stub.store.databases, "%s was not restored" % name
        now = stub.store.databases[name]
        assert sorted(now) == sorted(docs), name
        for doc_id, doc in docs.items():
            if doc_id.startswith("_design/"):
                strip = lambda d: {k: v for k, v in d.items() if k != "_rev"}
                assert strip(now[doc_id]) == strip(doc), (name, doc_id)
            else:
                assert now[doc_id] == doc, (name, doc_id)


def delete_all(stub, names):
    for name in names:
        http("DELETE", "%s/%s" % (stub.url, quote(name, safe="")))


# -- backup and restore of every database ---------------------------------------

def test_every_database_goes_to_its_own_file_identical_to_a_single_run_and_comes_back(tmp_path):
    with server() as stub:
        result = run_port(["-b", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert listing(tmp_path / "dumps") == sorted(file_name(name) for name in NAMES)
        for name in NAMES:
            assert (tmp_path / "dumps" / file_name(name)).read_bytes() == single_backup(
                stub, name, tmp_path / "single"), name
        assert not any(requests_to(stub, name) for name in SYSTEM), "a system database was read"
        counted = success_lines(result)
        assert counted == {name: len(documents_of(name, i)) for i, name in enumerate(NAMES)}

        before = contents(stub, NAMES)
        system_before = contents(stub, SYSTEM)
        delete_all(stub, NAMES)
        assert sorted(stub.store.databases) == sorted(SYSTEM)
        stub.requests.clear()
        result = run_port(["-r", "-c", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert_restored(stub, before)
        assert contents(stub, SYSTEM) == system_before
        assert not any(requests_to(stub, name) for name in SYSTEM), "a system database was touched"
        assert set(success_lines(result)) == set(NAMES)


def test_a_name_holding_slash_is_written_as_percent_2f_and_restored_under_its_own_name(tmp_path):
    with server(["a/b", "s/t/u"], []) as stub:
        result = run_port(["-b", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert listing(tmp_path / "dumps") == ["a%2Fb.json", "s%2Ft%2Fu.json"]
        before = contents(stub, ["a/b", "s/t/u"])
        delete_all(stub, ["a/b", "s/t/u"])
        result = run_port(["-r", "-c", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert_restored(stub, before)
        assert sorted(stub.store.databases) == ["a/b", "s/t/u"]


def test_system_databases_are_taken_only_by_a_pattern_beginning_with_underscore(tmp_path):
    with server() as stub:
        result = run_port(["-b", "-d", "_*", "-f", "system"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert listing(tmp_path / "system") == sorted(file_name(name) for name in SYSTEM)
        assert not any(requests_to(stub, name) for name in NAMES)
        # A folder holding system databases' files too: '*' restores only the others.
        result = run_port(["-b", "-d", "*", "-f", "system"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        before = contents(stub, SYSTEM)
        others = contents(stub, NAMES)
        delete_all(stub, NAMES)
        stub.requests.clear()
        result = run_port(["-r", "-c", "-d", "*", "-f", "system"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert not any(requests_to(stub, name) for name in SYSTEM)
        assert contents(stub, SYSTEM) == before
        assert_restored(stub, others)
        assert set(success_lines(result)) == set(NAMES)


@pytest.mark.parametrize("pattern, expected", [
    ("db0?", ["db%02d" % i for i in range(10)]),
    ("[ace]*", ["a/b", "c$d", "e(f)+g-h"]),
    ("*/*", ["a/b", "s/t/u", "z9+-/$()_"]),
    ("*(*)*", ["e(f)+g-h", "o(p)", "y(z)", "z9+-/$()_"]),
    ("with-*", [ATTACHMENTS, DESIGNS]),
], ids=["question-mark", "class", "slash", "parentheses", "prefix"])
def test_the_pattern_is_shell_style_over_the_whole_name(pattern, expected, tmp_path):
    with server() as stub:
        result = run_port(["-b", "-d", pattern, "-f", "dumps"], tmp_path, server=stub.url)
    assert result.returncode == 0, says(result)
    assert listing(tmp_path / "dumps") == sorted(file_name(name) for name in expected)


def test_exclude_leaves_databases_out_of_backup_and_restore(tmp_path):
    with server() as stub:
        result = run_port(["-b", "-d", "*", "--exclude", "db*", "--exclude", "*/*", "-f", "dumps"], tmp_path,
                          server=stub.url)
        assert result.returncode == 0, says(result)
        kept = [name for name in NAMES if not name.startswith("db") and "/" not in name]
        assert listing(tmp_path / "dumps") == sorted(file_name(name) for name in kept)
        assert not requests_to(stub, "db05") and not requests_to(stub, "a/b")
        before = contents(stub, kept)
        delete_all(stub, kept)
        result = run_port(["-r", "-c", "-d", "*", "--exclude", "c*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert "c$d" not in stub.store.databases
        del before["c$d"]
        assert_restored(stub, before)
        assert set(success_lines(result)) == set(before)


def test_compressed_backup_of_every_database_decompresses_to_the_plain_files_and_restores(tmp_path):
    names = SPECIAL[:6] + [ATTACHMENTS, DESIGNS]
    with server(names) as stub:
        result = run_port(["-b", "-z", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert listing(tmp_path / "dumps") == sorted(file_name(name, compress=True) for name in names)
        for name in names:
            packed = (tmp_path / "dumps" / file_name(name, compress=True)).read_bytes()
            assert gzip.decompress(packed) == single_backup(stub, name, tmp_path / "single"), name
        before = contents(stub, names)
        delete_all(stub, names)
        result = run_port(["-r", "-c", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert_restored(stub, before)


def test_timestamp_stamps_the_folder_so_one_run_stays_together(tmp_path):
    names = SPECIAL[:5]
    with server(names) as stub:
        result = run_port(["-b", "-T", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        stamps = listing(tmp_path / "dumps")
        assert len(stamps) == 1 and re.fullmatch(r"\d{8}-\d{6}", stamps[0]), stamps
        folder = tmp_path / "dumps" / stamps[0]
        assert listing(folder) == sorted(file_name(name) for name in names)
        before = contents(stub, names)
        delete_all(stub, names)
        result = run_port(["-r", "-c", "-d", "*", "-f", str(folder)], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert_restored(stub, before)


def complete_server(names):
    """Databases with conflicts and deleted documents, for --complete."""
    stub = CouchStub()
    for index, name in enumerate(names):
        stub.store.databases[name] = {}
        stub.put_leaves(name, [
            {"_id": "x", "_rev": "2-b%d" % index, "_revisions": {"start": 2, "ids": ["b%d" % index, "a"]}, "v": 1},
            {"_id": "x", "_rev": "2-c%d" % index, "_revisions": {"start": 2, "ids": ["c%d" % index, "a"]}, "v": 2},
            {"_id": "gone", "_rev": "3-z", "_revisions": {"start": 3, "ids": ["z", "y", "x"]}, "_deleted": True},
            {"_id": "_design/app", "_rev": "4-d", "_revisions": {"start": 4, "ids": ["d", "c", "b", "a"]},
             "views": {}},
        ])
        stub.store.security[name] = {"admins": {"names": ["boss"], "roles": []}, "members": {"names": [name]}}
    return stub


def leaves(stub, names):
    return {name: {doc_id: stub.leaves_of(name, doc_id) for doc_id in stub.store.leaves.get(name, {})}
            for name in names}


def test_complete_backup_of_every_database_keeps_every_leaf_through_the_round_trip(tmp_path):
    names = ["a/b", "c$d", "e(f)+g-h", "plain"]
    with complete_server(names) as stub:
        result = run_port(["-b", "--complete", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert listing(tmp_path / "dumps") == sorted(file_name(name) for name in names)
        for name in names:
            assert (tmp_path / "dumps" / file_name(name)).read_bytes() == single_backup(
                stub, name, tmp_path / "single", "--complete"), name
        before = leaves(stub, names)
        security = copy.deepcopy(stub.store.security)
        delete_all(stub, names)
        result = run_port(["-r", "-c", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert leaves(stub, names) == before
        assert {name: stub.store.security[name] for name in names} == {name: security[name] for name in names}


def test_json_lists_every_database_with_the_keys_of_a_single_run_and_the_totals(tmp_path):
    names = SPECIAL[:4] + [DESIGNS]
    with server(names) as stub:
        result = run_port(["-b", "-d", "*", "-f", "dumps", "--json"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        report = last_json(result.stdout)
        assert report["ok"] is True and report["mode"] == "backup"
        assert report["db"] == "*" and report["file"] == "dumps"
        entries = {entry["db"]: entry for entry in report["databases"]}
        assert sorted(entries) == sorted(names)
        for entry in report["databases"]:
            assert {"ok", "mode", "db", "file", "documents", "design_documents", "bytes", "seconds"} <= set(entry)
            assert entry["ok"] is True and entry["mode"] == "backup"
            assert entry["file"] == os.path.join("dumps", file_name(entry["db"]))
            assert entry["bytes"] == (tmp_path / entry["file"]).stat().st_size
        assert entries[DESIGNS]["design_documents"] == 2
        assert entries["a/b"]["documents"] == len(documents_of("a/b", 0))
        assert report["documents"] == sum(entry["documents"] for entry in report["databases"])
        assert report["bytes"] == sum(entry["bytes"] for entry in report["databases"])

        delete_all(stub, names)
        result = run_port(["-r", "-c", "-d", "*", "-f", "dumps", "--json"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        report = last_json(result.stdout)
        assert report["ok"] is True and report["mode"] == "restore"
        assert sorted(entry["db"] for entry in report["databases"]) == sorted(names)
        assert all(entry["ok"] and entry["mode"] == "restore" for entry in report["databases"])
        assert report["documents"] == sum(entry["documents"] for entry in report["databases"])


# -- one database failing -------------------------------------------------------

FORBIDDEN = b'{"error":"forbidden","reason":"You are not allowed to access this db."}\n'


def failing(names_to_faults):
    def faults(index, method, path):
        if method == "GET" and "/_all_docs" in path:
            return names_to_faults.get(database_of(path))
        return None
    return faults


def test_a_failing_database_does_not_stop_the_others_and_is_named(tmp_path):
    faults = failing({"db05": Fault("status", status=403, body=FORBIDDEN),
                      "e(f)+g-h": Fault("rows_cut", rows=2)})
    with server(faults=faults) as stub:
        result = run_port(["-b", "-d", "*", "-f", "dumps", "--jobs", "3", "--json"], tmp_path, server=stub.url)
        assert result.returncode == 1, says(result)
        others = [name for name in NAMES if name not in ("db05", "e(f)+g-h")]
        assert listing(tmp_path / "dumps") == sorted(file_name(name) for name in others)
        for name in others[:5]:
            assert (tmp_path / "dumps" / file_name(name)).read_bytes() == single_backup(
                stub, name, tmp_path / "single"), name
    lines = result.stdout.decode("utf-8").splitlines()
    assert any(line.startswith("... ERROR: Backup of db05 failed: ") and "forbidden" in line
               for line in lines), says(result)
    assert any(line.startswith("... ERROR: Backup of e(f)+g-h failed: ") for line in lines), says(result)
    assert set(success_lines(result)) == set(others)
    report = last_json(result.stdout)
    assert report["ok"] is False and report["exit_code"] == 1
    assert "db05" in report["error"] and "e(f)+g-h" in report["error"]
    entries = {entry["db"]: entry for entry in report["databases"]}
    assert len(entries) == 50
    for name in ("db05", "e(f)+g-h"):
        assert entries[name]["ok"] is False and entries[name]["error"], entries[name]
    assert all(entries[name]["ok"] for name in others)
    # Without --json the summary, the last line, names them.
    with server(faults=faults) as stub:
        result = run_port(["-b", "-d", "*", "-f", "again"], tmp_path / "dumps", server=stub.url)
    assert result.returncode == 1
    summary = result.stdout.decode("utf-8").splitlines()[-1]
    assert summary.startswith("... ERROR: ") and "2 of 50" in summary, summary
    assert "db05" in summary and "e(f)+g-h" in summary, summary


def test_a_database_whose_file_exists_fails_alone_and_its_file_is_left_as_it_was(tmp_path):
    names = SPECIAL[:4]
    (tmp_path / "dumps").mkdir()
    (tmp_path / "dumps" / "c$d.json").write_bytes(b"yesterday's backup\n")
    with server(names) as stub:
        result = run_port(["-b", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
    assert result.returncode == 1, says(result)
    assert (tmp_path / "dumps" / "c$d.json").read_bytes() == b"yesterday's backup\n"
    assert listing(tmp_path / "dumps") == sorted(file_name(name) for name in names)
    assert set(success_lines(result)) == set(names) - {"c$d"}
    assert any(line.startswith("... ERROR: Backup of c$d failed: ") and "already exists" in line
               for line in result.stdout.decode("utf-8").splitlines()), says(result)


def test_a_database_failing_in_restore_does_not_stop_the_others(tmp_path):
    names = SPECIAL[:6]
    with server(names) as stub:
        result = run_port(["-b", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
    refuse = lambda index, method, path: (Fault("status", status=403, body=FORBIDDEN)
                                          if method == "POST" and database_of(path) == "i_j" else None)
    with server(names, faults=refuse) as stub:
        before = contents(stub, names)
        delete_all(stub, names)
        result = run_port(["-r", "-c", "-a", "1", "-d", "*", "-f", "dumps", "--json"], tmp_path, server=stub.url)
        assert result.returncode == 1, says(result)
        del before["i_j"]
        assert_restored(stub, before)
    assert any(line.startswith("... ERROR: Restore of i_j failed: ") for line in
               result.stdout.decode("utf-8").splitlines()), says(result)
    report = last_json(result.stdout)
    assert report["ok"] is False and "i_j" in report["error"]
    assert [entry["db"] for entry in report["databases"] if not entry["ok"]] == ["i_j"]


# -- several at once --------------------------------------------------------------

@pytest.mark.parametrize("jobs, most", [(None, 1), ("3", 3)])
def test_jobs_backs_up_and_restores_that_many_databases_at_once(jobs, most, tmp_path):
    names = ["db%02d" % i for i in range(8)]
    extra = ["--jobs", jobs] if jobs else []
    slow = lambda index, method, path: (Fault("delay", seconds=0.5)
                                        if endpoint_of(path) in ("_all_docs", "_bulk_docs") else None)
    with server(names, faults=slow) as stub:
        result = run_port(["-b", "-d", "*", "-f", "dumps", *extra], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert stub.most_busy == most
        assert listing(tmp_path / "dumps") == sorted(file_name(name) for name in names)
        for name in names:
            assert (tmp_path / "dumps" / file_name(name)).read_bytes() == single_backup(
                stub, name, tmp_path / "single"), name
        before = contents(stub, names)
        delete_all(stub, names)
        stub.most_busy = 0
        result = run_port(["-r", "-c", "-d", "*", "-f", "dumps", *extra], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        assert stub.most_busy == most
        assert_restored(stub, before)


def test_a_signal_stops_every_database_and_leaves_only_whole_files(tmp_path):
    names = ["db%02d" % i for i in range(12)]
    slow = lambda index, method, path: Fault("delay", seconds=0.4) if endpoint_of(path) == "_all_docs" else None
    with server(names, faults=slow) as stub:
        process = start_port(["-b", "-d", "*", "-f", "dumps", "--jobs", "2"], tmp_path, server=stub.port)
        _, stdout, _ = interrupt(process, signal.SIGTERM, lambda: (tmp_path / "dumps").is_dir() and any(
            name.endswith(".json") for name in os.listdir(tmp_path / "dumps")), seconds=60)
        assert process.returncode == 143, stdout
        left = listing(tmp_path / "dumps")
        assert left and len(left) < len(names), left
        assert all(name.endswith(".json") and not name.startswith(".") for name in left), left
        for name in left:
            db = name[:-len(".json")]
            assert (tmp_path / "dumps" / name).read_bytes() == single_backup(stub, db, tmp_path / "single")
    assert stdout.decode().splitlines()[-1].startswith("... ERROR: Interrupted by SIGTERM")


# -- what is refused, before any request ---------------------------------------------

def test_a_pattern_matching_nothing_is_an_error(tmp_path):
    with server(SPECIAL[:3]) as stub:
        result = run_port(["-b", "-d", "nothing*", "-f", "dumps", "--json"], tmp_path, server=stub.url)
        assert result.returncode == 1, says(result)
        assert not (tmp_path / "dumps").exists() or listing(tmp_path / "dumps") == []
        assert last_json(result.stdout)["ok"] is False
        assert any(line.startswith("... ERROR: ") and "nothing*" in line
                   for line in result.stdout.decode("utf-8").splitlines()), says(result)
        result = run_port(["-b", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        stub.requests.clear()
        result = run_port(["-r", "-d", "nothing*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 1, says(result)
        assert not any(r.method in ("PUT", "POST", "DELETE") for r in stub.requests)


@pytest.mark.parametrize("extra_files", [
    {"notes.txt": b"not a dump\n"},
    {"i_j.json.gz": gzip.compress(b'{"new_edits":false,"docs":[\n]}\n')},
], ids=["not-a-dump", "json-and-gz-for-one-database"])
def test_restore_refuses_a_folder_it_cannot_read_as_one_dump_a_database_before_any_request(extra_files, tmp_path):
    with server(SPECIAL[:9]) as stub:
        result = run_port(["-b", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        for name, data in extra_files.items():
            (tmp_path / "dumps" / name).write_bytes(data)
        stub.requests.clear()
        result = run_port(["-r", "-c", "-d", "*", "-f", "dumps"], tmp_path, server=stub.url)
        assert result.returncode == 1, says(result)
        assert stub.requests == []
    line = result.stdout.decode("utf-8").splitlines()[-1]
    assert line.startswith("... ERROR: ") and list(extra_files)[0] in line, line


@pytest.mark.parametrize("mode, target", [("-b", "-"), ("-b", "afile"), ("-r", "afile"), ("-r", "missing")])
def test_a_pattern_needs_a_folder(mode, target, tmp_path):
    (tmp_path / "afile").write_bytes(b'{"new_edits":false,"docs":[\n]}\n')
    with server(SPECIAL[:3]) as stub:
        result = run_port([mode, "-d", "*", "-f", target], tmp_path, server=stub.url)
        assert result.returncode == 1, says(result)
        assert stub.requests == []
    assert result.stdout.decode("utf-8").splitlines()[-1].startswith("... ERROR: ")


# -- many databases ---------------------------------------------------------------

def peak_rss_kib(cwd, url, args):
    """Run the port; returns (exit code, its own peak RSS in KiB)."""
    with open(cwd / "stdout", "wb") as out:
        process = start_port(args, cwd, server=url, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
    return process.returncode, usage.ru_maxrss


def many(count):
    return ["n%04d" % i for i in range(count)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB")
def test_a_thousand_databases_keep_memory_flat_and_the_list_is_read_in_pages(tmp_path):
    rss = {}
    for count in (100, 1000):
        cwd = tmp_path / str(count)
        cwd.mkdir()
        names = many(count)
        with seed(CouchStub(), names, SYSTEM) as stub:
            code, rss["backup", count] = peak_rss_kib(cwd, stub.url, ["-b", "-q", "-d", "*", "-f", "dumps",
                                                                      "--jobs", "4"])
            assert code == 0, (cwd / "stdout").read_bytes()[-2000:]
            assert len(listing(cwd / "dumps")) == count
            lists = [r for r in stub.requests if r.path.startswith("/_all_dbs")]
            if count == 1000:
                assert len(lists) >= 2, [r.path for r in lists]
            assert all(0 < int(r.query.get("limit", 0)) <= 1000 for r in lists), [r.path for r in lists]
            reads = [database_of(r.path) for r in stub.requests if endpoint_of(r.path) == "_all_docs"]
            assert sorted(reads) == names   # each database read once, none twice
            before = contents(stub, names[::97])
            delete_all(stub, names)
            stub.requests.clear()
            code, rss["restore", count] = peak_rss_kib(cwd, stub.url, ["-r", "-q", "-c", "-d", "*", "-f", "dumps",
                                                                       "--jobs", "4"])
            assert code == 0, (cwd / "stdout").read_bytes()[-2000:]
            assert sorted(stub.store.databases) == sorted(names + SYSTEM)
            assert_restored(stub, before)
            lists = [r for r in stub.requests if r.path.startswith("/_all_dbs")]
            assert all(0 < int(r.query.get("limit", 0)) <= 1000 for r in lists), [r.path for r in lists]
    for mode in ("backup", "restore"):
        growth = rss[mode, 1000] - rss[mode, 100]
        assert growth < 12 * 1024, "%s: %d KiB more for 1,000 databases than for 100" % (mode, growth)


@pytest.mark.parametrize("count", [3, 999, 1000, 1001, 2500])
def test_a_server_that_ignores_limit_on_all_dbs_is_read_once_and_never_in_a_loop(count, tmp_path):
    names = many(count)
    names.insert(count // 2, "target")
    with seed(CouchStub(all_dbs_paging=False), names, SYSTEM) as stub:
        result = run_port(["-b", "-d", "targ*", "-f", "dumps"], tmp_path, server=stub.url, timeout=60)
        assert result.returncode == 0, says(result)
        assert listing(tmp_path / "dumps") == ["target.json"]
        assert len([r for r in stub.requests if r.path.startswith("/_all_dbs")]) <= 2


# -- generated names ------------------------------------------------------------------

NAME = st.from_regex(r"\A[a-z][a-z0-9_$()+/-]{0,30}\Z")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.sets(NAME, min_size=1, max_size=5))
def test_any_allowed_name_goes_to_a_file_and_back_under_the_same_name(names, tmp_path_factory):
    folder = tmp_path_factory.mktemp("names")
    names = sorted(names)
    with server(names, []) as stub:
        argv = ["-H", "127.0.0.1", "-P", str(stub.port), "-d", "*", "-f", str(folder / "dumps"), "-q"]
        code, out, err = run_in_process(["-b", *argv])
        assert code == 0, (out, err)
        assert listing(folder / "dumps") == sorted(file_name(name) for name in names)
        before = contents(stub, names)
        delete_all(stub, names)
        code, out, err = run_in_process(["-r", "-c", *argv])
        assert code == 0, (out, err)
        assert sorted(stub.store.databases) == names
        assert_restored(stub, before)


def help_entry(text, option):
    """The words of ``--help``'s entry for ``option``, its continuation lines included."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(option))
    entry = [lines[start]]
    for line in lines[start + 1:]:
        if not line.strip() or line.strip().startswith("-"):
            break
        entry.append(line)
    return " ".join(" ".join(entry).split())


def test_help_lists_the_pattern_forms():
    code, out, _ = run_in_process(["--help"])
    text = out.decode()
    assert code == 0
    assert "--exclude PATTERN" in text
    assert "-d PATTERN" in text
    assert "backup" in help_entry(text, "--jobs").lower()


# -- PouchDB Server --------------------------------------------------------------------

@pytest.fixture(scope="module")
def empty_pouchdb(pouchdb_url):
    """A PouchDB Server of this module's own: a pattern sees every database."""
    import pouchdb_server   # installed (or skipped) by the pouchdb_url fixture
    with pouchdb_server.PouchDBServer() as own:
        yield own.url


def pouch_rows(url, name):
    reply = http("GET", "%s/%s/_all_docs?include_docs=true&attachments=true" % (url, quote(name, safe="")))
    return {row["id"]: row["doc"] for row in reply["rows"]}


# PouchDB Server 4.2 drops "/" from a database name ("a/b" is stored as "ab"), so no name here holds one.
POUCH_NAMES = [name for name in NAMES if "/" not in name] + ["slash-less", "p(q)r", "s$t+u"]


def test_pouchdb_every_database_backed_up_deleted_and_restored(empty_pouchdb, tmp_path):
    url = empty_pouchdb
    for index, name in enumerate(POUCH_NAMES):
        http("PUT", "%s/%s" % (url, quote(name, safe="")))
        docs = documents_of(name, index)
        if docs:
            http("POST", "%s/%s/_bulk_docs" % (url, quote(name, safe="")), {"docs": docs, "new_edits": False})
    assert sorted(n for n in http("GET", url + "/_all_dbs") if not n.startswith("_")) == sorted(POUCH_NAMES)
    system = {name: http("GET", "%s/%s" % (url, name))["update_seq"] for name in ("_users", "_replicator")}
    before = {name: pouch_rows(url, name) for name in POUCH_NAMES}
    assert any("_attachments" in doc for doc in before[ATTACHMENTS].values())

    result = run_port(["-b", "-z", "-d", "*", "-f", "dumps", "--jobs", "4", "--json"], tmp_path, server=url)
    assert result.returncode == 0, says(result)
    assert listing(tmp_path / "dumps") == sorted(file_name(name, compress=True) for name in POUCH_NAMES)
    assert len(last_json(result.stdout)["databases"]) == len(POUCH_NAMES)

    for name in POUCH_NAMES:
        http("DELETE", "%s/%s" % (url, quote(name, safe="")))
    result = run_port(["-r", "-c", "-d", "*", "-f", "dumps", "--jobs", "3"], tmp_path, server=url)
    assert result.returncode == 0, says(result)
    assert set(success_lines(result)) == set(POUCH_NAMES)
    for name in POUCH_NAMES:
        after = pouch_rows(url, name)
        assert sorted(after) == sorted(before[name]), name
        for doc_id, doc in before[name].items():
            if doc_id.startswith("_design/"):
                strip = lambda d: {k: v for k, v in d.items() if k != "_rev"}
                assert strip(after[doc_id]) == strip(doc), (name, doc_id)
            else:
                assert after[doc_id] == doc, (name, doc_id)
    assert {name: http("GET", "%s/%s" % (url, name))["update_seq"] for name in system} == system


def test_pouchdb_complete_backup_of_every_database_keeps_conflicts(empty_pouchdb, tmp_path):
    url = empty_pouchdb
    names = ["kk1-conflicts", "kk2$conflicts"]
    for name in names:
        http("PUT", "%s/%s" % (url, quote(name, safe="")))
        http("POST", "%s/%s/_bulk_docs" % (url, quote(name, safe="")), {"new_edits": False, "docs": [
            {"_id": "x", "_rev": "2-bb", "_revisions": {"start": 2, "ids": ["bb", "aa"]}, "v": 1},
            {"_id": "x", "_rev": "2-cc", "_revisions": {"start": 2, "ids": ["cc", "aa"]}, "v": 2},
            {"_id": "y", "_rev": "1-dd", "v": 3}]})
    result = run_port(["-b", "--complete", "-d", "kk*", "-f", "dumps"], tmp_path, server=url)
    assert result.returncode == 0, says(result)
    for name in names:
        http("DELETE", "%s/%s" % (url, quote(name, safe="")))
    result = run_port(["-r", "-c", "-d", "kk*", "-f", "dumps"], tmp_path, server=url)
    assert result.returncode == 0, says(result)
    for name in names:
        doc = http("GET", "%s/%s/x?conflicts=true" % (url, quote(name, safe="")))
        assert {doc["_rev"], *doc["_conflicts"]} == {"2-bb", "2-cc"}, doc


def test_two_signals_while_backups_hang_mid_reply_leave_no_file(tmp_path):
    names = ["db%02d" % i for i in range(4)]
    # Every _all_docs reply stops after its first bytes and the server says nothing more for a minute.
    hang = lambda index, method, path: Fault("trickle", body=b'{"total_rows":5,"offset":0,"rows":[\r\n',
                                             seconds=60) if endpoint_of(path) == "_all_docs" else None
    with server(names, faults=hang) as stub:
        process = start_port(["-b", "-d", "*", "-f", "dumps", "--jobs", "2"], tmp_path, server=stub.port)
        _, stdout, _ = interrupt(process, signal.SIGTERM, lambda: (tmp_path / "dumps").is_dir()
                                 and len(os.listdir(tmp_path / "dumps")) == 2,
                                 before=lambda: process.send_signal(signal.SIGTERM) or time.sleep(0.5), seconds=30)
        assert process.returncode == 143, stdout
        assert os.listdir(tmp_path / "dumps") == []


# -- incremental backups of a whole server ----------------------------------------------

INCREMENT_LINE = re.compile(r"\.\.\. INFO: Backed up (\S+): (\d+) documents, [\d.]+ MB in [\d.]+ s \((.*)\)\Z")


def every_leaf(stub, names):
    return {name: {doc_id: stub.leaves_of(name, doc_id) for doc_id in stub.store.databases[name]}
            for name in names}


def test_since_a_folder_takes_each_databases_increment_from_its_own_file_and_backs_up_a_new_one_whole(tmp_path):
    from test_incremental import StubChanges
    from test_complete import dump_lines
    names = ["a/b", "c$d", "db01", "db02", ATTACHMENTS]
    with server(names, system=[]) as stub:
        result = run_port(["-b", "-d", "*", "--complete", "-f", "full"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        StubChanges(stub, "a/b").update(["d00", "d01"], {"round": 1})
        StubChanges(stub, "db02").delete(["d00"])
        StubChanges(stub, ATTACHMENTS).conflict(["d01"], "other")
        stub.create("new(db)")
        StubChanges(stub, "new(db)").add([{"_id": "n%d" % k, "k": k} for k in range(3)])
        result = run_port(["-b", "-d", "*", "--since", "full", "-f", "inc", "--json"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        told = {m.group(1): (int(m.group(2)), m.group(3)) for m in map(INCREMENT_LINE.match,
                result.stdout.decode().splitlines()) if m}
        assert told["new(db)"] == (3, "full, no earlier backup in full"), told
        assert {name: kind.split(" ")[:2] for name, (_, kind) in told.items() if name != "new(db)"} == {
            name: ["increment", "since"] for name in names}, told
        changed = {"a/b": ["d00", "d01"], "c$d": [], "db01": [], "db02": ["d00"], ATTACHMENTS: ["d01"],
                   "new(db)": ["n0", "n1", "n2"]}
        for name, ids in changed.items():
            lines = dump_lines((tmp_path / "inc" / file_name(name)).read_bytes())
            assert sorted({doc["_id"] for doc in lines}) == ids, name
        entries = {entry["db"]: entry for entry in last_json(result.stdout)["databases"]}
        assert "since" not in entries["new(db)"] and all("since" in entries[name] for name in names), entries
        before = every_leaf(stub, changed)
        delete_all(stub, changed)
        for folder in ("full", "inc"):
            result = run_port(["-r", "-c", "-d", "*", "-f", folder], tmp_path, server=stub.url)
            assert result.returncode == 0, says(result)
        assert every_leaf(stub, changed) == before


def test_since_a_folder_whose_file_is_refused_fails_that_database_alone(tmp_path):
    names = ["db01", "db02", "db03"]
    with server(names, system=[]) as stub:
        result = run_port(["-b", "-d", "*", "--complete", "-f", "full"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        cut = tmp_path / "full" / "db02.json"
        cut.write_bytes(cut.read_bytes()[:-5])
        (tmp_path / "full" / "db03.json").write_bytes((tmp_path / "full" / "db01.json").read_bytes())
        result = run_port(["-b", "-d", "*", "--since", "full", "-f", "inc", "--json"], tmp_path, server=stub.url)
        assert result.returncode == 1, says(result)
        assert listing(tmp_path / "inc") == ["db01.json"]
        errors = {entry["db"]: entry.get("error", "") for entry in last_json(result.stdout)["databases"]}
        assert errors["db01"] == ""
        assert "cut" in errors["db02"] or "whole" in errors["db02"] or "end" in errors["db02"], errors
        assert "db01" in errors["db03"], errors
        assert "Backup of db02 failed (increment of full/db02.json)" in result.stdout.decode(), says(result)


def test_since_must_name_a_folder_with_a_pattern(tmp_path):
    with server(["db01"], system=[]) as stub:
        (tmp_path / "file.json").write_text("x")
        for since in ("file.json", "missing"):
            result = run_port(["-b", "-d", "*", "--since", since, "-f", "inc"], tmp_path, server=stub.url)
            assert result.returncode == 1, says(result)
            assert "names the folder of an earlier backup" in result.stdout.decode(), says(result)
            assert not (tmp_path / "inc").exists()
