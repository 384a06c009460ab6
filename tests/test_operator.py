"""What a tired operator hits, pinned from the command line.

A full disk said in words; a long option of the other mode refused before
any request; the real cause in --json's ``error`` on every failure path; a
Ctrl-C during a restore that answers at once; a --resume that tells what it
skipped and what it sent; -P beside a port in -H told on standard error; a
database name holding ``+`` sent as ``%2B``.  (Verified TLS: test_tls.py.)

Every test runs the command line, as a subprocess or through
``helpers.run_in_process``, against tests/couch_stub.py or PouchDB Server,
and reads only what a caller reads: exit code, standard output and error,
the --json object, the files and the requests the server saw.
"""

import base64
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import couchdb_dump
from couch_stub import CouchStub, Fault
from helpers import (closed_port, http, last_json, make_dump, run_in_process, run_port, says, start_port,
                     stop_after_chunks)
from tls_server import Certificates

UNAUTHORIZED = b'{"error":"unauthorized","reason":"Name or password is incorrect."}\n'
FORBIDDEN = b'{"error":"forbidden","reason":"You are not allowed to access this db."}\n'
BADARG = b'{"error":"unknown_error","reason":"badarg"}\n'


# -- servers -------------------------------------------------------------------------

def host_args(stub):
    return ["-H", "127.0.0.1", "-P", str(stub.port)]


def stub_holding(count, databases=("db",), db="db", **options):
    stub = CouchStub(databases=databases, **options)
    for i in range(count):
        stub.store.databases[db]["doc%03d" % i] = {"_id": "doc%03d" % i, "_rev": "1-%03d" % i, "value": i}
    return stub


def bulk_posts(stub):
    return [r for r in stub.requests if r.method == "POST" and r.path.endswith("/_bulk_docs")]


# -- 1. a full disk, in words ----------------------------------------------------------

NO_SPACE = "No space left on device"
KINDS = {"plain": [], "complete": ["--complete"], "gzip": ["-z"]}
COUNTS = ("documents", "design_documents", "leaves", "deleted", "conflicted", "bytes")


def bulky_stub(count=2500, size=1000):
    """About 2.5 MB of documents that do not compress much (random base64)."""
    rng = random.Random(20)
    stub = CouchStub(databases=("db",))
    for i in range(count):
        noise = rng.getrandbits(size * 6).to_bytes(size * 3 // 4, "little")
        stub.store.databases["db"]["doc%05d" % i] = {"_id": "doc%05d" % i, "_rev": "1-%032x" % i,
                                                     "noise": base64.b64encode(noise).decode()}
    return stub


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs: the disk fills up part way through the backup."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True)
    if mounted.returncode != 0:
        # The /dev/full variant below runs everywhere.
        pytest.skip("cannot mount a tmpfs here: %s" % mounted.stderr.decode().strip())
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True)


def assert_full_disk_said_in_words(result, written, report):
    words = "cannot write %s: %s" % (written, NO_SPACE)
    stderr = result.stderr.decode("utf-8", "replace")
    stdout = result.stdout.decode("utf-8", "replace") if result.stdout else ""
    assert result.returncode == 1, says(result)
    assert words in stdout + stderr, says(result)
    assert report["ok"] is False and report["error"] == words, report
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, says(result)
    assert "Unexpected failure" not in stdout + stderr, says(result)
    claimed = {key: report[key] for key in COUNTS if report.get(key)}
    assert claimed == {}, "a failed run claims %s in a file that does not exist" % claimed


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_full_disk_is_said_in_words_with_no_traceback_and_no_counts(kind, small_disk, tmp_path):
    target = small_disk / "x.json"
    written = str(target) + (".gz" if kind == "gzip" else "")
    with bulky_stub() as stub:
        result = run_port(["-b", *host_args(stub), "-d", "db", "-f", str(target), "--json", "--no-progress",
                           *KINDS[kind]], tmp_path)
    assert_full_disk_said_in_words(result, written, last_json(result.stdout))
    assert os.listdir(small_disk) == [], "nothing is left on the full disk"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_full_standard_output_is_said_in_words_with_no_traceback_and_no_counts(kind, tmp_path):
    # /dev/full fails every write with ENOSPC: a backup to standard output (-f -) sent there.
    with bulky_stub() as stub, open("/dev/full", "wb") as full:
        process = start_port(["-b", *host_args(stub), "-d", "db", "-f", "-", "--json", "--no-progress",
                              *KINDS[kind]], tmp_path, stdout=full)
        _, stderr = process.communicate(timeout=120)
    result = subprocess.CompletedProcess(process.args, process.returncode, b"", stderr)
    assert_full_disk_said_in_words(result, "standard output", last_json(result.stderr))


# -- 2. a long option serves a mode; the other mode refuses it ------------------------

BOTH, BACKUP, RESTORE = ("backup", "restore"), ("backup",), ("restore",)

# Which mode each long option serves.  A new long option must be added here:
# the generated test below runs every option of couchdb_dump.LONG_OPTIONS.
SERVES = {
    "help": BOTH, "version": BOTH, "timeout": BOTH, "json": BOTH, "no-progress": BOTH, "resume": BOTH,
    "cacert": BOTH, "cert": BOTH, "key": BOTH,
    "jobs": BOTH, "exclude": BOTH,
    "verify": RESTORE, "recreate": RESTORE, "force": RESTORE, "max-line-mb": RESTORE, "no-security": RESTORE,
    "complete": BACKUP, "since": BACKUP,
}

# The words of an option on a command line that is otherwise good ({name}: a file of the test);
# an option that takes a value needs one here.
SAMPLES = {
    "timeout": ["--timeout", "30"], "jobs": ["--jobs", "2"], "max-line-mb": ["--max-line-mb", "64"],
    "cacert": ["--cacert", "{ca}"], "cert": ["--cert", "{client}", "--key", "{client_key}"],
    "key": ["--cert", "{client}", "--key", "{client_key}"],
    "exclude": ["--exclude", "nothing*"], "since": ["--since", "{base}"],
}

# Options that serve a -d PATTERN run only: the command line names a pattern, and a folder.
PATTERN_OPTIONS = ("exclude",)

LONG_OPTION_NAMES = sorted(set(couchdb_dump.LONG_OPTIONS) | set(SERVES))


@pytest.fixture(scope="module")
def certificate_files(tmp_path_factory):
    made = Certificates(tmp_path_factory.mktemp("certificates"))
    return {"ca": made["ca"], "client": made["client"], "client_key": made.key("client")}


def option_words(name, request):
    words = SAMPLES.get(name, ["--" + name])
    if any("{" in word and "{base}" not in word for word in words):
        files = request.getfixturevalue("certificate_files")
        words = [word.format(**files) for word in words]
    return words


@pytest.mark.parametrize("mode", ["backup", "restore"])
@pytest.mark.parametrize("name", LONG_OPTION_NAMES)
def test_every_long_option_serves_its_mode_and_is_refused_in_the_other_before_any_request(
        name, mode, request, tmp_path):
    assert name in SERVES, "--%s is a new long option: say in SERVES which mode it serves" % name
    assert name in couchdb_dump.LONG_OPTIONS, "--%s is not an option of the port" % name
    dump, _ = make_dump(3)
    (tmp_path / "dump.json").write_bytes(dump)
    db, restore_from = "db", tmp_path / "dump.json"
    if name in PATTERN_OPTIONS:
        db, restore_from = "d*", tmp_path / "folder"
        restore_from.mkdir()
        (restore_from / "db.json").write_bytes(dump)
    with stub_holding(2) as stub:
        if name == "since":   # an earlier complete backup of this database to start from
            base = tmp_path / "base.json"
            assert run_in_process(["-b", *host_args(stub), "-d", "db", "-f", str(base), "--complete"])[0] == 0
            del stub.requests[:]
        words = [word.replace("{base}", str(tmp_path / "base.json")) for word in option_words(name, request)]
        if mode == "backup":
            argv = ["-b", *host_args(stub), "-d", db, "-f", str(tmp_path / "out.json")]
        else:
            argv = ["-r", *host_args(stub), "-d", db, "-f", str(restore_from)]
        code, stdout, stderr = run_in_process(argv + words + ["--json"])
        requests = list(stub.requests)
    report = last_json(stdout) if name not in ("help", "version") else {}
    if mode in SERVES[name]:
        assert code == 0, "--%s in a %s: rc=%d\n%s%s" % (name, mode, code, stdout.decode(), stderr)
        return
    other = SERVES[name][0]
    assert code == 1, "--%s serves %s only, yet a %s ran:\n%s" % (name, other, mode, stdout.decode())
    assert requests == [], "a refused command line sends no request"
    assert "--" + name in report["error"] and other in report["error"].lower(), report
    made = {"dump.json", "folder", "base.json"}
    assert set(os.listdir(tmp_path)) <= made, "nothing is written"


# -- 3. --json's error carries the cause on every failure path --------------------------

def everything(fault):
    return lambda index, method, path: fault


def matching(fault, method, ending):
    return lambda index, m, path: fault if m == method and path.split("?")[0].endswith(ending) else None


def first_of(*faults):
    """The first of these fault callables that answers a request."""
    return lambda index, method, path: next((fault for fault in (each(index, method, path) for each in faults)
                                             if fault is not None), None)


# A database that says it holds documents: --resume then compares each chunk with it.
HOLDING = matching(Fault("status", 200, b'{"db_name":"db","doc_count":3,"doc_del_count":0}\n'), "GET", "/db")


def chunked_rows():
    rows = b"".join(b'{"id":"d%04d","key":"d%04d","value":{"rev":"1-a"},"doc":{"_id":"d%04d","_rev":"1-a"}},\r\n'
                    % (i, i, i) for i in range(50))
    return b'{"total_rows":500,"offset":0,"rows":[\r\n' + rows


def complete_dump():
    return (b'{"new_edits":false,"_security":{"admins":{"names":["boss"],"roles":[]},"members":{}},"docs":[\n'
            b'{"_id":"a","_rev":"1-a","_revisions":{"start":1,"ids":["a"]}}\n]}\n')


# id: (mode, extra arguments, faults, databases, the dump, words --json's error must hold)
FAILURE_PATHS = {
    "backup_401": ("-b", [], everything(Fault("status", 401, UNAUTHORIZED)), ("db",), None,
                   ["401", "user name and password"]),
    "backup_403": ("-b", [], everything(Fault("status", 403, FORBIDDEN)), ("db",), None, ["403"]),
    "backup_no_such_database": ("-b", [], None, (), None, ["404", "Database does not exist"]),
    "backup_500": ("-b", [], everything(Fault("status", 500, BADARG)), ("db",), None, ["500", "badarg"]),
    "backup_proxy_page": ("-b", [], everything(Fault("status", 502, b"<html>Bad Gateway</html>\n")), ("db",),
                          None, ["502"]),
    "backup_refused": ("-b", ["{CLOSED}"], None, ("db",), None, ["connection refused"]),
    "backup_timeout": ("-b", ["--timeout", "1"], everything(Fault("hang", seconds=5)), ("db",), None,
                       ["no answer for 1 s"]),
    "backup_cut": ("-b", [], everything(Fault("chunked_cut", body=chunked_rows())), ("db",), None,
                   ["closed the connection"]),
    "backup_no_folder": ("-b", ["-f", "{TMP}/missing/out.json"], None, ("db",), None,
                         ["cannot write", "No such file or directory"]),
    "complete_backup_401": ("-b", ["--complete"], everything(Fault("status", 401, UNAUTHORIZED)), ("db",), None,
                            ["401", "user name and password"]),
    "complete_backup_500": ("-b", ["--complete"], matching(Fault("status", 500, BADARG), "GET", "/_changes"),
                            ("db",), None, ["500", "badarg"]),
    "restore_list_401_recreate": ("-r", ["--recreate"], everything(Fault("status", 401, UNAUTHORIZED)), ("db",),
                                  "plain", ["401", "user name and password"]),
    "restore_list_403_recreate": ("-r", ["--recreate"], everything(Fault("status", 403, FORBIDDEN)), ("db",),
                                  "plain", ["403"]),
    "restore_401_everywhere": ("-r", [], everything(Fault("status", 401, UNAUTHORIZED)), ("db",), "plain",
                               ["401", "user name and password"]),
    "restore_refused": ("-r", ["{CLOSED}"], None, ("db",), "plain", ["connection refused"]),
    "restore_no_such_database": ("-r", [], None, (), "plain", ["not yet created"]),
    "restore_create_401": ("-r", ["-c"], matching(Fault("status", 401, UNAUTHORIZED), "PUT", "/db"), (), "plain",
                           ["401", "user name and password"]),
    "restore_delete_403": ("-r", ["--recreate"], matching(Fault("status", 403, FORBIDDEN), "DELETE", "/db"),
                           ("db",), "plain", ["403"]),
    "restore_design_conflict": ("-r", [], matching(Fault("status", 409, b'{"error":"conflict","reason":'
                                                                         b'"Document update conflict."}\n'),
                                                   "PUT", "/_design/d0"), ("db",), "designs", ["409", "conflict"]),
    "restore_design_dropped": ("-r", [], matching(Fault("drop"), "PUT", "/_design/d0"), ("db",), "designs",
                               ["closed the connection"]),
    "restore_chunk_500": ("-r", ["-l", "2"], matching(Fault("status", 500, BADARG), "POST", "/_bulk_docs"),
                          ("db",), "plain", ["500", "badarg"]),
    "restore_chunk_401": ("-r", ["-l", "2"], matching(Fault("status", 401, UNAUTHORIZED), "POST", "/_bulk_docs"),
                          ("db",), "plain", ["401", "user name and password"]),
    "restore_chunk_timeout": ("-r", ["-l", "2", "--timeout", "1"],
                              matching(Fault("hang", seconds=5), "POST", "/_bulk_docs"), ("db",), "plain",
                              ["no answer for 1 s"]),
    "restore_single_body_500": ("-r", [], matching(Fault("status", 500, BADARG), "POST", "/_bulk_docs"), ("db",),
                                "plain", ["500", "badarg"]),
    "restore_single_body_dropped": ("-r", [], matching(Fault("drop"), "POST", "/_bulk_docs"), ("db",), "plain",
                                    ["closed the connection"]),
    "restore_resume_revs_diff_500": ("-r", ["-l", "2", "--resume"],
                                     first_of(HOLDING, matching(Fault("status", 500, BADARG), "POST", "/_revs_diff")),
                                     ("db",), "plain", ["500", "badarg"]),
    "restore_security_403": ("-r", [], matching(Fault("status", 403, FORBIDDEN), "PUT", "/_security"), ("db",),
                             "complete", ["403"]),
    "restore_verify_500": ("-r", ["--verify"], matching(Fault("status", 500, BADARG), "GET", "/_all_docs"),
                           ("db",), "plain", ["500"]),
    "restore_bad_dump": ("-r", [], None, ("db",), "cut", ["line 2", "cut short"]),
}

DUMPS = {"plain": lambda: make_dump(5)[0], "designs": lambda: make_dump(3, designs=1)[0],
         "complete": complete_dump, "cut": lambda: make_dump(5)[0][:60]}


@pytest.mark.parametrize("path", sorted(FAILURE_PATHS))
def test_json_error_carries_the_cause_of_every_failure(path, tmp_path):
    mode, extra, faults, databases, dump, words = FAILURE_PATHS[path]
    file_name = str(tmp_path / ("dump.json" if dump else "out.json"))
    if dump:
        (tmp_path / "dump.json").write_bytes(DUMPS[dump]())
    with CouchStub(databases=databases, faults=faults) as stub:
        port = closed_port() if "{CLOSED}" in extra else stub.port
        extra = [word.replace("{TMP}", str(tmp_path)) for word in extra if word != "{CLOSED}"]
        if "-f" in extra:
            file_name = extra[extra.index("-f") + 1]
        code, stdout, stderr = run_in_process([mode, "-H", "127.0.0.1", "-P", str(port), "-d", "db", "-f", file_name,
                                               "-a", "1", "--json", *extra], {"COUCHDB_USER": "admin",
                                                                              "COUCHDB_PASS": "wrong"})
    assert code == 1, stdout.decode()
    error = last_json(stdout)["error"]
    missing = [word for word in words if word.lower() not in error.lower()]
    assert missing == [], "--json's error %r lacks %s\nstdout:\n%s\nstderr:\n%s" % (
        error, missing, stdout.decode(), stderr)
    assert "wrong" not in error


# -- 4. Ctrl-C during a restore answers --------------------------------------------------

STOPPING = re.compile(r"stop\w* after the requests? in flight", re.I)


class Lines:
    """Every line a process writes, with the time it arrived, read as it comes."""

    def __init__(self, process):
        self.lines = []
        self.readers = [threading.Thread(target=self._read, args=(stream, name), daemon=True)
                        for stream, name in ((process.stdout, "stdout"), (process.stderr, "stderr"))]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, name):
        for line in iter(stream.readline, b""):
            self.lines.append((time.monotonic(), name, line.decode("utf-8", "replace").rstrip("\n")))

    def first(self, pattern, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for when, _, text in list(self.lines):
                if pattern.search(text):
                    return when, text
            time.sleep(0.01)
        return None, None

    def text(self):
        for reader in self.readers:
            reader.join(5)
        return "\n".join("%s: %s" % (name, text) for _, name, text in self.lines)


def held_posts(stub_posts, hold_from, seconds):
    """Faults: _bulk_docs POSTs from the ``hold_from``-th on are answered after ``seconds``."""
    lock = threading.Lock()

    def faults(index, method, path):
        if method == "POST" and path.endswith("/_bulk_docs"):
            with lock:
                stub_posts.append(time.monotonic())
                if len(stub_posts) >= hold_from:
                    return Fault("delay", seconds=seconds)
        return None
    return faults


def start_restore(tmp_path, stub, extra=()):
    dump, _ = make_dump(20)
    (tmp_path / "dump.json").write_bytes(dump)
    return start_port(["-r", *host_args(stub), "-d", "db", "-f", "dump.json", "-l", "2", *extra], tmp_path)


def wait_until(condition, seconds=30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def ended(process, seconds):
    """Wait for the process; kill it after ``seconds``.  Returns whether it ended by itself."""
    try:
        process.wait(seconds)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False


@pytest.mark.parametrize("jobs", [1, 3])
def test_first_ctrl_c_during_a_restore_says_within_a_second_that_it_stops_after_the_requests_in_flight(
        jobs, tmp_path):
    posts = []
    held = 3   # the first two chunks are answered; the next ones are held 6 s
    with CouchStub(databases=("db",), faults=held_posts(posts, held, 6.0)) as stub:
        process = start_restore(tmp_path, stub, ["--jobs", str(jobs)] if jobs > 1 else [])
        lines = Lines(process)
        try:
            wait_until(lambda: len(posts) >= held - 1 + jobs)
            time.sleep(0.1)
            latest = posts[-1]   # held until latest + 6 s
            signalled = time.monotonic()
            process.send_signal(signal.SIGINT)
            said, text = lines.first(STOPPING, 3.0)
            assert ended(process, 30)
        finally:
            if process.poll() is None:
                process.kill()
        output = lines.text()
    assert said is not None, "no line said the restore stops after the requests in flight:\n" + output
    assert said - signalled < 1.0, "%.2f s before it answered:\n%s" % (said - signalled, output)
    assert said < latest + 6.0, "it answered only once the request in flight had ended"
    assert process.returncode == 130, output
    assert re.search(r"Stopped by SIGINT: \d+ of 20 documents were written", output), output


def test_second_ctrl_c_stops_at_once_and_says_what_was_written_and_how_to_go_on(tmp_path):
    posts = []
    with CouchStub(databases=("db",), faults=held_posts(posts, 3, 30.0)) as stub:
        process = start_restore(tmp_path, stub)
        lines = Lines(process)
        try:
            wait_until(lambda: len(posts) >= 3)   # chunks aaa and aab answered, aac held
            time.sleep(0.1)
            stored = len(stub.store.databases["db"])
            process.send_signal(signal.SIGINT)
            lines.first(STOPPING, 1.0)
            second = time.monotonic()
            process.send_signal(signal.SIGINT)
            by_itself = ended(process, 10)
            stopped = time.monotonic()
        finally:
            if process.poll() is None:
                process.kill()
        output = lines.text()
    assert by_itself and stopped - second < 10, "the second Ctrl-C waited for the request in flight:\n" + output
    assert process.returncode == 130, output
    assert stored == 3
    assert re.search(r"\b3 of 20 documents were written", output), output
    assert "-s dump.json.splitaac" in output and "--resume" in output, output
    assert "Traceback" not in output


# -- 5. --resume tells what it skipped and what it sent ----------------------------------

def restore_run(cwd, stub, args):
    return run_port(["-r", *host_args(stub), "-d", "db", "-f", "dump.json", *args], cwd)


def info_lines(result):
    return [line for line in result.stdout.decode().splitlines() if line.startswith("... INFO:")]


def test_resume_counts_and_prints_what_it_skipped_and_what_it_sent(tmp_path):
    dump, _ = make_dump(100)
    (tmp_path / "dump.json").write_bytes(dump)
    with CouchStub(databases=("db",), faults=stop_after_chunks(2)) as stub:
        first = restore_run(tmp_path, stub, ["-l", "20", "-a", "1"])
        assert first.returncode == 1 and len(stub.store.databases["db"]) == 39, says(first)
        stub.faults = None
        stub.requests.clear()
        second = restore_run(tmp_path, stub, ["-l", "20", "--resume", "--json"])
        sent = sum(len(json.loads(r.body)["docs"]) for r in bulk_posts(stub))
    assert second.returncode == 0, says(second)
    assert sent == 61
    report = last_json(second.stdout)
    assert (report["documents"], report["skipped"]) == (61, 39), report
    summary = [line for line in info_lines(second) if re.search(r"\b61 documents sent\b", line)]
    assert len(summary) == 1 and re.search(r"\b39 skipped\b", summary[0]), info_lines(second)
    stdout = second.stdout.decode()
    for skipped in ("dump.json.splitaaa", "dump.json.splitaab"):   # all their documents were there
        assert "Inserting %s\n" % skipped not in stdout, stdout
        assert any(skipped in line and "skipped" in line.lower() for line in info_lines(second)), stdout


def test_resume_of_a_finished_restore_counts_every_document_and_design_document_as_skipped(tmp_path):
    dump, _ = make_dump(100, designs=2)
    (tmp_path / "dump.json").write_bytes(dump)
    with CouchStub(databases=("db",)) as stub:
        first = restore_run(tmp_path, stub, ["-l", "20"])
        assert first.returncode == 0, says(first)
        stub.requests.clear()
        second = restore_run(tmp_path, stub, ["-l", "20", "--resume", "--json"])
        writes = [r for r in stub.requests if r.method == "PUT" or r.path.endswith("/_bulk_docs")]
    assert second.returncode == 0, says(second)
    assert writes == []
    report = last_json(second.stdout)
    assert (report["documents"], report["design_documents"], report["skipped"]) == (0, 0, 102), report
    stdout = second.stdout.decode()
    assert not re.search(r"Inserting \S+\.split", stdout) and "Successfully Imported" not in stdout, stdout
    assert "Successfully imported 2 Design Documents" not in stdout, stdout
    assert any(re.search(r"\b0 documents sent\b", line) and re.search(r"\b102 skipped\b", line)
               for line in info_lines(second)), stdout


@pytest.mark.parametrize("before", [{}, {"other": {"_id": "other", "_rev": "1-o"}}], ids=["empty", "holding_others"])
def test_resume_sends_a_chunk_the_database_lacks_whole_as_a_plain_restore_does(before, tmp_path):
    dump, _ = make_dump(60)
    (tmp_path / "dump.json").write_bytes(dump)
    bodies, diffs = {}, {}
    for how, extra in (("plain", []), ("resume", ["--resume", "--json"])):
        with CouchStub(databases=("db",)) as stub:
            stub.store.databases["db"].update(before)
            result = restore_run(tmp_path, stub, ["-l", "20", *extra])
            assert result.returncode == 0, says(result)
            bodies[how] = [r.body for r in bulk_posts(stub)]
            diffs[how] = [r for r in stub.requests if r.path.endswith("/_revs_diff")]
            assert len(stub.store.databases["db"]) == 60 + len(before)
    assert bodies["resume"] == bodies["plain"]
    # An empty database is not asked: it lacks everything.  Otherwise one _revs_diff a chunk.
    assert len(diffs["resume"]) == (4 if before else 0)
    report = last_json(result.stdout)
    assert (report["documents"], report["skipped"]) == (60, 0), report


# -- 6. -P beside a port in -H -----------------------------------------------------------

@pytest.mark.parametrize("form", ["127.0.0.1:{PORT}", "http://127.0.0.1:{PORT}"])
@pytest.mark.parametrize("mode", ["-b", "-r"])
def test_p_beside_a_port_in_h_keeps_bashs_choice_and_says_so_on_stderr(mode, form, tmp_path):
    dump, _ = make_dump(4)
    (tmp_path / "dump.json").write_bytes(dump)
    runs = {}
    with stub_holding(3) as stub:
        host = form.replace("{PORT}", str(stub.port))
        for name, extra in (("with_p", ["-P", "5984"]), ("without_p", [])):
            cwd = tmp_path / name
            cwd.mkdir()
            (cwd / "dump.json").write_bytes(dump)
            runs[name] = run_port([mode, "-H", host, *extra, "-d", "db",
                                   "-f", "dump.json" if mode == "-r" else "out.json"], cwd)
    for result in runs.values():
        assert result.returncode == 0, says(result)
    assert runs["with_p"].stdout == runs["without_p"].stdout   # bash's stdout, to the byte
    told = [line for line in runs["with_p"].stderr.decode().splitlines() if "-P" in line]
    assert len(told) == 1, says(runs["with_p"])
    assert str(stub.port) in told[0] and "5984" in told[0] and "ignored" in told[0], told
    assert "-P" not in runs["without_p"].stderr.decode()


def test_p_equal_to_the_port_in_h_says_nothing(tmp_path):
    with stub_holding(3) as stub:
        result = run_port(["-b", "-H", "127.0.0.1:%d" % stub.port, "-P", str(stub.port), "-d", "db",
                           "-f", "out.json"], tmp_path)
    assert result.returncode == 0, says(result)
    assert "-P" not in result.stderr.decode()


# -- 8. "+" in a database name --------------------------------------------------------------

def database_segments(stub):
    return {request.path.split("?")[0].split("/")[1] for request in stub.requests if request.path != "/_all_dbs"}


@pytest.mark.parametrize("mode", ["-b", "-r"])
def test_plus_in_a_database_name_is_sent_as_2b(mode, tmp_path):
    dump, _ = make_dump(4, designs=1)
    (tmp_path / "dump.json").write_bytes(dump)
    with stub_holding(3, databases=("sales+eu",), db="sales+eu") as stub:
        result = run_port([mode, *host_args(stub), "-d", "sales+eu",
                           "-f", "dump.json" if mode == "-r" else "out.json", "-l", "2"], tmp_path)
        segments = database_segments(stub)
    assert result.returncode == 0, says(result)
    assert segments == {"sales%2Beu"}


ALLOWED = "abcdefghijklmnopqrstuvwxyz0123456789_$()+-/"
database_names = st.builds(lambda first, rest: first + rest, st.sampled_from("abcdefghijklmnopqrstuvwxyz"),
                           st.text(st.sampled_from(ALLOWED), max_size=30))


@settings(derandomize=True, database=None, deadline=None, max_examples=40,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=database_names)
def test_any_allowed_database_name_reaches_the_server_as_that_name(name, tmp_path_factory):
    folder = tmp_path_factory.mktemp("names")
    with stub_holding(3, databases=(name,), db=name) as stub:
        code, stdout, _ = run_in_process(["-b", *host_args(stub), "-d", name, "-f", str(folder / "out.json"), "-q"])
        assert code == 0, stdout.decode()
        code, stdout, _ = run_in_process(["-r", *host_args(stub), "-d", name + "2", "-c", "-l", "2",
                                          "-f", str(folder / "out.json"), "-q"])
        assert code == 0, stdout.decode()
        segments = database_segments(stub)
    assert {unquote(segment) for segment in segments} == {name, name + "2"}
    assert not any("+" in segment or "/" in segment for segment in segments), segments


def test_database_named_with_every_allowed_character_round_trips_on_pouchdb_server(pouchdb_url, tmp_path):
    name = "op%d_$()+-/z09" % os.getpid()
    copy = name + "copy"
    dump, ids = make_dump(30, designs=1)
    (tmp_path / "dump.json").write_bytes(dump)
    restored = run_port(["-r", "-d", name, "-c", "-l", "7", "-f", "dump.json"], tmp_path, server=pouchdb_url)
    assert restored.returncode == 0, says(restored)
    backed_up = run_port(["-b", "-d", name, "-f", "back.json"], tmp_path, server=pouchdb_url)
    assert backed_up.returncode == 0, says(backed_up)
    again = run_port(["-r", "-d", copy, "-c", "-f", "back.json"], tmp_path, server=pouchdb_url)
    assert again.returncode == 0, says(again)
    # PouchDB Server 4.2 leaves "/" out of the names it lists ("a/b" is "ab"); CouchDB keeps it.
    names = http("GET", pouchdb_url + "/_all_dbs")
    assert name.replace("/", "") in names and copy.replace("/", "") in names
    assert not [listed for listed in names if " " in listed], "a '+' was read as a space: %s" % names
    for db in (name, copy):
        rows = http("GET", pouchdb_url + "/" + quote(db, safe="") + "/_all_docs")["rows"]
        assert sorted(row["id"] for row in rows) == sorted(ids)
