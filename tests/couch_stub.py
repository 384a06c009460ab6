"""A small in-process CouchDB stand-in for tests that need a server on demand.

It keeps databases and documents in memory and answers the few endpoints the
port uses (`GET /_all_dbs`, `PUT /db`, `DELETE /db`, `PUT /db/_design/x`,
`POST /db/_bulk_docs`, `GET /db/_all_docs`) the way Apache CouchDB lays them
out.  Every request is recorded.  A test can replace the answer to any
request with `faults`: a callable taking the request's index, method and path
and returning None (answer normally) or one of the actions of `Fault`.  With
`chunking`, `_all_docs` replies go out chunked as it cuts them (see
`couchdb_chunks`).
"""

import http.server
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: bytes
    time: float = field(default_factory=time.monotonic)   # when its body had arrived


@dataclass
class Fault:
    """What to do instead of answering: see the kinds below."""
    kind: str                 # see the module's docstring
    status: int = 500
    body: bytes = b'{"error":"unknown_error","reason":"injected"}\n'
    seconds: float = 0.0


@dataclass
class Store:
    databases: dict = field(default_factory=dict)   # name -> {id: doc}


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
        fault = stub.faults(index, self.command, self.path) if stub.faults else None
        if fault is not None and fault.kind == "delay":
            stub.stopping.wait(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "drop_after":
            with stub.lock:
                stub.answer(request)
        if fault is not None:
            return self._fault(fault)
        with stub.lock:
            status, payload = stub.answer(request)
        if stub.chunking is not None and request.method == "GET" and "/_all_docs" in request.path:
            self._chunked_head(status)
            for piece in stub.chunking(payload):
                self._chunk(piece)
            self.wfile.write(b"0\r\n\r\n")
            return
        self._send(status, payload)

    do_GET = do_PUT = do_POST = do_DELETE = _handle

    def _send(self, status, payload, length=None):
        self.send_response(status)
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

    def _hang_up(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _fault(self, fault):
        stub = self.server.stub
        if fault.kind == "status":
            return self._send(fault.status, fault.body)
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

    def __init__(self, faults=None, databases=(), lose=None, chunking=None):
        self.faults = faults
        self.chunking = chunking   # body -> HTTP chunks of _all_docs replies (else Content-Length)
        self.lose = lose
        self.requests = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.store = Store({name: {} for name in databases})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.stub = self
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    # -- the CouchDB endpoints ------------------------------------------------

    def answer(self, request):
        path, _, query = request.path.partition("?")
        parts = [unquote(p) for p in path.split("/")[1:]]
        dbs = self.store.databases
        if request.method == "GET" and parts == ["_all_dbs"]:
            return 200, json.dumps(sorted(dbs)).encode() + b"\n"
        if not parts or parts[0] not in dbs and not (request.method == "PUT" and len(parts) == 1):
            return 404, b'{"error":"not_found","reason":"Database does not exist."}\n'
        db = parts[0]
        if request.method == "DELETE" and len(parts) == 1:
            del dbs[db]
            return 200, b'{"ok":true}\n'
        if request.method == "PUT" and len(parts) == 1:
            if db in dbs:
                return 412, b'{"error":"file_exists","reason":"The database could not be created, the file already exists."}\n'
            dbs[db] = {}
            return 201, b'{"ok":true}\n'
        if request.method == "PUT" and len(parts) >= 2:
            doc_id = "/".join(parts[1:])
            doc = json.loads(request.body)
            if doc_id in dbs[db]:
                return 409, b'{"error":"conflict","reason":"Document update conflict."}\n'
            doc["_id"] = doc_id
            doc["_rev"] = "1-stub"
            dbs[db][doc_id] = doc
            return 201, json.dumps({"ok": True, "id": doc_id, "rev": "1-stub"}).encode() + b"\n"
        if request.method == "POST" and parts[1:] == ["_bulk_docs"]:
            payload = json.loads(request.body)
            for doc in payload["docs"]:
                if self.lose is None or not self.lose(doc["_id"]):
                    dbs[db][doc["_id"]] = doc
            return 201, b"[]\n"
        if request.method == "GET" and parts[1:] == ["_all_docs"]:
            rows = []
            for doc_id in sorted(dbs[db]):
                doc = dbs[db][doc_id]
                rows.append(json.dumps({"id": doc_id, "key": doc_id, "value": {"rev": doc["_rev"]}, "doc": doc},
                                       separators=(",", ":"), ensure_ascii=False).encode())
            # CouchDB's layout: one row a line, CRLF between, an empty line when no rows.
            body = b'{"total_rows":%d,"offset":0,"rows":[\r\n' % len(rows)
            body += b",\r\n".join(rows) + b"\r\n]}\n"
            return 200, body
        return 400, b'{"error":"bad_request","reason":"not in the stub"}\n'
