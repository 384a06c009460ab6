"""Where the port deliberately does better than couchdb-dump.sh.

Each test runs the port on a variant of a golden case (other input bytes,
names or credentials) or against the in-process stub, and pins the promised
behaviour.  The golden cases that carry a `divergence` are replayed by
test_compat.py; these cover the ones the issue lists without a recording.
"""

import base64
import gzip
import os

import pytest

from compat_replay import FIXTURES, load_case, run_case
from couch_stub import CouchStub
from helpers import HEADER, PROGRAM, closed_port, run_port



def expected_stdout(case):
    return (case["dir"] / "stdout.txt").read_bytes().replace(b"{PROG}", str(PROGRAM).encode())


def recorded(case):
    out = []
    for exchange in case["exchanges"]:
        request = exchange["request"]
        body = (case["dir"] / request["body"]).read_bytes() if request.get("body") else b""
        out.append((request["method"], request["path"], body, request["headers"].get("authorization")))
    return out


def sent(result):
    return [(r["method"], r["path"], r["body"] or b"", r["headers"].get("authorization")) for r in result.requests]


@pytest.mark.parametrize("name", ["restore_basic", "restore_design", "restore_many_design_l3"])
def test_crlf_dump_restores_exactly_as_the_lf_dump(name, tmp_path):
    case = load_case(FIXTURES / name)
    dump = (case["dir"] / "before" / "dump.json").read_bytes()
    result = run_case(case["dir"], PROGRAM, tmp_path, before={"dump.json": dump.replace(b"\n", b"\r\n")})
    assert result.rc == case["rc"]
    assert result.stdout == expected_stdout(case)
    assert sent(result) == recorded(case)
    assert sorted(result.files) == ["dump.json"]


def test_gzip_dump_is_recognised_by_its_bytes_whatever_its_name(tmp_path):
    case = load_case(FIXTURES / "restore_basic")
    dump = (case["dir"] / "before" / "dump.json").read_bytes()
    args = [a if a != "dump.json" else "dump.bak" for a in case["args"]]
    result = run_case(case["dir"], PROGRAM, tmp_path, before={"dump.bak": gzip.compress(dump)}, args=args)
    assert result.rc == 0
    assert result.stdout == expected_stdout(case).replace(b"dump.json", b"dump.bak")
    assert sent(result) == recorded(case)


def test_password_with_spaces_and_colons_is_sent_whole(tmp_path):
    case = load_case(FIXTURES / "backup_basic")
    args = [a if a != "admin" else "ad min" for a in case["args"]]
    args[-1] = "p a:ss w:rd"
    result = run_case(case["dir"], PROGRAM, tmp_path, args=args)
    assert result.rc == 0
    expected = "Basic " + base64.b64encode(b"ad min:p a:ss w:rd").decode()
    assert result.requests[0]["headers"]["authorization"] == expected
    assert result.files["basic.json"] == (case["dir"] / "after" / "basic.json").read_bytes()
    assert b"p a:ss w:rd" not in result.stdout + result.stderr


def test_backup_file_name_with_spaces_works(tmp_path):
    case = load_case(FIXTURES / "backup_basic")
    args = [a if a != "basic.json" else "my basic.json" for a in case["args"]]
    result = run_case(case["dir"], PROGRAM, tmp_path, args=args)
    assert result.rc == 0
    assert sorted(result.files) == ["my basic.json"]
    assert result.files["my basic.json"] == (case["dir"] / "after" / "basic.json").read_bytes()


def test_restore_file_name_with_spaces_works(tmp_path):
    case = load_case(FIXTURES / "restore_design")
    dump = (case["dir"] / "before" / "dump.json").read_bytes()
    args = [a if a != "dump.json" else "my dump.json" for a in case["args"]]
    result = run_case(case["dir"], PROGRAM, tmp_path, before={"my dump.json": dump}, args=args)
    assert result.rc == 0
    assert sent(result) == recorded(case)


def test_credentials_in_the_url_go_to_the_header_not_the_request(tmp_path):
    case = load_case(FIXTURES / "backup_basic")
    args = list(case["args"])
    host = args.index("-H") + 1
    args[host] = "http://admin:admin@127.0.0.1"
    del args[args.index("-u"):args.index("-u") + 4]
    result = run_case(case["dir"], PROGRAM, tmp_path, args=args)
    assert result.rc == 0
    assert sent(result) == recorded(case)


def test_design_document_id_cannot_escape_the_target_database(tmp_path):
    dump = (HEADER + b'\n'
            b'{"_id":"_design/../_users/x","_rev":"1-a","views":{}},\n'
            b'{"_id":"d","_rev":"1-b","x":1}\n]}\n')
    (tmp_path / "dump.json").write_bytes(dump)
    with CouchStub(databases=["db"]) as stub:
        result = run_port(["-r", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "db", "-f", "dump.json"], tmp_path)
    assert result.returncode == 0, result.stdout
    assert [(r.method, r.path) for r in stub.requests] == [
        ("GET", "/_all_dbs"), ("PUT", "/db/_design/..%2F_users%2Fx"), ("POST", "/db/_bulk_docs")]
    assert stub.requests[1].body == b'{"views":{}}\n'


def test_database_name_with_slash_is_encoded(tmp_path):
    with CouchStub(databases=["a/b"]) as stub:
        stub.store.databases["a/b"]["x"] = {"_id": "x", "_rev": "1-a"}
        result = run_port(["-b", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "a/b", "-f", "out.json"], tmp_path)
    assert result.returncode == 0, result.stdout
    assert stub.requests[0].path == "/a%2Fb/_all_docs?include_docs=true&attachments=true"
    assert (tmp_path / "out.json").read_bytes() == HEADER + b'\n{"_id":"x","_rev":"1-a"}\n]}\n'


def test_compressed_backup_refuses_to_overwrite_an_existing_gz(tmp_path):
    (tmp_path / "out.json.gz").write_bytes(b"precious")
    with CouchStub(databases=["db"]) as stub:
        result = run_port(["-b", "-z", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "db", "-f", "out.json"], tmp_path)
    assert result.returncode == 1
    assert b"... ERROR: Output file out.json.gz already exists." in result.stdout
    assert (tmp_path / "out.json.gz").read_bytes() == b"precious"
    assert stub.requests == []


def test_compressed_backup_never_writes_an_uncompressed_copy(tmp_path):
    with CouchStub(databases=["db"]) as stub:
        stub.store.databases["db"]["x"] = {"_id": "x", "_rev": "1-a", "v": "é"}
        result = run_port(["-b", "-z", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "db", "-f", "out.json"], tmp_path)
    assert result.returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["out.json.gz"]
    assert gzip.decompress((tmp_path / "out.json.gz").read_bytes()) == \
        HEADER + '\n{"_id":"x","_rev":"1-a","v":"é"}\n]}\n'.encode()


def test_backup_into_a_missing_directory_fails_cleanly(tmp_path):
    with CouchStub(databases=["db"]) as stub:
        result = run_port(["-b", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "db", "-f", "nodir/out.json"], tmp_path)
    assert result.returncode == 1
    assert result.stdout.endswith(b"... ERROR: Curl encountered an issue whilst dumping the database.\n")
    assert os.listdir(tmp_path) == []


def test_refused_documents_are_named_and_fail_the_restore(tmp_path):
    dump = HEADER + b'\n{"_id":"a","_rev":"1-a"},\n{"_id":"b","_rev":"1-b"}\n]}\n'
    (tmp_path / "dump.json").write_bytes(dump)

    def refuse(index, method, path):
        if method == "POST":
            from couch_stub import Fault
            return Fault("status", 201, b'[{"id":"b","rev":"1-b","error":"forbidden","reason":"no b"}]\n')
    with CouchStub(databases=["db"], faults=refuse) as stub:
        result = run_port(["-r", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "db", "-f", "dump.json", "-l", "2"],
                          tmp_path)
    assert result.returncode == 1
    assert b'"b"' in result.stdout and b"forbidden" in result.stdout and b"no b" in result.stdout
    assert b"Successfully" not in result.stdout
    # Every chunk was still sent: the refusals do not stop the rest.
    assert [r.method for r in stub.requests] == ["GET", "POST", "POST"]


def test_proxy_variables_are_read_as_curl_reads_them(tmp_path):
    """curl in the script honoured http_proxy and no_proxy: so does the port."""
    target = closed_port()
    with CouchStub(databases=["db"]) as proxy:
        args = ["-b", "-H", "127.0.0.1", "-P", str(target), "-d", "db", "-f", "out.json"]
        result = run_port(args, tmp_path, env={"http_proxy": proxy.url})
        # Through the proxy: the request names the server in full.
        assert [r.path for r in proxy.requests] == [
            "http://127.0.0.1:%d/db/_all_docs?include_docs=true&attachments=true" % target]
        assert result.returncode == 1
        result = run_port(args, tmp_path, env={"http_proxy": proxy.url, "no_proxy": "localhost,127.0.0.1"})
        assert len(proxy.requests) == 1, "no_proxy names the host: straight to it"
        assert result.stdout.endswith(b"... ERROR: Curl encountered an issue whilst dumping the database.\n")
        result = run_port(args, tmp_path, env={"HTTP_PROXY": proxy.url})
        assert len(proxy.requests) == 1, "curl reads no upper-case HTTP_PROXY"
