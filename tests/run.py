#!/usr/bin/env python3
"""Run a Python command with the project's dependencies installed.

    python3 tests/run.py tests/tools/demo.py   # the demo
    python3 tests/run.py -m pytest [...]    # the test suite

It pip-installs what setup.cfg lists (``install_requires`` and the ``test``
extra; not the project itself: the tests and the demo use the file in this
checkout), then runs the command with that interpreter.  Where the
interpreter refuses installs, a system Python marked EXTERNALLY-MANAGED
(PEP 668: Debian 12, Ubuntu 24.04) or one without pip, it does the same in a
virtual environment, ``.venv`` at the top of the checkout, made on first use
(Debian/Ubuntu: ``apt install python3-venv``).  An existing ``.venv`` is
always the one used.  Standard library only: it runs before any install.
"""

import configparser
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

sys.dont_write_bytecode = True   # leave no __pycache__ in the checkout

from helpers import REPO  # noqa: E402  (tests/ is this script's directory, first on sys.path)

VENV = REPO / ".venv"
NAME = "tests/run.py"


def requirements(setup_cfg=REPO / "setup.cfg"):
    """The runtime requirements and the ``test`` extra, as setup.cfg lists them."""
    config = configparser.ConfigParser()
    config.read(setup_cfg, encoding="utf-8")
    found = []
    for section, key in (("options", "install_requires"), ("options.extras_require", "test")):
        text = config.get(section, key, fallback="")
        found += [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return found


def marker_path():
    """Where PEP 668 puts the EXTERNALLY-MANAGED marker of this interpreter."""
    return Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED"


def refuses_installs():
    """Why pip cannot install into this interpreter, or None when it can."""
    if sys.prefix != sys.base_prefix:
        return None   # a virtual environment: the marker does not apply
    if marker_path().is_file():
        return "it is marked EXTERNALLY-MANAGED (PEP 668)"
    if importlib.util.find_spec("pip") is None:
        return "it has no pip"
    return None


def venv_python(venv=VENV):
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def fail(text):
    print("%s: %s" % (NAME, text), file=sys.stderr)
    sys.exit(1)


def make_venv(venv=VENV):
    """Create ``venv`` (again, if an earlier attempt left it without pip)."""
    python = venv_python(venv)
    if python.exists() and subprocess.run([str(python), "-m", "pip", "--version"],
                                          capture_output=True).returncode == 0:
        return python
    print("%s: creating the virtual environment %s" % (NAME, venv), file=sys.stderr, flush=True)
    made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        said = (made.stdout + made.stderr).strip().splitlines()
        fail("cannot create %s (%s); on Debian/Ubuntu: apt install python3-venv"
             % (venv, said[-1] if said else "exit %d" % made.returncode))
    return python


def choose_python():
    """The interpreter to install into and run with, made ready if needed."""
    if venv_python().exists():
        return make_venv()
    why = refuses_installs()
    if why is None:
        return Path(sys.executable)
    print("%s: %s cannot take pip installs: %s; using %s" % (NAME, sys.executable, why, VENV),
          file=sys.stderr, flush=True)
    return make_venv()


def main(args):
    if not args:
        fail("usage: python3 tests/run.py SCRIPT|-m MODULE [ARGUMENTS...]")
    python = choose_python()
    # Quiet: no pip version nag, no root warning (older pips ignore the variable).
    env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              *requirements()], env=env)
    if install.returncode != 0:
        fail("pip could not install %s (exit %d, see above)" % (" ".join(requirements()), install.returncode))
    sys.stdout.flush()
    os.execv(str(python), [str(python), *args])


if __name__ == "__main__":
    main(sys.argv[1:])
