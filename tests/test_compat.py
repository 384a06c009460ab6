"""The port must reproduce every golden couchdb-dump.sh recording.

Each case in fixtures/compat is replayed (see compat_replay and
fixtures/compat/README.md): same exit code, stdout, files and HTTP requests
as the bash script, except where a case's expect_port says the port must do
better.
"""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from compat_replay import FIXTURES, case_dirs, compare, load_case, run_case
from helpers import PROGRAM, REPO

SHARED_COMPAT = REPO.parent / "shared" / "compat"


@pytest.mark.parametrize("case_name", [path.name for path in case_dirs()])
def test_port_reproduces_the_recorded_bash_run(case_name, tmp_path):
    case = load_case(FIXTURES / case_name)
    result = run_case(case["dir"], PROGRAM, tmp_path)
    problems = compare(case, result, PROGRAM)
    if problems:
        # The list is the whole story; pytest's traceback would only repeat it.
        pytest.fail(
            f"{case_name}: {case['description']}\n" + "\n".join(f"- {p}" for p in problems),
            pytrace=False,
        )


def _tree_differences(left: Path, right: Path) -> "list[str]":
    """Files missing on either side or differing in bytes, recursively."""
    comparison = filecmp.dircmp(left, right, ignore=[])
    differences = []

    def walk(cmp, prefix):
        differences.extend(f"only in {cmp.left}: {prefix}{name}" for name in cmp.left_only)
        differences.extend(f"only in {cmp.right}: {prefix}{name}" for name in cmp.right_only)
        differences.extend(f"type differs: {prefix}{name}" for name in cmp.common_funny + cmp.funny_files)
        # dircmp compares by stat signature first; compare bytes to be sure.
        _, mismatch, errors = filecmp.cmpfiles(cmp.left, cmp.right, cmp.common_files, shallow=False)
        differences.extend(f"bytes differ: {prefix}{name}" for name in mismatch + errors)
        for name, sub in sorted(cmp.subdirs.items()):
            walk(sub, f"{prefix}{name}/")

    walk(comparison, "")
    return differences


def test_golden_cases_are_an_unchanged_copy_of_the_shared_recordings():
    if not SHARED_COMPAT.is_dir():
        pytest.skip(f"{SHARED_COMPAT} is not here to compare with")
    differences = _tree_differences(SHARED_COMPAT, FIXTURES)
    assert not differences, "fixtures/compat was edited:\n" + "\n".join(differences)
