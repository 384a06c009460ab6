"""What Convertigo's lib_FullSyncImportExport and Docker images rely on.

FS_backup writes ``dbs/<db>_backup.json[.gz]`` and FS_restore deletes the
database when it exists, recreates it and restores a plain or gzip dump; both
read the result from ``--json`` to answer ``<isSuccess>``.  These tests pin
the long options that give that: ``--recreate`` (and its refusal of system
databases without ``--force``), ``--json``, ``-f -`` (pipes), the progress
line on stderr and its silencing, ``python -m couchdb_dump``, ``--help`` and
the ``couchdb-dump`` console script.

The end-to-end tests run against the session's live PouchDB Server 4.2.0
(admin party: no credentials are sent); the tests that must see every
request, or that need a server to misbehave, use the in-process stub.
"""

import gzip
import io
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

import couchdb_dump
from couch_stub import CouchStub, Fault
from helpers import (HEADER, PROGRAM, REPO, clean_environment, dump_of, http, last_json, run_port, start_port,
                     write_dump)


ERROR_PREFIX = "... ERROR: "


# -- helpers -------------------------------------------------------------------

def environment():
    return clean_environment({"PYTHONDONTWRITEBYTECODE": "1"})


def error_text(stream):
    """The text after '... ERROR: ' of the one error line the run printed."""
    lines = [line for line in stream.decode("utf-8").splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(lines) == 1, lines
    return lines[0][len(ERROR_PREFIX):]


def new_db(what):
    """A database name no other test of the shared server uses."""
    return "conv_%s_%s" % (what, uuid.uuid4().hex[:8])


def fill(base, db):
    """20 documents (5 of them updated, so not every revision is 1-) and a design document."""
    http("PUT", "%s/%s" % (base, db))
    written = http("POST", "%s/%s/_bulk_docs" % (base, db),
                   {"docs": [{"_id": "doc%02d" % i, "n": i} for i in range(20)]})
    http("POST", "%s/%s/_bulk_docs" % (base, db),
         {"docs": [{"_id": w["id"], "_rev": w["rev"], "n": i, "updated": True} for i, w in enumerate(written[:5])]})
    http("PUT", "%s/%s/_design/app" % (base, db),
         {"views": {"by_n": {"map": "function (doc) { emit(doc.n, 1); }"}}})


def documents(base, db):
    reply = http("GET", "%s/%s/_all_docs?include_docs=true" % (base, db))
    return {row["id"]: row["doc"] for row in reply["rows"]}


def same_documents(restored, backed_up):
    """Every document back, with its _rev; design documents are PUT (as
    couchdb-dump.sh does), which gives them a new revision: their content is
    compared without it."""
    assert sorted(restored) == sorted(backed_up)
    for doc_id, doc in backed_up.items():
        if doc_id.startswith("_design/"):
            assert {k: v for k, v in restored[doc_id].items() if k != "_rev"} == \
                   {k: v for k, v in doc.items() if k != "_rev"}
        else:
            assert restored[doc_id] == doc


def host(url):
    return ["-H", url]


DUMP = (HEADER + b'\n'
        b'{"_id":"org.couchdb.user:new","_rev":"1-aaa","name":"new","type":"user","roles":[]}\n'
        b']}\n')


class DeletingStub(CouchStub):
    """The stub, answering DELETE /db as CouchDB does."""

    def answer(self, request):
        path = request.path.partition("?")[0]
        parts = [urllib.parse.unquote(p) for p in path.split("/")[1:]]
        if request.method == "DELETE" and len(parts) == 1:
            if parts[0] not in self.store.databases:
                return 404, b'{"error":"not_found","reason":"Database does not exist."}\n'
            del self.store.databases[parts[0]]
            return 200, b'{"ok":true}\n'
        return super().answer(request)


def sent(stub):
    return [(r.method, r.path) for r in stub.requests]


# -- --recreate ------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_recreate_restores_exactly_the_backed_up_documents_over_a_changed_database(pouchdb_url, tmp_path, compress):
    db = new_db("recreate")
    base = "%s/%s" % (pouchdb_url, db)
    fill(pouchdb_url, db)
    backed_up = documents(pouchdb_url, db)
    result = run_port(["-b", "-q", *host(pouchdb_url), "-d", db, "-f", "backup.json", *(["-z"] if compress else [])],
                      cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    dump = "backup.json.gz" if compress else "backup.json"

    # The database moves on: deletions, new documents, updates.
    for doc_id in ("doc00", "doc07", "doc19"):
        http("DELETE", "%s/%s?rev=%s" % (base, doc_id, backed_up[doc_id]["_rev"]))
    http("POST", base + "/_bulk_docs", {"docs": [{"_id": "added%d" % i} for i in range(3)]})
    http("PUT", base + "/doc10", dict(backed_up["doc10"], n="changed"))
    http("PUT", base + "/_design/app", dict(backed_up["_design/app"], views={}))
    assert documents(pouchdb_url, db) != backed_up

    result = run_port(["-r", *host(pouchdb_url), "-d", db, "-f", dump, "--recreate"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"... INFO: Deleting database %s (--recreate)\n" % db.encode() in result.stdout

    same_documents(documents(pouchdb_url, db), backed_up)
    # Nothing of the changed database is left: no tombstone, no conflict.
    changes = http("GET", base + "/_changes")["results"]
    assert sorted(c["id"] for c in changes) == sorted(backed_up)
    assert not [c for c in changes if c.get("deleted")]
    doc10 = http("GET", base + "/doc10?conflicts=true")
    assert doc10 == backed_up["doc10"]


def test_recreate_creates_a_database_that_does_not_exist(pouchdb_url, tmp_path):
    source, target = new_db("src"), new_db("new")
    fill(pouchdb_url, source)
    assert run_port(["-b", "-q", *host(pouchdb_url), "-d", source, "-f", "backup.json"], cwd=tmp_path).returncode == 0
    assert target not in http("GET", pouchdb_url + "/_all_dbs")

    result = run_port(["-r", *host(pouchdb_url), "-d", target, "-f", "backup.json", "--recreate"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"Deleting database" not in result.stdout
    same_documents(documents(pouchdb_url, target), documents(pouchdb_url, source))


@pytest.mark.parametrize("dump", [DUMP[:-4] + b"\n", DUMP.replace(b'"roles":[]', b'"roles":['),
                                  gzip.compress(DUMP)[:-12]], ids=["no-footer", "bad-json", "truncated-gzip"])
def test_recreate_with_a_broken_dump_leaves_the_database_alone_and_sends_nothing(dump, tmp_path):
    (tmp_path / "dump.json").write_bytes(dump)
    with DeletingStub(databases=["db"]) as stub:
        stub.store.databases["db"]["kept"] = {"_id": "kept", "_rev": "1-k"}
        result = run_port(["-r", "-q", "--json", "-H", stub.url, "-d", "db", "-f", "dump.json", "--recreate"],
                          cwd=tmp_path)
    assert result.returncode == 1
    assert stub.requests == []
    assert stub.store.databases == {"db": {"kept": {"_id": "kept", "_rev": "1-k"}}}
    assert error_text(result.stdout).endswith("Nothing was sent to the server.")
    assert last_json(result.stdout)["error"] == error_text(result.stdout)


@pytest.mark.parametrize("system_db", ["_users", "_replicator", "_global_changes"])
def test_recreate_refuses_a_system_database_without_force_and_sends_nothing(system_db, tmp_path):
    (tmp_path / "dump.json").write_bytes(DUMP)
    with DeletingStub(databases=[system_db]) as stub:
        stub.store.databases[system_db]["kept"] = {"_id": "kept", "_rev": "1-k"}
        result = run_port(["-r", "-H", stub.url, "-d", system_db, "-f", "dump.json", "--recreate", "--json"],
                          cwd=tmp_path)
    assert result.returncode == 1
    assert stub.requests == []
    assert stub.store.databases == {system_db: {"kept": {"_id": "kept", "_rev": "1-k"}}}
    message = "Refusing to recreate the system database %s - add --force to do it anyway" % system_db
    assert error_text(result.stdout) == message
    report = last_json(result.stdout)
    assert report["ok"] is False and report["error"] == message


def test_recreate_with_force_deletes_recreates_and_restores_a_system_database(tmp_path):
    (tmp_path / "dump.json").write_bytes(DUMP)
    with DeletingStub(databases=["_users"]) as stub:
        stub.store.databases["_users"]["org.couchdb.user:old"] = {"_id": "org.couchdb.user:old", "_rev": "1-o"}
        result = run_port(["-r", "-q", "-H", stub.url, "-d", "_users", "-f", "dump.json", "--recreate", "--force"],
                          cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sent(stub) == [("GET", "/_all_dbs"), ("DELETE", "/_users"), ("PUT", "/_users"),
                          ("POST", "/_users/_bulk_docs")]
    assert list(stub.store.databases["_users"]) == ["org.couchdb.user:new"]


@pytest.mark.parametrize("db, spelling", [("db", ["--recreate=no", "-c"]), ("_users", ["--recreate", "--force=no"]),
                                         ("db", ["--json=yes", "-c"])], ids=["recreate=no", "force=no", "json=yes"])
def test_a_long_flag_given_a_value_is_a_usage_error_and_sends_nothing(db, spelling, tmp_path):
    (tmp_path / "dump.json").write_bytes(DUMP)
    with DeletingStub(databases=[db]) as stub:
        stub.store.databases[db]["kept"] = {"_id": "kept", "_rev": "1-k"}
        result = run_port(["-r", "-q", "-H", stub.url, "-d", db, "-f", "dump.json", *spelling], cwd=tmp_path)
    assert stub.requests == []
    assert result.returncode == 1
    assert ERROR_PREFIX.encode() in result.stdout


def readme_commands():
    """The FS_backup and FS_restore command lines of README.md, as words."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using it from Convertigo\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("\n```", 1)[0] for b in section.split("```sh\n")[1:]]
    return [block.strip().split() for block in blocks]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_the_readme_convertigo_command_lines_back_up_and_restore(pouchdb_url, tmp_path, compress):
    backup, restore = readme_commands()
    assert backup[:2] == restore[:2] == ["python3", "couchdb_dump.py"]
    port = urllib.parse.urlsplit(pouchdb_url).port
    source, target = new_db("fsbackup"), new_db("fsrestore")
    fill(pouchdb_url, source)
    fill(pouchdb_url, target)
    http("PUT", "%s/%s/extra" % (pouchdb_url, target), {"gone": True})

    def words(command, db, file=None):
        out = []
        for word in command[2:]:
            if word == "[-z]":
                out += ["-z"] if compress else []
                continue
            word = word.replace("<db>", db).replace("<file>", file or "")
            out.append(str(port) if word == "5984" else word)
        return out

    (tmp_path / "dbs").mkdir()
    done = run_port(words(backup, source), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = last_json(done.stdout)
    assert report["ok"] is True and (tmp_path / report["file"]).is_file()
    assert report["file"] == "dbs/%s_backup.json%s" % (source, ".gz" if compress else "")

    done = run_port(words(restore, target, report["file"]), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert last_json(done.stdout)["ok"] is True
    same_documents(documents(pouchdb_url, target), documents(pouchdb_url, source))


# -- --json ----------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_json_backup_success_reports_counts_and_the_size_of_the_file_written(pouchdb_url, tmp_path, compress):
    db = new_db("jsonb")
    fill(pouchdb_url, db)
    (tmp_path / "dbs").mkdir()
    name = "dbs/%s_backup.json" % db
    result = run_port(["-b", "-q", "--json", *host(pouchdb_url), "-d", db, "-f", name, *(["-z"] if compress else [])],
                      cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # With -q the JSON object is all that standard output holds.
    assert len(result.stdout.splitlines()) == 1
    report = last_json(result.stdout)
    written = name + ".gz" if compress else name
    assert report["ok"] is True
    assert (report["mode"], report["db"], report["file"]) == ("backup", db, written)
    assert (report["documents"], report["design_documents"]) == (21, 1)
    assert report["bytes"] == (tmp_path / written).stat().st_size
    assert isinstance(report["seconds"], (int, float)) and report["seconds"] >= 0
    assert "error" not in report
    assert sorted(p.name for p in (tmp_path / "dbs").iterdir()) == [Path(written).name]


def test_json_backup_counts_on_the_apache_couchdb_layout(tmp_path):
    """Apache CouchDB lays _all_docs out one row a line (the stub does too),
    which the port rewrites on its fast path: the counts must be the same."""
    with CouchStub(databases=["db"]) as stub:
        docs = stub.store.databases["db"]
        docs.update({"d%02d" % i: {"_id": "d%02d" % i, "_rev": "1-a", "n": i} for i in range(12)})
        docs["_design/app"] = {"_id": "_design/app", "_rev": "2-b", "views": {}}
        docs["_design/more"] = {"_id": "_design/more", "_rev": "1-c"}
        result = run_port(["-b", "-q", "--json", "-H", stub.url, "-d", "db", "-f", "backup.json"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(result.stdout.splitlines()) == 1
    report = last_json(result.stdout)
    assert (report["ok"], report["documents"], report["design_documents"]) == (True, 14, 2)
    assert report["bytes"] == (tmp_path / "backup.json").stat().st_size


def test_json_names_the_timestamped_file_that_was_written(pouchdb_url, tmp_path):
    db = new_db("jsont")
    fill(pouchdb_url, db)
    result = run_port(["-b", "-q", "--json", "-T", *host(pouchdb_url), "-d", db, "-f", "backup.json"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = last_json(result.stdout)
    assert report["file"] != "backup.json"
    assert [p.name for p in tmp_path.iterdir()] == [report["file"]]
    assert report["bytes"] == (tmp_path / report["file"]).stat().st_size


def test_json_restore_success_reports_counts_and_the_dump_size(pouchdb_url, tmp_path):
    source, target = new_db("jsonsrc"), new_db("jsonr")
    fill(pouchdb_url, source)
    assert run_port(["-b", "-q", *host(pouchdb_url), "-d", source, "-f", "backup.json"], cwd=tmp_path).returncode == 0
    result = run_port(["-r", "-q", "--json", "--recreate", *host(pouchdb_url), "-d", target, "-f", "backup.json"],
                      cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = last_json(result.stdout)
    assert report["ok"] is True
    assert (report["mode"], report["db"], report["file"]) == ("restore", target, "backup.json")
    assert (report["documents"], report["design_documents"]) == (21, 1)
    assert report["bytes"] == (tmp_path / "backup.json").stat().st_size
    assert "error" not in report
    same_documents(documents(pouchdb_url, target), documents(pouchdb_url, source))


def test_json_failure_of_a_backup_of_a_missing_database_carries_the_error_line(pouchdb_url, tmp_path):
    db = new_db("missing")
    result = run_port(["-b", "-q", "--json", *host(pouchdb_url), "-d", db, "-f", "backup.json"], cwd=tmp_path)
    assert result.returncode == 1
    report = last_json(result.stdout)
    assert report["ok"] is False
    # The error line, and the cause behind it: the status and what it means.
    assert report["error"] == error_text(result.stdout) + "; the server answered HTTP 404: not found"
    assert report["error"].startswith("CouchDB reported: {")
    assert report["exit_code"] == 1
    assert (report["mode"], report["db"]) == ("backup", db)
    assert list(tmp_path.iterdir()) == []


def test_json_failure_of_a_restore_from_a_missing_file(tmp_path):
    result = run_port(["-r", "-q", "--json", "--recreate", "-H", "127.0.0.1", "-d", "db", "-f", "none.json"],
                      cwd=tmp_path)
    assert result.returncode == 1
    report = last_json(result.stdout)
    assert report["ok"] is False
    assert report["error"] == error_text(result.stdout) == "Input file none.json not found."
    assert report["mode"] == "restore"


def test_json_usage_error_is_reported_as_json_too(tmp_path):
    result = run_port(["-b", "--json", "-H", "127.0.0.1", "-f", "backup.json"], cwd=tmp_path)
    assert result.returncode == 1
    report = last_json(result.stdout)
    assert report["ok"] is False
    assert report["error"] == error_text(result.stdout) == "Missing argument '-d <DB_NAME>'"
    assert report["exit_code"] == 1


def test_json_of_a_backup_to_stdout_goes_to_stderr_and_stdout_is_only_the_dump(pouchdb_url, tmp_path):
    db = new_db("jsonstd")
    fill(pouchdb_url, db)
    assert run_port(["-b", "-q", *host(pouchdb_url), "-d", db, "-f", "backup.json"], cwd=tmp_path).returncode == 0
    result = run_port(["-b", "--json", *host(pouchdb_url), "-d", db, "-f", "-"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (tmp_path / "backup.json").read_bytes()
    report = last_json(result.stderr)
    assert report["ok"] is True
    assert (report["mode"], report["file"], report["documents"], report["design_documents"]) == \
           ("backup", "-", 21, 1)


def test_json_bytes_of_a_backup_to_stdout_counts_the_bytes_written(pouchdb_url, tmp_path):
    db = new_db("jsonbytes")
    fill(pouchdb_url, db)
    result = run_port(["-b", "-q", "--json", *host(pouchdb_url), "-d", db, "-f", "-"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert last_json(result.stderr)["bytes"] == len(result.stdout)


# -- -f - ------------------------------------------------------------------------

def test_backup_to_stdout_is_the_file_backup_byte_for_byte_with_messages_on_stderr(pouchdb_url, tmp_path):
    db = new_db("stdout")
    fill(pouchdb_url, db)
    assert run_port(["-b", "-q", *host(pouchdb_url), "-d", db, "-f", "backup.json"], cwd=tmp_path).returncode == 0
    dump = (tmp_path / "backup.json").read_bytes()

    plain = run_port(["-b", *host(pouchdb_url), "-d", db, "-f", "-"], cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == dump
    assert b"... INFO: Export completed successfully. File available at: -\n" in plain.stderr

    compressed = run_port(["-b", "-z", *host(pouchdb_url), "-d", db, "-f", "-"], cwd=tmp_path)
    assert compressed.returncode == 0, compressed.stderr
    assert gzip.decompress(compressed.stdout) == dump
    assert b"... INFO: Stage 5 - File compression\n" in compressed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.json"]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_restore_from_stdin_restores_every_document(pouchdb_url, tmp_path, compress):
    source, target = new_db("stdinsrc"), new_db("stdin")
    fill(pouchdb_url, source)
    assert run_port(["-b", "-q", *host(pouchdb_url), "-d", source, "-f", "backup.json"], cwd=tmp_path).returncode == 0
    dump = (tmp_path / "backup.json").read_bytes()
    result = run_port(["-r", "-c", "--json", *host(pouchdb_url), "-d", target, "-f", "-"],
                      input=gzip.compress(dump) if compress else dump, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert last_json(result.stdout)["documents"] == 21
    same_documents(documents(pouchdb_url, target), documents(pouchdb_url, source))


def test_restore_recreate_from_an_empty_pipe_sends_nothing(tmp_path):
    """`backup -f - | restore --recreate -f -` where the backup failed at once
    must not delete the target database."""
    with DeletingStub(databases=["db"]) as stub:
        stub.store.databases["db"]["kept"] = {"_id": "kept", "_rev": "1-k"}
        result = run_port(["-r", "-q", "--recreate", "-H", stub.url, "-d", "db", "-f", "-"], input=b"", cwd=tmp_path)
    assert result.returncode == 1
    assert stub.requests == []
    assert "db" in stub.store.databases
    assert error_text(result.stdout).endswith("Nothing was sent to the server.")


def test_backup_piped_into_restore_copies_the_database(pouchdb_url, tmp_path):
    source, target = new_db("pipesrc"), new_db("pipe")
    fill(pouchdb_url, source)
    backup = start_port(["-b", "-q", *host(pouchdb_url), "-d", source, "-f", "-"], tmp_path)
    restore = start_port(["-r", "-q", "--recreate", *host(pouchdb_url), "-d", target, "-f", "-"], tmp_path,
                         stdin=backup.stdout)
    backup.stdout.close()   # the restore holds the only reading end
    restore_out, restore_err = restore.communicate(timeout=120)
    backup_err = backup.stderr.read()
    backup.stderr.close()
    assert backup.wait(timeout=120) == 0, backup_err
    assert restore.returncode == 0, restore_out + restore_err
    assert backup_err == b""
    same_documents(documents(pouchdb_url, target), documents(pouchdb_url, source))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_gzip_backup_to_stdout_is_not_a_complete_gzip_stream(tmp_path):
    rows = b",\r\n".join(b'{"id":"d%d","key":"d%d","value":{"rev":"1-a"},"doc":{"_id":"d%d","_rev":"1-a"}}'
                         % (i, i, i) for i in range(3))
    reply = b'{"total_rows":3,"offset":0,"rows":[\r\n' + rows

    def cut_all_docs(index, method, path):
        return Fault("cut", body=reply) if "/_all_docs" in path else None

    with CouchStub(faults=cut_all_docs, databases=["db"]) as stub:
        result = run_port(["-b", "-z", "-H", stub.url, "-d", "db", "-f", "-"], cwd=tmp_path)
    assert result.returncode == 1
    assert b"... ERROR: Curl encountered an issue whilst dumping the database.\n" in result.stderr
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(result.stdout)


# -- progress --------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def drive(monkeypatch, stream, enabled=True, seconds=21, total=None):
    """Run a Progress for ``seconds`` seconds of fake time, one update a second."""
    clock = FakeClock()
    monkeypatch.setattr(couchdb_dump.time, "monotonic", clock)
    progress = couchdb_dump.Progress(enabled, stream)
    for second in range(seconds):
        clock.now = 1000.0 + second
        progress.update(100 * second, 1000 * second, total)
    progress.finish()
    return stream.getvalue()


def test_progress_writes_a_line_every_5_seconds_when_not_a_terminal(monkeypatch):
    text = drive(monkeypatch, io.StringIO())
    assert text.splitlines() == [
        "progress: 500 documents, 0.0 MB, 100 documents/s",
        "progress: 1000 documents, 0.0 MB, 100 documents/s",
        "progress: 1500 documents, 0.0 MB, 100 documents/s",
        "progress: 2000 documents, 0.0 MB, 100 documents/s",
        "progress: 2000 documents, 0.0 MB, 100 documents/s, 20 s",   # the final figures
    ]
    assert "\r" not in text and text.endswith("\n")


def test_a_short_run_without_any_progress_line_gets_no_final_one(monkeypatch):
    assert drive(monkeypatch, io.StringIO(), seconds=4) == ""


def test_progress_line_gives_the_share_and_time_left_when_the_total_is_known(monkeypatch):
    text = drive(monkeypatch, io.StringIO(), seconds=6, total=2000)
    assert text == ("progress: 500 documents, 0.0 MB, 100 documents/s, 25%, 15 s left\n"
                    "progress: 500 documents, 0.0 MB, 100 documents/s, 25%, 5 s\n")


def test_progress_is_redrawn_in_place_on_a_terminal(monkeypatch):
    text = drive(monkeypatch, Terminal(), seconds=3)
    # Every half second at most: updates at 1 s and 2 s, the final figures, then the newline.
    assert text == ("\r100 documents, 0.0 MB, 100 documents/s\x1b[K"
                    "\r200 documents, 0.0 MB, 100 documents/s\x1b[K"
                    "\r200 documents, 0.0 MB, 100 documents/s, 2 s\x1b[K\n")


def test_finished_run_is_redrawn_at_100_percent_not_at_its_last_throttled_update(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(couchdb_dump.time, "monotonic", clock)
    stream = Terminal()
    progress = couchdb_dump.Progress(True, stream, what="written")
    for step in range(1, 101):
        clock.now = 1000.0 + step * 0.2   # updates every 0.2 s, drawn every 0.5 s at most
        progress.update(step * 10, step * 100000, 1000)
    last_throttled = stream.getvalue().rsplit("\r", 1)[1]
    assert "100%" not in last_throttled
    progress.finish()
    final = stream.getvalue().rsplit("\r", 1)[1]
    assert final == "1000 documents, 10.0 MB written, 50 documents/s, 100%, 20 s\x1b[K\n"


def test_messages_clear_the_progress_line_and_draw_it_again(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(couchdb_dump.time, "monotonic", clock)
    terminal = Terminal()

    class Shared(io.BytesIO):   # stdout on the same terminal as the progress line
        def write(self, data):
            terminal.write(data.decode())
            return len(data)

    out = couchdb_dump.Messages(Shared())
    out.progress = couchdb_dump.Progress(True, terminal, what="sent")
    clock.now += 1
    out.progress.update(10, 2e6, 20)
    out.info("... INFO: Imported x Successfully.")
    assert terminal.getvalue() == (
        "\r10 documents, 2.0 MB sent, 10 documents/s, 50%, 1 s left\x1b[K"
        "\r\x1b[K... INFO: Imported x Successfully.\n"
        "\r10 documents, 2.0 MB sent, 10 documents/s, 50%, 1 s left\x1b[K")


def run_in_terminal(args, cwd, seconds=120, feed=None, after=0.0):
    """Run the port with stdout and stderr on one pseudo-terminal; returns (exit code, what it showed).

    ``feed``: bytes written to its standard input ``after`` seconds (else it is empty)."""
    import pty
    import threading
    master, slave = pty.openpty()
    process = start_port(args, cwd, stdin=subprocess.PIPE, stdout=slave, stderr=slave)
    os.close(slave)

    def writer():
        time.sleep(after)
        try:
            process.stdin.write(feed or b"")
        finally:
            process.stdin.close()

    threading.Thread(target=writer, daemon=True).start()
    shown = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:   # EIO: the last writer closed the terminal
            break
        if not data:
            break
        shown += data
    os.close(master)
    return process.wait(timeout=seconds), shown


def test_progress_line_and_messages_do_not_glue_in_a_terminal(tmp_path):
    """A restore in a terminal: each chunk's INFO line starts on a cleared
    line (never after '... s left'), the progress line comes back after it,
    and the last one drawn is the run's end, at 100%."""
    write_dump(tmp_path / "dump.json", [b'{"_id":"d%02d","_rev":"1-a","v":%d}' % (i, i) for i in range(12)])
    slow = lambda index, method, path: Fault("delay", seconds=0.25) if path.endswith("_bulk_docs") else None
    with CouchStub(databases=["db"], faults=slow) as stub:
        code, shown = run_in_terminal(["-r", "-H", stub.url, "-d", "db", "-f", "dump.json", "-l", "2"], tmp_path)
    text = shown.decode("utf-8", "replace")
    assert code == 0, text
    assert "documents/s" in text   # the progress line was drawn
    for line in ("... INFO: Successfully Imported 6 Files", "... INFO: Import Cycle Completed."):
        assert line in text, text
    for index in (i for i in range(len(text)) if text.startswith("...", i)):
        assert index == 0 or text[:index].endswith(("\r\x1b[K", "\n")), repr(text[max(index - 80, 0):index + 40])
    final = text.rsplit("documents/s", 1)[0].rsplit("\r", 1)[1]
    assert final.startswith("12 documents, ") and " MB sent, " in final
    assert text.rsplit("documents/s", 1)[1].startswith(", 100%, ")


def test_restore_from_a_pipe_counts_its_rate_from_the_first_byte(tmp_path):
    """The writer of the pipe takes 5 s to start: the final line's time and
    rate count from its first byte, not from the start of the process."""
    dump = dump_of([b'{"_id":"d%02d","_rev":"1-a","v":%d}' % (i, i) for i in range(12)])
    slow = lambda index, method, path: Fault("delay", seconds=0.2) if path.endswith("_bulk_docs") else None
    with CouchStub(databases=["db"], faults=slow) as stub:
        code, shown = run_in_terminal(["-r", "-H", stub.url, "-d", "db", "-f", "-", "-l", "2"], tmp_path,
                                      feed=dump, after=5.0)
    text = shown.decode("utf-8", "replace")
    assert code == 0, text
    final = text.rsplit("documents/s, 100%, ", 1)[1].split(" s", 1)[0]
    assert float(final) < 5, text   # 6 chunks of 0.2 s: about 1.5 s; from the process start it would be over 5


def test_backup_progress_counts_the_file_not_the_reply(tmp_path):
    """The reply wraps every document in a row (id, key, value): the MB shown
    are the file's, which is less than half of the reply here."""
    slow = lambda index, method, path: Fault("delay", seconds=0.6) if "_all_docs" in path else None
    with CouchStub(databases=["db"], faults=slow) as stub:
        stub.store.databases["db"].update({"d%05d" % i: {"_id": "d%05d" % i, "_rev": "1-a"} for i in range(20000)})
        code, shown = run_in_terminal(["-b", "-H", stub.url, "-d", "db", "-f", "b.json"], tmp_path)
    text = shown.decode("utf-8", "replace")
    assert code == 0, text
    size = (tmp_path / "b.json").stat().st_size
    final = text.rsplit("documents/s", 1)[0].rsplit("\r", 1)[1]
    assert final.startswith("20000 documents, %.1f MB written, " % (size / 1e6)), text
    assert text.rsplit("documents/s", 1)[1].startswith(", 100%, ")


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_progress_turned_off_writes_nothing(monkeypatch, stream):
    assert drive(monkeypatch, stream(), enabled=False) == ""


@pytest.mark.parametrize("flags, enabled", [([], True), (["-q"], False), (["--no-progress"], False),
                                            (["-q", "--no-progress"], False)])
def test_quiet_and_no_progress_turn_the_progress_line_off(monkeypatch, tmp_path, flags, enabled):
    made = []

    class Recorder(couchdb_dump.Progress):
        def __init__(self, enabled, stream=None, **named):
            made.append(enabled)
            super().__init__(enabled, io.StringIO(), **named)

    monkeypatch.setattr(couchdb_dump, "Progress", Recorder)
    with CouchStub(databases=["db"]) as stub:
        stub.store.databases["db"]["a"] = {"_id": "a", "_rev": "1-a"}
        code = couchdb_dump.main(["-b", *flags, "-H", stub.url, "-d", "db", "-f", str(tmp_path / "b.json")],
                                 environ={}, stdout=io.BytesIO())
    assert code == 0
    assert made == [enabled]


def test_quiet_backup_prints_nothing_at_all(tmp_path):
    with CouchStub(databases=["db"]) as stub:
        stub.store.databases["db"].update({"d%03d" % i: {"_id": "d%03d" % i, "_rev": "1-a"} for i in range(200)})
        result = run_port(["-b", "-q", "-H", stub.url, "-d", "db", "-f", "backup.json"], cwd=tmp_path)
        to_stdout = run_port(["-b", "-q", "-H", stub.url, "-d", "db", "-f", "-"], cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert (to_stdout.returncode, to_stdout.stderr) == (0, b"")
    assert to_stdout.stdout == (tmp_path / "backup.json").read_bytes()


# -- how it is started -----------------------------------------------------------

def test_python_dash_m_couchdb_dump_prints_the_version():
    result = run_port(["-V"], cwd=REPO, module=True)
    assert result.returncode == 1   # as bash's -V
    assert ("** couchdb_dump.py version: %s **" % couchdb_dump.__version__).encode() in result.stdout
    assert b"compatible with couchdb-dump version: 1.1.10" in result.stdout
    assert result.stderr == b""


def test_usage_under_python_dash_m_names_the_command_not_the_module_path():
    result = run_port(["-h"], cwd=REPO, module=True)
    assert result.stdout.startswith(b"\nUsage: python -m couchdb_dump [-b|-r]")
    assert b"Example: python -m couchdb_dump -b -H" in result.stdout
    assert (run_port(["--version"], cwd=REPO, module=True).returncode, result.returncode) == (0, 1)


def test_help_is_the_bash_usage_followed_by_every_long_option(tmp_path):
    short = run_port(["-h"], cwd=tmp_path)
    long = run_port(["--help"], cwd=tmp_path)
    assert (short.returncode, long.returncode) == (1, 0)   # -h as bash; --help as conventional tools
    assert short.stdout.startswith(b"\nUsage: %s [-b|-r] -H <COUCHDB_HOST>" % str(PROGRAM).encode())
    assert long.stdout.startswith(short.stdout)
    extensions = long.stdout[len(short.stdout):].decode()
    assert extensions.startswith("Extensions")
    for name in couchdb_dump.LONG_OPTIONS:
        assert "\t--%s " % name in extensions, name
    assert "\t-f -" in extensions


def test_installed_as_couchdb_dump_sh_it_runs_by_its_shebang(tmp_path):
    """A Docker image that had the bash script at /usr/local/bin/couchdb-dump.sh
    can put this file there instead: its first line is '#!/usr/bin/env python3'."""
    assert PROGRAM.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert os.access(PROGRAM, os.X_OK)   # git stores it 100755, as the README says
    script = tmp_path / "bin" / "couchdb-dump.sh"
    script.parent.mkdir()
    shutil.copy(PROGRAM, script)
    script.chmod(0o755)
    env = environment()
    env["PATH"] = "%s%s%s" % (script.parent, os.pathsep, env.get("PATH", ""))
    result = subprocess.run(["couchdb-dump.sh", "-h"], capture_output=True, timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 1   # as bash's -h
    # The usage names the script as its caller spelled it, as bash's $0 does.
    assert result.stdout.startswith(b"\nUsage: %s [-b|-r]" % str(script).encode())
    assert result.stderr == b""


NO_NETWORK = ("Temporary failure in name resolution", "NewConnectionError", "Network is unreachable",
              "No matching distribution found", "Could not find a version that satisfies",
              "ConnectTimeoutError", "Connection refused", "ProxyError")


def test_console_script_couchdb_dump_runs_after_pip_install(tmp_path):
    """pip install the project into a fresh venv (about 10 s: pip fetches
    setuptools and urllib3 from PyPI) and run the console script."""
    started = time.monotonic()
    source = tmp_path / "src"
    source.mkdir()
    # A copy, so that the build leaves no build/ or egg-info in the repository.
    for name in ("couchdb_dump.py", "setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    # A venv without pip is made in a blink; this interpreter's pip installs
    # into it (pip >= 22.3).  An older pip: the venv gets its own, slowly.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True,
                   timeout=60)
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    probe = subprocess.run([*pip, "--version"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       timeout=120)
        pip = [str(python), "-m", "pip"]
    install = subprocess.run([*pip, "install", "-q", "--disable-pip-version-check", str(source)],
                             capture_output=True, timeout=240)
    if install.returncode != 0:
        output = (install.stdout + install.stderr).decode("utf-8", "replace")
        if any(sign in output for sign in NO_NETWORK):
            unreachable = "pip install needs PyPI (setuptools, urllib3), unreachable: %s" % output[-300:]
            if os.environ.get("CI"):
                pytest.fail("CI must run this: " + unreachable, pytrace=False)
            pytest.skip(unreachable)
        pytest.fail("pip install failed:\n" + output)
    # The venv's own urllib3, not this interpreter's.
    found = subprocess.run([str(python), "-c", "import urllib3; print(urllib3.__file__)"], capture_output=True,
                           timeout=60, check=True)
    assert found.stdout.decode().startswith(str(venv))
    result = subprocess.run([str(venv / "bin" / "couchdb-dump"), "-V"], capture_output=True, timeout=60,
                            cwd=tmp_path, env=environment())
    assert result.returncode == 1   # as bash's -V
    assert ("** couchdb_dump.py version: %s **" % couchdb_dump.__version__).encode() in result.stdout
    assert time.monotonic() - started < 60
