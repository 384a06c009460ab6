#!/usr/bin/env python3
"""Demo: back up a database with couchdb_dump.py and restore it.

    python3 tests/tools/demo.py

Starts a throw-away PouchDB Server (a CouchDB-compatible server, in memory;
installed into tests/tools/pouchdb/node_modules by npm on the first run), fills a
sample database, backs it up plain and with -z into a temporary directory,
restores each backup into a new database (-c), and compares the databases.
Exits 0 when both copies hold every document with its revision, 1 if not.
The server and the temporary directory are gone when it ends.
"""

import sys

sys.dont_write_bytecode = True  # leave no __pycache__ in the repository

import base64
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # tests/: helpers
import pouchdb_server  # noqa: E402
from helpers import http  # noqa: E402

from helpers import PROGRAM as PORT_SCRIPT  # noqa: E402


def fill_sample(db):
    """300 documents (50 of them updated once), a view and an attachment."""
    http("PUT", db)
    written = http("POST", db + "/_bulk_docs", {"docs": [
        {"_id": "item%03d" % i, "kind": ["book", "film", "song"][i % 3], "n": i} for i in range(300)]})
    http("POST", db + "/_bulk_docs", {"docs": [
        {"_id": w["id"], "_rev": w["rev"], "kind": "book", "n": i, "updated": True}
        for i, w in enumerate(written[:50])]})
    http("PUT", db + "/_design/stats", {"views": {"by_kind": {
        "map": "function (doc) { if (doc.kind) { emit(doc.kind, 1); } }", "reduce": "_count"}}})
    http("PUT", db + "/readme", {"_attachments": {"readme.txt": {
        "content_type": "text/plain", "data": base64.b64encode(b"Hello from the demo!\n").decode()}}})


def documents(db):
    reply = http("GET", db + "/_all_docs?include_docs=true&attachments=true")
    return {row["id"]: row["doc"] for row in reply["rows"]}


def run_port(cwd, *args):
    """Run the port as a user would, showing the command and its output."""
    print("\n$ python3 %s %s" % (PORT_SCRIPT, shlex.join(args)), flush=True)
    return subprocess.run([sys.executable, str(PORT_SCRIPT), *args], cwd=cwd).returncode


def comparable(doc):
    """A document as compared: design documents are restored by a PUT (as
    couchdb-dump.sh does) so they get a new revision, and an attachment's
    revpos is the revision that added it: both are left out for them."""
    doc = dict(doc)
    if doc["_id"].startswith("_design/"):
        del doc["_rev"]
    if "_attachments" in doc:
        doc["_attachments"] = {name: {k: v for k, v in a.items() if k != "revpos"}
                               for name, a in doc["_attachments"].items()}
    return doc


def compare(source, copy):
    """What differs between two databases' documents, in words."""
    problems = []
    if sorted(copy) != sorted(source):
        problems.append("ids differ: %s" % sorted(set(source) ^ set(copy)))
    for doc_id, doc in source.items():
        other = copy.get(doc_id)
        if other is not None and comparable(other) != comparable(doc):
            if comparable(other).get("_rev") != comparable(doc).get("_rev"):
                problems.append("%s: revision %s became %s" % (doc_id, doc["_rev"], other["_rev"]))
            else:
                problems.append("%s: content differs" % doc_id)
    return problems


def main():
    reason = pouchdb_server.node_available()
    if reason:
        print("The demo needs Node.js and npm: %s" % reason, file=sys.stderr)
        return 2
    print("Installing PouchDB Server 4.2.0 if needed (npm ci, first run only)...", flush=True)
    pouchdb_server.ensure_installed()

    with pouchdb_server.PouchDBServer() as server, \
            tempfile.TemporaryDirectory(prefix="couchdb-dump-demo-") as work:
        port = str(server.port)
        url = server.url + "/"
        print("PouchDB Server is running at %s" % server.url)
        fill_sample(url + "sample")
        print("Created database 'sample': 300 documents, a design document with a view,"
              " a document with an attachment.")
        print("\nWorking in %s" % work)

        host = ["-H", "127.0.0.1", "-P", port]
        steps = [
            ("-b", *host, "-d", "sample", "-f", "sample.json"),
            ("-b", *host, "-d", "sample", "-f", "sample-z.json", "-z"),
            ("-r", *host, "-d", "restored", "-f", "sample.json", "-c"),
            ("-r", *host, "-d", "restored_from_gz", "-f", "sample-z.json.gz", "-c"),
        ]
        for step in steps:
            code = run_port(work, *step)
            if code != 0:
                # Each step needs the one before: stop here, on the port's own message.
                print("\nFAILED: the port exited with %d on: %s (its message is above)." % (code, " ".join(step)))
                return 1
        failed = []
        print("\nFiles written:")
        for name in sorted(os.listdir(work)):
            print("  %-18s %8d bytes" % (name, os.path.getsize(os.path.join(work, name))))

        source = documents(url + "sample")
        print("\n%-18s %9s  %s" % ("database", "documents", "compared with 'sample'"))
        print("%-18s %9d" % ("sample", len(source)))
        for name in ("restored", "restored_from_gz"):
            copy = documents(url + name)
            problems = compare(source, copy)
            same = sum(1 for i in source if not i.startswith("_design/")
                       and copy.get(i, {}).get("_rev") == source[i]["_rev"])
            verdict = "identical (%d revisions kept; design document re-created)" % same
            print("%-18s %9d  %s" % (name, len(copy), "; ".join(problems[:5]) or verdict))
            failed += problems

    if failed:
        print("\nFAILED: %d problem(s)." % len(failed))
        return 1
    print("\nOK: both restored databases match the original. Server stopped, temporary files removed.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, RuntimeError, ValueError) as error:   # urllib's errors are OSErrors
        print("\nFAILED: %s: %s" % (type(error).__name__, error), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
