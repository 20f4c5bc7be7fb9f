"""tools/importcheck.py (``make imports``) on tiny packages written here: circles fail it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "importcheck.py"


def write_package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def check(root: Path, *packages: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root), *packages],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


NO_CIRCLE = {
    "pkg/__init__.py": "from pkg import errors\n",
    "pkg/errors.py": "class Error(Exception): ...\n",
    "pkg/cli.py": "import pkg\nfrom pkg.errors import Error\nfrom . import run\n",
    "pkg/run.py": "from .errors import Error\nimport os\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/deep.py": "from .. import run\nfrom ..errors import Error\n",
    "other/__init__.py": "",
    "other/use.py": "from pkg.cli import main\n",
}


def test_a_tree_without_circles_passes(tmp_path: Path) -> None:
    write_package(tmp_path, NO_CIRCLE)
    result = check(tmp_path, "pkg", "other")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 import circles" in result.stdout


# each circle is closed by a different kind of import
CIRCLES = {
    "top level": {"pkg/a.py": "import pkg.b\n", "pkg/b.py": "from pkg import a\n"},
    "in a function": {
        "pkg/a.py": "from pkg.b import f\n",
        "pkg/b.py": "def f():\n    from pkg.a import g\n    return g\n",
    },
    "type checking": {
        "pkg/a.py": "from pkg.b import B\n",
        "pkg/b.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\nB = 1\n"
        ),
    },
    "relative, through a subpackage": {
        "pkg/a.py": "from .sub.c import C\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "from ..b import B\nC = 1\n",
        "pkg/b.py": "from . import a\nB = 1\n",
    },
    "across packages": {
        "pkg/a.py": "from other.x import X\n",
        "other/__init__.py": "",
        "other/x.py": "def X():\n    import pkg.a\n",
    },
}


@pytest.mark.parametrize("case", list(CIRCLES))
def test_a_circle_fails_and_is_named(tmp_path: Path, case: str) -> None:
    write_package(tmp_path, {**NO_CIRCLE, **CIRCLES[case]})
    result = check(tmp_path, "pkg", "other")
    assert result.returncode == 1, result.stdout + result.stderr
    circles = [line for line in result.stdout.splitlines() if line.startswith("import circle")]
    assert len(circles) == 1, result.stdout
    cycle = circles[0].split(": ", 1)[1].split(" -> ")
    assert cycle[0] == cycle[-1] and "pkg.a" in cycle, circles[0]
    assert "1 import circles" in result.stdout


def test_only_the_packages_named_are_searched(tmp_path: Path) -> None:
    write_package(tmp_path, {**NO_CIRCLE, **CIRCLES["across packages"]})
    assert check(tmp_path, "pkg").returncode == 0


def test_a_missing_package_is_an_error(tmp_path: Path) -> None:
    result = check(tmp_path, "nope")
    assert result.returncode == 2 and "no package directory nope" in result.stderr
