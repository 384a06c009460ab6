"""Reliability: faults, bad input and interruptions - nothing lost, nothing silent.

The promise pinned here: exit code 0 means the whole database is in the file
(backup) or in the server (restore).  Anything else is a non-zero exit with a
`... ERROR:` line on stdout saying what happened, and no file that looks like
a good backup.  Where couchdb-dump.sh is sound (its retries, WARN/ERROR
messages and exit code 1) the port keeps it word for word.

Every test runs the port as a subprocess against tests/tools/couch_stub.py with
injected faults.  The fault matrix (each restore request x each kind of
fault, failing once or for ever) is slow one by one - every retry sleeps 1 s,
as the script does - so its runs are started together in a thread pool the
first time a test needs one, and each test then checks its own run.
"""

import base64
import gzip
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from couch_stub import CouchStub, Fault
from helpers import FOOTER, HEADER, closed_port, dump_of, interrupt, make_dump, run_port, says, start_port


# CouchDB's own error bodies for the statuses the matrix injects.
COUCH_ERRORS = {
    500: b'{"error":"unknown_error","reason":"badarg"}\n',
    503: b'{"error":"service_unavailable","reason":"Service unavailable, try again later."}\n',
    401: b'{"error":"unauthorized","reason":"Name or password is incorrect."}\n',
    403: b'{"error":"forbidden","reason":"You are not allowed to access this db."}\n',
}


# -- helpers ------------------------------------------------------------------

def port_args(port):
    return ["-H", "127.0.0.1", "-P", str(port)]


def all_docs_reply(count, total=None, complete=False):
    """An Apache CouchDB _all_docs reply with `count` rows and `total_rows`
    `total`: only its start (header, rows) unless `complete`."""
    rows = [b'{"id":"d%03d","key":"d%03d","value":{"rev":"1-a"},"doc":{"_id":"d%03d","_rev":"1-a"}}' % (i, i, i)
            for i in range(count)]
    head = b'{"total_rows":%d,"offset":0,"rows":[\r\n' % (count + 100 if total is None else total)
    if complete:
        return head + b",\r\n".join(rows) + b"\r\n]}\n"
    return head + b"".join(row + b",\r\n" for row in rows)


def error_lines(stdout):
    return [line for line in stdout.decode("utf-8", "replace").splitlines() if "ERROR:" in line]


def warn_lines(stdout):
    return [line for line in stdout.decode("utf-8", "replace").splitlines() if line.startswith("... WARN:")]


@dataclass
class Run:
    rc: int
    stdout: bytes
    stderr: bytes
    requests: list
    store: dict
    files: list
    seconds: float
    ended: float    # time.monotonic() when the port had exited

    @property
    def returncode(self):
        return self.rc


def execute(cwd, args, dump=None, databases=("db",), faults=None, lose=None, env=None, refused=False,
            timeout=120, faults_for=None):
    """Run the port once against a fresh stub (or a closed port) in `cwd`.
    `faults_for(stub)` gives a `faults` callable that can see the stub."""
    cwd = Path(cwd)
    if dump is not None:
        (cwd / "dump.json").write_bytes(dump)
    stub = CouchStub(faults=faults, databases=databases, lose=lose)
    if faults_for is not None:
        stub.faults = faults_for(stub)
    with stub:
        port = closed_port() if refused else stub.port
        argv = [a.replace("{PORT}", str(port)) for a in args]
        started = time.monotonic()
        result = run_port(argv, cwd, env=env, timeout=timeout)
        ended = time.monotonic()
        seconds = ended - started
    store = {db: dict(docs) for db, docs in stub.store.databases.items()}
    return Run(result.returncode, result.stdout, result.stderr, list(stub.requests), store,
               sorted(os.listdir(cwd)), seconds, ended)


def inject(fault, match, times=None, start=1):
    """A `faults` callable: the `start`-th matching request and those after it
    get `fault`, `times` of them (None: for ever)."""
    seen = [0]
    lock = threading.Lock()

    def faults(index, method, path):
        if not match(method, path):
            return None
        with lock:
            seen[0] += 1
            number = seen[0]
        if number >= start and (times is None or number < start + times):
            return fault
        return None
    return faults


# -- the restore fault matrix ---------------------------------------------------

RESUME_AAB = "... ERROR: To resume this restore, run it again with -s dump.json.splitaab (or with --resume)."

# What each restore request is, how to make the port send it, and the
# script's messages for it (-a 2): (warning after a failed transfer, final
# errors after one; warning after an error reply, final errors after one).
REQUESTS = {
    "all_dbs": dict(
        match=lambda m, p: m == "GET" and p == "/_all_dbs",
        args=[], designs=0, databases=("db",),
        cut_body=b'["_replicator","_us',
        transfer_warn="... WARN: Curl failed to get the list of databases - Attempt 1/2. Retrying...",
        transfer_errors=["... ERROR: Curl failed to get the list of databases - Stopping"]),
    "create_db": dict(
        match=lambda m, p: m == "PUT" and p == "/db",
        args=["-c"], designs=0, databases=(),
        cut_body=b'{"ok":tr',
        transfer_warn="... WARN: Curl failed to create the database db - Attempt 1/2. Retrying...",
        transfer_errors=["... ERROR: Curl failed to create the database db - Stopping",
                         ".. ERROR: See above for any errors"],
        reply_warn="... WARN: CouchDB Reported an error during db creation - Attempt 1/2 - Retrying...",
        reply_errors=["... ERROR: CouchDB Reported: {body}"]),
    "design_put": dict(
        match=lambda m, p: m == "PUT" and p == "/db/_design/d0",
        args=[], designs=2, databases=("db",),
        cut_body=b'{"ok":true,"id":"_desi',
        transfer_warn="... WARN: Import of dump.json-design.0 failed - Attempt 1/2. Retrying...",
        transfer_errors=["... ERROR: Curl failed trying to restore dump.json-design.0 - Stopping"],
        reply_warn="... WARN: CouchDB Reported an error during import - Attempt 1/2 - Retrying...",
        reply_errors=["... ERROR: CouchDB Reported: {body}"]),
    # -l 2: chunks of 1, 2, 2 and 0 documents; the fault hits the second.
    "bulk_chunk": dict(
        match=lambda m, p: m == "POST" and p == "/db/_bulk_docs", start=2,
        args=["-l", "2"], designs=0, databases=("db",),
        cut_body=b'[{"ok":true,"id":"doc0',
        transfer_warn="... WARN: Failed to import dump.json.splitaab - Attempt 1/2 - Retrying...",
        transfer_errors=["... ERROR: Curl failed trying to restore dump.json.splitaab - Stopping"],
        reply_warn="... WARN: CouchDB Reported and error during import - Attempt 1/2 - Retrying...",
        reply_errors=["... ERROR: CouchDB Reported: {body}"]),
    "bulk_single": dict(
        match=lambda m, p: m == "POST" and p == "/db/_bulk_docs",
        args=[], designs=0, databases=("db",),
        cut_body=b'[{"ok":true,"id":"doc0',
        transfer_warn="... WARN: Import of dump.json failed - Attempt 1/2 - Retrying...",
        transfer_errors=["... ERROR: Import of dump.json failed.",
                         "... ERROR: Error message was:   the connection failed ("],
        reply_warn="... WARN: Import of dump.json failed - Attempt 1/2 - Retrying...",
        reply_errors=["... ERROR: Import of dump.json failed.",
                      "... ERROR: Error message was:   {body}"]),
}

TRANSFER_FAULTS = ["drop", "cut", "chunked_cut", "hang"]
REPLY_FAULTS = ["500", "503", "401", "403"]
FAULTS = TRANSFER_FAULTS + REPLY_FAULTS


def make_fault(kind, request):
    if kind in ("drop",):
        return Fault("drop")
    if kind in ("cut", "chunked_cut"):
        return Fault(kind, body=REQUESTS[request]["cut_body"])
    if kind == "hang":
        return Fault("hang", seconds=5)
    status = int(kind)
    return Fault("status", status, COUCH_ERRORS[status])


def restore_scenario(request, kind, mode):
    """(args, kwargs) for execute(): `mode` is "once" or "always"."""
    spec = REQUESTS[request]
    dump, _ = make_dump(5, designs=spec["designs"])
    args = ["-r", *port_args("{PORT}"), "-d", "db", "-f", "dump.json", "-a", "2", *spec["args"]]
    if kind == "hang":
        args += ["--timeout", "1"]
    faults = inject(make_fault(kind, request), spec["match"], times=1 if mode == "once" else None,
                    start=spec.get("start", 1))
    return args, dict(dump=dump, databases=spec["databases"], faults=faults)


def expected_ids(request):
    return make_dump(5, designs=REQUESTS[request]["designs"])[1]


# Every scenario the module's tests may ask for, by key.
SCENARIOS = {}
for _request in REQUESTS:
    for _kind in FAULTS:
        for _mode in ("once", "always"):
            SCENARIOS[("restore", _request, _kind, _mode)] = (
                lambda r=_request, k=_kind, m=_mode: restore_scenario(r, k, m))


@pytest.fixture(scope="module")
def scenario_runs(request, tmp_path_factory):
    """Start every scenario the selected tests use, all at once; a test waits
    for its own.  Returns a function key -> Run."""
    wanted = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or getattr(item, "module", None) is not sys.modules[__name__]:
            continue
        key = callspec.params.get("scenario")
        if key in SCENARIOS and key not in wanted:
            wanted.append(key)
    pool = ThreadPoolExecutor(max_workers=12)
    futures = {}

    def start(key):
        args, kwargs = SCENARIOS[key]()
        directory = tmp_path_factory.mktemp("run")
        return pool.submit(execute, directory, args, **kwargs)
    for key in wanted:
        futures[key] = start(key)

    def result(key):
        if key not in futures:
            futures[key] = start(key)
        return futures[key].result()
    yield result
    pool.shutdown(wait=True)


def matrix(requests, faults, mode):
    return [pytest.param(("restore", r, k, mode), id="%s-%s" % (r, k)) for r in requests for k in faults]


def sent_to(run, request):
    """The requests of that kind, from the one the fault aims at."""
    spec = REQUESTS[request]
    return [r for r in run.requests if spec["match"](r.method, r.path)][spec.get("start", 1) - 1:]


def format_errors(lines, body):
    return [line.replace("{body}", body.decode().rstrip("\n")) for line in lines]


# Requests retried on both kinds of fault; _all_dbs is retried only when the
# transfer fails (an error reply is taken as an unreadable list, as bash does).
RETRIED_ON_REPLY = ["create_db", "design_put", "bulk_chunk", "bulk_single"]


@pytest.mark.parametrize("scenario", matrix(REQUESTS, TRANSFER_FAULTS, "always")
                         + matrix(RETRIED_ON_REPLY, REPLY_FAULTS, "always"))
def test_permanent_fault_is_retried_a_times_then_fails_with_the_scripts_messages(scenario, scenario_runs):
    _, request, kind, _ = scenario
    run = scenario_runs(scenario)
    spec = REQUESTS[request]
    assert run.rc == 1, says(run)
    if kind in TRANSFER_FAULTS:
        warn, errors = spec["transfer_warn"], spec["transfer_errors"]
    else:
        warn, errors = spec["reply_warn"], format_errors(spec["reply_errors"], COUCH_ERRORS[int(kind)])
    if request == "bulk_chunk":
        # How to resume (#11): the last ERROR line once a long option is
        # given (--timeout for "hang"); with the script's options alone its
        # stdout stays the script's, and the hint goes to stderr.
        if kind == "hang":
            errors = errors + [RESUME_AAB]
        else:
            assert RESUME_AAB[len("... ERROR: "):] in run.stderr.decode(), says(run)
    assert warn_lines(run.stdout) == [warn], says(run)
    got = error_lines(run.stdout)
    assert len(got) == len(errors), says(run)
    for line, expected in zip(got, errors):
        assert line.startswith(expected) if expected.endswith("(") else line == expected, says(run)
    # -a 2: exactly two attempts, and nothing sent after the failed request
    # but, once documents were being written and a long option was given
    # (--timeout for "hang"), the question for the database's doc_count.
    attempts = sent_to(run, request)
    assert len(attempts) == 2, [(r.method, r.path) for r in run.requests]
    after = run.requests[run.requests.index(attempts[-1]) + 1:]
    asked = kind == "hang" and request in ("design_put", "bulk_chunk", "bulk_single")
    assert [(r.method, r.path) for r in after] == ([("GET", "/db")] if asked else []), says(run)
    assert attempts[1].time - attempts[0].time >= 0.9, "the script waits 1 s between attempts"
    assert attempts[0].body == attempts[1].body
    assert run.files == ["dump.json"]


@pytest.mark.parametrize("scenario", matrix(REQUESTS, TRANSFER_FAULTS, "once")
                         + matrix(RETRIED_ON_REPLY, REPLY_FAULTS, "once"))
def test_fault_that_happens_once_is_retried_and_every_document_arrives(scenario, scenario_runs):
    _, request, kind, _ = scenario
    run = scenario_runs(scenario)
    spec = REQUESTS[request]
    assert run.rc == 0, says(run)
    warn = spec["transfer_warn"] if kind in TRANSFER_FAULTS else spec["reply_warn"]
    assert warn_lines(run.stdout) == [warn], says(run)
    assert error_lines(run.stdout) == [], says(run)
    assert sorted(run.store["db"]) == sorted(expected_ids(request))
    failed = sent_to(run, request)[0]
    assert [r.body for r in run.requests if r.path == failed.path].count(failed.body) == 2, \
        "the failed request is sent once more, and only once"


@pytest.mark.parametrize("scenario", matrix(["design_put", "bulk_chunk", "bulk_single"], FAULTS, "once"))
def test_retried_request_resends_exactly_the_same_bytes(scenario, scenario_runs):
    _, request, kind, _ = scenario
    run = scenario_runs(scenario)
    failed, retried = sent_to(run, request)[:2]
    assert failed.body and failed.body == retried.body
    assert failed.headers.get("content-type") == retried.headers.get("content-type") == "application/json"
    if request == "bulk_chunk":
        assert b'"doc001"' in failed.body and b'"doc002"' in failed.body
    # Every document went exactly as the dump holds it.
    assert run.store["db"]["doc002"] == {"_id": "doc002", "_rev": "1-002", "value": 2}


@pytest.mark.parametrize("scenario", matrix(["bulk_chunk"], FAULTS, "always"))
def test_failed_chunk_says_on_stderr_which_chunk_and_how_many_documents_were_written(scenario, scenario_runs):
    run = scenario_runs(scenario)
    assert run.rc == 1
    lines = [line for line in run.stderr.decode().splitlines()
             if line.startswith("couchdb_dump: the restore stopped at")]
    written = "couchdb_dump: the restore stopped at dump.json.splitaab: this run wrote 1 of the dump's 5 documents; "
    asked = [r for r in run.requests if r.method == "GET" and r.path == "/db"]
    if scenario[2] == "hang":
        # --timeout is a long option: the run may ask the database what it holds.
        assert lines == [written + "the database holds 1 documents now (its doc_count, with any it held before)"]
        assert len(asked) == 1
    else:
        # The script's options: no request the script would not send, so the database is not asked.
        assert lines == [written + "the database may hold more (a chunk whose answer was lost can be stored all"
                         " the same)"], says(run)
        assert asked == []
    # ... and that is the truth: the first chunk's one document, no more.
    assert sorted(run.store["db"]) == ["doc000"]


@pytest.mark.parametrize("scenario", matrix(["all_dbs"], REPLY_FAULTS, "always"))
def test_error_reply_to_all_dbs_is_not_retried_and_the_restore_goes_on(scenario, scenario_runs):
    # bash: curl succeeded, the reply is no list: "- Continuing" (no retry).
    run = scenario_runs(scenario)
    assert sent_to(run, "all_dbs") == run.requests[:1]
    assert warn_lines(run.stdout) == ["... WARN: Curl failed to get the list of databases - Continuing"]
    assert run.rc == 0, says(run)
    assert sorted(run.store["db"]) == expected_ids("all_dbs")


def pooled(build):
    """Run a test's port run in the module's pool with the others:
    `build()` gives execute()'s args and keyword arguments."""
    def wrap(test):
        key = ("single", test.__name__)
        SCENARIOS[key] = build
        return pytest.mark.parametrize("scenario", [pytest.param(key, id="run")])(test)
    return wrap


@pooled(lambda: (["-r", *port_args("{PORT}"), "-d", "db", "-f", "dump.json", "-a", "2"],
                 dict(dump=make_dump(3)[0], refused=True)))
def test_restore_to_a_closed_port_is_retried_then_fails(scenario, scenario_runs):
    run = scenario_runs(scenario)
    assert run.rc == 1
    assert run.stdout == (b"... INFO: Checking for database\n"
                          b"... WARN: Curl failed to get the list of databases - Attempt 1/2. Retrying...\n"
                          b"... ERROR: Curl failed to get the list of databases - Stopping\n")
    assert run.files == ["dump.json"]


@pooled(lambda: (["-r", *port_args("{PORT}"), "-d", "db", "-f", "dump.json", "-l", "2"],
                 dict(dump=make_dump(5)[0], faults=inject(Fault("status", 500, COUCH_ERRORS[500]),
                                                          REQUESTS["bulk_chunk"]["match"], start=2))))
def test_default_attempts_are_three_one_second_apart(scenario, scenario_runs):
    run = scenario_runs(scenario)
    assert run.rc == 1
    assert warn_lines(run.stdout) == [
        "... WARN: CouchDB Reported and error during import - Attempt 1/3 - Retrying...",
        "... WARN: CouchDB Reported and error during import - Attempt 2/3 - Retrying..."]
    assert error_lines(run.stdout) == ['... ERROR: CouchDB Reported: {"error":"unknown_error","reason":"badarg"}']
    # the script's options only: its stdout to the letter, the resume hint on stderr
    assert run.stdout.endswith(b'... ERROR: CouchDB Reported: {"error":"unknown_error","reason":"badarg"}\n')
    assert ("couchdb_dump: " + RESUME_AAB[len("... ERROR: "):]).encode() in run.stderr
    posts = [r for r in run.requests if r.method == "POST"]
    assert len(posts) == 4   # chunk 1, then chunk 2 three times
    assert all(b.time - a.time >= 0.9 for a, b in zip(posts[1:], posts[2:]))
    assert posts[1].body == posts[2].body == posts[3].body


@pooled(lambda: (["-r", *port_args("{PORT}"), "-d", "db", "-f", "dump.json", "-a", "2"],
                 dict(dump=make_dump(3)[0], faults=lambda i, m, p: Fault("status", 401, COUCH_ERRORS[401]))))
def test_wrong_password_on_every_request_fails_the_restore(scenario, scenario_runs):
    run = scenario_runs(scenario)
    assert run.rc == 1
    assert error_lines(run.stdout) == [
        "... ERROR: Import of dump.json failed.",
        '... ERROR: Error message was:   {"error":"unauthorized","reason":"Name or password is incorrect."}']
    assert run.store["db"] == {}


# _all_dbs answers an error: bash goes on without creating the database; the
# upload then meets "not_found" and the run must fail, not succeed.
@pooled(lambda: (["-r", *port_args("{PORT}"), "-d", "db", "-f", "dump.json", "-a", "2", "-c"],
                 dict(dump=make_dump(3)[0], databases=(),
                      faults=inject(Fault("status", 503, COUCH_ERRORS[503]), REQUESTS["all_dbs"]["match"]))))
def test_unreadable_database_list_with_c_does_not_pretend_the_database_exists(scenario, scenario_runs):
    run = scenario_runs(scenario)
    assert run.rc == 1
    assert error_lines(run.stdout)[0] == "... ERROR: Import of dump.json failed."
    assert "db" not in run.store


# new_edits:false makes _bulk_docs idempotent: resending is safe.
@pooled(lambda: (["-r", *port_args("{PORT}"), "-d", "db", "-f", "dump.json", "-a", "2", "-l", "2"],
                 dict(dump=make_dump(5)[0],
                      faults=inject(Fault("drop_after"), REQUESTS["bulk_chunk"]["match"], times=1, start=2))))
def test_chunk_whose_reply_is_lost_after_it_was_stored_is_resent_and_succeeds(scenario, scenario_runs):
    run = scenario_runs(scenario)
    assert run.rc == 0, says(run)
    assert sorted(run.store["db"]) == make_dump(5)[1]


def fail_chunk_holding(doc_id, others_delay):
    """faults_for: every POST of the chunk holding `doc_id` answers 500; the
    other chunks are answered after `others_delay` seconds."""
    def faults_for(stub):
        def faults(index, method, path):
            if method != "POST":
                return None
            if b'"%s"' % doc_id.encode() in stub.requests[index].body:
                return Fault("status", 500, COUCH_ERRORS[500])
            return Fault("delay", seconds=others_delay)
        return faults
    return faults_for


@pooled(lambda: (["-r", *port_args("{PORT}"), "-d", "db", "-f", "dump.json", "-a", "2", "-l", "2", "--jobs", "3"],
                 dict(dump=make_dump(20)[0], faults_for=fail_chunk_holding("doc001", 0.2))))
def test_failed_chunk_with_jobs_tells_how_many_documents_are_in_the_server(scenario, scenario_runs):
    run = scenario_runs(scenario)
    assert run.rc == 1
    line = [l for l in run.stderr.decode().splitlines() if l.startswith("couchdb_dump: the restore stopped at")]
    assert len(line) == 1, says(run)
    written = int(re.search(r"this run wrote (\d+) of the dump's 20 documents", line[0]).group(1))
    assert written == len(run.store["db"]), "%s, but the server holds %s" % (line[0], sorted(run.store["db"]))
    held = int(re.search(r"the database holds (\d+) documents now \(its doc_count", line[0]).group(1))
    assert held == len(run.store["db"])


@pytest.mark.parametrize("body", [b"<html><body>OK</body></html>\n", b""], ids=["html_page", "empty_body"])
@pytest.mark.parametrize("lines", ["5000", "2"], ids=["single_body", "chunks"])
def test_2xx_bulk_docs_reply_that_is_no_couchdb_answer_is_not_success(body, lines, tmp_path):
    dump, _ = make_dump(5)
    run = execute(tmp_path, ["-r", *port_args("{PORT}"), "-d", "db", "-f", "dump.json", "-a", "1", "-l", lines],
                  dump=dump, faults=lambda i, m, p: Fault("status", 200, body) if m == "POST" else None)
    assert run.store["db"] == {}
    assert run.rc != 0, says(run)
    assert [l for l in run.stdout.splitlines() if l.startswith(b"... ERROR: ")]


# -- backup faults --------------------------------------------------------------

BACKUP_FAULTS = {
    "drop": Fault("drop"),
    "cut_content_length": Fault("cut", body=all_docs_reply(5)),
    "cut_chunked": Fault("chunked_cut", body=all_docs_reply(5)),
    "http_500": Fault("status", 500, COUCH_ERRORS[500]),
    "http_503": Fault("status", 503, COUCH_ERRORS[503]),
    "http_401": Fault("status", 401, COUCH_ERRORS[401]),
    "http_403": Fault("status", 403, COUCH_ERRORS[403]),
    "no_answer": Fault("hang", seconds=5),
    "stalls_mid_body": Fault("trickle", body=all_docs_reply(5), seconds=5),
    # The reply ends cleanly (whole chunked stream) but before its footer.
    "ends_before_footer": Fault("status", 200, all_docs_reply(5, total=5)),
    "fewer_rows_than_total": Fault("status", 200, all_docs_reply(3, total=5, complete=True)),
    "one_line_layout_cut": Fault("status", 200, b'{"total_rows":2,"offset":0,"rows":[{"id":"a","key":"a",'
                                                b'"value":{"rev":"1-a"},"doc":{"_id":"a","_rev":"1-a"}},{"id":'),
    "proxy_html_502": Fault("status", 502, b"<html><body>502 Bad Gateway</body></html>\n"),
}


def backup_scenario(fault, compress):
    args = ["-b", *port_args("{PORT}"), "-d", "db", "-f", "out.json", "--timeout", "1"] + (["-z"] if compress else [])
    return args, dict(faults=lambda i, m, p: BACKUP_FAULTS[fault])


# -z writes through gzip: its failures must leave no .gz either.
GZIP_BACKUP_FAULTS = ["cut_chunked", "http_500", "stalls_mid_body", "ends_before_footer"]
for _fault in BACKUP_FAULTS:
    for _compress in (False, True):
        SCENARIOS[("backup", _fault, _compress)] = lambda f=_fault, c=_compress: backup_scenario(f, c)


@pytest.mark.parametrize("scenario", [pytest.param(("backup", fault, False), id=fault) for fault in BACKUP_FAULTS]
                         + [pytest.param(("backup", fault, True), id=fault + "-gzip") for fault in GZIP_BACKUP_FAULTS])
def test_failed_backup_leaves_no_file_at_all_and_says_error(scenario, scenario_runs):
    run = scenario_runs(scenario)
    assert run.rc != 0, says(run)
    assert run.files == [], "no file, not even a temporary one"
    assert [line for line in run.stdout.splitlines() if line.startswith(b"... ERROR: ")], says(run)
    assert b"completed successfully" not in run.stdout
    assert [(r.method, r.path) for r in run.requests] == [("GET", "/db/_all_docs?include_docs=true&attachments=true")]


@pytest.mark.parametrize("scenario, message", [
    pytest.param(("backup", fault, False), message, id=fault) for fault, message in [
        ("drop", "... ERROR: Curl encountered an issue whilst dumping the database."),
        ("cut_content_length", "... ERROR: Curl encountered an issue whilst dumping the database."),
        ("cut_chunked", "... ERROR: Curl encountered an issue whilst dumping the database."),
        ("no_answer", "... ERROR: Curl encountered an issue whilst dumping the database."),
        ("stalls_mid_body", "... ERROR: Curl encountered an issue whilst dumping the database."),
        ("http_500", '... ERROR: CouchDB reported: {"error":"unknown_error","reason":"badarg"}'),
        ("http_503", '... ERROR: CouchDB reported: {"error":"service_unavailable",'
                     '"reason":"Service unavailable, try again later."}'),
        ("http_401", '... ERROR: CouchDB reported: {"error":"unauthorized","reason":"Name or password is incorrect."}'),
        ("http_403", '... ERROR: CouchDB reported: {"error":"forbidden",'
                     '"reason":"You are not allowed to access this db."}'),
    ]])
def test_failed_backup_says_what_happened_in_the_scripts_words(scenario, message, scenario_runs):
    run = scenario_runs(scenario)
    assert run.rc == 1
    assert run.stdout.decode() == "... INFO: Output file out.json\n" + message + "\n"


@pytest.mark.parametrize("scenario", [("backup", "stalls_mid_body", False)], ids=["stalls_mid_body"])
def test_backup_gives_up_on_a_silent_server_after_the_timeout(scenario, scenario_runs):
    run = scenario_runs(scenario)
    assert run.rc == 1
    assert run.ended - run.requests[0].time < 3.5, "--timeout 1 must not wait for the 5 s stall"
    assert run.stderr.decode() == "couchdb_dump: no answer for 1 s (--timeout)\n"


@pooled(lambda: (["-b", *port_args("{PORT}"), "-d", "db", "-f", "out.json"], dict(refused=True)))
def test_backup_to_a_closed_port_leaves_no_file(scenario, scenario_runs):
    run = scenario_runs(scenario)
    assert run.rc == 1
    assert run.stdout == (b"... INFO: Output file out.json\n"
                          b"... ERROR: Curl encountered an issue whilst dumping the database.\n")
    assert run.files == []


# -- bad input: refused before anything is sent ------------------------------------

def restore_bad(tmp_path, data, name="dump.json", extra=()):
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    with CouchStub(databases=["db"]) as stub:
        result = run_port(["-r", "-d", "db", "-f", name, *extra], tmp_path, server=stub.port)
    return result, stub


def assert_refused_at(result, stub, name, line=None):
    """Exit 1, nothing sent, one `... ERROR: <name> line <line>: ` line
    (any line number when `line` is None); returns that line."""
    assert result.returncode == 1, result.stdout
    assert stub.requests == [], "nothing may be sent for a broken dump"
    errors = [l for l in result.stdout.decode("utf-8", "replace").splitlines() if l.startswith("... ERROR: ")]
    assert len(errors) == 1, result.stdout
    pattern = r"\.\.\. ERROR: %s line %s: " % (re.escape(name), r"\d+" if line is None else line)
    assert re.match(pattern, errors[0]), "%r does not name %s and the line" % (errors[0], name)
    return errors[0]


GOOD = [b'{"_id":"a","_rev":"1-a"}', b'{"_id":"b","_rev":"1-b"}', b'{"_id":"c","_rev":"1-c"}']


@pytest.mark.parametrize("data, line", [
    pytest.param(b"", 1, id="empty_file"),
    pytest.param(b"this is not JSON\nat all\n", 1, id="not_json"),
    pytest.param(b'{"rows":[]}\n', 1, id="json_but_no_dump_header"),
    pytest.param(b"\n".join([HEADER, GOOD[0] + b",", GOOD[1] + b",", GOOD[2] + b","]) + b"\n", 4,
                 id="cut_short_without_footer"),
    pytest.param(b"\n".join([HEADER, GOOD[0] + b",", GOOD[1] + b",", b'{"_id":"c","_re']), 4,
                 id="last_line_cut_in_the_middle"),
    pytest.param(b"\n".join([HEADER, GOOD[0] + b",", b'{"_id":"b","_rev":"1-b",,', GOOD[2], FOOTER]) + b"\n", 3,
                 id="invalid_json_on_line_3_of_5"),
    pytest.param(b"\n".join([HEADER, GOOD[0] + b",", b'{"_id":"b","v":"\xff\xfe"},', GOOD[2], FOOTER]) + b"\n", 3,
                 id="bytes_not_utf8_on_line_3"),
    pytest.param(b"\n".join([HEADER, GOOD[0] + b",", GOOD[1], GOOD[2], FOOTER]) + b"\n", 3,
                 id="document_line_missing_its_comma"),
    pytest.param(b"\n".join([HEADER, GOOD[0] + b",", GOOD[1] + b",", GOOD[2] + b",", FOOTER]) + b"\n", 4,
                 id="trailing_comma_after_the_last_document"),
    pytest.param(b"\n".join([HEADER, GOOD[0] + b",", b"[1,2],", GOOD[2], FOOTER]) + b"\n", 3,
                 id="line_that_is_no_object"),
    pytest.param(b"\r\n".join([HEADER, GOOD[0] + b",", GOOD[1] + b",", b'{"_id":', GOOD[2], FOOTER]) + b"\r\n", 4,
                 id="crlf_dump_with_a_broken_line_4"),
])
def test_broken_dump_is_refused_naming_file_and_line_and_nothing_is_sent(data, line, tmp_path):
    result, stub = restore_bad(tmp_path, data)
    assert_refused_at(result, stub, "dump.json", line)


def test_broken_line_far_into_a_big_dump_is_named_by_its_number(tmp_path):
    # 75,000 lines (over 5 MB): the bad one is past the first block read.
    docs = [b'{"_id":"d%06d","_rev":"1-abcdef","payload":"xxxxxxxxxxxxxxxxxxxx"}' % i for i in range(75000)]
    docs[70000] = b'{"_id":"d070000","_rev":"1-abcdef","payload":"xxxxx'
    data = dump_of(docs)
    assert len(data) > 5 << 20
    result, stub = restore_bad(tmp_path, data)
    assert_refused_at(result, stub, "dump.json", 70002)


def test_truncated_gzip_dump_is_refused_and_nothing_is_sent(tmp_path):
    dump, _ = make_dump(2000)
    packed = gzip.compress(dump)
    result, stub = restore_bad(tmp_path, packed[:len(packed) // 2], name="dump.json.gz")
    error = assert_refused_at(result, stub, "dump.json.gz")
    assert "gzip" in error


def test_corrupt_gzip_dump_is_refused_and_nothing_is_sent(tmp_path):
    dump, _ = make_dump(2000)
    packed = bytearray(gzip.compress(dump))
    middle = len(packed) // 2
    packed[middle:middle + 64] = bytes(64)
    result, stub = restore_bad(tmp_path, bytes(packed), name="dump.json.gz")
    assert_refused_at(result, stub, "dump.json.gz")


def test_gzip_with_a_broken_line_names_the_line_of_the_text(tmp_path):
    data = b"\n".join([HEADER, GOOD[0] + b",", GOOD[1] + b",", b"oops,", GOOD[2], FOOTER]) + b"\n"
    result, stub = restore_bad(tmp_path, gzip.compress(data))
    assert_refused_at(result, stub, "dump.json", 4)


def test_directory_is_refused_as_the_script_does(tmp_path):
    (tmp_path / "somedir").mkdir()
    result, stub = restore_bad(tmp_path, None, name="somedir")
    assert result.returncode == 1
    assert result.stdout == b"... ERROR: Input file somedir not found.\n"
    assert stub.requests == []


def big_line(size):
    return b'{"_id":"big","_rev":"1-big","blob":"' + b"a" * size + b'"}'


@pytest.mark.parametrize("size_mb", [2, 5])
def test_line_longer_than_max_line_mb_is_refused(size_mb, tmp_path):
    data = dump_of([GOOD[0], big_line(size_mb << 20), GOOD[1]])
    result, stub = restore_bad(tmp_path, data, extra=("--max-line-mb", "1"))
    error = assert_refused_at(result, stub, "dump.json", 3)
    assert "longer than 1 MB" in error


def test_hundred_megabyte_line_is_refused_by_the_default_limit(tmp_path):
    if shutil.disk_usage(tmp_path).free < 1 << 30:
        pytest.skip("less than 1 GB free for a 100 MB dump")
    with open(tmp_path / "dump.json", "wb") as out:
        out.write(HEADER + b"\n" + GOOD[0] + b',\n{"_id":"big","_rev":"1-big","blob":"')
        piece = b"0123456789abcdef" * (1 << 16)   # 1 MB
        for _ in range(100):
            out.write(piece)
        out.write(b'"}\n' + FOOTER + b"\n")
    result, stub = restore_bad(tmp_path, None)
    error = assert_refused_at(result, stub, "dump.json", 3)
    assert "longer than 64 MB" in error


def test_dump_with_a_three_megabyte_document_restores_whole(tmp_path):
    blob = "é" * (3 << 19)   # 3 MB of UTF-8
    big = json.dumps({"_id": "big", "_rev": "1-big", "blob": blob}, ensure_ascii=False,
                     separators=(",", ":")).encode()
    dump, ids = make_dump(4, big=big)
    (tmp_path / "dump.json").write_bytes(dump)
    with CouchStub(databases=["db"]) as stub:
        result = run_port(["-r", "-d", "db", "-f", "dump.json", "-l", "2", "--verify"], tmp_path, server=stub.port)
    assert result.returncode == 0, result.stdout
    assert sorted(stub.store.databases["db"]) == sorted(ids)
    assert stub.store.databases["db"]["big"]["blob"] == blob


# -- interruptions -------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("signum, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_signal_during_backup_removes_the_temporary_file(signum, code, name, compress, tmp_path):
    slow = Fault("trickle", body=all_docs_reply(5), seconds=30)
    with CouchStub(databases=["db"], faults=lambda i, m, p: slow) as stub:
        process = start_port(["-b", "-d", "db", "-f", "out.json"] + (["-z"] if compress else []), tmp_path,
                             server=stub.port)
        def writing():
            time.sleep(0.3)   # the rows sent are being written
            assert [n for n in os.listdir(tmp_path) if n.endswith(".part")], os.listdir(tmp_path)
        _, stdout, stderr = interrupt(process, signum, lambda: stub.requests and os.listdir(tmp_path), writing)
    assert process.returncode == code, stdout
    assert os.listdir(tmp_path) == []
    assert stdout.decode().splitlines()[-1] == "... ERROR: Interrupted by %s: no backup was written." % name


def stopped_message(stdout):
    lines = [l for l in stdout.decode().splitlines() if l.startswith("... ERROR: Stopped by ")]
    assert len(lines) == 1, stdout
    match = re.match(r"\.\.\. ERROR: Stopped by (SIG\w+): (\d+) of (\d+) documents were written", lines[0])
    assert match, lines[0]
    return match.group(1), int(match.group(2)), int(match.group(3))


def test_signal_during_the_last_chunk_skips_verify_and_says_so(tmp_path):
    dump, _ = make_dump(5)
    (tmp_path / "dump.json").write_bytes(dump)
    posts = []

    def faults(index, method, path):
        if method == "POST":
            posts.append(index)
            if len(posts) == 4:     # -l 2: chunks of 1, 2, 2 and 0 documents; the last
                return Fault("delay", seconds=1.0)
        return None
    with CouchStub(databases=["db"], faults=faults) as stub:
        process = start_port(["-r", "-d", "db", "-f", "dump.json", "-l", "2", "--verify"], tmp_path, server=stub.port)
        _, stdout, stderr = interrupt(process, signal.SIGINT, lambda: len(posts) == 4)
        after = [(r.method, r.path) for r in stub.requests[stub.requests.index(stub.requests[posts[-1]]) + 1:]]
    assert process.returncode == 130, stdout + stderr
    assert b"Unexpected failure" not in stdout and b"Traceback" not in stderr
    assert stdout.decode().splitlines()[-1] == (
        "... ERROR: Stopped by SIGINT after the last chunk: 5 of 5 documents were written; --verify was not run.")
    assert after == []   # no request for --verify


@pytest.mark.parametrize("signum, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_signal_during_chunked_restore_stops_after_the_current_request(signum, code, name, tmp_path):
    dump, _ = make_dump(20)
    (tmp_path / "dump.json").write_bytes(dump)
    slow = Fault("delay", seconds=0.3)
    with CouchStub(databases=["db"], faults=lambda i, m, p: slow if m == "POST" else None) as stub:
        process = start_port(["-r", "-d", "db", "-f", "dump.json", "-l", "2"], tmp_path, server=stub.port)
        in_flight, stdout, stderr = interrupt(process, signum, lambda: len(stub.requests) >= 4,   # _all_dbs, 3 chunks
                                              lambda: len(stub.requests))
        requests = len(stub.requests)
        stored = len(stub.store.databases["db"])
    assert process.returncode == code, stdout
    assert requests <= in_flight + 1, "requests went on after the signal"
    signame, written, total = stopped_message(stdout)
    assert (signame, total) == (name, 20)
    assert written == stored, "the message must tell how many documents are in the server"
    assert 0 < written < 20


def test_signal_during_retry_wait_stops_without_the_next_attempt(tmp_path):
    dump, _ = make_dump(5)
    (tmp_path / "dump.json").write_bytes(dump)
    faults = inject(Fault("status", 500, COUCH_ERRORS[500]), REQUESTS["bulk_chunk"]["match"], start=2)
    with CouchStub(databases=["db"], faults=faults) as stub:
        process = start_port(["-r", "-d", "db", "-f", "dump.json", "-l", "2", "-a", "9"], tmp_path, server=stub.port)
        def waiting():
            time.sleep(0.2)                             # in the 1 s wait
            return len(stub.requests)
        # _all_dbs, chunk 1, chunk 2 failed once
        in_flight, stdout, stderr = interrupt(process, signal.SIGTERM, lambda: len(stub.requests) >= 3, waiting)
    assert process.returncode == 143, stdout
    assert len(stub.requests) <= in_flight + 1
    assert stopped_message(stdout) == ("SIGTERM", 1, 5)


def test_signal_while_design_documents_are_restored_stops_after_the_current_request(tmp_path):
    dump, _ = make_dump(3, designs=8)
    (tmp_path / "dump.json").write_bytes(dump)
    slow = Fault("delay", seconds=0.3)
    with CouchStub(databases=["db"], faults=lambda i, m, p: slow if m == "PUT" else None) as stub:
        process = start_port(["-r", "-d", "db", "-f", "dump.json"], tmp_path, server=stub.port)
        in_flight, stdout, stderr = interrupt(process, signal.SIGTERM,
                                              lambda: len(stub.requests) >= 3,   # _all_dbs, two design documents
                                              lambda: len(stub.requests))
    assert len(stub.requests) <= in_flight + 1, "requests went on after the signal: %s" % stdout.decode()
    assert process.returncode == 143, stdout
    assert stopped_message(stdout)[0] == "SIGTERM"


# -- secrets -----------------------------------------------------------------------------

PASSWORD = "S3cr3t-Pa55 w:rd"
AUTHORIZATION = "Basic " + base64.b64encode(("admin:" + PASSWORD).encode()).decode()


def credentials(how):
    """(extra args, -H value, env) giving user admin and PASSWORD."""
    if how == "options":
        return ["-u", "admin", "-p", PASSWORD], "127.0.0.1", {}
    if how == "url":
        return [], "http://admin:S3cr3t-Pa55%20w%3Ard@127.0.0.1", {}
    return [], "127.0.0.1", {"COUCHDB_USER": "admin", "COUCHDB_PASS": PASSWORD}


SECRET_CASES = {
    # name: (mode, fault, refused, expected rc)
    "backup_ok": ("-b", None, False, 0),
    "backup_401": ("-b", Fault("status", 401, COUCH_ERRORS[401]), False, 1),
    "backup_refused": ("-b", None, True, 1),
    "backup_timeout": ("-b", Fault("hang", seconds=5), False, 1),
    "restore_ok": ("-r", None, False, 0),
    "restore_401": ("-r", Fault("status", 401, COUCH_ERRORS[401]), False, 1),
    "restore_refused": ("-r", None, True, 1),
    "restore_timeout": ("-r", Fault("hang", seconds=5), False, 1),
}


def secret_scenario(how, case):
    extra, host, env = credentials(how)
    mode, fault, refused, _ = SECRET_CASES[case]
    dump, _ = make_dump(3, designs=1)
    args = [mode, "-H", host, "-P", "{PORT}", "-d", "db", "-f", "dump.json" if mode == "-r" else "out.json",
            "-a", "1", "--timeout", "1", "--json", "--verify" if mode == "-r" else "--no-progress", *extra]
    return args, dict(dump=dump if mode == "-r" else None, env=env, refused=refused,
                      faults=(lambda i, m, p: fault) if fault else None)


for _how in ("options", "url", "env"):
    for _case in SECRET_CASES:
        SCENARIOS[("secret", _how, _case)] = lambda h=_how, c=_case: secret_scenario(h, c)


@pytest.mark.parametrize("scenario", [pytest.param(("secret", how, case), id="%s-%s" % (how, case))
                                      for how in ("options", "url", "env") for case in SECRET_CASES])
def test_password_never_printed_and_only_sent_in_the_authorization_header(scenario, scenario_runs):
    _, how, case = scenario
    run = scenario_runs(scenario)
    assert run.rc == SECRET_CASES[case][3], says(run)
    output = run.stdout + run.stderr
    for form in (PASSWORD, "S3cr3t", "S3cr3t-Pa55%20w%3Ard", AUTHORIZATION.split()[1]):
        assert form.encode() not in output, "%r printed:\n%s" % (form, says(run))
    # --json: the last stdout line is the summary, and it is valid.
    summary = json.loads(run.stdout.splitlines()[-1])
    assert summary["ok"] is (run.rc == 0)
    for request in run.requests:
        assert request.headers.get("authorization") == AUTHORIZATION
        assert "S3cr3t" not in request.path and b"S3cr3t" not in request.body
        assert "admin" not in request.path
    if not SECRET_CASES[case][2]:
        assert run.requests, "the server was reached"


# -- --verify ---------------------------------------------------------------------------

def verify_run(tmp_path, lose=None, faults=None, databases=("db",), extra=(), before=None):
    dump, ids = make_dump(6, designs=2)
    (tmp_path / "dump.json").write_bytes(dump)
    with CouchStub(databases=databases, lose=lose, faults=faults) as stub:
        for doc in before or ():
            stub.store.databases["db"][doc["_id"]] = doc
        result = run_port(["-r", "-d", "db", "-f", "dump.json", "--verify", *extra], tmp_path, server=stub.port)
    return result, stub, ids


def test_verify_confirms_every_document_with_counts(tmp_path):
    result, stub, ids = verify_run(tmp_path, extra=("-l", "3"))
    assert result.returncode == 0, result.stdout
    lines = result.stdout.decode().splitlines()
    assert lines[-2:] == [
        "... INFO: Verifying db against dump.json",
        "... INFO: Verified: all 8 documents of the dump are in db with their revisions (2 design documents by id)."]
    assert stub.requests[-1].method == "GET" and stub.requests[-1].path.startswith("/db/_all_docs")


def test_verify_names_documents_the_server_accepted_but_did_not_store(tmp_path):
    result, stub, ids = verify_run(tmp_path, lose=lambda doc_id: doc_id in ("doc002", "doc004"), extra=("-l", "3"))
    assert result.returncode == 1, result.stdout
    assert error_lines(result.stdout) == [
        "... ERROR: Verify: 2 of 8 documents of the dump are missing from db or at another revision:",
        '... ERROR:   missing: "doc002" at revision 1-002',
        '... ERROR:   missing: "doc004" at revision 1-004']


def test_verify_names_a_document_left_at_another_revision(tmp_path):
    result, stub, ids = verify_run(tmp_path, lose=lambda doc_id: doc_id == "doc003",
                                   before=[{"_id": "doc003", "_rev": "2-other"}])
    assert result.returncode == 1, result.stdout
    assert '... ERROR:   missing: "doc003" at revision 1-003' in error_lines(result.stdout)


def test_verify_checks_design_documents_by_id(tmp_path):
    fake = Fault("status", 201, b'{"ok":true,"id":"_design/d1","rev":"1-x"}\n')
    result, stub, ids = verify_run(tmp_path, faults=lambda i, m, p: fake if p == "/db/_design/d1" else None)
    assert result.returncode == 1, result.stdout
    assert error_lines(result.stdout) == [
        "... ERROR: Verify: 1 of 8 documents of the dump are missing from db or at another revision:",
        '... ERROR:   missing: "_design/d1"']


@pytest.mark.parametrize("fault", [Fault("status", 500, COUCH_ERRORS[500]), Fault("chunked_cut", body=b""),
                                   Fault("status", 200, b'{"total_rows":8,"offset":0,"rows":[\r\n')],
                         ids=["http_500", "cut", "ends_early"])
def test_verify_that_cannot_read_the_database_fails(fault, tmp_path):
    result, stub, ids = verify_run(tmp_path, faults=lambda i, m, p: fault if "_all_docs" in p else None)
    assert result.returncode == 1, result.stdout
    assert error_lines(result.stdout)[-1].startswith("... ERROR: Verify failed: could not read the documents of db")
