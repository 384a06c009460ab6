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


def _retry(answers, attempts="3"):
    import io
    opts = cd.Options()
    opts.attempts_text, opts.attempts = attempts, int(attempts)
    stream = io.BytesIO()
    retry = cd.Retry(_Session(answers), cd.Messages(stream), opts, cd.Stop())
    retry.PAUSE = 0
    return retry, stream


def test_retry_warns_with_the_user_text_as_a_value_and_returns_the_accepted_reply():
    ok = cd.Reply(201, b'{"ok":true}\n')
    retry, stream = _retry([cd.TransferFailed("reset"), cd.Reply(500, b'{"error":"x"}\n'), ok])
    reply = retry.request("PUT", "/db", transfer_warn=("... WARN: Import of %s failed - Attempt %d/%s.", "100%d.json"),
                          transfer_final=None, reply_warn="... WARN: error - Attempt %d/%s")
    assert reply is ok
    assert stream.getvalue() == b"... WARN: Import of 100%d.json failed - Attempt 1/3.\n... WARN: error - Attempt 2/3\n"


def test_retry_ends_the_run_after_the_last_attempt_with_the_final_words():
    retry, stream = _retry([cd.Reply(409, b'{"error":"conflict","reason":"Document update conflict."}\n')] * 2, "2")
    try:
        retry.request("PUT", "/db/_design/a", transfer_warn="t %d/%s", transfer_final=None, reply_warn="r %d/%s")
    except cd.Failure as done:
        assert done.code == 1
    else:
        raise AssertionError("no Failure")
    assert stream.getvalue().splitlines() == [
        b"r 1/2", b'... ERROR: CouchDB Reported: {"error":"conflict","reason":"Document update conflict."}']


def test_a_held_back_reply_is_sent_again_without_using_an_attempt():
    busy, ok = cd.Reply(429, b'{"error":"too_many_requests"}\n'), cd.Reply(201, b"[]")
    retry, stream = _retry([busy, busy, busy, ok], "1")
    retry.held_back = lambda reply: reply.status == 429
    seen = []
    retry.before_request = lambda method, path: seen.append(path)
    assert retry.request("POST", "/db/_bulk_docs", transfer_warn="t", transfer_final=None,
                         accept=cd.Retry.bulk_accepted) is ok
    assert seen == ["/db/_bulk_docs"] * 4
    assert stream.getvalue() == b""
