"""Verified TLS, opt-in: --cacert FILE|system, --cert FILE [--key FILE].

The script runs ``curl -k``: a man in the middle reads the admin password.
With --cacert the server's certificate chain and host name are checked for
every request of the run; a certificate that fails is exit 1 with the
reason in words, tried once (it will not get better), and nothing is
written.  Without --cacert https stays unverified as in the script, and
standard error says so once a run; standard output stays the script's.

Every server here is ``tls_server.TlsStub`` (tests/tools/): the CouchDB stand-in behind
TLS, with certificates made by the test (its own CA, a certificate for
another host name, an expired one, one from an authority the client does
not know, a client certificate).
"""

import json
import os
import re

import pytest

from couch_stub import CouchStub
from helpers import last_json, make_dump, run_port, says
from tls_server import Certificates, TlsStub

UNCHECKED = "WARN: the server's certificate is not checked (as curl -k); --cacert FILE checks it"

# What each refused certificate must be called, in words a person can act on.
REASONS = {
    "unknown_ca": r"not signed by|unknown (certificate )?authority|issuer",
    "expired": r"expired",
    "wrong_host": r"host ?name|ip address|not (valid )?for",
}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("certificates"))


def run(cwd, url, args, env=None):
    return run_port(["-H", url, *args], cwd, env=env)


def stored(stub):
    return {doc_id: doc for doc_id, doc in stub.store.databases["db"].items()}


def backup_args(extra=()):
    return ["-b", "-d", "db", "-f", "out.json", *extra]


def restore_args(tmp_path, extra=()):
    dump, _ = make_dump(7, designs=1)
    (tmp_path / "dump.json").write_bytes(dump)
    return ["-r", "-d", "db", "-f", "dump.json", "-l", "3", *extra]


def filled_stub(certificates, **options):
    stub = TlsStub(certificates, databases=("db",), **options)
    for i in range(5):
        stub.store.databases["db"]["doc%d" % i] = {"_id": "doc%d" % i, "_rev": "1-a", "n": i}
    return stub


# -- verified --------------------------------------------------------------------

def test_backup_with_cacert_checks_the_chain_and_writes_the_file(certificates, tmp_path):
    with filled_stub(certificates) as stub:
        result = run(tmp_path, stub.url, backup_args(["--cacert", certificates["ca"]]))
    assert result.returncode == 0, says(result)
    docs = json.loads((tmp_path / "out.json").read_bytes())["docs"]
    assert [doc["_id"] for doc in docs] == ["doc%d" % i for i in range(5)]
    assert b"certificate" not in result.stderr, says(result)


def test_restore_with_cacert_sends_every_request_over_the_checked_connection(certificates, tmp_path):
    args = restore_args(tmp_path, ["--cacert", certificates["ca"]])
    with TlsStub(certificates, databases=("db",)) as stub:
        result = run(tmp_path, stub.url, args)
        methods = [request.method for request in stub.requests]
    assert result.returncode == 0, says(result)
    assert methods[0] == "GET" and "PUT" in methods and methods.count("POST") == 3, methods
    assert len(stored(stub)) == 8
    assert all(outcome is None for outcome in stub.handshakes)


def test_cacert_system_reads_the_systems_store(certificates, tmp_path):
    # OpenSSL's default store honours SSL_CERT_FILE: the test's CA stands in for the system's.
    with filled_stub(certificates) as stub:
        trusted = run(tmp_path, stub.url, backup_args(["--cacert", "system"]), env={"SSL_CERT_FILE": certificates["ca"]})
    assert trusted.returncode == 0, says(trusted)
    (tmp_path / "out.json").unlink()
    with filled_stub(certificates) as stub:
        unknown = run(tmp_path, stub.url, backup_args(["--cacert", "system", "--json"]),
                      env={"SSL_CERT_FILE": certificates["other_ca"]})
    assert unknown.returncode == 1, says(unknown)
    assert re.search(REASONS["unknown_ca"], last_json(unknown.stdout)["error"], re.I), says(unknown)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("served", sorted(REASONS))
@pytest.mark.parametrize("mode", ["backup", "restore"])
def test_certificate_that_fails_the_check_is_exit_1_with_the_reason_tried_once_and_nothing_written(
        served, mode, certificates, tmp_path):
    args = (backup_args if mode == "backup" else lambda extra: restore_args(tmp_path, extra))(
        ["--cacert", certificates["ca"], "--json", "-a", "3"])
    before = sorted(os.listdir(tmp_path))
    with filled_stub(certificates, served=served) as stub:
        result = run(tmp_path, stub.url, args)
        connections, requests = stub.connections, list(stub.requests)
    assert result.returncode == 1, says(result)
    error = last_json(result.stdout)["error"]
    assert re.search(REASONS[served], error, re.I), says(result)
    assert "Traceback" not in result.stderr.decode() and "Unexpected failure" not in result.stdout.decode()
    assert connections == 1, "a refused certificate must not be tried again (%d connections)" % connections
    assert requests == [], "no request may reach a server whose certificate failed"
    assert sorted(os.listdir(tmp_path)) == before, "nothing is written"


def test_client_certificate_and_key_are_shown_to_a_server_that_asks_for_one(certificates, tmp_path):
    args = restore_args(tmp_path, ["--cacert", certificates["ca"], "--cert", certificates["client"],
                                   "--key", certificates.key("client")])
    with TlsStub(certificates, client_ca="ca", databases=("db",)) as stub:
        result = run(tmp_path, stub.url, args)
    assert result.returncode == 0, says(result)
    assert len(stored(stub)) == 8
    assert stub.peers and all(peer == {"commonName": "backup-operator"} for peer in stub.peers), stub.peers


def test_client_certificate_with_its_key_in_the_same_file_needs_no_key_option(certificates, tmp_path):
    with filled_stub(certificates, client_ca="ca") as stub:
        result = run(tmp_path, stub.url, backup_args(["--cacert", certificates["ca"],
                                                      "--cert", certificates["client_both"]]))
        peers = list(stub.peers)
    assert result.returncode == 0, says(result)
    assert peers == [{"commonName": "backup-operator"}]


def test_server_asking_for_a_client_certificate_refuses_a_run_without_one(certificates, tmp_path):
    with filled_stub(certificates, client_ca="ca") as stub:
        result = run(tmp_path, stub.url, backup_args(["--cacert", certificates["ca"], "--json"]))
    assert result.returncode == 1, says(result)
    assert re.search(r"certificate", last_json(result.stdout)["error"], re.I), says(result)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, words", [
    (["--cacert", "missing-ca.pem"], "missing-ca.pem"),
    (["--cert", "missing-client.pem"], "missing-client.pem"),
    (["--key", "{client_key}"], "--cert"),
], ids=["cacert_missing", "cert_missing", "key_without_cert"])
def test_unusable_tls_options_are_refused_before_any_request(args, words, certificates, tmp_path):
    args = [arg.replace("{client_key}", certificates.key("client")) for arg in args]
    with filled_stub(certificates) as stub:
        result = run(tmp_path, stub.url, backup_args(args + ["--json"]))
        connections = stub.connections
    assert result.returncode == 1, says(result)
    assert words in last_json(result.stdout)["error"], says(result)
    assert connections == 0
    assert os.listdir(tmp_path) == []


# -- unverified, as the script ------------------------------------------------------

@pytest.mark.parametrize("mode", ["backup", "restore"])
def test_https_without_cacert_stays_unverified_and_says_so_once_on_stderr(mode, certificates, tmp_path):
    # Served by the CA the port has never heard of: curl -k took it, and so does the port.
    with filled_stub(certificates, served="unknown_ca") as stub:
        args = backup_args() if mode == "backup" else restore_args(tmp_path)
        result = run(tmp_path, stub.url, args)
        requests = len(stub.requests)
    assert result.returncode == 0, says(result)
    assert requests >= (1 if mode == "backup" else 4)
    lines = result.stderr.decode().splitlines()
    assert [line for line in lines if "certificate" in line] == [
        line for line in lines if line.endswith(UNCHECKED)], says(result)
    assert len([line for line in lines if line.endswith(UNCHECKED)]) == 1, says(result)
    assert b"certificate" not in result.stdout


@pytest.mark.parametrize("mode", ["backup", "restore"])
def test_stdout_over_unverified_https_is_the_scripts_as_over_http(mode, certificates, tmp_path):
    outputs = []
    for name, stub in (("plain", None), ("tls", filled_stub(certificates))):
        cwd = tmp_path / name
        cwd.mkdir()
        if stub is None:
            stub = CouchStub(databases=("db",))
            for i in range(5):
                stub.store.databases["db"]["doc%d" % i] = {"_id": "doc%d" % i, "_rev": "1-a", "n": i}
        with stub:
            args = backup_args() if mode == "backup" else restore_args(cwd)
            result = run(cwd, stub.url, args)
        assert result.returncode == 0, says(result)
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1]


def test_plain_http_run_says_nothing_of_certificates(tmp_path):
    with CouchStub(databases=("db",)) as stub:
        result = run(tmp_path, stub.url, backup_args())
    assert result.returncode == 0, says(result)
    assert b"certificate" not in result.stderr + result.stdout
