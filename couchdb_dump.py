#!/usr/bin/env python3
"""couchdb_dump.py - back up a CouchDB database to one JSON file and restore it.

A faithful port of couchdb-dump.sh 1.1.10 (the bash script by Daniele Bailo
and Darren Gibbard): the same options, messages, exit codes, files and HTTP
requests, so that it can replace the script in cron jobs, Docker images and
Convertigo servers without changing a line of their callers.  Where the
script loses or corrupts data it deliberately does better; README.md lists
every such divergence.

The file reads in the order the data flows:

    options  ->  messages  ->  HTTP session
             ->  backup pipeline  (stream rows -> rewrite lines -> write file)
             ->  restore pipeline (read -> design documents -> chunks -> upload)
             ->  main

It is importable: ``main(argv)`` runs the command line and returns the exit
code; the classes below can be used on their own.
"""

import base64
import codecs
import gzip
import json
import os
import re
import sys
import tempfile
import time
import zlib

__version__ = "1.0.0"
BASH_VERSION = "1.1.10"
PROGRAM = "couchdb_dump.py"


class Exit(Exception):
    """Ends the run with an exit code; the messages were already printed."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------

# The short options, spelled as the bash script hands them to getopts.  Every
# '?' in it is an option character of its own for getopts, which answers it
# like an unknown option: the port does the same.
GETOPTS_SPEC = ":h?H:d:f:u:p:P:l:t:a:c?q?z?T?V?b?B?r?R?"

# Long options are our extensions; none changes what a short option does.
LONG_OPTIONS = {
    # name: takes a value
    "help": False,
    "timeout": True,
}

USAGE_TEXT = """
Usage: {prog} [-b|-r] -H <COUCHDB_HOST> -d <DB_NAME> -f <BACKUP_FILE> [-u <username>] [-p <password>] [-P <port>] [-l <lines>] [-t <threads>] [-a <import_attempts>]
\t-b   Run script in BACKUP mode.
\t-r   Run script in RESTORE mode.
\t-H   CouchDB Hostname or IP. Can be provided with or without 'http(s)://'
\t-d   CouchDB Database name to backup/restore.
\t-f   File to Backup-to/Restore-from.
\t-P   Provide a port number for CouchDB [Default: 5984]
\t-u   Provide a username for auth against CouchDB [Default: blank]
\t       -- can also set with 'COUCHDB_USER' environment var
\t-p   Provide a password for auth against CouchDB [Default: blank]
\t       -- can also set with 'COUCHDB_PASS' environment var
\t-l   Number of lines (documents) to Restore at a time. [Default: 5000] (Restore Only)
\t-t   Number of CPU threads to use when parsing data [Default: nProcs-1] (Backup Only)
\t-a   Number of times to Attempt import before failing [Default: 3] (Restore Only)
\t-c   Create DB on demand, if they are not listed.
\t-q   Run in quiet mode. Suppress output, except for errors and warnings.
\t-z   Compress output file (Backup Only)
\t-T   Add datetime stamp to output file name (Backup Only)
\t-V   Display version information.
\t-h   Display usage information.

Example: {prog} -b -H 127.0.0.1 -d mydb -f dumpedDB.json -u admin -p password

"""

EXTENSIONS_TEXT = """Extensions (long options only; every short option keeps its bash meaning):
\t--timeout SECONDS   Give up on a server that stops answering for that long [Default: 300]
\t--help              Display this text.

"""

VERSION_TEXT = """
\t** {program} version: {version} **
\t   compatible with couchdb-dump version: {bash_version}

\t URL:\thttps://github.com/danielebailo/couchdb-dump (the original bash script)

\t Authors of couchdb-dump:
\t Daniele Bailo    (bailo.daniele@gmail.com)
\t Darren Gibbard   (dalgibbard@gmail.com)
\t Maximilian Huber (maximilian.huber@tngtech.com)

"""

# What bash's `[ N -gt M ]` accepts as an integer: blanks and a sign allowed.
_BASH_INTEGER = re.compile(r"\A\s*[+-]?\d+\s*\Z")


def bash_integer(text):
    """The value bash's test(1) sees in ``text``, or None when it is no integer."""
    if text is None or not _BASH_INTEGER.match(text):
        return None
    return int(text)


def cpu_count():
    """Processors this process may run on, counted as GNU nproc counts them."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    # nproc honours OpenMP's variables: the first sets the count, the second caps it.
    wanted = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if wanted.isdigit() and int(wanted) > 0:
        count = int(wanted)
    limit = os.environ.get("OMP_THREAD_LIMIT", "").strip()
    if limit.isdigit() and int(limit) > 0:
        count = min(count, int(limit))
    return count


class Options:
    """Everything the command line and the environment asked for.

    Attribute names follow the user's words.  Values stay the text the user
    typed where the bash script prints them back (port, lines, attempts).
    """

    def __init__(self):
        self.backup = False
        self.restore = False
        self.host = ""
        self.db = ""
        self.file = ""
        self.user = ""
        self.password = ""
        self.port = "5984"
        self.lines = "5000"
        self.threads = None
        self.attempts_text = "3"
        self.attempts = 3
        self.create = False
        self.quiet = False
        self.compress = False
        self.timestamp = False
        self.timeout = 300.0
        self.cores = 1
        self.url = ""


class UsageError(Exception):
    """A command line the bash script refuses: its message, then the usage."""


def getopts(args, spec=GETOPTS_SPEC):
    """Walk ``args`` as bash's getopts does with ``spec``.

    Yields ``(option, value)`` pairs: ``value`` is the argument of an option
    that takes one, ``None`` for a flag; ``("?", char)`` for an unknown
    option, ``(":", char)`` for a missing argument, ``("--name", value)`` for
    one of our long options.  Stops at ``--`` (consumed) or at the first
    argument that is not an option; the caller reads the index where it
    stopped from the final ``("end", index)`` pair.
    """
    takes_value = {spec[i] for i in range(len(spec) - 1) if spec[i + 1] == ":" and spec[i] != ":"}
    flags = {c for c in spec if c not in ":?"} - takes_value
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            index += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        if arg.startswith("--"):
            name, has_eq, value = arg[2:].partition("=")
            if name not in LONG_OPTIONS:
                yield "?", arg[1:]
                index += 1
                continue
            if LONG_OPTIONS[name]:
                if not has_eq:
                    if index + 1 >= len(args):
                        yield ":", arg[1:]
                        return
                    index += 1
                    value = args[index]
                yield "--" + name, value
            else:
                yield "--" + name, None
            index += 1
            continue
        position = 1
        while position < len(arg):
            char = arg[position]
            if char in takes_value:
                if position + 1 < len(arg):
                    value = arg[position + 1:]
                elif index + 1 < len(args):
                    index += 1
                    value = args[index]
                else:
                    yield ":", char
                    return
                yield char, value
                break
            yield (char, None) if char in flags else ("?", char)
            position += 1
        index += 1
    yield "end", index


def usage_text(prog):
    return USAGE_TEXT.format(prog=prog)


def parse_options(argv, environ, out, prog):
    """Read the command line as couchdb-dump.sh does, in the same order.

    Prints what the script prints (usage, version, warnings) and raises
    ``Exit`` where it exits; returns the ``Options`` of a run otherwise.
    """
    if not argv or argv[0] == "":
        out.raw(usage_text(prog))
        raise Exit(1)
    opts = Options()
    stray = []
    for option, value in getopts(argv):
        if option == "end":
            stray = argv[value:]
        elif option == "h":
            out.raw(usage_text(prog))
            raise Exit(1)
        elif option == "--help":
            out.raw(usage_text(prog) + EXTENSIONS_TEXT)
            raise Exit(1)
        elif option == "V":
            out.raw(VERSION_TEXT.format(program=PROGRAM, version=__version__, bash_version=BASH_VERSION))
            raise Exit(1)
        elif option == ":":
            _usage_error(out, prog, '... ERROR: Option "-%s" requires an argument' % value)
        elif option == "?":
            _usage_error(out, prog, '... ERROR: Unknown Option "-%s"' % value)
        elif option in ("b", "B"):
            opts.backup = True
        elif option in ("r", "R"):
            opts.restore = True
        elif option == "H":
            opts.host = value
        elif option == "d":
            opts.db = value
        elif option == "f":
            opts.file = value
        elif option == "u":
            opts.user = value
        elif option == "p":
            opts.password = value
        elif option == "P":
            opts.port = value
        elif option == "l":
            opts.lines = value
        elif option == "t":
            opts.threads = value
        elif option == "a":
            opts.attempts_text = value
        elif option == "c":
            opts.create = True
        elif option == "q":
            opts.quiet = True
        elif option == "z":
            opts.compress = True
        elif option == "T":
            opts.timestamp = True
        elif option == "--timeout":
            seconds = _positive_number(value)
            if seconds is None:
                _usage_error(out, prog, '... ERROR: Option "--timeout" takes a number of seconds, not "%s"' % value)
            opts.timeout = seconds
    out.quiet = opts.quiet

    # bash tests "x$@" = "x": a single stray word is an error; several make
    # test(1) fail with "too many arguments", which the script lets through.
    if stray and stray[0] == "--":
        stray = stray[1:]
    if len(stray) == 1 and stray[0] != "":
        _usage_error(out, prog, '... ERROR: Unknown Option "%s"' % stray[0])

    if opts.backup and opts.restore:
        _usage_error(out, prog, "... ERROR: Cannot pass both '-b' and '-r'")
    if not opts.backup and not opts.restore:
        _usage_error(out, prog, "... ERROR: Missing argument '-b' (Backup), or '-r' (Restore)")
    if not opts.host:
        _usage_error(out, prog, "... ERROR: Missing argument '-H <COUCHDB_HOST>'")
    if not opts.db:
        _usage_error(out, prog, "... ERROR: Missing argument '-d <DB_NAME>'")
    if not opts.file:
        _usage_error(out, prog, "... ERROR: Missing argument '-f <FILENAME>'")

    opts.cores = cpu_count()
    if opts.threads is not None and opts.threads != "":
        wanted = bash_integer(opts.threads)
        if wanted is not None and wanted > opts.cores:
            out.line("... WARN: Thread setting of %s is more than CPU count. Setting to %d" % (opts.threads, opts.cores))
            opts.threads = str(opts.cores)
        else:
            out.info("... INFO: Setting parser threads to %s" % opts.threads)
    else:
        opts.threads = str(opts.cores - 1)

    if opts.attempts_text == "" or not opts.attempts_text.isdigit() or opts.attempts_text == "0" \
            or not opts.attempts_text.isascii():
        out.line('... WARN: Retry Attempt value of "%s" is invalid. Disabling Retry-on-Error.' % opts.attempts_text)
        opts.attempts_text = "1"
    # bash compares the attempt counter with the text ("1" = "01" never
    # holds, so it would retry for ever); the port counts to the number.
    opts.attempts = max(int(opts.attempts_text), 1)

    opts.url = build_url(opts.host, opts.port)

    if not opts.user:
        opts.user = environ.get("COUCHDB_USER", "")
    if not opts.password:
        opts.password = environ.get("COUCHDB_PASS", "")
    if opts.user and not opts.password:
        _usage_error(out, prog, "... ERROR: Password cannot be blank, if username is specified.")
    if opts.password and not opts.user:
        _usage_error(out, prog, "... ERROR: Username cannot be blank, if password is specified.")
    return opts


def _usage_error(out, prog, message):
    out.line(message)
    out.raw(usage_text(prog))
    raise Exit(1)


def _positive_number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def build_url(host, port):
    """The server URL exactly as couchdb-dump.sh composes it from -H and -P."""
    url = host
    if "http" not in url:
        url = ("https://" if port == "443" else "http://") + url
    # egrep ":[0-9]*$": a URL already ending in a colon and digits keeps them.
    if not re.search(r":[0-9]*\Z", url):
        url = url + ":" + port
    return url


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------

class Messages:
    """The lines the bash script prints, on its standard output.

    ``info`` lines are the ones ``-q`` silences; ``line`` is always printed
    (warnings and errors).  Text goes out as bytes so that a server's reply
    quoted in an error reaches the user unchanged; every line is flushed at
    once so that logs interleave correctly with other programs.
    """

    def __init__(self, stream=None, quiet=False):
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.quiet = quiet

    def raw(self, data):
        if isinstance(data, str):
            data = os.fsencode(data)
        try:
            self.stream.write(data)
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass

    def line(self, text):
        if isinstance(text, str):
            text = os.fsencode(text)
        self.raw(text + b"\n")

    def info(self, text):
        if not self.quiet:
            self.line(text)

    @staticmethod
    def detail(text):
        """An explanation bash never printed: it goes to standard error."""
        try:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except (BrokenPipeError, ValueError):
            pass


# ---------------------------------------------------------------------------
# HTTP session
# ---------------------------------------------------------------------------

class TransferFailed(Exception):
    """The exchange did not complete: what made curl exit non-zero in bash."""


class Reply:
    """A complete answer: status and body bytes."""

    def __init__(self, status, body):
        self.status = status
        self.body = body

    @property
    def first_line(self):
        """The body's first line, as ``head -n 1`` inside ``$(...)`` gives it."""
        return self.body.split(b"\n", 1)[0]

    @property
    def is_couchdb_error(self):
        """bash's test: the first line of the reply starts with ``{"error":``."""
        return self.body.startswith(b'{"error":')

    @property
    def ok(self):
        return 200 <= self.status < 300 and not self.is_couchdb_error


def quote_path_segment(text):
    """Percent-encode one path segment (a database name or a document id)."""
    from urllib.parse import quote
    return quote(text, safe="")


def quote_database(name):
    # Keep the characters CouchDB names use literally, as curl sends them;
    # encode "/" and anything a URL cannot carry.
    from urllib.parse import quote
    return quote(name, safe="$()+-_,;=@!*'~")


class CouchSession:
    """Talks HTTP to the server named by the bash-style URL.

    Credentials travel only in the Authorization header (Basic, as curl -u
    sends them), never in a request's URL, and never appear in a message.
    TLS certificates are not verified, as with the script's ``curl -k``.
    """

    def __init__(self, url, user="", password="", timeout=300.0):
        self.url = url
        self.timeout = timeout
        self._pool = None
        self._origin = None
        self._prefix = ""
        self.headers = {"Accept": "*/*", "User-Agent": "%s/%s" % (PROGRAM, __version__)}
        self._user = user
        self._password = password

    def _setup(self):
        if self._pool is not None:
            return
        import urllib3
        from urllib.parse import unquote_to_bytes
        try:
            parsed = urllib3.util.parse_url(self.url)
        except Exception:
            raise TransferFailed("the URL built from -H and -P is not valid")
        if not parsed.host:
            raise TransferFailed("the URL built from -H and -P names no host")
        scheme = (parsed.scheme or "http").lower()
        if scheme not in ("http", "https"):
            raise TransferFailed("unsupported protocol %r" % scheme)
        port = parsed.port or (443 if scheme == "https" else 80)
        self._origin = "%s://%s:%d" % (scheme, parsed.host, port)
        self._prefix = (parsed.path or "").rstrip("/")
        user, password = self._user, self._password
        credentials = None
        if user or password:
            credentials = os.fsencode(user) + b":" + os.fsencode(password)
        elif parsed.auth:
            # -H http://user:pass@host: curl sends them as Basic auth too.
            name, _, secret = parsed.auth.partition(":")
            credentials = unquote_to_bytes(name) + b":" + unquote_to_bytes(secret)
        if credentials is not None:
            self.headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
        timeout = urllib3.Timeout(connect=self.timeout, read=self.timeout)
        if scheme == "https":
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            self._pool = urllib3.PoolManager(cert_reqs="CERT_NONE", retries=False, timeout=timeout)
        else:
            self._pool = urllib3.PoolManager(retries=False, timeout=timeout)

    def _target(self, path):
        return self._origin + self._prefix + path

    def open(self, method, path, body=None, content_type=None):
        """Send a request and return the streaming response (not yet read)."""
        self._setup()
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        if body is not None and not isinstance(body, (bytes, bytearray)):
            body = _Body(body)
            headers["Content-Length"] = str(len(body))
        try:
            return self._pool.urlopen(
                method, self._target(path), body=body, headers=headers,
                redirect=False, retries=False, preload_content=False,
                decode_content=False, enforce_content_length=True)
        except Exception as error:  # urllib3 wraps every socket failure
            raise TransferFailed(_describe(error))

    def request(self, method, path, body=None, content_type=None):
        """Send a request and read the whole reply."""
        response = self.open(method, path, body, content_type)
        try:
            data = response.read()
        except Exception as error:
            raise TransferFailed(_describe(error))
        finally:
            response.release_conn()
        return Reply(response.status, data)


class _Body:
    """A request body read from a file-like source in blocks, length known."""

    def __init__(self, source):
        self.length, self.blocks = source

    def __len__(self):
        return self.length

    def __iter__(self):
        return iter(self.blocks())


def _describe(error):
    """Say what went wrong without quoting a URL that could carry a secret."""
    text = type(error).__name__
    reason = getattr(error, "reason", None)
    if reason is not None:
        text += ": " + type(reason).__name__
    return text


# ---------------------------------------------------------------------------
# Backup pipeline: stream rows -> rewrite lines -> write file
# ---------------------------------------------------------------------------

BACKUP_HEADER = b'{"new_edits":false,"docs":['
FOOTER = b"]}"
ALL_DOCS_QUERY = "/_all_docs?include_docs=true&attachments=true"
_ROW_START = b'{"id":'
_DOC_MARK = b'"},"doc":'   # the end of a row's value {"rev":"..."} and its "doc" key
_COUCHDB_HEADER = re.compile(rb'\A\{"total_rows":(\d+),"offset":\d+(?:,"update_seq":[^\n]*?)?,"rows":\[\Z')


class BackupFailed(Exception):
    """The reply cannot give a complete dump; the text says why."""


def rewrite_row_line(line):
    """One CouchDB ``_all_docs`` row line -> the dump line of its document.

    ``{"id":..,"key":..,"value":{"rev":".."},"doc":{DOC}},`` becomes
    ``{DOC},``.  The document is what follows the row's value: unlike the
    script's greedy ``.*,"doc":``, a document holding ``,"doc":`` survives.
    Lines that are not rows (the empty line of an empty database) pass
    unchanged.
    """
    if not line.startswith(_ROW_START):
        return line
    mark = line.find(_DOC_MARK)
    if mark < 0:
        raise BackupFailed("a row of the reply has no document: %r" % line[:80])
    return fix_closing_braces(line[mark + len(_DOC_MARK):])


def fix_closing_braces(line):
    """The script's stages 2 and 4: drop the row's closing brace at line end."""
    if line.endswith(b"}},"):
        return line[:-2] + b","
    if line.endswith(b"}}"):
        return line[:-1]
    return line


def rewrite_couchdb_block(block):
    """Rewrite a block of complete row lines (each ending in ``\\n``).

    Returns ``(bytes to write, rows seen)``.  Only lines starting with
    ``{"id":`` are rows; the brace fix is done on the whole block at once,
    which is safe because a raw newline only ever ends a line.
    """
    lines = block.split(b"\n")
    rows = 0
    out = []
    append = out.append
    find = bytes.find
    mark_len = len(_DOC_MARK)
    for line in lines:
        if line.startswith(_ROW_START):
            mark = find(line, _DOC_MARK)
            if mark < 0:
                raise BackupFailed("a row of the reply has no document: %r" % line[:80])
            append(line[mark + mark_len:])
            rows += 1
        else:
            append(line)
    data = b"\n".join(out)
    return data.replace(b"}},\n", b"},\n").replace(b"}}\n", b"}\n"), rows


class CouchDBLayout:
    """Rewrites a reply laid out as Apache CouchDB writes it: one row a line.

    Feed it the reply's bytes (carriage returns already removed) in blocks;
    it yields the dump's bytes, identical to what couchdb-dump.sh writes, and
    checks at the end that the footer came and no row is missing.
    """

    def __init__(self, total_rows):
        self.total_rows = total_rows
        self.rows = 0
        self.pending = b""
        self.last_line = None

    def feed(self, block):
        data = self.pending + block
        cut = data.rfind(b"\n")
        if cut < 0:
            self.pending = data
            return b""
        self.pending = data[cut + 1:]
        complete = data[:cut + 1]
        # Remember the last complete line: the footer must be the last one.
        previous = complete.rfind(b"\n", 0, len(complete) - 1)
        self.last_line = complete[previous + 1:-1]
        out, rows = rewrite_couchdb_block(complete)
        self.rows += rows
        return out

    def finish(self):
        tail = self.pending
        out = b""
        if tail:
            # A last line without its newline: sed keeps it that way.
            self.last_line = tail
            out, rows = rewrite_couchdb_block(tail)
            self.rows += rows
            out = fix_closing_braces(out)
        if self.last_line != FOOTER:
            raise BackupFailed("the reply ended before its end (no ']}' footer): the transfer was cut short")
        if self.rows < self.total_rows:
            raise BackupFailed("the reply holds %d rows but the database has %d documents"
                               % (self.rows, self.total_rows))
        return out


class JsonRowScanner:
    """Splits an ``_all_docs`` reply of any layout into its rows' documents.

    For servers (PouchDB Server, a pretty-printing proxy) that do not write
    one row per line.  It decodes the stream incrementally and lets the C
    JSON decoder find each value's end, so memory holds one row at a time,
    never the whole reply.  Each document keeps the server's bytes; only a
    document spread over several lines is joined onto one line, by dropping
    the white space between its tokens.
    """

    _WS = re.compile(r"[ \t\n\r]*")

    def __init__(self):
        self.decoder = json.JSONDecoder()
        self.text_decoder = codecs.getincrementaldecoder("utf-8")()
        self.buffer = ""
        self.pos = 0
        self.eof = False
        self.state = "start"
        self.total_rows = None
        self.rows = 0
        self._need = 0

    def feed(self, block, final=False):
        """Take more of the reply; yield the documents completed so far."""
        try:
            self.buffer = self.buffer[self.pos:] + self.text_decoder.decode(block, final)
        except UnicodeDecodeError:
            raise BackupFailed("the reply is not UTF-8 text")
        self.pos = 0
        self.eof = final
        if not final and len(self.buffer) < self._need:
            return
        self._need = 0
        while True:
            step = self._step()
            if step is None:
                return
            if step is not True:
                yield step

    def _skip_ws(self):
        self.pos = self._WS.match(self.buffer, self.pos).end()
        return self.pos < len(self.buffer)

    def _value(self):
        """Decode the value at pos; None when more bytes are needed."""
        try:
            value, end = self.decoder.raw_decode(self.buffer, self.pos)
        except json.JSONDecodeError:
            if self.eof:
                raise BackupFailed("the reply ended in the middle of a value: the transfer was cut short")
            # Wait for twice as much text before trying again, so a huge row
            # is decoded a few times, not once per block.
            self._need = 2 * len(self.buffer)
            return None
        if end >= len(self.buffer) and not self.eof:
            # A number at the end of the text may go on in the next block.
            self._need = len(self.buffer) + 1
            return None
        start = self.pos
        self.pos = end
        return value, start, end

    def _expect(self, chars):
        if not self._skip_ws():
            if self.eof:
                raise BackupFailed("the reply ended before its end: the transfer was cut short")
            return None
        char = self.buffer[self.pos]
        if char not in chars:
            raise BackupFailed("unexpected %r in the reply where one of %r belongs" % (char, chars))
        self.pos += 1
        return char

    def _step(self):
        """Advance by one token or value; True, a document, or None to wait."""
        state = self.state
        if state == "start":
            if self._expect("{") is None:
                return None
            self.state = "key_or_end"
            return True
        if state in ("key_or_end", "next_key"):
            char = self._expect('"}' if state == "key_or_end" else ",}")
            if char is None:
                return None
            if char == "}":
                self.state = "done"
                return True
            if char == ",":
                self.state = "key"
                return True
            self.pos -= 1
            self.state = "key"
            return True
        if state == "key":
            if not self._skip_ws():
                return self._wait()
            found = self._value()
            if found is None:
                return None
            self.key = found[0]
            self.state = "colon"
            return True
        if state == "colon":
            if self._expect(":") is None:
                return None
            self.state = "rows_open" if self.key == "rows" else "member"
            return True
        if state == "member":
            if not self._skip_ws():
                return self._wait()
            found = self._value()
            if found is None:
                return None
            if self.key == "total_rows" and isinstance(found[0], int):
                self.total_rows = found[0]
            if self.key == "error":
                raise BackupFailed("the server answered an error: %s" % found[0])
            self.state = "next_key"
            return True
        if state == "rows_open":
            if self._expect("[") is None:
                return None
            self.state = "row_or_end"
            return True
        if state in ("row_or_end", "row_sep"):
            char = self._expect("{]" if state == "row_or_end" else ",]")
            if char is None:
                return None
            if char == "]":
                self.state = "next_key"
                return True
            if char == ",":
                self.state = "row"
                return True
            self.pos -= 1
            self.state = "row"
            return True
        if state == "row":
            if not self._skip_ws():
                return self._wait()
            start = self.pos
            found = self._value()
            if found is None:
                return None
            self.state = "row_sep"
            self.rows += 1
            return self._document(found[0], start)
        if state == "done":
            if self._skip_ws():
                raise BackupFailed("unexpected data after the end of the reply")
            return None
        raise AssertionError(state)

    def _wait(self):
        if self.eof:
            raise BackupFailed("the reply ended before its end: the transfer was cut short")
        return None

    def _document(self, row, start):
        """The raw text of the row's "doc" member, found member by member."""
        if not isinstance(row, dict) or not isinstance(row.get("doc"), dict):
            raise BackupFailed("a row of the reply has no document: %s" % json.dumps(row)[:80])
        text = self.buffer
        pos = start + 1
        ws = self._WS
        while True:
            pos = ws.match(text, pos).end()
            key, pos = self.decoder.raw_decode(text, pos)
            pos = ws.match(text, pos).end() + 1  # the colon
            pos = ws.match(text, pos).end()
            _, end = self.decoder.raw_decode(text, pos)
            if key == "doc":
                doc = text[pos:end]
                if "\n" in doc or "\r" in doc:
                    doc = compact_json(doc)
                return doc.encode("utf-8")
            pos = ws.match(text, end).end() + 1  # the comma

    def finish(self):
        """The last documents, once the reply has ended; checks it is whole."""
        docs = list(self.feed(b"", final=True))
        if self.state != "done":
            raise BackupFailed("the reply ended before its end: the transfer was cut short")
        if self.total_rows is not None and self.rows < self.total_rows:
            raise BackupFailed("the reply holds %d rows but the database has %d documents"
                               % (self.rows, self.total_rows))
        return docs


_JSON_TOKENS = re.compile(r'("(?:[^"\\]|\\.)*")|[ \t\n\r]+', re.S)


def compact_json(text):
    """Drop the white space between JSON tokens, keeping every token's text."""
    return _JSON_TOKENS.sub(lambda m: m.group(1) or "", text)


class BackupFile:
    """Writes the dump under a temporary name beside its final one.

    ``commit`` renames it into place when the dump is complete; ``discard``
    removes it, so a half-written file never carries the user's file name.
    With ``compress`` the bytes go through gzip (level 6, like gzip(1)) on
    their way to disk: no uncompressed copy is ever written.
    """

    def __init__(self, path, compress=False):
        self.path = path
        directory = os.path.dirname(path) or "."
        base = os.path.basename(path)
        fd, self.temp_path = tempfile.mkstemp(prefix="." + base + ".", suffix=".part", dir=directory)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # what curl -o would have created
        self.raw = os.fdopen(fd, "wb", buffering=1 << 20)
        self.out = self.raw
        if compress:
            name = base[:-3] if base.endswith(".gz") else base
            self.out = gzip.GzipFile(filename=name, mode="wb", compresslevel=6, fileobj=self.raw)
        self.size = 0

    def write(self, data):
        self.out.write(data)

    def commit(self):
        if self.out is not self.raw:
            self.out.close()
        self.raw.flush()
        os.fsync(self.raw.fileno())
        self.raw.close()
        os.replace(self.temp_path, self.path)

    def discard(self):
        try:
            if self.out is not self.raw:
                self.out.close()
        except Exception:
            pass
        try:
            self.raw.close()
        except Exception:
            pass
        try:
            os.unlink(self.temp_path)
        except OSError:
            pass


def timestamped_name(name, now=None):
    """-T: put ``-YYYYMMDD-hhmmss`` before the extension, or at the end."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    head, slash, base = name.rpartition("/")
    if re.search(r"\.[a-zA-Z0-9][a-zA-Z0-9_]*", name) and "." in base:
        stem, _, extension = base.rpartition(".")
        return "%s%s%s-%s.%s" % (head, slash, stem, stamp, extension)
    return "%s-%s" % (name, stamp)


def du_kib(size):
    """What ``du -k`` reports for a file of ``size`` bytes on 4 KiB blocks."""
    return -(-size // 4096) * 4


class Backup:
    """Backup mode: one GET of ``_all_docs``, streamed into the dump file."""

    BLOCK = 1 << 20

    def __init__(self, opts, session, out):
        self.opts = opts
        self.session = session
        self.out = out

    def run(self):
        opts, out = self.opts, self.out
        name = timestamped_name(opts.file) if opts.timestamp else opts.file
        out.info("... INFO: Output file %s" % name)
        final = name + ".gz" if opts.compress else name
        for path in (name, final):
            if os.path.isfile(path):
                out.line("... ERROR: Output file %s already exists." % path)
                raise Exit(1)
        if os.path.isdir(final):
            out.line("... ERROR: Curl encountered an issue whilst dumping the database.")
            out.detail("couchdb_dump: %s is a directory" % final)
            raise Exit(1)

        path = "/" + quote_database(opts.db) + ALL_DOCS_QUERY
        try:
            target = BackupFile(final, compress=opts.compress)
        except OSError as error:
            out.line("... ERROR: Curl encountered an issue whilst dumping the database.")
            out.detail("couchdb_dump: cannot write %s: %s" % (final, error.strerror))
            raise Exit(1)
        try:
            had_cr, size = self._transfer(path, target)
            target.commit()
        except BaseException:
            target.discard()
            raise

        if had_cr:
            out.info("... INFO: File may contain Windows carriage returns- converting...")
            out.info("... INFO: Completed successfully.")
        out.info("... INFO: Amending file to make it suitable for Import.")
        out.info("... INFO: Stage 1 - Document filtering")
        threads = bash_integer(opts.threads)
        if du_kib(size) >= 256000 and threads is not None and threads > 1:
            out.info("... INFO: Multi-Threaded Parsing Enabled.")
        out.info("... INFO: Stage 2 - Duplicate curly brace removal")
        out.info("... INFO: Stage 3 - Header Correction")
        out.info("... INFO: Stage 4 - Final document line correction")
        if opts.compress:
            out.info("... INFO: Stage 5 - File compression")
        out.info("... INFO: Export completed successfully. File available at: %s" % final)

    def _transfer(self, path, target):
        """Download and rewrite; returns (reply had CRs, size without CRs)."""
        out = self.out
        try:
            response = self.session.open("GET", path)
        except TransferFailed as error:
            self._curl_failed(error)
        try:
            blocks = response.stream(self.BLOCK)
            head = b""
            had_cr = False
            # The first line decides: a CouchDB error, or which layout.
            for block in blocks:
                head += block
                if b"\n" in head or len(head) > (1 << 16):
                    break
            if head.startswith(b'{"error'):
                rest = b"".join(blocks) if b"\n" not in head else b""
                first = (head + rest).split(b"\n", 1)[0]
                out.line(b"... ERROR: CouchDB reported: " + first)
                raise Exit(1)
            if not 200 <= response.status < 300:
                out.line("... ERROR: The server answered HTTP %d %s instead of the documents."
                         % (response.status, response.reason or ""))
                raise Exit(1)
            if b"\r" in head:
                had_cr = True
                head = head.replace(b"\r", b"")
            size = len(head)
            first_line, newline, rest = head.partition(b"\n")
            header = _COUCHDB_HEADER.match(first_line) if newline else None
            if header:
                layout = CouchDBLayout(int(header.group(1)))
                target.write(BACKUP_HEADER + b"\n")
                target.write(layout.feed(rest))
                for block in blocks:
                    if b"\r" in block:
                        had_cr = True
                        block = block.replace(b"\r", b"")
                    size += len(block)
                    target.write(layout.feed(block))
                target.write(layout.finish())
            else:
                scanner = JsonRowScanner()
                writer = _DocumentLines(target)
                for doc in scanner.feed(head):
                    writer.add(doc)
                for block in blocks:
                    if b"\r" in block:
                        had_cr = True
                    size += len(block) - block.count(b"\r")
                    for doc in scanner.feed(block):
                        writer.add(doc)
                for doc in scanner.finish():
                    writer.add(doc)
                writer.finish()
            return had_cr, size
        except BackupFailed as error:
            out.line("... ERROR: Backup failed, no file written: %s." % error)
            raise Exit(1)
        except (Exit, KeyboardInterrupt):
            raise
        except Exception as error:
            # A broken transfer or a failed write: bash's curl -o says the same.
            self._curl_failed(error)
        finally:
            response.release_conn()

    def _curl_failed(self, error):
        self.out.line("... ERROR: Curl encountered an issue whilst dumping the database.")
        self.out.detail("couchdb_dump: %s" % (error if isinstance(error, TransferFailed) else _describe(error)))
        raise Exit(1)


class _DocumentLines:
    """Writes scanned documents in the dump layout: one a line, commas between."""

    def __init__(self, target):
        self.target = target
        self.previous = None
        self.target.write(BACKUP_HEADER + b"\n")

    def add(self, doc):
        if self.previous is not None:
            self.target.write(self.previous + b",\n")
        self.previous = doc

    def finish(self):
        # An empty database gets the same file as from CouchDB: a blank line.
        last = self.previous if self.previous is not None else b""
        self.target.write(last + b"\n" + FOOTER + b"\n")


# ---------------------------------------------------------------------------
# Restore pipeline: read -> design documents -> chunks -> upload
# ---------------------------------------------------------------------------

GZIP_MAGIC = b"\x1f\x8b"
_DESIGN_LAYOUT = re.compile(rb'\A\{"_id":"((?:[^"\\]|\\.)*)","_rev":"[0-9]*-[0-9a-zA-Z_\-]*",')


class DumpFile:
    """Reads a dump file line by line: plain or gzip, LF or CRLF.

    A gzip file is recognised by its magic bytes, whatever its name, and
    read as the text it holds.  A carriage return before a line's newline is
    dropped, so a CRLF dump restores exactly as the same dump with LF ends.
    Every pass reads the file again, so memory holds one line at a time.
    """

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as probe:
            self.compressed = probe.read(2) == GZIP_MAGIC

    def _open(self):
        raw = open(self.path, "rb", buffering=1 << 20)
        return gzip.GzipFile(fileobj=raw, mode="rb") if self.compressed else raw

    def lines(self):
        """Yield every line with its newline (the last may lack one)."""
        with self._open() as handle:
            for line in handle:
                if line.endswith(b"\r\n"):
                    line = line[:-2] + b"\n"
                elif line.endswith(b"\r") and not line.endswith(b"\n"):
                    line = line[:-1]
                yield line


def strip_newline(line):
    return line[:-1] if line.endswith(b"\n") else line


def design_document_id(line):
    """The ``_design/…`` id of a dump line, or None for any other line.

    The line is parsed, so ``_id`` may stand anywhere in it; a line in the
    script's layout that does not parse still counts, as bash's grep does.
    """
    if b"_design" not in line:
        return None
    text = strip_newline(line).rstrip(b",")
    try:
        doc = json.loads(text)
    except ValueError:
        if line.startswith(b'{"_id":"_design'):
            return line.split(b'"')[3].decode("utf-8", "replace")
        return None
    if isinstance(doc, dict) and isinstance(doc.get("_id"), str) and doc["_id"].startswith("_design/"):
        return doc["_id"]
    return None


def design_document_request(line, doc_id):
    """The PUT path and body for one design document line.

    As the script: ``_id``, ``_rev`` and the trailing comma are removed and a
    newline ends the body.  A line in another layout is re-serialised
    without ``_id``/``_rev``.  The id is percent-encoded after ``_design/``,
    so a crafted dump cannot reach outside the target database.
    """
    text = strip_newline(line)
    match = _DESIGN_LAYOUT.match(text)
    if match and match.group(1) == doc_id.encode("utf-8"):
        body = b"{" + text[match.end():]
        if body.endswith(b","):
            body = body[:-1]
    else:
        trimmed = text[:-1] if text.endswith(b",") else text
        try:
            doc = json.loads(trimmed)
            doc.pop("_id", None)
            doc.pop("_rev", None)
            body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except (ValueError, AttributeError):
            body = trimmed
    name = doc_id[len("_design/"):] if doc_id.startswith("_design/") else doc_id
    return "/_design/" + quote_path_segment(name), body + b"\n"


class DumpSurvey:
    """One streaming pass over the dump, before anything is sent.

    Counts lines as ``wc -l`` does (newline characters), finds the design
    documents, and keeps the first and last lines: all the script learns
    from its grep, wc, head and tail, without writing a file.
    """

    def __init__(self, dump):
        self.newlines = 0
        self.lines = 0
        self.designs = []        # (line number, id)
        self.first = None
        self.last = b""
        self.last_has_newline = True
        self.last_plain = None   # number of the last line that is no design document
        for number, line in enumerate(dump.lines()):
            if self.first is None:
                self.first = strip_newline(line)
            doc_id = design_document_id(line)
            if doc_id is not None:
                self.designs.append((number, doc_id))
            else:
                self.last_plain = number
            self.lines += 1
            if line.endswith(b"\n"):
                self.newlines += 1
                self.last_has_newline = True
            else:
                self.last_has_newline = False
            self.last = line
        self.design_lines = {number for number, _ in self.designs}

    def remaining_newlines(self):
        """``wc -l`` of the text left once the design documents are out."""
        count = self.newlines - sum(1 for n, _ in self.designs if n != self.lines - 1 or self.last_has_newline)
        return count


class RestoreFailed(Exception):
    """A restore step failed after its attempts; the messages are printed."""


class Restore:
    """Restore mode: the requests couchdb-dump.sh sends, in the same order."""

    def __init__(self, opts, session, out):
        self.opts = opts
        self.session = session
        self.out = out
        self.refused = 0
        self.written_chunks = 0

    # -- steps ------------------------------------------------------------

    def run(self):
        opts, out = self.opts, self.out
        if not os.path.isfile(opts.file):
            out.line("... ERROR: Input file %s not found." % opts.file)
            raise Exit(1)
        dump = DumpFile(opts.file)
        survey = DumpSurvey(dump)
        out.info("... INFO: Checking for database")
        self.check_database()
        out.info("... INFO: Checking for Design documents")
        if not survey.designs:
            out.info("... INFO: No Design Documents found for import.")
            text_name = opts.file
            fix_line = None
            text_newlines = survey.newlines
        else:
            out.info("... INFO: Duplicating original file for alteration")
            out.info("... INFO: Stripping _design elements from regular documents")
            out.info("... INFO: Fixing end document")
            text_name = opts.file + "-nodesign"
            text_newlines = survey.remaining_newlines()
            fix_line = text_newlines - 1  # sed "${line}s/,$//", counted from 1
            out.info("... INFO: Inserting Design documents")
            self.put_design_documents(dump, survey)
            out.info("... INFO: Successfully imported %d Design Documents" % len(survey.designs))
        text = RestoreText(dump, survey.design_lines, fix_line)
        lines = bash_integer(opts.lines)
        if lines is not None and text_newlines < lines:
            out.info("... INFO: Small dataset. Importing as a single file.")
            self.upload_whole(text)
        else:
            self.upload_chunks(text, text_name)
        if self.refused:
            out.line("... ERROR: %d documents were refused by the server: the restore is incomplete." % self.refused)
            raise Exit(1)

    def check_database(self):
        opts, out = self.opts, self.out
        attempt = 0
        while True:
            attempt += 1
            try:
                reply = self.session.request("GET", "/_all_dbs")
                break
            except TransferFailed as error:
                out.detail("couchdb_dump: %s" % error)
                if attempt >= opts.attempts:
                    out.line("... ERROR: Curl failed to get the list of databases - Stopping")
                    raise Exit(1)
                out.line("... WARN: Curl failed to get the list of databases - Attempt %d/%s. Retrying..."
                         % (attempt, opts.attempts_text))
                time.sleep(1)
        listing = reply.body.rstrip(b"\n")
        if not (listing.startswith(b"[") and listing.endswith(b"]")):
            out.line("... WARN: Curl failed to get the list of databases - Continuing")
            if not listing:
                out.line("... WARN: Curl just returned: ")
            return
        if b'"' + os.fsencode(opts.db) + b'"' in listing:
            return
        if not opts.create:
            out.line("... ERROR: corresponding database %s not yet created - Stopping" % opts.db)
            out.info("... HINT: you could add the -c flag to create the database automatically")
            raise Exit(1)
        self.create_database()

    def create_database(self):
        opts, out = self.opts, self.out
        path = "/" + quote_database(opts.db)
        attempt = 0
        while True:
            attempt += 1
            try:
                reply = self.session.request("PUT", path)
            except TransferFailed as error:
                out.detail("couchdb_dump: %s" % error)
                if attempt >= opts.attempts:
                    out.line("... ERROR: Curl failed to create the database %s - Stopping" % opts.db)
                    out.line(".. ERROR: See above for any errors")
                    raise Exit(1)
                out.line("... WARN: Curl failed to create the database %s - Attempt %d/%s. Retrying..."
                         % (opts.db, attempt, opts.attempts_text))
                time.sleep(1)
                continue
            if reply.ok:
                return
            if attempt >= opts.attempts:
                out.line(b"... ERROR: CouchDB Reported: " + self._error_text(reply))
                raise Exit(1)
            out.line("... WARN: CouchDB Reported an error during db creation - Attempt %d/%s - Retrying..."
                     % (attempt, opts.attempts_text))
            time.sleep(1)

    def put_design_documents(self, dump, survey):
        opts, out = self.opts, self.out
        wanted = dict(survey.designs)
        design_name = opts.file + "-design"
        for count, (number, line) in enumerate(
                (n, l) for n, l in enumerate(dump.lines()) if n in wanted):
            path, body = design_document_request(line, wanted[number])
            path = "/" + quote_database(opts.db) + path
            attempt = 0
            while True:
                attempt += 1
                try:
                    reply = self.session.request("PUT", path, body, "application/json")
                except TransferFailed as error:
                    out.detail("couchdb_dump: %s" % error)
                    if attempt >= opts.attempts:
                        out.line("... ERROR: Curl failed trying to restore %s.%d - Stopping" % (design_name, count))
                        raise Exit(1)
                    out.line("... WARN: Import of %s.%d failed - Attempt %d/%s. Retrying..."
                             % (design_name, count, attempt, opts.attempts_text))
                    time.sleep(1)
                    continue
                if reply.ok:
                    break
                if attempt >= opts.attempts:
                    out.line(b"... ERROR: CouchDB Reported: " + self._error_text(reply))
                    raise Exit(1)
                out.line("... WARN: CouchDB Reported an error during import - Attempt %d/%s - Retrying..."
                         % (attempt, opts.attempts_text))
                time.sleep(1)

    def upload_whole(self, text):
        """Fewer lines than -l: one _bulk_docs of the whole text."""
        opts, out = self.opts, self.out
        path = "/" + quote_database(opts.db) + "/_bulk_docs"
        body = (text.size(), text.blocks)
        attempt = 0
        while True:
            attempt += 1
            failure = None
            try:
                reply = self.session.request("POST", path, body, "application/json")
                if reply.ok:
                    self._note_refusals(reply)
                    if not self.refused:
                        out.info("... INFO: Imported %s Successfully." % opts.file)
                    return
            except TransferFailed as error:
                reply = None
                failure = str(error)
            if attempt >= opts.attempts:
                out.line("... ERROR: Import of %s failed." % opts.file)
                if reply is not None:
                    out.raw(b"... ERROR: Error message was:   " + reply.body)
                else:
                    out.line("... ERROR: Error message was:   the connection failed (%s)" % failure)
                raise Exit(1)
            out.line("... WARN: Import of %s failed - Attempt %d/%s - Retrying..."
                     % (opts.file, attempt, opts.attempts_text))
            time.sleep(1)

    def upload_chunks(self, text, text_name):
        """-l lines a chunk, each made a complete _bulk_docs body."""
        opts, out = self.opts, self.out
        out.info("... INFO: Block import set to %s lines." % opts.lines)
        out.info("... INFO: Generating files to import")
        lines = opts.lines.strip()
        if not lines.isdigit() or int(lines) <= 0:
            out.line("... ERROR: Unable to create split files.")
            raise Exit(1)
        path = "/" + quote_database(opts.db) + "/_bulk_docs"
        count = 0
        for index, chunk in enumerate(text.chunks(int(lines))):
            name = "%s.split%s" % (text_name, chunk_suffix(index))
            out.info("... INFO: %s %s" % ("Header already applied to" if chunk.had_header else "Adding header to", name))
            out.info("... INFO: %s %s" % ("Footer already applied to" if chunk.had_footer else "Adding footer to", name))
            out.info("... INFO: Inserting %s" % name)
            attempt = 0
            while True:
                attempt += 1
                try:
                    reply = self.session.request("POST", path, chunk.body, "application/json")
                except TransferFailed as error:
                    out.detail("couchdb_dump: %s" % error)
                    if attempt >= opts.attempts:
                        out.line("... ERROR: Curl failed trying to restore %s - Stopping" % name)
                        self._say_progress(count)
                        raise Exit(1)
                    out.line("... WARN: Failed to import %s - Attempt %d/%s - Retrying..."
                             % (name, attempt, opts.attempts_text))
                    time.sleep(1)
                    continue
                if reply.ok:
                    break
                if attempt >= opts.attempts:
                    out.line(b"... ERROR: CouchDB Reported: " + self._error_text(reply))
                    self._say_progress(count)
                    raise Exit(1)
                out.line("... WARN: CouchDB Reported and error during import - Attempt %d/%s - Retrying..."
                         % (attempt, opts.attempts_text))
                time.sleep(1)
            count += 1
            self.written_chunks = count
            refused_before = self.refused
            self._note_refusals(reply)
            if self.refused == refused_before:
                out.info("... INFO: Successfully Imported %d Files" % count)
        out.line("... INFO: Import Cycle Completed.")

    # -- helpers ----------------------------------------------------------

    def _error_text(self, reply):
        if reply.is_couchdb_error or not reply.body.strip():
            return reply.first_line if reply.body.strip() else b"HTTP %d" % reply.status
        return b"HTTP %d: %s" % (reply.status, reply.first_line[:200])

    def _say_progress(self, chunks):
        self.out.detail("couchdb_dump: %d chunk(s) were written before the failure" % chunks)

    def _note_refusals(self, reply):
        """Report the documents a successful _bulk_docs still refused."""
        try:
            answers = json.loads(reply.body)
        except ValueError:
            return
        if not isinstance(answers, list):
            return
        for answer in answers:
            if isinstance(answer, dict) and "error" in answer:
                self.refused += 1
                self.out.line("... ERROR: Document %s was refused: %s: %s" % (
                    json.dumps(answer.get("id"), ensure_ascii=False),
                    answer.get("error"), answer.get("reason", "")))


def chunk_suffix(index):
    """split -a 3 names: aaa, aab, ... zzz; past that one letter more."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    width = 3
    while index >= 26 ** width:
        index -= 26 ** width
        width += 1
    suffix = ""
    for _ in range(width):
        index, digit = divmod(index, 26)
        suffix = letters[digit] + suffix
    return suffix


class Chunk:
    """One _bulk_docs body and what the script would say about its edges."""

    def __init__(self, body, had_header, had_footer):
        self.body = body
        self.had_header = had_header
        self.had_footer = had_footer


class RestoreText:
    """The text the script uploads: the dump less its design documents.

    With design documents taken out, the trailing comma of the line the
    script's "Fixing end document" names is removed, as it does.  The text
    is produced again on every pass, from the file.
    """

    def __init__(self, dump, design_lines, fix_line):
        self.dump = dump
        self.design_lines = design_lines
        self.fix_line = fix_line   # 1-based, in the text without designs
        self._size = None
        self.first = None
        self.last = None

    def lines(self):
        number = 0
        for index, line in enumerate(self.dump.lines()):
            if index in self.design_lines:
                continue
            number += 1
            if number == self.fix_line:
                body = strip_newline(line)
                if body.endswith(b","):
                    line = body[:-1] + line[len(body):]
            yield line

    def blocks(self):
        buffer = []
        size = 0
        for line in self.lines():
            buffer.append(line)
            size += len(line)
            if size >= 1 << 20:
                yield b"".join(buffer)
                buffer, size = [], 0
        if buffer:
            yield b"".join(buffer)

    def size(self):
        if self._size is None:
            total = 0
            first = last = None
            for line in self.lines():
                if first is None:
                    first = strip_newline(line)
                last = line
                total += len(line)
            self._size = total
            self.first = first if first is not None else b""
            self.last = strip_newline(last) if last is not None else b""
        return self._size

    def chunks(self, lines_per_chunk):
        """Split into chunks of ``lines_per_chunk`` lines, each made whole.

        As the script does with split: a chunk that does not start with the
        text's first line gets it prepended; one that does not end with the
        text's last line loses its last trailing comma and gets it appended.
        """
        self.size()
        header, footer = self.first, self.last
        piece = []
        for line in self.lines():
            piece.append(line)
            if len(piece) == lines_per_chunk:
                yield self._chunk(piece, header, footer)
                piece = []
        if piece:
            yield self._chunk(piece, header, footer)

    @staticmethod
    def _chunk(piece, header, footer):
        had_header = strip_newline(piece[0]) == header
        last = strip_newline(piece[-1])
        had_footer = last == footer
        parts = [] if had_header else [header + b"\n"]
        if had_footer:
            parts.extend(piece)
        else:
            parts.extend(piece[:-1])
            ending = piece[-1][len(last):]
            if last.endswith(b","):
                last = last[:-1]
            parts.append(last + ending)
            parts.append(footer + b"\n")
        return Chunk(b"".join(parts), had_header, had_footer)


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def main(argv=None, environ=None, stdout=None):
    """Run the command line; returns the exit code."""
    prog = sys.argv[0] if sys.argv and sys.argv[0] else PROGRAM
    if argv is None:
        argv = sys.argv[1:]
    if environ is None:
        environ = os.environ
    out = Messages(stdout)
    try:
        opts = parse_options(list(argv), environ, out, prog)
        session = CouchSession(opts.url, opts.user, opts.password, opts.timeout)
        if opts.backup:
            Backup(opts, session, out).run()
        else:
            Restore(opts, session, out).run()
        return 0
    except Exit as done:
        return done.code
    except KeyboardInterrupt:
        out.line("... ERROR: Interrupted.")
        return 130


def main_entry():
    """The ``couchdb-dump`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
