"""Round trips through a real CouchDB-compatible server.

Each test fills a database on the session's PouchDB Server 4.2.0, backs it
up with the port, restores the dump into a new database with -c, and
compares every document of both databases as the server returns them
(`_all_docs?include_docs=true&attachments=true`): ids, `_rev`, body and
attachments.  Restores use `new_edits:false`, so revisions must survive.

PouchDB Server writes its `_all_docs` reply on one line with `_id`/`_rev`
last in each document: the layout the bash script could not read at all.
The golden dumps the bash script wrote from Apache CouchDB are restored here
too, so dumps travel both ways between the two servers.
"""

import base64
import gzip
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

import helpers
from compat_replay import FIXTURES, load_case
from helpers import http, run_port, write_dump

HEADER = helpers.HEADER.decode("ascii")
FOOTER = helpers.FOOTER.decode("ascii")


# -- helpers ------------------------------------------------------------------

def unique(name):
    """A database name no other test (or run on this server) uses."""
    return "rt_%s_%s" % (name, uuid.uuid4().hex[:8])


def db_url(server, db):
    return server + "/" + urllib.parse.quote(db, safe="")


def fill(server, db, docs):
    """Create `db` and store `docs` as given, `_rev`s included (new_edits:false)."""
    http("PUT", db_url(server, db))
    answers = http("POST", db_url(server, db) + "/_bulk_docs", {"new_edits": False, "docs": docs})
    assert [a for a in answers if "error" in a] == []


def documents(server, db):
    """Every document of `db`, by id, in the server's order."""
    reply = http("GET", db_url(server, db) + "/_all_docs?include_docs=true&attachments=true")
    # PouchDB Server's in-memory store leaves out of _all_docs the ids with a
    # character above U+00FF while counting them in total_rows (see
    # test_backup_refuses_a_reply_that_hides_documents): make sure no test
    # compares databases with documents missing from both sides.
    assert reply["total_rows"] == len(reply["rows"]), "the server hides documents"
    return {row["id"]: row["doc"] for row in reply["rows"]}


def port_ok(server, args, cwd):
    result = run_port(args, cwd, server=server, text=True)
    assert result.returncode == 0, "port %s exited %d\n%s%s" % (
        " ".join(args), result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    return result


def backup(server, db, cwd, *extra, name="dump.json"):
    port_ok(server, ["-b", "-d", db, "-f", name, *extra], cwd)
    return Path(cwd) / (name + (".gz" if "-z" in extra else ""))


def restore(server, path, cwd, *extra):
    """Restore `path` into a new database (-c); returns (its name, the run)."""
    target = unique("copy")
    return target, port_ok(server, ["-r", "-d", target, "-f", str(path), "-c", *extra], cwd)


def comparable(doc):
    """A document as compared here: attachments reduced to type and data.

    An attachment's `revpos` is the generation of the revision that added
    it, which a design document restored by a PUT (new revision 1-) cannot
    keep; its `digest` is the MD5 of the data, compared with the data.
    """
    doc = dict(doc)
    if "_attachments" in doc:
        doc["_attachments"] = {name: {"content_type": a["content_type"], "data": a["data"]}
                               for name, a in doc["_attachments"].items()}
    return doc


def without_rev(doc):
    return {k: v for k, v in comparable(doc).items() if k != "_rev"}


def assert_same_documents(server, source, target):
    """Every document of `source` is in `target` with its `_rev` and body.

    Design documents are the exception: couchdb-dump.sh (and the port with
    it) restores them with a PUT without `_rev`, so the server gives them a
    new first revision.  Their body must match; their `_rev` must be 1-.
    """
    before, after = documents(server, source), documents(server, target)
    assert list(after) == list(before)
    for doc_id, doc in before.items():
        if doc_id.startswith("_design/"):
            assert without_rev(after[doc_id]) == without_rev(doc), doc_id
            assert after[doc_id]["_rev"].startswith("1-"), doc_id
        else:
            assert comparable(after[doc_id]) == comparable(doc), doc_id
    return before, after


def round_trip(server, tmp_path, name, docs, backup_args=(), restore_args=()):
    source = unique(name)
    fill(server, source, docs)
    dump = backup(server, source, tmp_path, *backup_args)
    target, _ = restore(server, dump, tmp_path, *restore_args)
    before, _ = assert_same_documents(server, source, target)
    assert len(before) == len(docs)
    return dump, before


# -- datasets -----------------------------------------------------------------

def plain_docs(count, prefix="doc"):
    return [{"_id": "%s%04d" % (prefix, i), "_rev": "%d-%032x" % (1 + i % 3, i),
             "n": i, "even": i % 2 == 0, "tags": ["t%d" % (i % 5)], "none": None,
             "nested": {"a": {"b": [i, {"c": "x"}]}}}
            for i in range(count)]


def test_plain_documents_keep_ids_revisions_and_bodies(pouchdb_url, tmp_path):
    round_trip(pouchdb_url, tmp_path, "plain", plain_docs(50))


def test_documents_written_normally_keep_their_winning_revision(pouchdb_url, tmp_path):
    """Server-made revisions, an update, a deletion and a conflict."""
    source = unique("written")
    url = db_url(pouchdb_url, source)
    http("PUT", url)
    first = http("PUT", url + "/updated", {"v": 1})
    http("PUT", url + "/updated", {"v": 2, "_rev": first["rev"]})
    gone = http("PUT", url + "/deleted", {"v": 1})
    http("DELETE", url + "/deleted?rev=" + gone["rev"])
    http("POST", url, {"_id": "posted", "v": 3})
    for rev in ("2-aaaa", "2-bbbb"):   # two branches: the server picks a winner
        http("POST", url + "/_bulk_docs", {"new_edits": False, "docs": [{"_id": "conflicted", "_rev": rev, "r": rev}]})
    dump = backup(pouchdb_url, source, tmp_path)
    target, _ = restore(pouchdb_url, dump, tmp_path)
    before, after = assert_same_documents(pouchdb_url, source, target)
    assert sorted(before) == ["conflicted", "posted", "updated"]   # deleted ones are not backed up
    assert after["updated"]["_rev"].startswith("2-")
    assert after["conflicted"]["_rev"] == "2-bbbb"


def test_unicode_escapes_numbers_and_awkward_ids_survive(pouchdb_url, tmp_path):
    docs = [
        {"_id": "unicode", "_rev": "1-a", "fr": "déjà vu ça", "ja": "日本語", "emoji": "😀🚀",
         "rtl": "שלום", "separators": "\u2028\u2029\x85\x1c", "key_é": {"日本": "😀"}},
        {"_id": "escapes", "_rev": "1-b", "quotes": 'she said "hi"', "backslashes": "C:\\path\\to\\",
         "newline": "a\nb\r\nc", "tab": "a\tb", "nul": "a\u0000b", "ctrl": "\u0001\u001f",
         "script": "a/b</script>", "lone_surrogate": "\ud800"},
        {"_id": "numbers", "_rev": "1-c", "huge": 1e300, "tiny": 1e-300, "negzero": -0.0,
         "bigint": 12345678901234567890, "tenth": 0.1, "neg": -7, "third": 1 / 3},
        {"_id": "looks_like_rows", "_rev": "1-d", "rows": [{"id": "x", "value": {"rev": "1-x"}}],
         "doc": {"inner": True}, "text": '{"id":"fake"},"doc":{"x":1}}', "value": "},\"doc\":"},
        # Ids: characters a URL or a line-based tool gets wrong.  Unicode ids
        # stay within Latin-1: PouchDB Server's _all_docs hides the others.
        {"_id": "id with spaces", "_rev": "1-e"},
        {"_id": "slash/in/id", "_rev": "1-f"},
        {"_id": "été ÿ", "_rev": "1-g"},
        {"_id": 'a"b', "_rev": "1-h"},
        {"_id": "a\\b", "_rev": "1-i"},
        {"_id": "new\nline\ttab", "_rev": "1-j"},
        {"_id": "query?x=1&y=2#frag%41+", "_rev": "1-k"},
        {"_id": "design_in_body", "_rev": "1-l", "see": "_design/x"},
    ]
    _, before = round_trip(pouchdb_url, tmp_path, "rich", docs)
    # What PouchDB (JavaScript numbers) made of them, restored unchanged.
    assert before["numbers"]["huge"] == 1e300
    assert before["numbers"]["tenth"] == 0.1
    assert before["escapes"]["nul"] == "a\u0000b"


def test_text_and_binary_attachments_survive(pouchdb_url, tmp_path):
    binary = bytes(range(256)) * 64
    def inline(content_type, data):
        return {"content_type": content_type, "data": base64.b64encode(data).decode("ascii")}
    docs = [
        {"_id": "text", "_rev": "2-a", "_attachments": {"hello.txt": inline("text/plain", "héllo wörld\n".encode())}},
        {"_id": "binary", "_rev": "1-b", "kind": "bin", "_attachments": {"blob.bin": inline("application/octet-stream", binary)}},
        {"_id": "several", "_rev": "3-c", "_attachments": {
            "a.json": inline("application/json", b'{"a":1}'),
            "b file.png": inline("image/png", b"\x89PNG\r\n\x1a\n" + bytes(100)),
            "big.bin": inline("application/octet-stream", bytes(range(7, 250)) * 8000)}},
        {"_id": "none", "_rev": "1-d"},
    ]
    _, before = round_trip(pouchdb_url, tmp_path, "attach", docs)
    assert base64.b64decode(before["binary"]["_attachments"]["blob.bin"]["data"]) == binary


VALIDATE = ("function(newDoc, oldDoc, userCtx) {\n"
            "  if (newDoc.type === 'bad') { throw({forbidden: 'bad documents are refused'}); }\n}")


def test_design_documents_are_restored_with_views_and_validate_function(pouchdb_url, tmp_path):
    docs = [
        {"_id": "_design/items", "_rev": "3-abc", "language": "javascript",
         "views": {"by_n": {"map": "function (doc) {\n  if (doc.type === \"item\") { emit(doc.n, null); }\n}",
                            "reduce": "_count"}}},
        {"_id": "_design/guard", "_rev": "1-def", "validate_doc_update": VALIDATE},
        # Upper-case ids sort before "_design/", lower-case ones after: the
        # design documents are taken from the middle of the dump.
        *[{"_id": "ITEM%d" % i, "_rev": "1-%d" % i, "type": "item", "n": i} for i in range(3)],
        *[{"_id": "item%d" % i, "_rev": "2-%d" % i, "type": "item", "n": 10 + i} for i in range(5)],
    ]
    source = unique("design")
    fill(pouchdb_url, source, docs)
    dump = backup(pouchdb_url, source, tmp_path)
    target, _ = restore(pouchdb_url, dump, tmp_path)
    # The design documents were PUT without their _rev (as couchdb-dump.sh
    # does): same body, but a new 1- revision; assert_same_documents knows.
    before, after = assert_same_documents(pouchdb_url, source, target)
    assert after["_design/items"]["views"] == docs[0]["views"]
    assert after["_design/guard"]["validate_doc_update"] == VALIDATE

    view = "/_design/items/_view/by_n?reduce=false"
    assert http("GET", db_url(pouchdb_url, target) + view)["rows"] == \
        http("GET", db_url(pouchdb_url, source) + view)["rows"]
    assert http("GET", db_url(pouchdb_url, target) + "/_design/items/_view/by_n")["rows"][0]["value"] == 8
    # The validate function guards the restored database.
    with pytest.raises(AssertionError, match="HTTP 403"):
        http("PUT", db_url(pouchdb_url, target) + "/evil", {"type": "bad"})


def test_design_document_with_an_escaped_lone_surrogate_restores(pouchdb_url, tmp_path):
    """A design document as PouchDB writes it (`_id`/`_rev` last) is parsed
    and re-serialised without them; a "\\ud800" escape in it (JSON allows it,
    JavaScript strings hold it) must not make the port send the line as it
    is, `_rev` included, which the server refuses with a conflict."""
    docs = [{"_id": "_design/odd", "_rev": "1-a", "views": {}, "note": "\ud800"},
            {"_id": "plain", "_rev": "1-b"}]
    round_trip(pouchdb_url, tmp_path, "surrogate", docs)


def test_refused_document_with_an_escaped_lone_surrogate_in_its_id_is_reported(pouchdb_url, tmp_path):
    """The port names each document the server refuses; an id holding a
    "\\ud800" escape (valid JSON) must be named too, not crash the report
    ("Unexpected failure (UnicodeEncodeError: str)") and hide the others."""
    dump = write_dump(tmp_path / "dump.json",   # couchdb-dump.sh's layout (`_id` and `_rev` first)
                      [{"_id": "_design/guard", "_rev": "1-a", "validate_doc_update": VALIDATE},
                       {"_id": "bad\ud800", "_rev": "1-b", "type": "bad"},
                       {"_id": "bad2", "_rev": "1-c", "type": "bad"},
                       {"_id": "good", "_rev": "1-d", "type": "good"}])
    target = unique("refused")
    result = run_port(["-r", "-d", target, "-f", str(dump), "-c"], tmp_path, server=pouchdb_url, text=True)
    assert "Traceback" not in result.stderr and "Unexpected failure" not in result.stdout, result.stdout + result.stderr
    assert result.returncode == 1
    refusals = [line for line in result.stdout.splitlines() if " was refused: forbidden: " in line]
    assert len(refusals) == 2 and any('"bad2"' in line for line in refusals), result.stdout
    assert list(documents(pouchdb_url, target)) == ["_design/guard", "good"]


def test_design_document_with_an_escaped_lone_surrogate_in_its_id_is_no_crash(pouchdb_url, tmp_path):
    """A design document id holding a "\\ud800" escape cannot be written
    into a URL as UTF-8; the port may refuse it with a message, but must not
    stop with "Unexpected failure (UnicodeEncodeError: str); please report it."."""
    dump = write_dump(tmp_path / "dump.json",
                      [{"_id": "_design/odd\ud800", "_rev": "1-a", "views": {}}, {"_id": "plain", "_rev": "1-b"}])
    result = run_port(["-r", "-d", unique("oddid"), "-f", str(dump), "-c"], tmp_path, server=pouchdb_url, text=True)
    assert "Traceback" not in result.stderr and "Unexpected failure" not in result.stdout, result.stdout + result.stderr


# -- chunks and sizes ---------------------------------------------------------

@pytest.fixture(scope="module")
def twenty_thousand(pouchdb_url, tmp_path_factory):
    """A database of 20,000 small documents and its backup, made once."""
    source = unique("many")
    fill(pouchdb_url, source, [{"_id": "d%05d" % i, "_rev": "1-%032x" % i, "i": i} for i in range(20000)])
    cwd = tmp_path_factory.mktemp("many")
    return source, backup(pouchdb_url, source, cwd)


@pytest.mark.parametrize("lines, chunks", [("1000", 21), (None, 5)], ids=["l1000", "default_l5000"])
def test_twenty_thousand_documents_restore_in_chunks(pouchdb_url, tmp_path, twenty_thousand, lines, chunks):
    source, dump = twenty_thousand
    # 20,002 lines (header, documents, footer) in chunks of -l lines.
    target, result = restore(pouchdb_url, dump, tmp_path, *(["-l", lines] if lines else []))
    assert "... INFO: Successfully Imported %d Files\n" % chunks in result.stdout
    before, _ = assert_same_documents(pouchdb_url, source, target)
    assert len(before) == 20000


@pytest.mark.parametrize("lines", ["1", "2", "3", "8", "9", "10", "11"])
def test_every_chunk_size_restores_the_same_documents(pouchdb_url, tmp_path, lines):
    """Chunks holding only the header or the footer, a design document at a
    chunk's edge, the last chunk cut just before the footer, one file."""
    docs = [{"_id": "_design/v", "_rev": "1-v", "views": {"v": {"map": "function(doc){emit(doc.n)}"}}},
            *[{"_id": "D%d" % i, "_rev": "1-%d" % i, "n": i} for i in range(3)],
            *[{"_id": "d%d" % i, "_rev": "1-%d" % i, "n": i} for i in range(4)]]
    round_trip(pouchdb_url, tmp_path, "chunks", docs, restore_args=["-l", lines])


def test_empty_database_round_trips(pouchdb_url, tmp_path):
    dump, before = round_trip(pouchdb_url, tmp_path, "empty", [])
    assert before == {}
    # The same file as couchdb-dump.sh wrote from Apache CouchDB.
    assert dump.read_bytes() == (FIXTURES / "backup_empty" / "after" / "empty.json").read_bytes()


def test_gzip_backup_restores(pouchdb_url, tmp_path):
    source = unique("gzip")
    fill(pouchdb_url, source, plain_docs(30) + [
        {"_id": "_design/v", "_rev": "1-v", "views": {"v": {"map": "function(doc){emit(doc.n)}"}}},
        {"_id": "att", "_rev": "1-a", "_attachments": {"a.bin": {"content_type": "application/octet-stream",
                                                                 "data": base64.b64encode(bytes(range(256))).decode()}}}])
    plain = backup(pouchdb_url, source, tmp_path, name="plain.json")
    packed = backup(pouchdb_url, source, tmp_path, "-z", name="packed.json")
    assert packed.name == "packed.json.gz" and not (tmp_path / "packed.json").exists()
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
    target, _ = restore(pouchdb_url, packed, tmp_path)
    assert_same_documents(pouchdb_url, source, target)


# -- the dump layout from a one-line reply ------------------------------------

def test_backup_of_a_one_line_reply_has_the_dump_layout(pouchdb_url, tmp_path):
    source = unique("layout")
    fill(pouchdb_url, source, plain_docs(5) + [{"_id": "_design/v", "_rev": "1-v", "views": {}}])
    with urllib.request.urlopen(db_url(pouchdb_url, source) + "/_all_docs?include_docs=true&attachments=true") as r:
        assert b"\n" not in r.read().rstrip(b"\n")   # PouchDB Server: the whole reply on one line
    lines = backup(pouchdb_url, source, tmp_path).read_text(encoding="utf-8").split("\n")
    assert lines[0] == HEADER
    assert lines[-2:] == [FOOTER, ""]           # the file ends with "]}\n"
    docs = lines[1:-2]
    assert [line.endswith(",") for line in docs] == [True] * (len(docs) - 1) + [False]
    expected = documents(pouchdb_url, source)
    assert [json.loads(line.rstrip(",")) for line in docs] == list(expected.values())


def test_backup_refuses_a_reply_that_hides_documents(pouchdb_url, tmp_path):
    """PouchDB Server 4.2.0 (in memory) leaves ids with a character above
    U+00FF out of `_all_docs` but counts them in total_rows: the port must
    say the backup is incomplete and write no file, not lose them silently."""
    source = unique("hidden")
    fill(pouchdb_url, source, [{"_id": "visible", "_rev": "1-a"}, {"_id": "日本", "_rev": "1-b"}])
    result = run_port(["-b", "-d", source, "-f", "dump.json"], tmp_path, server=pouchdb_url, text=True)
    assert result.returncode == 1
    assert "... ERROR: Backup failed, no file written: the reply holds 1 rows but the database has 2 documents." \
        in result.stdout
    assert list(tmp_path.iterdir()) == []


# -- golden dumps written by couchdb-dump.sh from Apache CouchDB ---------------

# Documents the dump's own validate_doc_update refuses (as CouchDB did in
# the golden case restore_guarded): the port reports them and exits 1.
REFUSED = {"backup_guarded": {"g1", "g3"}}


def golden_dumps():
    """(case name, dump file) of every backup the port must get right: the
    expected file where the port must do better than bash (backup_greedy),
    the bash script's file otherwise; failed backups leave no dump."""
    found = []
    for case_dir in sorted(FIXTURES.glob("backup_*")):
        case = load_case(case_dir)
        expect = case.get("expect_port", {})
        if expect.get("rc", case["rc"]) != 0:
            continue
        for name in expect.get("files_after", case["files_after"]):
            path = case_dir / "expected" / name
            if not path.is_file():
                path = case_dir / "after" / name
            found.append(pytest.param(case_dir.name, path, id="%s/%s" % (case_dir.name, name)))
    return found


def as_javascript(value):
    """A JSON value as a JavaScript server holds it: every number a double."""
    return json.loads(json.dumps(value), parse_int=float)


def test_golden_dumps_are_listed():
    names = {p.values[0] for p in golden_dumps()}
    assert {"backup_basic", "backup_design", "backup_attach", "backup_rich", "backup_many",
            "backup_many_design", "backup_guarded", "backup_empty", "backup_greedy", "backup_gzip"} <= names
    assert not names & {"backup_cut_clean", "backup_bad_password", "backup_no_such_db", "backup_file_exists"}


@pytest.mark.parametrize("case, path", golden_dumps())
def test_golden_couchdb_dump_restores_into_pouchdb(pouchdb_url, tmp_path, case, path):
    text = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    lines = text.decode("utf-8").split("\n")
    dumped = [json.loads(line.rstrip(",")) for line in lines[1:] if line.strip() and line != FOOTER]
    refused = REFUSED.get(case, set())

    target = unique("golden")
    result = run_port(["-r", "-d", target, "-f", str(path), "-c"], tmp_path, server=pouchdb_url, text=True)
    if refused:
        assert result.returncode == 1
        for doc_id in refused:
            assert '... ERROR: Document "%s" was refused: forbidden: bad documents are refused' % doc_id \
                in result.stdout
    else:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    restored = documents(pouchdb_url, target)
    assert sorted(restored) == sorted(d["_id"] for d in dumped if d["_id"] not in refused)
    for doc in dumped:
        if doc["_id"] in refused:
            continue
        got = restored[doc["_id"]]
        if doc["_id"].startswith("_design/"):   # PUT: same body, new revision
            assert as_javascript(without_rev(got)) == as_javascript(without_rev(doc)), doc["_id"]
        else:
            assert got["_rev"] == doc["_rev"], doc["_id"]
            assert as_javascript(comparable(got)) == as_javascript(comparable(doc)), doc["_id"]
