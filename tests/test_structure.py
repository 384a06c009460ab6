"""The shape of couchdb_dump.py that keeps it easy to change (issue #12)."""

import inspect
import sys

from helpers import REPO

sys.path.insert(0, str(REPO))
import couchdb_dump as cd  # noqa: E402

RESTORE_LINE_LIMIT = 250


def test_restore_class_stays_under_250_lines():
    # New restore features go into their own classes and functions that Restore calls.
    lines, _ = inspect.getsourcelines(cd.Restore)
    assert len(lines) < RESTORE_LINE_LIMIT, "Restore is %d lines" % len(lines)


def test_every_name_in_all_exists():
    missing = [name for name in cd.__all__ if not hasattr(cd, name)]
    assert missing == []


def test_the_reported_failures_share_one_root():
    for failure in (cd.TransferFailed, cd.BackupFailed, cd.DumpInvalid):
        assert issubclass(failure, cd.Failure)


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
