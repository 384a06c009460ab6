"""Issue #11: large databases that fail in the middle.

A backup that survives a dropped connection (--resume), a restore that
resumes (-s, --resume), paces itself (-D) and waits out a server that pushes
back (429, 503 with Retry-After, 413).  Every test runs the port as a
subprocess against tests/tools/couch_stub.py (fault injection), and where the
issue asks for it against a real PouchDB Server too.
"""

import gzip
import json
import os
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from couch_stub import CouchStub, Fault, couchdb_chunks, sized_chunks
from helpers import dump_of, http, run_port, says, start_port, stop_after_chunks, stub_with


def numbered_docs(count, size=40):
    return {"doc%05d" % i: {"value": i, "text": "x" * (size + i % 17)} for i in range(count)}


def all_docs_gets(stub):
    return [r for r in stub.requests if r.method == "GET" and "/_all_docs" in r.path]


def startkey_of(request):
    values = parse_qs(urlsplit(request.path).query).get("startkey")
    return json.loads(values[0]) if values else None


def nth_get_faults(faults_by_number):
    """Faults for the n-th _all_docs GET (1-based): {n: Fault}."""
    seen = [0]
    lock = threading.Lock()

    def faults(index, method, path):
        if method != "GET" or "/_all_docs" not in path:
            return None
        with lock:
            seen[0] += 1
            return faults_by_number.get(seen[0])
    return faults


def backup(tmp_path, stub, extra=(), name="out"):
    cwd = tmp_path / name
    cwd.mkdir()
    with stub:
        result = run_port(["-b", "-d", "db", "-f", "dump.json", *extra], cwd, server=stub.url)
    return result, cwd


def reference_backup(tmp_path, docs, extra=(), **options):
    """The file an uninterrupted backup of the same database gives."""
    result, cwd = backup(tmp_path, stub_with(docs, **options), extra, name="reference")
    assert result.returncode == 0, says(result)
    return cwd


# -- backup --resume ------------------------------------------------------------

def test_backup_cut_twice_with_resume_gives_the_file_of_an_uninterrupted_backup(tmp_path):
    docs = numbered_docs(1000)
    reference = reference_backup(tmp_path, docs)
    stub = stub_with(docs, faults=nth_get_faults({1: Fault("rows_cut", rows=700),
                                                  2: Fault("rows_cut", rows=151)}))   # row 700 again, then 150
    result, cwd = backup(tmp_path, stub, ["--resume"])
    assert result.returncode == 0, says(result)
    assert (cwd / "dump.json").read_bytes() == (reference / "dump.json").read_bytes()
    assert os.listdir(cwd) == ["dump.json"]
    gets = all_docs_gets(stub)
    assert [startkey_of(r) for r in gets] == [None, "doc00699", "doc00849"]
    assert sum(1 for line in result.stdout.splitlines() if line.startswith(b"... WARN: The transfer broke off")) == 2


@pytest.mark.parametrize("chunking", [couchdb_chunks, sized_chunks(1 << 20), sized_chunks(7)],
                         ids=["couchdb-1490", "1MiB", "7-bytes"])
def test_resume_does_not_depend_on_how_the_server_chunks_its_reply(chunking, tmp_path):
    docs = numbered_docs(1000)
    reference = reference_backup(tmp_path, docs)
    stub = stub_with(docs, chunking=chunking, faults=nth_get_faults({1: Fault("rows_cut", rows=700),
                                                                     2: Fault("rows_cut", rows=151)}))
    result, cwd = backup(tmp_path, stub, ["--resume"])
    assert result.returncode == 0, says(result)
    assert (cwd / "dump.json").read_bytes() == (reference / "dump.json").read_bytes()
    assert [startkey_of(r) for r in all_docs_gets(stub)] == [None, "doc00699", "doc00849"]


def test_backup_cut_without_resume_fails_as_today_and_leaves_no_file(tmp_path):
    stub = stub_with(numbered_docs(1000), faults=nth_get_faults({1: Fault("rows_cut", rows=700)}))
    result, cwd = backup(tmp_path, stub)
    assert result.returncode == 1, says(result)
    assert os.listdir(cwd) == []
    assert result.stdout.splitlines()[-1] == b"... ERROR: Curl encountered an issue whilst dumping the database."
    assert len(all_docs_gets(stub)) == 1


def test_reply_that_ends_cleanly_without_its_footer_is_resumed_too(tmp_path):
    docs = numbered_docs(300)
    reference = reference_backup(tmp_path, docs)
    stub = stub_with(docs, faults=nth_get_faults({1: Fault("rows_end", rows=120)}))
    result, cwd = backup(tmp_path, stub, ["--resume"])
    assert result.returncode == 0, says(result)
    assert (cwd / "dump.json").read_bytes() == (reference / "dump.json").read_bytes()
    assert [startkey_of(r) for r in all_docs_gets(stub)] == [None, "doc00119"]


SPECIAL_IDS = ['say "hi"', "a/b/c", "1+1=2", "caf\u00e9 \u65e5\u672c", "with spaces ", "back\\slash", "%41&x=y#"]


@pytest.mark.parametrize("special", SPECIAL_IDS)
def test_startkey_is_the_json_of_the_last_complete_id_percent_encoded(special, tmp_path):
    docs = {"a%03d" % i: {"v": i} for i in range(10)}
    docs[special] = {"v": "special"}
    docs.update({"z%03d" % i: {"v": i} for i in range(10)})
    cut_after = sorted(docs).index(special) + 1
    reference = reference_backup(tmp_path, docs)
    stub = stub_with(docs, faults=nth_get_faults({1: Fault("rows_cut", rows=cut_after)}))
    result, cwd = backup(tmp_path, stub, ["--resume"])
    assert result.returncode == 0, says(result)
    resumed = all_docs_gets(stub)[1]
    query = urlsplit(resumed.path).query
    assert "startkey=" in query and not any(c in query.split("startkey=", 1)[1] for c in ' "/+&#')
    assert startkey_of(resumed) == special
    assert (cwd / "dump.json").read_bytes() == (reference / "dump.json").read_bytes()


def test_document_deleted_before_the_resume_loses_no_other_row(tmp_path):
    """Not skip=1: the row after the last one written comes whatever happened to it."""
    docs = numbered_docs(50)
    stub = stub_with(docs)

    def faults(index, method, path):
        if method == "GET" and "/_all_docs" in path and "startkey" not in path:
            return Fault("rows_cut", rows=20)
        if method == "GET" and "startkey" in path:
            stub.store.databases["db"].pop("doc00019", None)   # deleted in between
        return None
    stub.faults = faults
    result, cwd = backup(tmp_path, stub, ["--resume"])
    assert result.returncode == 0, says(result)
    lines = (cwd / "dump.json").read_bytes().splitlines()
    ids = [json.loads(line.rstrip(b","))["_id"] for line in lines[1:-1]]
    assert ids == sorted(docs)   # doc00019 was written before the cut; nothing after it lost


def test_resume_gives_up_after_a_attempts_without_progress(tmp_path):
    faults = nth_get_faults({n: Fault("rows_cut", rows=0 if n > 1 else 30) for n in range(1, 10)})
    stub = stub_with(numbered_docs(100), faults=faults)
    result, cwd = backup(tmp_path, stub, ["--resume", "-a", "2"])
    assert result.returncode == 1, says(result)
    assert os.listdir(cwd) == []
    assert len(all_docs_gets(stub)) == 3     # the first request and two resumes
    assert result.stdout.splitlines()[-1] == b"... ERROR: Curl encountered an issue whilst dumping the database."


def test_resume_that_makes_progress_starts_the_attempts_again(tmp_path):
    docs = numbered_docs(100)
    reference = reference_backup(tmp_path, docs)
    cuts = {1: Fault("rows_cut", rows=10), 2: Fault("rows_cut", rows=10), 3: Fault("rows_cut", rows=10)}
    stub = stub_with(docs, faults=nth_get_faults(cuts))
    result, cwd = backup(tmp_path, stub, ["--resume", "-a", "1"])
    assert result.returncode == 0, says(result)
    assert (cwd / "dump.json").read_bytes() == (reference / "dump.json").read_bytes()


def test_total_rows_of_the_first_reply_still_checks_the_count(tmp_path):
    docs = numbered_docs(60)
    stub = stub_with(docs)

    def faults(index, method, path):
        if method == "GET" and "startkey" not in path:
            return Fault("rows_cut", rows=30)
        for doc_id in list(stub.store.databases["db"])[40:]:   # 20 deleted before the rest is read
            del stub.store.databases["db"][doc_id]
        return None
    stub.faults = faults
    result, cwd = backup(tmp_path, stub, ["--resume"])
    assert result.returncode == 1, says(result)
    assert b"the reply holds 40 rows but the database has 60 documents" in result.stdout
    assert os.listdir(cwd) == []


def test_compressed_backup_resumed_decompresses_to_the_uninterrupted_file(tmp_path):
    docs = numbered_docs(400)
    reference = reference_backup(tmp_path, docs)
    stub = stub_with(docs, faults=nth_get_faults({1: Fault("rows_cut", rows=250)}))
    result, cwd = backup(tmp_path, stub, ["--resume", "-z"])
    assert result.returncode == 0, says(result)
    assert gzip.decompress((cwd / "dump.json.gz").read_bytes()) == (reference / "dump.json").read_bytes()


def test_one_line_layout_as_pouchdb_server_writes_it_is_resumed_too(tmp_path):
    docs = numbered_docs(200)
    reference = reference_backup(tmp_path, docs, layout="one_line")
    stub = stub_with(docs, layout="one_line",
                     faults=nth_get_faults({1: Fault("rows_cut", rows=80), 2: Fault("rows_end", rows=71)}))
    result, cwd = backup(tmp_path, stub, ["--resume"])
    assert result.returncode == 0, says(result)
    assert (cwd / "dump.json").read_bytes() == (reference / "dump.json").read_bytes()
    assert [startkey_of(r) for r in all_docs_gets(stub)] == [None, "doc00079", "doc00149"]


# -- back-pressure on the backup's request ---------------------------------------

def test_backup_answered_429_with_retry_after_waits_and_succeeds(tmp_path):
    docs = numbered_docs(30)
    reference = reference_backup(tmp_path, docs)
    stub = stub_with(docs, faults=nth_get_faults({1: Fault("status", 429, b'{"error":"too_many_requests"}\n',
                                                           headers={"Retry-After": "1"})}))
    started = time.monotonic()
    result, cwd = backup(tmp_path, stub)
    assert result.returncode == 0, says(result)
    assert time.monotonic() - started >= 1.0
    assert (cwd / "dump.json").read_bytes() == (reference / "dump.json").read_bytes()
    assert len(all_docs_gets(stub)) == 2
    assert b"HTTP 429" in result.stderr


def test_backup_answered_503_without_retry_after_fails_as_today(tmp_path):
    stub = stub_with(numbered_docs(30), faults=nth_get_faults({1: Fault("status", 503,
                                                                      b'{"error":"service_unavailable"}\n')}))
    result, cwd = backup(tmp_path, stub, ["--resume"])
    assert result.returncode == 1, says(result)
    assert result.stdout.splitlines()[-1] == b'... ERROR: CouchDB reported: {"error":"service_unavailable"}'
    assert len(all_docs_gets(stub)) == 1 and os.listdir(cwd) == []


# -- restore: helpers -------------------------------------------------------------

def dump_bytes(count, designs=0):
    """A dump of `designs` design documents then `count` documents, as the port writes it."""
    docs = [json.dumps({"_id": "_design/d%d" % i, "_rev": "1-d%d" % i,
                        "views": {"v": {"map": "function(doc){emit(doc._id)}"}}}, separators=(",", ":")).encode()
            for i in range(designs)]
    docs += [json.dumps({"_id": "doc%05d" % i, "_rev": "1-%05x" % i, "value": i}, separators=(",", ":")).encode()
             for i in range(count)]
    return dump_of(docs)


def restore(tmp_path, stub, args, dump, name="run"):
    cwd = tmp_path / name
    cwd.mkdir()
    (cwd / "dump.json").write_bytes(dump)
    with stub:
        started = time.monotonic()
        result = run_port(["-r", "-d", "db", "-f", "dump.json", *args], cwd, server=stub.url)
        result.seconds = time.monotonic() - started
    return result


def bulk_posts(stub):
    return [r for r in stub.requests if r.method == "POST" and r.path.endswith("/_bulk_docs")]


def sent_ids(requests):
    return [doc["_id"] for r in requests for doc in json.loads(r.body)["docs"]]


def status_then_ok(status, headers, times):
    """Faults: the first `times` _bulk_docs POSTs answered `status` with `headers`."""
    seen = [0]
    lock = threading.Lock()

    def faults(index, method, path):
        if method != "POST" or not path.endswith("/_bulk_docs"):
            return None
        with lock:
            seen[0] += 1
            if seen[0] <= times:
                return Fault("status", status, b'{"error":"too_many_requests","reason":"slow down"}\n',
                             headers=headers)
        return None
    return faults


def expected_store(count):
    return {"doc%05d" % i for i in range(count)}


# -- back-pressure in restore -------------------------------------------------------

@pytest.mark.parametrize("status, headers, times, at_least", [
    (429, {"Retry-After": "1"}, 1, 1.0),
    (429, {}, 3, 0.5 + 1 + 2),          # 1, 2, 4 s with jitter: at least half of each
    (503, {"Retry-After": "1"}, 2, 2.0),
])
def test_push_back_is_waited_out_without_using_an_attempt(status, headers, times, at_least, tmp_path):
    stub = CouchStub(databases=("db",), faults=status_then_ok(status, headers, times))
    result = restore(tmp_path, stub, ["-a", "1"], dump_bytes(10))
    assert result.returncode == 0, says(result)
    assert set(stub.store.databases["db"]) == expected_store(10)
    posts = bulk_posts(stub)
    assert len(posts) == times + 1
    assert all(p.body == posts[0].body for p in posts)
    assert posts[-1].time - posts[0].time >= at_least
    assert b"WARN" not in result.stdout, says(result)
    assert result.stderr.count(b"no attempt used") == times


def test_503_without_retry_after_uses_the_attempts_as_today(tmp_path):
    stub = CouchStub(databases=("db",), faults=status_then_ok(503, {}, 5))
    result = restore(tmp_path, stub, ["-a", "2"], dump_bytes(10))
    assert result.returncode == 1, says(result)
    assert len(bulk_posts(stub)) == 2
    assert result.stdout.splitlines()[-3:] == [
        b"... WARN: Import of dump.json failed - Attempt 1/2 - Retrying...",
        b"... ERROR: Import of dump.json failed.",
        b'... ERROR: Error message was:   {"error":"too_many_requests","reason":"slow down"}']


def test_push_back_wait_is_bounded_then_the_usual_failure(monkeypatch, tmp_path):
    """In-process, with a 3 s budget instead of 10 minutes: then 429 is an ordinary failure."""
    import io
    import couchdb_dump as cd
    monkeypatch.setattr(cd.BackPressure, "BUDGET", 3.0)
    (tmp_path / "dump.json").write_bytes(dump_bytes(5))
    monkeypatch.chdir(tmp_path)
    stub = CouchStub(databases=("db",), faults=status_then_ok(429, {"Retry-After": "1"}, 100))
    out = io.BytesIO()
    with stub:
        started = time.monotonic()
        code = cd.main(["-r", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "db", "-f", "dump.json", "-a", "2"],
                       environ={}, stdout=out)
        seconds = time.monotonic() - started
    assert code == 1
    lines = out.getvalue().splitlines()
    assert lines[-3] == b"... WARN: Import of dump.json failed - Attempt 1/2 - Retrying..."
    assert lines[-2] == b"... ERROR: Import of dump.json failed."
    assert 3.0 <= seconds < 10
    assert 4 <= len(bulk_posts(stub)) <= 6    # 3 s of waits, then two attempts


# -- 413: halves ---------------------------------------------------------------------

def test_413_splits_a_20_document_chunk_in_halves_until_the_server_takes_them(tmp_path):
    stub = CouchStub(databases=("db",), max_docs=6)
    result = restore(tmp_path, stub, ["-l", "21"], dump_bytes(20))   # chunk aaa: the header and 20 documents
    assert result.returncode == 0, says(result)
    assert set(stub.store.databases["db"]) == expected_store(20)
    stored = [ids for ids in (sent_ids([p]) for p in bulk_posts(stub)) if len(ids) <= 6]
    accepted = [doc_id for ids in stored for doc_id in ids]
    assert sorted(accepted) == sorted(expected_store(20))      # every document stored exactly once
    assert b"... WARN: dump.json.splitaaa is too large for the server (HTTP 413)" in result.stdout


def test_413_on_the_single_body_splits_it_too(tmp_path):
    stub = CouchStub(databases=("db",), max_docs=6)
    result = restore(tmp_path, stub, [], dump_bytes(20))
    assert result.returncode == 0, says(result)
    assert set(stub.store.databases["db"]) == expected_store(20)


def test_single_document_still_too_large_is_reported_by_id_as_refused(tmp_path):
    stub = CouchStub(databases=("db",), max_docs=0)
    result = restore(tmp_path, stub, [], dump_bytes(3))
    assert result.returncode == 1, says(result)
    for i in range(3):
        assert (b'... ERROR: Document "doc%05d" was refused: too_large: ' % i) in result.stdout
    assert b"3 documents were refused by the server" in result.stdout


# -- -D -------------------------------------------------------------------------------

def test_delay_spaces_the_import_requests(tmp_path):
    stub = CouchStub(databases=("db",))
    result = restore(tmp_path, stub, ["-D", "0.3", "-l", "3"], dump_bytes(8, designs=2))
    assert result.returncode == 0, says(result)
    imports = [r for r in stub.requests if r.method in ("PUT", "POST")]
    assert len(imports) == 2 + 4
    gaps = [b.time - a.time for a, b in zip(imports, imports[1:])]
    assert min(gaps) >= 0.3, gaps


# -- -s ---------------------------------------------------------------------------------

def test_start_chunk_resumes_at_the_named_chunk_of_twelve(tmp_path):
    stub = CouchStub(databases=("db",))
    result = restore(tmp_path, stub, ["-l", "10", "-s", "dump.json.splitaaf"], dump_bytes(115))   # 117 lines: 12 chunks
    assert result.returncode == 0, says(result)
    posts = bulk_posts(stub)
    assert len(posts) == 7
    assert sent_ids(posts[:1])[0] == "doc00049"    # chunk f: lines 51-60, the 50th document first
    assert set(stub.store.databases["db"]) == {"doc%05d" % i for i in range(49, 115)}
    assert b"... INFO: Inserting dump.json.splitaaf" in result.stdout
    assert b"splitaae" not in result.stdout


def test_unknown_start_chunk_is_an_error_before_anything_is_sent(tmp_path):
    stub = CouchStub(databases=("db",))
    result = restore(tmp_path, stub, ["-l", "10", "-s", "dump.json.splitzzz"], dump_bytes(115))
    assert result.returncode == 1, says(result)
    assert stub.requests == []
    assert result.stdout.splitlines()[-1] == (
        b"... ERROR: -s dump.json.splitzzz names no chunk of this restore (its chunks: dump.json.splitaaa to"
        b" dump.json.splitaal). Nothing was sent to the server.")


def test_failed_restore_names_the_start_chunk_to_resume_with(tmp_path):
    def faults(index, method, path):
        if method == "POST" and path.endswith("/_bulk_docs") and len(bulk_seen) >= 3:
            return Fault("status", 500, b'{"error":"unknown_error","reason":"badarg"}\n')
        if method == "POST":
            bulk_seen.append(index)
        return None
    bulk_seen = []
    stub = CouchStub(databases=("db",), faults=faults)
    result = restore(tmp_path, stub, ["-l", "10", "-a", "1", "--json"], dump_bytes(115))
    assert result.returncode == 1, says(result)
    lines = result.stdout.splitlines()
    errors = [line for line in lines if line.startswith(b"... ERROR:")]
    assert errors[-1] == b"... ERROR: To resume this restore, run it again with -s dump.json.splitaad (or with --resume)."
    report = json.loads(lines[-1])
    assert report["resume"] == "-s dump.json.splitaad"
    assert "badarg" in report["error"]


def restore_twice(tmp_path, stub, dump, first_args, second_args, between=None):
    """Two runs against one stub kept running (its store carries over);
    returns both results and the requests of the second run."""
    results = []
    with stub:
        for number, args in enumerate((first_args, second_args)):
            cwd = tmp_path / ("run%d" % number)
            cwd.mkdir()
            (cwd / "dump.json").write_bytes(dump)
            if number == 1:
                mark = len(stub.requests)
                if between is not None:
                    between(stub)
            results.append(run_port(["-r", "-d", "db", "-f", "dump.json", *args], cwd, server=stub.url))
    return results[0], results[1], stub.requests[mark:]


@pytest.mark.parametrize("option", [["-s", "dump.json-nodesign.splitaab"], ["--resume"]])
def test_rerun_skips_design_documents_already_there_and_updates_changed_ones(option, tmp_path):
    def change_d1(stub):
        stub.store.databases["db"]["_design/d1"]["views"] = {"other": {"map": "function(doc){}"}}
    dump = dump_bytes(30, designs=2)
    first, second, requests = restore_twice(tmp_path, CouchStub(databases=("db",)), dump, ["-l", "10"],
                                            ["-l", "10"] + option, between=change_d1)
    assert first.returncode == 0, says(first)
    assert second.returncode == 0, says(second)
    puts = [r for r in requests if r.method == "PUT"]
    assert [r.path for r in puts] == ["/db/_design/d1"]          # d0 unchanged: left as it is
    assert json.loads(puts[0].body)["_rev"] == "1-stub"          # an update of the current revision
    assert b"conflict" not in second.stdout


def test_plain_rerun_of_a_restore_with_design_documents_fails_on_conflict_as_the_script(tmp_path):
    dump = dump_bytes(5, designs=1)
    first, second, _ = restore_twice(tmp_path, CouchStub(databases=("db",)), dump, ["-a", "1"], ["-a", "1"])
    assert first.returncode == 0 and second.returncode == 1
    assert b'"error":"conflict"' in second.stdout


# -- --resume in restore ---------------------------------------------------------------

def test_resume_after_a_restore_stopped_at_chunk_3_sends_only_the_missing_documents(tmp_path):
    stub = CouchStub(databases=("db",), faults=stop_after_chunks(2))
    dump = dump_bytes(100)
    first, second, requests = restore_twice(tmp_path, stub, dump, ["-l", "20", "-a", "1"],
                                            ["-l", "20", "--resume"], between=lambda s: setattr(s, "faults", None))
    # the script's options only: the -s value is told on stderr
    assert first.returncode == 1 and b"-s dump.json.splitaac" in first.stderr, says(first)
    assert second.returncode == 0, says(second)
    diffs = [r for r in requests if r.path.endswith("/_revs_diff")]
    posts = [r for r in requests if r.path.endswith("/_bulk_docs")]
    assert len(diffs) == 6                                   # one a chunk: 102 lines in chunks of 20
    assert sorted(sent_ids(posts)) == sorted("doc%05d" % i for i in range(39, 100))
    assert set(stub.store.databases["db"]) == expected_store(100)
    assert all(json.loads(r.body)["new_edits"] is False for r in posts)


def test_resume_of_a_finished_restore_sends_no_document(tmp_path):
    dump = dump_bytes(100, designs=2)
    first, second, requests = restore_twice(tmp_path, CouchStub(databases=("db",)), dump, ["-l", "20"],
                                            ["-l", "20", "--resume"])
    assert first.returncode == 0 and second.returncode == 0, says(second)
    assert [r for r in requests if r.path.endswith("/_bulk_docs") or r.method == "PUT"] == []
    assert len([r for r in requests if r.path.endswith("/_revs_diff")]) == 6


def test_resume_in_single_body_mode_sends_only_the_missing_documents(tmp_path):
    def lose_some(stub):   # as if they had never arrived (a deleted document's revision is known)
        for i in range(0, 50, 7):
            del stub.store.databases["db"]["doc%05d" % i]
            stub.store.known["db"].pop("doc%05d" % i)
    dump = dump_bytes(50)
    first, second, requests = restore_twice(tmp_path, CouchStub(databases=("db",)), dump, [], ["--resume"],
                                            between=lose_some)
    assert second.returncode == 0, says(second)
    posts = [r for r in requests if r.path.endswith("/_bulk_docs")]
    assert sorted(sent_ids(posts)) == ["doc%05d" % i for i in range(0, 50, 7)]


# -- on a real server: PouchDB Server ---------------------------------------------------

def pouch_restore(pouchdb_url, tmp_path, name, db, dump, args):
    cwd = tmp_path / name
    cwd.mkdir()
    (cwd / "dump.json").write_bytes(dump)
    return run_port(["-r", "-d", db, "-f", "dump.json", *args], cwd, server=pouchdb_url)


def pouch_db(pouchdb_url, db):
    return http("GET", pouchdb_url + "/" + db)


def test_resume_on_pouchdb_server_sends_only_what_is_missing_and_nothing_the_second_time(pouchdb_url, tmp_path):
    db = "i11-resume-%d" % os.getpid()
    full = dump_bytes(100, designs=2)
    lines = full.splitlines()
    # A restore that stopped after its first 3 chunks of 20 lines: the database holds what they carried.
    stopped = b"\n".join(lines[:60] + [lines[60].rstrip(b","), b"]}"]) + b"\n"
    first = pouch_restore(pouchdb_url, tmp_path, "first", db, stopped, ["-c", "-l", "20"])
    assert first.returncode == 0, says(first)
    before = pouch_db(pouchdb_url, db)
    assert before["doc_count"] == 60          # 2 design documents and 58 others
    second = pouch_restore(pouchdb_url, tmp_path, "second", db, full, ["-l", "20", "--resume"])
    assert second.returncode == 0, says(second)
    after = pouch_db(pouchdb_url, db)
    assert after["doc_count"] == 102
    # Each document sent is one update: only the 42 missing ones were (the design documents were not).
    assert after["update_seq"] - before["update_seq"] == 42
    third = pouch_restore(pouchdb_url, tmp_path, "third", db, full, ["-l", "20", "--resume"])
    assert third.returncode == 0, says(third)
    assert pouch_db(pouchdb_url, db)["update_seq"] == after["update_seq"]


def test_start_chunk_on_pouchdb_server_restores_from_the_named_chunk(pouchdb_url, tmp_path):
    db = "i11-start-%d" % os.getpid()
    dump = dump_bytes(115, designs=1)      # 118 lines less 1 design line: 12 chunks of 10
    result = pouch_restore(pouchdb_url, tmp_path, "run", db, dump, ["-c", "-l", "10", "-s",
                                                                     "dump.json-nodesign.splitaaf"])
    assert result.returncode == 0, says(result)
    ids = [row["id"] for row in http("GET", pouchdb_url + "/" + db + "/_all_docs")["rows"]]
    assert ids == ["_design/d0"] + ["doc%05d" % i for i in range(49, 115)]
    unknown = pouch_restore(pouchdb_url, tmp_path, "unknown", db, dump, ["-l", "10", "-s", "dump.json.splitaaf"])
    assert unknown.returncode == 1 and b"names no chunk of this restore" in unknown.stdout


def test_signal_while_waiting_out_a_push_back_stops_without_sending_again(tmp_path):
    import signal
    stub = CouchStub(databases=("db",), faults=status_then_ok(429, {"Retry-After": "30"}, 100))
    (tmp_path / "dump.json").write_bytes(dump_bytes(5))
    with stub:
        process = start_port(["-r", "-d", "db", "-f", "dump.json"], tmp_path, server=stub.url)
        deadline = time.monotonic() + 20
        while not bulk_posts(stub) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=20)
        assert time.monotonic() - started < 5
    assert process.returncode == 143
    assert len(bulk_posts(stub)) == 1
    assert b"... ERROR: Stopped by SIGTERM" in stdout
