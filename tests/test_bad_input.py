"""Bad input never destroys, fakes or crashes (issue #9).

One test per reproduction of the issue, plus the class each belongs to:
every option and the whole plan checked before the first request that
changes the server, every reply checked for its shape, user text never part
of a format template, --json's line last and alone, a TLS handshake that
gets no answer, -H forms, and the Python versions the file must run on.

The port runs in-process (``couchdb_dump.main``) against tests/tools/couch_stub.py
where it can, which keeps these tests fast.
"""

import ast
import json
import os
import re
import socket
import subprocess
import threading
import time

import pytest

import couchdb_dump as cd
from couch_stub import CouchStub, Fault
from helpers import FOOTER, HEADER, REPO, dump_of, run_in_process, says


WRITES = ("PUT", "POST", "DELETE")


class Result:
    def __init__(self, code, stdout, stderr, requests=(), store=None):
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        self.requests = list(requests)
        self.store = store or {}

    def lines(self):
        return self.stdout.decode("utf-8", "replace").splitlines()

    def errors(self):
        return [line for line in self.lines() if line.startswith("... ERROR:")]

    def writes(self):
        return [(r.method, r.path) for r in self.requests if r.method in WRITES]

    @property
    def returncode(self):
        return self.code


main = run_in_process


def against(stub, argv, environ=None):
    """Run the port against ``stub`` ({PORT} in argv is its port)."""
    argv = [a.replace("{PORT}", str(stub.port)) for a in argv]
    code, stdout, stderr = main(argv, environ)
    store = {db: dict(docs) for db, docs in stub.store.databases.items()}
    return Result(code, stdout, stderr, stub.requests, store)


def documents(count, designs=0):
    docs = [{"_id": "_design/d%d" % i, "_rev": "1-d%d" % i, "views": {}} for i in range(designs)]
    return docs + [{"_id": "doc%03d" % i, "_rev": "1-%03d" % i, "value": i} for i in range(count)]


def stored(docs):
    return {doc["_id"]: dict(doc) for doc in docs}


def restore_args(path, db="shop"):
    return ["-r", "-H", "127.0.0.1", "-P", "{PORT}", "-d", db, "-f", str(path)]


# -- 1. A typo in -l wipes the database ------------------------------------------

BAD_LINES = ["0", "-5", "abc", "", " ", "1.5", "+"]


@pytest.mark.parametrize("lines", BAD_LINES)
@pytest.mark.parametrize("designs", [0, 1], ids=["no_design", "design"])
def test_invalid_l_with_recreate_fails_before_the_database_is_deleted(lines, designs, tmp_path):
    path = tmp_path / "dump.json"
    path.write_bytes(dump_of(documents(3, designs)))
    with CouchStub(databases=("shop",)) as stub:
        stub.store.databases["shop"] = stored(documents(7, 1))
        before = json.dumps(stub.store.databases, sort_keys=True)
        run = against(stub, restore_args(path) + ["-q", "--recreate", "-l", lines])
    assert run.code == 1, says(run)
    assert run.errors() == ["... ERROR: Unable to create split files."], says(run)
    assert run.writes() == [], says(run)
    assert json.dumps(run.store, sort_keys=True) == before
    assert "nothing was changed on the server" in run.stderr


@pytest.mark.parametrize("lines", BAD_LINES)
def test_invalid_l_with_c_creates_no_database_and_puts_no_design_document(lines, tmp_path):
    path = tmp_path / "dump.json"
    path.write_bytes(dump_of(documents(3, 2)))
    with CouchStub() as stub:
        run = against(stub, restore_args(path) + ["-c", "-l", lines])
    assert run.code == 1, says(run)
    assert run.errors() == ["... ERROR: Unable to create split files."], says(run)
    assert run.writes() == [], says(run)
    assert run.store == {}


def test_invalid_l_into_an_existing_database_fails_as_the_script_does(tmp_path):
    """No write would precede the failure: bash's lines and requests, unchanged."""
    path = tmp_path / "dump.json"
    path.write_bytes(dump_of(documents(3)))
    with CouchStub(databases=("shop",)) as stub:
        run = against(stub, restore_args(path) + ["-l", "0"])
    assert run.code == 1
    assert run.lines() == [
        "... INFO: Checking for database",
        "... INFO: Checking for Design documents",
        "... INFO: No Design Documents found for import.",
        "... INFO: Block import set to 0 lines.",
        "... INFO: Generating files to import",
        "... ERROR: Unable to create split files.",
    ]
    assert [(r.method, r.path) for r in run.requests] == [("GET", "/_all_dbs")]


@pytest.mark.parametrize("lines", ["+5", " 9999", "5000"])
def test_l_that_only_bashs_test_reads_still_restores_a_small_dump(lines, tmp_path):
    """-l "+5": test(1) reads it, so a dump smaller than that goes in one body."""
    path = tmp_path / "dump.json"
    path.write_bytes(dump_of(documents(2)))
    with CouchStub(databases=("shop",)) as stub:
        run = against(stub, restore_args(path) + ["-q", "-l", lines])
    assert run.code == 0, says(run)
    assert sorted(run.store["shop"]) == ["doc000", "doc001"]


# -- 4. % in a file name crashes the retry ----------------------------------------

def once(match, fault):
    """A stub ``faults`` callable: ``fault`` for the first matching request only."""
    seen = []

    def faults(index, method, path):
        if match(method, path) and not seen:
            seen.append(index)
            return fault
        return None
    return faults


@pytest.mark.parametrize("name", ["dump%1.json", "dump%s%d%%.json", "plain.json"])
@pytest.mark.parametrize("lines", ["5000", "2"], ids=["single_body", "chunks"])
def test_percent_in_the_file_name_is_retried_after_a_500_and_succeeds(name, lines, tmp_path):
    path = tmp_path / name
    path.write_bytes(dump_of(documents(3, 1)))
    error = Fault("status", 500, b'{"error":"unknown_error","reason":"badarg"}\n')
    with CouchStub(databases=("shop",), faults=once(lambda m, p: m == "POST", error)) as stub:
        run = against(stub, restore_args(path) + ["-l", lines])
    assert run.code == 0, says(run)
    warnings = [line for line in run.lines() if line.startswith("... WARN:")]
    assert len(warnings) == 1 and "Attempt 1/3" in warnings[0], says(run)
    assert sorted(run.store["shop"]) == ["_design/d0", "doc000", "doc001", "doc002"]


@pytest.mark.parametrize("db", ["sh%sop", "sh%dop"])
def test_percent_in_the_database_name_is_a_value_in_every_retry_line(db, tmp_path):
    path = tmp_path / "dump%d.json"
    path.write_bytes(dump_of(documents(2, 1)))
    drop = Fault("drop")
    with CouchStub(faults=once(lambda m, p: m == "PUT", drop)) as stub:
        run = against(stub, restore_args(path, db) + ["-c"])
        run2 = against(stub, restore_args(path, db) + ["--recreate"])
    assert run.code == 0, says(run)
    assert "... WARN: Curl failed to create the database %s - Attempt 1/3. Retrying..." % db in run.lines()
    assert run2.code == 0, says(run2)


# -- 2. A 2xx JSON answer that is not an _all_docs reply ---------------------------

class Answer:
    """A stub ``faults`` callable: every GET of _all_docs gets this 200 body."""

    def __init__(self, body, status=200):
        self.fault = Fault("status", status, body)

    def __call__(self, index, method, path):
        return self.fault if "_all_docs" in path else None


def backup_args(path, db="shop"):
    return ["-b", "-H", "127.0.0.1", "-P", "{PORT}", "-d", db, "-f", str(path)]


@pytest.mark.parametrize("body", [
    b'{"status":"up"}', b'{"status":"up"}\n', b'{"ok":true}\n', b"[]\n", b"[1,2]", b"{}", b'"rows"', b"42\n",
    b'{"rows":{}}', b'{"rows":[1]}', b'{"rows":[{"id":"a"}]}', b'{"rows":[],"rows":[]}',
    b'{"total_rows":"x","rows":[]}', b'{"rows":[]} []',
    b'{"total_rows":0,"offset":0,"rows":[\n\nhello\n]}\n',
    b'{"total_rows":0,"offset":0,"rows":[\n]}\n{"id":"a","key":"a","value":{"rev":"1-a"},"doc":{"_id":"a"}}\n]}\n',
])
def test_2xx_reply_that_is_no_all_docs_answer_fails_and_writes_no_file(body, tmp_path):
    path = tmp_path / "out.json"
    with CouchStub(databases=("shop",), faults=Answer(body)) as stub:
        run = against(stub, backup_args(path) + ["-q"])
    assert run.code == 1, says(run)
    assert len(run.errors()) == 1, says(run)
    assert run.errors()[0].startswith("... ERROR: Backup failed, no file written: "), says(run)
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize("body", [b'{"status":"up"}', b'{"ok":true}\n'])
def test_health_answer_is_named_in_the_error(body, tmp_path):
    with CouchStub(databases=("shop",), faults=Answer(body)) as stub:
        run = against(stub, backup_args(tmp_path / "out.json") + ["-q", "--json"])
    assert run.code == 1
    assert run.errors() == ["... ERROR: Backup failed, no file written: the reply is not an _all_docs answer"
                            ' (it has no "rows" list). It began: ' + body.decode().rstrip("\n").replace("\n", "\\n")]
    assert json.loads(run.lines()[-1])["ok"] is False


def test_reply_quoted_in_an_error_never_shows_the_password(tmp_path):
    body = b'{"status":"up","echo":"s3cr%t","auth":"Basic dTpzM2NyJXQ="}'
    with CouchStub(databases=("shop",), faults=Answer(body)) as stub:
        run = against(stub, backup_args(tmp_path / "out.json") + ["-q", "-u", "u", "-p", "s3cr%t"])
    assert run.code == 1
    assert b"s3cr%t" not in run.stdout and "s3cr%t" not in run.stderr
    assert b"dTpzM2NyJXQ=" not in run.stdout
    assert b"It began: " in run.stdout


def test_long_reply_is_quoted_to_its_first_200_bytes(tmp_path):
    body = b'{"status":"' + b"x" * 1000 + b'"}'
    with CouchStub(databases=("shop",), faults=Answer(body)) as stub:
        run = against(stub, backup_args(tmp_path / "out.json") + ["-q"])
    began = run.errors()[0].split("It began: ", 1)[1]
    assert began == body[:200].decode()


@pytest.mark.parametrize("body", [b'{"total_rows":0,"rows":[]}', b'{"rows":[]}\n',
                                  b'{"total_rows":0,"offset":0,"rows":[\r\n\r\n]}\n'])
def test_empty_all_docs_answer_in_any_layout_is_an_empty_backup(body, tmp_path):
    path = tmp_path / "out.json"
    with CouchStub(databases=("shop",), faults=Answer(body)) as stub:
        run = against(stub, backup_args(path) + ["-q"])
    assert run.code == 0, says(run)
    assert path.read_bytes() == HEADER + b"\n\n" + FOOTER + b"\n"


@pytest.mark.parametrize("listing", [b'{"status":"up"}\n', b'["shop",1]\n', b"[oops]\n"])
def test_all_dbs_answer_that_is_no_list_of_names_stops_recreate_before_any_write(listing, tmp_path):
    path = tmp_path / "dump.json"
    path.write_bytes(dump_of(documents(2)))

    def faults(index, method, path):
        return Fault("status", 200, listing) if path == "/_all_dbs" else None
    with CouchStub(databases=("shop",), faults=faults) as stub:
        run = against(stub, restore_args(path) + ["--recreate"])
    assert run.code == 1, says(run)
    assert "... WARN: Curl failed to get the list of databases - Continuing" in run.lines()
    assert run.errors() == ["... ERROR: --recreate needs the list of databases - Stopping"]
    assert run.writes() == []


# -- 3. --json's last line stops being JSON ----------------------------------------

ENVOY = b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"


@pytest.mark.parametrize("lines", ["5000", "2"], ids=["single_body", "chunks"])
@pytest.mark.parametrize("body", [ENVOY, b"", b"two\nlines", b'{"error":"x","reason":"no newline"}'])
def test_json_line_is_last_and_alone_after_an_error_body_without_newline(body, lines, tmp_path):
    path = tmp_path / "dump.json"
    path.write_bytes(dump_of(documents(3)))

    def faults(index, method, path):
        return Fault("status", 503, body) if method == "POST" else None
    with CouchStub(databases=("shop",), faults=faults) as stub:
        run = against(stub, restore_args(path) + ["-q", "--json", "-a", "1", "-l", lines])
    assert run.code == 1, says(run)
    assert run.stdout.endswith(b"\n")
    last = run.stdout.split(b"\n")[-2]
    report = json.loads(last.decode("utf-8"))
    assert report["ok"] is False and report["exit_code"] == 1
    assert last.startswith(b"{")


def test_json_line_is_alone_whatever_was_printed_before_it(monkeypatch, tmp_path):
    """Any message that ends without a newline still leaves the JSON its own line."""
    def run(self):
        self.context.out.raw(b"... ERROR: half a line")
        raise cd.Failure()
    monkeypatch.setattr(cd.Restore, "run", run)
    code, stdout, _ = main(["-r", "-H", "127.0.0.1", "-d", "db", "-f", str(tmp_path / "x"), "--json"])
    assert code == 1
    first, last, end = stdout.split(b"\n")
    assert first == b"... ERROR: half a line" and end == b""
    assert json.loads(last.decode())["error"] == "half a line"


# -- 5. -H https://host on a plain-HTTP port hangs ---------------------------------

class SilentServer:
    """A TCP server that accepts connections and never says a word."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("mode", ["-b", "-r"])
def test_https_to_a_port_that_never_answers_the_handshake_fails_fast_and_says_why(mode, tmp_path):
    path = tmp_path / "dump.json"
    if mode == "-r":
        path.write_bytes(dump_of(documents(2)))
    with SilentServer() as server:
        started = time.monotonic()
        code, stdout, stderr = main([mode, "-H", "https://127.0.0.1:%d" % server.port, "-d", "shop",
                                     "-f", str(path), "-a", "1", "--timeout", "1.5"])
        seconds = time.monotonic() - started
    assert code == 1
    assert seconds < 10
    assert "no TLS answer from 127.0.0.1:%d within 1.5 s - is it plain HTTP?" % server.port in stderr
    assert [line for line in stdout.decode().splitlines() if line.startswith("... ERROR:")]


def test_tls_handshake_waits_at_most_30_seconds_whatever_the_timeout():
    assert cd.CouchSession("https://h:1", timeout=300).connect_limit == 30
    assert cd.CouchSession("https://h:1", timeout=5).connect_limit == 5


def test_https_to_a_plain_http_server_says_it_may_be_plain_http(tmp_path):
    with CouchStub(databases=("shop",)) as stub:
        code, stdout, stderr = main(["-b", "-H", "https://127.0.0.1:%d" % stub.port, "-d", "shop",
                                     "-f", str(tmp_path / "out.json"), "--timeout", "5"])
    assert code == 1
    assert "is it plain HTTP?" in stderr
    assert os.listdir(str(tmp_path)) == []


# -- 6. -H with a trailing slash; -H that cannot form a URL --------------------------

@pytest.mark.parametrize("host", ["http://127.0.0.1:{PORT}/", "127.0.0.1/", "http://127.0.0.1/", "127.0.0.1//"])
def test_trailing_slash_in_h_is_taken_off(host, tmp_path):
    path = tmp_path / "out.json"
    with CouchStub(databases=("shop",)) as stub:
        stub.store.databases["shop"] = stored(documents(2))
        run = against(stub, ["-b", "-H", host, "-P", "{PORT}", "-d", "shop", "-f", str(path), "-q"])
    assert run.code == 0, says(run)
    assert [r.path for r in run.requests] == ["/shop/_all_docs?include_docs=true&attachments=true"]


@pytest.mark.parametrize("host, port", [
    ("http://127.0.0.1:5984/couchdb", "5984"), ("127.0.0.1/db", "5984"), ("127.0.0.1:5984:5984", "5984"),
    ("127.0.0.1 ", "5984"), ("my host", "5984"), ("127.0.0.1", "abc"), ("127.0.0.1", "-5"), ("127.0.0.1", "70000"),
    ("h?x=1", "5984"), ("h#top", "5984"), ("/", "5984"), ("http://", "5984"),
])
@pytest.mark.parametrize("mode", ["-b", "-r"])
def test_h_that_cannot_form_a_url_is_an_error_naming_h_and_sends_nothing(host, port, mode, tmp_path):
    path = tmp_path / "dump.json"
    path.write_bytes(dump_of(documents(2)))
    code, stdout, stderr = main([mode, "-H", host, "-P", port, "-d", "shop", "-f", str(path), "-u", "u", "-p", "pw"])
    assert code == 1
    errors = [line for line in stdout.decode().splitlines() if line.startswith("... ERROR:")]
    assert len(errors) == 1 and errors[0].startswith('... ERROR: -H "%s" with -P "%s"' % (host, port)), stdout
    assert os.listdir(str(tmp_path)) == ["dump.json"]


def test_h_error_never_shows_a_password_given_in_the_url():
    code, stdout, _ = main(["-b", "-H", "http://admin:s3cret@127.0.0.1/x", "-d", "d", "-f", "f.json"])
    assert code == 1
    assert b"s3cret" not in stdout and b'-H "http://***@127.0.0.1/x"' in stdout


@pytest.mark.parametrize("host, secret", [
    ("http://admin:se/cret@127.0.0.1", b"cret"),          # a "/" in the password
    ("http://admin:p@ss@127.0.0.1:5984/db", b"ss"),       # an "@" in the password
    ("admin:p@ss@127.0.0.1/db", b"ss"),                  # no scheme
])
def test_h_error_never_shows_any_part_of_a_password_holding_slash_or_at(host, secret):
    code, stdout, stderr = main(["-b", "-H", host, "-d", "d", "-f", "f.json"])
    assert code == 1
    assert b"-H" in stdout and b"***@127.0.0.1" in stdout, stdout
    assert secret not in stdout and secret.decode() not in stderr, stdout


# -- 7. It does not start on Python 3.13 ---------------------------------------------

PYENV = "/root/.pyenv/versions"
OLDEST_AND_NEWEST = ["3.8.18", "3.13.0"]


def interpreters():
    """Every pyenv CPython on the machine; the oldest and newest must be there on CI."""
    found = sorted(os.listdir(PYENV)) if os.path.isdir(PYENV) else []
    return [v for v in found if re.match(r"3\.(8|9|\d\d)\.", v)
            and os.path.exists(os.path.join(PYENV, v, "bin", "python"))]


@pytest.mark.parametrize("version", sorted(set(interpreters()) | set(OLDEST_AND_NEWEST)))
def test_the_file_compiles_imports_and_answers_v_on_every_python(version, tmp_path):
    python = os.path.join(PYENV, version, "bin", "python")
    if not os.path.exists(python):
        if os.environ.get("CI"):
            pytest.fail("CI must check Python %s: %s is missing" % (version, python), pytrace=False)
        pytest.skip("no %s" % python)
    # Import with the module's own directory first; -B: no __pycache__ left behind.
    check = ("import sys; sys.path.insert(0, %r); import couchdb_dump as m; "
             "assert m.main(['-V'], {}, stdout=open(%r, 'wb')) == 1" % (str(REPO), os.devnull))
    result = subprocess.run([python, "-B", "-c", check], capture_output=True, timeout=120,
                            env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    if b"No module named 'urllib3'" in result.stderr:
        # That interpreter has no urllib3: compiling the file is what it can check.
        result = subprocess.run([python, "-B", "-c", "compile(open(%r, encoding='utf-8').read(), 'f', 'exec')"
                                 % str(REPO / "couchdb_dump.py")], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")[-2000:]
    run = subprocess.run([python, "-B", str(REPO / "couchdb_dump.py"), "-V"], capture_output=True, timeout=120,
                         cwd=str(tmp_path))
    assert run.returncode == 1 and b"compatible with couchdb-dump version: 1.1.10" in run.stdout, run.stderr


def test_no_literal_holds_text_a_compiler_may_refuse():
    """A lone surrogate in a literal ("\\ud800" unescaped) breaks CPython 3.13.0."""
    tree = ast.parse((REPO / "couchdb_dump.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value.encode("utf-8")   # strict: raises on a lone surrogate


# -- defects the properties (tests/test_properties.py) found ---------------------------

@pytest.mark.parametrize("answer, step, args, databases", [
    (answer, step, args, databases)
    for answer in [b'{"status":"up"}', b"[]", b'{"ok":false}', b"", b'{"ok":true}\n']
    for step, args, databases in [("design_put", [], ("shop",)), ("create", ["-c"], ()),
                                  ("delete", ["--recreate"], ("shop",))]
    # {"ok":true} is CouchDB's answer to a database's PUT and DELETE: not a document's
    if answer != b'{"ok":true}\n' or step == "design_put"])
def test_2xx_answer_to_a_put_or_delete_that_is_not_couchdbs_ok_is_an_error(answer, step, args, databases, tmp_path):
    """Found by test_every_request_path_decodes_…: a design document PUT answered
    200 {"status":"up"} passed for stored, exit 0, the design document missing."""
    path = tmp_path / "dump.json"
    path.write_bytes(dump_of(documents(2, 1)))
    match = {"design_put": lambda m, p: m == "PUT" and "_design" in p,
             "create": lambda m, p: m == "PUT" and p == "/shop",
             "delete": lambda m, p: m == "DELETE"}[step]

    def faults(index, method, path):
        return Fault("status", 200, answer) if match(method, path) else None
    with CouchStub(databases=databases, faults=faults) as stub:
        run = against(stub, restore_args(path) + args + ["-a", "2"])
    assert run.code == 1, says(run)
    assert "... ERROR: CouchDB Reported: HTTP 200" in run.stdout.decode(), says(run)
    assert len([line for line in run.lines() if "- Attempt 1/2 - Retrying..." in line]) == 1


def test_password_given_percent_encoded_in_h_is_not_shown_when_a_reply_echoes_it(tmp_path):
    """Found by test_no_password_is_ever_shown_…: password "%" in
    -H http://admin:Zq%25qZ@host, a reply echoing "Zq%qZ" was quoted as is."""
    body = b'{"status":"up","echo":"Zq%qZ"}'
    with CouchStub(databases=("shop",), faults=Answer(body)) as stub:
        run = against(stub, ["-b", "-H", "http://admin:Zq%25qZ@127.0.0.1", "-P", "{PORT}", "-d", "shop",
                             "-f", str(tmp_path / "out.json")])
    assert run.code == 1
    assert b"Zq%qZ" not in run.stdout and b"Zq%25qZ" not in run.stdout
    assert b'"echo":"********"' in run.stdout


def test_design_document_that_begins_a_block_of_the_dump_is_put_whole(tmp_path):
    """Found by test_backup_then_restore_gives_back_the_same_documents (ten
    documents with 70,000-character strings, a design document after them):
    when a design document's line began a 1 MiB block of the dump, the line
    number also matched the empty text after the previous block's last
    newline, and its PUT was sent with an empty body."""
    big = "x" * 70000
    views = {"v": {"map": "function(doc){emit(doc._id)}" + " " * 3000}}
    docs = [{"_id": "a%02d" % i, "_rev": "1-a", "v": big} for i in range(14)]
    # Grow the documents before it until the design document begins a block.
    path = tmp_path / "dump.json"
    for pad in range(0, 140000, 997):
        docs[0]["pad"] = "p" * pad
        dump = dump_of(docs + [{"_id": "_design/z", "_rev": "1-b", "views": views}, {"_id": "zz", "_rev": "1-c"}])
        path.write_bytes(dump)
        blocks = [first for first, _, _ in cd.DumpFile(str(path)).blocks()]
        if len(docs) + 2 in blocks:    # the design document's line (1-based) starts a block
            break
    else:
        pytest.fail("no padding puts the design document at the start of a block")
    with CouchStub(databases=("shop",)) as stub:
        run = against(stub, restore_args(path) + ["-q"])
    assert run.code == 0, says(run)
    puts = [r for r in run.requests if r.method == "PUT"]
    assert len(puts) == 1 and json.loads(puts[0].body) == {"views": views}
    assert sorted(run.store["shop"]) == ["_design/z"] + ["a%02d" % i for i in range(14)] + ["zz"]
