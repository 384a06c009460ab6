"""The shape of couchdb_dump.py that keeps it easy to change: guards that fail when it drifts."""

import ast
import re

import couchdb_dump as cd
from helpers import REPO

SOURCE = (REPO / "couchdb_dump.py").read_text(encoding="utf-8")
TREE = ast.parse(SOURCE)
CLASS_LIMIT = 250
FUNCTION_LIMIT = 80
# The conductors run a whole mode: they may call on anything in the file.
CONDUCTORS = ("Backup", "Restore")


def _length(node):
    return node.end_lineno - node.lineno + 1


def _class(name):
    return next(node for node in TREE.body if isinstance(node, ast.ClassDef) and node.name == name)


def _inside(node, outer):
    return outer.lineno <= node.lineno <= outer.end_lineno


def _banners():
    """``(line, number, title)`` of each chapter banner, in the file's order."""
    return [(index + 1, int(match.group(1)), match.group(2).strip().lower())
            for index, line in enumerate(SOURCE.splitlines())
            for match in [re.match(r"# (\d+)\. (.+)$", line)] if match]


def test_no_class_is_over_250_lines():
    # A new capability goes into classes and functions of its own that a conductor calls.
    long = {node.name: _length(node) for node in ast.walk(TREE)
            if isinstance(node, ast.ClassDef) and _length(node) > CLASS_LIMIT}
    assert long == {}


def test_no_function_is_over_80_lines():
    long = {node.name: _length(node) for node in ast.walk(TREE)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _length(node) > FUNCTION_LIMIT}
    assert long == {}


def test_every_exception_the_module_defines_is_a_failure_or_interrupted():
    # Only main turns a Failure into an exit code: an error of another root would escape it.
    defined = [value for value in vars(cd).values()
               if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == cd.__name__]
    assert cd.Failure in defined and cd.Interrupted in defined
    assert [error.__name__ for error in defined
            if not issubclass(error, cd.Failure) and error is not cd.Interrupted] == []


def test_only_the_requester_sleeps():
    requester = _class("Requester")
    sleeping = [node.lineno for node in ast.walk(TREE)
                if (isinstance(node, ast.Attribute) and node.attr == "sleep"
                    or isinstance(node, ast.alias) and node.name == "sleep")
                and not (hasattr(node, "lineno") and _inside(node, requester))]
    assert sleeping == []


def test_only_the_requester_loops_over_attempts_or_waits_out_the_server():
    # What marks a loop that asks again: the -a count, the pause between
    # attempts, or a wait for a server that pushes back.
    marks = {"attempts", "attempts_text", "PAUSE", "pause", "BackPressure", "delay"}
    requester = _class("Requester")
    loops = [node for node in ast.walk(TREE) if isinstance(node, (ast.While, ast.For)) and not _inside(node, requester)]
    asking_again = sorted({loop.lineno for loop in loops for node in ast.walk(loop)
                           if isinstance(node, ast.Attribute) and node.attr in marks
                           or isinstance(node, ast.Name) and node.id in marks})
    assert asking_again == []


def test_the_attempt_lines_come_from_one_table():
    table = next(node for node in TREE.body if isinstance(node, ast.Assign)
                 and any(getattr(target, "id", None) == "ATTEMPT_WORDS" for target in node.targets))
    attempt = next(node for node in TREE.body if isinstance(node, ast.Assign)
                   and any(getattr(target, "id", None) == "ATTEMPT" for target in node.targets))
    elsewhere = [node.lineno for node in ast.walk(TREE)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str) and "Attempt %" in node.value
                 and not _inside(node, table) and not _inside(node, attempt)]
    assert elsewhere == []


def test_the_chapter_banners_follow_the_docstring():
    promised = [(int(number), title.strip().lower())
                for number, title in re.findall(r"^    (\d+)\. (\S+(?: \S+)*)", cd.__doc__, re.M)]
    assert len(promised) == 8
    assert [(number, title) for _, number, title in _banners()] == promised


def test_a_chapter_uses_only_names_from_the_chapters_above_it():
    starts = [(line, number) for line, number, _ in _banners()]

    def chapter(line):
        return max([number for start, number in starts if start <= line], default=0)
    defined = {}
    for node in TREE.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [target.id for target in node.targets if isinstance(target, ast.Name)]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [(alias.asname or alias.name).split(".")[0] for alias in node.names]
        else:
            names = []
        for name in names:
            defined.setdefault(name, chapter(node.lineno))
    assert max(defined.values()) == 8
    later = sorted({(getattr(node, "name", "line %d" % node.lineno), used.id)
                    for node in TREE.body if getattr(node, "name", None) not in CONDUCTORS
                    for used in ast.walk(node)
                    if isinstance(used, ast.Name) and defined.get(used.id, 0) > chapter(node.lineno)})
    assert later == []


def test_every_name_in_all_exists():
    missing = [name for name in cd.__all__ if not hasattr(cd, name)]
    assert missing == []


def test_one_rule_decides_what_a_design_document_id_is():
    assert cd.is_design_id("_design/app")
    assert not cd.is_design_id("_designer")
    assert not cd.is_design_id("app/_design/x")
    assert not cd.is_design_id(None)
    assert not cd.is_design_id(["_design/app"])


def test_stop_instances_do_not_share_a_pending_signal():
    first, second = cd.Stop(), cd.Stop()
    first.graceful = True
    first.handler(15, None)
    assert first.requested == 15
    assert second.requested is None


def test_interrupted_carries_the_exit_code_of_its_signal():
    assert cd.Interrupted(15).code == 143
    assert cd.Interrupted(2).code == 130


class _Session:
    """Answers each request with the next of ``answers`` (a Reply, or an exception to raise)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.sent = []

    def request(self, method, path, body=None, content_type=None):
        self.sent.append((method, path))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _requester(answers, attempts="3"):
    import io
    opts = cd.Options()
    opts.attempts_text, opts.attempts = attempts, int(attempts)
    stream = io.BytesIO()
    session = _Session(answers)
    requester = cd.Requester(session, cd.Messages(stream), opts, cd.Stop())
    requester.PAUSE = 0
    return requester, stream, session


def test_requester_warns_with_the_user_text_as_a_value_and_returns_the_accepted_reply():
    ok = cd.Reply(201, b'{"ok":true}\n')
    requester, stream, _ = _requester([cd.TransferFailed("reset"), cd.Reply(500, b'{"error":"x"}\n'), ok])
    reply = requester.ask(cd.Ask("PUT", "/db/_design/a", "design document", body=b"{}", name="100%d.json"))
    assert reply is ok
    assert stream.getvalue() == (b"... WARN: Import of 100%d.json failed - Attempt 1/3. Retrying...\n"
                                 b"... WARN: CouchDB Reported an error during import - Attempt 2/3 - Retrying...\n")


def test_requester_ends_the_run_after_the_last_attempt_with_the_final_words():
    conflict = cd.Reply(409, b'{"error":"conflict","reason":"Document update conflict."}\n')
    requester, stream, _ = _requester([conflict] * 2, "2")
    try:
        requester.ask(cd.Ask("PUT", "/db/_design/a", "design document", body=b"{}", expect="stored",
                             doc_id="_design/a", name="f-design.0", db="db"))
    except cd.Failure as done:
        assert done.code == 1
        done.tell(cd.Messages(stream))
    else:
        raise AssertionError("no Failure")
    assert stream.getvalue().splitlines() == [
        b"... WARN: CouchDB Reported an error during import - Attempt 1/2 - Retrying...",
        b'... ERROR: CouchDB Reported: {"error":"conflict","reason":"Document update conflict."}']


def test_a_held_back_reply_is_sent_again_without_using_an_attempt():
    busy, ok = cd.Reply(429, b'{"error":"too_many_requests"}\n', {"Retry-After": "0"}), cd.Reply(201, b"[]")
    requester, stream, session = _requester([busy, busy, busy, ok], "1")
    assert requester.ask(cd.Ask("POST", "/db/_bulk_docs", "chunk", body=b"{}", expect="list", name="x")) is ok
    assert session.sent == [("POST", "/db/_bulk_docs")] * 4
    assert stream.getvalue() == b""
