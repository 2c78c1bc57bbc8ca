"""Run the test suite against the INSTALLED flask_sse_broker, never the checkout.

Usage (from any directory, with the Python of a venv where the wheel and its
``test`` extra are installed; tox's py3XX envs do exactly this)::

    python .ci/installed_tests.py [pytest arguments...]

Why a copy: pytest's default import mode puts the rootdir (the parent of the
``tests`` package) on ``sys.path``, ``python -m`` puts the working directory
there, and the test servers (``tests/support.py``) run with the tests' parent
directory on ``PYTHONPATH`` and as their cwd (gunicorn adds its cwd to
``sys.path``). Run from the checkout, every one of them would import the
checkout's ``flask_sse_broker`` instead of the installed one. So this copies
``tests/``, ``examples/`` and the pytest configuration into a fresh temporary
directory, where no ``flask_sse_broker`` package exists, and runs pytest there
with ``SSE_TEST_INSTALLED=1``: ``tests/conftest.py`` then fails the run at
session start unless the pytest process and a server of each kind import the
package from this venv's site-packages.

The TypeScript check (``tests/ts/usage.ts``) imports
``../../flask_sse_broker/static/client``: the copy gets the INSTALLED package's
``static/`` there, with no Python file beside it, so it cannot be imported
(and a regular package always wins over such a directory anyway).

pytest's exit code 5 (no test collected) is turned into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
#: What the suite needs from the checkout besides the installed package.
COPY_DIRS = ("tests", "examples")
#: Holds the [tool:pytest] configuration.
CONFIG_FILE = "setup.cfg"
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "artifacts", "node_modules", ".pytest_cache")


def installed_package_dir() -> Path:
    """The installed package, found from a directory where the checkout is not importable."""
    out = subprocess.run(
        [sys.executable, "-I", "-c", "import flask_sse_broker; print(flask_sse_broker.__file__)"],
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"flask_sse_broker is not installed in {sys.prefix}:\n{out.stderr}")
    package = Path(out.stdout.strip()).resolve().parent
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    if not package.is_relative_to(site):
        sys.exit(f"flask_sse_broker comes from {package}, not from {site}")
    return package


def stage(package: Path) -> Path:
    """A temporary tree with the tests, the examples and the installed client's static files."""
    root = Path(tempfile.mkdtemp(prefix="flask-sse-broker-tests-"))
    for name in COPY_DIRS:
        shutil.copytree(CHECKOUT / name, root / name, ignore=IGNORE)
    shutil.copy2(CHECKOUT / CONFIG_FILE, root / CONFIG_FILE)
    shutil.copytree(package / "static", root / "flask_sse_broker" / "static")
    node_modules = CHECKOUT / "tests" / "ts" / "node_modules"
    if node_modules.is_dir():
        (root / "tests" / "ts" / "node_modules").symlink_to(node_modules)
    return root


def main(args: list[str]) -> int:
    package = installed_package_dir()
    root = stage(package)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["SSE_TEST_INSTALLED"] = "1"
    print(f"testing {package} from a copy of the tests in {root}", flush=True)
    rc = subprocess.call([sys.executable, "-m", "pytest", *args], cwd=root, env=env)
    if rc == 5:
        print("pytest collected no test: that is a failure here", file=sys.stderr)
        rc = 1
    if rc == 0:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept the test tree (server logs in tests/artifacts): {root}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
