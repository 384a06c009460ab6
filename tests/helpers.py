"""What several test files share, defined once: where the program is, the
environment it runs in, running it (a fresh interpreter, or this one), what
it printed, one HTTP call to a test server, a stub holding a database, a
restore that stops part way, dumps, and a port where nothing listens.

Plain Python 3.8: the suite runs there too.
"""

import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROGRAM = REPO / "couchdb_dump.py"

# The first and last lines of every dump (bytes, as the files hold them).
HEADER = b'{"new_edits":false,"docs":['
FOOTER = b"]}"

# The program reads credentials from these: a developer's own must not leak into a test.
CREDENTIAL_VARIABLES = ("COUCHDB_USER", "COUCHDB_PASS")


def clean_environment(extra=None):
    """This process's environment without COUCHDB_USER/COUCHDB_PASS, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES}
    env.update(extra or {})
    return env


# -- running the port ------------------------------------------------------------

def port_command(args, server=None, module=False, program=PROGRAM):
    """The command line of a run: ``python3 couchdb_dump.py ARGS`` (``-m
    couchdb_dump`` with ``module``); ``server`` (a port on 127.0.0.1, or a
    URL) goes in as ``-H HOST -P PORT`` after the first argument, the mode."""
    args = [str(arg) for arg in args]
    if server is not None:
        host, port = ("127.0.0.1", server) if isinstance(server, int) else server.rsplit(":", 1)
        args[1:1] = ["-H", host, "-P", str(port)]
    interpreter = [sys.executable, "-m", "couchdb_dump"] if module else [sys.executable, str(program)]
    return interpreter + args


def run_port(args, cwd, server=None, input=None, env=None, module=False, program=PROGRAM, text=False,
             timeout=600):
    """Run the port as its users do, in a fresh interpreter, in ``cwd``;
    returns the subprocess.CompletedProcess (bytes unless ``text``).

    Standard input is ``input``, or empty; the environment is this one's
    without credentials, plus ``env``.  See port_command for the rest."""
    return subprocess.run(port_command(args, server, module, program), cwd=str(cwd),
                          env=clean_environment(dict({"PYTHONDONTWRITEBYTECODE": "1"}, **(env or {}))),
                          input=input, stdin=subprocess.DEVNULL if input is None else None,
                          capture_output=True, text=text, timeout=timeout)


def start_port(args, cwd, server=None, env=None, **popen):
    """Start the port as run_port does, without waiting: the subprocess.Popen,
    standard output and error piped unless ``popen`` says otherwise."""
    options = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    options.update(popen)
    return subprocess.Popen(port_command(args, server), cwd=str(cwd),
                            env=clean_environment(dict({"PYTHONDONTWRITEBYTECODE": "1"}, **(env or {}))),
                            **options)


def wait_for(condition, seconds=20):
    """Until ``condition()`` holds; fails the test after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def interrupt(process, signum, ready, before=lambda: None, seconds=20):
    """Once ``ready()`` holds, note ``before()`` and send ``signum`` to a run
    start_port started; returns ``(noted, stdout, stderr)``.  The process
    never outlives the test."""
    try:
        wait_for(ready, seconds)
        noted = before()
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return noted, stdout, stderr


def run_in_process(argv, environ=None):
    """Run couchdb_dump.main in this process (fast: no interpreter to start).

    Returns ``(exit code, stdout bytes, stderr text)``; ``environ`` is the
    whole environment the port sees (empty by default: no credentials).
    """
    import contextlib
    import io
    import couchdb_dump
    out = io.BytesIO()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = couchdb_dump.main(list(argv), dict(environ or {}), stdout=out)
    return code, out.getvalue(), err.getvalue()


# -- what a run printed ----------------------------------------------------------

def says(run):
    """What a run printed, for an assertion's message: its exit code, its
    standard output and the end of its standard error (bytes or text)."""
    def text(data):
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return "rc=%s\nstdout:\n%s\nstderr:\n%s" % (run.returncode, text(run.stdout), text(run.stderr)[-3000:])


def last_json(stream):
    """The --json summary: the last line of the stream (bytes), parsed."""
    return json.loads(stream.decode("utf-8").splitlines()[-1])


# -- servers ---------------------------------------------------------------------

def http(method, url, body=None, timeout=300):
    """One JSON request to a test server; returns the parsed reply.

    An HTTP error fails the test with the method, URL, status and body.
    """
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as error:
        raise AssertionError("%s %s -> HTTP %d %s" % (method, url, error.code, error.read()[:300]))


def stub_with(docs, **options):
    """A stub server (not started) holding database "db" with ``docs`` (id ->
    extra fields), each at a first revision; ``options`` go to CouchStub."""
    from couch_stub import CouchStub
    stub = CouchStub(databases=("db",), **options)
    for doc_id, fields in docs.items():
        stub.store.databases["db"][doc_id] = dict({"_id": doc_id, "_rev": "1-%08x" % (hash(doc_id) & 0xffffffff)},
                                                  **fields)
    return stub


def stop_after_chunks(count):
    """Stub faults: the ``count``+1-th _bulk_docs POST and every later one fail
    for good (HTTP 500), as a restore that stops part way."""
    from couch_stub import Fault
    seen = [0]
    lock = threading.Lock()

    def faults(index, method, path):
        if method == "POST" and path.endswith("/_bulk_docs"):
            with lock:
                seen[0] += 1
                if seen[0] > count:
                    return Fault("status", 500, b'{"error":"unknown_error","reason":"badarg"}\n')
        return None
    return faults


@functools.lru_cache(maxsize=None)   # functools.cache is 3.9+: the tests run on 3.8 too
def _closed_port_socket():
    # Bound but never listening: connecting gets "connection refused", and
    # holding the socket for the whole test session stops anything else (a
    # server of another test, in this process or another) from taking the
    # port meanwhile.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def closed_port():
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    return _closed_port_socket().getsockname()[1]


# -- dumps -----------------------------------------------------------------------

def dump_of(docs, ensure_ascii=True):
    """A dump's bytes as the port and the script write it: one document a
    line, commas and all.  ``docs`` are lines (bytes, taken as they are) or
    dicts (compact JSON; with ``ensure_ascii`` false, non-ASCII text as UTF-8
    rather than as \\u escapes)."""
    lines = [doc if isinstance(doc, bytes) else
             json.dumps(doc, separators=(",", ":"), ensure_ascii=ensure_ascii).encode("utf-8") for doc in docs]
    return b"\n".join([HEADER] + [line + b"," for line in lines[:-1]] + lines[-1:] + [FOOTER]) + b"\n"


def write_dump(path, docs, ensure_ascii=True):
    """Write dump_of(docs) to ``path``; returns ``path``."""
    path.write_bytes(dump_of(docs, ensure_ascii))
    return path


def make_dump(documents=5, designs=0, big=None):
    """A dump as the port and the script write it; returns (bytes, ids)."""
    docs = [b'{"_id":"_design/d%d","_rev":"1-d%d","views":{"v":{"map":"function(doc){emit(doc._id)}"}}}'
            % (i, i) for i in range(designs)]
    docs += [b'{"_id":"doc%03d","_rev":"1-%03d","value":%d}' % (i, i, i) for i in range(documents)]
    if big is not None:
        docs.append(big)
    return dump_of(docs), [json.loads(doc)["_id"] for doc in docs]
