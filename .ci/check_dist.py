"""Check that the built wheel and sdist hold everything of the source tree.

Usage: ``python .ci/check_dist.py dist/``

- Every file of ``flask_sse_broker/`` in the checkout (modules, packages,
  ``py.typed``, ``static/*``; not caches) must be in the wheel and in the sdist.
  A subpackage without ``__init__.py`` is silently left out by
  ``packages = find:``: this is the check that notices.
- The wheel holds nothing else at top level but ``flask_sse_broker/`` and its
  ``.dist-info`` (with ``LICENSE.rst``).
- The sdist also holds what is needed to test and document the release.
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
PACKAGE = "flask_sse_broker"
SKIP_PARTS = {"__pycache__"}
SKIP_SUFFIXES = {".pyc", ".pyo"}
#: Paths (files or directories) every sdist must contain, relative to its root.
SDIST_MUST_HAVE = (
    "README.rst",
    "CHANGES.rst",
    "LICENSE.rst",
    "setup.cfg",
    "pyproject.toml",
    "tox.ini",
    "tests/conftest.py",
    "examples/dashboard/app.py",
    "docs/conf.py",
    "docs/index.rst",
)


def source_files() -> set[str]:
    root = CHECKOUT / PACKAGE
    return {
        path.relative_to(CHECKOUT).as_posix()
        for path in root.rglob("*")
        if path.is_file() and not SKIP_PARTS & set(path.parts) and path.suffix not in SKIP_SUFFIXES
    }


def check_packages(expected: set[str]) -> list[str]:
    """Every directory of the package holding modules must be a regular package:
    ``packages = find:`` skips one without ``__init__.py`` (or, from a stale
    egg-info, ships its modules as data of a namespace package)."""
    dirs = {name.rpartition("/")[0] for name in expected if name.endswith(".py")}
    return [
        f"{d}/ holds modules but no __init__.py" for d in sorted(dirs) if f"{d}/__init__.py" not in expected
    ]


def check_wheel(wheel: Path, expected: set[str]) -> list[str]:
    names = set(zipfile.ZipFile(wheel).namelist())
    problems = [f"{wheel.name}: missing {name}" for name in sorted(expected - names)]
    extra = (
        {n.split("/")[0] for n in names} - {PACKAGE} - {n.split("/")[0] for n in names if ".dist-info/" in n}
    )
    problems += [f"{wheel.name}: unexpected top-level entry {name}" for name in sorted(extra)]
    if not any(n.endswith(".dist-info/licenses/LICENSE.rst") for n in names):
        problems.append(f"{wheel.name}: no LICENSE.rst in .dist-info/licenses")
    return problems


def check_sdist(sdist: Path, expected: set[str]) -> list[str]:
    with tarfile.open(sdist) as tar:
        names = {name.partition("/")[2] for name in tar.getnames()}
    problems = [f"{sdist.name}: missing {name}" for name in sorted(expected - names)]
    problems += [f"{sdist.name}: missing {name}" for name in SDIST_MUST_HAVE if name not in names]
    return problems


def main(dist: Path) -> int:
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f"expected one wheel and one sdist in {dist}, found {wheels + sdists}", file=sys.stderr)
        return 1
    expected = source_files()
    if not any(name.endswith("/__init__.py") for name in expected):
        print(f"no package found under {CHECKOUT / PACKAGE}", file=sys.stderr)
        return 1
    problems = check_packages(expected) + check_wheel(wheels[0], expected) + check_sdist(sdists[0], expected)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"{wheels[0].name} and {sdists[0].name} hold all {len(expected)} files of {PACKAGE}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "dist")))
