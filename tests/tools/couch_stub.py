"""A small in-process CouchDB stand-in for tests that need a server on demand.

It keeps databases and documents in memory and answers the few endpoints the
port uses (`GET /_all_dbs`, `GET /db`, `PUT /db`, `DELETE /db`, `PUT /db/_design/x`,
`POST /db/_bulk_docs`, `GET /db/_all_docs`) the way Apache CouchDB lays them
out.  For complete backups it also keeps revision trees: `put_leaves` stores
leaf revisions as `_bulk_docs` with `new_edits:false` does, and it answers
`GET /db/_changes?style=all_docs` (pages of `limit`, capped by
`changes_page`), `POST /db/_bulk_get` (refused with `bulk_get_status`),
`GET /db/id?open_revs=all`, `GET`/`PUT /db/_security` and `POST /db/_revs_diff`.
`GET /db` gives `update_seq` and `instance_start_time` as CouchDB 3 does:
sequences count per database (they start again when a database is deleted
and created again) and are opaque strings (`"12-g1AAAAstub"`, its suffix
`seq_suffix`), and `instance_start_time` is the time of the database's
creation in whole seconds: a clock that starts at the same second in every stub
and moves on one second a creation, so that two stubs given the same databases
give the same files (a test may set `store.instances[db]` to another value).
Every request is recorded.  A test can replace the answer to any request
with `faults`: a callable taking the request's index, method and path and
returning None (answer normally) or one of the actions of `Fault`.  With
`chunking`, `_all_docs` replies go out chunked as it cuts them (see
`couchdb_chunks`).

Fault kinds: `status` (answer `status`/`body`, with `headers`), `drop` (hang
up without answering), `drop_after` (store, then hang up), `cut` (promise
more bytes than are sent), `chunked_cut`, `trickle`, `hang`, `delay` (then
answer normally), and for `_all_docs`: `rows_cut` (the real reply broken off
after `rows` complete rows and a part of the next, the connection reset) and
`rows_end` (the same, but the reply ends cleanly there, without its footer).

Also as CouchDB does: `_all_docs` with `startkey`, `endkey`, `inclusive_end`,
`skip`, `limit`, `include_docs` and `update_seq` (rows in code point order,
`offset` the rows before the first one), `_all_dbs` in pages (`limit`,
`startkey`, `endkey`, `skip`; with `all_dbs_paging=False` it ignores them
and lists every name in the order they were created, as PouchDB Server 4.2
does), a bare `+` in a database name read as a space (encode it `%2B`),
`_revs_diff`, a design document PUT with its current `_rev` (an update), and
with `max_docs` a `_bulk_docs` of more documents than that is refused with
413.  `layout="one_line"` lays `_all_docs` out as PouchDB Server does (one
line, other field order).  With `rate`, each `_all_docs` reply is sent at
that many bytes a second: CouchDB serves one stream with one request
process, so one stream has a speed of its own.

What ran at once is counted: `most_in_flight` is the most requests of each
kind (`_all_docs`, `_bulk_docs`, ...) in flight together, `most_busy` the
most databases with a request in flight together; `Request.finished` is when
its answer was sent.  `rows_dropped` answers `_all_docs` without `rows` of
its rows, taken from the middle, header and footer intact.
"""

import bisect
import collections
import http.server
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, unquote_plus


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: bytes
    time: float = field(default_factory=time.monotonic)   # when its body had arrived
    finished: float = None                                 # when its answer was sent

    @property
    def query(self):
        """The query's parameters, each to its last value."""
        return {name: values[-1] for name, values in parse_qs(self.path.partition("?")[2]).items()}


@dataclass
class Fault:
    """What to do instead of answering: see the kinds below."""
    kind: str                 # see the module's docstring
    status: int = 500
    body: bytes = b'{"error":"unknown_error","reason":"injected"}\n'
    seconds: float = 0.0
    headers: dict = field(default_factory=dict)
    rows: int = 0


def database_of(path):
    """The database a request's path names (CouchDB reads a bare + as a space), or None."""
    first = path.partition("?")[0].split("/")[1:2]
    if not first or first[0] in ("", "_all_dbs", "_session", "_up", "_uuids"):
        return None
    return unquote_plus(first[0])


def endpoint_of(path):
    """What a request asks for, to count those in flight: `_all_docs`, `_bulk_docs`, `db`..."""
    parts = path.partition("?")[0].split("/")[1:]
    if len(parts) >= 2 and parts[1].startswith("_"):
        return parts[1]
    return parts[0] if parts and parts[0].startswith("_") else ("db" if len(parts) == 1 else "document")


@dataclass
class Store:
    databases: dict = field(default_factory=dict)   # name -> {id: doc}, the winners
    leaves: dict = field(default_factory=dict)      # name -> {id: {rev: leaf doc with _revisions}}
    known: dict = field(default_factory=dict)       # name -> {id: every revision ever stored}
    seqs: dict = field(default_factory=dict)        # name -> {id: seq of its last change}, in order
    security: dict = field(default_factory=dict)    # name -> the _security object
    update_seqs: dict = field(default_factory=dict)  # name -> the sequence of its last change
    instances: dict = field(default_factory=dict)   # name -> instance_start_time (its creation, in seconds)
    created: int = 0                                # databases created so far: the clock of instances


def revision_order(rev):
    number, _, digest = rev.partition("-")
    return int(number), digest


def history(doc):
    """The revisions a leaf names, newest first (its own, then ancestors)."""
    revisions = doc.get("_revisions")
    if not revisions:
        return [doc["_rev"]]
    return ["%d-%s" % (revisions["start"] - i, h) for i, h in enumerate(revisions["ids"])]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self):
        stub = self.server.stub
        body = self._body()
        request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        with stub.lock:
            index = len(stub.requests)
            stub.requests.append(request)
        stub.entering(request)
        try:
            self._answer(stub, index, request)
        finally:
            request.finished = time.monotonic()
            stub.leaving(request)

    def _answer(self, stub, index, request):
        fault = stub.faults(index, self.command, self.path) if stub.faults else None
        if fault is not None and fault.kind == "delay":
            stub.stopping.wait(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "drop_after":
            with stub.lock:
                stub.answer(request)
        if fault is not None and fault.kind in ("rows_cut", "rows_end"):
            with stub.lock:
                pieces = stub.all_docs_pieces(request)
            return self._rows_cut(pieces, fault)
        if fault is not None and fault.kind == "rows_dropped":
            with stub.lock:
                head, rows, separator, tail = stub.all_docs_pieces(request)
            middle = len(rows) // 2
            del rows[middle:middle + fault.rows]
            return self._send(200, head + separator.join(rows) + tail)
        if fault is not None:
            return self._fault(fault)
        with stub.lock:
            status, payload = stub.answer(request)
        all_docs = request.method == "GET" and "/_all_docs" in request.path
        if all_docs and (stub.chunking is not None or stub.rate):
            self._chunked_head(status)
            for piece in (stub.chunking or sized_chunks(16384))(payload):
                self._chunk(piece)
                if stub.rate:
                    stub.stopping.wait(len(piece) / stub.rate)
            self.wfile.write(b"0\r\n\r\n")
            return
        self._send(status, payload)

    do_GET = do_PUT = do_POST = do_DELETE = _handle

    def _send(self, status, payload, length=None, headers=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload) if length is None else length))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True

    def _chunked_head(self, status=200):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        self.wfile.flush()

    def _rows_cut(self, pieces, fault):
        """Send the reply up to `fault.rows` rows and half of the next one."""
        head, rows, separator, _ = pieces
        sent = head + b"".join(row + separator for row in rows[:fault.rows])
        if fault.rows < len(rows):
            sent += rows[fault.rows][:len(rows[fault.rows]) // 2]
        self._chunked_head()
        for piece in (self.server.stub.chunking or (lambda body: [body]))(sent):
            self._chunk(piece)
        if fault.kind == "rows_end":
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        return self._hang_up()

    def _hang_up(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _fault(self, fault):
        stub = self.server.stub
        if fault.kind == "status":
            return self._send(fault.status, fault.body, headers=fault.headers)
        if fault.kind in ("drop", "drop_after"):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault.kind == "cut":
            # Promise more bytes than are sent, then hang up.
            self._send(200, fault.body, length=len(fault.body) + 1000)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault.kind == "chunked_cut":
            self._chunked_head()
            if fault.body:
                self._chunk(fault.body)
            self.wfile.write(b"%x\r\n" % 1000 + b'{"id":"')
            self.wfile.flush()
            return self._hang_up()
        if fault.kind == "trickle":
            self._chunked_head()
            if fault.body:
                self._chunk(fault.body)
            stub.stopping.wait(fault.seconds)
            return self._hang_up()
        if fault.kind == "hang":
            stub.stopping.wait(fault.seconds)
            self.close_connection = True
            return
        raise ValueError(fault.kind)


def couchdb_chunks(body, limit=1490):
    """Cut a reply as Apache CouchDB 3.x does (``[chttpd] chunked_response_buffer``):
    a chunk is flushed before its buffer would pass ``limit`` bytes, and a
    line (a row with its separator) is never split by that decision, so a
    row longer than ``limit`` goes out as a chunk of its own."""
    chunks, buffer = [], b""
    for line in body.splitlines(keepends=True):
        if buffer and len(buffer) + len(line) > limit:
            chunks.append(buffer)
            buffer = b""
        buffer += line
    if buffer:
        chunks.append(buffer)
    return chunks


def sized_chunks(size):
    """Chunks of ``size`` bytes, cut anywhere (a proxy's or a 1 MiB server's)."""
    return lambda body: [body[i:i + size] for i in range(0, len(body), size)]


class CouchStub:
    """The stand-in server: `with CouchStub() as stub:` gives `stub.url`."""

    def __init__(self, faults=None, databases=(), lose=None, chunking=None, changes_page=None,
                 bulk_get_status=None, bulk_get_reversed=False, max_docs=None, layout="couchdb",
                 seq_suffix="g1AAAAstub", all_dbs_paging=True, rate=None, cache_rows=False):
        self.faults = faults
        self.chunking = chunking   # body -> HTTP chunks of _all_docs replies (else Content-Length)
        self.lose = lose
        self.changes_page = changes_page            # the most rows a _changes page holds
        self.bulk_get_status = bulk_get_status      # e.g. 405: _bulk_get refused, as an old server
        self.bulk_get_reversed = bulk_get_reversed  # answer _bulk_get out of order, as PouchDB Server may
        self.max_docs = max_docs                    # more documents in one _bulk_docs: 413
        self.layout = layout                        # "one_line": _all_docs as PouchDB Server lays it out
        self.seq_suffix = seq_suffix                # what follows "N-" in a sequence: opaque to clients
        self.all_dbs_paging = all_dbs_paging        # False: _all_dbs ignores limit and startkey (PouchDB Server)
        self.rate = rate                            # bytes a second of each _all_docs reply
        # Keep each row's JSON while its document is the same object (one database, not changed in
        # place): the benchmark's server then spends its time on the rate, not on encoding rows.
        self.row_cache = {} if cache_rows else None
        self.in_flight = collections.Counter()      # endpoint -> requests being answered
        self.most_in_flight = collections.Counter()
        self.busy = collections.Counter()           # database -> requests being answered
        self.most_busy = 0
        self.requests = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.store = Store()
        for name in databases:
            self.create(name)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.stub = self
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        # A short poll: shutdown() waits for it, and tests start many stubs.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def create(self, db):
        """A new, empty database, as ``PUT /db`` makes it."""
        self.store.databases[db] = {}
        self._started(db)

    def _started(self, db):
        self.store.created += 1
        self.store.instances[db] = "%d" % (1700000000 + self.store.created)

    def seq_text(self, number):
        """A sequence as the stub hands it out: CouchDB's opaque string."""
        return "%d-%s" % (number, self.seq_suffix)
    def entering(self, request):
        with self.lock:
            kind = endpoint_of(request.path)
            self.in_flight[kind] += 1
            self.most_in_flight[kind] = max(self.most_in_flight[kind], self.in_flight[kind])
            db = database_of(request.path)
            if db is not None:
                self.busy[db] += 1
                self.most_busy = max(self.most_busy, len(+self.busy))

    def leaving(self, request):
        with self.lock:
            self.in_flight[endpoint_of(request.path)] -= 1
            db = database_of(request.path)
            if db is not None:
                self.busy[db] -= 1

    def put_docs(self, db, docs):
        """Store documents as a client would while a backup runs (one change each)."""
        with self.lock:
            for doc in docs:
                if doc.get("_deleted"):
                    self.store.databases[db].pop(doc["_id"], None)
                else:
                    self.store.databases[db][doc["_id"]] = doc
                self._changed(db, doc["_id"])

    # -- revision trees ---------------------------------------------------------

    def put_leaves(self, db, docs):
        """Store docs as `_bulk_docs` with `new_edits:false` does: each is a
        leaf; the leaves its `_revisions` names as ancestors stop being ones."""
        for doc in docs:
            self._store_leaf(db, doc)

    def _store_leaf(self, db, doc):
        store = self.store
        doc_id = doc["_id"]
        tree = store.leaves.setdefault(db, {}).setdefault(doc_id, {})
        if not tree and doc_id in store.databases[db]:
            old = store.databases[db][doc_id]
            tree[old["_rev"]] = old
        names = history(doc)
        for rev in names[1:]:
            tree.pop(rev, None)
        if not any(names[0] in history(leaf)[1:] for leaf in tree.values()):
            tree[names[0]] = doc
        store.known.setdefault(db, {}).setdefault(doc_id, set()).update(names)
        winner = max(tree.values(), key=lambda d: (not d.get("_deleted"), revision_order(d["_rev"])))
        if winner.get("_deleted"):
            store.databases[db].pop(doc_id, None)
        else:
            store.databases[db][doc_id] = winner
        self._changed(db, doc_id)

    def _changed(self, db, doc_id):
        seqs = self.store.seqs.setdefault(db, {})
        seqs.pop(doc_id, None)
        self.store.update_seqs[db] = self.store.update_seqs.get(db, 0) + 1
        seqs[doc_id] = self.store.update_seqs[db]

    def leaves_of(self, db, doc_id):
        """{rev: leaf} of a document, each leaf with its `_revisions`."""
        tree = self.store.leaves.get(db, {}).get(doc_id)
        if tree is None:
            doc = self.store.databases[db].get(doc_id)
            if doc is None:
                return {}
            tree = {doc["_rev"]: doc}
        out = {}
        for rev, leaf in tree.items():
            leaf = dict(leaf)
            if "_revisions" not in leaf:
                number, _, digest = rev.partition("-")
                leaf["_revisions"] = {"start": int(number), "ids": [digest]}
            out[rev] = leaf
        return out

    def _feed(self, db):
        """Every document id in the order of its last change."""
        seqs = self.store.seqs.setdefault(db, {})
        for doc_id in sorted(set(self.store.databases[db]) - set(seqs)):
            self._changed(db, doc_id)   # stored by a test directly: listed now
        trees = self.store.leaves.get(db, {})
        return [(seq, doc_id) for doc_id, seq in seqs.items()
                if trees.get(doc_id) or doc_id in self.store.databases[db]]

    def _changes(self, db, query):
        args = parse_qs(query)
        since = args.get("since", ["0"])[0]
        since = int(since.split("-")[0]) if since not in ("", "now") else 0
        limit = int(args.get("limit", ["1000000000"])[0])
        if self.changes_page:
            limit = min(limit, self.changes_page)
        rows = [(seq, doc_id) for seq, doc_id in self._feed(db) if seq > since]
        page, rest = rows[:limit], rows[limit:]
        lines = []
        for seq, doc_id in page:
            leaves = self.leaves_of(db, doc_id)
            row = {"seq": self.seq_text(seq), "id": doc_id,
                   "changes": [{"rev": rev} for rev in sorted(leaves, key=revision_order, reverse=True)]}
            if all(leaf.get("_deleted") for leaf in leaves.values()):
                row["deleted"] = True
            lines.append(json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode())
        last = page[-1][0] if page else since
        # CouchDB's layout: a row a line, last_seq an opaque string, pending.
        return 200, (b'{"results":[\n' + b",\n".join(lines) + b'\n],\n"last_seq":' + json.dumps(
            self.seq_text(last), ensure_ascii=False).encode() + b',"pending":%d}\n' % len(rest))

    def _bulk_get(self, db, body):
        if self.bulk_get_status:
            return self.bulk_get_status, b'{"error":"method_not_allowed","reason":"Only GET,HEAD allowed"}\n'
        results = []
        for wanted in json.loads(body)["docs"]:
            leaf = self.leaves_of(db, wanted["id"]).get(wanted.get("rev"))
            if leaf is None:
                entry = {"error": {"id": wanted["id"], "rev": wanted.get("rev"), "error": "not_found",
                                   "reason": "missing"}}
            else:
                entry = {"ok": leaf}
            results.append({"id": wanted["id"], "docs": [entry]})
        if self.bulk_get_reversed:
            results.reverse()
        return 200, json.dumps({"results": results}, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    def _revs_diff(self, db, body):
        answer = {}
        for doc_id, revs in json.loads(body).items():
            known = self.store.known.get(db, {}).get(doc_id, set()) | set(self.leaves_of(db, doc_id))
            missing = [rev for rev in revs if rev not in known]
            if missing:
                answer[doc_id] = {"missing": missing}
        return 200, json.dumps(answer).encode() + b"\n"

    # -- the CouchDB endpoints ------------------------------------------------

    def answer(self, request):
        path, _, query = request.path.partition("?")
        parts = [unquote(p) for p in path.split("/")[1:]]
        if parts:
            parts[0] = database_of(path) or parts[0]
        dbs = self.store.databases
        if request.method == "GET" and parts == ["_all_dbs"]:
            return 200, json.dumps(self._all_dbs(request.query)).encode() + b"\n"
        if not parts or parts[0] not in dbs and not (request.method == "PUT" and len(parts) == 1):
            return 404, b'{"error":"not_found","reason":"Database does not exist."}\n'
        db = parts[0]
        if request.method == "DELETE" and len(parts) == 1:
            del dbs[db]
            for kept in (self.store.leaves, self.store.known, self.store.seqs, self.store.security,
                         self.store.update_seqs, self.store.instances):
                kept.pop(db, None)
            return 200, b'{"ok":true}\n'
        if request.method == "GET" and len(parts) == 1:
            self._feed(db)   # documents a test stored directly get their sequence
            if db not in self.store.instances:   # a database a test stored directly
                self._started(db)
            created = self.store.instances[db]
            return 200, json.dumps({"db_name": db, "doc_count": len(dbs[db]), "instance_start_time": created,
                                    "update_seq": self.seq_text(self.store.update_seqs.get(db, 0))}).encode() + b"\n"
        if request.method == "PUT" and len(parts) == 1:
            if db in dbs:
                return 412, b'{"error":"file_exists","reason":"The database could not be created, the file already exists."}\n'
            self.create(db)
            return 201, b'{"ok":true}\n'
        if parts[1:] == ["_security"]:
            if request.method == "PUT":
                self.store.security[db] = json.loads(request.body)
                return 200, b'{"ok":true}\n'
            return 200, json.dumps(self.store.security.get(db, {})).encode() + b"\n"
        if request.method == "PUT" and len(parts) >= 2:
            doc_id = "/".join(parts[1:])
            doc = json.loads(request.body)
            current = dbs[db].get(doc_id)
            if current is not None and doc.get("_rev") != current["_rev"]:
                return 409, b'{"error":"conflict","reason":"Document update conflict."}\n'
            generation = int(current["_rev"].split("-")[0]) + 1 if current is not None else 1
            doc["_id"] = doc_id
            doc["_rev"] = "%d-stub" % generation
            dbs[db][doc_id] = doc
            return 201, json.dumps({"ok": True, "id": doc_id, "rev": doc["_rev"]}).encode() + b"\n"
        if request.method == "POST" and parts[1:] == ["_bulk_docs"]:
            payload = json.loads(request.body)
            if self.max_docs is not None and len(payload["docs"]) > self.max_docs:
                return 413, b'{"error":"too_large","reason":"the request entity is too large"}\n'
            for doc in payload["docs"]:
                if self.lose is not None and self.lose(doc["_id"]):
                    continue
                if "_revisions" in doc or doc["_id"] in self.store.leaves.get(db, {}) or doc.get("_deleted"):
                    self._store_leaf(db, doc)
                else:
                    dbs[db][doc["_id"]] = doc
                    self.store.known.setdefault(db, {}).setdefault(doc["_id"], set()).add(doc["_rev"])
                    self._changed(db, doc["_id"])
            return 201, b"[]\n"
        if request.method == "GET" and parts[1:] == ["_changes"]:
            return self._changes(db, query)
        if request.method == "POST" and parts[1:] == ["_bulk_get"]:
            return self._bulk_get(db, request.body)
        if request.method == "POST" and parts[1:] == ["_revs_diff"]:
            return self._revs_diff(db, request.body)
        if request.method == "GET" and len(parts) >= 2 and "open_revs=all" in query:
            leaves = self.leaves_of(db, "/".join(parts[1:]))
            if not leaves:
                return 404, b'{"error":"not_found","reason":"missing"}\n'
            return 200, json.dumps([{"ok": leaves[rev]} for rev in sorted(leaves, key=revision_order)],
                                   separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        if request.method == "GET" and parts[1:] == ["_all_docs"]:
            head, rows, separator, tail = self.all_docs_pieces(request)
            return 200, head + separator.join(rows) + tail
        if request.method == "GET" and len(parts) >= 2 and (parts[1] == "_design" or not parts[1].startswith("_")):
            doc = dbs[db].get("/".join(parts[1:]))
            if doc is None:
                return 404, b'{"error":"not_found","reason":"missing"}\n'
            return 200, json.dumps({k: v for k, v in doc.items() if k != "_revisions"}).encode() + b"\n"
        return 400, b'{"error":"bad_request","reason":"not in the stub"}\n'

    def _all_dbs(self, query):
        names = list(self.store.databases)
        if not self.all_dbs_paging:
            return names
        first, last = key_range(sorted(names), query)
        return sorted(names)[first:last]

    def _sorted_ids(self, db, docs):
        if self.row_cache is None:
            return sorted(docs)
        key = ("ids", id(docs), len(docs), self.store.update_seqs.get(db, 0))
        if key not in self.row_cache:
            self.row_cache[key] = sorted(docs)
        return self.row_cache[key]

    def all_docs_pieces(self, request):
        """The `_all_docs` reply as (head, rows, separator, tail)."""
        query = request.query
        db = database_of(request.path)
        docs = self.store.databases[db]
        ids = self._sorted_ids(db, docs)
        first, last = key_range(ids, query)
        include_docs = query.get("include_docs") == "true"
        rows = []
        for doc_id in ids[first:last]:
            if self.row_cache is not None:
                cached = self.row_cache.get((doc_id, include_docs))
                if cached is not None and cached[0] is docs[doc_id]:
                    rows.append(cached[1])
                    continue
            doc = {k: v for k, v in docs[doc_id].items() if k != "_revisions"}
            value = {"rev": doc["_rev"]}
            if self.layout == "one_line":
                row = {"doc": doc, "id": doc_id, "key": doc_id, "value": value}
            else:
                row = {"id": doc_id, "key": doc_id, "value": value, "doc": doc}
            if not include_docs:
                del row["doc"]
            rows.append(json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode())
            if self.row_cache is not None:
                self.row_cache[doc_id, include_docs] = (docs[doc_id], rows[-1])
        seq = b',"update_seq":' + json.dumps(self.seq_text(self.store.update_seqs.get(db, 0))).encode() \
            if query.get("update_seq") == "true" else b""
        if self.layout == "one_line":
            return b'{"total_rows":%d,"offset":%d%s,"rows":[' % (len(ids), first, seq), rows, b",", b"]}"
        # CouchDB's layout: one row a line, CRLF between, an empty line when no rows.
        return (b'{"total_rows":%d,"offset":%d%s,"rows":[\r\n' % (len(ids), first, seq), rows, b",\r\n",
                b"\r\n]}\n")


def key_range(keys, query):
    """The slice of sorted ``keys`` a CouchDB range query asks for: (first, last)."""
    start = query.get("startkey", query.get("start_key"))
    end = query.get("endkey", query.get("end_key"))
    first = 0 if start is None else bisect.bisect_left(keys, json.loads(start))
    last = len(keys)
    if end is not None:
        inclusive = query.get("inclusive_end", "true") != "false"
        last = (bisect.bisect_right if inclusive else bisect.bisect_left)(keys, json.loads(end))
    first = min(first + int(query.get("skip", 0)), len(keys))
    if "limit" in query:
        last = min(last, first + int(query["limit"]))
    return first, max(first, last)
