"""One large database read in parallel: `--jobs N` in a single-database backup
splits the `_all_docs` key space into N ranges, reads them at once and writes
them in key order (issue #18).

The file is byte for byte the one-stream backup's, with -z once decompressed;
each range is checked complete; a range cut short fails the backup (or is
resumed with --resume) with nothing left behind; a range that runs ahead of
the writer waits in a temporary file of its own beside the backup's, never in
memory.  Against tests/tools/couch_stub.py (ranges, faults, a speed per stream) and
PouchDB Server.
"""

import gzip
import json
import os
import signal
import threading
import time
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from couch_stub import CouchStub, Fault, endpoint_of
from helpers import FOOTER, HEADER, http, interrupt, run_in_process, run_port, says, start_port

# Ids that sort and escape awkwardly: JSON escapes, non-ASCII (some first), URL characters.
ODD_IDS = ['say "hi"', "back\\slash", "tab\there", "new\nline", "ctl\u0001x", "caf\u00e9", "x\u65e5\u672c",
           "\U0001d11e clef", "\u2028sep", "\u00e9 first", "\u65e5\u672c first", "~tilde", " space",
           "%2F&x=y#", "+plus", "a/b", "zz\u00ff", "\uffff last"]


def big_database(long_lines=True):
    """Documents whose sorted ids put a block of design documents where any
    even split into 2, 4 or 7 ranges has an edge: 900 ids before
    "_design/", 600 design documents, 900 after, and the odd ones."""
    docs = {}

    def add(doc_id, **fields):
        docs[doc_id] = dict({"_id": doc_id, "_rev": "1-%032x" % len(docs)}, **fields)
    for i in range(900):
        add("D%05d" % i, n=i, text="\u00e9t\u00e9 \"%d\" \\" % i)
    for i in range(600):
        add("_design/v%03d" % i, views={"all": {"map": "function(doc){emit(doc._id, %d)}" % i}})
    for i in range(900):
        add("d%05d" % i, n=i, text="x" * (i % 300))
    for doc_id in ODD_IDS:
        add(doc_id, odd=doc_id)
    if long_lines:
        add("D00450-long", blob="\u00e9" * (3 << 20))   # a 6 MB line, streamed as a long row
        for i in range(0, 900, 150):
            add("d%05d-wide" % i, blob="w" * 300000)
    return docs


def serving(docs, **options):
    """A stub server (not started) holding ``docs`` in database "big"."""
    stub = CouchStub(databases=["big"], **options)
    stub.store.databases["big"].update(docs)
    return stub


def backup_in_process(stub, folder, *extra, name="dump.json"):
    folder.mkdir(exist_ok=True)
    target = folder / name
    code, out, err = run_in_process(["-b", "-q", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "big",
                                     "-f", str(target), *extra])
    assert code == 0, (extra, out, err)
    assert sorted(os.listdir(folder)) == [name + (".gz" if "-z" in extra else "")], os.listdir(folder)
    data = (folder / os.listdir(folder)[0]).read_bytes()
    return gzip.decompress(data) if "-z" in extra else data


def document_reads(stub):
    """The `_all_docs` requests that fetched documents (not those that looked for split keys)."""
    return [r for r in stub.requests if endpoint_of(r.path) == "_all_docs" and r.query.get("include_docs") == "true"]


def dump_ids(data):
    lines = data.split(b"\n")
    assert lines[0] == HEADER and lines[-2:] == [FOOTER, b""]
    return [json.loads(line.rstrip(b","))["_id"] for line in lines[1:-2]]


# -- the same bytes ---------------------------------------------------------------

@pytest.fixture(scope="module")
def one_stream(tmp_path_factory):
    """The database and the file of its one-stream backup (today's)."""
    docs = big_database()
    with serving(docs) as stub:
        data = backup_in_process(stub, tmp_path_factory.mktemp("one-stream"))
    assert dump_ids(data) == sorted(docs)
    return docs, data


@pytest.mark.parametrize("jobs", ["1", "2", "4", "7"])
def test_every_number_of_ranges_gives_the_bytes_of_the_one_stream_backup(jobs, one_stream, tmp_path):
    docs, expected = one_stream
    with serving(docs) as stub:
        assert backup_in_process(stub, tmp_path, "--jobs", jobs) == expected
        reads = document_reads(stub)
    assert len(reads) == int(jobs), [r.path for r in reads]


@pytest.mark.parametrize("jobs", ["2", "7"])
def test_compressed_ranges_decompress_to_the_one_stream_bytes(jobs, one_stream, tmp_path):
    docs, expected = one_stream
    with serving(docs) as stub:
        assert backup_in_process(stub, tmp_path, "-z", "--jobs", jobs) == expected
        assert len(document_reads(stub)) == int(jobs)


def test_the_one_line_layout_of_pouchdb_server_is_read_in_ranges_too(one_stream, tmp_path):
    docs, _ = one_stream
    with serving(docs, layout="one_line") as stub:
        expected = backup_in_process(stub, tmp_path / "one")
        assert backup_in_process(stub, tmp_path / "four", "--jobs", "4") == expected
        assert len(document_reads(stub)) == 1 + 4


def test_ranges_are_read_at_once_each_at_the_speed_of_one_stream(tmp_path):
    docs = big_database(long_lines=False)
    with serving(docs, rate=256 << 10) as stub:   # ~1.4 MB: 5.6 s as one stream, 1.4 s a range
        result = run_port(["-b", "-d", "big", "-f", "dump.json", "--jobs", "4"], tmp_path, server=stub.url)
        assert result.returncode == 0, says(result)
        reads = document_reads(stub)
    assert len(reads) == 4
    assert max(r.time for r in reads) < min(r.finished for r in reads), "the ranges were not read at once"
    assert os.listdir(tmp_path) == ["dump.json"]
    assert dump_ids((tmp_path / "dump.json").read_bytes()) == sorted(docs)


def test_backup_to_standard_output_in_ranges_gives_the_same_bytes_and_leaves_no_file(one_stream, tmp_path):
    docs, expected = one_stream
    with serving(docs, rate=8 << 20) as stub:
        result = run_port(["-b", "-q", "-d", "big", "-f", "-", "--jobs", "4"], tmp_path, server=stub.url)
        assert len(document_reads(stub)) == 4
    assert result.returncode == 0, says(result)
    assert result.stdout == expected
    assert os.listdir(tmp_path) == []


IDS = st.text(min_size=1, max_size=12).filter(lambda text: not text.startswith("_"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(ids=st.sets(IDS, max_size=60), designs=st.integers(0, 5), jobs=st.integers(1, 7))
def test_any_ids_give_the_same_bytes_in_any_number_of_ranges(ids, designs, jobs, tmp_path_factory):
    docs = {doc_id: {"_id": doc_id, "_rev": "1-%08x" % i, "i": i} for i, doc_id in enumerate(sorted(ids))}
    docs.update({"_design/%d" % i: {"_id": "_design/%d" % i, "_rev": "1-d%d" % i, "views": {}}
                 for i in range(designs)})
    folder = tmp_path_factory.mktemp("ids")
    with serving(docs) as stub:
        expected = backup_in_process(stub, folder / "one")
        assert backup_in_process(stub, folder / "many", "--jobs", str(jobs)) == expected


# -- every range checked, nothing left behind -------------------------------------------

def nth_range_fault(fault, ranged=True):
    """``fault`` for the first document read of a range that has a start key
    (``ranged``), or of the first range (not ``ranged``)."""
    done = []
    lock = threading.Lock()

    def faults(index, method, path):
        if method != "GET" or endpoint_of(path) != "_all_docs" or "include_docs=true" not in path:
            return None
        if ("startkey=" in path or "start_key=" in path) != ranged:
            return None
        with lock:
            if done:
                return None
            done.append(path)
        return fault
    return faults


@pytest.mark.parametrize("fault", [Fault("rows_cut", rows=120), Fault("rows_end", rows=120),
                                   Fault("status", status=500), Fault("drop")],
                         ids=["cut-mid-reply", "ended-without-footer", "http-500", "dropped"])
def test_a_range_that_fails_fails_the_backup_with_nothing_left(fault, tmp_path):
    docs = big_database(long_lines=False)
    with serving(docs, faults=nth_range_fault(fault)) as stub:
        result = run_port(["-b", "-d", "big", "-f", "dump.json", "--jobs", "4", "-a", "1"], tmp_path, server=stub.url)
        assert len(document_reads(stub)) >= 2
    assert result.returncode == 1, says(result)
    assert os.listdir(tmp_path) == []
    assert result.stdout.decode().splitlines()[-1].startswith("... ERROR: ")


def test_a_range_short_of_rows_fails_the_backup(tmp_path):
    docs = big_database(long_lines=False)
    with serving(docs, faults=nth_range_fault(Fault("rows_dropped", rows=3))) as stub:
        result = run_port(["-b", "-d", "big", "-f", "dump.json", "--jobs", "4"], tmp_path, server=stub.url)
    assert result.returncode == 1, says(result)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("ranged", [True, False], ids=["a-later-range", "the-first-range"])
def test_a_range_cut_mid_reply_is_resumed_with_resume_to_the_same_bytes(ranged, one_stream, tmp_path):
    docs, expected = one_stream
    with serving(docs, faults=nth_range_fault(Fault("rows_cut", rows=150), ranged)) as stub:
        result = run_port(["-b", "-d", "big", "-f", "dump.json", "--jobs", "4", "--resume"], tmp_path, server=stub.url)
        reads = document_reads(stub)
    assert result.returncode == 0, says(result)
    assert os.listdir(tmp_path) == ["dump.json"]
    assert (tmp_path / "dump.json").read_bytes() == expected
    assert len(reads) == 5
    assert b"... WARN: The transfer broke off after " in result.stdout


def test_a_range_ahead_of_the_writer_waits_in_a_temporary_file_beside_the_backup(tmp_path):
    docs = big_database(long_lines=False)
    seen = set()
    # The first range comes late: the others are done before it and must wait on disk.
    with serving(docs, faults=nth_range_fault(Fault("delay", seconds=2.0), ranged=False)) as stub:
        process = start_port(["-b", "-d", "big", "-f", "dump.json", "--jobs", "4"], tmp_path, server=stub.port)
        try:
            most = 0
            while process.poll() is None:
                names = [n for n in os.listdir(tmp_path) if n.endswith(".part")]
                seen.update(names)
                most = max(most, len(names))
                time.sleep(0.01)
            stdout, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0, stdout + stderr
    assert most >= 2, seen
    assert all(name.startswith(".dump.json.") for name in seen), seen
    assert os.listdir(tmp_path) == ["dump.json"]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_a_parallel_read_leaves_no_file_of_any_range(signum, code, tmp_path):
    docs = big_database(long_lines=False)
    with serving(docs, rate=256 << 10) as stub:
        process = start_port(["-b", "-d", "big", "-f", "dump.json", "--jobs", "4"], tmp_path, server=stub.port)
        _, stdout, _ = interrupt(process, signum, lambda: len(document_reads(stub)) == 4
                                 and len(os.listdir(tmp_path)) >= 2, seconds=30)
    assert process.returncode == code, stdout
    assert os.listdir(tmp_path) == []


# -- a database written while it is read ------------------------------------------------

def test_a_document_present_at_the_start_and_unchanged_is_in_the_file_exactly_once(tmp_path):
    docs = big_database(long_lines=False)
    start = {doc_id: doc["_rev"] for doc_id, doc in docs.items()}
    touched = set()
    stop = threading.Event()
    with serving(docs, rate=512 << 10) as stub:
        def write():
            n = 0
            while not stop.is_set():
                n += 1
                new = ["D%05d-new%d" % (n * 37 % 900, n), "d%05d-new%d" % (n * 53 % 900, n), "\u00e9new%d" % n]
                updated = ["D%05d" % (n * 11 % 900), "d%05d" % (n * 29 % 900)]
                deleted = ["d%05d" % (n * 31 % 900)]
                touched.update(new + updated + deleted)
                stub.put_docs("big", [{"_id": i, "_rev": "1-new%d" % n, "new": n} for i in new]
                              + [{"_id": i, "_rev": "2-upd%d" % n, "updated": n} for i in updated]
                              + [{"_id": i, "_deleted": True} for i in deleted])
                time.sleep(0.01)
        writer = threading.Thread(target=write)
        writer.start()
        try:
            result = run_port(["-b", "-d", "big", "-f", "dump.json", "--jobs", "4"], tmp_path, server=stub.url)
        finally:
            stop.set()
            writer.join()
        assert len(document_reads(stub)) == 4
    assert result.returncode == 0, says(result)
    assert len(touched) > 50, "the database did not change while it was read"
    lines = (tmp_path / "dump.json").read_bytes().split(b"\n")[1:-2]
    found = {}
    for line in lines:
        doc = json.loads(line.rstrip(b","))
        assert doc["_id"] not in found, "%r is in the file twice" % doc["_id"]
        found[doc["_id"]] = doc["_rev"]
    for doc_id, rev in start.items():
        if doc_id not in touched:
            assert found.get(doc_id) == rev, doc_id


# -- PouchDB Server -----------------------------------------------------------------------

def test_pouchdb_server_gives_the_same_bytes_in_ranges(pouchdb_url, tmp_path):
    name = "parallel-read-%d" % os.getpid()
    url = "%s/%s" % (pouchdb_url, quote(name, safe=""))
    http("PUT", url)
    # PouchDB Server 4.2 leaves ids beginning at U+00FF or past it out of a one-stream _all_docs: none here does.
    ids = ["D%04d" % i for i in range(200)] + ["_design/v%03d" % i for i in range(150)] \
        + ["d%04d" % i for i in range(200)] + [i for i in ODD_IDS if ord(i[0]) < 0xff]
    docs = [{"_id": doc_id, "n": n, "text": "\u00e9t\u00e9 \"%d\"" % n} for n, doc_id in enumerate(ids)]
    docs.append({"_id": "d0100-long", "blob": "\u00e9" * (3 << 20)})
    http("POST", url + "/_bulk_docs", {"docs": docs})
    results = {}
    for jobs in ("1", "3", "4"):
        cwd = tmp_path / jobs
        cwd.mkdir()
        extra = [] if jobs == "1" else ["--jobs", jobs]
        result = run_port(["-b", "-d", name, "-f", "dump.json", *extra], cwd, server=pouchdb_url)
        assert result.returncode == 0, says(result)
        results[jobs] = (cwd / "dump.json").read_bytes()
        assert os.listdir(cwd) == ["dump.json"]
    assert sorted(dump_ids(results["1"])) == sorted(ids + ["d0100-long"])
    assert results["3"] == results["1"] and results["4"] == results["1"]



@pytest.mark.parametrize("stalled", ["skip=", "include_docs=true"])   # the split keys' reads, the ranges'
def test_two_signals_while_reads_hang_mid_reply_end_the_run_and_leave_no_file(stalled, tmp_path):
    docs = big_database(long_lines=False)
    # These replies stop after their first bytes and the server says nothing more for a minute.
    hang = lambda index, method, path: Fault("trickle", body=b'{"total_rows":%d,"offset":0,"rows":[\r\n' % len(docs),
                                             seconds=60) if stalled in path else None
    with serving(docs, faults=hang) as stub:
        process = start_port(["-b", "-d", "big", "-f", "dump.json", "--jobs", "4"], tmp_path, server=stub.port)
        _, stdout, _ = interrupt(process, signal.SIGTERM, lambda: sum(stalled in r.path for r in stub.requests) >= 3
                                 and len(os.listdir(tmp_path)) >= 1,
                                 before=lambda: process.send_signal(signal.SIGTERM) or time.sleep(0.2), seconds=30)
    assert process.returncode == 143, stdout
    assert os.listdir(tmp_path) == []
