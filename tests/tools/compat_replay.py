"""Replay the golden couchdb-dump.sh recordings against a program under test.

fixtures/compat/README.md defines the recordings: each case directory holds
the command line, the HTTP exchanges the bash script had with a real CouchDB,
its stdout and the files it left. This module serves those exchanges from a
local HTTP server, runs a program with the case's arguments, and lists every
way the program's run differs from what the case expects.
"""

from __future__ import annotations

import datetime
import gzip
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from helpers import REPO, clean_environment, closed_port

FIXTURES = REPO / "fixtures" / "compat"

# CouchDB streams _all_docs replies; serving them in pieces of this size makes
# the port's reader cope with a body that arrives in several chunks.
CHUNK_SIZE = 64 * 1024

RUN_TIMEOUT = 120  # seconds; the slowest recorded case retries for a few seconds

# How a -T stamp looks (date +%Y%m%d-%H%M%S) and how cases write it.
TS_PLACEHOLDER = "{TS}"
TS_PATTERN = r"\d{8}-\d{6}"
TS_FORMAT = "%Y%m%d-%H%M%S"


def case_dirs(root: Path = FIXTURES) -> list[Path]:
    """Every case directory under root, sorted by name."""
    return sorted(p for p in root.iterdir() if (p / "case.json").is_file())


def load_case(path) -> dict:
    """Read a case: case.json's keys plus `dir` (its Path) and `exchanges`."""
    path = Path(path)
    case = json.loads((path / "case.json").read_text(encoding="utf-8"))
    case["dir"] = path
    case["exchanges"] = json.loads((path / "exchanges.json").read_text(encoding="utf-8"))
    return case


def _body_bytes(case_dir: Path, message: dict | None) -> bytes:
    """The recorded body of a request or response; a missing body is empty."""
    if not message or not message.get("body"):
        return b""
    return (Path(case_dir) / message["body"]).read_bytes()


# --------------------------------------------------------------------------
# The replay server


class _ReplayHandler(http.server.BaseHTTPRequestHandler):
    """Answers one request per connection from the server's recording."""

    protocol_version = "HTTP/1.1"  # needed for chunked replies and 100-continue
    # A client that stops sending mid-request must not pin a thread forever.
    timeout = 30

    def handle(self):
        # One request per connection (every reply says Connection: close)
        # keeps the replay order unambiguous.
        try:
            self.handle_one_request()
        except (OSError, ValueError):
            # A client that hangs up abruptly (a killed port, a timeout) or
            # sends garbage is part of testing, not a server fault: end this
            # connection quietly.
            pass

    def log_message(self, format, *args):
        pass  # the test output is the place for differences, not access logs

    def do_GET(self):
        self._replay()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_COPY = do_PATCH = do_GET

    def _replay(self):
        server: _ReplayHTTPServer = self.server  # type: ignore[assignment]
        body = self._read_body()
        if body is None:
            return  # the client went away mid-body: nobody to answer
        headers = {name.lower(): value for name, value in self.headers.items()}
        index, exchange = server.replay.record(self.command, self.path, headers, body)
        if exchange is None:
            self._send_mismatch(index, None)
            return
        expected = exchange["request"]
        if (self.command, self.path) != (expected["method"], expected["path"]):
            self._send_mismatch(index, expected)
            return
        response = exchange["response"]
        if response is None:
            return  # recorded drop: close without a word
        payload = _body_bytes(server.replay.case_dir, response)
        chunked = self.command == "GET" and "_all_docs" in self.path
        self._send(response["status"], response["content_type"], payload, chunked)

    def _read_body(self) -> bytes | None:
        """Read the whole request body (Content-Length or chunked).

        Returns None when the client closed the connection before sending all
        of it.
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        return body if len(body) == length else None

    def _read_chunked(self) -> bytes | None:
        parts = []
        while True:
            line = self.rfile.readline()
            if not line:
                return None
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            data = self.rfile.read(size + 2)  # the chunk and its CRLF
            if len(data) != size + 2:
                return None
            parts.append(data[:size])
        while True:  # trailer fields, up to the empty line
            line = self.rfile.readline()
            if not line:
                return None
            if line in (b"\r\n", b"\n"):
                return b"".join(parts)

    def _send_mismatch(self, index: int, expected: dict | None):
        error = {
            "error": "replay_mismatch",
            "reason": f"request #{index} does not match the recording",
            "index": index,
            "got": {"method": self.command, "path": self.path},
            "expected": (
                {"method": expected["method"], "path": expected["path"]}
                if expected
                else "no request (the recording has ended)"
            ),
        }
        self._send(500, "application/json", json.dumps(error).encode() + b"\n", False)

    def _send(self, status: int, content_type: str, payload: bytes, chunked: bool):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Connection", "close")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if not chunked:
            self.wfile.write(payload)
            return
        for start in range(0, len(payload), CHUNK_SIZE):
            piece = payload[start : start + CHUNK_SIZE]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")


class _ReplayHTTPServer(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the replay state for its handlers."""

    daemon_threads = True

    def __init__(self, replay: "ReplayServer"):
        self.replay = replay
        super().__init__(("127.0.0.1", 0), _ReplayHandler)


class ReplayServer:
    """A local HTTP server answering the i-th request with the i-th recording.

    A request whose method or path differs from the recording, or that comes
    after the recording has ended, gets a 500 `replay_mismatch` naming what
    was expected. Every request is kept, in arrival order, in `.requests` as
    {method, path, headers (lower-cased names), body (bytes)}.

    The server listens from construction on (`.port`); use it as a context
    manager, or call start() and stop().
    """

    def __init__(self, exchanges: list[dict], case_dir):
        self.exchanges = exchanges
        self.case_dir = Path(case_dir)
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._httpd = _ReplayHTTPServer(self)
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    def record(self, method: str, path: str, headers: dict, body: bytes):
        """Keep a request; return its index and the exchange recorded there."""
        with self._lock:
            index = len(self.requests)
            self.requests.append(
                {"method": method, "path": path, "headers": headers, "body": body}
            )
        exchange = self.exchanges[index] if index < len(self.exchanges) else None
        return index, exchange

    def start(self) -> "ReplayServer":
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            # shutdown() waits for the next poll: keep stopping fast.
            kwargs={"poll_interval": 0.05},
            name=f"replay:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self):
        """Stop serving and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> "ReplayServer":
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


# --------------------------------------------------------------------------
# Running a case


@dataclass
class RunResult:
    """What a program did when run on a case."""

    rc: int | None  # None: killed after RUN_TIMEOUT
    stdout: bytes
    stderr: bytes
    files: dict[str, bytes | None]  # top-level names left; None for a directory
    requests: list[dict]  # as ReplayServer.requests
    served_case: str  # the case whose exchanges were replayed
    exchanges: list[dict]  # those exchanges
    exchanges_dir: Path  # where their bodies/ live
    started: datetime.datetime  # local time, for judging a -T stamp
    finished: datetime.datetime


def _served_case(case: dict) -> dict:
    """The case whose exchanges the port must have: requests_like, or itself."""
    other = case.get("expect_port", {}).get("requests_like")
    return load_case(case["dir"].parent / other) if other else case


def _substitute(text: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def run_case(case_dir, program, tmp_path, *, before=None, args=None, env=None) -> RunResult:
    """Run `python program <args>` on a case against its replayed server.

    The working directory is tmp_path/work holding only the case's before/
    files; COUCHDB_USER/COUCHDB_PASS come only from the case's env.  A
    variant of a case (the same exchanges, other input files, arguments or
    environment) passes `before` ({name: bytes}), `args` or `env`.
    """
    case = load_case(case_dir)
    if args is not None:
        case["args"] = list(args)
    if env is not None:
        case["env"] = dict(env)
    served = _served_case(case)
    workdir = Path(tmp_path) / "work"
    before_dir = case["dir"] / "before"
    if before is not None:
        workdir.mkdir(parents=True)
        for name, data in before.items():
            (workdir / name).write_bytes(data)
    elif before_dir.is_dir():
        shutil.copytree(before_dir, workdir)
    else:
        workdir.mkdir(parents=True)

    with ReplayServer(served["exchanges"], served["dir"]) as server:
        values = {"{PORT}": str(server.port)}
        if any("{CLOSED_PORT}" in arg for arg in case["args"]):
            values["{CLOSED_PORT}"] = str(closed_port())
        args = [_substitute(arg, values) for arg in case["args"]]
        env = clean_environment()
        env.update({k: _substitute(v, values) for k, v in case["env"].items()})

        started = datetime.datetime.now()
        try:
            proc = subprocess.run(
                [sys.executable, str(program), *args],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=RUN_TIMEOUT,
            )
            rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as timeout:
            rc, stdout, stderr = None, timeout.stdout or b"", timeout.stderr or b""
        finished = datetime.datetime.now()
        requests = list(server.requests)

    files = {
        entry.name: None if entry.is_dir() else entry.read_bytes()
        for entry in sorted(workdir.iterdir())
    }
    return RunResult(
        rc=rc,
        stdout=stdout,
        stderr=stderr,
        files=files,
        requests=requests,
        served_case=served["name"],
        exchanges=served["exchanges"],
        exchanges_dir=served["dir"],
        started=started,
        finished=finished,
    )


# --------------------------------------------------------------------------
# Comparing a run with the case


def _clip(data, limit: int = 160) -> str:
    """repr() of some bytes or text, cut to a readable length."""
    text = repr(data)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_difference(expected: bytes, actual: bytes) -> str:
    """Where two byte strings first differ, by line, with sizes."""
    exp_lines = expected.splitlines(keepends=True)
    act_lines = actual.splitlines(keepends=True)
    sizes = (
        f"expected {len(expected)} bytes / {len(exp_lines)} lines, "
        f"got {len(actual)} bytes / {len(act_lines)} lines"
    )
    for number, (exp, act) in enumerate(zip(exp_lines, act_lines), start=1):
        if exp != act:
            # Dumps hold long lines: show the neighbourhood of the first
            # differing byte, not just the start of the line.
            column = next(
                (i for i, (a, b) in enumerate(zip(exp, act)) if a != b), min(len(exp), len(act))
            )
            start = max(0, column - 40)
            return (
                f"{sizes}; first difference at line {number}, column {column + 1}: "
                f"expected {_clip(exp[start : column + 60])}, got {_clip(act[start : column + 60])}"
            )
    common = min(len(exp_lines), len(act_lines))
    if len(act_lines) < len(exp_lines):
        return f"{sizes}; output stops after line {common}, next expected line {_clip(exp_lines[common])}"
    return f"{sizes}; unexpected extra line {common + 1}: {_clip(act_lines[common])}"


def scratch_pattern(file_arg: str | None) -> re.Pattern:
    """Names of the bash script's work files (README, "Scratch files").

    `<file>` is the -f argument; without one, any name stands in for it.
    """
    f = re.escape(file_arg) if file_arg else ".+"
    return re.compile(
        "|".join(
            [
                r"tmp\.out",
                rf"{f}-design(\.\d+)?",
                rf"{f}-design\.out\.\d+",
                rf"{f}-nodesign(\.split.{{3}})?",
                rf"{f}\.split.{{3}}",
                r".*\.sedtmp",
                r".*\.tmp",
                r".*\.thread.{2}",
            ]
        ),
        re.DOTALL,
    )


def _file_arg(args: list[str]) -> str | None:
    """The value of the last -f option, as getopts would see it."""
    value = None
    for i, arg in enumerate(args):
        if arg == "-f" and i + 1 < len(args):
            value = args[i + 1]
    return value


def _find_stamp(templates: list[str], texts: list[str], problems: list[str]) -> str | None:
    """The one -T stamp the run used, read where a template has {TS}.

    Each template (an expected name or stdout line) is matched against the
    texts the run produced; every stamp found must be the same.
    """
    stamps = set()
    for template in templates:
        if TS_PLACEHOLDER not in template:
            continue
        pattern = re.escape(template).replace(re.escape(TS_PLACEHOLDER), f"({TS_PATTERN})")
        for text in texts:
            stamps.update(re.findall(pattern, text))
    if len(stamps) > 1:
        problems.append(f"timestamp: several stamps used: {sorted(stamps)}")
    return min(stamps) if stamps else None


def _check_stamp(stamp: str, result: RunResult, problems: list[str]):
    """A stamp must be a real local date-time taken during the run."""
    try:
        when = datetime.datetime.strptime(stamp, TS_FORMAT)
    except ValueError:
        problems.append(f"timestamp: {stamp!r} is not a {TS_FORMAT} date-time")
        return
    slack = datetime.timedelta(seconds=1)
    if not (result.started.replace(microsecond=0) - slack <= when <= result.finished + slack):
        problems.append(
            f"timestamp: {stamp} is not the local time of the run "
            f"({result.started:{TS_FORMAT}} .. {result.finished:{TS_FORMAT}})"
        )


def _gunzip(data: bytes) -> bytes | None:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error):
        return None


def _compare_rc(case: dict, result: RunResult, problems: list[str]):
    expected = case.get("expect_port", {}).get("rc", case["rc"])
    if result.rc is None:
        problems.append(f"exit code: killed after {RUN_TIMEOUT} s without finishing")
        return
    ok = result.rc != 0 if expected == "nonzero" else result.rc == expected
    if not ok:
        tail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
        problems.append(
            f"exit code: expected {expected}, got {result.rc}"
            + ("; stderr ends with:\n    " + "\n    ".join(tail) if tail else "")
        )


def _compare_stdout(case: dict, result: RunResult, values: dict[str, str], problems: list[str]):
    expect = case.get("expect_port", {})
    if "stdout_contains" in expect:
        missing = [s for s in expect["stdout_contains"] if _substitute(s, values).encode() not in result.stdout]
        if missing:
            shown = result.stdout.decode("utf-8", "replace")
            problems.append(f"stdout lacks {missing}; stdout was:\n{shown}")
        return
    if expect.get("stdout_free"):
        return
    expected = _substitute((case["dir"] / "stdout.txt").read_text(encoding="utf-8"), values).encode()
    if result.stdout != expected:
        problems.append("stdout: " + describe_difference(expected, result.stdout))


def _compare_files(case: dict, result: RunResult, values: dict[str, str], problems: list[str]):
    expect = case.get("expect_port", {})
    scratch = scratch_pattern(_file_arg(case["args"]))
    templates = [
        name for name in expect.get("files_after", case["files_after"]) if not scratch.fullmatch(name)
    ]
    expected_names = {_substitute(name, values): name for name in templates}

    for name in sorted(set(result.files) - set(expected_names)):
        kind = "scratch file" if scratch.fullmatch(name) else "file"
        problems.append(f"files: unexpected {kind} {name!r} left behind")
    for name in sorted(set(expected_names) - set(result.files)):
        problems.append(f"files: expected {name!r}, but it is missing")

    for name, template in sorted(expected_names.items()):
        if name not in result.files:
            continue
        actual = result.files[name]
        if actual is None:
            problems.append(f"files: {name!r} is a directory, expected a file")
            continue
        recorded = case["dir"] / "expected" / template
        if not recorded.is_file():
            recorded = case["dir"] / "after" / template
        if not recorded.is_file():
            problems.append(f"files: no recorded bytes for {name!r} in expected/ or after/")
            continue
        wanted = recorded.read_bytes()
        if name.endswith(".gz"):
            wanted, actual = _gunzip(wanted), _gunzip(actual)
            if actual is None:
                problems.append(f"files: {name!r} is not valid gzip data")
                continue
        if actual != wanted:
            source = recorded.relative_to(case["dir"])
            problems.append(f"files: {name!r} differs from {source}: " + describe_difference(wanted, actual))


def _compare_requests(case: dict, result: RunResult, problems: list[str]):
    if case.get("expect_port", {}).get("requests_free"):
        return
    recording = result.exchanges
    where = "" if result.served_case == case["name"] else f" (as in case {result.served_case})"
    if len(result.requests) != len(recording):
        problems.append(
            f"requests: expected {len(recording)}{where}, got {len(result.requests)}: "
            + (", ".join(f"{r['method']} {r['path']}" for r in result.requests) or "none")
        )
    for index, (exchange, actual) in enumerate(zip(recording, result.requests)):
        expected = exchange["request"]
        label = f"request #{index} ({expected['method']} {expected['path']}){where}"
        if actual["method"] != expected["method"]:
            problems.append(f"{label}: method {actual['method']!r} instead of {expected['method']!r}")
        if actual["path"] != expected["path"]:
            problems.append(f"{label}: path {actual['path']!r} instead of {expected['path']!r}")
        wanted_auth = expected["headers"].get("authorization")
        if actual["headers"].get("authorization") != wanted_auth:
            problems.append(
                f"{label}: Authorization {actual['headers'].get('authorization')!r} instead of {wanted_auth!r}"
            )
        wanted_body = _body_bytes(result.exchanges_dir, expected)
        if actual["body"] != wanted_body:
            problems.append(f"{label}: body differs: " + describe_difference(wanted_body, actual["body"]))


def compare(case: dict, result: RunResult, program) -> list[str]:
    """Every way `result` differs from what `case` expects; empty = it passes.

    `case` is load_case()'s dict; `program` is the path the program was run
    as (argv[0]), which stands in for {PROG} in stdout.
    """
    problems: list[str] = []
    values = {"{PROG}": str(program)}
    if case.get("timestamped"):
        stdout_text = result.stdout.decode("utf-8", "replace")
        stamp = _find_stamp(
            case["files_after"] + case.get("expect_port", {}).get("files_after", []),
            list(result.files),
            problems,
        ) or _find_stamp(
            (case["dir"] / "stdout.txt").read_text(encoding="utf-8").splitlines(),
            [stdout_text],
            problems,
        )
        if stamp is None:
            problems.append("timestamp: the run used no -{TS} stamp in a file name or stdout")
        else:
            _check_stamp(stamp, result, problems)
            # From here on the stamp is fixed: every other {TS} must match it.
            values[TS_PLACEHOLDER] = stamp

    _compare_rc(case, result, problems)
    _compare_stdout(case, result, values, problems)
    _compare_files(case, result, values, problems)
    _compare_requests(case, result, problems)
    return problems
