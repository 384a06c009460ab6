"""Properties of the port over generated inputs (Hypothesis), issue #9.

Each property runs the port in this process (``couchdb_dump.main``) against
tests/tools/couch_stub.py, with faults drawn at random: a transient 500, a dropped
connection, a 409, a 2xx with a wrong shape.

Reproducible on CI: the "ci" profile is derandomized (the same examples on
every run) and small enough to keep the suite within a minute of its time.
``HYPOTHESIS_EXAMPLES=N`` runs N examples a property, randomized, to search
harder (``HYPOTHESIS_SEED`` fixes the seed of such a run).
"""

import json
import os
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import couchdb_dump as cd
from couch_stub import CouchStub, Fault
from helpers import FOOTER, HEADER, dump_of, run_in_process


EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "0") or 0)
settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("search", derandomize=False, database=None, deadline=None,
                          max_examples=max(EXAMPLES, 1), print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile("search" if EXAMPLES else "ci")

WRITES = ("PUT", "POST", "DELETE")
EXIT_CODES = (0, 1, 130, 143)

# -- strategies -------------------------------------------------------------------

# Printable text plus the characters that break templates, URLs and shells.
SPECIALS = "%{}$\"'\\/:@#?&+ -"
printable = st.characters(blacklist_categories=("Cs", "Cc", "Co", "Cn"))
special_text = st.text(st.one_of(printable, st.sampled_from(SPECIALS)), min_size=1, max_size=20)


def names():
    """A name as a user may type it: specials, spaces, a leading "-"."""
    return st.one_of(special_text, special_text.map(lambda text: "-" + text))


def database_names():
    """A -d that names one database: "*", "?" and "[" make it a pattern (no database name holds them)."""
    return names().filter(lambda name: not any(char in name for char in "*?["))


def file_names():
    # "-" alone means standard input/output; "." and ".." are directories.
    return names().filter(lambda name: name not in ("-", ".", "..") and "\0" not in name
                          and len(os.fsencode(name)) < 200)


def doc_ids():
    plain = st.text(st.one_of(printable, st.sampled_from(SPECIALS + ',"doc":')), min_size=1, max_size=30)
    return st.one_of(plain.filter(lambda i: not i.startswith("_")),
                     plain.map(lambda i: "_design/" + i))


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 53, 2 ** 53),
                         st.text(st.one_of(printable, st.sampled_from('\\"\n\t,{}[]:')), max_size=40),
                         st.just(',"doc":{"_id":"x"}'), st.just("x" * 70000))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(printable, max_size=8), inner, max_size=4)), max_leaves=12)


@st.composite
def document_lists(draw, max_size=8):
    ids = draw(st.lists(doc_ids(), max_size=max_size, unique=True))
    docs = []
    for n, doc_id in enumerate(ids):
        doc = {"_id": doc_id, "_rev": "%d-%s" % (n + 1, "abcdef"[n % 6] * 8)}
        doc.update(draw(st.dictionaries(st.text(printable, min_size=1, max_size=8).filter(
            lambda key: not key.startswith("_")), json_values, max_size=3)))
        docs.append(doc)
    return docs


def faults():
    """None, or a fault for the n-th request: what the port must survive or report."""
    kinds = st.sampled_from([
        Fault("status", 500, b'{"error":"unknown_error","reason":"injected"}\n'),
        Fault("drop"),
        Fault("status", 409, b'{"error":"conflict","reason":"Document update conflict."}\n'),
        Fault("status", 200, b'{"status":"up"}'),
        Fault("status", 200, b'{"ok":true}\n'),
    ])
    return st.one_of(st.none(), st.tuples(st.integers(0, 6), kinds))


class Injected:
    def __init__(self, fault):
        self.fault = fault

    def __call__(self, index, method, path):
        if self.fault is not None and index == self.fault[0]:
            return self.fault[1]
        return None


# -- running --------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_pause_between_attempts(monkeypatch):
    # The script's 1 s between attempts makes no difference to what is checked.
    monkeypatch.setattr(cd.Requester, "PAUSE", 0.0)


def error_lines(stdout):
    return [line for line in stdout.decode("utf-8", "replace").splitlines() if line.startswith("... ERROR:")]


def assert_ended_cleanly(code, stdout, stderr):
    """0, or a failure told by an ERROR line: never a crash."""
    assert code in EXIT_CODES, (code, stdout, stderr)
    assert b"Unexpected failure" not in stdout, (stdout, stderr)
    assert "Traceback" not in stderr, stderr
    if code:
        assert error_lines(stdout), (stdout, stderr)


def same_documents(stored, docs):
    """The server holds exactly ``docs``; design documents get a new revision from a PUT."""
    assert sorted(stored) == sorted(doc["_id"] for doc in docs)
    for doc in docs:
        got = dict(stored[doc["_id"]])
        want = dict(doc)
        if doc["_id"].startswith("_design/"):
            got.pop("_rev")
            want.pop("_rev")
        assert got == want


def read_dump(path):
    """The documents of a dump file; it must be JSON with one document a line."""
    data = path.read_bytes()
    whole = json.loads(data.decode("utf-8"))
    # A reply whose ']}' has no newline gives a dump without one, as sed keeps it.
    lines = data[:-1].split(b"\n") if data.endswith(b"\n") else data.split(b"\n")
    assert lines[0] == HEADER and lines[-1] == FOOTER
    for line in lines[1:-1]:
        if line:
            assert isinstance(json.loads(line[:-1] if line.endswith(b",") else line), dict)
    return whole["docs"]


# -- the properties ---------------------------------------------------------------

@given(file=file_names(), db=database_names(), user=names(), password=names(), how=st.sampled_from(["-p", "env"]),
       docs=document_lists(max_size=4), fault=faults())
def test_any_names_and_credentials_end_in_success_or_one_clean_error(tmp_path_factory, file, db, user, password,
                                                                     how, docs, fault):
    folder = tmp_path_factory.mktemp("names")
    path = str(folder) + "/" + file   # a name starting with "/" stays inside the folder
    credentials = ["-u", user, "-p", password] if how == "-p" else []
    environ = {} if how == "-p" else {"COUCHDB_USER": user, "COUCHDB_PASS": password}
    with CouchStub(faults=Injected(fault)) as stub:
        stub.store.databases[db] = {doc["_id"]: dict(doc) for doc in docs}
        code, stdout, stderr = run_in_process(
            ["-b", "-H", "127.0.0.1", "-P", str(stub.port), "-d", db, "-f", path, "-q"] + credentials, environ)
        assert_ended_cleanly(code, stdout, stderr)
        if code == 0:
            assert read_dump(Path(path)) == sorted(docs, key=lambda doc: doc["_id"])
        else:
            assert os.listdir(str(folder)) == []   # no file, not even a temporary one
        if code == 0:
            stub.faults = Injected(fault)
            stub.requests.clear()
            code, stdout, stderr = run_in_process(
                ["-r", "-H", "127.0.0.1", "-P", str(stub.port), "-d", db + "2", "-f", path, "-c"] + credentials,
                environ)
            assert_ended_cleanly(code, stdout, stderr)
            if code == 0:
                same_documents(stub.store.databases[db + "2"], docs)


OPTION_VALUES = st.one_of(st.sampled_from(["", " ", "0", "-1", "-5", "1", "2", "3", "+2", " 4", "abc", "1.5",
                                           "007", "1e3", "inf", "nan", "99999999999999999999", "٣"]),
                          st.integers(-10, 12).map(str), special_text)


@given(option=st.sampled_from(["-l", "-a", "-t", "-P", "--jobs", "--timeout", "--max-line-mb", "-D", "-s"]),
       value=OPTION_VALUES, recreate=st.booleans(), designs=st.integers(0, 2))
def test_any_option_value_proceeds_or_fails_before_any_write(tmp_path_factory, option, value, recreate, designs):
    folder = tmp_path_factory.mktemp("options")
    docs = [{"_id": "_design/d%d" % i, "_rev": "1-d", "views": {}} for i in range(designs)]
    docs += [{"_id": "doc%d" % i, "_rev": "1-a", "n": i} for i in range(5)]
    (folder / "dump.json").write_bytes(dump_of(docs, ensure_ascii=False))
    if option == "--timeout" and cd._positive_number(value) is not None and float(value) < 5:
        value = "5"   # a short timeout is a valid choice that may fail half-way: not this property
    if option == "-D" and cd._number_from_zero(value) is not None:
        value = "0"   # a valid delay only slows the run down
    if option == "-s" and value == "1":
        value = str(folder / "dump.json") + "-nodesign.splitaab" if designs else str(folder / "dump.json")
    with CouchStub() as stub:
        old = {"old%d" % i: {"_id": "old%d" % i, "_rev": "1-o"} for i in range(3)}
        stub.store.databases["shop"] = dict(old)
        port = str(stub.port)
        if option == "-P" and value.strip().isdigit():
            value = value.replace(value.strip(), port)   # never another program's port
        args = ["-r", "-H", "127.0.0.1", "-P", port, "-d", "shop", "-f", str(folder / "dump.json"), "-q"]
        args += ["--recreate"] if recreate else ["-c"]
        args += [option, value] if option != "-P" else []
        if option == "-P":
            args[args.index("-P") + 1] = value
        code, stdout, stderr = run_in_process(args)
        assert_ended_cleanly(code, stdout, stderr)
        writes = [(r.method, r.path) for r in stub.requests if r.method in WRITES]
        if code == 0:
            expected = docs if recreate else docs + list(old.values())
            same_documents(stub.store.databases["shop"], expected)
        else:
            assert writes == [], (option, value, stdout, stderr)
            assert stub.store.databases["shop"] == old


@given(password=names(), how=st.sampled_from(["-p", "env", "url"]), mode=st.sampled_from(["-b", "-r"]),
       fault=faults(), as_json=st.booleans())
def test_no_password_is_ever_shown_or_put_in_a_path(tmp_path_factory, password, how, mode, fault, as_json):
    secret = "Zq" + password + "qZ"
    folder = tmp_path_factory.mktemp("secret")
    (folder / "dump.json").write_bytes(dump_of([{"_id": "a", "_rev": "1-a"}, {"_id": "_design/x", "_rev": "1-b"}]))
    echo = Fault("status", 200, json.dumps({"status": "up", "echo": secret}).encode())
    with CouchStub(databases=("db",), faults=Injected(fault if fault is None or fault[1].status != 200
                                                      else (fault[0], echo))) as stub:
        host = "127.0.0.1"
        args = []
        environ = {}
        if how == "-p":
            args = ["-u", "admin", "-p", secret]
        elif how == "env":
            environ = {"COUCHDB_USER": "admin", "COUCHDB_PASS": secret}
        else:
            host = "http://admin:%s@127.0.0.1" % quote(secret, safe="")
        args = [mode, "-H", host, "-P", str(stub.port), "-d", "db", "-f",
                str(folder / ("out.json" if mode == "-b" else "dump.json"))] + args + (["--json"] if as_json else [])
        code, stdout, stderr = run_in_process(args, environ)
        assert_ended_cleanly(code, stdout, stderr)
        shown = stdout.decode("utf-8", "replace") + stderr
        for form in (secret, quote(secret, safe="")):
            assert form not in shown
            for request in stub.requests:
                assert form not in request.path and form not in unquote(request.path)
        if as_json:
            assert json.loads(stdout.decode("utf-8").splitlines()[-1])


@given(db=database_names(), docs=document_lists(), fault=faults(), lines=st.sampled_from(["5000", "1", "2"]))
def test_every_request_path_decodes_to_the_database_and_the_document_id(tmp_path_factory, db, docs, fault, lines):
    folder = tmp_path_factory.mktemp("paths")
    if not docs:
        docs = [{"_id": "only", "_rev": "1-a"}]
    (folder / "dump.json").write_bytes(dump_of(docs, ensure_ascii=False))
    with CouchStub(faults=Injected(fault)) as stub:
        code, stdout, stderr = run_in_process(
            ["-r", "-H", "127.0.0.1", "-P", str(stub.port), "-d", db, "-f", str(folder / "dump.json"), "-c",
             "-l", lines, "-q"])
        assert_ended_cleanly(code, stdout, stderr)
        designs = {doc["_id"] for doc in docs if doc["_id"].startswith("_design/")}
        for request in stub.requests:
            path, _, query = request.path.partition("?")
            if path == "/_all_dbs":
                continue
            segments = path.split("/")
            assert segments[0] == "" and unquote(segments[1], errors="strict") == db, request.path
            rest = segments[2:]
            if request.method == "PUT" and rest:
                assert rest[0] == "_design" and len(rest) == 2, request.path
                assert "_design/" + unquote(rest[1]) in designs
            elif rest:
                assert rest == ["_bulk_docs"], request.path
        if code == 0:
            same_documents(stub.store.databases[db], docs)


@given(docs=document_lists(max_size=10), compress=st.booleans())
def test_backup_then_restore_gives_back_the_same_documents(tmp_path_factory, docs, compress):
    folder = tmp_path_factory.mktemp("roundtrip")
    with CouchStub(databases=("src", "dst")) as stub:
        stub.store.databases["src"] = {doc["_id"]: dict(doc) for doc in docs}
        base = ["-H", "127.0.0.1", "-P", str(stub.port), "-q"]
        code, stdout, stderr = run_in_process(["-b"] + base + ["-d", "src", "-f", str(folder / "dump.json")])
        assert code == 0, (stdout, stderr)
        if not compress:
            assert read_dump(folder / "dump.json") == sorted(docs, key=lambda doc: doc["_id"])
        code, stdout, stderr = run_in_process(["-r"] + base + ["-d", "dst", "-f", str(folder / "dump.json"),
                                                               "-l", "3"])
        assert code == 0, (stdout, stderr)
        same_documents(stub.store.databases["dst"], docs)


@st.composite
def backup_replies(draw):
    """A 2xx body: an _all_docs reply in some layout, something else, or a broken one."""
    docs = draw(document_lists(max_size=5))
    rows = [{"id": doc["_id"], "key": doc["_id"], "value": {"rev": doc["_rev"]}, "doc": doc} for doc in docs]
    encoded = [json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode("utf-8") for row in rows]
    end = draw(st.sampled_from([b"\n", b"\r\n"]))
    kind = draw(st.sampled_from(["couchdb", "compact", "pretty", "other", "cut", "spliced"]))
    if kind == "couchdb":
        body = b'{"total_rows":%d,"offset":0,"rows":[' % draw(st.integers(0, len(rows))) + end
        body += (b"," + end).join(encoded) + end + b"]}\n"
    elif kind == "compact":
        body = json.dumps({"total_rows": len(rows), "offset": 0, "rows": rows}, ensure_ascii=False).encode()
    elif kind == "pretty":
        body = json.dumps({"rows": rows, "total_rows": len(rows)}, indent=draw(st.integers(0, 3))).encode()
    elif kind == "other":
        body = json.dumps(draw(json_values)).encode()
    else:
        body = b'{"total_rows":%d,"offset":0,"rows":[' % len(rows) + end + (b"," + end).join(encoded) + end + b"]}\n"
        if kind == "cut":
            body = body[:draw(st.integers(0, len(body)))]
        else:
            # A line a proxy or a broken server could add; the bytes of a row
            # between CouchDB's header and footer are trusted (see the README).
            lines = body.split(b"\n")
            at = draw(st.integers(1, len(lines) - 1))
            lines.insert(at, draw(st.binary(min_size=1, max_size=12)).replace(b"\n", b""))
            body = b"\n".join(lines)
    return body


def expected_rows(body):
    """The documents of a reply that is a whole _all_docs answer, or None."""
    try:
        reply = json.loads(body.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("rows"), list):
        return None
    rows = reply["rows"]
    if not all(isinstance(row, dict) and isinstance(row.get("doc"), dict) for row in rows):
        return None
    return [row["doc"] for row in rows]


@given(body=backup_replies())
def test_backup_succeeds_only_when_the_file_holds_exactly_the_replys_rows(tmp_path_factory, body):
    folder = tmp_path_factory.mktemp("reply")

    def faults(index, method, path):
        return Fault("status", 200, body) if "_all_docs" in path else None
    with CouchStub(databases=("db",), faults=faults) as stub:
        code, stdout, stderr = run_in_process(
            ["-b", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "db", "-f", str(folder / "out.json"), "-q"])
    assert_ended_cleanly(code, stdout, stderr)
    if code == 0:
        rows = expected_rows(body)
        assert rows is not None, body
        assert read_dump(folder / "out.json") == rows
    else:
        assert os.listdir(str(folder)) == []


@given(mode=st.sampled_from(["-b", "-r"]), fault=faults(), db=database_names(),
       body=st.one_of(st.none(), st.binary(max_size=60), st.sampled_from([b"no newline", b"a\nb", b"\r"])))
def test_with_json_the_last_line_is_one_json_object(tmp_path_factory, mode, fault, db, body):
    folder = tmp_path_factory.mktemp("json")
    (folder / "dump.json").write_bytes(dump_of([{"_id": "a", "_rev": "1-a"}, {"_id": "b", "_rev": "1-b"}]))
    if body is not None and fault is not None:
        fault = (fault[0], Fault("status", 503, body))
    with CouchStub(databases=(db,), faults=Injected(fault)) as stub:
        code, stdout, stderr = run_in_process(
            [mode, "-H", "127.0.0.1", "-P", str(stub.port), "-d", db, "-f",
             str(folder / ("out.json" if mode == "-b" else "dump.json")), "--json", "-a", "1"])
    assert_ended_cleanly(code, stdout, stderr)
    assert stdout.endswith(b"\n")
    last = stdout.split(b"\n")[-2]
    report = json.loads(last.decode("utf-8"))
    assert isinstance(report, dict) and report["ok"] is (code == 0)
