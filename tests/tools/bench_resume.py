"""Time of restore --resume against a full restore, into a full and an empty database.

Starts a PouchDB Server (tests/tools/pouchdb_server.py), writes a dump of N documents
(default 20,000, in the port's layout), then, side by side in one run:
a full restore into a fresh database (-c); the same restore with --resume
into that database, which then holds everything (one _revs_diff a chunk, no
_bulk_docs); and --resume into a fresh, empty database (-c --resume: every
chunk is missing whole, and sent as it is).  Prints the median of each over
--repeat runs and their ratios to the full restore, beside the goals
(--resume into an empty database <= 1.1x, into a full one <= 0.2x).

    python3 tests/tools/bench_resume.py [--documents 20000] [--lines 5000] [--repeat 3]
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # tests/: helpers
import pouchdb_server  # noqa: E402
from helpers import PROGRAM, clean_environment, write_dump  # noqa: E402


def sample_docs(count):
    return [{"_id": "doc%06d" % i, "_rev": "1-" + hashlib.md5(b"%d" % i).hexdigest(),
             "type": "item", "n": i, "name": "item number %d" % i, "tags": ["a", "b", "c"],
             "text": "lorem ipsum dolor sit amet " * 4} for i in range(count)]


def restore(url, db, dump, lines, extra):
    host, port = url.rsplit(":", 1)
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(PROGRAM), "-r", "-H", host, "-P", port, "-d", db, "-f", dump,
                             "-l", str(lines), "-q", "--no-progress", *extra],
                            env=clean_environment(), capture_output=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        sys.exit("restore failed: %s %s" % (result.stdout.decode()[-500:], result.stderr.decode()[-500:]))
    return seconds


def doc_count(url, db):
    with urllib.request.urlopen("%s/%s" % (url, db)) as reply:
        return json.loads(reply.read())["doc_count"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--lines", type=int, default=5000, help="-l, documents a chunk")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    reason = pouchdb_server.node_available()
    if reason:
        sys.exit(reason)
    pouchdb_server.ensure_installed()
    with tempfile.TemporaryDirectory() as scratch, pouchdb_server.PouchDBServer() as server:
        dump = os.path.join(scratch, "dump.json")
        write_dump(Path(dump), sample_docs(args.documents))
        full, resume, empty = [], [], []
        for run in range(args.repeat):
            db = "bench-resume-%d" % run
            if run % 2:   # the server slows as it fills: every other run, the other order
                empty.append(restore(server.url, db + "-empty", dump, args.lines, ["-c", "--resume"]))
            full.append(restore(server.url, db, dump, args.lines, ["-c"]))
            resume.append(restore(server.url, db, dump, args.lines, ["--resume"]))
            if not run % 2:
                empty.append(restore(server.url, db + "-empty", dump, args.lines, ["-c", "--resume"]))
            assert doc_count(server.url, db) == doc_count(server.url, db + "-empty") == args.documents
        full_s, resume_s, empty_s = (statistics.median(runs) for runs in (full, resume, empty))
        print("documents %d, -l %d, PouchDB Server 4.2.0 (in memory), median of %d runs"
              % (args.documents, args.lines, args.repeat))
        for label, median, runs in (("full restore into an empty database:", full_s, full),
                                    ("--resume, every document already there:", resume_s, resume),
                                    ("--resume into an empty database:", empty_s, empty)):
            print("%-42s %6.2f s  (runs: %s)" % (label, median, ", ".join("%.2f" % s for s in runs)))
        for label, ratio, goal in (("--resume into a full database / full restore", resume_s / full_s, 0.2),
                                   ("--resume into an empty database / full restore", empty_s / full_s, 1.1)):
            print("ratio %s: %.2f (goal <= %.1f: %s)" % (label, ratio, goal, "met" if ratio <= goal else "NOT met"))


if __name__ == "__main__":
    main()
