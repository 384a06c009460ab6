#!/usr/bin/env python3
"""couchdb_dump.py - back up a CouchDB database to one JSON file and restore it.

A faithful port of couchdb-dump.sh 1.1.10 (the bash script by Daniele Bailo
and Darren Gibbard): the same options, messages, exit codes, files and HTTP
requests, so that it can replace the script in cron jobs, Docker images and
Convertigo servers without changing a line of their callers.  Where the
script loses or corrupts data it deliberately does better; README.md lists
every such divergence.

The file reads in the order the data flows, in eight chapters:

    1. errors and exit codes     every failure is a ``Failure`` with its exit code
    2. options                   the command line, read as the script reads it
    3. messages and progress     what the user reads
    4. talking to the server     one session, one requester that asks again
    5. reading and rewriting rows    pure: a reply's rows -> the dump's lines
    6. backup     stream rows -> rewrite -> write the file
    7. restore    read -> check -> target database -> design documents
                  -> chunks -> upload -> verify
    8. main       the command line in, an exit code out: one database,
                  or every one a pattern matches (``ServerRun``)

It is importable: ``main(argv)`` runs the command line and returns the exit
code; the classes below can be used on their own (``__all__`` names them):
``parse_options`` reads a command line into ``Options``; ``CouchSession``
talks to the server and ``Requester`` asks it what an ``Ask`` describes
(attempts, back-pressure, pacing); ``Backup`` and ``Restore`` run a mode;
``rewrite_row_line``, ``JsonRowScanner``, ``DumpFile``, ``DumpSurvey`` and
``RestoreText`` are the pipelines' pieces; every way a run ends early is a
``Failure`` carrying its exit code and the lines that say why.
"""

import base64
import codecs
import collections
import copy
import difflib
import gzip
import itertools
import json
import math
import os
import queue
import random
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import zlib
from array import array
from bisect import bisect_left, bisect_right
from itertools import accumulate
from urllib.parse import quote, unquote_to_bytes, urlsplit

# Imported where they are used, to keep start-up lean (a usage error, -h or a
# small restore pays for none of them): urllib3 (~40 ms, and its absence is
# reported as an error of the run), multiprocessing (~18 ms, large dumps
# only), concurrent.futures (~12 ms), hashlib (~12 ms, --verify only),
# traceback (a bug report only), ctypes (may be missing; Linux only),
# email.utils (~10 ms, a Retry-After date only) and http.client (a broken
# reply under backup --resume; urllib3 brings it anyway).

__all__ = [
    "main", "parse_options", "Options", "Messages", "Progress", "Stop", "Interrupted",
    "Failure", "Finished", "Stopped", "TransferFailed", "BackupFailed", "DumpInvalid",
    "CouchSession", "Reply", "BackPressure", "Ask", "Requester", "Backup", "Restore",
    "rewrite_row_line", "JsonRowScanner", "DumpFile", "DumpSurvey", "RestoreText", "RevisionIndex",
    "is_design_id", "__version__",
]

__version__ = "1.0.0"
BASH_VERSION = "1.1.10"
PROGRAM = "couchdb_dump.py"


# ===========================================================================
# 1. Errors and exit codes
# ===========================================================================
# Every way a run ends before its end is a ``Failure`` that carries its exit code and
# the lines that say why; a signal that must end the run at once is ``Interrupted``.
# Only ``main`` turns them into an exit code and the --json line.


class Failure(Exception):
    """A run that ends before its end: its exit code and the lines that say why.

    Every error the program reports is one: a usage error, a transfer that
    failed, a reply that is no answer, a dump that cannot be restored, a
    stop asked for by a signal.  It is raised where it is seen, with what
    the user reads about it: ``lines`` (standard output, the script's
    words), ``raw`` (a text printed as it is: the usage), ``hints`` (lines
    -q silences), ``cause`` (why a transfer failed, in words) and ``notes``
    (standard error), and ``summary`` (--json's error, when the last ERROR
    line does not say it).  ``tell`` prints them, once: ``main`` does,
    unless the code that prints what follows them told them first.

    Its text (``str``) is the failure in words: ``TransferFailed`` (the
    HTTP exchange), ``BackupFailed`` (the server's reply) and ``DumpInvalid``
    (the dump file) carry no lines, only words their caller puts in its own
    lines.  A caller of the library catches this one to catch them all.
    """

    code = 1

    def __init__(self, text="", lines=(), code=None, raw=None, hints=(), cause=None, notes=(), summary=None):
        super().__init__(text)
        if code is not None:
            self.code = code
        self.lines = list(lines)
        self.raw = raw
        self.hints = list(hints)
        self.cause = cause
        self.notes = list(notes)
        self.summary = summary
        self.told = False

    def tell(self, out):
        """Print what the user reads about the failure (the first time only)."""
        if self.told:
            return
        self.told = True
        said = self.lines or self.raw or self.hints or self.cause or self.notes or self.summary
        for line in self.lines if said or not str(self) else ["... ERROR: %s." % self]:
            out.line(line)
        if self.raw is not None:
            out.raw(self.raw)
        for hint in self.hints:
            out.info(hint)
        if self.cause is not None and str(self.cause) != out.last_cause:
            out.cause(self.cause)
        for note in self.notes:
            out.detail(note)
        if self.summary is not None:
            out.summarize(self.summary)


class Finished(Failure):
    """The command line asked for a text only (-h, -V, --help, --version).

    The text is printed and the run ends with the script's exit code: 1
    for -h and -V, as bash; 0 for the long spellings, ours.
    """


class TransferFailed(Failure):
    """The exchange did not complete: what made curl exit non-zero in bash."""


class CertificateRefused(TransferFailed):
    """A certificate failed the TLS check (the server's, or ours at the server):
    asking again cannot help, so it is not retried."""


class BackupFailed(Failure):
    """The reply cannot give a complete dump; the text says why."""


class ReplyShape(BackupFailed):
    """A 2xx reply that is not an ``_all_docs`` answer: a health page, ``{"ok":true}``."""


class ReplyCut(BackupFailed):
    """The reply ended before its end, cleanly: what --resume continues."""


class DumpInvalid(Failure):
    """The dump cannot be restored as it is; says where and why."""

    def __init__(self, line, text):
        super().__init__(text)
        self.line = line
        self.text = text


class Stopped(Failure):
    """A signal asked the run to stop and the request on its way has ended.

    Ends the run with 128 + the signal's number, as ``Interrupted`` does;
    the restore says what it wrote before it stopped.
    """

    def __init__(self, signum, lines=()):
        super().__init__(lines=lines, code=128 + signum)
        self.signum = signum


class Interrupted(BaseException):
    """SIGINT or SIGTERM: ends the run at once with 128 + the signal's number.

    The one exception of the program that is no ``Failure``: like
    KeyboardInterrupt it is a BaseException, so that no ``except
    Exception`` on its way takes it for a failure to word and go on from.
    """

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum
        self.code = 128 + signum


class Stop:
    """How a signal is taken: at once, or (restore) after the current request.

    One instance a run: ``main`` installs it and hands it to the job.  While
    ``graceful`` is set, the first signal is only noted in ``requested``;
    the restore looks at it between requests.  A second signal, or any
    signal outside, interrupts at once.
    """

    def __init__(self):
        self.graceful = False
        self.held = False
        self.requested = None
        self.announce = None   # called with the first signal noted: say at once that the run stops
        self._previous = {}

    def handler(self, signum, frame):
        if self.held:
            return
        if self.graceful and self.requested is None:
            self.requested = signum
            if self.announce is not None:
                self.announce(signum)
            return
        raise Interrupted(signum)

    def install(self):
        """Take SIGINT and SIGTERM until ``uninstall``."""
        self.graceful = self.held = False
        self.requested = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self.handler)
            except (ValueError, OSError):   # not the main thread: leave them be
                pass

    def hold(self):
        """Note no signal from now on: what the run leaves is being cleaned up."""
        self.held = True

    def uninstall(self):
        """Give SIGINT and SIGTERM back to the handlers they had."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal %d" % signum


# ===========================================================================
# 2. Options
# ===========================================================================
# The command line and the environment, read as couchdb-dump.sh reads them.


# The short options, spelled as the bash script hands them to getopts.  Every
# '?' in it is an option character of its own for getopts, which answers it
# like an unknown option: the port does the same.  -D and -s are upstream's
# newer options (its PR #102), not in 1.1.10.
GETOPTS_SPEC = ":h?H:d:f:u:p:P:l:t:a:D:s:c?q?z?T?V?b?B?r?R?"


# Long options are our extensions; none changes what a short option does.
# Each serves a mode, or both: given to the other mode it is an error before
# any request (a cron job reading "-b --verify" as a verified backup must
# learn otherwise).  --help is made from this table.
BACKUP, RESTORE = "backup", "restore"
BOTH = (BACKUP, RESTORE)
LongOption = collections.namedtuple("LongOption", "value serves text")
LONG_OPTIONS = {
    # name: LongOption(the name of its value, None for a flag; the modes it serves; its --help lines)
    "json": LongOption(None, BOTH, (
        "Print one JSON summary object as the last line (stderr when -f - backs up to stdout).",)),
    "no-progress": LongOption(None, BOTH, ("No progress line on stderr (-q turns it off too).",)),
    "timeout": LongOption("SECONDS", BOTH, ("Give up on a server that stops answering for that long [Default: 300]",)),
    "jobs": LongOption("N", BOTH, (
        "Restore: upload up to N chunks at once [Default: 1, the script's order];",
        "without -l, chunks of 500 documents (CouchDB takes them faster than 5000).",
        "Backup: read the database as N key ranges at once (the same file).",
        "With -d PATTERN: back up or restore N databases at once.")),
    "exclude": LongOption("PATTERN", BOTH, (
        "With -d PATTERN: leave out the databases this pattern matches (repeatable).",)),
    "resume": LongOption(None, BOTH, (
        "Restore: send only the documents the database lacks at the dump's revision.",
        "Backup: continue a reply that broke off after its last complete row.")),
    "cacert": LongOption("FILE|system", BOTH, (
        "Check the server's certificate and host name against the CA bundle FILE, or the",
        "system's store [Default: not checked, as the script's curl -k].")),
    "cert": LongOption("FILE", BOTH, ("Show the server this client certificate (PEM; its key too, or --key).",)),
    "key": LongOption("FILE", BOTH, ("The private key of --cert, when FILE holds the certificate alone.",)),
    "recreate": LongOption(None, (RESTORE,), (
        "Delete the database if it exists, create it, then restore (implies -c).",)),
    "force": LongOption(None, (RESTORE,), ("With --recreate: allow it on _users, _replicator and _global_changes.",)),
    "verify": LongOption(None, (RESTORE,), (
        "Afterwards, check that every document of the dump is there with its revision.",)),
    "max-line-mb": LongOption("N", (RESTORE,), ("Refuse a dump line longer than N MB [Default: 64]",)),
    "no-security": LongOption(None, (RESTORE,), (
        "A complete backup's restore: leave the database's _security object as it is.",)),
    "complete": LongOption(None, (BACKUP,), (
        "Every leaf revision (conflicts, deleted documents) with its history, and _security;",
        "a restore recognises such a file by itself.")),
    "since": LongOption("FILE", (BACKUP,), (
        "Only the documents changed since FILE, an earlier --complete or --since",
        "backup of the same database (implies --complete). Restore the files oldest first.",
        "With -d PATTERN: the folder of an earlier such backup, each database from its",
        "own file there (a database without one gets a full --complete backup).")),
    "help": LongOption(None, BOTH, ("Display this text [exit 0; -h exits 1, as the script].",)),
    "version": LongOption(None, BOTH, ("Display version information [exit 0; -V exits 1, as the script].",)),
}


# -l when --jobs is given without it (the bash default, 5000, otherwise).
JOBS_LINES = "500"


# Databases --recreate will not delete unless --force is given too.
SYSTEM_DATABASES = ("_users", "_replicator", "_global_changes")

# No database name holds one of these: a -d holding one is a pattern (fnmatch's).
PATTERN_CHARACTERS = "*?["

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


def extensions_text():
    """--help's list of our extensions, by the mode they serve (``LONG_OPTIONS``)."""
    def entry(name, lines):
        return "".join("\t%-19s %s\n" % (name if i == 0 else "", line) for i, line in enumerate(lines))

    def options(serves):
        return "".join(entry("--%s %s" % (name, option.value) if option.value else "--" + name, option.text)
                       for name, option in LONG_OPTIONS.items() if option.serves == serves)
    return ("Extensions (long options only; every short option keeps its bash meaning).\n"
            "Backup and restore:\n" + options(BOTH)
            + entry("-d PATTERN", ("A pattern ('*', '?', '[...]', which no database name holds): every database of the",
                                   "server it matches (backup) or of the folder -f names (restore), one file each in",
                                   "that folder, <name>.json with '/' written %2F. '*' leaves out the system databases",
                                   "(_users, ...); only a pattern beginning with '_' takes them in."))
            + entry("-f -", ("Backup to standard output, or restore from standard input (gzip too).",))
            + "Restore only (-r; a backup refuses them):\n" + options((RESTORE,))
            + entry("-s NAME", ("Start at the chunk of that split-file name (upstream's newer option).",))
            + entry("-D SECONDS", ("Wait that long between import requests (upstream's newer option).",))
            + "Backup only (-b; a restore refuses it):\n" + options((BACKUP,)) + "\n")


EXTENSIONS_TEXT = extensions_text()


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
        self.chunk_lines = 5000      # -l as split takes it; None: split would refuse it
        self.single_below = 5000     # -l as bash's test compares it; None: no integer
        self.threads = None
        self.thread_count = None     # -t as bash's test reads it; None: no integer
        self.attempts_text = "3"
        self.attempts = 3
        self.create = False
        self.quiet = False
        self.compress = False
        self.timestamp = False
        self.timeout = 300.0
        self.verify = False
        self.jobs = 1
        self.recreate = False
        self.force = False
        self.json = False
        self.progress = True
        self.max_line = 64 << 20
        self.complete = False
        self.since = None         # --since: the earlier backup an incremental one starts from
        self.resume = False
        self.delay = 0.0          # -D: seconds between import requests
        self.start_chunk = None   # -s: the split-file name to start at
        # A long option was given: the run is no longer the script's, so it may
        # send requests the script never sends (the script's runs send its own).
        self.extended = False
        self.no_security = False
        self.pattern = False     # -d is a pattern: every database it matches, to or from a folder
        self.exclude = []        # --exclude patterns
        self.server_run = False  # one database of a -d PATTERN run
        self.cacert = None        # --cacert: a CA bundle, "system", or None (not checked, as curl -k)
        self.cert = None          # --cert: the client certificate
        self.key = None           # --key: its private key, when not in the same file
        self.cores = 1
        self.url = ""


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
            valued = LONG_OPTIONS[name].value is not None
            if has_eq and not valued:
                yield "=", name
                return
            if valued:
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


def program_name(argv0=None):
    """The name the usage shows: as the caller spelled it, like bash's ``$0``.

    Under ``python -m couchdb_dump`` argv[0] is the module's full path in
    site-packages, which nobody typed: show the command instead.
    """
    if __name__ == "__main__" and __spec__ is not None:
        return "python -m %s" % __spec__.name
    if argv0 is None:
        argv0 = sys.argv[0] if sys.argv else ""
    return argv0 or PROGRAM


def usage_text(prog):
    return USAGE_TEXT.format(prog=prog)


def parse_options(argv, environ, out, prog):
    """Read the command line as couchdb-dump.sh does, in the same order.

    Prints the script's warnings and raises a ``Failure`` (``Finished``
    for -h, -V, --help, --version) where it exits; returns the ``Options``
    of a run otherwise.
    """
    if not argv or argv[0] == "":
        raise Finished(raw=usage_text(prog))
    opts = Options()
    stray, given = _read_options(argv, opts, prog)
    out.quiet = opts.quiet
    if "--jobs" in given and "l" not in given:
        # CouchDB 3.5 digests _bulk_docs of 500-1,000 documents faster than
        # 5,000, several at once; without --jobs the script's 5,000 stays.
        opts.lines = JOBS_LINES
    _check_mode_and_names(opts, stray, prog)
    _check_long_options(opts, given)
    _settle_numbers(opts, out)
    _settle_server(opts, environ, prog)
    _check_pattern(opts)
    own_port = re.search(r":([0-9]+)\Z", opts.host.rstrip("/"))
    if "P" in given and own_port and own_port.group(1) != opts.port:
        # bash's choice, kept; but a --recreate deletes on the server -H names.
        out.detail("couchdb_dump: -H names port %s: it is used, and -P %s is ignored (as the script does)"
                   % (own_port.group(1), opts.port))
    return opts


# Options that set an attribute of ``Options`` to their value, as typed.
OPTION_VALUES = {"H": "host", "d": "db", "f": "file", "u": "user", "p": "password", "P": "port", "l": "lines",
                 "t": "threads", "a": "attempts_text", "s": "start_chunk"}

# Options that set attributes of ``Options`` to True.
OPTION_FLAGS = {"b": ("backup",), "B": ("backup",), "r": ("restore",), "R": ("restore",), "c": ("create",),
                "q": ("quiet",), "z": ("compress",), "T": ("timestamp",), "--verify": ("verify",),
                "--recreate": ("recreate", "create"), "--force": ("force",), "--json": ("json",),
                "--complete": ("complete",), "--resume": ("resume",), "--no-security": ("no_security",)}


def _read_options(argv, opts, prog):
    """Walk the options into ``opts``; returns (the words after them, the options given)."""
    stray, given = [], {}   # the options given, in the order given
    for option, value in getopts(argv):
        opts.extended = opts.extended or option.startswith("--") or option in ("D", "s")
        if option == "end":
            stray = argv[value:]
        elif option in OPTION_VALUES:
            setattr(opts, OPTION_VALUES[option], value)
        elif option in OPTION_FLAGS:
            for name in OPTION_FLAGS[option]:
                setattr(opts, name, True)
        else:
            OPTION_HANDLERS[option](opts, option, value, prog)
        given[option] = True
    return stray, given


def _help_or_version(opts, option, value, prog):
    if option == "h":
        raise Finished(raw=usage_text(prog))
    if option == "--help":
        raise Finished(raw=usage_text(prog) + EXTENSIONS_TEXT, code=0)
    # bash's -V exits 1; the long spellings are ours and follow the convention.
    raise Finished(raw=VERSION_TEXT.format(program=PROGRAM, version=__version__, bash_version=BASH_VERSION),
                   code=0 if option == "--version" else 1)


def _misspelt(opts, option, value, prog):
    """getopts' answers to an option it does not take: ":" a value missing,
    "=" a value given to a flag, "?" an unknown option."""
    if option == ":":
        if value.startswith("-"):
            raise _long_option_error('... ERROR: Option "-%s" requires an argument' % value)
        raise _usage_error(prog, '... ERROR: Option "-%s" requires an argument' % value)
    if option == "=":
        raise _long_option_error('... ERROR: Option "--%s" takes no value' % value)
    if value.startswith("-"):
        raise _long_option_error('... ERROR: Unknown Option "-%s"' % value, value[1:].partition("=")[0])
    raise _usage_error(prog, '... ERROR: Unknown Option "-%s"' % value)


def _delay(opts, option, value, prog):
    seconds = _number_from_zero(value)
    if seconds is None:
        raise _usage_error(prog, '... ERROR: Option "-D" takes a number of seconds, not "%s"' % value)
    opts.delay = seconds


def _timeout(opts, option, value, prog):
    seconds = _positive_number(value)
    if seconds is None:
        raise _long_option_error('... ERROR: Option "--timeout" takes a number of seconds, not "%s"' % value)
    opts.timeout = seconds


def _whole_number(opts, option, value, prog):
    """--jobs and --max-line-mb: a whole number from 1."""
    if not value.isdigit() or not value.isascii() or int(value) < 1:
        raise _long_option_error('... ERROR: Option "%s" takes a whole number from 1, not "%s"' % (option, value))
    if option == "--jobs":
        opts.jobs = int(value)
    else:
        opts.max_line = int(value) << 20


def _no_progress(opts, option, value, prog):
    opts.progress = False


def _since(opts, option, value, prog):
    """--since FILE: an incremental backup is a complete one of the changes since FILE."""
    opts.since = value
    opts.complete = True


def _exclude(opts, option, value, prog):
    opts.exclude.append(value)


def _tls_file(opts, option, value, prog):
    """--cacert, --cert, --key: a file that can be read (--cacert system: the system's store)."""
    unreadable = None if option == "--cacert" and value == "system" else _unreadable(value)
    if unreadable:
        raise _long_option_error('... ERROR: Option "%s" names %s: %s' % (option, value, unreadable))
    setattr(opts, option[2:], value)


# The options that do more than set a value: each handler checks and sets, or ends the run.
OPTION_HANDLERS = {"h": _help_or_version, "V": _help_or_version, "--version": _help_or_version,
                   "--help": _help_or_version, ":": _misspelt, "=": _misspelt, "?": _misspelt, "D": _delay,
                   "--timeout": _timeout, "--jobs": _whole_number, "--max-line-mb": _whole_number,
                   "--no-progress": _no_progress, "--since": _since, "--exclude": _exclude,
                   "--cacert": _tls_file, "--cert": _tls_file, "--key": _tls_file}


def _check_mode_and_names(opts, stray, prog):
    """A mode, a server, a database and a file, and no stray word: what the script insists on."""
    # bash tests "x$@" = "x": a single stray word is an error; several make
    # test(1) fail with "too many arguments", which the script lets through.
    if stray and stray[0] == "--":
        stray = stray[1:]
    if len(stray) == 1 and stray[0] != "":
        raise _usage_error(prog, '... ERROR: Unknown Option "%s"' % stray[0])

    if opts.backup and opts.restore:
        raise _usage_error(prog, "... ERROR: Cannot pass both '-b' and '-r'")
    if not opts.backup and not opts.restore:
        raise _usage_error(prog, "... ERROR: Missing argument '-b' (Backup), or '-r' (Restore)")
    if not opts.host:
        raise _usage_error(prog, "... ERROR: Missing argument '-H <COUCHDB_HOST>'")
    if not opts.db:
        raise _usage_error(prog, "... ERROR: Missing argument '-d <DB_NAME>'")
    if not opts.file:
        raise _usage_error(prog, "... ERROR: Missing argument '-f <FILENAME>'")


def _check_long_options(opts, given):
    """--key without --cert, or a long option of the other mode (the first one given), is an error."""
    if opts.key is not None and opts.cert is None:
        raise _long_option_error('... ERROR: Option "--key" goes with --cert (the client certificate it is the key of)')
    mode = BACKUP if opts.backup else RESTORE
    for option in given:
        serves = LONG_OPTIONS[option[2:]].serves if option.startswith("--") else BOTH
        if mode not in serves:
            raise _long_option_error('... ERROR: Option "%s" is for %s (-%s) only, not for %s (-%s)'
                                     % (option, serves[0], serves[0][0], mode, mode[0]))


def _settle_numbers(opts, out):
    """-t, -a and -l as the script reads them, with its warnings."""
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

    # Numbers once, here; the text stays for the messages that print it back.
    opts.single_below = bash_integer(opts.lines)
    opts.chunk_lines = chunk_lines(opts.lines)
    opts.thread_count = bash_integer(opts.threads)


def _settle_server(opts, environ, prog):
    """The server URL and the credentials (the environment's when not given)."""
    opts.url = build_url(opts.host, opts.port)

    if not opts.user:
        opts.user = environ.get("COUCHDB_USER", "")
    if not opts.password:
        opts.password = environ.get("COUCHDB_PASS", "")
    if opts.user and not opts.password:
        raise _usage_error(prog, "... ERROR: Password cannot be blank, if username is specified.")
    if opts.password and not opts.user:
        raise _usage_error(prog, "... ERROR: Username cannot be blank, if password is specified.")
    problem = url_problem(opts.url)
    if problem:
        # Never a request to a path the user did not mean.
        raise Failure(lines=['... ERROR: -H "%s" with -P "%s" does not make a server URL: %s.'
                             % (_without_userinfo(opts.host), opts.port, problem)])


def _check_pattern(opts):
    """-d PATTERN (a -d holding a pattern character) and what cannot go with it."""
    opts.pattern = any(char in opts.db for char in PATTERN_CHARACTERS)
    if opts.exclude and not opts.pattern:
        problem = "--exclude leaves databases out of a -d PATTERN ('*', '?' or '['); -d %s is one database" % opts.db
    elif opts.pattern and opts.file == "-":
        problem = "-d PATTERN takes a folder, one file a database: -f - cannot hold them"
    elif opts.pattern and opts.start_chunk is not None:
        problem = "-s names a chunk of one restore; it cannot go with -d PATTERN"
    else:
        return
    raise Failure(lines=["... ERROR: " + problem])


def url_problem(url):
    """Why the URL built from -H and -P cannot name a CouchDB server, or None."""
    if re.search(r"\s", url):
        return "it holds white space"
    try:
        parts = urlsplit(url)
        parts.port   # raises ValueError for a port that is no number from 0 to 65535
    except ValueError:
        return "it has a port that is no number from 0 to 65535 (a second port, or -P not a number?)"
    if parts.scheme.lower() not in ("http", "https"):
        return "it must start with http:// or https://, or be a host name"
    if not parts.hostname:
        return "it names no host"
    if parts.path or parts.query or parts.fragment:
        return "a path, query or '#' after the host (-H takes the server only, -d the database)"
    return None


def _without_userinfo(host):
    """-H as typed, with any user:password@ blotted out.

    Everything up to the last "@" goes: a password may itself hold "/" or
    "@", and showing too little of a broken -H is better than any secret.
    """
    scheme, slashes, rest = host.rpartition("://") if "://" in host else ("", "", host)
    if "@" not in rest:
        return host
    return scheme + slashes + "***@" + rest.rpartition("@")[2]


def chunk_lines(text):
    """-l as split(1) takes it: a whole number of lines from 1, else None."""
    text = text.strip()
    if not text.isdigit() or not text.isascii() or int(text) <= 0:
        return None
    return int(text)


def _usage_error(prog, message):
    """A command line the script refuses: the error, then the usage."""
    return Failure(lines=[message], raw=usage_text(prog))


def _long_option_error(message, name=None):
    """A long option is ours: the short usage would not help; point to --help."""
    guess = difflib.get_close_matches(name, LONG_OPTIONS, n=1) if name else []
    if guess:
        message += " (did you mean --%s?)" % guess[0]
    return Failure(lines=[message + " - see --help for the long options"])


def _unreadable(path):
    """Why the file ``path`` cannot be read, or None when it can."""
    try:
        with open(path, "rb"):
            return None
    except OSError as error:
        return error.strerror or str(error)


def _positive_number(text):
    """A finite number of seconds above 0 that a socket can wait (at most a year)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if 0 < value <= 366 * 86400 else None


def _number_from_zero(text):
    """A finite number of seconds from 0, or None."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def build_url(host, port):
    """The server URL as couchdb-dump.sh composes it from -H and -P.

    One difference: a trailing "/" (a URL pasted from a browser) is taken
    off -H first; the script made ``http://h:5984/:5984`` of it.
    """
    url = host.rstrip("/")
    if "http" not in url:
        url = ("https://" if port == "443" else "http://") + url
    # egrep ":[0-9]*$": a URL already ending in a colon and digits keeps them.
    if not re.search(r":[0-9]*\Z", url):
        url = url + ":" + port
    return url


# ===========================================================================
# 3. Messages and progress
# ===========================================================================
# What the user reads: the script's lines on stdout, our explanations and progress on stderr.


# Lines couchdb-dump.sh prints about work of its own that the port does not
# do that way: after the download the script converts carriage returns and
# rewrites the file in sed stages, then gzips it; to restore, it copies the
# dump to strip the design documents and splits it into files.  The port
# streams instead and writes no such file.  Callers and the golden cases
# read stdout line by line, so these lines are printed all the same, when
# the script prints them, and only from here: no reader should take them
# for a description of this code.
SCRIPT_STEPS = {
    "carriage_returns": ("File may contain Windows carriage returns- converting...", "Completed successfully."),
    "amend": ("Amending file to make it suitable for Import.", "Stage 1 - Document filtering"),
    "multi_threaded": ("Multi-Threaded Parsing Enabled.",),
    "stages": ("Stage 2 - Duplicate curly brace removal", "Stage 3 - Header Correction",
               "Stage 4 - Final document line correction"),
    "compress": ("Stage 5 - File compression",),
    "strip_designs": ("Duplicating original file for alteration",
                      "Stripping _design elements from regular documents", "Fixing end document"),
    "split": ("Generating files to import",),
}


# What the user reads when a request fails, by kind of request, from this table
# only: the WARN line after a transfer that failed (curl's non-zero exit) and
# after a reply that is no answer (the same when ``reply`` is None), each with
# its attempt number; then, once the
# last attempt has failed, the ERROR lines of a failed transfer (``gave_up``) or
# of a reply that is no answer (``refused``).  ``REPORTED`` stands for the
# server's own first line (the script's "CouchDB Reported:"), ``REPLY_BODY``
# for the reply's body.  ``hint`` follows a refusal (-q silences it);
# ``conflict`` goes to standard error when the refusal is a conflict.  The
# user's text (``%(name)s``, ``%(db)s``, ``%(id)s``, ``%(what)s``) is a value,
# never part of a template; ``%(why)s`` is the failure in words.
REPORTED = "... ERROR: CouchDB Reported: "
REPLY_BODY = "... ERROR: Error message was:   "
Words = collections.namedtuple("Words", "transfer reply gave_up refused hint conflict",
                               defaults=(None, None, (), (REPORTED,), None, None))
ATTEMPT = " - Attempt %(attempt)d/%(of)s"
REVS_DIFF_REFUSED = "... WARN: CouchDB Reported an error during _revs_diff" + ATTEMPT + " - Retrying..."
RESTORE_GAVE_UP = ("... ERROR: Curl failed trying to restore %(name)s - Stopping",)
BACKUP_FAILED = "... ERROR: Backup failed, no file written: %(what)s failed after %(attempts)d attempts (%(why)s)."
ATTEMPT_WORDS = {
    "list databases": Words(
        transfer="... WARN: Curl failed to get the list of databases" + ATTEMPT + ". Retrying...",
        gave_up=("... ERROR: Curl failed to get the list of databases - Stopping",)),
    "check database": Words(
        transfer="... WARN: Curl failed to check the database %(db)s" + ATTEMPT + ". Retrying...",
        reply="... WARN: CouchDB Reported an error checking the database %(db)s" + ATTEMPT + " - Retrying...",
        gave_up=("... ERROR: Curl failed to check the database %(db)s - Stopping",)),
    "delete database": Words(
        transfer="... WARN: Curl failed to delete the database %(db)s" + ATTEMPT + ". Retrying...",
        reply="... WARN: CouchDB Reported an error during db deletion" + ATTEMPT + " - Retrying...",
        gave_up=("... ERROR: Curl failed to delete the database %(db)s - Stopping",)),
    "create database": Words(
        transfer="... WARN: Curl failed to create the database %(db)s" + ATTEMPT + ". Retrying...",
        reply="... WARN: CouchDB Reported an error during db creation" + ATTEMPT + " - Retrying...",
        gave_up=("... ERROR: Curl failed to create the database %(db)s - Stopping",
                 ".. ERROR: See above for any errors")),
    "restore _security": Words(
        transfer="... WARN: Curl failed to restore the _security object of %(db)s" + ATTEMPT + ". Retrying...",
        reply="... WARN: CouchDB Reported an error restoring _security" + ATTEMPT + " - Retrying...",
        gave_up=("... ERROR: Curl failed to restore the _security object of %(db)s - Stopping",),
        hint="... HINT: only an admin can set _security; --no-security restores the documents without it"),
    "read design document": Words(
        transfer="... WARN: Failed to read %(name)s from the database" + ATTEMPT + ". Retrying...",
        reply="... WARN: CouchDB Reported an error reading a design document" + ATTEMPT + " - Retrying...",
        gave_up=("... ERROR: Curl failed trying to read %(name)s - Stopping",)),
    "design document": Words(
        transfer="... WARN: Import of %(name)s failed" + ATTEMPT + ". Retrying...",
        reply="... WARN: CouchDB Reported an error during import" + ATTEMPT + " - Retrying...",
        gave_up=RESTORE_GAVE_UP,
        conflict="couchdb_dump: %(db)s already holds the design document %(id)s: to restore the dump over what the"
                 " database holds, add --resume (it updates what differs) or --recreate (it deletes the database"
                 " first)"),
    "compare chunk": Words(
        transfer="... WARN: Failed to compare %(name)s with the database" + ATTEMPT + " - Retrying...",
        reply=REVS_DIFF_REFUSED,
        gave_up=("... ERROR: Curl failed trying to compare %(name)s - Stopping",)),
    "chunk": Words(
        transfer="... WARN: Failed to import %(name)s" + ATTEMPT + " - Retrying...",
        reply="... WARN: CouchDB Reported and error during import" + ATTEMPT + " - Retrying...",
        gave_up=RESTORE_GAVE_UP),
    "whole file": Words(
        transfer="... WARN: Import of %(name)s failed" + ATTEMPT + " - Retrying...",   # reply: the same
        gave_up=("... ERROR: Import of %(name)s failed.", REPLY_BODY + "the connection failed (%(why)s)"),
        refused=("... ERROR: Import of %(name)s failed.", REPLY_BODY)),
    "too large": Words(
        reply="... WARN: %(name)s is too large for the server (HTTP 413) - sending it as %(first)d and %(second)d"
              " documents"),
    "verify revisions": Words(
        transfer="... WARN: Curl failed to check revisions (_revs_diff)" + ATTEMPT + ". Retrying...",
        reply=REVS_DIFF_REFUSED,
        gave_up=("... ERROR: Verify failed: _revs_diff could not be read",)),
    "verify _security": Words(
        transfer="... WARN: Curl failed to read the _security object of %(db)s" + ATTEMPT + ". Retrying...",
        reply="... WARN: CouchDB Reported an error reading the _security object of %(db)s" + ATTEMPT
              + " - Retrying...",
        gave_up=("... ERROR: Verify failed: could not read the _security object of %(db)s",)),
    # Ours: a complete backup's reads, and the rest of a reply that broke off (--resume).
    "complete backup": Words(
        transfer="... WARN: %(what)s failed" + ATTEMPT + " - Retrying...",   # reply: the same
        gave_up=(BACKUP_FAILED,), refused=(BACKUP_FAILED,)),
    "resume": Words(
        transfer="... WARN: The transfer broke off after %(documents)d documents" + ATTEMPT + ". Resuming..."),
}


def let_go(stream):
    """A stream that can no longer be written (a full disk, a closed pipe):
    what is still buffered can never go out, so the interpreter's last
    flush, at exit, must not fail for it ("Exception ignored", exit 120).
    Its file descriptor is pointed at /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):   # no file descriptor (a test's buffer)
        pass


class Messages:
    """The lines the bash script prints, on its standard output.

    ``info`` lines are the ones ``-q`` silences; ``line`` is always printed
    (warnings and errors).  Text goes out as bytes so that a server's reply
    quoted in an error reaches the user unchanged; every line is flushed at
    once so that logs interleave correctly with other programs.
    """

    ERROR = b"... ERROR: "

    def __init__(self, stream=None, quiet=False):
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.quiet = quiet
        self.last_error = None   # the text of the last "... ERROR:" line, for --json
        self.progress = None     # the Progress line to clear before a line and draw again after it
        self.line_open = False   # the last bytes written did not end a line
        self.last_cause = None   # why the last transfer failed, in words (``cause``)
        self.lost = False        # a line could not be written (a full disk, a closed pipe)
        # Reentrant: a signal's handler may print while this thread prints.
        self._lock = threading.RLock()

    @staticmethod
    def encode(text):
        """Text as bytes: the user's own bytes back (argv), lone escapes shown."""
        try:
            return os.fsencode(text)
        except UnicodeEncodeError:
            # A document id may hold a lone "\ud800" escape: show it escaped.
            return text.encode("utf-8", "backslashreplace")

    def raw(self, data):
        if isinstance(data, str):
            data = self.encode(data)
        if data.startswith(self.ERROR):
            self.last_error = data[len(self.ERROR):].split(b"\n", 1)[0].decode("utf-8", "replace")
        with self._lock:
            self._hide_progress()
            try:
                self.stream.write(data)
                self.stream.flush()
            except OSError:
                # A full disk or a closed pipe: the run goes on; main lets the stream go at the end.
                self.lost = True
            except ValueError:
                pass
            if data:
                self.line_open = not data.endswith(b"\n")
            self._show_progress()

    def _hide_progress(self):
        if self.progress is not None:
            self.progress.hide()

    def _show_progress(self):
        if self.progress is not None:
            self.progress.show()

    def line(self, text):
        if isinstance(text, str):
            text = self.encode(text)
        self.raw(text + b"\n")

    def info(self, text):
        if not self.quiet:
            self.line(text)

    def summarize(self, text):
        """Make ``text`` the --json error, instead of the last ERROR line's text."""
        self.last_error = text

    def script_steps(self, step):
        """The INFO lines the script prints for one of its ``SCRIPT_STEPS``."""
        for text in SCRIPT_STEPS[step]:
            self.info("... INFO: " + text)

    def cause(self, why):
        """Why a transfer failed, in words, on standard error.

        bash's own error lines for those (``Curl encountered an issue…``,
        ``Curl failed to…``) say nothing of the cause: --json's ``error``
        takes these words instead (``error_text``).
        """
        self.last_cause = str(why)
        self.detail("couchdb_dump: %s" % why)

    def error_text(self, cause=None):
        """The run's error in words, for --json: the last error line with
        ``cause``, why the run failed (an HTTP status and what it means, the
        connection's failure, the disk's), unless the line says it already;
        behind bash's vague curl lines (``Curl encountered an issue…``,
        ``Curl failed to…``) the cause alone, or the last transfer's."""
        line, cause = self.last_error, str(cause) if cause is not None else None
        if line and line.startswith("Curl "):
            return cause or self.last_cause or line
        if cause and line and cause.lower() not in line.lower():
            return "%s; %s" % (line, cause)
        return line or cause

    def detail(self, text):
        """An explanation bash never printed: it goes to standard error."""
        with self._lock:
            self._hide_progress()
            try:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            self._show_progress()


class Progress:
    """Documents and bytes done, on standard error, while a run goes on.

    Redrawn in place on a terminal; one line every few seconds otherwise, so
    that logs stay readable.  Silent with -q or --no-progress.  ``what``
    says which bytes are counted: the backup file's ("written"), or the
    request bodies' ("sent").  The last figures are drawn again at the end,
    so that a finished run does not stay at the last throttled update.
    """

    def __init__(self, enabled, stream=None, what=""):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.what = what
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.interval = 0.5 if self.tty else 5.0
        self.started = time.monotonic()
        self.last = self.started
        self.drawn = False       # a line stands on the terminal, not ended by a newline
        self.shown = False       # at least one update was written
        self.figures = None      # the last update's (documents, size, total)
        self._lock = threading.RLock()

    def restart(self, when=None):
        """Count the rate from ``when`` (now by default): the first byte of the work."""
        self.started = self.last = time.monotonic() if when is None else when

    def update(self, documents, size, total=None, force=False):
        if not self.enabled:
            return
        self.figures = (documents, size, total)
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        self._write(self._text(now, documents, size, total))

    def _text(self, now, documents, size, total, final=False):
        elapsed = max(now - self.started, 1e-6)
        rate = documents / elapsed
        text = "%d documents, %.1f MB%s, %d documents/s" % (
            documents, size / 1e6, " " + self.what if self.what else "", rate)
        if total:
            share = min(documents / total, 1.0)
            text += ", %d%%" % (share * 100)
            if not final:
                text += ", %d s left" % ((total - documents) / rate if rate > 0 else 0)
        if final:
            text += ", %.0f s" % elapsed
        return text

    def _write(self, text):
        with self._lock:
            if self.tty:
                self.drawn = self._put("\r" + text + "\x1b[K")
            else:
                self._put("progress: " + text + "\n")
            self.shown = True

    def _put(self, text):
        """Write and flush; a closed standard error is no reason to stop a run."""
        try:
            self.stream.write(text)
            self.stream.flush()
            return True
        except (BrokenPipeError, ValueError):
            return False

    def resize(self, size):
        """Correct the byte count of the last figures (the file, once complete)."""
        if self.figures is not None:
            self.figures = (self.figures[0], size, self.figures[2])

    def hide(self):
        """Clear the line on the terminal before another line is printed there."""
        with self._lock:
            if self.drawn:
                self._put("\r\x1b[K")

    def show(self):
        """Draw the line again after ``hide``, with the last figures."""
        with self._lock:
            if self.drawn and self.figures is not None:
                self._write(self._text(time.monotonic(), *self.figures))

    def finish(self):
        """The last figures, once more and final (a terminal's line ends here)."""
        with self._lock:
            if self.enabled and self.shown and self.figures is not None:
                self._write(self._text(time.monotonic(), *self.figures, final=True))
            if self.drawn:
                self._put("\n")
            self.drawn = False
            self.shown = False
            self.figures = None


class DatabaseMessages(Messages):
    """The lines of one database's run within a whole-server run (-d PATTERN).

    Standard output keeps one line a database, printed when it ends: this
    database's INFO lines are dropped (as with -q), its WARN and ERROR lines
    go to standard error after its name.  ``error_text`` still says why it
    failed, for its line and its --json object.
    """

    def __init__(self, db, progress=None):
        super().__init__(_NamedLines(db), quiet=True)
        self.db = db
        self.progress = progress

    def detail(self, text):
        super().detail("%s: %s" % (self.db, text))


class _NamedLines:
    """Standard error, each line after a database's name."""

    def __init__(self, name):
        self.name = name

    def write(self, data):
        text = data.decode("utf-8", "replace")
        sys.stderr.write("".join("%s: %s" % (self.name, line) for line in text.splitlines(keepends=True)))

    def flush(self):
        sys.stderr.flush()


class DatabasesProgress(Progress):
    """A whole-server run's progress: the databases done of all, and the MB of their files."""

    def _text(self, now, documents, size, total, final=False):
        text = "%d/%d databases, %.1f MB%s" % (documents, total or 0, size / 1e6, " " + self.what if self.what else "")
        if final:
            text += ", %.0f s" % (now - self.started)
        return text


# ===========================================================================
# 4. Talking to the server
# ===========================================================================
# HTTP and JSON: one session, replies read in blocks, failures in words, and the one
# requester that asks again.


class Reply:
    """A complete answer: status, headers (names in lower case) and body bytes."""

    def __init__(self, status, body, headers=None):
        self.status = status
        self.body = body
        self.headers = {name.lower(): value for name, value in (headers or {}).items()}
        self.value = None   # the body as the request's ``Ask`` read it

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


def retry_after_seconds(value, now=None):
    """The wait a ``Retry-After`` header asks for, in seconds, or None.

    Either a number of seconds or an HTTP date (RFC 9110); a date in the
    past asks for no wait.  Anything else is no answer at all.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit() and value.isascii():
        return float(value)
    from email.utils import parsedate_to_datetime
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


class BackPressure:
    """When a server that pushes back may be asked again, for one request.

    HTTP 429 (any request), and 503 when it says ``Retry-After``, mean
    "later", not "failed": they are waited out without using up an ``-a``
    attempt.  The wait is the server's ``Retry-After`` (capped at 60 s), else
    1, 2, 4 ... s (capped at 30 s) with jitter, so that many clients pushed
    back at once do not come back at once.  All of it is bounded: once
    ``budget`` seconds have passed since the first push-back, ``delay``
    answers None and the reply is an ordinary failure.  A 503 without
    ``Retry-After`` is an ordinary failure from the start, as in the script.
    Pure: the caller sleeps; ``clock`` and ``jitter`` can be replaced.
    """

    RETRY_AFTER_CAP = 60.0
    BACKOFF_CAP = 30.0
    BUDGET = 600.0
    SHORTEST = 0.1   # "Retry-After: 0" must not become a tight loop

    def __init__(self, budget=None, clock=time.monotonic, jitter=None, wall=time.time):
        self.budget = self.BUDGET if budget is None else budget
        self.clock = clock
        self.wall = wall
        self.jitter = jitter if jitter is not None else random.random
        self.first = None
        self.backoffs = 0
        self.waited = 0.0

    @staticmethod
    def pushes_back(status, headers):
        return status == 429 or status == 503 and "retry-after" in headers

    def delay(self, status, headers):
        """Seconds to wait before sending the request again, or None.

        None when the answer is no push-back, or when the budget is spent.
        ``headers`` is a mapping with lower-case names.
        """
        if not self.pushes_back(status, headers):
            return None
        now = self.clock()
        if self.first is None:
            self.first = now
        left = self.budget - (now - self.first)
        if left <= 0:
            return None
        asked = retry_after_seconds(headers.get("retry-after"), self.wall())
        if asked is not None:
            wait = min(asked, self.RETRY_AFTER_CAP)
        else:
            # "Equal jitter": half the step for sure, the other half at random.
            step = min(2.0 ** self.backoffs, self.BACKOFF_CAP)
            self.backoffs += 1
            wait = step / 2 + step / 2 * self.jitter()
        wait = min(max(wait, self.SHORTEST), left)
        self.waited += wait
        return wait


def quote_path_segment(text):
    """Percent-encode one path segment (a database name or a document id).

    A lone surrogate (a "\\ud800" escape in the dump) is sent as its bytes;
    the server then answers for it, as it would for any id it refuses.
    """
    return quote(text, safe="", errors="surrogatepass")


def quote_database(name):
    # Keep the characters CouchDB names use literally, as curl sends them;
    # encode "/" and anything a URL cannot carry, and "+", which CouchDB
    # reads as a space in a path ("sales+eu" would name "sales eu").
    return quote(os.fsencode(name), safe="$()-_,;=@!*'~")


def proxy_for(scheme, host, environ):
    """The proxy curl would take for this server, from the same variables.

    As curl: ``http_proxy`` (lower case only) for http, ``https_proxy`` or
    ``HTTPS_PROXY`` for https, else ``all_proxy``/``ALL_PROXY``; none when
    ``no_proxy``/``NO_PROXY`` names the host, a domain of it, or ``*``.
    """
    bypass = environ.get("no_proxy", environ.get("NO_PROXY", ""))
    host = host.strip("[]").lower()
    for entry in bypass.split(","):
        entry = entry.strip().lower().lstrip(".")
        if entry == "*" or entry and (host == entry or host.endswith("." + entry)):
            return None
    names = ("http_proxy",) if scheme == "http" else ("https_proxy", "HTTPS_PROXY")
    for name in names + ("all_proxy", "ALL_PROXY"):
        value = environ.get(name, "").strip()
        if value:
            return value if "://" in value else "http://" + value
    return None


def require_urllib3(out):
    """urllib3 is the one dependency: without it, one line that says how to get it.

    bash checks for curl at the same point, after the options.  The import
    stays here, not at the top, so that -h, -V and --help work without it.
    """
    try:
        import urllib3  # noqa: F401
    except ImportError:
        raise Failure(lines=["... ERROR: This script requires 'urllib3' to be present: pip install urllib3"
                             " (Debian/Ubuntu: apt install python3-urllib3)."])


class CouchSession:
    """Talks HTTP to the server named by the bash-style URL.

    Credentials travel only in the Authorization header (Basic, as curl -u
    sends them), never in a request's URL, and never appear in a message.
    TLS certificates are not verified, as with the script's ``curl -k``,
    unless ``cacert`` names a CA bundle (or "system", the system's store):
    then every request checks the chain and the host name.  ``cert`` and
    ``key`` are a client certificate.  ``notice`` tells the user (once a
    run) that an https server's certificate is not checked.  The proxy
    variables curl reads are read the same way (``proxy_for``).
    """

    CONNECT_LIMIT = 30.0   # seconds
    UNCHECKED = "couchdb_dump: WARN: the server's certificate is not checked (as curl -k); --cacert FILE checks it"

    def __init__(self, url, user="", password="", timeout=300.0, environ=None, cacert=None, cert=None, key=None,
                 notice=None):
        self.url = url
        self.cacert, self.cert, self.key = cacert, cert, key
        self.notice = notice
        self.environ = os.environ if environ is None else environ
        self.timeout = timeout
        # Connecting (TCP and the TLS handshake) gets a limit of its own: a
        # server that does not answer a handshake is not a slow reply.
        self.connect_limit = min(self.CONNECT_LIMIT, timeout)
        self._pool = None
        self._origin = None
        self._tls_server = None
        self._host = None
        self._url_secrets = []
        self._prefix = ""
        self.headers = {"Accept": "*/*", "User-Agent": "%s/%s" % (PROGRAM, __version__)}
        self._user = user
        self._password = password

    def _setup(self):
        if self._pool is not None:
            return
        import urllib3
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
        self._tls_server = "%s:%d" % (parsed.host, port) if scheme == "https" else None
        self._prefix = (parsed.path or "").rstrip("/")
        user, password = self._user, self._password
        credentials = None
        if user or password:
            credentials = os.fsencode(user) + b":" + os.fsencode(password)
        elif parsed.auth:
            # -H http://user:pass@host: curl sends them as Basic auth too.
            name, _, secret = parsed.auth.partition(":")
            credentials = unquote_to_bytes(name) + b":" + unquote_to_bytes(secret)
            # As typed in -H and as it reads once decoded: neither may be shown.
            self._url_secrets = [secret, unquote_to_bytes(secret).decode("utf-8", "replace")]
        if credentials is not None:
            self.headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
        # urllib3 counts the TLS handshake in the connect limit: a plain-HTTP
        # port that never answers the handshake is told apart in ``open``.
        # maxsize: --jobs and --complete keep several requests in flight; a
        # pool of one would drop each extra keep-alive connection after use.
        options = {"retries": False, "maxsize": 8,
                   "timeout": urllib3.Timeout(connect=self.connect_limit, read=self.timeout)}
        if scheme == "https":
            self._host = parsed.host
            options.update(self._tls_options())
            if self.cacert is None:
                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
                if self.notice is not None:
                    self.notice(self.UNCHECKED)
        proxy = proxy_for(scheme, parsed.host, self.environ)
        if proxy is None:
            self._pool = urllib3.PoolManager(**options)
            return
        try:
            proxy_auth = urllib3.util.parse_url(proxy).auth
            headers = {}
            if proxy_auth:
                name, _, secret = proxy_auth.partition(":")
                headers["Proxy-Authorization"] = "Basic " + base64.b64encode(
                    unquote_to_bytes(name) + b":" + unquote_to_bytes(secret)).decode("ascii")
            self._pool = urllib3.ProxyManager(proxy, proxy_headers=headers, **options)
        except Exception:
            raise TransferFailed("the proxy named in the environment is not a valid URL")

    def _tls_options(self):
        """urllib3's TLS settings: unchecked (curl -k) unless --cacert, a client certificate with --cert."""
        import ssl
        try:
            if self.cacert is None:
                if self.cert is None:
                    return {"cert_reqs": "CERT_NONE"}
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                context = ssl.create_default_context(cafile=None if self.cacert == "system" else self.cacert)
                # urllib3 checks the host name itself (1.26 sends no server name
                # for an IP address, which ssl's own check requires).
                context.check_hostname = False
        except (ssl.SSLError, OSError) as error:
            raise CertificateRefused("--cacert %s holds no certificate authority in PEM form (%s)"
                                     % (self.cacert, getattr(error, "reason", None) or error))
        if self.cert is not None:
            try:
                context.load_cert_chain(self.cert, self.key)
            except (ssl.SSLError, OSError) as error:
                raise CertificateRefused("--cert %s%s is no client certificate with its key in PEM form (%s)"
                                         % (self.cert, " with --key %s" % self.key if self.key else "",
                                            getattr(error, "reason", None) or error))
        options = {"ssl_context": context}
        if self.cacert is None:
            options["cert_reqs"] = "CERT_NONE"
        return options

    def _trust(self):
        return "the system's store" if self.cacert == "system" else "the CA bundle %s" % self.cacert

    def secrets(self):
        """The texts no message may show: the password and the Authorization value."""
        found = [self._password, self.headers.get("Authorization", "")[len("Basic "):]] + self._url_secrets
        return [secret for secret in found if secret]

    def _target(self, path):
        return self._origin + self._prefix + path

    def open(self, method, path, body=None, content_type=None, accept=None):
        """Send a request and return the streaming response (not yet read)."""
        self._setup()
        headers = dict(self.headers)
        if accept:
            headers["Accept"] = accept
        if content_type:
            headers["Content-Type"] = content_type
        if body is not None and not isinstance(body, (bytes, bytearray)):
            body = _Body(body)
            headers["Content-Length"] = str(len(body))
        try:
            return self._pool.urlopen(
                method, self._target(path), body=body, headers=headers,
                redirect=False, retries=False, preload_content=False,
                decode_content=True, enforce_content_length=True)
        except Exception as error:  # urllib3 wraps every socket failure
            if self._tls_server:
                refused = certificate_refusal(error, self._tls_server, self._host, self._trust())
                if refused:
                    raise CertificateRefused(refused)
                closed = tls_closed(error, self._tls_server, self.cert)
                if closed:
                    raise TransferFailed(closed)
                if _during_handshake(error):
                    raise TransferFailed(self._tls_failure(error))
            raise TransferFailed(_describe(error, timeout=self.timeout))

    def _tls_failure(self, error):
        if _caused_by(error, (socket.timeout, TimeoutError)):
            return "no TLS answer from %s within %g s - is it plain HTTP? (try http:// in -H)" % (
                self._tls_server, self.connect_limit)
        return "the TLS handshake with %s failed (%s) - is it plain HTTP? (try http:// in -H)" % (
            self._tls_server, _describe(error))

    def request(self, method, path, body=None, content_type=None, accept=None):
        """Send a request and read the whole reply."""
        response = self.open(method, path, body, content_type, accept)
        try:
            data = response.read()
        except Exception as error:
            raise TransferFailed(_describe(error, _bytes_read(response), self.timeout))
        finally:
            response.release_conn()
        return Reply(response.status, data, response.headers)


# OpenSSL's verify codes (X509_V_ERR_*) and what they mean to the user.
_UNTRUSTED = (2, 18, 19, 20, 21)   # no chain to a certificate authority we were given
_EXPIRED, _NOT_YET_VALID = 10, 9
_NOT_FOR_HOST = (62, 64)           # host name, IP address mismatch


def certificate_refusal(error, server, host, trust):
    """A failed certificate check in words, or None when ``error`` is no such failure.

    ``server`` is host:port, ``host`` the name the certificate must be for,
    ``trust`` where the certificate authorities came from.
    """
    chain = _causes(error)
    for cause in chain:
        code = getattr(cause, "verify_code", None)
        if code is None:
            if type(cause).__name__ == "CertificateError":   # urllib3's host name check
                return "cannot trust %s: its certificate is not for %s" % (server, host)
            continue
        if code in _UNTRUSTED:
            why = "is not signed by a certificate authority of %s" % trust
        elif code == _EXPIRED:
            why = "has expired"
        elif code == _NOT_YET_VALID:
            why = "is not valid yet"
        elif code in _NOT_FOR_HOST:
            why = "is not for %s" % host
        else:
            why = "failed the check (%s)" % getattr(cause, "verify_message", code)
        return "cannot trust %s: its certificate %s" % (server, why)
    text = " ".join(str(cause) for cause in chain).upper()
    if "CERTIFICATE_REQUIRED" in text:
        return "the server %s asks for a client certificate (--cert FILE)" % server
    if any(alert in text for alert in ("ALERT_BAD_CERTIFICATE", "ALERT_UNKNOWN_CA", "ALERT_CERTIFICATE_UNKNOWN")):
        return "the server %s refused the client certificate of --cert" % server
    return None


def tls_closed(error, server, client_cert):
    """A server that closed the TLS connection as it began, in words, or None.

    TLS 1.3 tells a refused client certificate after the handshake: a client
    still sending its request sees the connection closed, not the reason.
    """
    if not any(type(cause).__name__ == "SSLEOFError" for cause in _causes(error)):
        return None
    return "the server %s closed the TLS connection as it began (%s)" % (
        server, "does it refuse the client certificate of --cert?" if client_cert
        else "does it ask for a client certificate? --cert FILE gives one")


def _bytes_read(response):
    """How much of the reply came over the wire before it failed."""
    try:
        return response.tell()
    except Exception:
        return None


def read_blocks(response, size=1 << 20, partial=False):
    """Yield a reply's body in blocks of exactly ``size`` bytes (the last may
    be shorter), whatever its HTTP chunking.

    With ``partial`` (backup --resume), a read that breaks first hands over
    the bytes that did arrive, then raises: a break then loses only the row
    it cut, whatever the block size.

    CouchDB flushes an HTTP chunk every ~1,490 bytes; urllib3's ``stream``
    yields each one, and http.client's ``read(size)``, which joins them,
    still spends a few microseconds of Python on each: twice the CPU of the
    whole backup.  A chunked reply without Content-Encoding is therefore
    read from the socket as it comes and unframed by ``ChunkedBody``; any
    other reply goes through urllib3 (1.26 and 2.x alike), which also
    decodes a compressed one.  Either way the blocks, and so the backup's
    bytes (``-z`` members included), do not depend on the server's chunks.
    """
    body = ChunkedBody.of(response)
    if body is not None:
        yield from body.blocks(size, partial)
        return
    plain = response.headers.get("content-encoding", "identity").strip().lower() in ("", "identity")
    while True:
        try:
            block = response.read(size)
        except Exception as error:
            kept = _incomplete_read_bytes(error) if partial and plain else b""
            if kept:
                yield kept
            raise
        if not block:
            return
        yield block


def _incomplete_read_bytes(error):
    """The bytes http.client did read before a body broke off (urllib3 wraps its IncompleteRead)."""
    import http.client
    for cause in list(error.args) + [error.__cause__, error.__context__]:
        if isinstance(cause, http.client.IncompleteRead) and isinstance(cause.partial, bytes):
            return cause.partial
    return b""


class ReplyBroken(TransferFailed):
    """Reading the reply failed (reset, cut, timeout): what --resume continues."""

    def __init__(self, cause):
        super().__init__(cause)
        self.cause = cause


def resumable_blocks(response, size=1 << 20):
    """``read_blocks`` for --resume: the bytes that arrived, then ``ReplyBroken``."""
    try:
        yield from read_blocks(response, size, partial=True)
    except Exception as error:
        raise ReplyBroken(error)


# "\r\n" ending a chunk's data, then the next chunk's size line.
_CHUNK_SIZE_LINE = re.compile(rb"\r\n([0-9A-Fa-f]{1,16})\r\n")   # with an extension: _walk


_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


def _find_crlf(view, start):
    """Where the next b"\\r\\n" of a memoryview starts (a size line is short: look near)."""
    found = bytes(view[start:start + ChunkedBody.LONGEST_SIZE_LINE + 2]).find(b"\r\n")
    return -1 if found < 0 else start + found


def _cut(pieces, size):
    """The first ``size`` bytes of a list of bytes-like pieces, joined, and
    the pieces left (the one cut in two as a memoryview: no copy).  Found
    without a Python loop over the pieces: there can be hundreds a block."""
    ends = list(accumulate(map(len, pieces)))
    index = bisect_left(ends, size)
    extra = ends[index] - size
    if not extra:
        return b"".join(pieces[:index + 1]), pieces[index + 1:]
    view = memoryview(pieces[index])
    keep = len(view) - extra
    return b"".join(pieces[:index] + [view[:keep]]), [view[keep:]] + pieces[index + 1:]


class ChunkedBody:
    """Unframes a chunked HTTP body (RFC 9112 7.1) a socket read at a time.

    Each chunk's size line is matched where the chunk before it ends, and
    its data is kept as a memoryview of the read: per chunk, one regular
    expression match and a slice, no copy until the block is joined.  What
    that quick step does not take (chunk extensions, a size line cut by the
    end of a read, a broken body) goes through ``_walk``, which checks
    everything and says what is wrong.
    """

    LONGEST_SIZE_LINE = 1024

    def __init__(self, raw, response):
        self.raw = raw              # the socket's buffered reader
        self.response = response    # http.client's, told when the body is over
        self.left = 0               # bytes of the current chunk still to come
        self.started = False
        self.done = False
        self.carry = b""            # raw bytes of a size line not yet whole
        self.received = 0           # raw bytes read from the socket so far

    @classmethod
    def of(cls, response):
        """A ChunkedBody for a urllib3 response it can read, else None."""
        import http.client
        inner = getattr(response, "_fp", None)
        if not isinstance(inner, http.client.HTTPResponse) or not inner.chunked \
                or inner.chunk_left is not None or getattr(inner, "fp", None) is None:
            return None
        if response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
            return None
        return cls(inner.fp, inner)

    def blocks(self, size, partial=False):
        pieces, have = [], 0
        try:
            while not self.done:
                new = self._unframe(self._read(size))
                pieces.extend(new)
                have += sum(map(len, new))   # no Python loop over CouchDB's ~1,490-byte chunks
                while have >= size:
                    block, pieces = _cut(pieces, size)
                    have -= size
                    yield block
        except Exception as error:
            error.received = self.received   # for the message: how much came before the failure
            if partial and have:   # read_blocks' partial: what did arrive, then the failure
                yield b"".join(pieces)
            raise
        if have:
            yield b"".join(pieces)

    def _read(self, size):
        import urllib3
        try:
            raw = self.raw.read1(size)
        except socket.timeout:
            raise urllib3.exceptions.ReadTimeoutError(None, None, "Read timed out.")
        except OSError as error:
            raise urllib3.exceptions.ProtocolError("Connection broken: %r" % error, error)
        if not raw:
            self._broken("the reply ended inside its chunked body")
        self.received += len(raw)
        return raw

    @staticmethod
    def _broken(why):
        import urllib3
        raise urllib3.exceptions.ProtocolError("Connection broken: " + why)

    def _unframe(self, raw):
        """The data in ``raw`` (after what was carried), as bytes-like pieces."""
        buf = self.carry + raw if self.carry else raw
        self.carry = b""
        if not self.started:
            buf = b"\r\n" + buf      # the first size line has no chunk before it
            self.started = True
        size = len(buf)
        if self.left >= size:
            self.left -= size
            return [buf]
        view = memoryview(buf)
        pieces = [view[:self.left]] if self.left else []
        append = pieces.append
        match = _CHUNK_SIZE_LINE.match
        position, self.left = self.left, 0
        # The hot loop: one step a chunk, every step in C but the arithmetic.
        while True:
            found = match(buf, position)
            if found is None:
                return pieces + self._walk(view[position:])
            digits = found[1]
            start = position + len(digits) + 4   # "\r\n" digits "\r\n"
            end = start + int(digits, 16)
            if end == start:
                self._end(buf[start:])
                return pieces
            if end >= size:
                append(view[start:])
                self.left = end - size
                return pieces
            append(view[start:end])
            position = end

    def _walk(self, view):
        """The same, slowly and strictly, from a size line on."""
        pieces = []
        position = 0
        size = len(view)
        while True:
            end = _find_crlf(view, position + 2) if size - position >= 2 else -1
            if end < 0:
                self._carry(bytes(view[position:]))
                return pieces
            if view[position:position + 2] != b"\r\n":
                self._broken("a chunk is longer than its size line says")
            line = bytes(view[position + 2:end]).split(b";", 1)[0].rstrip(b" \t")
            if not _HEX.fullmatch(line):
                self._broken("a chunk size line is not a hexadecimal number")
            length = int(line, 16)
            start = end + 2
            if length == 0:
                self._end(bytes(view[start:]))
                return pieces
            if start + length > size:
                pieces.append(view[start:])
                self.left = start + length - size
                return pieces
            pieces.append(view[start:start + length])
            position = start + length

    def _carry(self, rest):
        if len(rest) > self.LONGEST_SIZE_LINE:
            self._broken("a chunk size line is too long")
        self.carry = rest

    def _end(self, trailer):
        """After the last (empty) chunk: the trailer section, up to its blank line."""
        while not (trailer == b"\r\n" or trailer.endswith(b"\r\n\r\n")):
            if len(trailer) > 65536:
                self._broken("the trailer of the chunked body is too long")
            line = self.raw.readline(65537)
            if not line:
                self._broken("the reply ended inside its chunked body")
            trailer += line
        self.done = True
        self.response.chunk_left = 0
        self.response._close_conn()   # as http.client does at the end of a body


class _Body:
    """A request body read from a file-like source in blocks, length known."""

    def __init__(self, source):
        self.length, self.blocks = source

    def __len__(self):
        return self.length

    def __iter__(self):
        return iter(self.blocks())


def _causes(error):
    """The error and every error inside it: its arguments, ``reason``, cause and context."""
    chain, todo = [], [error]
    while todo and len(chain) < 12:
        link = todo.pop(0)
        if not isinstance(link, BaseException) or any(link is seen for seen in chain):
            continue
        chain.append(link)
        todo += list(getattr(link, "args", ())) + [getattr(link, "reason", None), link.__cause__, link.__context__]
    return chain


def _caused_by(error, kinds):
    return any(isinstance(cause, kinds) for cause in _causes(error))


def _during_handshake(error):
    """Whether the failure came from inside ssl's handshake (urllib3 1.26 and
    2.x both report a handshake timeout as a read timeout)."""
    for cause in _causes(error):
        trace = cause.__traceback__
        while trace is not None:
            if trace.tb_frame.f_code.co_name == "do_handshake":
                return True
            trace = trace.tb_next
    return False


def _describe(error, received=None, timeout=None):
    """Say in words what went wrong with an exchange, for a person to act on.

    Connection failures (urllib3 1.26 and 2.x wrap the socket's error in
    their own) become ``cannot connect to HOST:PORT: connection refused``,
    ``host name HOST not found``, ``no answer for N s (--timeout)``, ``the
    server closed the connection after 48.1 MB`` (``received``: the bytes of
    the reply read so far, when the caller knows them; ``timeout``: the
    --timeout in force, else urllib3's error tells it).  Anything else is
    named by its type.  Never a URL: it could carry a secret.
    """
    chain = _causes(error)
    names = {type(link).__name__ for link in chain}
    where = _connection_of(chain)
    at = where or "the server"
    if any(isinstance(link, socket.gaierror) for link in chain):
        return "host name %s not found" % where.rpartition(":")[0] if where else "host name not found"
    if any(isinstance(link, ConnectionRefusedError) for link in chain):
        return "cannot connect to %s: connection refused" % at
    if "NewConnectionError" in names or "NameResolutionError" in names:
        why = next((link.strerror for link in chain if isinstance(link, OSError) and link.strerror), None)
        return "cannot connect to %s: %s" % (at, (why or "failed").lower())
    seconds = "%g" % timeout if timeout else next((text for text in map(_timeout_of, chain) if text), None)
    silence = "no answer for %s s (--timeout)" % seconds if seconds else "no answer within --timeout"
    if "ConnectTimeoutError" in names:
        # The connect has its own limit (at most 30 s): urllib3's error tells it.
        limit = next((text for text in map(_timeout_of, chain) if text), None)
        return "cannot connect to %s: no answer%s" % (at, " within %s s" % limit if limit else "")
    if "ReadTimeoutError" in names or any(isinstance(link, socket.timeout) for link in chain):
        return silence
    if names & {"ProtocolError", "IncompleteRead", "InvalidChunkLength", "RemoteDisconnected",
                "ConnectionResetError", "BrokenPipeError", "ConnectionAbortedError"}:
        if received:
            return "the server closed the connection after %s" % _size_text(received)
        return "the server closed the connection without answering"
    text = type(error).__name__
    reason = getattr(error, "reason", None)
    if reason is not None:
        text += ": " + type(reason).__name__
    return text


def _connection_of(chain):
    """``host:port`` of the connection that failed, from urllib3's error."""
    for link in chain:
        # 2.x names it conn; 1.26 passes it first (as ``pool``); a pool has them too.
        for holder in (vars(link).get("conn"), vars(link).get("pool")) + tuple(link.args[:1]):
            host, port = getattr(holder, "host", None), getattr(holder, "port", None)
            if isinstance(host, str) and host:
                return "%s:%s" % (host, port) if port else host
    return None


def _timeout_of(error):
    """The read or connect timeout in force when ``error`` happened, as text."""
    pool = vars(error).get("pool") if hasattr(error, "__dict__") else None
    timeout = getattr(pool, "timeout", None)
    value = getattr(timeout, "read_timeout", None) if timeout is not None else None
    if isinstance(value, (int, float)):
        return "%g" % value
    found = re.search(r"(?:read|connect) timeout=([0-9.]+)", str(error))
    return "%g" % float(found.group(1)) if found else None


def _size_text(size):
    return "%.1f MB" % (size / 1e6) if size >= 1e6 else "%d bytes" % size


_JSON_TOKENS = re.compile(r'("(?:[^"\\]|\\.)*")|[ \t\n\r]+', re.S)


def compact_json(text):
    """Drop the white space between JSON tokens, keeping every token's text."""
    return _JSON_TOKENS.sub(lambda m: m.group(1) or "", text)


def _json_or_none(data):
    """The JSON value of ``data``, or None when it is not JSON."""
    try:
        return json.loads(data)
    except ValueError:
        return None


def json_bytes(value):
    """``value`` as compact JSON in UTF-8; a lone "\\ud800" escape stays an escape."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def reported(reply):
    """The script's last word on an error reply: its first line, or the status."""
    if reply.is_couchdb_error or not reply.body.strip():
        return reply.first_line if reply.body.strip() else b"HTTP %d" % reply.status
    return b"HTTP %d: %s" % (reply.status, reply.first_line[:200])


# What an HTTP status means to the person who reads it, said beside the status.
STATUS_WORDS = {
    401: "the user name and password were not accepted (-u/-p, or COUCHDB_USER/COUCHDB_PASS)",
    403: "the user may not do this",
    404: "not found",
    409: "a conflict with what the database holds",
    413: "the request is too large for the server",
}


def answered(status, body=None):
    """A reply that is no answer, in words: its status, what it means, and
    with ``body`` the reason CouchDB gave."""
    text = "the server answered HTTP %d" % status
    if status in STATUS_WORDS:
        text += ": " + STATUS_WORDS[status]
    error = _json_or_none(body) if body else None
    if isinstance(error, dict) and "error" in error:
        text += " (%s: %s)" % (error.get("error"), error.get("reason", ""))
    return text


def failure_words(failure):
    """A failed attempt in words: the transfer's failure, or what the reply was."""
    if not isinstance(failure, Reply):
        return str(failure)
    if failure.is_couchdb_error:
        return "HTTP %d, CouchDB reported: %s" % (failure.status, failure.first_line.decode("utf-8", "replace"))
    return "HTTP %d" % failure.status if not failure.ok else "the reply is not the JSON expected"


class Ask:
    """One request and what counts as its answer: a record, no code.

    ``expect`` names the reply that answers it: ``"any"`` reply at all,
    ``"ok"`` (2xx without an error line), ``"stored"`` (2xx and CouchDB's
    ``{"ok":true}``, for the document ``doc_id`` with its new ``rev`` when
    given: a health page behind a wrong path must not pass for a stored
    document), ``"object"`` or ``"list"`` (2xx and a JSON object or list:
    the script took any reply without an error line, and a proxy's page
    passed for a restore).  ``read`` parses the text of a 2xx reply instead
    (a value, or ValueError: no answer).  A status in ``tolerate`` is an
    answer as it is (a document that may be missing).  What was read is the
    reply's ``value``.

    ``words`` names the kind of request in ``ATTEMPT_WORDS``; ``values``
    fill its templates.  ``accept`` is the Accept header, where the
    server's default will not do.
    """

    EXPECTED = ("any", "ok", "stored", "object", "list")

    def __init__(self, method, path, words, body=None, expect="ok", doc_id=None, read=None, tolerate=(),
                 accept=None, **values):
        assert expect in self.EXPECTED and words in ATTEMPT_WORDS, (expect, words)
        self.method = method
        self.path = path
        self.words = words
        self.body = body
        self.expect = expect
        self.doc_id = doc_id
        self.read = read
        self.tolerate = tolerate
        self.accept = accept
        self.values = dict(values, id=doc_id) if doc_id is not None else values

    def sending(self, body):
        """The same request with another body (a part of a body the server found too large)."""
        other = Ask.__new__(Ask)
        other.__dict__.update(self.__dict__, body=body)
        return other

    def answered_by(self, reply):
        """Whether ``reply`` answers the request; what it read is its ``value``."""
        if reply.status in self.tolerate or self.expect == "any":
            return True
        if not reply.ok:
            return False
        if self.read is not None:
            try:
                reply.value = self.read(reply.body.decode("utf-8"))
            except ValueError:   # UnicodeDecodeError and JSONDecodeError too: a cut or garbled reply
                return False
            return True
        if self.expect == "ok":
            return True
        reply.value = _json_or_none(reply.body)
        if self.expect == "list":
            return isinstance(reply.value, list)
        if not isinstance(reply.value, dict):
            return False
        if self.expect == "stored":
            answer = reply.value
            return answer.get("ok") is True and (
                self.doc_id is None or answer.get("id") == self.doc_id and isinstance(answer.get("rev"), str))
        return True


def is_import_request(method, path):
    """The requests -D spaces: a design document's PUT and a _bulk_docs POST."""
    return (method == "PUT" and "/_design/" in path) or (method == "POST" and path.endswith("/_bulk_docs"))


class Resumption:
    """--resume of one reply: the attempts at its current break, the rows it had
    brought at the last, and the response of the request for the rest."""

    def __init__(self):
        self.tries = 0
        self.rows = -1
        self.response = None

    def close(self):
        if self.response is not None:
            self.response.release_conn()
            self.response = None


class Requester:
    """The one way to ask the server: every request of a run goes through it.

    It owns what "ask again" means, once for every request:

    - attempts: an ``Ask`` is sent up to -a times, 1 s apart, as the script
      retries; a failed transfer and a reply that is no answer each have
      their WARN line, and after the last attempt the ERROR lines end the
      run (a ``Failure``), all from ``ATTEMPT_WORDS``;
    - back-pressure: a server that pushes back (429, or 503 with
      Retry-After: ``BackPressure``) is waited out and asked again without
      using an attempt;
    - pacing (-D): an import request starts ``delay`` seconds after the
      previous one ended (with --jobs, starts are spaced too);
    - the 413 split: a _bulk_docs body the server finds too large is sent
      in halves (``send_documents``);
    - the rest of a reply that broke off (backup --resume: ``resume``).

    A signal noted by ``Stop`` ends the waiting between two requests
    (``Stopped``).  Nothing else in the program sleeps or loops over
    attempts.
    """

    PAUSE = 1.0   # seconds between attempts: the script's sleep 1
    TOO_LARGE = "the server refuses this document as too large (HTTP 413)"

    def __init__(self, session, out, opts, stop, delay=0.0):
        self.session = session
        self.out = out
        self.attempts = opts.attempts
        self.attempts_text = opts.attempts_text
        self.stop = stop
        self.delay = delay
        self.pacing = threading.Lock()
        self.next_import = 0.0

    # -- asking ---------------------------------------------------------------

    def ask(self, ask):
        """The reply that answers ``ask``; a ``Failure`` once the attempts are spent."""
        words = ATTEMPT_WORDS[ask.words]
        pressure = BackPressure()
        attempt = 0
        while True:
            self.check_stop()
            try:
                reply = self._send(ask)
            except TransferFailed as error:
                # A refused certificate stays refused: the first failure is the last.
                attempt = self.attempts if isinstance(error, CertificateRefused) else attempt + 1
                self.out.cause(error)
                self._failed(ask, words, attempt, error)
            else:
                # Before the answer is judged: a 429 is no answer, even where any answer would do.
                wait = pressure.delay(reply.status, reply.headers)
                if wait is not None:
                    self._wait_out(reply.status, wait, "sending the request again in %.1f s (no attempt used)")
                    continue
                if ask.answered_by(reply):
                    return reply
                attempt += 1
                self._failed(ask, words, attempt, reply)
            self.check_stop()
            time.sleep(self.PAUSE)

    def open(self, path):
        """GET ``path``, to be read as it streams: a server that pushes back is
        waited out; a failed transfer is the caller's to tell (or to resume)."""
        pressure = BackPressure()
        while True:
            response = self.session.open("GET", path)
            wait = pressure.delay(response.status, response.headers)
            if wait is None:
                return response
            response.drain_conn()
            response.release_conn()
            self._wait_out(response.status, wait, "asking again in %.1f s")

    def glance(self, path):
        """One GET whose answer only informs (what a database holds once a
        restore stopped): one try, nothing waited out, nothing said; the
        reply's JSON value, or None."""
        try:
            reply = self.session.request("GET", path)
        except TransferFailed:
            return None
        return _json_or_none(reply.body) if reply.ok else None

    def check_stop(self):
        if self.stop.requested:
            raise Stopped(self.stop.requested)

    def _send(self, ask):
        accept = {"accept": ask.accept} if ask.accept else {}
        content_type = "application/json" if ask.body is not None else None
        if not self.delay or not is_import_request(ask.method, ask.path):
            return self.session.request(ask.method, ask.path, ask.body, content_type, **accept)
        with self.pacing:
            wait = self.next_import - time.monotonic()
            if wait > 0 and not self.pause(wait, self._stop_requested):
                raise Stopped(self.stop.requested)
            self.next_import = time.monotonic() + self.delay
        try:
            return self.session.request(ask.method, ask.path, ask.body, content_type, **accept)
        finally:
            with self.pacing:
                self.next_import = max(self.next_import, time.monotonic() + self.delay)

    def _stop_requested(self):
        return self.stop.requested

    def _wait_out(self, status, wait, again):
        """The wait a server that pushed back asked for (``BackPressure``), said on standard error."""
        self.out.detail(("couchdb_dump: the server answered HTTP %d: " + again) % (status, wait))
        if not self.pause(wait, self._stop_requested):
            raise Stopped(self.stop.requested)

    def _failed(self, ask, words, attempt, failure):
        """After a failed attempt: its WARN line; after the last, the ``Failure`` with the ERROR lines."""
        values = dict(ask.values, attempt=attempt, of=self.attempts_text, attempts=self.attempts,
                      why=failure_words(failure))
        replied = isinstance(failure, Reply)
        if attempt < self.attempts:
            self.out.line(((words.reply or words.transfer) if replied else words.transfer) % values)
            return
        if not replied:
            # The cause was said at the attempt; it goes with the failure to --json's error.
            raise Failure(lines=[line % values for line in words.gave_up], cause=failure)
        lines = []
        for line in words.refused:
            if line == REPORTED:
                line = REPORTED.encode() + reported(failure)
            elif line == REPLY_BODY:
                # The server's body as the script printed it, but always a whole line.
                line = REPLY_BODY.encode() + (failure.body[:-1] if failure.body.endswith(b"\n") else failure.body)
            else:
                line = line % values
            lines.append(line)
        conflict = failure.status == 409 or b'"error":"conflict"' in failure.first_line
        # The status and what it means: the cause --json's error carries.
        cause = answered(failure.status) if not failure.ok else None
        raise Failure(lines=lines, hints=[words.hint] if words.hint else [], cause=cause,
                      notes=[words.conflict % values] if words.conflict and conflict else [])

    @staticmethod
    def pause(seconds, stop=None):
        """Sleep, in short slices so that ``stop()`` (when given) can end it early.

        Returns False when ``stop()`` became true, True after the whole wait.
        """
        end = time.monotonic() + seconds
        while True:
            if stop is not None and stop():
                return False
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.2))

    # -- the 413 split ----------------------------------------------------------

    def send_documents(self, ask, part):
        """POST the _bulk_docs body of ``part``; returns ``(documents sent, one
        Reply with every answer)``.

        ``part`` has ``stream`` (the body, as ``CouchSession.open`` sends it),
        ``documents`` and ``whole()``, a ``Chunk`` of it (built only when
        needed), which has ``halves()`` and ``ids()``.  A body the server
        refuses as too large (413) is sent in halves, each on its own, down
        to one document; a single document still refused is answered as
        refused, by id.
        """
        ask = ask.sending(part.stream)
        ask.tolerate = (413,)
        reply = self.ask(ask)
        if reply.status != 413:
            return part.documents, reply
        sent, answers = self._halves(ask, part.whole())
        return sent, Reply(201, json.dumps(answers).encode())

    def _halves(self, ask, chunk):
        """A chunk the server found too large: its halves, each sent (and halved) in turn."""
        if chunk.documents <= 1:
            refused = [{"id": doc_id, "error": "too_large", "reason": self.TOO_LARGE} for doc_id in chunk.ids()]
            return len(refused), refused
        halves = chunk.halves()
        self.out.line(ATTEMPT_WORDS["too large"].reply % dict(ask.values, first=halves[0].documents,
                                                              second=halves[1].documents))
        sent, answers = 0, []
        for half in halves:
            reply = self.ask(ask.sending(half.stream))
            count, answered = (half.documents, reply.value) if reply.status != 413 else self._halves(ask, half)
            sent += count
            answers.extend(answered)
        return sent, answers

    # -- the rest of a reply that broke off ------------------------------------------

    def resume(self, resumption, path, rows, failure, begin):
        """Backup --resume: ``begin(response)`` of a GET of ``path``, the rest of a
        reply that broke off after ``rows`` rows.

        Each break gets up to -a requests, 1 s apart like the script's
        retries; a reply that brought new rows before it broke starts the
        count again.  ``begin`` reads the start of the rest (a break there is
        one more attempt).  Raises ``failure`` once the attempts are spent.
        """
        if rows > resumption.rows:
            resumption.tries, resumption.rows = 0, rows
        while True:
            resumption.tries += 1
            if resumption.tries > self.attempts:
                raise failure
            why = failure.cause if isinstance(failure, ReplyBroken) else failure
            if not isinstance(why, (TransferFailed, BackupFailed)):
                why = _describe(why)
            self.out.detail("couchdb_dump: %s" % why)
            self.out.line(ATTEMPT_WORDS["resume"].transfer % {"documents": rows, "attempt": resumption.tries,
                                                              "of": self.attempts_text})
            time.sleep(self.PAUSE)
            resumption.close()
            try:
                resumption.response = self.open(path)
                if not 200 <= resumption.response.status < 300:
                    raise BackupFailed("the server answered HTTP %d to the request for the rest"
                                       % resumption.response.status)
                return begin(resumption.response)
            except (TransferFailed, BackupFailed) as error:   # ReplyBroken is a TransferFailed
                failure = error


def read_database_names(text):
    """The names of an ``_all_dbs`` reply's text; ValueError when it is no list of names."""
    names = json.loads(text)
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError("not a list of database names")
    return names


def database_names(reply):
    """The names an ``_all_dbs`` reply lists, or None when it is no such list."""
    if not 200 <= reply.status < 300:
        return None
    try:
        return read_database_names(reply.body)
    except ValueError:
        return None


class DatabaseList:
    """The names of the server's databases, read in pages of ``PAGE``.

    ``GET /_all_dbs?limit=PAGE``, then ``&startkey=`` the JSON of the last
    name (its repeat dropped), so that no reply has to hold 100,000 names.
    A server that ignores ``limit`` (PouchDB Server) answers with every
    name at once: a reply longer than asked is the whole list, and a page
    that does not go on after the last name ends the reading, never loops.
    """

    PAGE = 1000

    def __init__(self, requester):
        self.requester = requester

    def names(self):
        last = None
        while True:
            path = "/_all_dbs?limit=%d" % self.PAGE
            if last is not None:
                path += "&startkey=" + quote(json.dumps(last), safe="")
            reply = self.requester.ask(Ask("GET", path, "list databases", read=read_database_names)).value
            page = reply[1:] if last is not None and reply[:1] == [last] else reply
            if last is not None and any(name <= last for name in page):
                return   # the server ignored startkey: its first reply was the whole list
            yield from page
            # Shorter than asked: the end; longer: the server ignored limit and sent them all.
            if len(reply) != self.PAGE or not page:
                return
            last = page[-1]


def matching_databases(names, pattern, excludes=()):
    """The ``names`` a -d PATTERN takes, sorted: shell-style over the whole
    name; a system database (``_users``...) only when the pattern itself
    begins with "_"; none that an --exclude pattern matches."""
    import fnmatch
    return sorted(name for name in names
                  if fnmatch.fnmatchcase(name, pattern) and (pattern.startswith("_") or not name.startswith("_"))
                  and not any(fnmatch.fnmatchcase(name, excluded) for excluded in excludes))


# ===========================================================================
# 5. Reading and rewriting rows
# ===========================================================================
# Pure: bytes in, bytes out.  A reply's rows become the dump's lines; a dump's lines
# give their ids and revisions back.  The worker processes at the end run this work on several cores.


DESIGN_PREFIX = "_design/"


def is_design_id(doc_id):
    """Whether a document id names a design document: the one rule for it."""
    return isinstance(doc_id, str) and doc_id.startswith(DESIGN_PREFIX)


BACKUP_HEADER = b'{"new_edits":false,"docs":['

FOOTER = b"]}"

GZIP_MAGIC = b"\x1f\x8b"   # a compressed dump, whatever its name

_ROW_START = b'{"id":'


_DOC_MARK = b'"},"doc":'   # the end of a row's value {"rev":"..."} and its "doc" key


# -- The rule ---------------------------------------------------------------
# One rewrite rule; every way below of applying it gives its bytes.


def rewrite_row_line(line):
    """One CouchDB ``_all_docs`` row line -> the dump line of its document.

    The definition of the rewrite: the faster ways below (a block at once,
    a line too long to hold, a reply of another layout, a revision read
    with ``_bulk_get``) give the same bytes where they apply, which the
    property tests check on generated rows.

    ``{"id":..,"key":..,"value":{"rev":".."},"doc":{DOC}},`` becomes
    ``{DOC},``.  The document is what follows the row's value: unlike the
    script's greedy ``.*,"doc":``, a document holding ``,"doc":`` survives.
    Other lines (the empty line of an empty database, the footer) only get
    the script's brace fix, which it applies to every line.  A reply's
    carriage returns are removed before its lines are cut.
    """
    if line.startswith(_ROW_START):
        mark = line.find(_DOC_MARK)
        if mark < 0 or not _is_row_start(line[:mark + 2]):
            raise ReplyShape("a row of the reply has no document: %r" % line[:80])
        line = line[mark + len(_DOC_MARK):]
    elif line and line != FOOTER:
        raise ReplyShape("a line of the reply is not a row: %r" % line[:80])
    return fix_closing_braces(line)


def _is_row_start(text):
    """``{"id":..,"key":..,"value":{..}}``: the part of a row before its document."""
    try:
        row = json.loads(text + b"}")
    except ValueError:
        return False
    return isinstance(row, dict) and isinstance(row.get("id"), str) and isinstance(row.get("value"), dict)


def fix_closing_braces(line):
    """The script's stages 2 and 4: drop the row's closing brace at line end."""
    if line.endswith(b"}},"):
        return line[:-2] + b","
    if line.endswith(b"}}"):
        return line[:-1]
    return line


# -- Its fast paths ---------------------------------------------------------


def rewrite_couchdb_block(block):
    """``rewrite_row_line`` on each line of a block of whole lines (the last
    may lack its newline; carriage returns already removed).

    Returns ``(bytes to write, rows seen)``.  The line-by-line way, for
    whatever ``rewrite_rows_fast`` does not take.
    """
    lines = block.split(b"\n")
    rows = sum(1 for line in lines if line.startswith(_ROW_START))
    if FOOTER in lines and any(lines[lines.index(FOOTER) + 1:]):
        raise ReplyShape("data after the reply's ']}' end")
    return b"\n".join([rewrite_row_line(line) for line in lines]), rows


# A row's start up to its document, in the fast path's terms (below).
_ROW_PREFIX = re.compile(rb'\{"id":"[^"\\]*","key":"[^"\\]*","value":\{"rev":"[^"]*"\},"doc":')


# A row's end and the next row's start, up to its document: the whole
# rewrite between two rows is replacing this by ",\n".  Ids with quotes or
# backslashes take the line-by-line way.
_ROW_JOIN = {
    True: re.compile(rb'\},\r\n\{"id":"[^"\\]*","key":"[^"\\]*","value":\{"rev":"[^"]*"\},"doc":'),
    False: re.compile(rb'\},\n\{"id":"[^"\\]*","key":"[^"\\]*","value":\{"rev":"[^"]*"\},"doc":'),
}


def rewrite_rows_fast(block):
    """``rewrite_couchdb_block`` (so ``rewrite_row_line`` on each line) of a
    block of whole row lines, in one regular-expression pass: the backup's
    hot path.

    Applies to the common case only: every line a row whose id and key
    hold no quote or backslash, followed by a comma, line ends all LF or all
    CRLF.  Returns ``(pieces to write, rows)``, or None when the block is
    anything else.  It avoids copying the block: at a million rows, every
    pass over the data counts.
    """
    crlf = block.endswith(b"\r\n")
    if not crlf and b"\r" in block:
        return None
    ending = b"}},\r\n" if crlf else b"}},\n"
    if not block.endswith(ending) or not block.startswith(_ROW_START):
        return None
    first = _ROW_PREFIX.match(block)
    if first is None:
        return None
    mark = first.end() - len(_DOC_MARK)
    out, joined = _ROW_JOIN[crlf].subn(b",\n", memoryview(block)[mark + len(_DOC_MARK):])
    # Every line end but the last joined two rows (so every line was a row),
    # and no carriage return is left but the last line's.
    if block.count(b"\n") != joined + 1:
        return None
    body = len(out) - len(ending)
    if crlf and out.find(b"\r", 0, body) >= 0:
        return None
    return b"".join((memoryview(out)[:body], b"},\n")), joined + 1


def gzip_member(data, level=6):
    """``data`` as one complete gzip member (RFC 1952).

    A compressed backup is a series of members, one a block: gzip, zcat and
    Python read them as one stream, and blocks compress independently, in
    parallel where there are workers.
    """
    packer = zlib.compressobj(level, zlib.DEFLATED, 31)
    return packer.compress(data) + packer.flush()


_DESIGN_ROW_START = _ROW_START + b'"' + DESIGN_PREFIX.encode()   # is_design_id, on the reply's bytes


def rewrite_row_block(complete, compress=False, count_designs=False):
    """``rewrite_row_line`` on every line of a block of whole reply lines,
    carriage returns removed: ``rewrite_rows_fast`` where it applies, else
    ``rewrite_couchdb_block``.  Everything one block needs, as a pure function.

    Runs inline or in a parse worker.  Returns ``(dump bytes, rows,
    carriage returns removed, design rows)``; the bytes are a gzip member
    when ``compress``.
    """
    done = rewrite_rows_fast(complete)
    if done is not None:
        data, rows = done
        carriage_returns = rows if complete.endswith(b"\r\n") else 0
    else:
        stripped = complete.replace(b"\r", b"")
        carriage_returns = len(complete) - len(stripped)
        data, rows = rewrite_couchdb_block(stripped)
    designs = 0
    if count_designs and _DESIGN_ROW_START in complete:
        designs = complete.count(b"\n" + _DESIGN_ROW_START) + complete.startswith(_DESIGN_ROW_START)
    if compress:
        data = gzip_member(data)
    return data, rows, carriage_returns, designs


class LongRow:
    """``rewrite_row_line`` of one line of a CouchDB reply too long to hold,
    rewritten as it streams (the backup's ``CouchDBLayout`` starts one for a
    line longer than its ``LONG``).

    The same bytes, in pieces: carriage returns dropped throughout, the
    row's start cut before its document, and the last three bytes held back
    until the line ends, for the brace fix.
    """

    HELD = 3   # len(b"}},"): all that fix_closing_braces looks at

    def __init__(self, head, is_row, designs, carriage_returns):
        self.head = head
        self.rows = 1 if is_row else 0
        self.designs = designs
        self.carriage_returns = carriage_returns
        self.tail = b""
        self.last = None

    @classmethod
    def start(cls, data, count_designs):
        """The LongRow for a line beginning with ``data``; None while a row's
        document has not begun in it (the row must then be held longer)."""
        stripped = data.replace(b"\r", b"") if b"\r" in data else data
        if _ROW_START.startswith(stripped):
            return None           # too short to tell a row yet
        is_row = stripped.startswith(_ROW_START)
        if is_row:
            mark = stripped.find(_DOC_MARK)
            if mark < 0:
                return None
            stripped = stripped[mark + len(_DOC_MARK):]
        designs = 1 if count_designs and data.startswith(b'{"id":"_design/') else 0
        line = cls(b"", is_row, designs, data.count(b"\r"))
        line.head = line.middle_stripped(stripped)
        return line

    def middle_stripped(self, data):
        data = self.tail + data if self.tail else data
        self.tail = data[-self.HELD:]
        return data[:-self.HELD]

    def _without_cr(self, block):
        """``block`` less its carriage returns, counted."""
        if b"\r" not in block:
            return block
        stripped = block.replace(b"\r", b"")
        self.carriage_returns += len(block) - len(stripped)
        return stripped

    def middle(self, block):
        return self.middle_stripped(self._without_cr(block))

    def end(self, block):
        """The last bytes of the line (without its newline), brace fix applied."""
        self.last = self.tail + self._without_cr(block)
        return fix_closing_braces(self.last)


def document_line(text):
    """A document's JSON text, as the server sent it -> its dump line (bytes).

    ``rewrite_row_line`` for replies read value by value (``JsonRowScanner``
    for ``_all_docs`` in any layout, ``Leaf`` for ``_bulk_get``): the server's
    bytes, less the row around them and the comma between rows.  Only a
    document spread over several lines is joined onto one, by dropping the
    white space between its tokens.
    """
    if "\n" in text or "\r" in text:
        text = compact_json(text)
    return text.encode("utf-8")


class JsonWalker:
    """Walks a JSON reply value by value, handing out the server's own text.

    The one reader of the server's replies that are read value by value:
    ``_all_docs`` in any layout (``JsonRowScanner``, fed block by block:
    memory holds one row, never the whole reply), and ``_changes``,
    ``_bulk_get`` and ``open_revs`` (a page, held whole).  The C JSON
    decoder finds each value's end, so the text of a value is the server's
    (numbers, escapes and key order unchanged), not Python's writing of it.

    On a whole text, ``members`` and ``elements`` yield with the walker on
    each item, which the caller reads (``value``) or walks into.  Where the
    text is not the JSON expected it raises ``CUT`` (it ended early) or
    ``SHAPE``: ``ValueError`` here, a reply to ask for again.
    """

    CUT = ValueError
    SHAPE = ValueError
    _WS = re.compile(r"[ \t\n\r]*")

    def __init__(self, text="", final=True):
        self.decoder = json.JSONDecoder()
        self.buffer = text
        self.pos = 0
        self.eof = final
        self._need = 0

    def _skip_ws(self):
        self.pos = self._WS.match(self.buffer, self.pos).end()
        return self.pos < len(self.buffer)

    def _value(self):
        """Decode the value at pos: ``(value, start, end)``; None when more text is needed."""
        try:
            value, end = self.decoder.raw_decode(self.buffer, self.pos)
        except json.JSONDecodeError:
            if self.eof:
                raise self.CUT("the reply ended in the middle of a value: the transfer was cut short")
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

    def _next_value(self):
        """The value after the white space: ``(value, start, end)``, or None to wait."""
        if not self._skip_ws():
            if self.eof:
                raise self.CUT("the reply ended before its end: the transfer was cut short")
            return None
        return self._value()

    def _peek(self):
        """The next character after the white space; None to wait."""
        if not self._skip_ws():
            if self.eof:
                raise self.CUT("the reply ended before its end: the transfer was cut short")
            return None
        return self.buffer[self.pos]

    def _expect(self, chars):
        """Step over the next character, one of ``chars``; None to wait."""
        char = self._peek()
        if char is None:
            return None
        if char not in chars:
            raise self.SHAPE("unexpected %r in the reply where one of %r belongs" % (char, chars))
        self.pos += 1
        return char

    def _items(self, opening, closing, keyed):
        self._expect(opening)
        if self._peek() == closing:
            self.pos += 1
            return
        while True:
            if keyed:
                if self._peek() != '"':
                    raise self.SHAPE("an object key expected")
                key = self._next_value()[0]
                self._expect(":")
                yield key
            else:
                yield None
            if self._expect("," + closing) == closing:
                return

    def members(self):
        """At an object: yield each key, the walker on its value."""
        return self._items("{", "}", True)

    def elements(self):
        """At an array: yield once for each element, the walker on it."""
        return self._items("[", "]", False)

    def value(self):
        """The value at the walker, decoded, and its text."""
        value, start, end = self._next_value()
        return value, self.buffer[start:end]

    def end(self):
        """Nothing but white space is left."""
        if self._skip_ws():
            raise self.SHAPE("unexpected data after the end of the reply")


class JsonRowScanner(JsonWalker):
    """``document_line`` of each row's document, from an ``_all_docs`` reply
    of any layout: for servers (PouchDB Server, a pretty-printing proxy)
    that do not write one row per line.  On Apache CouchDB's layout its
    documents are ``rewrite_row_line``'s lines, less the commas between them.

    A ``JsonWalker`` fed the reply block by block: it decodes the stream
    incrementally, so memory holds one row at a time, never the whole
    reply.  Where the reply is not whole or not an ``_all_docs`` answer it
    raises ``ReplyCut`` or ``ReplyShape``.
    """

    CUT = ReplyCut
    SHAPE = ReplyShape
    # The states between the items of the reply's object and of its rows:
    # what may come, what closes the list, the item's state, the state after.
    _LISTS = {
        "key_or_end": ('"', "}", "key", "done"),
        "next_key": (",", "}", "key", "done"),
        "row_or_end": ("{", "]", "row", "next_key"),
        "row_sep": (",", "]", "row", "next_key"),
    }

    def __init__(self, documents=True, continues=None):
        super().__init__(final=False)
        self.documents = documents   # False: yield each row, parsed, instead of its document
        self.designs = 0
        self.text_decoder = codecs.getincrementaldecoder("utf-8")()
        self.state = "start"
        self.total_rows = None
        self.saw_rows = False
        self.rows = 0
        self.last_id = None          # the id of the last complete row
        self.skip_id = None
        if continues is not None:
            # The rest of a reply that broke off (backup --resume): counts go
            # on, the first reply's total_rows stays the one checked, and a
            # first row with the last id seen is the one already written.
            self.rows = continues.rows
            self.designs = continues.designs
            self.total_rows = continues.total_rows
            self.skip_id = continues.last_id

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

    def _step(self):
        """Advance by one token or value; True, a document, or None to wait."""
        state = self.state
        if state == "start":
            if self._expect("{") is None:
                return None
            self.state = "key_or_end"
            return True
        if state in self._LISTS:
            expected, closing, item, closed = self._LISTS[state]
            char = self._expect(expected + closing)
            if char is None:
                return None
            if char == closing:
                self.state = closed
            else:
                if char != ",":
                    self.pos -= 1   # the item's own first character
                self.state = item
            return True
        if state == "key":
            found = self._next_value()
            if found is None:
                return None
            self.key = found[0]
            self.state = "colon"
            return True
        if state == "colon":
            if self._expect(":") is None:
                return None
            if self.key == "rows":
                if self.saw_rows:
                    raise ReplyShape('the reply has two "rows" members')
                self.saw_rows = True
                self.state = "rows_open"
            else:
                self.state = "member"
            return True
        if state == "member":
            found = self._next_value()
            if found is None:
                return None
            if self.key == "total_rows":
                if type(found[0]) is not int or found[0] < 0:
                    raise ReplyShape('its "total_rows" is no count')
                if self.total_rows is None:   # a resumed reply's does not replace the first's
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
        if state == "row":
            found = self._next_value()
            if found is None:
                return None
            self.state = "row_sep"
            row = found[0]
            if self.skip_id is not None:
                skip, self.skip_id = self.skip_id, None
                if isinstance(row, dict) and row.get("id") == skip:
                    return True
            self.rows += 1
            if isinstance(row, dict):
                self.last_id = row.get("id")
            if not self.documents:
                return found[0]
            return self._document(found[0], found[1])
        if state == "done":
            self.end()
            return None
        raise AssertionError(state)

    def _document(self, row, start):
        """The raw text of the row's "doc" member, found member by member."""
        if not isinstance(row, dict) or not isinstance(row.get("doc"), dict):
            raise ReplyShape("a row of the reply has no document: %s" % json.dumps(row)[:80])
        if is_design_id(row["doc"].get("_id")):
            self.designs += 1
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
                return document_line(text[pos:end])
            pos = ws.match(text, end).end() + 1  # the comma

    def finish(self):
        """The last documents, once the reply has ended; checks it is whole."""
        docs = list(self.feed(b"", final=True))
        if self.state != "done":
            raise ReplyCut("the reply ended before its end: the transfer was cut short")
        if not self.saw_rows:
            raise ReplyShape('it has no "rows" list')
        if self.total_rows is not None and self.rows < self.total_rows:
            raise BackupFailed("the reply holds %d rows but the database has %d documents"
                               % (self.rows, self.total_rows))
        return docs


class Leaf:
    """One leaf revision as the server sent it: its dump line and what it is."""

    def __init__(self, doc_id, rev, text, deleted):
        self.doc_id = doc_id
        self.rev = rev
        self.line = document_line(text)
        self.deleted = deleted


def read_revisions(walker, doc_id=None):
    """The entries of one document's revisions, as ``_bulk_get`` and
    ``open_revs`` give them: ``{"ok": doc}``, ``{"missing": rev}`` (PouchDB)
    or ``{"error": {...}}`` (CouchDB).

    Returns ``(leaves, missing revisions)``.  An error other than not_found
    fails the backup: a leaf the server will not give is no complete backup.
    """
    leaves, missing = [], []
    for _ in walker.elements():
        for key in walker.members():
            value, text = walker.value()
            if key == "ok" and isinstance(value, dict) and isinstance(value.get("_id"), str):
                leaves.append(Leaf(value["_id"], value.get("_rev"), text, value.get("_deleted") is True))
            elif key == "missing":
                missing.append((doc_id, value))
            elif key == "error" and isinstance(value, dict):
                if value.get("error") != "not_found":
                    raise BackupFailed("the server did not give %s at revision %s: %s: %s" % (
                        json.dumps(value.get("id", doc_id), ensure_ascii=False), value.get("rev"),
                        value.get("error"), value.get("reason", "")))
                missing.append((value.get("id", doc_id), value.get("rev")))
    return leaves, missing


def read_bulk_get(text):
    """A ``_bulk_get`` reply -> ``(leaves, missing (id, rev) pairs)``."""
    walker = JsonWalker(text)
    leaves, missing = [], []
    for key in walker.members():
        if key != "results":
            walker.value()
            continue
        for _ in walker.elements():
            doc_id, entries = None, ([], [])
            for item in walker.members():
                if item == "docs":
                    entries = read_revisions(walker)
                else:
                    value = walker.value()[0]
                    if item == "id":
                        doc_id = value
            leaves.extend(entries[0])
            missing.extend((pair_id if pair_id is not None else doc_id, rev) for pair_id, rev in entries[1])
    walker.end()
    return leaves, missing


def read_open_revs(text):
    """A ``GET {id}?open_revs=all`` reply (JSON) -> ``(leaves, missing)``."""
    walker = JsonWalker(text)
    found = read_revisions(walker)
    walker.end()
    return found


def read_changes_page(text):
    """One ``_changes?style=all_docs`` page -> ``(rows, last_seq, pending)``.

    Each row is ``(id, its leaf revisions sorted by revision_order)``.
    """
    walker = JsonWalker(text)
    page = {}
    for key in walker.members():
        page[key] = walker.value()[0]   # a key given twice: the last one counts, as for json.loads
    walker.end()
    if not isinstance(page.get("results"), list) or "last_seq" not in page:
        raise ValueError("a _changes reply without results and last_seq")
    rows = []
    try:
        for row in page["results"]:
            revs = {change["rev"] for change in row["changes"]}
            if type(row["id"]) is not str or not revs or set(map(type, revs)) != {str}:
                raise TypeError()
            rows.append((row["id"], sorted(revs, key=revision_order)))
    except (TypeError, KeyError):
        raise ValueError("a _changes row without id and revisions")
    return rows, page["last_seq"], page.get("pending")


def revision_order(rev):
    """Sort key of a revision ``N-hash``: its generation, then its hash."""
    number, _, digest = str(rev).partition("-")
    return (int(number), digest) if number.isdigit() else (-1, str(rev))


_COUCHDB_HEADER = re.compile(rb'\A\{"total_rows":(\d+),"offset":\d+(?:,"update_seq":([^\n]*?))?,"rows":\[\Z')


_ROW_ID = re.compile(rb'\A\{"id":("(?:[^"\\]|\\.)*")')


def row_id(line):
    """The id of an ``_all_docs`` row line in CouchDB's layout, or None."""
    match = _ROW_ID.match(line)
    if match is None:
        return None
    try:
        return json.loads(match.group(1))
    except ValueError:
        return None


# What a complete backup's header says of where the database stood, in this order.
STANDING_KEYS = ("db", "instance_start_time", "since", "seq")


def complete_header(security, standing):
    """Line 1 of a complete backup: the usual header carrying ``_security``
    and where the database stood (``STANDING_KEYS`` of ``standing``: its
    name, its ``instance_start_time``, for an incremental backup the
    sequence it starts from, and the sequence the file is complete up to),
    each value as the server gave it.

    CouchDB and PouchDB Server ignore the extra keys of a ``_bulk_docs``
    body, so the bash script and a plain POST still load the file.
    """
    header = [b'{"new_edits":false,"_security":', json_bytes(security)]
    for key in STANDING_KEYS:
        if key in standing:
            header += [b',"', key.encode("ascii"), b'":', json_bytes(standing[key])]
    return b"".join(header) + b',"docs":['


def dump_header(header):
    """A dump's first line as the object it opens (closed with ``]}``), else None."""
    try:
        value = json.loads(header + b"]}")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def complete_header_security(header):
    """The ``_security`` object a complete backup's header carries, else None."""
    if b'"_security"' not in header:
        return None
    security = (dump_header(header) or {}).get("_security")
    return security if isinstance(security, dict) else None


def header_since(header):
    """The sequence an incremental backup's header starts from, else None."""
    if b'"since"' not in header:
        return None
    return (dump_header(header) or {}).get("since")


def sequence_number(seq):
    """The count a sequence begins with: PouchDB Server's is a number,
    CouchDB's a string ``"N-opaque"`` (CouchDB 2.0's a list ``[N, "opaque"]``).
    None for anything else."""
    if isinstance(seq, list) and seq:
        seq = seq[0]
    if isinstance(seq, int) and not isinstance(seq, bool):
        return seq
    match = re.match(r"\d+", seq) if isinstance(seq, str) else None
    return int(match.group()) if match else None


# -- A dump's lines ---------------------------------------------------------


def strip_newline(line):
    return line[:-1] if line.endswith(b"\n") else line


def dump_line_document(line):
    """The document a dump line holds, parsed (a dict), else None (the
    header, the footer, a blank line): the one reading of a dump line.

    The line is read less its newline and the white space and comma after
    its document, as the restore's check reads it.
    """
    try:
        doc = json.loads(strip_newline(line).rstrip(b" \t\r,"))
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def has_revisions(line):
    """Whether a dump line is a document carrying ``_revisions`` (a complete backup's)."""
    doc = dump_line_document(line)
    return doc is not None and "_revisions" in doc


# The script's layout of a document line: its id and revision first.
# A string's pattern unrolled (runs of plain bytes between escapes): the
# same strings as ("(?:[^"\\]|\\.)*"), three times faster to match.
_DOC_ID_REV = re.compile(rb'\A\{"_id":("[^"\\]*(?:\\.[^"\\]*)*"),"_rev":("[^"\\]*(?:\\.[^"\\]*)*")')


def _document_ends(line):
    """Whether a line's last byte before its newline, white space and comma is a closing brace."""
    end = len(line) - 1 if line.endswith(b"\n") else len(line)
    while end > 0 and line[end - 1] in b" \t\r,":
        end -= 1
    return line[end - 1:end] == b"}"


def _json_string(quoted):
    """The value of a JSON string, from its bytes in quotes; without an escape, its UTF-8."""
    return json.loads(quoted) if b"\\" in quoted else quoted[1:-1].decode("utf-8")


def document_revision(line):
    """``(id, rev)`` of a dump line's document, each None where it is not a
    string (both for a line that holds no document): the one function that
    reads them.

    A line the restore's check has proved to be a JSON object, beginning
    as the script writes it (``{"_id":"..","_rev":".."``) and naming each
    key once, is not parsed whole: its two strings are read where they
    stand (a document with a large attachment is not decoded for them).
    Any other line is read by ``dump_line_document``.
    """
    match = _DOC_ID_REV.match(line)
    # A key written twice, or spelt with an escape, would make the parse's
    # answer (the last one) differ from the one read here; a line that does
    # not end with its document does not parse.
    if (match and line.count(b'"_id"') == 1 and line.count(b'"_rev"') == 1 and b"\\u" not in line
            and _document_ends(line)):
        try:
            return _json_string(match.group(1)), _json_string(match.group(2))
        except ValueError:   # UnicodeDecodeError too
            pass
    doc = dump_line_document(line)
    if doc is None:
        return None, None
    doc_id, rev = doc.get("_id"), doc.get("_rev")
    return (doc_id if isinstance(doc_id, str) else None), (rev if isinstance(rev, str) else None)


# The same layout at the start of every line of several joined by newlines,
# and a document's end at the end of each (as ``_document_ends`` reads it).
_DOC_ID_REV_LINES = re.compile(r'^\{"_id":"([^"\\\n]*)","_rev":"([^"\\\n]*)"', re.MULTILINE)
_DOCUMENT_ENDS_LINES = re.compile(r'\}[ \t\r,]*$', re.MULTILINE)


def document_revisions(lines):
    """``[document_revision(line) for line in lines]`` (lines without their
    newline), read at once where the lines are UTF-8 and none holds a
    backslash: then lines in the script's layout naming each key once are
    told by counting over all of them, not line by line.  Any other run of
    lines is read line by line."""
    blob = b"\n".join(lines)
    if b"\\" not in blob:
        try:
            text = blob.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            found = _DOC_ID_REV_LINES.findall(text)
            if (len(found) == len(lines) == text.count('"_id"') == text.count('"_rev"')
                    == len(_DOCUMENT_ENDS_LINES.findall(text))):
                return found
    return [document_revision(line) for line in lines]


def design_document_id(line):
    """The ``_design/…`` id of a dump line, or None for any other line.

    The line is parsed, so ``_id`` may stand anywhere in it; a line in the
    script's layout that does not parse still counts, as bash's grep does.
    """
    if b"_design" not in line:
        return None
    doc_id = document_revision(line)[0]
    if doc_id is None and dump_line_document(line) is None and line.startswith(b'{"_id":"_design'):
        return line.split(b'"')[3].decode("utf-8", "replace")
    return doc_id if is_design_id(doc_id) else None


def with_revision(body, rev):
    """A design document's PUT body with ``_rev`` first: an update of that revision."""
    rest = body[1:]
    separator = b"" if rest.lstrip()[:1] == b"}" else b","
    return b'{"_rev":' + json.dumps(rev).encode() + separator + rest


def _parse_worker_started():
    # Ctrl-C reaches the whole process group: only the main process decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Workers:
    """Runs one function over blocks in worker processes, results in order.

    The main process keeps the network and the files; the workers do the
    CPU work (rewriting and compressing rows, checking a dump).  Block i
    goes to worker i mod n, so taking the results round the workers gives
    them back in order; at most ``ahead`` blocks are out at once, so memory
    holds a bounded number of blocks whatever the database size.  The
    workers are forked: the function is inherited, never pickled, so this
    works however the program was started.  Without fork, nothing runs in
    parallel (``available`` is False).
    """

    def __init__(self, count, function, *fixed):
        import multiprocessing
        context = multiprocessing.get_context("fork")
        self.count = count
        self.ahead = 2 * count
        self.sent = 0
        self.received = 0
        # Queues, not SimpleQueues: their feeder threads keep a big block
        # being sent from ever waiting on a worker that is itself sending.
        self.tasks = [context.Queue() for _ in range(count)]
        self.results = [context.Queue() for _ in range(count)]
        self.processes = [
            context.Process(target=_worker_loop, args=(function, fixed, self.tasks[i], self.results[i]), daemon=True)
            for i in range(count)]
        for process in self.processes:
            process.start()

    @staticmethod
    def available():
        try:
            import multiprocessing
            return "fork" in multiprocessing.get_all_start_methods()
        except ImportError:
            return False

    def submit(self, *args):
        """Queue one call; returns the results that are due, in order."""
        self.tasks[self.sent % self.count].put(args)
        self.sent += 1
        done = []
        while self.sent - self.received > self.ahead:
            done.append(self._next())
        return done

    def drain(self):
        done = []
        while self.received < self.sent:
            done.append(self._next())
        return done

    def _next(self):
        index = self.received % self.count
        while True:
            try:
                failed, value = self.results[index].get(timeout=1.0)
                break
            except queue.Empty:
                if not self.processes[index].is_alive():
                    raise RuntimeError("a worker process died (exit code %s)" % self.processes[index].exitcode)
        self.received += 1
        if failed:
            raise value
        return value

    def close(self):
        for tasks, process in zip(self.tasks, self.processes):
            if process.is_alive():
                try:
                    tasks.put(None)
                except (OSError, ValueError):
                    pass
        for process in self.processes:
            process.join(timeout=1.0)
            if process.is_alive():
                process.terminate()
                process.join()
        for channel in self.tasks + self.results:
            channel.close()
            channel.cancel_join_thread()   # what a stopped worker never read is dropped


def _worker_loop(function, fixed, tasks, results):
    """A worker: take argument tuples, send back (failed, result) in order."""
    _parse_worker_started()
    while True:
        args = tasks.get()
        if args is None:
            return
        try:
            results.put((False, function(*(args + fixed))))
        except Exception as error:
            try:
                results.put((True, error))
            except Exception:   # an exception that does not pickle
                results.put((True, RuntimeError("%s: %s" % (type(error).__name__, error))))


class BlockCalls:
    """Calls one function on each block: inline while the data is small,
    in ``Workers`` once it is worth starting them (``count`` of 2 or more).

    ``submit`` returns the results that are due, in order; ``drain`` the
    rest.  Used by the backup's row rewriting and the restore's check.
    """

    PARALLEL_FROM = 8 << 20   # below this, starting workers costs more than it saves
    INLINE_FROM = 16 << 20    # a block this large (a long line) stays here: a worker would need two more copies

    def __init__(self, count, function, *fixed):
        self.count = count
        self.function = function
        self.fixed = fixed
        self.workers = None
        self.seen = 0

    def submit(self, size, *args):
        self.seen += size
        if size >= self.INLINE_FROM:
            done = self.drain()
            done.append(self.function(*(args + self.fixed)))
            return done
        if self.workers is None and self.count > 1 and self.seen > self.PARALLEL_FROM and Workers.available():
            self.workers = Workers(self.count, self.function, *self.fixed)
        if self.workers is not None:
            return self.workers.submit(*args)
        return [self.function(*(args + self.fixed))]

    def drain(self):
        return self.workers.drain() if self.workers is not None else []

    def close(self):
        if self.workers is not None:
            self.workers.close()
            self.workers = None


# ===========================================================================
# 6. Backup
# ===========================================================================
# Stream rows -> rewrite -> write the file (whole or absent).


ALL_DOCS_QUERY = "/_all_docs?include_docs=true&attachments=true"


class CouchDBLayout:
    """Rewrites a reply laid out as Apache CouchDB writes it: one row a line.

    ``feed`` takes the reply's bytes in blocks and returns the dump's bytes,
    identical to what couchdb-dump.sh writes (carriage returns removed);
    ``finish`` checks that the footer came and no row is missing.  With
    ``workers`` the rewriting runs in that many processes once the reply is
    large enough to be worth it.
    """

    def __init__(self, total_rows, count_designs=True, compress=False, workers=0, stream_long=True):
        self.total_rows = total_rows
        self.compress = compress
        # A long line streamed to the file cannot be taken back: --resume,
        # which drops the line a reply broke off in, holds it whole instead.
        self.stream_long = stream_long
        # only --json reports the design documents: counting them costs a pass
        self.calls = BlockCalls(workers, rewrite_row_block, compress, count_designs)
        self.count_designs = count_designs
        self.rows = 0
        self.designs = 0
        self.carriage_returns = 0
        self.pending = b""
        self.last_line = None
        self.long_line = None   # a LongRow while one streams through

    def feed(self, block):
        """Returns the list of pieces of the dump now complete."""
        if self.long_line is not None:
            return self._feed_long(block)
        data = self.pending + block if self.pending else block
        cut = data.rfind(b"\n")
        if cut < 0:
            if len(data) > self.LONG and self.stream_long:
                return self._start_long(data)
            self.pending = data
            return []
        self.pending = data[cut + 1:]
        complete = data[:cut + 1]
        if self.last_line == FOOTER and complete.strip():
            raise ReplyShape("data after the reply's ']}' end")
        # Remember the last complete line: the footer must be the last one.
        previous = complete.rfind(b"\n", 0, len(complete) - 1)
        self.last_line = complete[previous + 1:-1].replace(b"\r", b"")
        return self._account(self.calls.submit(len(complete), complete))

    # A line longer than this is not held whole: its middle streams through.
    LONG = 2 << 20

    def _start_long(self, data):
        """A line longer than LONG began: rewrite its start and let it flow.

        Only a row's start (up to its document) and its end (the closing
        braces) change; the middle is copied as it comes.  The memory is
        then a few blocks, however long the document (a large attachment).
        """
        line = LongRow.start(data, self.count_designs)
        if line is None:          # a row whose document has not begun yet
            self.pending = data
            return []
        self.long_line = line
        self.pending = b""
        pieces = self._drain_workers()
        return pieces + self._stream(line.head)

    def _feed_long(self, block):
        line = self.long_line
        cut = block.find(b"\n")
        if cut < 0:
            return self._stream(line.middle(block))
        self.long_line = None
        end = line.end(block[:cut])
        self.rows += line.rows
        self.designs += line.designs
        self.last_line = line.last
        pieces = self._stream(end + b"\n")
        self.carriage_returns += line.carriage_returns
        rest = block[cut + 1:]
        return pieces + (self.feed(rest) if rest else [])

    def _stream(self, data):
        return [gzip_member(data)] if self.compress and data else [data] if data else []

    def _drain_workers(self):
        """What the workers still hold, in order: a long line's pieces come after."""
        return self._account(self.calls.drain())

    def _account(self, results):
        pieces = []
        for data, rows, carriage_returns, designs in results:
            pieces.append(data)
            self.rows += rows
            self.carriage_returns += carriage_returns
            self.designs += designs
        return pieces

    def finish(self):
        """The last pieces; raises BackupFailed when the reply is not whole."""
        pieces = self.close()
        if self.long_line is not None:
            # The reply ended inside a long line: what sed keeps, then no footer.
            line, self.long_line = self.long_line, None
            pieces += self._stream(line.end(b""))
            self.rows += line.rows
            self.carriage_returns += line.carriage_returns
            self.last_line = line.last
        tail = self.pending
        if tail:
            if self.last_line == FOOTER and tail.strip():
                raise ReplyShape("data after the reply's ']}' end")
            # A last line without its newline: sed keeps it that way.
            stripped = tail.replace(b"\r", b"")
            self.carriage_returns += len(tail) - len(stripped)
            self.last_line = stripped
            out, rows = rewrite_couchdb_block(stripped)
            self.rows += rows
            pieces.append(gzip_member(out) if self.compress else out)
        if self.last_line != FOOTER:
            raise ReplyCut("the reply ended before its end (no ']}' footer): the transfer was cut short")
        if self.rows < self.total_rows:
            raise BackupFailed("the reply holds %d rows but the database has %d documents"
                               % (self.rows, self.total_rows))
        return pieces

    def ended(self):
        """Whether the reply's last line so far is its ']}' footer."""
        if self.long_line is not None:
            return False
        last = self.pending or self.last_line
        return last is not None and last.replace(b"\r", b"") == FOOTER

    def flush(self):
        """The pieces of every block fed so far (waits for the workers)."""
        return self._account(self.calls.drain())

    def rollback(self):
        """Forget the incomplete line of a reply that broke off.

        Returns the last complete line (carriage returns removed), or None
        when none came yet.  The next reply's lines are fed as if they had
        followed it.
        """
        if self.long_line is not None:   # never with stream_long=False, which --resume sets
            raise BackupFailed("the reply broke off inside a document streamed to the file already")
        self.pending = b""
        return self.last_line

    def close(self):
        """Stop the workers; returns what they still had to hand back."""
        try:
            return self._account(self.calls.drain())
        finally:
            self.calls.close()


class DumpTarget:
    """Where a backup goes: plain bytes, or gzip members with ``compress``.

    ``write`` takes dump bytes; with ``compress`` they are compressed a
    member a megabyte, in background threads (zlib lets go of the GIL, so
    compression runs beside the row rewriting), and written in order.
    ``writelines`` takes pieces already in their final form (worker
    processes compress their blocks themselves).  A write that fails (a
    full disk) is said with ``name``: ``cannot write NAME: No space left on
    device``.
    """

    MEMBER = 1 << 20

    def __init__(self, raw, compress=False, threads=1, name="standard output"):
        self.raw = raw
        self.name = name
        self.failed = False   # a write failed: what is still buffered can never go out
        self.compress = compress
        self.threads = max(threads, 1)
        self.plain = []
        self.plain_size = 0
        self.written = 0
        self.packing = None

    def write(self, data):
        if not self.compress:
            self._out(data)
            return
        self.plain.append(data)
        self.plain_size += len(data)
        if self.plain_size >= self.MEMBER:
            self._pack()

    def writelines(self, pieces):
        self._pack()
        self._drain(0)
        for piece in pieces:
            self._out(piece)

    def _out(self, data):
        self._io(self.raw.write, data)
        self.written += len(data)

    def _io(self, action, *args):
        """A write, flush or sync of the backup; its OSError (a full disk) said in words."""
        try:
            return action(*args)
        except OSError as error:
            self.failed = True
            raise curl_failed("cannot write %s: %s" % (self.name, error.strerror or error))

    def _pack(self):
        if not self.plain:
            return
        if self.packing is None:
            from concurrent.futures import ThreadPoolExecutor
            self.pool = ThreadPoolExecutor(max_workers=self.threads)
            self.packing = collections.deque()
        self.packing.append(self.pool.submit(gzip_member, b"".join(self.plain)))
        self.plain = []
        self.plain_size = 0
        self._drain(2 * self.threads)

    def _drain(self, keep):
        """Write the members done, in order, until at most ``keep`` are left."""
        while self.packing and (len(self.packing) > keep or self.packing[0].done()):
            self._out(self.packing.popleft().result())

    def finish(self):
        self._pack()
        self._drain(0)
        self.close()
        self._io(self.raw.flush)

    def close(self):
        if self.packing is not None:
            self.pool.shutdown(wait=True)
            self.packing = None


class _EarlyWriteback:
    """Starts writing the backup to disk while it is still being made.

    The final fsync then has little left to wait for, and a backup does not
    push the rest of the page cache out.  Linux only; elsewhere a no-op.
    """

    EVERY = 32 << 20

    def __init__(self, raw):
        self.raw = raw
        self.done = 0
        self.advise = getattr(os, "posix_fadvise", None)

    def write(self, data):
        self.raw.write(data)
        if self.advise is not None and self.raw.tell() - self.done >= self.EVERY:
            self.raw.flush()
            end = self.raw.tell()
            try:
                self.advise(self.raw.fileno(), self.done, end - self.done, os.POSIX_FADV_DONTNEED)
            except OSError:
                self.advise = None
            self.done = end

    def __getattr__(self, name):
        return getattr(self.raw, name)


class TemporaryFiles:
    """Every temporary file of the run, by name: whole or absent whatever a thread still does.

    A backup's file and a parallel read's range files are made here and
    leave only by ``settle`` (renamed into place) or ``forget`` (removed).
    ``main``'s exit path calls ``sweep``: every file still here is removed
    and nothing is made or renamed into place afterwards, so a thread still
    blocked in a read when a signal ends the run cannot leave a file behind,
    nor put its backup in place once the run decided to fail.  ``open``
    takes files again (the next run in the same process).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.names = set()
        self.swept = False

    def open(self):
        with self.lock:
            self.swept = False

    def make(self, final):
        """An open binary file under a temporary name beside ``final``, and that name."""
        with self.lock:
            if self.swept:
                raise BackupFailed("the run has ended")
            fd, name = tempfile.mkstemp(prefix="." + os.path.basename(final) + ".", suffix=".part",
                                        dir=os.path.dirname(final) or ".")
            self.names.add(name)
        return fd, name

    def settle(self, name, final):
        """Rename ``name`` to ``final``, unless the run has ended meanwhile."""
        with self.lock:
            if name not in self.names:
                raise BackupFailed("the run ended before the backup was whole")
            os.replace(name, final)
            self.names.discard(name)

    def forget(self, name):
        """Remove ``name``."""
        with self.lock:
            self.names.discard(name)
            _unlink(name)

    def sweep(self):
        """Remove every file still here; make and rename nothing from now on."""
        with self.lock:
            self.swept = True
            for name in self.names:
                _unlink(name)
            self.names.clear()


def _unlink(name):
    try:
        os.unlink(name)
    except OSError:
        pass


TEMPORARY_FILES = TemporaryFiles()


class BackupFile(DumpTarget):
    """Writes the dump under a temporary name beside its final one.

    ``commit`` renames it into place when the dump is complete; ``discard``
    removes it, so a half-written file never carries the user's file name.
    With ``compress`` the bytes are gzip-compressed (level 6, like gzip(1))
    on their way to disk: no uncompressed copy is ever written.
    """

    def __init__(self, path, compress=False, threads=1):
        self.path = path
        fd, self.temp_path = TEMPORARY_FILES.make(path)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # what curl -o would have created
        super().__init__(_EarlyWriteback(os.fdopen(fd, "wb", buffering=1 << 20)), compress, threads, path)

    def commit(self):
        self.finish()
        # On disk before it takes the user's name: a crash never leaves an
        # empty or partial file that looks like a backup.
        self._io(os.fsync, self.raw.fileno())
        self._io(self.raw.close)
        self._io(TEMPORARY_FILES.settle, self.temp_path, self.path)

    def discard(self):
        try:
            self.close()
            self.raw.close()
        except Exception:
            pass
        TEMPORARY_FILES.forget(self.temp_path)


def timestamped_name(name, now=None):
    """-T: put ``-YYYYMMDD-hhmmss`` before the extension, or at the end.

    The leading dots of a hidden file's name are part of its name, not an
    extension: ``.hidden`` gets ``.hidden-STAMP`` (bash made it
    ``-STAMP.hidden``, a name starting with a dash).
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    head, slash, base = name.rpartition("/")
    hidden = base[:len(base) - len(base.lstrip("."))]
    if re.search(r"\.[a-zA-Z0-9][a-zA-Z0-9_]*", name) and "." in base[len(hidden):]:
        stem, _, extension = base.rpartition(".")
        return "%s%s%s-%s.%s" % (head, slash, stem, stamp, extension)
    return "%s-%s" % (name, stamp)


def du_kib(size):
    """What ``du -k`` reports for a file of ``size`` bytes on 4 KiB blocks."""
    return -(-size // 4096) * 4


class StreamTarget(DumpTarget):
    """Backup to standard output (``-f -``): the dump flows out as it comes.

    Nothing can be taken back there, so a failure is told by the exit code
    (a pipeline with ``set -o pipefail`` sees it) and the error line.
    """

    def commit(self):
        self.finish()

    def discard(self):
        try:
            self.close()
            if self.failed:
                let_go(self.raw)
            elif self.compress:
                # The members already out are whole: end the stream with the
                # start of one that never ends, so gunzip calls it truncated.
                self.raw.write(GZIP_MAGIC + b"\x08\x00\x00\x00\x00\x00\x00\x03")
            self.raw.flush()
        except Exception:
            pass


def startkey_query(key):
    """``&startkey=`` the JSON of ``key``, percent-encoded; nothing for None."""
    return "" if key is None else "&startkey=" + quote(json.dumps(key), safe="")


def until_stopped(blocks, stop):
    """The blocks, until ``stop`` (a whole-server run's, not installed) notes a signal: then ``Stopped``."""
    for block in blocks:
        if stop.requested:
            raise Stopped(stop.requested)
        yield block


def _raising(error):
    raise error
    yield  # a generator, that fails when it is first asked for a block


class ReplyResumer:
    """Backup ``--resume``: asks for the rest of an ``_all_docs`` reply that broke off.

    The rest starts at the last complete row: ``startkey`` is that row's id
    as JSON, and the new reply's first row is dropped when it has that id
    (not ``skip=1``: had that document been deleted in between, the row
    after it would be skipped and lost).  The requester asks (``Requester.resume``).
    """

    def __init__(self, requester, path, block, start_key=None):
        self.requester = requester
        self.path = path
        self.block = block
        self.start_key = start_key   # a range of a parallel read: where it starts
        self.resumption = Resumption()

    def resume(self, last_id, rows, failure, couchdb_layout):
        """The blocks of the rest of the reply; raises ``failure`` once the attempts are spent."""
        if rows > 0 and last_id is None:
            raise failure   # rows with no id we can start from: nothing safe to ask
        # A range that broke before its first row starts again at its own start.
        path = self.path + startkey_query(last_id if last_id is not None else self.start_key)

        def begin(response):
            blocks = resumable_blocks(response, self.block)
            return self._after(blocks, last_id) if couchdb_layout else blocks
        return self.requester.resume(self.resumption, path, rows, failure, begin)

    @staticmethod
    def _after(blocks, last_id):
        """CouchDB's layout: the blocks after the header line and the row already written."""
        data = []
        newlines = 0
        for block in blocks:
            data.append(block)
            newlines += block.count(b"\n")
            if newlines >= 2:
                break
        header, newline, rest = b"".join(data).partition(b"\n")
        if not newline or not _COUCHDB_HEADER.match(header.replace(b"\r", b"")):
            raise BackupFailed("the rest of the reply is not laid out as its start")
        first, newline, after = rest.partition(b"\n")
        if newline and last_id is not None and row_id(first) == last_id:
            rest = after
        return itertools.chain([rest], blocks)

    def close(self):
        self.resumption.close()


def curl_failed(cause):
    """The backup failed in the transfer or the file: bash's curl -o says the same."""
    return Failure(lines=["... ERROR: Curl encountered an issue whilst dumping the database."], cause=cause)


class BackupOutput:
    """Where a backup goes, whichever source fills it.

    The name (-T puts a time stamp in it, -z adds ``.gz``), then a
    temporary file beside it (``BackupFile``: gzip, fsync, rename once
    whole) or standard output (``StreamTarget``), and the script's closing
    lines once the backup is there.
    """

    def __init__(self, opts, out):
        self.opts = opts
        self.out = out
        self.to_stdout = opts.file == "-"
        self.name = timestamped_name(opts.file) if opts.timestamp and not self.to_stdout else opts.file
        self.final = self.name + ".gz" if opts.compress and not self.to_stdout else self.name

    def open(self):
        """The target to write the dump to; a ``Failure`` where it cannot be made."""
        opts = self.opts
        if not self.to_stdout:
            for path in (self.name, self.final):
                if os.path.isfile(path):
                    raise Failure(lines=["... ERROR: Output file %s already exists." % path])
            if os.path.isdir(self.final):
                raise curl_failed("%s is a directory" % self.final)
        try:
            threads = max(opts.cores - 1, 1)
            if self.to_stdout:
                return StreamTarget(sys.stdout.buffer, opts.compress, threads)
            return BackupFile(self.final, opts.compress, threads)
        except OSError as error:
            raise curl_failed("cannot write %s: %s" % (self.final, error.strerror))

    def tell_done(self, had_cr, size):
        """The lines the script prints once its file is there (``SCRIPT_STEPS``)."""
        opts, out = self.opts, self.out
        if had_cr:
            out.script_steps("carriage_returns")
        out.script_steps("amend")
        threads = opts.thread_count
        if du_kib(size) >= 256000 and threads is not None and threads > 1:
            out.script_steps("multi_threaded")
        out.script_steps("stages")
        if opts.compress:
            out.script_steps("compress")
        out.info("... INFO: Export completed successfully. File available at: %s" % self.final)


class AllDocsSource:
    """The default backup's source: one GET of ``_all_docs``, its rows
    rewritten into the dump's lines as the reply streams in."""

    BLOCK = 1 << 20

    def __init__(self, opts, session, out, progress, summary, stop=None):
        self.opts = opts
        self.session = session
        self.out = out
        self.progress = progress
        self.summary = summary
        self.stop = stop or Stop()   # a whole-server run's: the signal it notes ends this backup
        self.resumer = None   # --resume: a ReplyResumer while the reply is read
        # One range of a parallel read (``RangeRead``): where it starts; its rows
        # are counted there, against the replies' total_rows and update_seq.
        self.start_key = None
        self.ranged = False
        self.reply_total = None
        self.reply_seq = None
        # A backup's signals end it at once (``Interrupted``): its Stop is never asked.
        self.requester = Requester(session, out, opts, Stop())

    def prepare(self):
        """Before the output is opened: nothing to read for this backup."""

    def copy(self, target):
        """Download and rewrite into ``target``; returns (reply had CRs, size without CRs)."""
        return self._transfer("/" + quote_database(self.opts.db) + ALL_DOCS_QUERY, target)

    def _transfer(self, path, target):
        """Download and rewrite; returns (reply had CRs, size without CRs)."""
        try:
            response = self.requester.open(path + startkey_query(self.start_key))
        except TransferFailed as error:
            self._curl_failed(error)
        began = b""
        self.resumer = ReplyResumer(self.requester, path, self.BLOCK, self.start_key) if self.opts.resume else None
        try:
            if self.resumer is not None:
                blocks = resumable_blocks(response, self.BLOCK)
            else:
                blocks = read_blocks(response, self.BLOCK)
            blocks = until_stopped(blocks, self.stop)
            head = b""
            # The first line decides: a CouchDB error, or which layout.
            try:
                for block in blocks:
                    head += block
                    if b"\n" in head or len(head) > (1 << 16):
                        break
            except ReplyBroken as error:
                # --resume: the rewriting below sees the break where it happened.
                blocks = _raising(error)
            if head.startswith(b'{"error'):
                rest = b"".join(blocks) if b"\n" not in head else b""
                first = (head + rest).split(b"\n", 1)[0]
                raise Failure(lines=[b"... ERROR: CouchDB reported: " + first], cause=answered(response.status))
            if not 200 <= response.status < 300:
                raise Failure(lines=["... ERROR: The server answered HTTP %d %s instead of the documents."
                                     % (response.status, response.reason or "")],
                              cause=answered(response.status) if response.status in STATUS_WORDS else None)
            began = head[:200]
            had_cr = b"\r" in head
            head = head.replace(b"\r", b"")
            first_line, newline, rest = head.partition(b"\n")
            header = _COUCHDB_HEADER.match(first_line) if newline else None
            if header:
                self.reply_total, self.reply_seq = int(header.group(1)), header.group(2)
                total = 0 if self.ranged else self.reply_total
                return self._rewrite_couchdb(total, rest, blocks, target, had_cr, len(head))
            return self._rewrite_any(head, blocks, target, had_cr)
        except ReplyShape as error:
            raise Failure(lines=["... ERROR: Backup failed, no file written: the reply is not an _all_docs answer"
                                 " (%s). It began: %s" % (error, self.quote_reply(began))])
        except BackupFailed as error:
            raise Failure(lines=["... ERROR: Backup failed, no file written: %s." % error])
        except ReplyBroken as error:
            self._curl_failed(error.cause)
        except TransferFailed as error:
            self._curl_failed(error)
        except (Failure, Interrupted, KeyboardInterrupt):
            raise
        except Exception as error:
            # A broken transfer or a failed write: bash's curl -o says the same.
            # How much of the reply came: urllib3 counts it, or ChunkedBody when it read the socket.
            self._curl_failed(error, max(_bytes_read(response) or 0, getattr(error, "received", 0)))
        finally:
            response.release_conn()
            if self.resumer is not None:
                self.resumer.close()

    def _rewrite_couchdb(self, total, rest, blocks, target, had_cr, size):
        """The fast path: Apache CouchDB's one-row-a-line layout."""
        # -t is bash's "threads used for parsing": from 2 on, that many worker
        # processes rewrite rows; with one, the main process does (a single
        # worker only adds the cost of handing blocks over).
        threads = min(self.opts.thread_count or 0, self.opts.cores)
        workers = threads if threads >= 2 else 0
        # Worker processes compress their own blocks; otherwise the target
        # compresses in threads beside this one.
        layout = CouchDBLayout(total, count_designs=self.opts.json, compress=self.opts.compress and workers > 0,
                               workers=workers, stream_long=self.resumer is None)
        put = target.writelines if layout.compress else lambda pieces: [target.write(p) for p in pieces]
        try:
            target.write(BACKUP_HEADER + b"\n")
            put(layout.feed(rest))
            while True:
                try:
                    for block in blocks:
                        size += len(block)
                        put(layout.feed(block))
                        self.progress.update(layout.rows, target.written, total)
                    if self.resumer is not None and not layout.ended():
                        raise ReplyCut("the reply ended before its end (no ']}' footer)")
                    break
                except (ReplyBroken, ReplyCut) as failure:
                    if self.resumer is None:
                        raise
                    put(layout.flush())
                    last = layout.rollback()
                    blocks = self.resumer.resume(row_id(last or b""), layout.rows, failure, True)
            put(layout.finish())
            self.progress.update(layout.rows, target.written, total)
        finally:
            layout.close()
        self.summary["documents"] = layout.rows
        self.summary["design_documents"] = layout.designs
        return had_cr or layout.carriage_returns > 0, size - layout.carriage_returns

    def _rewrite_any(self, head, blocks, target, had_cr):
        """Any other layout, through the streaming JSON scanner."""
        scanner = JsonRowScanner()
        writer = _DocumentLines(target)
        size = 0
        blocks = itertools.chain([head], blocks)
        while True:
            try:
                for block in blocks:
                    if b"\r" in block:
                        had_cr = True
                    size += len(block) - block.count(b"\r")
                    for doc in scanner.feed(block):
                        writer.add(doc)
                    self.progress.update(scanner.rows, target.written, scanner.total_rows)
                # The documents before a cut are written before it is told.
                for doc in scanner.feed(b"", final=True):
                    writer.add(doc)
                break
            except (ReplyBroken, ReplyCut) as failure:
                if self.resumer is None:
                    raise
                blocks = self.resumer.resume(scanner.last_id, scanner.rows, failure, False)
                scanner = JsonRowScanner(continues=scanner)
        if self.ranged:
            # A range holds a part of the total: ``RangeRead`` counts the rows of all.
            self.reply_total, scanner.total_rows = scanner.total_rows, None
        scanner.finish()
        writer.finish()
        self.progress.update(scanner.rows, target.written, scanner.total_rows)
        self.summary["documents"] = scanner.rows
        self.summary["design_documents"] = scanner.designs
        return had_cr, size

    def quote_reply(self, data):
        """The start of a reply, on one line, with the credentials blotted out."""
        text = data.decode("utf-8", "replace").rstrip()
        for secret in self.session.secrets():
            text = text.replace(secret, "********")
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

    def _curl_failed(self, error, received=None):
        raise curl_failed(error if isinstance(error, Failure) else _describe(error, received, self.session.timeout))


class RangeRead:
    """The source of a backup with --jobs N: ``_all_docs`` as N key ranges read at once.

    One stream is served by one CouchDB request process, so it is the limit
    of a backup; N ranges are N processes.  The split keys are the ids at
    every N-th of the rows (``limit=1&skip=K``, no documents, asked at
    once); range i asks ``startkey`` = key i and ``endkey`` = key i+1 with
    ``inclusive_end=false``.  Each range is the ``AllDocsSource`` transfer of
    one reply, in a thread: the first writes into the backup's own target,
    the others each into a temporary file beside it (unnamed with ``-f -``),
    never into memory, joined in key order when the writer reaches them.  A
    range's lines go in without its header and footer, a comma between
    ranges, so the file is the one-stream backup's, byte for byte.  Every
    range must end with its footer and, while the database did not change
    between the ranges' reads (the same ``update_seq`` and ``total_rows``),
    their rows must add up to its ``total_rows``.  A failure or a signal
    stops every range and removes every temporary file.  Where the split
    keys cannot be read, one stream.
    """

    BLOCK = 1 << 20
    HEAD = len(BACKUP_HEADER) + 1     # the header line of a range's own dump
    TAIL = b"\n" + FOOTER + b"\n"     # and its last line

    def __init__(self, opts, session, out, progress, summary, stop=None):
        # The one stream: read where no split keys can be; the ranges share its settings.
        self.whole = AllDocsSource(opts, session, out, progress, summary, stop)
        self.stop = Stop()   # not installed: set, it ends the ranges still reading at their next block
        self.db_path = "/" + quote_database(opts.db)
        self.requester = Requester(session, out, opts, self.stop)
        self.ranges = []

    def prepare(self):
        """Before the output is opened: what the one stream prepares (nothing to read)."""
        self.whole.prepare()

    def copy(self, target):
        """Read every range and write the dump into ``target``; returns (reply had CRs, size)."""
        keys = self.split_keys()
        if not keys:
            return self.whole.copy(target)
        try:
            self.ranges = [_Range(self, index, keys, target) for index in range(len(keys) + 1)]
            for part in self.ranges:
                part.start()
            lines = False   # the backup holds lines already: the next range's go after a comma
            for part in self.ranges:
                self.wait(part)
                lines = part.join_into(target, lines)
            self.check_rows()
            target.write(self.TAIL)
        except BackupFailed as error:
            raise Failure(lines=["... ERROR: Backup failed, no file written: %s." % error])
        finally:
            self.stop.requested = self.stop.requested or signal.SIGTERM   # the ranges still reading end
            for part in self.ranges:
                part.remove()
        sources = [part.source for part in self.ranges]
        summary = self.whole.summary
        summary["documents"] = sum(source.summary["documents"] for source in sources)
        summary["design_documents"] = sum(source.summary["design_documents"] for source in sources)
        self.whole.progress.update(summary["documents"], target.written, force=True)
        return any(part.had_cr for part in self.ranges), sum(part.size for part in self.ranges)

    def split_keys(self):
        """The first id of every range but the first, in order; empty: read one stream."""
        first = self.requester.glance(self.db_path + "/_all_docs?limit=0")
        total = first.get("total_rows") if isinstance(first, dict) else None
        if not isinstance(total, int):
            return []
        count = min(self.whole.opts.jobs, total)
        pages = self.glance_all(["%s/_all_docs?limit=1&skip=%d" % (self.db_path, total * index // count)
                                 for index in range(1, count)])
        keys = []
        for page in pages:
            rows = page.get("rows") if isinstance(page, dict) else None
            if not isinstance(rows, list) or rows and not isinstance(rows[0], dict):
                return []
            # Written to meanwhile, the database may give a key twice: the ranges must not overlap.
            key = rows[0].get("id") if rows else None
            if isinstance(key, str) and (not keys or key > keys[-1]):
                keys.append(key)
        return keys

    def glance_all(self, paths):
        """The replies to ``paths``, asked at once (a server's skip walks the
        rows it skips), in daemon threads: a signal ends the run without
        waiting for a server that stopped answering."""
        pages = [None] * len(paths)

        def ask(index):
            pages[index] = self.requester.glance(paths[index])
        threads = [threading.Thread(target=ask, args=(index,), daemon=True) for index in range(len(paths))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return pages

    def wait(self, part):
        """Until ``part`` is read; a range that failed meanwhile, or a signal, ends the backup."""
        while not part.done.wait(0.1):
            if self.whole.stop.requested:   # a whole-server run's signal
                raise Stopped(self.whole.stop.requested)
            for other in self.ranges:
                if other.error is not None:
                    raise other.error
            documents = sum(other.figures.documents for other in self.ranges)
            written = sum(other.figures.size for other in self.ranges)
            self.whole.progress.update(documents, written, self.ranges[-1].source.reply_total)
        if part.error is not None:
            raise part.error

    def check_rows(self):
        """While the database did not change between the ranges' reads, their rows add up."""
        sources = [part.source for part in self.ranges]
        totals = {source.reply_total for source in sources}
        seqs = {source.reply_seq for source in sources}
        rows = sum(source.summary["documents"] for source in sources)
        if len(totals) == 1 and len(seqs) == 1 and rows != min(totals):
            raise BackupFailed("the ranges hold %d rows but the database has %d documents" % (rows, min(totals)))


class _Figures:
    """A range's progress, summed by ``RangeRead`` (it draws the line)."""

    documents = size = 0

    def update(self, documents, size, total=None, force=False):
        self.documents, self.size = documents, size


class _Range:
    """One range of a ``RangeRead``: its source, its thread, its temporary file."""

    def __init__(self, read, index, keys, target):
        whole = read.whole
        opts = copy.copy(whole.opts)
        opts.thread_count = 1      # no worker processes forked from threads
        self.figures = _Figures()
        self.source = AllDocsSource(opts, whole.session, whole.out, self.figures,
                                    {"documents": 0, "design_documents": 0}, read.stop)
        self.source.BLOCK = RangeRead.BLOCK >> 2   # N at once: each a quarter of one stream's memory
        self.source.ranged = True
        self.source.start_key = keys[index - 1] if index else None
        self.path = read.db_path + ALL_DOCS_QUERY + "&update_seq=true"
        if index < len(keys):
            self.path += "&endkey=%s&inclusive_end=false" % quote(json.dumps(keys[index]), safe="")
        self.first = index == 0
        self.file = self.name = None
        if self.first:
            self.target = _HeldTail(target, len(RangeRead.TAIL))
        else:
            self.file, self.name = self.spill(target)
            self.target = DumpTarget(self.file)
        self.done = threading.Event()
        self.error = None
        self.had_cr, self.size = False, 0

    @staticmethod
    def spill(target):
        """A temporary file beside the backup's, named as its own is; unnamed with -f -."""
        if not isinstance(target, BackupFile):
            return tempfile.TemporaryFile(), None
        fd, name = TEMPORARY_FILES.make(target.path)
        return os.fdopen(fd, "w+b"), name

    def start(self):
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        try:
            self.had_cr, self.size = self.source._transfer(self.path, self.target)
            self.target.finish()
        except BaseException as error:
            self.error = error
        finally:
            self.done.set()

    def join_into(self, target, lines):
        """This range's lines onto the backup, after a comma when ``lines`` are
        there before them; returns whether the backup holds lines now."""
        head, tail = RangeRead.HEAD, len(RangeRead.TAIL)
        if self.first:   # written in place already, but for its footer
            if self.target.held != RangeRead.TAIL:
                raise BackupFailed("a range did not end as a dump ends")
            return self.target.passed > head
        end = self.file.seek(0, os.SEEK_END)
        self.file.seek(max(end - tail, 0))
        if end < head + tail or self.file.read(tail) != RangeRead.TAIL:
            raise BackupFailed("a range did not end as a dump ends")
        if end - tail == head:
            return lines
        if lines:
            target.write(b",\n")
        append_file(self.file, head, end - tail, target)
        return True

    def remove(self):
        if self.file is not None:
            self.file.close()
        if self.name is not None:
            TEMPORARY_FILES.forget(self.name)


class _HeldTail:
    """The backup's target for the first range: all but its last ``size`` bytes (its footer)."""

    def __init__(self, target, size):
        self.target = target
        self.size = size
        self.held = b""
        self.passed = 0

    @property
    def written(self):
        return self.target.written

    def write(self, data):
        data = self.held + data
        if len(data) > self.size:
            self.target.write(data[:-self.size])
            self.passed += len(data) - self.size
            data = data[-self.size:]
        self.held = data

    def finish(self):
        pass


def append_file(source, start, end, target):
    """Bytes ``start`` to ``end`` of the file ``source`` onto ``target``: by
    ``os.copy_file_range`` into a plain backup file where the system has
    it (no copy through this process), else read and written a block at a time."""
    if isinstance(target, BackupFile) and not target.compress and hasattr(os, "copy_file_range"):
        target.raw.flush()
        position = start
        try:
            while position < end:
                copied = os.copy_file_range(source.fileno(), target.raw.fileno(), end - position, position)
                if not copied:
                    break
                position += copied
        except OSError:
            pass
        finally:
            target.raw.seek(0, os.SEEK_END)
        target.written += position - start
        start = position
    source.seek(start)
    while start < end:
        data = source.read(min(RangeRead.BLOCK, end - start))
        if not data:
            raise BackupFailed("a range's temporary file is shorter than it was written")
        target.write(data)
        start += len(data)


class _DocumentLines:
    """Writes documents in the dump layout: one a line, commas between.

    ``size`` counts the bytes of the dump written so far (before -z).
    """

    def __init__(self, target, header=BACKUP_HEADER):
        self.target = target
        self.previous = None
        self.size = 0
        self._write(header + b"\n")

    def _write(self, data):
        self.target.write(data)
        self.size += len(data)

    def add(self, doc):
        if self.previous is not None:
            self._write(self.previous + b",\n")
        self.previous = doc

    def add_all(self, docs):
        """``add`` for a list of documents, in one write."""
        if not docs:
            return
        parts = ([] if self.previous is None else [self.previous]) + docs[:-1]
        if parts:
            self._write(b",\n".join(parts) + b",\n")
        self.previous = docs[-1]

    def finish(self):
        # An empty database gets the same file as from CouchDB: a blank line.
        last = self.previous if self.previous is not None else b""
        self._write(last + b"\n" + FOOTER + b"\n")


CHANGES_QUERY = "/_changes?style=all_docs&limit=%d&since=%s"

BULK_GET_QUERY = "/_bulk_get?revs=true&attachments=true"

OPEN_REVS_QUERY = "?open_revs=all&revs=true&attachments=true"


def document_path(doc_id):
    """The URL path of a document below its database (``_design/`` kept)."""
    if is_design_id(doc_id):
        return "/" + DESIGN_PREFIX + quote_path_segment(doc_id[len(DESIGN_PREFIX):])
    return "/" + quote_path_segment(doc_id)


def increment_base(path, db, max_line=64 << 20):
    """The header of the backup ``--since`` names, once the file is known to
    be a whole complete backup of ``db`` that says where the database stood.

    Only its first line and its end are read (a gzip file is read through,
    which proves its data intact).  Raises ``BackupFailed`` saying what to
    do instead.
    """
    if not os.path.exists(path):
        raise BackupFailed("%s does not exist" % path)
    if not os.path.isfile(path):
        raise BackupFailed("%s is not a file" % path)
    try:
        first, last = _first_and_last_lines(path, max_line)
    except OSError as error:
        raise BackupFailed("cannot read %s: %s" % (path, error.strerror or error))
    if last != FOOTER:
        raise BackupFailed("%s is cut short (it does not end with its ]} footer): give its whole file, or take a"
                           " full backup with --complete" % path)
    header = dump_header(first.rstrip(b"\r\n"))
    if header is None or not isinstance(header.get("_security"), dict) or header.get("docs") != []:
        raise BackupFailed("%s is not a complete backup: take a full backup with --complete first" % path)
    if header.get("seq") is None:
        raise BackupFailed("%s records no sequence (it was written before --since existed): take a full backup"
                           " with --complete" % path)
    if header.get("db") != db:
        raise BackupFailed("%s is a backup of %s, not of %s: give one of %s, or take a full backup with --complete"
                           % (path, json.dumps(header.get("db"), ensure_ascii=False), json.dumps(db),
                              json.dumps(db)))
    return header


def _first_and_last_lines(path, max_line, tail_size=1 << 16):
    """A dump file's first line, and its last line that is not blank (stripped).

    A gzip file that is cut or corrupt has no last line (b"")."""
    with open(path, "rb") as raw:
        if raw.read(2) != GZIP_MAGIC:
            raw.seek(0)
            first = raw.readline(max_line + 1)
            raw.seek(max(raw.seek(0, os.SEEK_END) - tail_size, 0))
            tail = raw.read()
        else:
            raw.seek(0)
            try:
                with gzip.GzipFile(fileobj=raw, mode="rb") as handle:
                    first = tail = handle.readline(max_line + 1)
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        tail = tail[-tail_size:] + block
            except (EOFError, zlib.error, gzip.BadGzipFile):
                return b"", b""
    tail = tail.rstrip(b" \t\r\n")
    return first, tail[tail.rfind(b"\n") + 1:].strip()


class Standing:
    """Where the database stands, as every complete backup's header records
    it, and with --since the earlier backup an incremental one continues.

    ``read_base`` reads that backup (``increment_base``) before the output
    is opened or any request sent.  ``take`` turns the database's
    information (``GET /{db}``, read before the changes are) into the
    header's keys: its name, its ``instance_start_time`` and its
    ``update_seq``, the sequence the file is complete up to (a change made
    while the backup runs may be in it and in the next increment too, which
    a ``new_edits:false`` load takes twice harmlessly); for an increment,
    ``since``, once the database is known to be the one the base was taken
    of.
    """

    def __init__(self, opts):
        self.opts = opts
        self.base = None     # --since: the header of the backup this one continues

    def read_base(self):
        if self.opts.since is not None:
            self.base = increment_base(self.opts.since, self.opts.db, self.opts.max_line)

    def take(self, info):
        if not isinstance(info, dict):
            raise BackupFailed("the database's information is not a JSON object")
        standing = {"db": self.opts.db, "instance_start_time": info.get("instance_start_time"),
                    "seq": info.get("update_seq")}
        base = self.base
        if base is not None:
            # instance_start_time has whole seconds on CouchDB (and is the
            # server's on PouchDB Server): a sequence gone back tells too.
            was, now = sequence_number(base["seq"]), sequence_number(standing["seq"])
            if base.get("instance_start_time") != standing["instance_start_time"] \
                    or was is not None and now is not None and now < was:
                raise BackupFailed("the database was deleted and created again since %s: take a full backup"
                                   " with --complete" % self.opts.since)
            standing["since"] = base["seq"]
        return standing


class CompleteSource:
    """The source of a backup with --complete: every leaf revision, with its history.

    The document ids and their leaves come from ``_changes?style=all_docs``
    in pages of ``PAGE``; the leaves themselves from ``_bulk_get`` in
    batches of about ``BATCH`` revisions, fewer where the revisions are
    large (``BATCH_BYTES`` a reply), or one ``open_revs=all`` GET per
    document where the server has no ``_bulk_get``).  Line 1 carries the
    ``_security`` object and where the database stood (``Standing``: the
    next increment starts there; --since reads the feed from its base's);
    then one leaf a line, in the feed's order, each document's leaves
    sorted by revision, so the same database always gives the same file.  ``JOBS`` batches are read at once (CouchDB answers a
    few requests in flight faster), and written in order.  Memory holds one
    page and ``JOBS`` + 1 batches, whatever the size of the database.
    ``_local`` documents are left out on purpose.  Every request is tried
    -a times, 1 s apart.
    """

    PAGE = 10000
    BATCH = 500
    BATCH_BYTES = 16 << 20   # inline attachments can make 500 revisions gigabytes
    JOBS = 2

    def __init__(self, opts, session, out, progress, summary, stop=None):
        self.opts = opts
        self.session = session
        self.out = out
        self.progress = progress
        self.summary = summary
        self.stop = stop or Stop()   # a whole-server run's: the signal it notes ends this backup
        summary.update({"complete": True, "leaves": 0, "deleted": 0, "conflicted": 0})
        self.db_path = "/" + quote_database(opts.db)
        self.bulk_get = True
        self.refused = None     # the status of a _bulk_get refused, until its notice is printed
        self.refusal = threading.Lock()
        self.vanished = {}      # id -> revisions written, for ids with a leaf gone before it was read
        self.reading = collections.deque()   # (batch, future of its leaves), in file order
        self.batch = []         # the batch being filled
        self.batch_size = self.BATCH   # revisions, from the size of the last reply
        # A backup's signals end it at once; this Stop is the batches' own:
        # set when the backup ends early, so that reads still on their way
        # give up at their next attempt instead of keeping the process alive.
        self.batches_stop = Stop()
        self.requester = Requester(session, out, opts, self.batches_stop)
        self.standing = Standing(opts)

    def prepare(self):
        """Before the output is opened: --since reads and checks its base."""
        try:
            self.standing.read_base()
        except BackupFailed as error:
            raise Failure(lines=["... ERROR: Backup failed, no file written: %s." % error])

    def copy(self, target):
        """Write the whole file into ``target``; returns (False: no carriage
        returns removed, its size before compression)."""
        try:
            return False, self._copy(target)
        except BackupFailed as error:
            raise Failure(lines=["... ERROR: Backup failed, no file written: %s." % error])
        except TransferFailed as error:
            raise curl_failed(error)
        except (Failure, Interrupted, KeyboardInterrupt):
            raise
        except Exception as error:
            raise curl_failed(_describe(error, None, self.session.timeout))

    def _copy(self, target):
        """Write the whole file; returns its size before compression."""
        standing = self.standing.take(self._ask("Reading the database's information", "GET", self.db_path).value)
        self.summary.update((key, standing[key]) for key in ("since", "seq") if key in standing)
        if "since" in standing:
            self.out.info("... INFO: Incremental backup: the changes since %s, where %s ends"
                          % (json_bytes(standing["since"]).decode("utf-8"), self.opts.since))
        security = self._ask("Reading the _security object", "GET", self.db_path + "/_security").value
        if not isinstance(security, dict):
            raise BackupFailed("the _security object is not a JSON object")
        lines = _DocumentLines(target, complete_header(security, standing))
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(max_workers=self.JOBS)
        try:
            size = 0
            for rows in self._pages(standing.get("since", 0)):
                for doc_id, revs in rows:
                    if doc_id.startswith("_local/"):
                        continue
                    self.vanished.pop(doc_id, None)
                    self.batch.append((doc_id, revs))
                    size += len(revs)
                    if size >= self.batch_size:
                        self._read(pool, lines)
                        size = 0
            if self.batch:
                self._read(pool, lines)
            while self.reading:
                self._write(*self.reading.popleft(), lines)
        finally:
            if self.reading:
                self.batches_stop.requested = signal.SIGTERM
            for _, future in self.reading:
                future.cancel()
            pool.shutdown(wait=not self.reading)
        self._read_vanished_again(lines)
        lines.finish()
        if self.vanished:
            gone = sorted(self.vanished)
            self.out.line("... WARN: %d documents were purged while the backup ran and are not in it: %s"
                          % (len(gone), ", ".join(json.dumps(i, ensure_ascii=False) for i in gone[:10])))
        summary = self.summary
        self.out.info("... INFO: Complete backup: %d leaf revisions of %d documents and %d deleted ones"
                      " (%d with conflicts)." % (summary["leaves"], summary["documents"], summary["deleted"],
                                                 summary["conflicted"]))
        return lines.size

    def _read_vanished_again(self, lines):
        """The documents with a leaf gone between the listing and the read, that
        the feed did not list again: changed after its last page was read (the
        old leaf compacted away), or purged.  Their leaves as they are now are
        written, but for those written already; only a document with none left
        is purged, and stays in ``vanished``."""
        for doc_id in sorted(self.vanished):
            written_already = self.vanished[doc_id]
            leaves = [leaf for leaf in self._open_revs(doc_id) if leaf is not None]
            if not leaves:
                continue
            written = []
            self._count(doc_id, [leaf for leaf in leaves if leaf.rev not in written_already], written)
            lines.add_all(written)
            del self.vanished[doc_id]

    def _pages(self, since):
        """Yield the feed's rows after ``since`` a page at a time, until a page is empty.

        A page shorter than asked is not taken for the end: a server may
        cap its pages.  CouchDB's ``pending`` of 0 ends it one request early.
        """
        while True:
            seq = since if isinstance(since, str) else json.dumps(since)
            rows, last_seq, pending = self._ask(
                "Reading the changes feed", "GET",
                self.db_path + CHANGES_QUERY % (self.PAGE, quote_path_segment(seq)), read=read_changes_page).value
            if not rows:
                return
            yield rows
            if last_seq == since:
                raise BackupFailed("the changes feed does not move on after %s" % json.dumps(since))
            since = last_seq
            if pending == 0:
                return

    def _read(self, pool, lines):
        """Start reading the batch filled; write the batches read, beyond ``JOBS`` on their way."""
        self.reading.append((self.batch, pool.submit(self._leaves, self.batch)))
        self.batch = []
        while len(self.reading) > self.JOBS:
            self._write(*self.reading.popleft(), lines)

    def _write(self, batch, future, lines):
        """Write the leaves of a batch, read by ``_leaves``, in order."""
        if self.stop.requested:
            raise Stopped(self.stop.requested)
        by_document = future.result()
        if self.refused is not None:
            self.out.line("... WARN: The server has no _bulk_get (HTTP %d): reading the revisions of each"
                          " document by itself." % self.refused)
            self.refused = None
        last = {doc_id: index for index, (doc_id, _) in enumerate(batch)}
        listed_again = {doc_id for waiting, _ in self.reading for doc_id, _ in waiting}
        listed_again.update(doc_id for doc_id, _ in self.batch)
        written = []
        for index, (doc_id, leaves) in enumerate(by_document):
            if None in leaves and last[doc_id] == index and doc_id not in listed_again:
                # Gone since it was listed: changed (it comes again later in
                # the feed, with its new leaves) or purged.
                self.vanished[doc_id] = {leaf.rev for leaf in leaves if leaf is not None}
            self._count(doc_id, [leaf for leaf in leaves if leaf is not None], written)
        lines.add_all(written)
        self.progress.update(self.summary["documents"] + self.summary["deleted"], lines.target.written)

    def _leaves(self, batch):
        """Every listed leaf of a batch: ``[(id, [Leaf, or None where gone])]``.

        Runs in a worker thread: it prints nothing but the retries' lines.
        """
        if not self.bulk_get:
            return [(doc_id, self._open_revs(doc_id)) for doc_id, _ in batch]
        body = json.dumps({"docs": [{"id": doc_id, "rev": rev} for doc_id, revs in batch for rev in revs]},
                          separators=(",", ":")).encode("ascii")
        pairs = sum(len(revs) for _, revs in batch)
        reply = self._ask("Reading %d revisions (_bulk_get)" % pairs, "POST", self.db_path + BULK_GET_QUERY, body,
                          read=lambda text: (len(text), read_bulk_get(text)), tolerate=(404, 405))
        if reply.status in (404, 405):
            with self.refusal:   # the notice once, whichever thread is refused first
                if self.bulk_get:
                    self.bulk_get = False
                    self.refused = reply.status
            return [(doc_id, self._open_revs(doc_id)) for doc_id, _ in batch]
        size, (leaves, missing) = reply.value
        self.batch_size = max(1, min(self.BATCH, self.BATCH_BYTES * pairs // max(size, 1)))
        found = {(leaf.doc_id, leaf.rev): leaf for leaf in leaves}
        unanswered = {(doc_id, rev) for doc_id, revs in batch for rev in revs if (doc_id, rev) not in found}
        unanswered -= set(missing)
        if unanswered:
            doc_id, rev = min(unanswered)
            raise BackupFailed("the _bulk_get reply lacks %s at revision %s"
                               % (json.dumps(doc_id, ensure_ascii=False), rev))
        return [(doc_id, [found.get((doc_id, rev)) for rev in revs]) for doc_id, revs in batch]

    def _open_revs(self, doc_id):
        """Every leaf of one document, without _bulk_get; [None] when it is gone."""
        reply = self._ask("Reading the revisions of " + json.dumps(doc_id, ensure_ascii=False), "GET",
                          self.db_path + document_path(doc_id) + OPEN_REVS_QUERY, read=read_open_revs,
                          tolerate=(404,))
        if reply.status == 404:
            return [None]
        leaves, missing = reply.value
        return sorted(leaves, key=lambda leaf: revision_order(leaf.rev)) + [None] * bool(missing)

    def _count(self, doc_id, leaves, written):
        """Count one document's leaves in the summary; their lines go to ``written``."""
        if not leaves:
            return
        summary = self.summary
        written.extend(leaf.line for leaf in leaves)
        alive = sum(1 for leaf in leaves if not leaf.deleted)
        summary["leaves"] += len(leaves)
        if alive:
            summary["documents"] += 1
            summary["design_documents"] += is_design_id(doc_id)
        else:
            summary["deleted"] += 1
        summary["conflicted"] += alive > 1

    def _ask(self, what, method, path, body=None, read=json.loads, tolerate=()):
        """One request through the requester (-a attempts 1 s apart, a server
        pushing back waited out); its reply, with ``read`` of its text as its
        ``value``, unless its status is in ``tolerate``.  A broken transfer,
        an error reply or a reply that is not the JSON expected is tried
        again; after the last attempt the backup fails (no file).
        """
        return self.requester.ask(Ask(method, path, "complete backup", body=body, read=read, tolerate=tolerate,
                                      accept="application/json", what=what))


class Backup:
    """Backup mode: a source of the dump's lines feeding one output.

    The source is one GET of ``_all_docs`` (``AllDocsSource``) or, with
    --complete, every leaf revision (``CompleteSource``); either writes
    into the target ``BackupOutput`` opens, which becomes the backup file
    only once the source wrote all of it.
    """

    def __init__(self, opts, session, out, progress=None, stop=None):
        self.opts = opts
        self.out = out
        self.progress = progress or Progress(False)
        self.summary = {"mode": "backup", "db": opts.db, "file": opts.file,
                        "documents": 0, "design_documents": 0, "bytes": 0}
        source = CompleteSource if opts.complete else RangeRead if opts.jobs > 1 else AllDocsSource
        self.source = source(opts, session, out, self.progress, self.summary, stop)

    def run(self):
        out = self.out
        output = BackupOutput(self.opts, out)
        out.info("... INFO: Output file %s" % output.name)
        self.summary["file"] = output.final
        self.source.prepare()
        target = output.open()
        try:
            had_cr, size = self.source.copy(target)
            target.commit()
            self.progress.resize(target.written)   # -z: the last members are written at the commit
        except BaseException as error:
            if isinstance(error, Failure):
                error.tell(out)   # while the progress line still stands, as every other line
            target.discard()
            # No file: counts of documents in it would mislead (--json).
            self.summary.update((key, 0) for key, value in self.summary.items() if type(value) is int)
            raise
        finally:
            self.progress.finish()
        self.summary["bytes"] = target.written
        output.tell_done(had_cr, size)


# ===========================================================================
# 7. Restore
# ===========================================================================
# Read -> check -> target database -> design documents -> chunks -> upload -> verify.


class RestoreRun:
    """What every stage of one restore shares, and nothing more.

    The options, the messages, the requester, the progress line, what was
    done so far (``counts``) and, once the dump is checked, the ``plan``.
    One a run: the stages read it, none copies it.
    """

    def __init__(self, opts, out, requester, progress):
        self.opts = opts
        self.out = out
        self.requester = requester
        self.progress = progress
        self.counts = RestoreCounts(opts)
        self.db_path = "/" + quote_database(opts.db)
        self.plan = None   # a RestorePlan, once the dump is checked
        # -s and --resume compare the dump with what the database holds (not an empty one).
        self.compare = opts.resume or opts.start_chunk is not None


class RestoreCounts:
    """What a restore has done, counted in one place; its --json summary.

    ``documents_written`` counts the documents the server took in this run
    (design documents included), ``refused`` those it answered with an
    error, ``skipped`` those -s or --resume found in the database already
    at the dump's revision (design documents included); ``failed_chunk``
    names the chunk the run stopped at.
    """

    def __init__(self, opts):
        self.db = opts.db
        self.file = opts.file
        self.compares = opts.resume or opts.start_chunk is not None   # with the database: "skipped" counts
        self.skipped = 0
        self.total_documents = 0     # in the dump
        self.file_bytes = 0          # of the dump file, once it is checked
        self.design_documents = 0    # PUT in this run
        self.documents_written = 0
        self.refused = 0
        self.chunks_written = 0
        self.bytes_sent = 0
        self.failed_chunk = None
        self.complete = False        # a complete backup: documents counts its revisions
        self.since = None            # an incremental backup: the sequence it starts from
        self.resume_at = None        # the -s value that resumes a restore that stopped

    def summary(self):
        summary = {"mode": "restore", "db": self.db, "file": self.file, "documents": self.documents_written,
                   "design_documents": self.design_documents, "bytes": self.file_bytes}
        if self.complete:
            summary["complete"] = True
        if self.since is not None:
            summary["since"] = self.since
        if self.compares:
            summary["skipped"] = self.skipped
        if self.resume_at is not None:
            summary["resume"] = "-s " + self.resume_at
        return summary


_DESIGN_LAYOUT = re.compile(rb'\A\{"_id":"((?:[^"\\]|\\.)*)","_rev":"[0-9]*-[0-9a-zA-Z_\-]*",')


class _Borrowed:
    """A file object lent to a reader: closing it leaves it open."""

    def __init__(self, handle):
        self.handle = handle

    def read(self, size=-1):
        return self.handle.read(size)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass


class DumpFile:
    """Reads a dump file: plain or gzip, LF or CRLF, in blocks of whole lines.

    A gzip file is recognised by its magic bytes, whatever its name, and
    read as the text it holds.  A carriage return before a line's newline is
    dropped, so a CRLF dump restores exactly as the same dump with LF ends.
    Every pass reads the file again, so memory holds one block and the
    longest line, never the whole dump; a line longer than ``max_line``
    bytes is refused rather than read.
    """

    BLOCK = 1 << 20

    def __init__(self, path, max_line=64 << 20, spool=None):
        self.path = path
        self.max_line = max_line
        self.spool = spool
        if spool is None:
            self.size = os.path.getsize(path)
            with open(path, "rb") as probe:
                self.compressed = probe.read(2) == GZIP_MAGIC
        else:
            self.size = spool.seek(0, os.SEEK_END)
            spool.seek(0)
            self.compressed = spool.read(2) == GZIP_MAGIC

    @classmethod
    def from_stream(cls, stream, max_line=64 << 20):
        """A dump read from a pipe (``-f -``).

        It has to be read twice (checked whole, then uploaded), and a pipe
        cannot be read again: it is kept in memory up to 32 MB, beyond that
        in an unnamed temporary file that is gone when the run ends.
        """
        spool = tempfile.SpooledTemporaryFile(max_size=32 << 20)
        first_byte = None
        while True:
            data = stream.read(1 << 20)
            if not data:
                break
            if first_byte is None:
                first_byte = time.monotonic()
            spool.write(data)
        dump = cls("-", max_line, spool)
        dump.first_byte = first_byte   # the work starts there, not at the wait for the writer
        return dump

    def _open(self):
        if self.spool is not None:
            self.spool.seek(0)
            raw = _Borrowed(self.spool)
        else:
            raw = open(self.path, "rb", buffering=0)
        return gzip.GzipFile(fileobj=raw, mode="rb") if self.compressed else raw

    def _read(self, handle, line):
        # Reads no longer than the longest line allowed: then only a line
        # that began in an earlier read can be too long, and it is measured.
        try:
            return handle.read(min(self.BLOCK, self.max_line))
        except (EOFError, zlib.error, gzip.BadGzipFile) as error:
            raise DumpInvalid(line, "the gzip data is truncated or corrupt (%s)" % error)

    def blocks(self, numbered=True):
        """Yield ``(number of the block's first line, block, its newlines)``.

        Blocks hold whole lines; only the last may end without a newline.
        Without ``numbered`` the lines are not counted (a pass over the
        data saved) and the numbers are None.
        """
        line = 1
        pending = []        # the reads of a line not yet whole: joined once, when it is
        pending_size = 0
        with self._open() as handle:
            while True:
                data = self._read(handle, line)
                if not data:
                    break
                newline = data.find(b"\n")
                if pending_size + (len(data) if newline < 0 else newline) > self.max_line:
                    raise DumpInvalid(line, "a line longer than %d MB (--max-line-mb)" % (self.max_line >> 20))
                if newline < 0:
                    pending.append(data)
                    pending_size += len(data)
                    continue
                cut = data.rfind(b"\n") + 1
                if pending_size > self.BLOCK:
                    # A line longer than a read is a block of its own: the
                    # lines after it are not decoded with it (one emoji
                    # there would make its text take 4 bytes a character).
                    pending.append(data[:newline + 1])
                    ready = [b"".join(pending)]
                    if newline + 1 < cut:
                        ready.append(data[newline + 1:cut])
                else:
                    pending.append(data[:cut] if cut < len(data) else data)
                    ready = [b"".join(pending) if len(pending) > 1 else pending[0]]
                pending = [data[cut:]] if cut < len(data) else []
                pending_size = len(data) - cut
                data = None
                while ready:
                    block = ready.pop(0)
                    if b"\r" in block:
                        block = block.replace(b"\r\n", b"\n")
                    newlines = block.count(b"\n") if numbered else None
                    # Handed over without a reference kept here: a long line's
                    # block is freed as soon as the reader of the blocks drops it.
                    handed = [block]
                    block = None
                    yield (line if numbered else None), handed.pop(), newlines
                    if numbered:
                        line += newlines
        pending = b"".join(pending)
        if pending:
            if pending.endswith(b"\r"):
                pending = pending[:-1]
            yield line, pending, 0

    def numbered_lines(self, numbers):
        """Yield ``(number, line)`` for the lines whose number (from 0) is in
        ``numbers``; only the blocks that hold one are split."""
        for first, block, newlines in self.blocks():
            base = first - 1
            if not any(base <= n <= base + newlines for n in numbers):
                continue
            lines = block.split(b"\n")
            if block.endswith(b"\n"):
                # Not a line: what follows the block's last newline. The line
                # of that number begins the next block (found by the
                # property tests: a design document PUT with an empty body).
                lines.pop()
            for offset, line in enumerate(lines):
                if base + offset in numbers:
                    yield base + offset, line + b"\n"

    def lines(self):
        """Yield every line with its newline (the last may lack one)."""
        for _, block, _ in self.blocks():
            parts = block.split(b"\n")
            last = parts.pop()
            for part in parts:
                yield part + b"\n"
            if last:
                yield last


_BLANK_LINE_BYTES = re.compile(rb"\n[ \t]*(?=\n)")


def check_documents(text, first_line, want_keys=False, start=0, end=None):
    """Prove that ``text[start:end]`` holds whole lines of JSON objects, one a line.

    A pure function, run inline or in a worker.  The part ends where a
    document line ends, its last comma included or not.  Returns
    ``(documents, problem, keys)``: ``problem`` is ``(line, why)`` or None;
    ``keys`` (with ``want_keys``) the --verify keys of its documents and the
    ids of its design documents.  Memory: the part, its text and what it
    parses to, once each (a long line is never copied twice more).
    """
    end = len(text) if end is None else end
    origin, stop = start, end
    while start < end and text[start] in b" \t\n":   # blanks only: the rest is decoded
        start += 1
    while end > start and text[end - 1] in b" \t\n":
        end -= 1
    if start == end:
        return 0, None, None
    # A last comma would make "[...]" invalid: a 0 after it stands for the
    # document that is not there, and is dropped once parsed.
    comma = text[end - 1] == 44   # ","
    try:
        docs = b"".join((b"[", memoryview(text)[start:end], b"0]" if comma else b"]")).decode("utf-8")
    except UnicodeDecodeError as error:
        return 0, (first_line + text.count(b"\n", origin, start + error.start - 1), "bytes that are not UTF-8"), None
    # Only --verify needs the documents themselves.  Otherwise each object
    # is turned into the class ``list`` as soon as it is read (hook=type; no
    # JSON value can be a class): the whole grammar is still checked, at
    # half the cost of building the dictionaries.
    try:
        values = json.loads(docs, object_pairs_hook=None if want_keys else type)
    except ValueError:
        values = None
    docs = None
    if values is not None and comma:
        if values and type(values[-1]) is int and values[-1] == 0:
            values.pop()
        else:
            values = None
    lines = text.count(b"\n", start, end) + 1
    if values is not None and len(values) != lines:
        # Blank lines are allowed (an empty database's dump has one).
        if len(values) != lines - len(_BLANK_LINE_BYTES.findall(text, start, end)):
            values = None
    if values is None or not (all(type(v) is dict for v in values) if want_keys
                              else all(v is list for v in values)):
        return 0, find_bad_line(first_line, bytes(text[origin:stop])), None
    keys = None
    if want_keys:
        index = RevisionIndex()
        index.add(values)
        keys = index.keys.tobytes(), index.design_ids
    return len(values), None, keys


def find_bad_line(first_line, text):
    """Name the first line that breaks a block of documents (the slow path)."""
    lines = text.split(b"\n")
    for offset, line in enumerate(lines):
        body = line.strip(b" \t")
        if not body:
            continue
        last = not any(other.strip(b" \t") for other in lines[offset + 1:])
        if body.endswith(b","):
            body = body[:-1]
        elif not last:
            return first_line + offset, "a document line without its trailing comma"
        try:
            value = json.loads(body)
        except ValueError:
            return first_line + offset, "a line that is not valid JSON"
        if not isinstance(value, dict):
            return first_line + offset, "a line that is not a JSON object"
    return first_line, "lines that are not one JSON document each"


_NON_BLANK = re.compile(rb"[^ \t\n]")


def _last_non_blank(text, start=0, end=None):
    """Where the last byte of ``text[start:end]`` that is not a blank is (start - 1: none)."""
    index = (len(text) if end is None else end) - 1
    while index >= start and text[index] in b" \t\n":
        index -= 1
    return index


class DumpSurvey:
    """One streaming pass over the dump (``read``), before anything is sent.

    Counts lines as ``wc -l`` does (newline characters), finds the design
    documents, and keeps the first and last lines: all the script learns
    from its grep, wc, head and tail, without writing a file.  With
    ``check`` it also proves the dump whole, so that a broken one is refused
    before the first request instead of half restored: a header line, one
    JSON object a line with a comma after every one but the last, the
    ``]}`` footer last, UTF-8 throughout.  It parses each block of lines as
    one JSON array, which keeps the cost in the C parser, in worker
    processes when the dump is large.  It also tells a complete backup
    (``complete``): a header carrying ``_security`` (kept in ``security``),
    or a document line with ``_revisions``.
    """

    def __init__(self, dump, check=True, index=None, workers=1):
        self.dump = dump
        self.index = index       # a RevisionIndex to fill, for --verify
        self.calls = BlockCalls(workers, check_documents)
        self.want_keys = index is not None
        self.newlines = 0
        self.lines = 0
        self.documents = 0
        self.designs = []        # (line number counted from 0, id)
        self.first = None
        self.last = b""
        self.last_has_newline = True
        self.complete = False
        self.security = None
        self.since = None        # an incremental backup: the sequence it starts from
        self._comma_pending = None   # the last document line seen ended with a comma
        self.check = check
        self.design_lines = set()

    def read(self):
        """The pass over the dump; returns the survey, or raises ``DumpInvalid``."""
        dump, check = self.dump, self.check
        held = None
        try:
            for number, block, newlines in dump.blocks():
                self._survey(number, block, newlines)
                if check:
                    if held is not None:
                        self._check_block(*held, final=False)
                    held = (number, block)
                block = None
            if self.first is None:
                raise DumpInvalid(1, "the file is empty: it is no dump")
            if check:
                self._check_block(*held, final=True)
                self._take(self.calls.drain())
        finally:
            self.calls.close()
        block = self.last
        end = len(block) - 1 if self.last_has_newline else len(block)
        self.last = block[block.rfind(b"\n", 0, end) + 1:]   # the dump's last line, copied once
        self.design_lines = {number for number, _ in self.designs}
        return self

    def _survey(self, number, block, newlines):
        if self.first is None:
            cut = block.find(b"\n")
            self.first = block[:cut] if cut >= 0 else block
            self.security = complete_header_security(self.first)
            self.complete = self.security is not None
            self.since = header_since(self.first)
        if not self.complete and b'"_revisions"' in block:
            self.complete = any(has_revisions(line) for line in block.split(b"\n") if b'"_revisions"' in line)
        self.lines += newlines + (0 if block.endswith(b"\n") else 1)
        self.newlines += newlines
        self.last_has_newline = block.endswith(b"\n")
        self.last = block   # its last line is cut out at the end: a block is not copied for it
        position = block.find(b"_design")
        while position >= 0:
            start = block.rfind(b"\n", 0, position) + 1
            stop = block.find(b"\n", position)
            stop = len(block) if stop < 0 else stop + 1
            line_number = number - 1 + block.count(b"\n", 0, start)
            doc_id = design_document_id(block[start:stop])
            if doc_id is not None and line_number > 0:
                self.designs.append((line_number, doc_id))
            position = block.find(b"_design", stop)

    def _check_block(self, number, block, final):
        """Prove one block of lines; ``final`` when it is the dump's last.

        The documents are ``block[start:end]``: positions, so that a block
        holding a long line is never copied to cut its header or footer off.
        """
        start, end = 0, len(block)
        first_line = number
        if number == 1:
            cut = block.find(b"\n")
            self._check_header(block[:cut] if cut >= 0 else block)
            start = cut + 1 if cut >= 0 else end
            first_line = 2
        if final:
            body_end = end
            while body_end > start and block[body_end - 1] == 10:   # "\n"
                body_end -= 1
            cut = max(block.rfind(b"\n", start, body_end) + 1, start)
            if block[cut:body_end] != FOOTER:
                self._fail(number + block.count(b"\n", 0, body_end),
                           "the dump ends without its ']}' footer: it was cut short")
            end = cut
        if not _NON_BLANK.search(block, start, end):
            if final and self._comma_pending:
                self._fail(first_line, "the last document is followed by a comma")
            return
        if self._comma_pending is False:
            self._fail(first_line - 1, "a document line without its trailing comma")
        last = _last_non_blank(block, start, end)
        self._comma_pending = block[last:last + 1] == b","
        if final and self._comma_pending:
            self._fail(first_line + block.count(b"\n", start, last), "the last document is followed by a comma")
        if start or end < len(block):
            if end - start < BlockCalls.INLINE_FROM:
                block, start, end = block[start:end], 0, end - start   # a worker gets only its part
        self._take(self.calls.submit(end - start, block, first_line, self.want_keys, start, end))

    def _take(self, results):
        for documents, problem, keys in results:
            if problem is not None:
                raise DumpInvalid(*problem)
            self.documents += documents
            if keys is not None:
                self.index.keys.frombytes(keys[0])
                self.index.design_ids.extend(keys[1])

    def _fail(self, line, why):
        """A problem seen here: the workers' earlier blocks are told first."""
        self._take(self.calls.drain())
        raise DumpInvalid(line, why)

    def _check_header(self, header):
        try:
            value = json.loads(header + b"]}")
        except ValueError:
            value = None
        if not isinstance(value, dict) or value.get("docs") != []:
            raise DumpInvalid(1, 'the first line is not a dump header like {"new_edits":false,"docs":[')

    def remaining_newlines(self):
        """``wc -l`` of the text left once the design documents are out."""
        return self.newlines - sum(1 for n, _ in self.designs if n != self.lines - 1 or self.last_has_newline)

    def keep_designs_in_text(self):
        """A complete backup: its design documents go to _bulk_docs with the others."""
        self.bulk_designs, self.designs, self.design_lines = self.designs, [], set()


def open_dump(run):
    """The restore's first stage: the dump file (``-f -``: standard input, kept)."""
    opts = run.opts
    if opts.file == "-":
        dump = DumpFile.from_stream(sys.stdin.buffer, opts.max_line)
        run.progress.restart(dump.first_byte)   # the rate counts from the first byte, not the wait
        return dump
    if not os.path.isfile(opts.file):
        raise Failure(lines=["... ERROR: Input file %s not found." % opts.file])
    try:
        return DumpFile(opts.file, opts.max_line)
    except OSError as error:
        raise Failure(lines=["... ERROR: Cannot read %s: %s." % (opts.file, error.strerror)])


def check_dump(run, dump, index):
    """The second stage: the whole dump proved restorable before anything is sent."""
    opts = run.opts
    try:
        survey = DumpSurvey(dump, index=index, workers=opts.cores).read()
    except DumpInvalid as error:
        raise Failure(lines=["... ERROR: %s line %d: %s. Nothing was sent to the server."
                             % (opts.file, error.line, error.text)])
    except OSError as error:
        raise Failure(lines=["... ERROR: Cannot read %s: %s." % (opts.file, error.strerror or error)])
    if index is not None:
        index.seal()
    return survey


class RestorePlan:
    """How the text will be sent, decided before any request.

    Whatever can be known in advance to fail is known here: the script
    found out that split refuses -l only after it had deleted, created
    and written design documents.  ``refuse`` ends the run before the
    first request that would change the server.
    """

    def __init__(self, opts, survey):
        self.lines = opts.lines
        self.text_newlines = survey.remaining_newlines() if survey.designs else survey.newlines
        self.single = opts.single_below is not None and self.text_newlines < opts.single_below
        self.fails = not self.single and opts.chunk_lines is None
        self.start = start_chunk(opts, survey, self.single)   # -s: the index of the first chunk to send

    def refuse(self):
        """Before a write: end the run now if the plan cannot be carried out."""
        if self.fails:
            raise Failure(lines=["... ERROR: Unable to create split files."],
                          notes=['couchdb_dump: -l "%s" is not a number of lines from 1; nothing was changed on the'
                                 ' server' % self.lines])


# What a refused list of databases most likely means (said on stderr).
REFUSED_LISTING = {
    401: ": it did not accept the user name and password (-u/-p, or COUCHDB_USER/COUCHDB_PASS)",
    403: ": the user may not list the databases",
}


def report_refusals(out, reply):
    """Report the documents an accepted _bulk_docs reply still refused; returns their number."""
    try:
        answers = json.loads(reply.body)
    except ValueError:
        return 0
    if not isinstance(answers, list):
        return 0
    refused = 0
    for answer in answers:
        if isinstance(answer, dict) and "error" in answer:
            refused += 1
            out.line("... ERROR: Document %s was refused: %s: %s" % (
                json.dumps(answer.get("id"), ensure_ascii=False), answer.get("error"), answer.get("reason", "")))
    return refused


class TargetDatabase:
    """The database a restore writes to, made ready as the script does.

    It asks for the list of databases; a database that is missing is
    created with -c, one that exists is deleted and created again with
    --recreate.  ``before_change`` runs before the first request that would
    change the server, so a plan known to fail stops the run before it.
    """

    def __init__(self, run):
        self.run = run
        self.path = run.db_path

    def prepare(self, before_change):
        opts, out = self.run.opts, self.run.out
        if opts.server_run:
            names = [opts.db] if self.exists() else []
        else:
            reply = self.run.requester.ask(Ask("GET", "/_all_dbs", "list databases", expect="any"))
            names = database_names(reply)
        if names is None:
            out.line("... WARN: Curl failed to get the list of databases - Continuing")
            if not reply.body.rstrip(b"\n"):
                out.line("... WARN: Curl just returned: ")
            refused = None
            if reply.status >= 400:
                refused = "the server answered HTTP %d to the list of databases%s" % (
                    reply.status, REFUSED_LISTING.get(reply.status, ""))
            if opts.recreate:
                raise Failure(lines=["... ERROR: --recreate needs the list of databases - Stopping"], cause=refused)
            if refused:
                out.detail("couchdb_dump: " + refused)
            return
        exists = opts.db in names
        if exists and opts.recreate:
            before_change()
            self.delete()
            exists = False
        if exists:
            return
        if not opts.create:
            raise Failure(lines=["... ERROR: corresponding database %s not yet created - Stopping" % opts.db],
                          hints=["... HINT: you could add the -c flag to create the database automatically"])
        before_change()
        self.create()

    def exists(self):
        """Whether the database is there, asked of it alone (``GET /db``): a
        whole-server run would read the list of every database once for each."""
        reply = self.run.requester.ask(Ask("GET", self.path, "check database", tolerate=(404,),
                                           db=self.run.opts.db))
        return reply.status != 404

    def delete(self):
        opts, out = self.run.opts, self.run.out
        out.info("... INFO: Deleting database %s (--recreate)" % opts.db)
        self.run.requester.ask(Ask("DELETE", self.path, "delete database", expect="stored", db=opts.db))

    def create(self):
        self.run.requester.ask(Ask("PUT", self.path, "create database", expect="stored", db=self.run.opts.db))


def design_document_request(line, doc_id):
    """The PUT path and body for one design document line.

    As the script: ``_id``, ``_rev`` and the trailing comma are removed and a
    newline ends the body.  A line in another layout is re-serialised
    without ``_id``/``_rev``.  The id is percent-encoded after ``_design/``,
    so a crafted dump cannot reach outside the target database.
    """
    text = strip_newline(line)
    match = _DESIGN_LAYOUT.match(text)
    if match and match.group(1) == doc_id.encode("utf-8", "surrogatepass"):
        body = b"{" + text[match.end():]
        if body.endswith(b","):
            body = body[:-1]
    else:
        trimmed = text[:-1] if text.endswith(b",") else text
        try:
            doc = json.loads(trimmed)
            doc.pop("_id", None)
            doc.pop("_rev", None)
            body = json_bytes(doc)
        except (ValueError, AttributeError):
            body = trimmed
    name = doc_id[len(DESIGN_PREFIX):] if is_design_id(doc_id) else doc_id
    return "/" + DESIGN_PREFIX + quote_path_segment(name), body + b"\n"


class DesignDocuments:
    """PUTs the dump's design documents one by one, as the script does.

    With -s or --resume the database may hold them already: each is read
    first; one with the same content (compared without ``_rev``) is left as
    it is, one with other content is PUT with its current ``_rev`` (an
    update, never a ``conflict``).
    """

    def __init__(self, run):
        self.run = run
        self.compare = run.compare

    def put_all(self, dump, survey):
        opts, counts = self.run.opts, self.run.counts
        wanted = dict(survey.designs)
        for count, (number, line) in enumerate(dump.numbered_lines(wanted)):
            path, body = design_document_request(line, wanted[number])
            name = "%s-design.%d" % (opts.file, count)
            if self.compare:
                body = self.against_database(path, body, name, wanted[number])
                if body is None:
                    counts.skipped += 1
                    continue
            self.run.requester.ask(Ask("PUT", self.run.db_path + path, "design document", body=body, expect="stored",
                                   doc_id=wanted[number], name=name, db=opts.db))
            counts.documents_written += 1
            counts.design_documents += 1
            self.run.progress.update(counts.documents_written, counts.bytes_sent, counts.total_documents)

    def against_database(self, path, body, name, doc_id):
        """The body to PUT: as it is, with the current ``_rev``, or None when it is there already."""
        reply = self.run.requester.ask(Ask("GET", self.run.db_path + path + "?attachments=true", "read design document",
                                       expect="object", tolerate=(404,), name=name))
        if reply.status == 404:
            return body
        current = reply.value
        rev = current.pop("_rev", None)
        current.pop("_id", None)
        if current == _json_or_none(body):
            self.run.out.info("... INFO: Design document %s is in the database already: left as it is"
                          % json.dumps(doc_id, ensure_ascii=False))
            return None
        return with_revision(body, rev) if isinstance(rev, str) else body


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
    """One _bulk_docs body and what the script would say about its edges.

    The body is kept as its lines (``lines``, each without its newline: the
    text's header line first, its footer line last, the document lines
    between), never joined into one copy for the upload: ``stream`` is the
    ``(length, blocks)`` pair ``CouchSession.open`` sends, ``blocks``
    joining lines a megabyte at a time and handing a long line over as it
    is.  A chunk holding a 33 MB document thus costs 33 MB, not twice or
    three times.  Every attempt streams the same bytes again.

    To send part of a chunk again (a server refusing a body as too large,
    HTTP 413), ``halves`` makes two chunks of its documents, each a
    complete body; ``Chunk.of_lines`` makes one of any run of the text's
    lines, as ``RestoreText.chunks`` does.
    """

    GROUP = 1 << 20   # lines joined into pieces of about this size to be sent

    def __init__(self, lines, newline, had_header, had_footer, documents):
        self.lines = lines
        self.newline = newline   # the body ends with a newline
        self.had_header = had_header
        self.had_footer = had_footer
        self.documents = documents
        self.size = sum(map(len, lines)) + len(lines) - 1 + newline

    @classmethod
    def of_lines(cls, piece, header, footer, newline):
        """A chunk of the text's lines ``piece`` (a list, taken over), made a
        whole body as the script makes a split file one: the header line
        prepended unless it is the first, and unless the footer line is
        the last, the last line's trailing comma dropped and the footer
        appended."""
        had_header = piece[0] == header
        had_footer = piece[-1] == footer
        documents = len(piece) - had_header - had_footer - piece.count(b"")
        if not had_footer and piece[-1].endswith(b","):
            piece[-1] = piece[-1][:-1]
        lines = piece if had_header else [header] + piece
        if not had_footer:
            lines.append(footer)
            newline = True
        return cls(lines, newline, had_header, had_footer, documents)

    def halves(self):
        """Two chunks: the first half of this one's document lines, then the rest."""
        header, footer, documents = self.lines[0], self.lines[-1], self.lines[1:-1]
        half = len(documents) // 2
        return (Chunk.of_lines([header] + documents[:half], header, footer, True),
                Chunk.of_lines(documents[half:] + [footer], header, footer, self.newline))

    def whole(self):
        """The chunk itself (the ``Requester.send_documents`` part it is)."""
        return self

    def ids(self):
        """The ids of its documents, in order (None where a line has none)."""
        return [document_revision(doc)[0] for doc in chunk_documents(self)]

    @property
    def stream(self):
        """The body as ``CouchSession.open`` sends it without joining it."""
        return self.size, self.blocks

    @property
    def body(self):
        """The body as one bytes object (a copy: for tests and small chunks)."""
        return b"".join(self.blocks())

    def blocks(self):
        """The body's bytes: runs of lines joined up to GROUP bytes, newlines between."""
        lines = self.lines
        ends = list(accumulate(map(len, lines)))
        start = 0
        while start < len(lines):
            stop = max(bisect_right(ends, ends[start] - len(lines[start]) + self.GROUP), start + 1)
            yield b"\n".join(lines[start:stop])
            if stop < len(lines) or self.newline:
                yield b"\n"
            start = stop


def documents_chunk(header, docs, footer):
    """A chunk of document lines (without their commas) made a whole body."""
    lines = [header] + [doc + b"," for doc in docs[:-1]] + docs[-1:] + [footer]
    return Chunk(lines, True, True, True, len(docs))


def chunk_documents(chunk):
    """A chunk's document lines, without their trailing commas."""
    return [line[:-1] if line.endswith(b",") else line for line in chunk.lines[1:-1] if line.strip(b" \t")]


class RestoreText:
    """The text the script uploads: the dump less its design documents.

    With design documents taken out, the trailing comma of the line the
    script's "Fixing end document" names is removed, as it does.  The text
    is produced again on every pass, from the file, as lists of lines (each
    without its newline) so that the work per line stays in C.
    """

    def __init__(self, dump, design_lines, fix_line, header=None, footer=None):
        self.dump = dump
        self.design_lines = design_lines
        self.fix_line = fix_line   # 1-based, in the text without designs
        self.header = header       # the text's first and last lines, when known
        self.footer = footer

    def line_lists(self):
        """Yield ``(lines, last line ends with a newline)`` a block at a time."""
        kept = 0
        for first, block, _ in self.dump.blocks(numbered=bool(self.design_lines)):
            lines = block.split(b"\n")
            block = None   # a long line is then held once, in ``lines``
            newline = not lines[-1]
            if newline:
                lines.pop()
            if self.design_lines:
                base = first - 1
                if any(base <= n < base + len(lines) for n in self.design_lines):
                    lines = [line for i, line in enumerate(lines) if base + i not in self.design_lines]
            if self.fix_line is not None and kept < self.fix_line <= kept + len(lines):
                index = self.fix_line - kept - 1
                if lines[index].endswith(b","):
                    lines[index] = lines[index][:-1]
            kept += len(lines)
            if lines:
                yield lines, newline

    def blocks(self):
        for lines, newline in self.line_lists():
            yield b"\n".join(lines) + (b"\n" if newline else b"")

    def size(self):
        return sum(sum(map(len, lines)) + len(lines) - (not newline) for lines, newline in self.line_lists())

    def as_chunk(self):
        """The whole text as one ``Chunk``: in memory, for a body that must be cut or filtered."""
        lines, newline = [], True
        for part, newline in self.line_lists():
            lines.extend(part)
        header, footer = self.edges()
        return Chunk.of_lines(lines, header, footer, newline)

    def edges(self):
        """The text's first and last lines (one pass when not known)."""
        if self.header is None or self.footer is None:
            header = footer = None
            for lines, _ in self.line_lists():
                if header is None:
                    header = lines[0]
                footer = lines[-1]
            self.header = header if header is not None else b""
            self.footer = footer if footer is not None else b""
        return self.header, self.footer

    def chunks(self, lines_per_chunk):
        """Split into chunks of ``lines_per_chunk`` lines, each made whole.

        As the script does with split: a chunk that does not start with the
        text's first line gets it prepended; one that does not end with the
        text's last line loses its last trailing comma and gets it appended.
        """
        header, footer = self.edges()
        waiting = []
        newline = True
        for lines, newline in self.line_lists():
            waiting.extend(lines)
            while len(waiting) > lines_per_chunk:
                piece = waiting[:lines_per_chunk]
                del waiting[:lines_per_chunk]
                yield self._chunk(piece, header, footer, True)
            # Keep the last full chunk until the end is known: its newline may be missing.
        while waiting:
            piece = waiting[:lines_per_chunk]
            del waiting[:lines_per_chunk]
            yield self._chunk(piece, header, footer, newline or bool(waiting))

    _chunk = staticmethod(Chunk.of_lines)


def start_chunk(opts, survey, single):
    """-s NAME: the index of the chunk to start at (0 without -s).

    NAME is a chunk's split-file name as the messages print it (or its last
    path component).  An unknown name ends the run before any request.
    """
    if opts.start_chunk is None or not single and opts.chunk_lines is None:
        return 0
    if single:
        names = [opts.file]
    else:
        base = opts.file + ("-nodesign" if survey.designs else "")
        text_lines = survey.lines - len(survey.designs)
        names = ["%s.split%s" % (base, chunk_suffix(i)) for i in range(-(-text_lines // opts.chunk_lines))]
    for index, name in enumerate(names):
        if opts.start_chunk in (name, os.path.basename(name)):
            return index
    known = "%s to %s" % (names[0], names[-1]) if len(names) > 1 else (names[0] if names else "none")
    raise Failure(lines=["... ERROR: -s %s names no chunk of this restore (its chunks: %s). Nothing was sent to"
                         " the server." % (opts.start_chunk, known)])


class RevisionIndex:
    """Which (id, revision) pairs the dump holds, for --verify.

    Each document is kept as an 8-byte hash in a sorted array: 8 bytes a
    document, whatever the documents hold.  Design documents are PUT, which
    gives them a new revision, so they are checked by id only.
    """

    def __init__(self):
        self.keys = array("Q")
        self.design_ids = []
        self.found = None

    @staticmethod
    def key(doc_id, rev):
        import hashlib
        digest = hashlib.blake2b(("%s\0%s" % (doc_id, rev)).encode("utf-8", "surrogatepass"), digest_size=8)
        return int.from_bytes(digest.digest(), "little")

    def add(self, docs):
        key = self.key
        for doc in docs:
            doc_id = doc.get("_id")
            if is_design_id(doc_id):
                self.design_ids.append(doc_id)
            else:
                self.keys.append(key(doc_id, doc.get("_rev")))

    def seal(self):
        self.keys = array("Q", sorted(self.keys))
        self.found = bytearray(len(self.keys))

    def _position(self, doc_id, rev):
        """Where the pair stands in the sorted keys, or -1 when the dump lacks it."""
        key = self.key(doc_id, rev)
        index = bisect_left(self.keys, key)
        return index if index < len(self.keys) and self.keys[index] == key else -1

    def mark(self, doc_id, rev):
        index = self._position(doc_id, rev)
        if index >= 0:
            self.found[index] = 1

    def has(self, doc_id, rev):
        index = self._position(doc_id, rev)
        return index >= 0 and bool(self.found[index])

    def missing(self):
        return self.found.count(0)


def holds_no_document(requester, db_path):
    """Whether the database says it holds no document, not even a deleted one (one GET)."""
    info = requester.glance(db_path)
    return isinstance(info, dict) and info.get("doc_count") == 0 and info.get("doc_del_count", 0) == 0


def revs_diff(requester, db_path, asked, words, name=""):
    """Which (id, revision) pairs of ``asked`` ({id: [revisions]}) the database
    lacks: one ``_revs_diff`` POST.  An answer's entry of another shape counts
    as nothing missing there; an answer that is no JSON object is retried."""
    reply = requester.ask(Ask("POST", db_path + "/_revs_diff", words, body=json_bytes(asked), expect="object",
                              name=name))
    lacking = set()
    for doc_id, answer in reply.value.items():
        missing = answer.get("missing") if isinstance(answer, dict) else None
        if isinstance(missing, list):
            lacking.update((doc_id, rev) for rev in missing if isinstance(rev, str))
    return lacking


class BulkUpload:
    """Sends one _bulk_docs body: with --resume, only what the database lacks.

    With --resume, one ``_revs_diff`` POST first asks which documents the
    database lacks at the dump's revision (``missing``); only those are
    sent, and nothing when none is.  The requester sends the body (in
    halves, where the server finds it too large:
    ``Requester.send_documents``).
    """

    def __init__(self, requester, db_path, resume):
        self.requester = requester
        self.db_path = db_path
        self.resume = resume

    def send(self, part, ask):
        """Send ``part`` (a ``Chunk``, or the ``WholeText``) as ``ask`` says;
        returns ``(documents sent, the server's answers as one Reply)``."""
        return self.requester.send_documents(ask, part)

    def missing(self, part, name):
        """``(the part less the documents the database has at their revision,
        how many it has)``: one _revs_diff POST.  A part the database lacks
        whole is sent as it is, not rebuilt (a restore into an empty database)."""
        return self.answer(self.question(part), name)

    @staticmethod
    def question(part):
        """What ``answer`` asks the database about ``part``: reading the ids and
        revisions is work of its own, done while the server answers another part."""
        chunk = part.whole()
        docs = chunk_documents(chunk)
        revisions = document_revisions(docs)
        asked = {}
        for doc_id, rev in revisions:
            if doc_id is not None and rev is not None:
                asked.setdefault(doc_id, []).append(rev)
        return part, chunk, docs, revisions, asked

    def answer(self, question, name):
        """``missing`` of a part once its ``question`` is made."""
        part, chunk, docs, revisions, asked = question
        if not asked:
            return part, 0
        lacking = revs_diff(self.requester, self.db_path, asked, "compare chunk", name)
        kept = [doc for doc, (doc_id, rev) in zip(docs, revisions)
                if doc_id is None or rev is None or (doc_id, rev) in lacking]
        if len(kept) == len(docs):
            return part, 0
        return documents_chunk(chunk.lines[0], kept, chunk.lines[-1]), len(docs) - len(kept)


class WholeText:
    """The text as one _bulk_docs body, streamed from the file: a ``Chunk`` is
    made of it, in memory, only when it must be filtered or cut."""

    def __init__(self, text, documents):
        self.text = text
        self.documents = documents
        self.stream = (text.size(), text.blocks)

    def whole(self):
        return self.text.as_chunk()


class ChunkUpload:
    """The text in chunks of -l lines, each made a complete _bulk_docs body.

    With --jobs N, up to N chunks are on their way at once (after every
    design document); results are still taken in chunk order.  When a chunk
    fails, the ones already on their way are waited for and counted before
    the run ends, so the count told is what the server holds.
    """

    def __init__(self, run):
        self.run = run
        self.path = run.db_path + "/_bulk_docs"
        self.bulk = BulkUpload(run.requester, run.db_path, run.opts.resume and run.compare)
        self.start = run.plan.start   # -s: the chunks before it are not sent
        self.done = self.start        # the chunks before this one are written (or skipped), in order

    def send(self, text, text_name):
        opts, out = self.run.opts, self.run.out
        out.info("... INFO: Block import set to %s lines." % opts.lines)
        out.script_steps("split")
        self.run.plan.refuse()
        on_their_way = []
        abandoned = False
        from concurrent.futures import ThreadPoolExecutor
        pool = ThreadPoolExecutor(max_workers=opts.jobs)
        try:
            # Each chunk is built while the ones before it are on their way;
            # its lines are printed once fewer than --jobs are: with one job,
            # in the script's order, one request after the other.
            # With --resume, the next chunk is read and its question made while
            # the server answers the _revs_diff of this one (asked in the pool:
            # after the chunks before it are collected, as one request at a time).
            chunks = ((index, chunk) for index, chunk in enumerate(text.chunks(opts.chunk_lines))
                      if index >= self.start)
            ahead = next(chunks, None)
            question = self.bulk.question(ahead[1]) if ahead is not None and self.bulk.resume else None
            while ahead is not None:
                index, chunk = ahead
                while sum(future is not None for _, _, _, future in on_their_way) >= opts.jobs:
                    self._collect(*on_their_way.pop(0))
                self.run.requester.check_stop()
                name = "%s.split%s" % (text_name, chunk_suffix(index))
                asking = pool.submit(self.bulk.answer, question, name) if self.bulk.resume else None
                ahead = next(chunks, None)
                if asking is not None:
                    question = self.bulk.question(ahead[1]) if ahead is not None else None
                    chunk = self._counted(*asking.result(), name)
                if chunk is not None:
                    self._announce(chunk, name)
                future = pool.submit(self._post_chunk, name, chunk) if chunk is not None else None
                on_their_way.append((index, name, chunk, future))
            while on_their_way:
                self._collect(*on_their_way.pop(0))
        except Failure as failure:
            failure.tell(out)   # before what the chunks on their way say
            # Chunks are taken in order: the first not written is where -s resumes.
            counts = self.run.counts
            counts.resume_at = counts.failed_chunk or "%s.split%s" % (text_name, chunk_suffix(self.done))
            for _, name, chunk, future in on_their_way:
                try:
                    if future is not None:
                        self._chunk_done(chunk, future.result())
                except Failure as also:
                    also.tell(out)
            raise
        except Interrupted:
            # Stopped at once: what is on its way is abandoned, not waited for.
            abandoned = True
            counts = self.run.counts
            counts.resume_at = counts.failed_chunk or "%s.split%s" % (text_name, chunk_suffix(self.done))
            raise
        finally:
            pool.shutdown(wait=not abandoned)
        out.line("... INFO: Import Cycle Completed.")

    def send_whole(self, text, documents):
        """Fewer lines than -l: one _bulk_docs of the whole text."""
        opts, out, counts = self.run.opts, self.run.out, self.run.counts
        whole = WholeText(text, documents)
        part = self._compared(whole, opts.file)
        if part is None:
            return
        documents, reply = self.bulk.send(part, Ask("POST", self.path, "whole file", expect="list", name=opts.file))
        counts.chunks_written = 1
        counts.bytes_sent += whole.stream[0]
        refused = report_refusals(out, reply)
        counts.refused += refused
        counts.documents_written += documents - refused
        if not counts.refused:
            out.info("... INFO: Imported %s Successfully." % opts.file)

    def _compared(self, chunk, name):
        """--resume: the chunk less what the database holds already, or None when it holds all of it."""
        if not self.bulk.resume:
            return chunk
        return self._counted(*self.bulk.missing(chunk, name), name)

    def _counted(self, chunk, skipped, name):
        """What ``BulkUpload.missing`` left of a chunk, counted: None when nothing is left."""
        self.run.counts.skipped += skipped
        if chunk.documents:
            return chunk
        if skipped:
            self.run.out.info("... INFO: %s: its %d documents are in the database already - skipped" % (name, skipped))
        return None

    def _announce(self, chunk, name):
        """The script's lines as it splits the text and sends a chunk."""
        out = self.run.out
        out.info("... INFO: %s %s" % ("Header already applied to" if chunk.had_header else "Adding header to", name))
        out.info("... INFO: %s %s" % ("Footer already applied to" if chunk.had_footer else "Adding footer to", name))
        out.info("... INFO: Inserting %s" % name)

    def _collect(self, index, name, chunk, future):
        if future is not None:
            try:
                reply = future.result()
            except Stopped:
                raise
            except Failure:
                self.run.counts.failed_chunk = name
                raise
            self._chunk_done(chunk, reply)
        self.done = index + 1

    def _post_chunk(self, name, chunk):
        return self.bulk.send(chunk, Ask("POST", self.path, "chunk", expect="list", name=name))

    def _chunk_done(self, chunk, result):
        counts = self.run.counts
        documents, reply = result
        counts.chunks_written += 1
        counts.bytes_sent += chunk.size
        refused = report_refusals(self.run.out, reply)
        counts.refused += refused
        counts.documents_written += documents - refused
        if not refused:
            self.run.out.info("... INFO: Successfully Imported %d Files" % counts.chunks_written)
        self.run.progress.update(counts.documents_written, counts.bytes_sent, counts.total_documents)


class CompleteRestore:
    """What a restore does more for a complete backup (``--complete``).

    Every line, design documents included, goes to ``_bulk_docs`` with
    ``new_edits:false``, so every revision is kept exactly: the script PUTs
    design documents, which gives them a new revision and cannot write a
    conflict or a deletion.  ``_security`` is PUT once the database is
    ready, unless --no-security; an empty one is not (on CouchDB 3 it would
    open a new database, admin-only by default, to everyone).  --verify
    asks ``_revs_diff`` about every leaf and compares ``_security``.
    """

    BATCH = 500   # revisions a _revs_diff request

    def __init__(self, run, survey):
        self.run = run
        run.counts.complete = True
        self.security = survey.security
        survey.keep_designs_in_text()
        self.designs = len(survey.bulk_designs)

    def tell_increment(self, since):
        """An incremental backup adds to its base: said before anything is sent."""
        if since is None:
            return
        self.run.counts.since = since
        self.run.out.detail("couchdb_dump: %s holds the changes since %s only; restore its base first"
                            % (self.run.opts.file, json_bytes(since).decode("utf-8")))

    def announce(self):
        self.run.out.info("... INFO: Complete backup: every revision goes to _bulk_docs as it is,"
                      " %d design documents included." % self.designs)
        self.run.counts.design_documents = self.designs

    def put_security(self, before_change):
        opts, out = self.run.opts, self.run.out
        if opts.no_security or not self.security:
            why = "--no-security" if opts.no_security else "the dump's is empty" if self.security == {} \
                else "the dump carries none"
            out.info("... INFO: The _security object of %s is left as it is (%s)." % (opts.db, why))
            self.security = None
            return
        before_change()
        out.info("... INFO: Restoring the _security object of %s" % opts.db)
        self.run.requester.ask(Ask("PUT", self.run.db_path + "/_security", "restore _security", body=json_bytes(self.security),
                               db=opts.db))

    def verify(self, dump):
        """--verify: every leaf of the dump is known to the database, and its
        _security is the dump's.  Returns None, or the summary for --json."""
        opts, out = self.run.opts, self.run.out
        out.info("... INFO: Verifying %s against %s (every revision, by _revs_diff)" % (opts.db, opts.file))
        missing, total, batch = [], 0, {}
        for line in dump.lines():
            doc_id, rev = document_revision(line)   # none for the header, the footer, a blank line
            if doc_id is not None and rev is not None:
                batch.setdefault(doc_id, []).append(rev)
                total += 1
                if total % self.BATCH == 0:
                    missing += self._revs_diff(batch)
                    batch = {}
        missing += self._revs_diff(batch)
        security = None
        if self.security is not None:
            security = self.run.requester.ask(Ask("GET", self.run.db_path + "/_security", "verify _security", expect="object",
                                              db=opts.db)).value
        if not missing and security == self.security:
            out.info("... INFO: Verified: all %d revisions of the dump are in %s%s." % (
                total, opts.db, ", and its _security object" if self.security is not None else ""))
            return None
        problems = []
        if missing:
            problems.append("Verify: %d of %d revisions of the dump are missing from %s"
                            % (len(missing), total, opts.db))
            out.line("... ERROR: %s:" % problems[-1])
            for doc_id, rev in missing:
                out.line("... ERROR:   missing: %s at revision %s" % (json.dumps(doc_id, ensure_ascii=False), rev))
        if security != self.security:
            problems.append("Verify: the _security object of %s is not the dump's" % opts.db)
            out.line("... ERROR: %s: %s" % (problems[-1], json_bytes(security).decode("utf-8")))
        return "; ".join(problems)

    def _revs_diff(self, batch):
        """The (id, revision) pairs of ``batch`` the database does not know, in the batch's order."""
        if not batch:
            return []
        lacking = revs_diff(self.run.requester, self.run.db_path, batch, "verify revisions")
        return [(doc_id, rev) for doc_id, revs in batch.items() for rev in revs if (doc_id, rev) in lacking]


def verify_restore(requester, out, opts, path, dump, index):
    """--verify: every document of the dump is in the database, same revision.

    Reads the database's ``_all_docs`` once and marks what it finds in
    ``index``; then names each document missing or at another revision
    (the dump is read again to name them).  Returns None when none is, else
    the summary (``2 of 8 documents ... missing``) for --json's error.
    """
    out.info("... INFO: Verifying %s against %s" % (opts.db, opts.file))
    try:
        response = requester.open(path + "/_all_docs")
        if not 200 <= response.status < 300:
            raise Failure(answered(response.status, response.read()))
        scanner = JsonRowScanner(documents=False)
        present_designs = set()
        wanted_designs = set(index.design_ids)

        def take(row):
            value = row.get("value") or {}
            if row.get("id") in wanted_designs:
                present_designs.add(row["id"])
            else:
                index.mark(row.get("id"), value.get("rev"))
        for block in read_blocks(response):
            for row in scanner.feed(block):
                take(row)
        for row in scanner.finish():
            take(row)
        response.release_conn()
    except Exception as error:
        # Our own errors say what went wrong; any other is named by its type only.
        why = error if isinstance(error, Failure) else _describe(error)
        raise Failure(lines=["... ERROR: Verify failed: could not read the documents of %s (%s)" % (opts.db, why)])
    missing = index.missing() + len(wanted_designs - present_designs)
    total = len(index.keys) + len(wanted_designs)
    if not missing:
        out.info("... INFO: Verified: all %d documents of the dump are in %s with their revisions"
                 " (%d design documents by id)." % (total, opts.db, len(wanted_designs)))
        return None
    summary = "Verify: %d of %d documents of the dump are missing from %s or at another revision" % (
        missing, total, opts.db)
    out.line("... ERROR: %s:" % summary)
    for doc_id in sorted(wanted_designs - present_designs):
        out.line("... ERROR:   missing: %s" % json.dumps(doc_id, ensure_ascii=False))
    for line in dump.lines():
        doc_id, rev = document_revision(line)
        if doc_id is None or is_design_id(doc_id):
            continue
        if not index.has(doc_id, rev):
            out.line("... ERROR:   missing: %s at revision %s" % (json.dumps(doc_id, ensure_ascii=False), rev))
    return summary


def report_incomplete(requester, out, opts, path, counts):
    """After a restore that stopped part way: what this run wrote, and what the database holds.

    Documents written counts what the server confirmed in this run; a chunk
    whose answer was lost may be stored all the same, and the database may
    have held documents before.  So the database is asked for its doc_count
    (design documents included), when the run may send requests the
    script never sends (``opts.extended``): a run with the script's
    options sends the script's requests only.
    """
    where = " at %s" % counts.failed_chunk if counts.failed_chunk is not None else ""
    text = "couchdb_dump: the restore stopped%s: this run wrote %d of the dump's %d documents" % (
        where, counts.documents_written, counts.total_documents)
    info = requester.glance(path) if opts.extended else None
    held = info.get("doc_count") if isinstance(info, dict) else None
    held = held if type(held) is int else None
    if held is not None:
        text += "; the database holds %d documents now (its doc_count, with any it held before)" % held
    elif opts.extended:
        text += "; the database did not say how many documents it holds now"
    else:
        text += "; the database may hold more (a chunk whose answer was lost can be stored all the same)"
    out.detail(text)


def tell_resume(out, opts, counts, always=False):
    """A restore that stopped in its chunks ends with the -s value that resumes it.

    On standard output, as the last ERROR line, only when the command line
    already goes beyond the script's options (``opts.extended``): a run
    with the script's own options keeps the script's standard output to
    the letter, and is told on standard error instead.  ``--json`` keeps
    the cause of the failure as its ``error``, and gets the -s value as
    ``resume``.  With ``always`` (a run stopped at once) it is said even
    before the first chunk: then --resume goes on.
    """
    if counts.resume_at is None and not always:
        return
    text = ("To resume this restore, run it again with -s %s (or with --resume)." % counts.resume_at
            if counts.resume_at is not None else "To resume this restore, run it again with --resume.")
    if not opts.extended:
        out.detail("couchdb_dump: " + text)
        return
    cause = out.last_error
    out.line("... ERROR: " + text)
    out.last_error = cause


class Restore:
    """Restore mode: the requests couchdb-dump.sh sends, in the same order.

    Its stages, in the order they run: the file (``open_dump``), its check
    (``check_dump``, a ``DumpSurvey``: nothing is sent for a broken dump),
    the target database (``TargetDatabase``), the design documents
    (``DesignDocuments``), the chunks (``ChunkUpload``), then --verify
    (``verify_restore``, or ``CompleteRestore`` for a complete backup).
    They share one ``RestoreRun``; every request goes through its
    ``Requester``: -a attempts, 1 s apart, as the script does.
    """

    def __init__(self, opts, session, out, progress=None, stop=None):
        self.stop = stop or Stop()
        requester = Requester(session, out, opts, self.stop, opts.delay)
        self.context = RestoreRun(opts, out, requester, progress or Progress(False))
        self.complete = None     # a CompleteRestore, for a complete backup

    @property
    def summary(self):
        """The --json summary of the run so far."""
        return self.context.counts.summary()

    def run(self):
        run = self.context
        opts, out, counts = run.opts, run.out, run.counts
        dump = open_dump(run)
        if opts.recreate and opts.db in SYSTEM_DATABASES and not opts.force:
            raise Failure(lines=["... ERROR: Refusing to recreate the system database %s - add --force to do it anyway"
                                 % opts.db])
        index = RevisionIndex() if opts.verify else None
        survey = check_dump(run, dump, index)
        counts.total_documents = survey.documents
        counts.file_bytes = dump.size
        if survey.complete:
            self.complete = CompleteRestore(run, survey)
            self.complete.tell_increment(survey.since)
        run.plan = RestorePlan(opts, survey)
        out.info("... INFO: Checking for database")
        TargetDatabase(run).prepare(run.plan.refuse)
        if self.complete is not None:
            self.complete.put_security(run.plan.refuse)
        self.stop.graceful = True
        self.stop.announce = self.stopping
        try:
            self.restore_documents(dump, survey)
        except Interrupted as signalled:
            self.stopped_at_once(signalled.signum)
        except Stopped as stopped:
            run.progress.finish()
            stopped = Stopped(stopped.signum, lines=[
                "... ERROR: Stopped by %s: %d of %d documents were written (%d chunks); the restore is incomplete."
                % (signal_name(stopped.signum), counts.documents_written, counts.total_documents,
                   counts.chunks_written)])
            stopped.tell(out)
            report_incomplete(run.requester, out, opts, run.db_path, counts)
            tell_resume(out, opts, counts)
            raise stopped
        except Failure as failure:
            failure.tell(out)
            run.progress.finish()
            if not run.plan.fails:
                report_incomplete(run.requester, out, opts, run.db_path, counts)
            tell_resume(out, opts, counts)
            raise
        finally:
            self.stop.graceful = False
            self.stop.announce = None
            run.progress.finish()
        self.verdict(dump, index)

    def stopping(self, signum):
        """The first signal, said at once: the requests on their way are still waited for."""
        self.context.out.line("... WARN: %s: stopping after the requests in flight (%s again stops at once)."
                              % (signal_name(signum), signal_name(signum)))

    def stopped_at_once(self, signum):
        """A second signal: the requests in flight are abandoned and nothing more is asked;
        what was written and how to go on are said, and the run ends."""
        run = self.context
        counts = run.counts
        run.progress.finish()
        stopped = Stopped(signum, lines=[
            "... ERROR: Stopped at once by %s: %d of %d documents were written (%d chunks); the restore is incomplete"
            " (a request abandoned on its way may be stored all the same)."
            % (signal_name(signum), counts.documents_written, counts.total_documents, counts.chunks_written)])
        stopped.tell(run.out)
        tell_resume(run.out, run.opts, counts, always=True)
        raise stopped

    def verdict(self, dump, index):
        """After the upload: refused documents and --verify end the run as failed."""
        run = self.context
        opts, out, counts = run.opts, run.out, run.counts
        problems = []
        if counts.refused:
            out.line("... ERROR: %d documents were refused by the server: the restore is incomplete." % counts.refused)
            problems.append(out.last_error)
        if index is not None and self.stop.requested:
            # The signal came during the last request: every chunk went, but
            # the user asked to stop, so --verify (more requests) is not run.
            raise Stopped(self.stop.requested, lines=[
                "... ERROR: Stopped by %s after the last chunk: %d of %d documents were written; --verify was not run."
                % (signal_name(self.stop.requested), counts.documents_written, counts.total_documents)])
        if index is not None:
            # Refused or not, --verify says what the database holds.
            problems.append(self.complete.verify(dump) if self.complete is not None
                            else verify_restore(run.requester, out, opts, run.db_path, dump, index))
        if any(problems):
            raise Failure(summary="; ".join(problem for problem in problems if problem))

    def restore_documents(self, dump, survey):
        run = self.context
        opts, out = run.opts, run.out
        text_name = opts.file
        fix_line = None
        if run.compare and holds_no_document(run.requester, run.db_path):
            # Nothing to compare with: every document is missing, the dump goes as it is.
            out.info("... INFO: %s holds no document yet: the dump is sent without comparing" % opts.db)
            run.compare = False
        out.info("... INFO: Checking for Design documents")
        if self.complete is not None:
            self.complete.announce()
        elif not survey.designs:
            out.info("... INFO: No Design Documents found for import.")
        else:
            out.script_steps("strip_designs")
            text_name = opts.file + "-nodesign"
            fix_line = run.plan.text_newlines - 1  # sed "${line}s/,$//", counted from 1
            out.info("... INFO: Inserting Design documents")
            run.plan.refuse()
            DesignDocuments(run).put_all(dump, survey)
            out.info("... INFO: Successfully imported %d Design Documents" % run.counts.design_documents)
        footer = None if survey.lines - 1 in survey.design_lines else strip_newline(survey.last)
        text = RestoreText(dump, survey.design_lines, fix_line, survey.first, footer)
        if run.plan.single:
            out.info("... INFO: Small dataset. Importing as a single file.")
            ChunkUpload(run).send_whole(text, survey.documents - len(survey.designs))
        else:
            ChunkUpload(run).send(text, text_name)
        if opts.resume:
            out.info("... INFO: --resume: %d documents sent, %d skipped (in the database already at the dump's"
                     " revision)." % (run.counts.documents_written, run.counts.skipped))


# ===========================================================================
# 8. Main
# ===========================================================================
# The command line in, an exit code out: one database, or every one a pattern matches.


# A dump file of a whole-server folder: the database's name, "/" written %2F.
DUMP_FILE = re.compile(r"\A(_?[a-z](?:[a-z0-9_$()+-]|%2F)*)\.json(\.gz)?\Z")


def dump_file_name(db):
    """The file of database ``db`` in a whole-server folder (before -z's .gz)."""
    return db.replace("/", "%2F") + ".json"


def folder_dumps(folder):
    """The dump files of a whole-server folder, ``{database: file name}``,
    and the first entry that cannot be read as one (None when none)."""
    found = {}
    for entry in sorted(os.listdir(folder)):
        match = DUMP_FILE.match(entry)
        if match is None or not os.path.isfile(os.path.join(folder, entry)):
            return found, "%s is not a database's dump file (<name>.json or <name>.json.gz, / written %%2F)" % entry
        db = match.group(1).replace("%2F", "/")
        if db in found:
            return found, "%s and %s are two dumps of the database %s" % (found[db], entry, db)
        found[db] = entry
    return found, None


class DatabaseRun:
    """One database of a whole-server run: its own options, lines and stop.

    Runs the backup or restore a command line for that database alone
    would, in a thread of the ``ServerRun``; ``result`` is then its --json
    object (what a single run prints), ``error`` why it failed.
    """

    def __init__(self, server, db, path):
        opts = copy.copy(server.opts)
        opts.db, opts.file = db, path
        opts.pattern, opts.exclude = False, []
        opts.server_run = opts.extended = True
        opts.timestamp = False       # -T stamps the folder
        opts.json = True             # count the design documents for the line and --json
        opts.jobs = 1                # --jobs is the databases at once
        opts.thread_count = 1        # no worker processes forked from threads
        self.opts = opts
        self.db = db
        self.stop = Stop()           # not installed: ``ServerRun`` notes the signal here
        if server.bases is not None:   # --since FOLDER: its own file there, else a full complete backup
            base = server.bases.get(db)
            opts.since = None if base is None else os.path.join(server.opts.since, base)
        self.out = DatabaseMessages(db, server.progress)
        self.session = server.session
        self.result = None
        self.error = None

    def __call__(self, done):
        started = time.monotonic()
        job = None
        try:
            if self.opts.backup:
                job = Backup(self.opts, self.session, self.out, stop=self.stop)
            else:
                job = Restore(self.opts, self.session, self.out, stop=self.stop)
            job.run()
            code = 0
        except Failure as failure:
            failure.tell(self.out)
            code = failure.code
        except BaseException as error:   # a bug of ours: this database fails, the others go on
            import traceback
            self.out.line("... ERROR: Unexpected failure (%s); please report it." % _describe(error))
            traceback.print_exc(file=sys.stderr)
            code = 1
        result = {"ok": code == 0}
        result.update(job.summary if job is not None else {"mode": "backup" if self.opts.backup else "restore",
                                                           "db": self.db, "file": self.opts.file})
        result["seconds"] = round(time.monotonic() - started, 3)
        if code:
            self.error = self.out.error_text() or "exit code %d" % code
            result.update({"error": self.error, "exit_code": code})
        self.result = result
        done.put(self)


class ServerRun:
    """-d PATTERN: every database the pattern matches, each in a file of its own.

    Backup: the server's databases (``DatabaseList``, read in pages), each
    to ``DIR/<name>.json`` (``/`` written ``%2F``; ``.json.gz`` with -z;
    ``DIR/<stamp>/`` with -T), the very file a run for that database alone
    writes, whole or absent.  Restore: the folder's dump files, every one
    checked by its name before any request.  Up to --jobs databases at
    once (``DatabaseRun``), sharing the session's connections; one line a
    database as it ends, then a summary.  A database that fails does not
    stop the others; the exit code is 0 only when every one succeeded.
    --since FOLDER: each database's increment from its own file there, a
    full complete backup where it has none.  A signal stops them all: a backup at its next block (its temporary file
    removed), a restore after the request on its way.
    """

    def __init__(self, opts, session, out, progress, stop):
        self.opts = opts
        self.session = session
        self.out = out
        self.progress = progress
        self.stop = stop
        self.folder = opts.file
        self.bases = None      # --since FOLDER: {database: its file there}
        self.results = []
        self.failed = []
        self.total = 0

    @property
    def summary(self):
        """The --json object: each database's own, and the totals."""
        results = self.results
        return {"mode": "backup" if self.opts.backup else "restore", "db": self.opts.db, "file": self.folder,
                "databases": results, "documents": sum(r.get("documents", 0) for r in results),
                "design_documents": sum(r.get("design_documents", 0) for r in results),
                "bytes": sum(r.get("bytes", 0) for r in results)}

    def run(self):
        started = time.monotonic()
        work = self.backups() if self.opts.backup else self.restores()
        self.total = len(work)
        self.progress.update(0, 0, self.total, force=True)
        self.run_all(work)
        self.progress.finish()
        self.tell_end(time.monotonic() - started)

    def no_match(self, where):
        opts = self.opts
        excluded = " (with --exclude %s)" % ", ".join(opts.exclude) if opts.exclude else ""
        return Failure(lines=["... ERROR: No database %s matches -d %s%s." % (where, opts.db, excluded)])

    def backups(self):
        """(database, file) of each database to back up; the folder made ready."""
        opts = self.opts
        if opts.timestamp:
            self.folder = os.path.join(self.folder, time.strftime("%Y%m%d-%H%M%S"))
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise Failure(lines=["... ERROR: %s is not a folder: -d PATTERN writes one file a database into a"
                                 " folder." % self.folder])
        if opts.since is not None:
            self.bases = self.earlier_backups(opts.since)
        requester = Requester(self.session, self.out, opts, self.stop)
        names = matching_databases(DatabaseList(requester).names(), opts.db, opts.exclude)
        if not names:
            raise self.no_match("of the server")
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as error:
            raise Failure(lines=["... ERROR: Cannot make the folder %s: %s." % (self.folder, error.strerror)])
        return [(name, os.path.join(self.folder, dump_file_name(name))) for name in names]

    @staticmethod
    def earlier_backups(folder):
        """--since FOLDER: the dump file of each database there, checked before any request."""
        if not os.path.isdir(folder):
            raise Failure(lines=["... ERROR: --since with -d PATTERN names the folder of an earlier backup;"
                                 " %s is no folder." % folder])
        files, problem = folder_dumps(folder)
        if problem:
            raise Failure(lines=["... ERROR: In %s: %s. Nothing was sent to the server." % (folder, problem)])
        return files

    def restores(self):
        """(database, file) of each dump of the folder to restore, checked before any request."""
        opts = self.opts
        if not os.path.isdir(self.folder):
            raise Failure(lines=["... ERROR: Input folder %s not found." % self.folder])
        files, problem = folder_dumps(self.folder)
        if problem:
            raise Failure(lines=["... ERROR: In %s: %s. Nothing was sent to the server." % (self.folder, problem)])
        names = matching_databases(files, opts.db, opts.exclude)
        if not names:
            raise self.no_match("dump in %s" % self.folder)
        return [(name, os.path.join(self.folder, files[name])) for name in names]

    def run_all(self, work):
        """Up to --jobs databases at once, in daemon threads (a hung one cannot hold the exit)."""
        pending = collections.deque(work)
        running = set()
        done = queue.Queue()
        self.stop.graceful = True   # a signal is noted, and handed to every database
        try:
            while pending or running:
                while pending and len(running) < self.opts.jobs and not self.stop.requested:
                    run = DatabaseRun(self, *pending.popleft())
                    running.add(run)
                    threading.Thread(target=run, args=(done,), daemon=True).start()
                if self.stop.requested:
                    pending.clear()
                    for run in running:
                        run.stop.requested = self.stop.requested
                try:
                    run = done.get(timeout=0.1)
                except queue.Empty:
                    continue
                running.discard(run)
                self.tell(run)
        except (Interrupted, KeyboardInterrupt):
            # A second signal: stop at once, but give each database a moment to remove its file.
            for run in running:
                run.stop.requested = self.stop.requested or signal.SIGINT
            deadline = time.monotonic() + 5
            while running and time.monotonic() < deadline:
                try:
                    running.discard(done.get(timeout=0.1))
                except queue.Empty:
                    pass
            raise
        finally:
            self.stop.graceful = False

    def tell(self, run):
        """The line of a database that ended; the progress."""
        result = run.result
        self.results.append(result)
        if result["ok"]:
            self.out.info("... INFO: %s %s: %d documents, %.2f MB in %.2f s%s" % (
                "Backed up" if self.opts.backup else "Restored", run.db, result.get("documents", 0),
                result.get("bytes", 0) / 1e6, result["seconds"], self.kind(run)))
        else:
            self.failed.append(run.db)
            self.out.line("... ERROR: %s of %s failed%s: %s" % ("Backup" if self.opts.backup else "Restore",
                                                                run.db, self.kind(run), run.error))
        self.progress.update(len(self.results), self.summary["bytes"], self.total)

    def kind(self, run):
        """With --since FOLDER, which backup a database's line is about."""
        if self.bases is None:
            return ""
        if run.opts.since is None:
            return " (full, no earlier backup in %s)" % self.opts.since
        if "since" in run.result:
            return " (increment since %s)" % json_bytes(run.result["since"]).decode("utf-8")
        return " (increment of %s)" % run.opts.since

    def tell_end(self, seconds):
        """The summary line; a ``Failure`` unless every database succeeded."""
        done = len(self.results) - len(self.failed)
        verb = "backed up" if self.opts.backup else "restored"
        if self.stop.requested:
            rest = "no file of the others is left" if self.opts.backup else "the others are not, or not wholly"
            raise Stopped(self.stop.requested, lines=["... ERROR: Interrupted by %s: %d of %d databases were %s; %s."
                                                      % (signal_name(self.stop.requested), done, self.total, verb,
                                                         rest)])
        summary = self.summary
        if self.failed:
            shown = ", ".join(self.failed[:20]) + (" and %d more" % (len(self.failed) - 20)
                                                   if len(self.failed) > 20 else "")
            raise Failure(lines=["... ERROR: %d of %d databases failed: %s; %d %s." % (
                len(self.failed), self.total, shown, done, verb)])
        self.out.info("... INFO: %d databases %s (%s): %d documents, %.2f MB in %.1f s." % (
            self.total, verb, self.folder, summary["documents"], summary["bytes"] / 1e6, seconds))


def tune_memory():
    """Keep freed blocks for reuse instead of mapping fresh pages for each.

    glibc hands megabyte blocks back to the kernel as soon as they are
    freed, so every new block costs a page fault per 4 KB: a third of a
    large backup's time went there.  Setting fixed thresholds keeps them in
    the heap; memory stays bounded by the blocks in use.  A long line's
    memory is still given back: anything from 8 MB on is mapped on its
    own, and more than 8 MB free at the heap's top (the reads a long line
    was gathered from) is returned.  Elsewhere a no-op.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 8 << 20)
    mallopt(m_trim_threshold, 8 << 20)


def run_summary(job, opts):
    """What --json says of the run besides its outcome: the job's own summary, or the command line's."""
    summary = dict(job.summary) if job is not None else {}
    if not summary and opts is not None:
        summary = {"mode": "backup" if opts.backup else "restore", "db": opts.db, "file": opts.file}
    return summary


def print_json_line(out, json_stream, report):
    """--json's object, alone on the last line of its stream."""
    line = json.dumps(report, ensure_ascii=False).encode("utf-8") + b"\n"
    target = json_stream or out.stream
    if target is out.stream and out.line_open:
        line = b"\n" + line   # the last line is the JSON object, alone
    try:
        target.write(line)
        target.flush()
    except OSError:
        out.lost = True
    except ValueError:
        pass


def main(argv=None, environ=None, stdout=None):
    """Run the command line; returns the exit code.

    ``stdout`` is a binary stream for the messages (standard output when
    None).  SIGINT and SIGTERM are taken as ``Stop`` says while it runs.
    """
    prog = program_name()
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    out = Messages(stdout)
    # Known before parsing, so that a refused command line gets its JSON too.
    want_json = any(arg == "--json" or arg.startswith("--json=") for arg in argv)
    json_stream = None
    started = time.monotonic()
    job = opts = cause = None
    stop = Stop()
    stop.install()
    TEMPORARY_FILES.open()
    try:
        opts = parse_options(argv, environ, out, prog)
        require_urllib3(out)
        if opts.backup and opts.file == "-" and stdout is None:
            # The dump owns standard output: every message goes to stderr.
            out.stream = sys.stderr.buffer
            json_stream = sys.stderr.buffer
        progress = (DatabasesProgress if opts.pattern else Progress)(
            opts.progress and not opts.quiet, what="written" if opts.backup else "sent")
        out.progress = progress
        tune_memory()
        session = CouchSession(opts.url, opts.user, opts.password, opts.timeout, environ,
                               cacert=opts.cacert, cert=opts.cert, key=opts.key, notice=out.detail)
        if opts.pattern:
            job = ServerRun(opts, session, out, progress, stop)
        elif opts.backup:
            job = Backup(opts, session, out, progress)
        else:
            job = Restore(opts, session, out, progress, stop)
        job.run()
        code = 0
    except Failure as failure:
        failure.tell(out)
        code, cause = failure.code, failure.cause
    except (Interrupted, KeyboardInterrupt) as signalled:
        if not isinstance(signalled, Interrupted):
            signalled = Interrupted(signal.SIGINT)
        if opts is not None and opts.pattern:
            what = "the databases still running were stopped"
        else:
            what = "no backup was written" if opts is not None and opts.backup else "the run is incomplete"
        out.line("... ERROR: Interrupted by %s: %s." % (signal_name(signalled.signum), what))
        code = signalled.code
    except Exception as error:  # a bug of ours: say so without any secret
        import traceback
        out.line("... ERROR: Unexpected failure (%s); please report it." % _describe(error))
        traceback.print_exc(file=sys.stderr)
        code = 1
    finally:
        stop.hold()
        TEMPORARY_FILES.sweep()   # whatever a thread still does, no temporary file outlives the run
        stop.uninstall()
    if want_json:
        report = {"ok": code == 0}
        report.update(run_summary(job, opts))
        report["seconds"] = round(time.monotonic() - started, 3)
        if code != 0:
            report["error"] = out.error_text(cause) or "exit code %d" % code
            report["exit_code"] = code
        print_json_line(out, json_stream, report)
    if out.lost:
        let_go(out.stream)
    return code


def main_entry():
    """The ``couchdb-dump`` console script."""
    code = main()
    # (Python 3.8's pool threads are daemons, yet joined at exit all the same.)
    if code > 128 and any(thread.is_alive() for thread in threading.enumerate()
                          if thread is not threading.main_thread()):
        # Stopped at once: requests still on their way are abandoned, not waited for at exit.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main_entry()
