"""Connection failures in words, on standard error and in --json's error.

Standard output keeps bash's line (``Curl encountered an issue whilst
dumping the database.``, ``Curl failed to ...``); what happened is said on
standard error, with the host and port but never a URL (it could carry a
password), and in the ``error`` of --json.  The same words with urllib3 1.26
and 2.x (CI runs the suite with both).
"""

import io
import json
import socket
import sys

import pytest

import couchdb_dump
from couch_stub import CouchStub, Fault
from helpers import HEADER, closed_port, last_json, run_port


CURL_LINE = "... ERROR: Curl encountered an issue whilst dumping the database."


def run(*args, cwd):
    """Run the port with --json: (exit code, stdout lines before the summary, stderr, the summary)."""
    result = run_port([*args, "--json"], cwd)
    return result.returncode, result.stdout.decode().splitlines()[:-1], result.stderr.decode(), last_json(result.stdout)


def test_refused_connection(tmp_path):
    port = closed_port()
    code, stdout, stderr, report = run("-b", "-H", "http://admin:s3cret@127.0.0.1", "-P", str(port), "-d", "db",
                                       "-f", "b.json", cwd=tmp_path)
    words = "cannot connect to 127.0.0.1:%d: connection refused" % port
    assert (code, stdout[-1], stderr, report["error"]) == (1, CURL_LINE, "couchdb_dump: %s\n" % words, words)
    assert "s3cret" not in stderr + json.dumps(report)


def test_refused_connection_on_restore_names_the_cause_after_bash_line(tmp_path):
    (tmp_path / "dump.json").write_bytes(HEADER + b'\n{"_id":"a","_rev":"1-a"}\n]}\n')
    port = closed_port()
    code, stdout, stderr, report = run("-r", "-H", "127.0.0.1", "-P", str(port), "-d", "db", "-f", "dump.json",
                                       "-a", "1", cwd=tmp_path)
    words = "cannot connect to 127.0.0.1:%d: connection refused" % port
    assert code == 1 and stdout[-1] == "... ERROR: Curl failed to get the list of databases - Stopping"
    assert "couchdb_dump: %s\n" % words in stderr and report["error"] == words


def test_host_name_not_found(tmp_path, monkeypatch):
    def not_found(host, *args, **named):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", not_found)
    stdout, stderr = io.BytesIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    code = couchdb_dump.main(["-b", "-H", "db.example", "-d", "db", "-f", str(tmp_path / "b.json"), "--json"],
                             environ={}, stdout=stdout)
    lines = stdout.getvalue().decode().splitlines()
    assert (code, lines[-2]) == (1, CURL_LINE)
    assert stderr.getvalue() == "couchdb_dump: host name db.example not found\n"
    assert json.loads(lines[-1])["error"] == "host name db.example not found"


@pytest.mark.parametrize("kind", ["cut", "chunked_cut"], ids=["content-length", "chunked"])
def test_server_that_closes_the_connection_mid_reply_says_after_how_much(kind, tmp_path):
    rows = b"".join(b'{"id":"d%06d","key":"d%06d","value":{"rev":"1-a"},"doc":{"_id":"d%06d","_rev":"1-a",'
                    b'"pad":"%s"}},\r\n' % (i, i, i, b"x" * 400) for i in range(3000))
    body = b'{"total_rows":5000,"offset":0,"rows":[\r\n' + rows
    cut = lambda index, method, path: Fault(kind, body=body) if "_all_docs" in path else None
    with CouchStub(databases=["db"], faults=cut) as stub:
        code, stdout, stderr, report = run("-b", "-H", stub.url, "-d", "db", "-f", "b.json", cwd=tmp_path)
    words = "the server closed the connection after %.1f MB" % (len(body) / 1e6)
    assert (code, stdout[-1], stderr, report["error"]) == (1, CURL_LINE, "couchdb_dump: %s\n" % words, words)
    assert len(body) > 1e6


def test_server_that_closes_the_connection_without_answering(tmp_path):
    drop = lambda index, method, path: Fault("drop")
    with CouchStub(databases=["db"], faults=drop) as stub:
        code, stdout, stderr, report = run("-b", "-H", stub.url, "-d", "db", "-f", "b.json", cwd=tmp_path)
    assert (code, stdout[-1]) == (1, CURL_LINE)
    assert report["error"] == "the server closed the connection without answering"


def test_server_that_does_not_answer_within_the_timeout(tmp_path):
    hang = lambda index, method, path: Fault("hang", seconds=10)
    with CouchStub(databases=["db"], faults=hang) as stub:
        code, stdout, stderr, report = run("-b", "-H", stub.url, "-d", "db", "-f", "b.json", "--timeout", "1",
                                           cwd=tmp_path)
    assert (code, stdout[-1]) == (1, CURL_LINE)
    assert stderr == "couchdb_dump: no answer for 1 s (--timeout)\n"
    assert report["error"] == "no answer for 1 s (--timeout)"


def test_a_failed_write_is_the_error_of_the_json_too(tmp_path):
    code, stdout, stderr, report = run("-b", "-H", "127.0.0.1", "-P", str(closed_port()), "-d", "db",
                                       "-f", "missing/b.json", cwd=tmp_path)
    assert (code, stdout[-1]) == (1, CURL_LINE)
    assert report["error"] == "cannot write missing/b.json: No such file or directory"


def test_errors_without_a_connection_are_said_as_well_as_can_be():
    assert couchdb_dump._describe(ConnectionRefusedError(111, "Connection refused")) == \
        "cannot connect to the server: connection refused"
    assert couchdb_dump._describe(ValueError("http://u:secret@h/")) == "ValueError"


def test_connect_timeout_names_the_server_and_the_connect_limit():
    urllib3 = pytest.importorskip("urllib3")

    class Connection:
        host, port = "10.255.255.1", 5984

    error = urllib3.exceptions.ConnectTimeoutError(Connection(), "Connection to 10.255.255.1 timed out."
                                                                 " (connect timeout=30)")
    assert couchdb_dump._describe(error, timeout=300) == "cannot connect to 10.255.255.1:5984: no answer within 30 s"
