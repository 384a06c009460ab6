#!/usr/bin/env python3
"""Benchmark couchdb_dump.py against the limits of the machine it runs on.

    python3 tests/tools/benchmark.py                  # 100,000 then 1,000,000 docs, 3 runs each; RSS compared
    python3 tests/tools/benchmark.py --quick          # smoke check: 100,000 docs, 1 run
    python3 tests/tools/benchmark.py --docs N --runs K [--compare-sizes]
    python3 tests/tools/benchmark.py --profile backup|restore [--docs N]   # cProfile's top 25 by cumulative time
    python3 tests/tools/benchmark.py --complete [--docs N] [--runs K]  # --complete backup beside the default one
    python3 tests/tools/benchmark.py --incremental [--docs N] [--runs K]  # --since beside a full --complete backup
    python3 tests/tools/benchmark.py --long-line [--runs K]   # only the peaks of a dump with a ~33 MB line
    python3 tests/tools/benchmark.py --whole-server [--runs K]  # 300 databases: -d '*' --jobs 4 vs a shell loop
    python3 tests/tools/benchmark.py --parallel-read [--docs N] [--runs K]  # one rate-capped database: --jobs 4 vs 1
    ... --http-chunks 1mib        # serve the reply in 1 MiB HTTP chunks instead of CouchDB's

Not a test (pytest does not collect it) and it never fails on a time: it
prints ratios of figures measured side by side in one run, on one machine,
so that they mean something anywhere.  Needs the standard library and
urllib3; curl is used when present.

What it does:

1. Writes a database of N documents (~300 bytes each, with non-ASCII text
   and JSON escapes, one design document every 100,000) as the reply of
   ``GET /db/_all_docs?include_docs=true&attachments=true`` in Apache
   CouchDB's own layout (one row a line, ``,\\r\\n`` between rows).  It is
   cached in /tmp/couchdb_dump_bench/ by N, so re-runs start at once.
2. Starts a small HTTP server in a separate process (so that it does not
   share the measured client's GIL) that streams that reply with sendfile
   as Apache CouchDB 3.x chunks it (a chunk flushed before it would pass
   1,490 bytes, rows never split: ~333,000 chunks at 1,000,000 documents,
   framed once and cached), or in 1 MiB chunks (``/mib/``, and ``/db/`` with
   --http-chunks 1mib), and is a ``_bulk_docs`` sink: it reads each body,
   counts its documents and bytes, sums the bodies' CRC-32s, answers 201
   ``[]``, and reports the totals at ``GET /_stats``.
3. Measures, each --runs times, round-robin (median and min-max):
   the limit of a download (curl -o /dev/null; curl -o FILE followed by an
   fsync of that file, as a backup must land on disk; urllib3's stream() in
   a fresh interpreter), the port's backup plain, on 1 MiB chunks (for the
   ratio of CPU seconds: the port's work must not depend on the server's
   chunking) and with -z, the limit of an upload (the port's exact chunk
   bodies, split here as the script splits them, POSTed by curl one process
   per chunk as the script does, and by urllib3 in one process), the
   port's restore (default -l 5000) and its restore with --jobs 2 (chunks
   of 500 lines: --jobs's default).
   Every command runs under a tiny wrapper that spawns it and reaps it with
   os.wait4, so its time, CPU and peak RSS (ru_maxrss) are that one child's.
   (A spawned child's ru_maxrss starts from its parent's; the wrapper's own
   peak, a bare interpreter, is printed as the floor of the figures.)  As
   ru_maxrss is the largest single process, not the sum, the wrapper also
   samples the PSS of the child and all its descendants together (the
   port may fork worker processes): printed as "whole tree".
4. Prints the table, the ratios against the targets (PASS/FAIL), and, in
   full mode or with --compare-sizes, the peak RSS at 100,000 and
   1,000,000 documents side by side: nothing may grow with the database.
   Last, the peak RSS of a backup and a restore of a database whose one
   document has a 25 MB attachment (a ~33 MB dump line), against the
   targets 64 MB + 1.5x and + 3x the longest line.
   --profile runs the port once under cProfile instead and prints the top
   25 entries by cumulative time.
5. Checks correctness in passing: each backup has N+2 lines and the same
   bytes every run (-z decompresses to them), each upload and restore
   delivered N documents, and the very bodies of the chunks (byte count and
   CRC-32 sum compared with the chunk files).

It measures a copy of couchdb_dump.py taken when it starts (named by its
SHA-1 in the output), so that every run times the same code even while the
file is being edited.

Exit status: 0, or 1 when a check of correctness failed (a target missed is
reported, not an error).
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # tests/: helpers
from helpers import PROGRAM as SCRIPT, REPO  # noqa: E402
CACHE_DIR = Path(tempfile.gettempdir()) / "couchdb_dump_bench"
DATASET_VERSION = 1          # bump when the generated documents change
DESIGN_EVERY = 100_000
LINES_PER_CHUNK = 5000       # the port's (and the script's) default -l
JOBS_LINES_PER_CHUNK = 500   # the port's -l when --jobs is given without it
BLOCK = 1 << 20
SMALL, LARGE = 100_000, 1_000_000

TARGETS = {                  # ratio of medians: at most
    "whole_server": 0.25,    # wall, -d '*' --jobs 4 against a shell loop of the port (issue #18)
    "parallel_read": 0.35,   # wall, --jobs 4 against --jobs 1 on a rate-capped stream (issue #18)
    "backup": 2.0,           # wall, against curl -o FILE + fsync (issue #10)
    "backup_cpu": 1.15,      # user+sys CPU, CouchDB-sized chunks against 1 MiB ones (issue #10)
    "backup_z": 8.0,
    "restore": 1.5,
}
RSS_LIMIT_MB = 64.0
RSS_GROWTH = 0.10

# (key, label) in the order they run within a round.
STAGES = [
    ("dl_curl", "raw download: curl -o /dev/null"),
    ("dl_curl_file", "raw download: curl -o FILE + fsync"),
    ("dl_urllib3", "raw download: urllib3, fresh python"),
    ("backup", "port backup -b"),
    ("backup_1m", "port backup -b, 1 MiB HTTP chunks"),
    ("backup_z", "port backup -b -z"),
    ("ul_curl", "raw upload: curl, one per chunk"),
    ("ul_urllib3", "raw upload: urllib3, one process"),
    ("restore", "port restore -r"),
    ("restore_j2", "port restore -r --jobs 2"),
]
PORT_STAGES = ("backup", "backup_1m", "backup_z", "restore", "restore_j2")


# ---------------------------------------------------------------------------
# 1. The dataset: a CouchDB _all_docs reply, byte for byte in its layout
# ---------------------------------------------------------------------------

NAMES = ["Zoë Ångström", "José Müller", "Łukasz Żółć", "Søren Kierkegård", "Chloé Dubois",
         "Nguyễn Văn An", "Παναγιώτης Κ.", "Дмитрий Иванов", "山田 太郎", "Ada Lovelace",
         "محمد علي", "Renée O'Brien", "François Ça", "Ólafur Þór", "김민수", "Jane Doe"]
CITIES = ["Zürich", "São Paulo", "Kraków", "Reykjavík", "東京", "Москва", "München", "Αθήνα",
          "Paris", "Córdoba", "Bern", "Hà Nội"]
NOTES = ["ok", "café ☕", "naïve résumé", "smile 🙂", "日本語のテキスト", "ÄÖÜ äöü ß",
         "tab\\tand\\nnewline", "quote \\\"q\\\" and \\\\ slash", "€ 12,50", "plain"]
TEXT = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod "
        "tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam")

ROW = ('{"id":"%(id)s","key":"%(id)s","value":{"rev":"%(rev)s"},"doc":{"_id":"%(id)s","_rev":"%(rev)s",'
       '"type":"bench","i":%(i)d,"name":"%(name)s","city":"%(city)s","note":"%(note)s",'
       '"text":"%(text)s","tags":["t%(t1)d","t%(t2)d"],"score":%(score)d.%(frac)d,'
       '"active":%(active)s,"parent":null,"nested":{"x":%(x)d,"y":[1,2,3]}}}')
DESIGN_ROW = ('{"id":"%(id)s","key":"%(id)s","value":{"rev":"%(rev)s"},"doc":{"_id":"%(id)s","_rev":"%(rev)s",'
              '"language":"javascript","views":{"by_i":{"map":"function (doc) {\\n  if (doc.type === '
              '\\"bench\\") { emit(doc.i, null); }\\n}","reduce":"_count"}}}}')


def revision(i):
    """A revision that looks like CouchDB's: 1-<32 hex digits>, deterministic."""
    return "1-%032x" % ((i + 1) * 0x9E3779B97F4A7C15F39CC0605CEDC835 & ((1 << 128) - 1))


def dataset_row(i, width):
    if i % DESIGN_EVERY == 0:
        return DESIGN_ROW % {"id": "_design/bench%d" % (i // DESIGN_EVERY), "rev": revision(i)}
    return ROW % {
        "id": "doc%0*d" % (width, i), "rev": revision(i), "i": i,
        "name": NAMES[i % len(NAMES)], "city": CITIES[i % len(CITIES)], "note": NOTES[i % len(NOTES)],
        "text": TEXT[:30 + i % 80], "t1": i % 7, "t2": i % 13, "score": i % 1000, "frac": i % 10,
        "active": "true" if i % 3 else "false", "x": i * 7 % 10007,
    }


def designs_in(n):
    return (n - 1) // DESIGN_EVERY + 1 if n else 0


def make_dataset(n):
    """The _all_docs reply for N documents, generated once and cached."""
    path = CACHE_DIR / ("all_docs-v%d-%d.json" % (DATASET_VERSION, n))
    if path.exists():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    width = max(7, len(str(n)))
    fd, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=str(CACHE_DIR))
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(b'{"total_rows":%d,"offset":0,"rows":[\r\n' % n)
            step = 20_000
            for start in range(0, n, step):
                rows = [dataset_row(i, width) for i in range(start, min(n, start + step))]
                text = ",\r\n".join(rows)
                out.write(((",\r\n" if start else "") + text).encode("utf-8"))
            out.write(b"\r\n]}\n")
        os.replace(temp, str(path))
    except BaseException:
        os.unlink(temp)
        raise
    print("generated %s (%s) in %.1f s" % (path, mb(path.stat().st_size), time.monotonic() - started),
          flush=True)
    return path


HTTP_CHUNKS = {"couchdb": "CouchDB's HTTP chunks (<= 1,490 bytes, whole rows)", "1mib": "1 MiB HTTP chunks"}
COUCHDB_CHUNK = 1490       # [chttpd] chunked_response_buffer: CouchDB flushes before passing it


def couchdb_framed(reply):
    """The reply as the body of a chunked HTTP reply cut as Apache CouchDB 3.x
    cuts it: a chunk is flushed before its buffer would pass 1,490 bytes, and
    a line (a row with its separator) never split by that decision.  Made
    once and cached beside the reply, so the server only has to sendfile it."""
    path = reply.with_name(reply.name[:-len(".json")] + ".couchdb-chunked")
    if path.exists():
        return path
    started = time.monotonic()
    fd, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=str(reply.parent))
    chunks = 0
    try:
        with os.fdopen(fd, "wb", buffering=BLOCK) as out, open(str(reply), "rb", buffering=BLOCK) as source:
            buffer, size = [], 0
            for line in source:
                if size and size + len(line) > COUCHDB_CHUNK:
                    out.write(b"%x\r\n%s\r\n" % (size, b"".join(buffer)))
                    chunks += 1
                    buffer, size = [], 0
                buffer.append(line)
                size += len(line)
            if size:
                out.write(b"%x\r\n%s\r\n" % (size, b"".join(buffer)))
                chunks += 1
            out.write(b"0\r\n\r\n")
        os.replace(temp, str(path))
    except BaseException:
        os.unlink(temp)
        raise
    print("framed the reply in %d CouchDB-sized chunks (%s) in %.1f s" % (
        chunks, path.name, time.monotonic() - started), flush=True)
    return path


def warm(path):
    """Read a file once so that every run finds it in the page cache."""
    with open(str(path), "rb", buffering=0) as handle:
        while handle.read(BLOCK << 3):
            pass


# ---------------------------------------------------------------------------
# 2. The server: a separate process, streaming the reply and sinking uploads
# ---------------------------------------------------------------------------

SERVER_SOURCE = r'''
"""couchdb_dump benchmark server: streams one _all_docs reply, sinks _bulk_docs.

python3 server.py REPLY_FILE FRAMED_FILE MODE   prints its port, serves until its stdin closes.

/db/_all_docs is the reply chunked as Apache CouchDB chunks it (FRAMED_FILE,
the chunked body ready made) when MODE is "couchdb", in 1 MiB chunks when
it is "1mib"; /mib/_all_docs is always in 1 MiB chunks.
"""
import json, os, socket, sys, threading, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

REPLY, FRAMED, MODE = sys.argv[1:4]
CHUNK = 1 << 20
LOCK = threading.Lock()
STATS = {}


def reset():
    with LOCK:
        STATS.clear()
        STATS.update(bulk_requests=0, bulk_docs=0, bulk_bytes=0, bulk_crc_sum=0,
                     design_puts=0, downloads=0, expect_100=0, unexpected=[])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def handle_expect_100(self):
        with LOCK:
            STATS["expect_100"] += 1
        return super().handle_expect_100()

    def reply(self, status, reason, body):
        # Head and body in one write: no Nagle/delayed-ACK stall.
        self.wfile.write(b"HTTP/1.1 %d %s\r\nServer: bench\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (status, reason, len(body), body))

    def unexpected(self):
        for _ in self.body():
            pass
        with LOCK:
            if len(STATS["unexpected"]) < 20:
                STATS["unexpected"].append("%s %s" % (self.command, self.path))
        self.reply(404, b"Object Not Found", b'{"error":"not_found","reason":"benchmark server"}\n')

    def body(self):
        """The request body in pieces of up to 1 MiB (Content-Length or chunked)."""
        length = self.headers.get("Content-Length")
        if length is not None:
            yield from self.exactly(int(length))
        elif "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if not size:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield from self.exactly(size)
                self.rfile.readline()

    def exactly(self, size):
        """``size`` bytes of the body, in pieces of up to 1 MiB."""
        while size:
            piece = self.rfile.read(min(size, CHUNK))
            if not piece:
                raise ConnectionError("body cut short")
            size -= len(piece)
            yield piece

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/db/_all_docs" and MODE == "couchdb":
            self.stream(FRAMED)
        elif path in ("/db/_all_docs", "/mib/_all_docs"):
            self.stream(REPLY, CHUNK)
        elif path == "/_all_dbs":
            self.reply(200, b"OK", b'["db","mib"]\n')
        elif path == "/_stats":
            with LOCK:
                body = json.dumps(STATS).encode()
            self.reply(200, b"OK", body)
        else:
            self.unexpected()

    def stream(self, name, chunk=None):
        """Send a file as a chunked 200 reply, with sendfile: cut in chunks of
        ``chunk`` bytes, or (None) as it stands, its chunks framed beforehand."""
        with LOCK:
            STATS["downloads"] += 1
        self.wfile.write(b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
        sock = self.connection
        with open(name, "rb") as source:
            size = os.fstat(source.fileno()).st_size
            offset = 0
            while offset < size:
                end = min(size, offset + chunk) if chunk else size
                if chunk:
                    sock.sendall(b"%x\r\n" % (end - offset))
                while offset < end:
                    offset += os.sendfile(sock.fileno(), source.fileno(), offset, end - offset)
                if chunk:
                    sock.sendall(b"\r\n")
        if chunk:
            sock.sendall(b"0\r\n\r\n")

    def do_POST(self):
        path = self.path.split("?")[0]
        if path == "/db/_bulk_docs":
            newlines = size = crc = 0
            last = b"\n"
            for piece in self.body():
                newlines += piece.count(b"\n")
                crc = zlib.crc32(piece, crc)
                size += len(piece)
                last = piece[-1:]
            # One document a line, between the header line and the footer line.
            docs = newlines + (last != b"\n") - 2
            with LOCK:
                STATS["bulk_requests"] += 1
                STATS["bulk_docs"] += docs
                STATS["bulk_bytes"] += size
                STATS["bulk_crc_sum"] += crc
            self.reply(201, b"Created", b"[]\n")
        elif path == "/_stats/reset":
            for _ in self.body():
                pass
            reset()
            self.reply(200, b"OK", b'{"ok":true}\n')
        else:
            self.unexpected()

    def do_PUT(self):
        if self.path.startswith("/db/_design/"):
            for _ in self.body():
                pass
            with LOCK:
                STATS["design_puts"] += 1
            # As CouchDB answers: the port checks the id and the new revision.
            doc_id = "_design/" + unquote(self.path[len("/db/_design/"):].split("?", 1)[0])
            answer = {"ok": True, "id": doc_id, "rev": "1-" + "0" * 32}
            self.reply(201, b"Created", json.dumps(answer).encode("utf-8") + b"\n")
        else:
            self.unexpected()

    do_DELETE = do_HEAD = unexpected


def watchdog():
    sys.stdin.buffer.read()      # EOF: the benchmark is gone
    os._exit(0)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):   # a client gone is no error here
            super().handle_error(request, client_address)


reset()
server = Server(("127.0.0.1", 0), Handler)
threading.Thread(target=watchdog, daemon=True).start()
print(server.server_address[1], flush=True)
server.serve_forever()
'''


class Server:
    """The server process; a context manager that always stops it."""

    def __init__(self, workdir, reply, framed, mode="couchdb"):
        script = workdir / "server.py"
        script.write_text(SERVER_SOURCE)
        self.process = subprocess.Popen([sys.executable, str(script), str(reply), str(framed), mode],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.process.stdout.readline()
        if not line.strip():
            self.stop()
            raise SystemExit("the benchmark server did not start")
        self.port = int(line)
        self.mode = mode
        self.base = "http://127.0.0.1:%d" % self.port

    def _call(self, method, path):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request(method, path)
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def stats(self):
        return self._call("GET", "/_stats")

    def reset(self):
        self._call("POST", "/_stats/reset")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            stream.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------------------
# The wrapper: one child, its own wall time, CPU time and peak RSS
# ---------------------------------------------------------------------------

WRAPPER_SOURCE = r'''
"""measure.py OUT ERR COMMAND...: run COMMAND, print {wall, rc, maxrss_kib, ...} as JSON.

os.wait4 on the child's pid: the rusage of that child alone (ru_maxrss in KiB
on Linux; CPU and ru_maxrss fold in the processes it forked and reaped, as
the largest of them, not their sum).  Kept tiny: a spawned child's ru_maxrss
starts from this process's own peak.  A thread also samples, every 25 ms,
the proportional set size (PSS) of the child and all its descendants
together: the memory of the whole run when it works in several processes.
"""
import json, os, resource, sys, threading, time


def descendants(pid):
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            for task in os.listdir("/proc/%d/task" % current):
                with open("/proc/%d/task/%s/children" % (current, task)) as children:
                    queue.extend(int(child) for child in children.read().split())
        except OSError:
            pass
    return found


def memory_kib(pid):
    for name, key in (("smaps_rollup", "Pss:"), ("status", "VmRSS:")):
        try:
            with open("/proc/%d/%s" % (pid, name)) as source:
                for line in source:
                    if line.startswith(key):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
    return 0


def sample(pid, peak, stop):
    while not stop.wait(0.025):
        processes = descendants(pid)
        total = sum(memory_kib(p) for p in processes)
        peak["tree_kib"] = max(peak["tree_kib"], total)
        peak["processes"] = max(peak["processes"], len(processes))


flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
           (os.POSIX_SPAWN_OPEN, 1, sys.argv[1], flags, 0o644),
           (os.POSIX_SPAWN_OPEN, 2, sys.argv[2], flags, 0o644)]
command = sys.argv[3:]
peak, stop = {"tree_kib": 0, "processes": 0}, threading.Event()
start = time.perf_counter()
pid = os.posix_spawnp(command[0], command, os.environ, file_actions=actions)
sampler = threading.Thread(target=sample, args=(pid, peak, stop), daemon=True)
sampler.start()
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
stop.set()
sampler.join()
rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
try:   # this process's own peak: its ru_maxrss also holds its parent's, VmHWM does not
    with open("/proc/self/status") as status_file:
        floor = int([l for l in status_file if l.startswith("VmHWM:")][0].split()[1])
except (OSError, IndexError):
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(dict(peak, wall=wall, rc=rc, maxrss_kib=usage.ru_maxrss,
                      cpu=usage.ru_utime + usage.ru_stime, floor_kib=floor)))
'''


class Runner:
    """Runs commands under the wrapper, in the work directory."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.wrapper = workdir / "measure.py"
        self.wrapper.write_text(WRAPPER_SOURCE)
        self.count = 0

    def run(self, command, what):
        self.count += 1
        out = self.workdir / ("run%03d.out" % self.count)
        err = self.workdir / ("run%03d.err" % self.count)
        done = subprocess.run([sys.executable, "-S", str(self.wrapper), str(out), str(err)]
                              + [str(part) for part in command],
                              cwd=str(self.workdir), stdout=subprocess.PIPE, check=True)
        result = json.loads(done.stdout)
        result["stdout"] = out.read_bytes()
        result["stderr"] = err.read_bytes()
        out.unlink()
        err.unlink()
        if result["rc"] != 0:
            raise SystemExit("%s failed with exit code %d:\n%s%s" % (
                what, result["rc"], result["stdout"].decode(errors="replace"),
                result["stderr"].decode(errors="replace")))
        return result


# ---------------------------------------------------------------------------
# 3. The stages
# ---------------------------------------------------------------------------

URLLIB3_DOWNLOAD = """\
import sys, urllib3
http = urllib3.PoolManager(retries=False)
response = http.request("GET", sys.argv[1], preload_content=False, decode_content=False)
size = 0
with open("/dev/null", "wb") as out:
    for block in response.stream(1 << 20):
        size += len(block)
        out.write(block)
print(response.status, size)
"""

URLLIB3_UPLOAD = """\
import sys, urllib3
http = urllib3.PoolManager(retries=False)
for name in sys.argv[2:]:
    with open(name, "rb") as source:
        body = source.read()
    response = http.request("POST", sys.argv[1], body=body, headers={"Content-Type": "application/json"})
    if response.status != 201:
        sys.exit("HTTP %d" % response.status)
"""

# curl -o FILE, then that file on disk (sync FILE is fsync(2) on it): a backup must land there too.
CURL_TO_FILE = 'curl -s -o "$1" --noproxy "*" -w "%{http_code} %{size_download}" "$2" && sync "$1"'

CURL_UPLOAD_LOOP = ('url=$1; shift; for f in "$@"; do '
                    'curl -s -o /dev/null --noproxy "*" -X POST -H "Content-Type: application/json" '
                    '--data-binary "@$f" "$url" || exit 1; done')


def snapshot_port(directory):
    """A copy of couchdb_dump.py to measure: the same code for every run,
    even while someone edits the file.  Returns (path, description)."""
    import hashlib
    copy = directory / "couchdb_dump.py"
    shutil.copyfile(str(SCRIPT), str(copy))
    digest = hashlib.sha1(copy.read_bytes()).hexdigest()[:12]
    head = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL).stdout.decode().strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", SCRIPT.name],
                           stderr=subprocess.DEVNULL).returncode
    state = "git %s%s" % (head, ", modified" if dirty else "") if head else "not in git"
    return copy, "couchdb_dump.py sha1 %s (%s)" % (digest, state)


def port_command(port, server, mode, *options, db="db"):
    """python3 couchdb_dump.py -b|-r -q -H 127.0.0.1 -P PORT -d db OPTIONS..."""
    return [sys.executable, str(port), mode, "-q", "-H", "127.0.0.1", "-P", str(server.port), "-d", db] \
        + list(options)


def plain_blocks(handle):
    while True:
        data = handle.read(BLOCK << 2)
        if not data:
            break
        yield data


def gunzip_blocks(handle):
    """The text of a gzip file in blocks; members one after another, as gzip -d reads them."""
    inflate, fed = zlib.decompressobj(16 + zlib.MAX_WBITS), False
    for data in plain_blocks(handle):
        while data:
            fed = True
            yield inflate.decompress(data)
            if not inflate.eof:
                break
            data = inflate.unused_data
            inflate, fed = zlib.decompressobj(16 + zlib.MAX_WBITS), False
    yield inflate.flush()
    if fed and not inflate.eof:
        raise ValueError("the gzip data ends in the middle of a member")


def count_and_crc(path, compressed=False):
    """(newlines, CRC-32 of the text) of a file, decompressing a gzip one."""
    newlines = crc = 0
    with open(str(path), "rb", buffering=0) as handle:
        for data in (gunzip_blocks if compressed else plain_blocks)(handle):
            newlines += data.count(b"\n")
            crc = zlib.crc32(data, crc)
    return newlines, crc


def split_dump(dump, chunk_dir, lines_per_chunk=LINES_PER_CHUNK):
    """Write the exact bodies the script (and the port) POST to _bulk_docs.

    As couchdb-dump.sh: design document lines out (they are PUT one by one),
    the trailing comma of the line before the footer dropped, then chunks of
    -l lines; a chunk not starting with the text's first line gets it
    prepended, one not ending with its last line loses the trailing comma of
    its own last line and gets it appended.
    Returns (chunk files, bytes, sum of CRC-32s, documents); without
    ``chunk_dir`` nothing is written and the files are only counted (None each).
    """
    if chunk_dir is not None:
        chunk_dir.mkdir()

    def text_lines():
        window = []
        with open(str(dump), "rb") as handle:
            for line in handle:
                if line.startswith(b'{"_id":"_design/'):
                    continue
                window.append(line)
                if len(window) == 3:
                    yield window.pop(0)
        if len(window) == 2:
            body = window[0].rstrip(b"\n")
            window[0] = (body[:-1] if body.endswith(b",") else body) + window[0][len(body):]
        yield from window

    with open(str(dump), "rb") as handle:
        header = handle.readline().rstrip(b"\n")
    footer = b"]}"
    files, total, crc_sum, documents = [], 0, 0, 0

    def flush(piece):
        nonlocal total, crc_sum, documents
        parts = [] if piece[0].rstrip(b"\n") == header else [header + b"\n"]
        last = piece[-1].rstrip(b"\n")
        if last == footer:
            parts.extend(piece)
        else:
            parts.extend(piece[:-1])
            parts.append((last[:-1] if last.endswith(b",") else last) + piece[-1][len(last):])
            parts.append(footer + b"\n")
        body = b"".join(parts)
        name = None
        if chunk_dir is not None:
            name = chunk_dir / ("chunk%05d.json" % len(files))
            name.write_bytes(body)
        files.append(name)
        total += len(body)
        crc_sum += zlib.crc32(body)
        documents += body.count(b"\n") + (not body.endswith(b"\n")) - 2

    piece = []
    for line in text_lines():
        piece.append(line)
        if len(piece) == lines_per_chunk:
            flush(piece)
            piece = []
    if piece:
        flush(piece)
    return files, total, crc_sum, documents


class Suite:
    """Every stage at one N: results[stage] is a list of measurements."""

    def __init__(self, n, runs, workdir, reply, server, runner, port):
        self.n, self.runs, self.port = n, runs, port
        self.workdir, self.reply, self.server, self.runner = workdir, reply, server, runner
        self.reply_size = reply.stat().st_size
        self.designs = designs_in(n)
        self.results = {key: [] for key, _ in STAGES}
        self.problems = []
        self.dump = None          # the first backup, kept for the restores
        self.dump_crc = None
        self.dump_size = None
        self.chunks = None        # (files, bytes, crc sum, documents)
        self.jobs_chunks = None   # the same for --jobs's 500-line chunks (not written)
        self.curl = shutil.which("curl")
        self.load = [os.getloadavg()[0]] * 2     # (lowest, highest) 1-minute load average seen

    def check(self, ok, text):
        if not ok:
            self.problems.append(text)
            print("  CHECK FAILED: " + text, flush=True)

    def check_sink(self, what, design_puts, chunks=None):
        stats = self.server.stats()
        files, size, crc_sum, _ = chunks or self.chunks
        expected = self.n - self.designs + design_puts
        self.check(stats["bulk_docs"] + stats["design_puts"] == expected,
                   "%s: the sink received %d documents (+%d design), not %d"
                   % (what, stats["bulk_docs"], stats["design_puts"], expected))
        self.check(stats["design_puts"] == design_puts,
                   "%s: %d design documents PUT, not %d" % (what, stats["design_puts"], design_puts))
        self.check(stats["bulk_requests"] == len(files),
                   "%s: %d _bulk_docs requests, not %d" % (what, stats["bulk_requests"], len(files)))
        self.check(stats["bulk_bytes"] == size and stats["bulk_crc_sum"] == crc_sum,
                   "%s: the _bulk_docs bodies differ from the chunks split here (%d bytes, not %d)"
                   % (what, stats["bulk_bytes"], size))
        self.check(not stats["unexpected"], "%s: unexpected requests %s" % (what, stats["unexpected"]))

    def record(self, key, result):
        self.results[key].append(result)
        label = dict(STAGES)[key]
        rss = ""
        if key in PORT_STAGES:
            rss = " %6.1f MB peak RSS; %s" % (result["maxrss_kib"] / 1024, tree_text(result))
        print("  %-38s %7.2f s%s" % (label, result["wall"], rss), flush=True)

    # -- the limits of a download ----------------------------------------

    def download_curl(self):
        if not self.curl:
            return
        result = self.runner.run([self.curl, "-s", "-o", "/dev/null", "--noproxy", "*",
                                  "-w", "%{http_code} %{size_download}", self.server.base + "/db/_all_docs"
                                  "?include_docs=true&attachments=true"], "curl download")
        self.check(result["stdout"].split() == [b"200", str(self.reply_size).encode()],
                   "curl download: got %r, expected %d bytes" % (result["stdout"], self.reply_size))
        self.record("dl_curl", result)

    def download_curl_file(self):
        if not self.curl:
            return
        target = self.workdir / "curl-download.json"
        result = self.runner.run(["sh", "-c", CURL_TO_FILE, "sh", target, self.server.base + "/db/_all_docs"
                                  "?include_docs=true&attachments=true"], "curl download to a file")
        self.check(result["stdout"].split() == [b"200", str(self.reply_size).encode()]
                   and target.stat().st_size == self.reply_size,
                   "curl download to a file: got %r, expected %d bytes" % (result["stdout"], self.reply_size))
        target.unlink()
        self.record("dl_curl_file", result)

    def download_urllib3(self):
        result = self.runner.run([sys.executable, "-c", URLLIB3_DOWNLOAD, self.server.base + "/db/_all_docs"
                                  "?include_docs=true&attachments=true"], "urllib3 download")
        self.check(result["stdout"].split() == [b"200", str(self.reply_size).encode()],
                   "urllib3 download: got %r, expected %d bytes" % (result["stdout"], self.reply_size))
        self.record("dl_urllib3", result)

    # -- the port's backup ---------------------------------------------------

    def backup(self, compress, mib=False):
        key = "backup_z" if compress else "backup_1m" if mib else "backup"
        name = self.workdir / ("backup-%s-%d.json" % (key, len(self.results[key])))
        options = ["-f", name] + (["-z"] if compress else [])
        result = self.runner.run(port_command(self.port, self.server, "-b", *options, db="mib" if mib else "db"),
                                 "the port's backup")
        self.record(key, result)
        produced = Path(str(name) + ".gz") if compress else name
        first = self.dump is None
        if compress and len(self.results[key]) > 1:
            produced.unlink()     # verified once: gzip is deterministic enough, decompressing is slow
            return
        try:
            newlines, crc = count_and_crc(produced, compressed=compress)
        except (ValueError, zlib.error) as error:
            self.check(False, "%s: the backup cannot be read: %s" % (key, error))
            produced.unlink()
            return
        self.check(newlines == self.n + 2, "%s: the backup has %d lines, not N+2 = %d"
                   % (key, newlines, self.n + 2))
        if not compress and first:
            self.dump, self.dump_crc, self.dump_size = produced, crc, produced.stat().st_size
            return
        self.check(crc == self.dump_crc, "%s: the backup's text differs from the first backup's" % key)
        produced.unlink()

    # -- the limits of an upload --------------------------------------------

    def prepare_chunks(self):
        if self.chunks is None:
            started = time.monotonic()
            self.chunks = split_dump(self.dump, self.workdir / "chunks")
            self.check(self.chunks[3] == self.n - self.designs,
                       "split: %d documents in the chunks, not %d" % (self.chunks[3], self.n - self.designs))
            print("  (split the dump into %d chunk bodies, %s, in %.1f s: not timed)"
                  % (len(self.chunks[0]), mb(self.chunks[1]), time.monotonic() - started), flush=True)

    def upload_curl(self):
        if not self.curl:
            return
        self.server.reset()
        result = self.runner.run(["sh", "-c", CURL_UPLOAD_LOOP, "sh", self.server.base + "/db/_bulk_docs"]
                                 + self.chunks[0], "curl upload")
        self.check_sink("curl upload", 0)
        self.record("ul_curl", result)

    def upload_urllib3(self):
        self.server.reset()
        result = self.runner.run([sys.executable, "-c", URLLIB3_UPLOAD, self.server.base + "/db/_bulk_docs"]
                                 + self.chunks[0], "urllib3 upload")
        self.check_sink("urllib3 upload", 0)
        self.record("ul_urllib3", result)

    # -- the port's restore --------------------------------------------------

    def restore(self, jobs):
        """The defaults (-l 5000), or --jobs N as users run it: chunks of 500 lines."""
        key = "restore_j2" if jobs > 1 else "restore"
        self.server.reset()
        options = ["-f", self.dump] + (["--jobs", str(jobs)] if jobs > 1 else [])
        result = self.runner.run(port_command(self.port, self.server, "-r", *options), "the port's restore")
        if jobs > 1 and self.jobs_chunks is None:
            self.jobs_chunks = split_dump(self.dump, None, JOBS_LINES_PER_CHUNK)
        self.check_sink(key, self.designs, self.jobs_chunks if jobs > 1 else self.chunks)
        self.record(key, result)

    def run(self):
        print("\nN = {:,} documents ({} design), reply {}; {} run{}".format(
            self.n, self.designs, mb(self.reply_size), self.runs, "s" if self.runs > 1 else ""), flush=True)
        warm(self.reply)
        for round_ in range(self.runs):
            self.note_load()
            print("run %d/%d (load average %.1f)" % (round_ + 1, self.runs, os.getloadavg()[0]), flush=True)
            self.download_curl()
            self.download_curl_file()
            self.download_urllib3()
            self.backup(compress=False)
            self.backup(compress=False, mib=True)
            self.backup(compress=True)
            self.prepare_chunks()
            self.upload_curl()
            self.upload_urllib3()
            self.restore(jobs=1)
            self.restore(jobs=2)
        self.note_load()
        return self

    def note_load(self):
        load = os.getloadavg()[0]
        self.load = [min(self.load[0], load), max(self.load[1], load)]


# ---------------------------------------------------------------------------
# 4. The report
# ---------------------------------------------------------------------------

def mb(size):
    return "%.1f MB" % (size / 1e6)


def peak_mb(suite, key, field="maxrss_kib"):
    runs = suite.results[key]
    return max(r[field] for r in runs) / 1024 if runs else None


def tree_text(result):
    """The sampled memory of the run's whole process tree."""
    count = result["processes"]
    return "%d process%s %.1f MB PSS" % (count, "es" if count != 1 else "", result["tree_kib"] / 1024)


def tree_peak(suite, key):
    return tree_text(max(suite.results[key], key=lambda r: r["tree_kib"]))


def verdict(ok):
    return "PASS" if ok else "FAIL"


def print_table(suite):
    upload = suite.chunks[1]
    print("\n=== N = {:,} documents: reply {} in {}, dump {}, {} chunks of {} lines ({}); {} run{} ===".format(
        suite.n, mb(suite.reply_size), HTTP_CHUNKS[suite.server.mode], mb(suite.dump_size), len(suite.chunks[0]),
        LINES_PER_CHUNK, mb(upload), suite.runs, "s" if suite.runs > 1 else ""))
    print("%-38s %9s %15s %9s %9s %10s  %s" % ("stage", "median", "min-max", "MB/s", "CPU s", "peak RSS",
                                              "whole tree, sampled"))
    for key, label in STAGES:
        runs = suite.results[key]
        if not runs:
            print("%-38s %9s" % (label, "n/a (no curl)"))
            continue
        walls = [r["wall"] for r in runs]
        size = suite.reply_size if key.startswith(("dl_", "backup")) else upload
        rss = "%7.1f MB  %s" % (peak_mb(suite, key), tree_peak(suite, key)) if key in PORT_STAGES else ""
        print("%-38s %7.2f s %6.2f-%6.2f s %9.1f %9.2f %s" % (
            label, statistics.median(walls), min(walls), max(walls), size / 1e6 / statistics.median(walls),
            statistics.median(r["cpu"] for r in runs), rss))
    floor = max(r["floor_kib"] for runs in suite.results.values() for r in runs) / 1024
    print("(MB/s: of the reply for downloads and backups, of the chunk bodies for uploads and restores;"
          " CPU: user+sys of the child and the processes it reaped; peak RSS: ru_maxrss from os.wait4, the"
          " largest single process, floor %.1f MB (the wrapper's own); whole tree: the largest sum of the"
          " PSS of the child and its descendants, sampled every 25 ms)" % floor)


def print_ratios(suite):
    def ratio(a, b, pick, field="wall"):
        ra, rb = suite.results[a], suite.results[b]
        if not ra or not rb:
            return None
        return pick(r[field] for r in ra) / pick(r[field] for r in rb)

    def line(label, a, b, target=None, field="wall"):
        value, best = ratio(a, b, statistics.median, field), ratio(a, b, min, field)
        if value is None:
            print("  %-38s %8s" % (label, "n/a"))
            return
        shown = "%7.2fx %9s" % (value, "(%.2fx)" % best)
        if target is None:
            print("  %-38s %s" % (label, shown))
        else:
            print("  %-38s %s   <= %.2fx  %s" % (label, shown, target, verdict(value <= target)))

    print("\n%-40s %7s %9s   %s" % ("ratios", "median", "(best)", "target"))
    line("backup / curl -o FILE + fsync", "backup", "dl_curl_file", TARGETS["backup"])
    line("backup CPU / backup CPU on 1 MiB chunks", "backup", "backup_1m", TARGETS["backup_cpu"], field="cpu")
    line("backup / raw download (curl /dev/null)", "backup", "dl_curl")
    line("backup / raw download (urllib3)", "backup", "dl_urllib3")
    line("backup -z / raw download (curl)", "backup_z", "dl_curl", TARGETS["backup_z"])
    line("backup -z / raw download (urllib3)", "backup_z", "dl_urllib3")
    line("restore / raw upload (curl)", "restore", "ul_curl", TARGETS["restore"])
    line("restore / raw upload (urllib3)", "restore", "ul_urllib3")
    line("restore --jobs 2 / restore", "restore_j2", "restore")
    speed = ratio("restore", "restore_j2", statistics.median)
    print("  %-38s %7.2fx   (median)" % ("restore --jobs 2 speed-up", speed))
    print("peak RSS (max over runs):")
    for key in PORT_STAGES:
        rss = peak_mb(suite, key)
        print("  %-38s %6.1f MB   < %.0f MB  %s   (whole tree: %s)" % (
            dict(STAGES)[key], rss, RSS_LIMIT_MB, verdict(rss < RSS_LIMIT_MB), tree_peak(suite, key)))
    if suite.load[1] > os.cpu_count():
        print("WARNING: the machine was busy: 1-minute load average up to %.1f on %d CPUs during these runs."
              " Other processes took CPU time from the measured ones: wall times and their ratios are"
              " inflated and noisy; the best runs and the CPU column are the steadier figures."
              % (suite.load[1], os.cpu_count()))
    print("checks: " + ("all passed: backups of N+2 lines and identical bytes every run (-z decompressed"
                        " too), N documents and the exact chunk bodies at the sink every upload"
                        if not suite.problems else "%d FAILED:\n  " % len(suite.problems)
                        + "\n  ".join(suite.problems)))


def print_rss_comparison(small, large):
    print("\npeak RSS by database size (max over runs; target: < %.0f MB, and within +-%d%%):"
          % (RSS_LIMIT_MB, RSS_GROWTH * 100))
    print("  %-30s %14s %14s %8s        %s" % ("", "N = {:,}".format(small.n), "N = {:,}".format(large.n),
                                               "change", "whole tree (PSS, sampled)"))
    for key in PORT_STAGES:
        a, b = peak_mb(small, key), peak_mb(large, key)
        change = (b - a) / a
        ok = abs(change) <= RSS_GROWTH and a < RSS_LIMIT_MB and b < RSS_LIMIT_MB
        ta, tb = peak_mb(small, key, "tree_kib"), peak_mb(large, key, "tree_kib")
        print("  %-30s %11.1f MB %11.1f MB %+7.1f%%  %s   %.1f MB -> %.1f MB" % (
            dict(STAGES)[key], a, b, change * 100, verdict(ok), ta, tb))


# ---------------------------------------------------------------------------
# A long line: one document with a 25 MB attachment
# ---------------------------------------------------------------------------

ATTACHMENT_MB = 25
LONG_LINE_BASE_MB, BACKUP_LINE_FACTOR, RESTORE_LINE_FACTOR = 64.0, 1.5, 3.0


def make_long_line_dataset():
    """An _all_docs reply of 4 small documents and one with a 25 MB attachment
    (base64: a ~33 MB line in the dump), as CouchDB lays it out."""
    import base64
    import random
    path = CACHE_DIR / ("all_docs-long-line-v%d-%d.json" % (DATASET_VERSION, ATTACHMENT_MB))
    if path.exists():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    size = ATTACHMENT_MB << 20
    data = base64.b64encode(random.Random(10).getrandbits(size * 8).to_bytes(size, "little"))   # 3.8: no randbytes
    rows = [dataset_row(i, 7).encode("utf-8") for i in (1, 2)]
    doc = (b'{"_id":"photo","_rev":"%s","type":"bench","_attachments":{"photo.jpg":{"content_type":"image/jpeg",'
           b'"revpos":1,"digest":"md5-bench","length":%d,"data":"%s"}}}' % (revision(7).encode(), ATTACHMENT_MB << 20,
                                                                            data))
    rows.append(b'{"id":"photo","key":"photo","value":{"rev":"%s"},"doc":%s}' % (revision(7).encode(), doc))
    rows += [dataset_row(i, 7).encode("utf-8").replace(b"doc000000", b"zzz000000") for i in (3, 4)]
    temp = path.with_suffix(".part")
    temp.write_bytes(b'{"total_rows":5,"offset":0,"rows":[\r\n' + b",\r\n".join(rows) + b"\r\n]}\n")
    os.replace(str(temp), str(path))
    return path


def run_long_line(runs, port, top):
    """Peak RSS of a backup and a restore of a dump whose longest line is ~33 MB."""
    reply = make_long_line_dataset()
    framed = couchdb_framed(reply)
    workdir = Path(tempfile.mkdtemp(prefix="long-", dir=str(top)))
    results = {"backup": [], "restore": []}
    problems = []
    try:
        with Server(workdir, reply, framed) as server:
            runner = Runner(workdir)
            dump = workdir / "long.json"
            for round_ in range(runs):
                if dump.exists():
                    dump.unlink()
                results["backup"].append(runner.run(port_command(port, server, "-b", "-f", dump),
                                                    "the port's backup of a long line"))
                server.reset()
                results["restore"].append(runner.run(port_command(port, server, "-r", "-f", dump),
                                                     "the port's restore of a long line"))
                stats = server.stats()
                _, size, crc_sum, documents = split_dump(dump, None)
                if stats["bulk_docs"] != documents or stats["bulk_bytes"] != size \
                        or stats["bulk_crc_sum"] != crc_sum:
                    problems.append("long line: the sink did not receive the dump's exact chunk bodies")
            with open(str(dump), "rb") as handle:
                longest = max(len(line) for line in handle)
    finally:
        shutil.rmtree(str(workdir), ignore_errors=True)
    line_mb = longest / (1 << 20)
    print("\n=== a long line: 5 documents, one with a %d MB attachment: the longest dump line is %.1f MB;"
          " %d run%s ===" % (ATTACHMENT_MB, line_mb, runs, "s" if runs > 1 else ""))
    for key, factor in (("backup", BACKUP_LINE_FACTOR), ("restore", RESTORE_LINE_FACTOR)):
        runs_ = results[key]
        peak = max(r["maxrss_kib"] for r in runs_) / 1024
        limit = LONG_LINE_BASE_MB + factor * line_mb
        print("  port %-8s peak RSS %6.1f MB (peak / line %.1f)   <= %.0f MB + %.1fx the line = %.0f MB  %s   "
              "time %.2f s (median); whole tree: %s" % (
                  key, peak, peak / line_mb, LONG_LINE_BASE_MB, factor, limit, verdict(peak <= limit),
                  statistics.median(r["wall"] for r in runs_), tree_text(max(runs_, key=lambda r: r["tree_kib"]))))
    print("checks: " + ("the restore sent the dump's exact chunk bodies every run" if not problems
                        else "FAILED: " + "; ".join(problems)))
    return problems


def run_suite(n, runs, port, top, mode="couchdb"):
    reply = make_dataset(n)
    framed = couchdb_framed(reply)
    workdir = Path(tempfile.mkdtemp(prefix="n%d-" % n, dir=str(top)))
    try:
        with Server(workdir, reply, framed, mode) as server:
            suite = Suite(n, runs, workdir, reply, server, Runner(workdir), port).run()
        print_table(suite)
        print_ratios(suite)
        return suite
    finally:
        shutil.rmtree(str(workdir), ignore_errors=True)


# ---------------------------------------------------------------------------
# --profile
# ---------------------------------------------------------------------------

PROFILE_RUNNER = """\
import cProfile, pstats, sys
top = int(sys.argv[1])
sys.argv = ["couchdb_dump.py"] + sys.argv[2:]
profiler = cProfile.Profile()
profiler.enable()
import couchdb_dump
try:
    code = couchdb_dump.main()
finally:
    profiler.disable()
    sys.stdout.flush()
    sys.stderr.flush()
    pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats("cumulative").print_stats(top)
sys.exit(code)
"""


def profile(mode, n, top=25, chunks="couchdb"):
    """Run the port once under cProfile and print the top entries by cumulative time.

    What ``python3 -m cProfile -s cumtime couchdb_dump.py ...`` prints, but
    with the port imported as the module ``couchdb_dump`` and its main()
    profiled: under ``-m cProfile`` the port's functions belong to a
    ``__main__`` that is not the real one, so multiprocessing cannot pickle
    them for its workers, and cProfile swallows the exit status.  The run's
    result is checked too: the backup's lines, or the documents at the sink.
    """
    reply = make_dataset(n)
    framed = couchdb_framed(reply)
    workdir = Path(tempfile.mkdtemp(prefix="profile-", dir=str(CACHE_DIR)))
    problems = []
    try:
        port, description = snapshot_port(workdir)
        print("port: " + description)
        with Server(workdir, reply, framed, chunks) as server:
            dump = workdir / "dump.json"
            base = ["-q", "-H", "127.0.0.1", "-P", str(server.port), "-d", "db"]
            if mode == "restore":
                subprocess.run([sys.executable, str(port), "-b"] + base + ["-f", str(dump)], check=True)
                args = ["-r"] + base + ["-f", dump.name]
                server.reset()
            else:
                args = ["-b"] + base + ["-f", "profiled.json"]
            print("$ python3 -m cProfile -s cumtime couchdb_dump.py %s   (N = {:,}; as import couchdb_dump;"
                  " main())".format(n) % " ".join(args), flush=True)
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-c", PROFILE_RUNNER, str(top)] + args, cwd=str(workdir),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            print("wall time %.2f s (with the profiler's overhead), exit code %d; cProfile sees the main"
                  " process only" % (time.monotonic() - started, done.returncode))
            if mode == "restore":
                stats = server.stats()
                if stats["bulk_docs"] + stats["design_puts"] != n:
                    problems.append("the sink received %d documents, not %d"
                                    % (stats["bulk_docs"] + stats["design_puts"], n))
            else:
                produced = workdir / "profiled.json"
                lines = count_and_crc(produced)[0] if produced.exists() else None
                if lines != n + 2:
                    problems.append("no backup written" if lines is None else "the backup has %d lines" % lines)
    finally:
        shutil.rmtree(str(workdir), ignore_errors=True)
    lines = done.stdout.decode(errors="replace").splitlines()
    for index, line in enumerate(lines):
        if "function calls" in line:
            output = [text for text in lines[:index] if text.strip()]
            if output:
                print("the port printed:\n  " + "\n  ".join(output))
            if problems:
                print("RUN FAILED: " + "; ".join(problems) + " (the figures below are of a failed run)")
            print(line.strip())
        elif line.lstrip().startswith("ncalls"):
            print("\n".join(lines[index:index + 1 + top]))
            break
    else:
        print(done.stdout.decode(errors="replace"))
    return 1 if problems or done.returncode else 0


# ---------------------------------------------------------------------------
# --complete: a complete backup beside the default one (issue #13)
# ---------------------------------------------------------------------------

def complete_leaves(n, width):
    """N documents for the stub, as leaves: the bench rows' documents; one in
    100 has two conflicting leaves, and one in 100 (another) is deleted."""
    for i in range(n):
        row = json.loads(dataset_row(i, width))
        doc = row["doc"]
        number, _, digest = doc["_rev"].partition("-")
        doc["_revisions"] = {"start": 1, "ids": [digest]}
        yield doc
        if i % 100 == 50:
            for branch in ("a", "b"):
                tip = "%s%031x" % (branch, i)
                yield dict(doc, _rev="2-" + tip, _revisions={"start": 2, "ids": [tip, digest]}, branch=branch)
        elif i % 100 == 75:
            yield {"_id": doc["_id"], "_rev": "2-%032x" % i, "_deleted": True,
                   "_revisions": {"start": 2, "ids": ["%032x" % i, digest]}}


def stub_server(**options):
    """The stub server of the tests (tests/tools/couch_stub.py), imported only by the stages that use it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from couch_stub import CouchStub
    return CouchStub(**options)


def complete_stub(n, what):
    """The stub server holding `complete_leaves(n)` as database "db", with a
    _security object; prints what it holds.  Returns (stub, its leaves)."""
    stub = stub_server(databases=["db"])
    started = time.monotonic()
    batch = []
    for doc in complete_leaves(n, max(7, len(str(n)))):
        batch.append(doc)
        if len(batch) >= 10000:
            stub.put_leaves("db", batch)
            batch = []
    stub.put_leaves("db", batch)
    leaves = sum(len(tree) for tree in stub.store.leaves["db"].values())
    stub.store.security["db"] = {"members": {"names": ["reader"], "roles": []}, "admins": {"names": [], "roles": []}}
    print("\n=== {}: N = {:,} documents ({:,} leaves) in the stub server (tests/tools/couch_stub.py), "
          "filled in {:.1f} s ===".format(what, n, leaves, time.monotonic() - started), flush=True)
    return stub, leaves


def run_stages(stub, runner, port, workdir, runs, stages):
    """Run each of `stages` ((name, file, options, lines expected)) `runs`
    times round-robin against the stub; print the table of medians.
    Returns ({name: (median wall, median CPU)}, {name: file size}, problems)."""
    results = {name: [] for name, _, _, _ in stages}
    sizes, problems = {}, []

    class Where:
        port = stub.port
    print("%d run%s of each, round-robin" % (runs, "s" if runs > 1 else ""), flush=True)
    for _ in range(runs):
        for name, file_name, options, expected in stages:
            target = workdir / file_name
            if target.exists():
                target.unlink()
            before = len(stub.requests)
            result = runner.run(port_command(port, Where, "-b", "-f", file_name, *options), name)
            result["requests"] = len(stub.requests) - before
            results[name].append(result)
            sizes[name] = target.stat().st_size
            with open(str(target), "rb") as handle:
                lines = sum(block.count(b"\n") for block in plain_blocks(handle))
            if lines != expected:
                problems.append("%s: %d lines, expected %d" % (name, lines, expected))
    print("%-34s %9s %9s %10s %9s %10s %12s" % ("stage", "median s", "CPU s", "peak RSS", "requests", "file",
                                                "lines/s"))
    medians = {}
    for name, _, _, expected in stages:
        runs_of = results[name]
        wall = statistics.median(r["wall"] for r in runs_of)
        medians[name] = (wall, statistics.median(r["cpu"] for r in runs_of))
        print("%-34s %9.2f %9.2f %7.1f MB %9d %10s %12s" % (
            name, wall, medians[name][1], max(r["maxrss_kib"] for r in runs_of) / 1024, runs_of[-1]["requests"],
            mb(sizes[name]), "{:,.0f}".format(expected / wall)))
    return medians, sizes, problems


def run_complete(n, runs, port, top):
    """Back up the same stub database with and without --complete, `runs`
    times round-robin; print time, CPU, peak RSS, file sizes and ratios."""
    workdir = top / ("complete-%d" % n)
    workdir.mkdir()
    stub, leaves = complete_stub(n, "--complete")
    stages = (("default backup (-b)", "default.json", (), n - n // 100 + 2),
              ("complete backup (-b --complete)", "complete.json", ("--complete",), leaves + 2))
    with stub:
        medians, _, problems = run_stages(stub, Runner(workdir), port, workdir, runs, stages)
    default, complete = (medians[stage[0]] for stage in stages)
    print("ratio complete/default: time %.2f, CPU of the port %.2f (the stub server's own work is in the time,"
          " not in the CPU)" % (complete[0] / default[0], complete[1] / default[1]))
    for problem in problems:
        print("PROBLEM: " + problem)
    return problems


# ---------------------------------------------------------------------------
# --incremental: an increment (--since) beside a full complete backup
# ---------------------------------------------------------------------------

def run_incremental(n, runs, port, top, changed=0.01):
    """A full --complete backup of the stub database is the base; then one
    document in 100 gets a new revision.  The full complete backup of the
    database as it is now and the increment since the base run `runs`
    times round-robin; the increment's file size and time are printed
    against the full backup's, with the targets (<= 3 % and <= 0.1x)."""
    workdir = top / ("incremental-%d" % n)
    workdir.mkdir()
    runner = Runner(workdir)
    stub, leaves = complete_stub(n, "--incremental")
    step = max(int(round(1 / changed)), 1)
    with stub:
        class Where:
            port = stub.port
        runner.run(port_command(port, Where, "-b", "-f", "base.json", "--complete"), "the base")
        tree = stub.store.leaves["db"]
        updates = []
        for i, doc_id in enumerate(sorted(tree)):
            if i % step == 0:
                parent = max(tree[doc_id].values(), key=lambda doc: (not doc.get("_deleted"), doc["_rev"]))
                start = parent["_revisions"]["start"] + 1
                tip = "%032x" % (i + (1 << 100))
                updates.append(dict(parent, _rev="%d-%s" % (start, tip), changed=True,
                                    _revisions={"start": start, "ids": [tip] + parent["_revisions"]["ids"]}))
        stub.put_leaves("db", updates)
        print("%d documents changed since the base (one in %d)" % (len(updates), step), flush=True)
        # The changed documents' leaves: a conflicted document's other leaf comes with it.
        changed_leaves = sum(len(tree[doc["_id"]]) for doc in updates)
        stages = (("full complete (-b --complete)", "full.json", ("--complete",), leaves + 2),
                  ("increment (-b --since base.json)", "increment.json", ("--since", "base.json"),
                   changed_leaves + 2))
        medians, sizes, problems = run_stages(stub, runner, port, workdir, runs, stages)
    (full_name, full_file), (inc_name, inc_file) = ((stage[0], stage[1]) for stage in stages)
    size_ratio = sizes[inc_name] / sizes[full_name]
    time_ratio = medians[inc_name][0] / medians[full_name][0]
    print("increment / full complete: file %.2f %% (%s of %s; target <= 3 %%: %s), time %.3fx (target <= 0.1x: %s),"
          " CPU of the port %.3fx" % (100 * size_ratio, mb(sizes[inc_name]), mb(sizes[full_name]),
                                       verdict(size_ratio <= 0.03), time_ratio, verdict(time_ratio <= 0.1),
                                       medians[inc_name][1] / medians[full_name][1]))
    for problem in problems:
        print("PROBLEM: " + problem)
    return problems


# ---------------------------------------------------------------------------
# --whole-server and --parallel-read: many databases, and one read in parallel
# ---------------------------------------------------------------------------

# What users wrote instead: one process a database, one after another.
SHELL_LOOP = ('python=$1; port=$2; server=$3; folder=$4; shift 4; for db in "$@"; do '
              '"$python" "$port" -b -q -H 127.0.0.1 -P "$server" -d "$db" -f "$folder/$db.json" || exit 1; done')


def small_documents(count, seed):
    """``count`` documents of ~150 bytes (non-ASCII, JSON escapes), by id."""
    return {"doc%06d" % k: {"_id": "doc%06d" % k, "_rev": "1-%032x" % (seed * 1000003 + k), "n": k,
                            "text": "\u00e9t\u00e9 \"%d\" \\ %s" % (k, "x" * (k % 64))} for k in range(count)}


def median_of(results):
    return statistics.median(r["wall"] for r in results), statistics.median(r["cpu"] for r in results)


def print_stages(results, names):
    print("%-52s %9s %9s %10s" % ("stage", "median s", "CPU s", "peak RSS"))
    for name in names:
        wall, cpu = median_of(results[name])
        low, high = min(r["wall"] for r in results[name]), max(r["wall"] for r in results[name])
        print("%-52s %9.2f %9.2f %7.1f MB   (%.2f-%.2f)" % (
            name, wall, cpu, max(r["maxrss_kib"] for r in results[name]) / 1024, low, high))


def same_files(one, other):
    """The names of the files of folder ``one`` that differ from (or lack in) ``other``."""
    return sorted(name for name in os.listdir(str(one))
                  if not (other / name).is_file() or (one / name).read_bytes() != (other / name).read_bytes())


def run_whole_server(runs, port, top, databases=300):
    """300 databases of 100-1,000 documents on the stub: the port's -d '*'
    --jobs 4 against a shell loop of the port, one process a database."""
    import random
    workdir = top / "whole-server"
    workdir.mkdir()
    runner = Runner(workdir)
    stub = stub_server()
    rng = random.Random(18)
    names = ["db%03d" % i for i in range(databases)]
    total = 0
    for index, name in enumerate(names):
        docs = small_documents(rng.randint(100, 1000), index)
        stub.store.databases[name] = docs
        total += len(docs)
    print("\n=== whole server: {} databases, {:,} documents in the stub server (tests/tools/couch_stub.py);"
          " {} run{} ===".format(databases, total, runs, "s" if runs > 1 else ""), flush=True)
    stages = [("shell loop of the port, one process a database", "loop"),
              ("port -d '*' (one database after another)", "pattern1"),
              ("port -d '*' --jobs 4", "pattern4")]
    results = {name: [] for name, _ in stages}
    problems = []
    with stub:
        for _ in range(runs):
            for name, folder in stages:
                target = workdir / folder
                shutil.rmtree(str(target), ignore_errors=True)
                if folder == "loop":
                    target.mkdir()
                    command = ["sh", "-c", SHELL_LOOP, "loop", sys.executable, port, stub.port, target] + names
                else:
                    command = [sys.executable, str(port), "-b", "-q", "-H", "127.0.0.1", "-P", str(stub.port),
                               "-d", "*", "-f", target] + (["--jobs", "4"] if folder == "pattern4" else [])
                results[name].append(runner.run(command, name))
            for folder in ("pattern1", "pattern4"):
                differ = same_files(workdir / "loop", workdir / folder)
                if differ or len(os.listdir(str(workdir / folder))) != databases:
                    problems.append("%s: %d files differ from the shell loop's (%s)" % (
                        folder, len(differ), ", ".join(differ[:5])))
    print_stages(results, [name for name, _ in stages])
    loop = median_of(results[stages[0][0]])[0]
    for name, _ in stages[1:]:
        ratio = median_of(results[name])[0] / loop
        target = TARGETS["whole_server"] if name.endswith("--jobs 4") else None
        print("ratio %s / shell loop: %.3f%s" % (name, ratio, "  (target <= %.2f: %s)" % (
            target, verdict(ratio <= target)) if target else ""))
    for problem in problems:
        print("PROBLEM: " + problem)
    return problems


def run_parallel_read(n, runs, port, top, rate=8 << 20):
    """One database served at ``rate`` bytes a second a stream (CouchDB
    serves one _all_docs stream with one request process): --jobs 4
    against --jobs 1, byte-identical files."""
    workdir = top / "parallel-read"
    workdir.mkdir()
    runner = Runner(workdir)
    stub = stub_server(databases=["db"], rate=rate, cache_rows=True)
    stub.store.databases["db"].update(small_documents(n, 0))
    for i in range(0, n, 997):   # design documents here and there
        stub.store.databases["db"]["_design/v%06d" % i] = {"_id": "_design/v%06d" % i, "_rev": "1-d",
                                                           "views": {"v": {"map": "function(d){emit(d.n)}"}}}
    print("\n=== parallel read: {:,} documents in one database of the stub server, each _all_docs stream"
          " at {:.0f} MB/s; {} run{} ===".format(len(stub.store.databases["db"]), rate / 1e6, runs,
                                               "s" if runs > 1 else ""), flush=True)
    stages = [("port -b --jobs 1 (one stream)", "one.json", "1"), ("port -b --jobs 4 (four ranges)", "four.json", "4")]
    results = {name: [] for name, _, _ in stages}
    problems = []
    with stub:
        for _ in range(runs):
            for name, file_name, jobs in stages:
                target = workdir / file_name
                if target.exists():
                    target.unlink()
                command = [sys.executable, str(port), "-b", "-q", "-H", "127.0.0.1", "-P", str(stub.port),
                           "-d", "db", "-f", target, "--jobs", jobs]
                results[name].append(runner.run(command, name))
            if (workdir / "one.json").read_bytes() != (workdir / "four.json").read_bytes():
                problems.append("--jobs 4 wrote other bytes than --jobs 1")
    size = (workdir / "one.json").stat().st_size
    print_stages(results, [name for name, _, _ in stages])
    ratio = median_of(results[stages[1][0]])[0] / median_of(results[stages[0][0]])[0]
    print("dump: %s; ratio --jobs 4 / --jobs 1: %.3f  (target <= %.2f: %s)" % (
        mb(size), ratio, TARGETS["parallel_read"], verdict(ratio <= TARGETS["parallel_read"])))
    for problem in problems:
        print("PROBLEM: " + problem)
    return problems


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def versions():
    import platform
    import urllib3
    curl = shutil.which("curl")
    curl_version = subprocess.run([curl, "--version"], stdout=subprocess.PIPE).stdout.split()[1].decode() \
        if curl else "absent"
    return "python %s, urllib3 %s, curl %s, %d CPUs, %s" % (
        platform.python_version(), urllib3.__version__, curl_version, os.cpu_count(), platform.platform())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, help="documents in the database [default: 1,000,000]")
    parser.add_argument("--runs", type=int, default=None, help="runs of each stage [default: 3]")
    parser.add_argument("--quick", action="store_true", help="smoke check: 100,000 documents, 1 run")
    parser.add_argument("--compare-sizes", action="store_true",
                        help="run at 100,000 and 1,000,000 documents and compare peak RSS"
                             " (the default without --docs and --quick)")
    parser.add_argument("--complete", action="store_true",
                        help="a --complete backup beside the default one, against the stub server"
                             " [default: 100,000 documents]")
    parser.add_argument("--incremental", action="store_true",
                        help="an incremental backup (--since) of 1 %% of the documents beside a full --complete"
                             " one, against the stub server [default: 100,000 documents]")
    parser.add_argument("--profile", choices=("backup", "restore"),
                        help="run the port once under cProfile and print the top 25 entries")
    parser.add_argument("--long-line", action="store_true",
                        help="only the long-line part: peak RSS of a backup and a restore of a dump whose"
                             " longest line is ~33 MB (it also runs after the others)")
    parser.add_argument("--whole-server", action="store_true", help="300 stub databases: -d '*' --jobs 4 vs a shell loop")
    parser.add_argument("--parallel-read", action="store_true", help="one rate-capped database: --jobs 4 vs --jobs 1")
    parser.add_argument("--http-chunks", choices=("couchdb", "1mib"), default="couchdb",
                        help="how the server cuts the _all_docs reply: as Apache CouchDB does (chunks of"
                             " at most 1,490 bytes, whole rows) or in 1 MiB chunks [default: couchdb];"
                             " the backup on 1 MiB chunks runs beside it either way, for the CPU ratio")
    args = parser.parse_args(argv)
    if args.docs is not None and args.docs < 1:
        parser.error("--docs must be at least 1")
    if args.profile:
        return profile(args.profile, args.docs or LARGE, chunks=args.http_chunks)
    runs = args.runs or (1 if args.quick else 3)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix="run-", dir=str(CACHE_DIR)))
    try:
        port, description = snapshot_port(top)
        print("couchdb_dump.py benchmark (%s)\nport: %s" % (versions(), description), flush=True)
        if args.complete:
            return 1 if run_complete(args.docs or SMALL, runs, port, top) else 0
        if args.incremental:
            return 1 if run_incremental(args.docs or SMALL, runs, port, top) else 0
        if args.whole_server or args.parallel_read:
            problems = run_whole_server(runs, port, top) if args.whole_server else []
            if args.parallel_read:
                problems += run_parallel_read(args.docs or SMALL, runs, port, top)
            return 1 if problems else 0
        suites = []
        if args.long_line:
            pass
        elif args.quick:
            suites = [run_suite(args.docs or SMALL, runs, port, top, args.http_chunks)]
        elif args.compare_sizes or args.docs is None:
            suites = [run_suite(SMALL, runs, port, top, args.http_chunks),
                      run_suite(LARGE, runs, port, top, args.http_chunks)]
            print_rss_comparison(*suites)
        else:
            suites = [run_suite(args.docs, runs, port, top, args.http_chunks)]
        long_line_problems = run_long_line(runs, port, top)
    finally:
        shutil.rmtree(str(top), ignore_errors=True)
    return 1 if long_line_problems or any(suite.problems for suite in suites) else 0


if __name__ == "__main__":
    sys.exit(main())
