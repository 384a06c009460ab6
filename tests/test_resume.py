"""Issue #11: large databases that fail in the middle.

A backup that survives a dropped connection (--resume), a restore that
resumes (-s, --resume), paces itself (-D) and waits out a server that pushes
back (429, 503 with Retry-After, 413).  Every test runs the port as a
subprocess against tests/couch_stub.py (fault injection), and where the
issue asks for it against a real PouchDB Server too.
"""

import gzip
import json
import os
import subprocess
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from couch_stub import CouchStub, Fault
from helpers import PROGRAM, clean_environment


def run_port(cwd, url, args, timeout=180):
    host, port = url.rsplit(":", 1)
    return subprocess.run([sys.executable, str(PROGRAM), "-H", host, "-P", port, *args], cwd=cwd,
                          env=clean_environment(), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


def says(result):
    return "rc=%d\nstdout:\n%s\nstderr:\n%s" % (result.returncode, result.stdout.decode("utf-8", "replace"),
                                                result.stderr.decode("utf-8", "replace")[-3000:])


def stub_with(docs, **options):
    """A stub holding database "db" with `docs` (id -> extra fields)."""
    stub = CouchStub(databases=("db",), **options)
    for doc_id, fields in docs.items():
        stub.store.databases["db"][doc_id] = dict({"_id": doc_id, "_rev": "1-%08x" % (hash(doc_id) & 0xffffffff)},
                                                  **fields)
    return stub


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
        result = run_port(cwd, stub.url, ["-b", "-d", "db", "-f", "dump.json", *extra])
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
