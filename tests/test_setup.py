"""Set-up on a stock machine: the README's commands, a missing urllib3, the demo's failures.

Debian 12 and Ubuntu 24.04 mark their python3 EXTERNALLY-MANAGED (PEP 668):
pip refuses to install into it, and it has no pip unless python3-pip is
installed.  The README's commands go through tests/run.py, which then works
in a .venv; these tests run it with an interpreter built like Debian's.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from helpers import PROGRAM, REPO, clean_environment

RUN = REPO / "tests" / "run.py"

NO_NETWORK = ("Temporary failure in name resolution", "NewConnectionError", "Network is unreachable",
              "No matching distribution found", "Could not find a version that satisfies",
              "ConnectTimeoutError", "Connection refused", "ProxyError")


def load_run_module():
    spec = importlib.util.spec_from_file_location("tests_run", RUN)
    module = importlib.util.module_from_spec(spec)
    keep = sys.dont_write_bytecode   # run.py turns bytecode off for its own process
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = keep
    return module


def environment():
    env = clean_environment({"PYTHONDONTWRITEBYTECODE": "1"})
    env.pop("PYTHONPATH", None)
    return env


def readme_commands():
    """The shell commands of the README's first code block, comments removed."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def externally_managed_python(where):
    """A copy of this interpreter's base installation as Debian ships python3:
    an EXTERNALLY-MANAGED marker in its standard library, no pip, no
    site-packages, ensurepip and venv present (Debian's python3-venv).
    The standard library is linked, not copied: a few hundred symlinks."""
    base = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_path("stdlib"))
    binary = Path(os.path.realpath(sys.executable))
    if stdlib.parent.parent != base or stdlib.parent.name != "lib":
        pytest.skip("this interpreter's layout (%s) is not prefix/lib/pythonX.Y" % stdlib)
    (where / "bin").mkdir(parents=True)
    for entry in (base / "lib").iterdir():   # libpython for builds linked against $ORIGIN/../lib
        if entry.name.startswith("libpython"):   # not Debian's lib/python3/dist-packages
            (where / "lib" / entry.name).parent.mkdir(parents=True, exist_ok=True)
            (where / "lib" / entry.name).symlink_to(entry)
    copy = where / "lib" / stdlib.name
    copy.mkdir(parents=True)
    for entry in stdlib.iterdir():
        if entry.name not in ("site-packages", "dist-packages", "EXTERNALLY-MANAGED"):
            (copy / entry.name).symlink_to(entry)
    (copy / "site-packages").mkdir()
    (copy / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=managed by the system, as Debian's\n")
    python = where / "bin" / "python3"
    shutil.copy2(binary, python)
    probe = subprocess.run([str(python), "-c", "import sys, sysconfig; print(sys.prefix); "
                            "print(sysconfig.get_path('stdlib'))"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0 or probe.stdout.split() != [str(where), str(copy)]:
        pytest.skip("a copied interpreter does not find its copied library here: %s" % (probe.stdout + probe.stderr))
    return python


# -- the README's commands ---------------------------------------------------------

def test_readme_opens_with_the_demo_and_the_test_suite_through_run_py():
    assert readme_commands() == ["python3 tests/run.py tests/tools/demo.py", "python3 tests/run.py -m pytest"]


def test_ci_runs_the_readme_test_command_first():
    steps = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith(("#", "set ", "cd ", "echo "))]
    assert steps[0] == readme_commands()[1]


def test_requirements_are_the_runtime_ones_and_the_test_extra():
    found = load_run_module().requirements()
    assert "urllib3>=1.26" in found and "pytest" in found


def standard_library_names():
    """The standard library's top-level modules: Python 3.10+ lists them; before,
    they are the built-in ones and what its folders hold."""
    names = getattr(sys, "stdlib_module_names", None)
    if names:
        return set(names)
    found = set(sys.builtin_module_names)
    stdlib = Path(sysconfig.get_path("stdlib"))
    for folder in (stdlib, stdlib / "lib-dynload"):
        for entry in folder.iterdir():
            if entry.name != "site-packages":
                found.add(entry.name.split(".", 1)[0])
    return found


def test_every_package_the_tests_import_is_in_the_test_extra():
    """The README's command installs setup.cfg's lists and nothing else: a
    test importing a package missing there fails on a fresh machine."""
    stdlib = standard_library_names()
    files = sorted([*(REPO / "tests").glob("*.py"), *(REPO / "tests" / "tools").glob("*.py")])
    local = {path.stem for path in files} | {"couchdb_dump"}
    listed = {re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower()
              for requirement in load_run_module().requirements()}
    missing = {}
    for path in files:
        for found in re.finditer(r"^(?:from|import) ([A-Za-z_]\w*)", path.read_text(encoding="utf-8"), re.M):
            name = found.group(1)
            if name not in stdlib and name not in local and name.lower() not in listed:
                missing.setdefault(name, path.name)
    assert not missing, "imported by tests but not in setup.cfg's test extra: %s" % missing


def test_an_externally_managed_interpreter_gets_a_venv(tmp_path, monkeypatch):
    run = load_run_module()
    marker = tmp_path / "EXTERNALLY-MANAGED"
    marker.write_text("[externally-managed]\n")
    monkeypatch.setattr(run, "marker_path", lambda: marker)
    monkeypatch.setattr(sys, "prefix", sys.base_prefix)   # as outside any venv (CI runs one suite in a venv)
    assert "EXTERNALLY-MANAGED" in run.refuses_installs()
    marker.unlink()
    assert run.refuses_installs() is None
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "some-venv"))
    marker.write_text("[externally-managed]\n")
    assert run.refuses_installs() is None   # in a venv the marker does not apply


def test_readme_test_command_works_with_an_externally_managed_python(tmp_path):
    """The README's test command from a fresh copy, with a python3 like
    Debian's: it makes .venv, installs there (from PyPI: about 15 s) and runs
    pytest from it.  A few test files stand for the whole suite."""
    python = externally_managed_python(tmp_path / "debian-like")
    clone = tmp_path / "clone"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(".git", ".venv", "node_modules", "__pycache__",
                                                                "*.egg-info", ".pytest_cache"))
    command = readme_commands()[1].split()
    assert command[:2] == ["python3", "tests/run.py"]
    # -n 1: through pytest-xdist as the whole suite goes, without a worker a processor for a few quick tests.
    result = subprocess.run([str(python), *command[1:], "-q", "-p", "no:cacheprovider", "-n", "1",
                             "tests/test_options.py"], cwd=clone, env=environment(), capture_output=True, timeout=600)
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    if result.returncode != 0 and any(sign in output for sign in NO_NETWORK):
        unreachable = "pip needs PyPI, unreachable: %s" % output[-300:]
        if os.environ.get("CI"):
            pytest.fail("CI must run this: " + unreachable, pytrace=False)
        pytest.skip(unreachable)
    assert result.returncode == 0, output[-3000:]
    assert "is marked EXTERNALLY-MANAGED (PEP 668); using %s" % (clone / ".venv") in output
    assert re.search(r"\d+ passed", output), output[-1000:]
    found = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c", "import urllib3; print(urllib3.__file__)"],
                           capture_output=True, text=True, timeout=60)
    assert found.stdout.startswith(str(clone / ".venv"))


# -- without urllib3 ---------------------------------------------------------------

def test_missing_urllib3_is_one_line_that_names_the_fix(tmp_path):
    # -S: no site-packages, so no urllib3, as Debian's python3 without python3-urllib3.
    result = subprocess.run([sys.executable, "-S", str(PROGRAM), "-b", "-H", "127.0.0.1", "-P", "1", "-d", "db",
                             "-f", "backup.json", "--json"], cwd=tmp_path, env=environment(), capture_output=True,
                            timeout=60)
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 1 and result.stderr == b""
    assert lines[0] == ("... ERROR: This script requires 'urllib3' to be present: pip install urllib3"
                        " (Debian/Ubuntu: apt install python3-urllib3).")
    assert len(lines) == 2 and '"exit_code": 1' in lines[1]
    assert list(tmp_path.iterdir()) == []


def test_help_and_version_need_no_urllib3(tmp_path):
    for option in ("-h", "--help", "-V", "--version"):
        result = subprocess.run([sys.executable, "-S", str(PROGRAM), option], cwd=tmp_path, env=environment(),
                                capture_output=True, timeout=60)
        assert result.stderr == b"" and b"urllib3" not in result.stdout, option


def test_demo_stops_on_the_ports_message_without_a_traceback(tmp_path):
    """Run the demo with a python3 that has no urllib3: the port's one line,
    then the demo's own verdict, and no Python traceback anywhere."""
    pytest.importorskip("urllib3")
    import pouchdb_server
    reason = pouchdb_server.node_available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail("CI must run the demo: %s" % reason, pytrace=False)
        pytest.skip(reason)
    python = externally_managed_python(tmp_path / "debian-like")
    result = subprocess.run([str(python), str(REPO / "tests" / "tools" / "demo.py")], env=environment(),
                            capture_output=True, timeout=600)
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    assert "This script requires 'urllib3' to be present" in output
    assert "FAILED: the port exited with 1 on: -b " in output
