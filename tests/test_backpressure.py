"""Issue #11's option parsing (-D, -s, --resume) and the back-pressure rules, as pure units.

The end-to-end behaviour (a stub answering 429/503/413) is pinned in test_resume.py.
"""

import email.utils
import io

import pytest
from hypothesis import given, settings, strategies as st

import couchdb_dump as cd

RESTORE = ["-r", "-H", "127.0.0.1", "-d", "db", "-f", "f.json"]


def parse(argv):
    stream = io.BytesIO()
    out = cd.Messages(stream)
    try:
        result = cd.parse_options(argv, {}, out, "prog")
    except cd.Failure as done:
        done.tell(out)
        result = done.code
    return result, stream.getvalue().decode()


# -- options ------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("0.3", 0.3), ("2", 2.0), ("0", 0.0), (".5", 0.5)])
def test_delay_takes_fractional_seconds(text, seconds):
    opts, _ = parse(RESTORE + ["-D", text])
    assert opts.delay == seconds


@pytest.mark.parametrize("text", ["x", "-1", "", "nan", "inf", "1s"])
def test_delay_that_is_no_number_of_seconds_is_a_usage_error(text):
    code, out = parse(RESTORE + ["-D", text])
    assert code == 1
    assert out.startswith('... ERROR: Option "-D" takes a number of seconds, not "%s"\n' % text)


def test_start_chunk_and_resume_are_read():
    opts, _ = parse(RESTORE + ["-s", "f.json.splitaac", "--resume"])
    assert opts.start_chunk == "f.json.splitaac" and opts.resume


def test_defaults_send_everything_without_delay():
    opts, _ = parse(RESTORE)
    assert (opts.delay, opts.start_chunk, opts.resume) == (0.0, None, False)


@pytest.mark.parametrize("option", ["-D", "-s"])
def test_new_short_options_need_their_value(option):
    code, out = parse(RESTORE + [option])
    assert code == 1 and out.startswith('... ERROR: Option "%s" requires an argument' % option)


def test_resume_takes_no_value():
    code, out = parse(RESTORE + ["--resume=yes"])
    assert code == 1 and out.startswith('... ERROR: Option "--resume" takes no value')


def test_help_names_the_new_options():
    _, out = parse(["--help"])
    for word in ("--resume", "-s NAME", "-D SECONDS"):
        assert word in out


# -- Retry-After ----------------------------------------------------------------

def test_retry_after_in_seconds():
    assert cd.retry_after_seconds("7") == 7.0
    assert cd.retry_after_seconds(" 0 ") == 0.0


def test_retry_after_as_http_date_counts_from_now():
    now = 1_800_000_000.0
    header = email.utils.formatdate(now + 12, usegmt=True)
    assert cd.retry_after_seconds(header, now=now) == pytest.approx(12.0)


def test_retry_after_date_in_the_past_asks_no_wait():
    now = 1_800_000_000.0
    assert cd.retry_after_seconds(email.utils.formatdate(now - 100, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5e3", "\u0663"])
def test_retry_after_that_is_neither_is_no_answer(value):
    assert cd.retry_after_seconds(value) is None


# -- BackPressure ---------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def pressure(budget=None, jitter=1.0):
    clock = Clock()
    return cd.BackPressure(budget=budget, clock=clock, jitter=lambda: jitter, wall=lambda: 1e9), clock


def test_429_waits_what_retry_after_says():
    bp, _ = pressure()
    assert bp.delay(429, {"retry-after": "1"}) == 1.0


def test_retry_after_is_capped_at_a_minute():
    bp, _ = pressure()
    assert bp.delay(429, {"retry-after": "3600"}) == 60.0


def test_503_with_retry_after_is_waited_out():
    bp, _ = pressure()
    assert bp.delay(503, {"retry-after": "2"}) == 2.0


@pytest.mark.parametrize("status", [200, 201, 400, 409, 413, 500, 503])
def test_other_answers_and_503_without_retry_after_are_no_push_back(status):
    bp, _ = pressure()
    assert bp.delay(status, {}) is None


def test_429_without_retry_after_backs_off_exponentially_up_to_30_seconds():
    bp, clock = pressure(budget=10_000)
    waits = []
    for _ in range(8):
        waits.append(bp.delay(429, {}))
        clock.now += waits[-1]
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]


def test_back_off_has_jitter_between_half_and_the_whole_step():
    low, _ = pressure(jitter=0.0)
    assert [low.delay(429, {}) for _ in range(3)] == [0.5, 1.0, 2.0]


def test_zero_retry_after_is_no_tight_loop():
    bp, _ = pressure()
    assert bp.delay(429, {"retry-after": "0"}) >= 0.1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(0, 10_000).map(str), st.text(max_size=5)), min_size=1,
                max_size=400),
       st.floats(0, 1), st.floats(0, 5))
def test_waiting_is_bounded_by_the_budget_whatever_the_server_says(headers, jitter, request_time):
    """However the server answers, the waits of one request end within the budget."""
    bp, clock = pressure(budget=600, jitter=jitter)
    total = 0.0
    for number in range(10 ** 5):
        value = headers[number % len(headers)]
        clock.now += request_time          # each request takes some time too
        wait = bp.delay(429, {} if value is None else {"retry-after": value})
        if wait is None:
            break
        assert wait > 0
        total += wait
        clock.now += wait
    else:
        pytest.fail("still waiting after 100000 push-backs")
    assert clock.now <= 600 + request_time * 2 + 1e-6
    assert total <= 600


def test_after_the_budget_a_push_back_is_an_ordinary_failure():
    bp, clock = pressure(budget=5)
    assert bp.delay(429, {"retry-after": "4"}) == 4
    clock.now += 4
    assert bp.delay(429, {"retry-after": "4"}) == 1   # only what is left
    clock.now += 1
    assert bp.delay(429, {"retry-after": "4"}) is None


def test_pause_ends_early_when_asked_to_stop():
    import time
    started = time.monotonic()
    assert cd.Requester.pause(5, stop=lambda: time.monotonic() - started > 0.3) is False
    assert time.monotonic() - started < 1.5
