"""Requests in flight share kept-alive connections instead of opening one each."""

import http.server
import threading

from helpers import make_dump, run_port


class _KeepAlive(http.server.BaseHTTPRequestHandler):
    """A CouchDB stand-in that keeps connections open, as CouchDB does."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def setup(self):
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.command == "GET" and self.path == "/_all_dbs":
            payload = b'["db"]\n'
        elif self.command == "POST" and self.path == "/db/_bulk_docs":
            payload = b"[" + b",".join(b'{"ok":true}' for _ in range(body.count(b"\n") - 2)) + b"]\n"
        else:
            payload = b'{"error":"not_found","reason":"missing"}\n'
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer


def test_a_restore_with_jobs_reuses_its_connections(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeepAlive)
    server.daemon_threads = True
    server.lock = threading.Lock()
    server.connections = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dump, _ = make_dump(1200)
        (tmp_path / "dump.json").write_bytes(dump)
        result = run_port(["-r", "-q", "--no-progress", "-d", "db", "-f", "dump.json", "-l", "50", "--jobs", "3"],
                          tmp_path, server=server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stdout + result.stderr
    # 25 requests (the list of databases, 24 chunks), at most 3 at once:
    # a pool that kept one connection would open one for nearly every chunk.
    assert server.connections <= 4, server.connections
