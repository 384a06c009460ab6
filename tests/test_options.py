"""Option parsing: getopts corner cases and the script's checks, in its order."""

import io

import pytest

import couchdb_dump as cd

BASE = ["-b", "-H", "127.0.0.1", "-d", "db", "-f", "f.json"]


def parse(argv, environ=None):
    """Parse like the command line; returns (options or exit code, stdout text)."""
    stream = io.BytesIO()
    out = cd.Messages(stream)
    try:
        result = cd.parse_options(argv, environ or {}, out, "prog")
    except cd.Failure as done:
        done.tell(out)
        result = done.code
    return result, stream.getvalue().decode()


def events(argv):
    return list(cd.getopts(argv))


def test_clustered_flags_are_each_seen():
    assert events(["-bq", "-rc"])[:4] == [("b", None), ("q", None), ("r", None), ("c", None)]


def test_value_attached_to_its_option():
    assert events(["-dmydb"])[0] == ("d", "mydb")


def test_value_in_next_argument_even_when_it_starts_with_a_dash():
    assert events(["-f", "-x", "-b"]) == [("f", "-x"), ("b", None), ("end", 3)]


def test_value_after_flags_in_one_cluster():
    assert events(["-bqf", "out.json"]) == [("b", None), ("q", None), ("f", "out.json"), ("end", 2)]


def test_parsing_stops_at_first_non_option():
    assert events(["-b", "stray", "-r"]) == [("b", None), ("end", 1)]


def test_double_dash_ends_options_and_is_consumed():
    assert events(["-b", "--", "-r"]) == [("b", None), ("end", 2)]


def test_lone_dash_is_not_an_option():
    assert events(["-b", "-", "x"]) == [("b", None), ("end", 1)]


def test_missing_value_is_reported_with_the_option():
    assert events(["-b", "-f"]) == [("b", None), (":", "f")]


def test_question_mark_is_answered_as_unknown():
    assert events(["-?"])[0] == ("?", "?")


def test_long_option_value_forms():
    assert events(["--timeout", "5"])[0] == ("--timeout", "5")
    assert events(["--timeout=7"])[0] == ("--timeout", "7")


def test_long_option_taken_as_value_of_a_short_one():
    assert events(["-f", "--timeout"])[0] == ("f", "--timeout")


def test_no_arguments_prints_usage_and_exits_1():
    code, text = parse([])
    assert code == 1 and text.startswith("\nUsage: prog [-b|-r]")


def test_empty_first_argument_prints_usage():
    assert parse([""] + BASE)[0] == 1


def test_help_wins_over_later_errors():
    code, text = parse(["-h", "-x"])
    assert code == 1 and "ERROR" not in text


def test_unknown_option_message():
    code, text = parse(["-b", "-x"])
    assert code == 1 and text.startswith('... ERROR: Unknown Option "-x"\n\nUsage:')


def test_unknown_long_option_message():
    assert parse(BASE + ["--nope"])[1].startswith('... ERROR: Unknown Option "--nope"')


def test_missing_argument_message():
    assert parse(["-b", "-d"])[1].startswith('... ERROR: Option "-d" requires an argument')


def test_single_stray_argument_is_an_error():
    assert parse(BASE + ["stray"])[1].startswith('... ERROR: Unknown Option "stray"')


def test_two_stray_arguments_pass_as_in_bash():
    opts, text = parse(BASE + ["one", "two"])
    assert isinstance(opts, cd.Options) and text == ""


def test_second_double_dash_is_dropped_too():
    opts, _ = parse(BASE + ["--", "--"])
    assert isinstance(opts, cd.Options)


def test_empty_stray_argument_is_ignored():
    assert isinstance(parse(BASE + [""])[0], cd.Options)


def test_mode_checks_come_before_missing_host():
    assert parse(["-d", "x"])[1].startswith("... ERROR: Missing argument '-b' (Backup), or '-r' (Restore)")
    assert parse(["-b", "-r"])[1].startswith("... ERROR: Cannot pass both '-b' and '-r'")


def test_capital_aliases_select_modes():
    opts, _ = parse(["-B", "-H", "h", "-d", "d", "-f", "f"])
    assert opts.backup
    opts, _ = parse(["-R", "-H", "h", "-d", "d", "-f", "f"])
    assert opts.restore


def test_required_arguments_in_order():
    assert "'-H <COUCHDB_HOST>'" in parse(["-b", "-d", "d"])[1]
    assert "'-d <DB_NAME>'" in parse(["-b", "-H", "h"])[1]
    assert "'-f <FILENAME>'" in parse(["-b", "-H", "h", "-d", "d"])[1]


def test_threads_above_cpu_count_warn_even_when_quiet():
    _, text = parse(BASE + ["-q", "-t", "999"])
    assert text == "... WARN: Thread setting of 999 is more than CPU count. Setting to %d\n" % cd.cpu_count()


def test_threads_within_cpu_count_are_an_info_line():
    assert parse(BASE + ["-t", "1"])[1] == "... INFO: Setting parser threads to 1\n"
    assert parse(BASE + ["-q", "-t", "1"])[1] == ""


def test_default_threads_are_cpus_less_one():
    assert parse(BASE)[0].threads == str(cd.cpu_count() - 1)


def test_nproc_honours_openmp_variables(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert cd.cpu_count() == 7
    monkeypatch.setenv("OMP_THREAD_LIMIT", "3")
    assert cd.cpu_count() == 3


@pytest.mark.parametrize("value", ["0", "", "x", "-1", "2a"])
def test_invalid_attempts_warn_and_disable_retry(value):
    opts, text = parse(BASE + ["-a", value])
    assert text == '... WARN: Retry Attempt value of "%s" is invalid. Disabling Retry-on-Error.\n' % value
    assert opts.attempts == 1 and opts.attempts_text == "1"


def test_threads_message_comes_before_password_check():
    _, text = parse(BASE + ["-t", "1", "-u", "admin"])
    assert text.startswith("... INFO: Setting parser threads to 1\n... ERROR: Password cannot be blank")


def test_credentials_fall_back_to_environment():
    opts, _ = parse(BASE, {"COUCHDB_USER": "u", "COUCHDB_PASS": "p"})
    assert (opts.user, opts.password) == ("u", "p")


def test_password_without_user_is_refused():
    assert parse(BASE + ["-p", "x"])[1].startswith("... ERROR: Username cannot be blank, if password is specified.")


@pytest.mark.parametrize("host, port, url", [
    ("127.0.0.1", "5984", "http://127.0.0.1:5984"),
    ("db.example", "443", "https://db.example:443"),
    ("https://db.example", "6984", "https://db.example:6984"),
    ("http://h:1234", "5984", "http://h:1234"),
    ("http://h:", "5984", "http://h:"),
    ("myhttphost", "5984", "myhttphost:5984"),
])
def test_url_is_built_as_bash_builds_it(host, port, url):
    assert cd.build_url(host, port) == url


def test_version_names_the_port_and_bash_version():
    code, text = parse(["-V"])
    assert code == 1 and "couchdb_dump.py" in text and "1.1.10" in text


def test_long_help_adds_the_extensions_and_exits_0():
    code, text = parse(["--help"])
    assert code == 0 and text.startswith("\nUsage: prog") and "--timeout" in text


def test_short_help_keeps_bash_exit_1():
    code, text = parse(["-h"])
    assert code == 1 and text.startswith("\nUsage: prog") and "--timeout" not in text


def test_long_version_exits_0_with_the_text_of_short_version():
    assert parse(["--version"]) == (0, parse(["-V"])[1])
    assert parse(["-V"])[0] == 1


def test_mistyped_long_option_points_to_help_instead_of_the_usage():
    code, text = parse(BASE + ["--jsn"])
    assert code == 1
    assert text == '... ERROR: Unknown Option "--jsn" (did you mean --json?) - see --help for the long options\n'


def test_unknown_long_option_without_a_near_name():
    code, text = parse(BASE + ["--zzzzzz=1"])
    assert (code, text) == (1, '... ERROR: Unknown Option "--zzzzzz=1" - see --help for the long options\n')


@pytest.mark.parametrize("argv, message", [
    (BASE + ["--timeout"], 'Option "--timeout" requires an argument'),
    (BASE + ["--json=1"], 'Option "--json" takes no value'),
    (BASE + ["--jobs", "x"], 'Option "--jobs" takes a whole number from 1, not "x"'),
])
def test_long_option_errors_point_to_help(argv, message):
    code, text = parse(argv)
    assert (code, text) == (1, "... ERROR: %s - see --help for the long options\n" % message)


def test_unknown_short_option_still_prints_bash_usage():
    code, text = parse(BASE + ["-x"])
    assert code == 1 and text.startswith('... ERROR: Unknown Option "-x"\n\nUsage: prog')


def test_timeout_must_be_a_positive_number():
    assert parse(BASE + ["--timeout", "0"])[0] == 1
    assert parse(BASE + ["--timeout", "2.5"])[0].timeout == 2.5
