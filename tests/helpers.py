"""What several test files share, defined once: where the program is, the
environment it runs in, one HTTP call to a test server, the dump's header.

Plain Python 3.8: the suite runs there too.
"""

import json
import os
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


def make_dump(documents=5, designs=0, big=None):
    """A dump as the port and the script write it; returns (bytes, ids)."""
    docs = [b'{"_id":"_design/d%d","_rev":"1-d%d","views":{"v":{"map":"function(doc){emit(doc._id)}"}}}'
            % (i, i) for i in range(designs)]
    docs += [b'{"_id":"doc%03d","_rev":"1-%03d","value":%d}' % (i, i, i) for i in range(documents)]
    if big is not None:
        docs.append(big)
    ids = [json.loads(doc)["_id"] for doc in docs]
    lines = [HEADER] + [doc + b"," for doc in docs[:-1]] + docs[-1:] + [FOOTER]
    return b"\n".join(lines) + b"\n", ids


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
