#!/usr/bin/env python3
"""Run a throw-away PouchDB Server (a CouchDB-compatible HTTP server) for tests.

The server is the npm package pinned in tests/tools/pouchdb/package-lock.json
(pouchdb-server 4.2.0), installed into tests/tools/pouchdb/node_modules by
ensure_installed() and started in-memory on 127.0.0.1 by PouchDBServer.

Standard library only, so it can be imported by conftest.py, by .ci/run
helpers, or run by hand:

    python3 tests/tools/pouchdb_server.py          # prints the URL until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent / "pouchdb"
NODE_MODULES = PACKAGE_DIR / "node_modules"
SERVER_JS = NODE_MODULES / "pouchdb-server" / "bin" / "pouchdb-server"
STAMP = NODE_MODULES / ".couchdb-dump-install-stamp"
LOCK = PACKAGE_DIR / ".install.lock"

# Optional dependencies are leveldown and sqlite3 (on-disk adapters). The
# in-memory server needs neither; sqlite3 4.2.0 has no prebuilt binary
# reachable from here and compiles from source for ~1.5 minutes, so both
# are left out. With them omitted no package has an install script left;
# --ignore-scripts makes sure nothing tries to fetch a binary anyway.
NPM_CI_ARGS = [
    "ci",
    "--prefix", str(PACKAGE_DIR),
    "--omit=optional",
    "--ignore-scripts",
    "--no-audit",
    "--no-fund",
    "--no-update-notifier",
]

INSTALL_TIMEOUT = 15 * 60
START_TIMEOUT = 60.0


def node_available() -> str | None:
    """Return None if node and npm can be used, else why not."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found on PATH (PouchDB Server needs Node.js and npm)"
    try:
        out = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"node does not run: {exc}"
    if out.returncode != 0:
        return f"node --version failed: {out.stderr.strip() or out.stdout.strip()}"
    return None


def _install_fingerprint() -> str:
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        h.update(name.encode() + b"\0")
        h.update((PACKAGE_DIR / name).read_bytes())
    h.update(" ".join(NPM_CI_ARGS[3:]).encode())  # flags, not the path
    try:
        node = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        node = "?"
    h.update(node.encode())
    return h.hexdigest()


def _is_installed(fingerprint: str) -> bool:
    try:
        return SERVER_JS.is_file() and STAMP.read_text().strip() == fingerprint
    except OSError:
        return False


def ensure_installed(verbose: bool = False) -> Path:
    """Install pouchdb-server into tests/tools/pouchdb/node_modules unless it is
    already there for the current package-lock.json. Safe to call from
    several processes at once (an flock serialises them). Returns the
    node_modules path. Raises RuntimeError if node/npm are missing or
    npm ci fails."""
    reason = node_available()
    if reason:
        raise RuntimeError(reason)
    fingerprint = _install_fingerprint()
    if _is_installed(fingerprint):
        return NODE_MODULES
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _is_installed(fingerprint):  # someone else did it meanwhile
                return NODE_MODULES
            env = dict(os.environ, npm_config_update_notifier="false")
            started = time.monotonic()
            proc = subprocess.run(
                ["npm", *NPM_CI_ARGS],
                cwd=PACKAGE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=None if verbose else subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=INSTALL_TIMEOUT,
            )
            if proc.returncode != 0 or not SERVER_JS.is_file():
                raise RuntimeError(
                    f"npm {' '.join(NPM_CI_ARGS)} failed (exit {proc.returncode})"
                    f" after {time.monotonic() - started:.0f}s:\n{(proc.stdout or '')[-4000:]}"
                )
            STAMP.write_text(fingerprint + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return NODE_MODULES


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when the parent dies, so a
    killed test run leaves no server behind. Best effort elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


class PouchDBServer:
    """Context manager running `pouchdb-server --in-memory` on 127.0.0.1.

    The server runs in its own process group with a temporary directory as
    its cwd, where it writes its config.json and log.txt (nothing lands in
    the repository). Its stdout/stderr go to `output.log` there; see
    output(). `admins`, if given ({"name": "password"}), is written into
    config.json before start, ending the "admin party": then Basic auth with
    those credentials works, and other names get 401.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        start_timeout: float = START_TIMEOUT,
        admins: dict[str, str] | None = None,
    ):
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self.admins = admins
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------
    def __enter__(self) -> "PouchDBServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if not SERVER_JS.is_file():
            raise RuntimeError(f"{SERVER_JS} missing: call ensure_installed() first")
        self.workdir = Path(tempfile.mkdtemp(prefix="pouchdb-server-"))
        if self.admins:
            (self.workdir / "config.json").write_text(
                json.dumps({"admins": self.admins})
            )
        attempts = 1 if self.port else 3  # a picked free port can be raced
        for attempt in range(attempts):
            port = self.port or _free_port(self.host)
            try:
                self._spawn_and_wait(port)
                return
            except _PortTaken:
                continue
            except BaseException:
                self.stop()
                raise
        self.stop()
        raise RuntimeError(f"pouchdb-server: no free port after {attempts} tries\n{self.output()}")

    def _spawn_and_wait(self, port: int) -> None:
        assert self.workdir is not None
        log = open(self.workdir / "output.log", "ab")
        try:
            self.proc = subprocess.Popen(
                [
                    "node", str(SERVER_JS),
                    "--in-memory",
                    "--host", self.host,
                    "--port", str(port),
                    "--no-color",
                    "--config", str(self.workdir / "config.json"),
                ],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group, killed as one
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        self.port = port
        self.url = f"http://{self.host}:{port}"
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.output()
                self._reap()
                if "EADDRINUSE" in out or "already in use" in out:
                    raise _PortTaken(out)
                raise RuntimeError(
                    f"pouchdb-server exited with {self.proc.returncode} before answering"
                    f" GET {self.url}/\n--- server output ---\n{out}"
                )
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as resp:
                    body = json.loads(resp.read())
                if resp.status == 200 and isinstance(body, dict):
                    return
                last_error = f"GET / answered {resp.status}: {body!r}"
            except (OSError, ValueError) as exc:  # URLError is an OSError
                last_error = str(exc)
            time.sleep(0.1)
        raise RuntimeError(
            f"pouchdb-server did not answer GET {self.url}/ within"
            f" {self.start_timeout:.0f}s (last: {last_error})\n--- server output ---\n{self.output()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """What the server printed so far (its log lines and any crash)."""
        if self.workdir is None:
            return ""
        try:
            return (self.workdir / "output.log").read_text(errors="replace")
        except OSError:
            return ""

    def _reap(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop(self) -> None:
        self._reap()
        self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


class _PortTaken(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=None, help="default: a free port")
    ap.add_argument(
        "--admin", metavar="NAME:PASSWORD", default=None,
        help="create this server admin (ends the admin party)",
    )
    args = ap.parse_args(argv)

    def _stop(signum, _frame):
        raise KeyboardInterrupt  # leave the with-block: kills the server

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _stop)
    reason = node_available()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    ensure_installed(verbose=True)
    admins = None
    if args.admin:
        name, _, password = args.admin.partition(":")
        admins = {name: password}
    with PouchDBServer(port=args.port, admins=admins) as server:
        print(server.url, flush=True)
        print(f"(server output: {server.workdir}/output.log; Ctrl-C to stop)", file=sys.stderr)
        try:
            while server.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
        print(f"pouchdb-server exited:\n{server.output()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
