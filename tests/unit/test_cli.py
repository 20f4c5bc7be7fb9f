"""The command line without mounting: the mount(8) helper convention and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from overlayboot.cli import helper_argv


def test_helper_argv_maps_mount8_convention() -> None:
    assert helper_argv(["overlay", "/mnt", "-n", "-o", "rw,lowerdir=/a,upperdir=/u"]) == [
        "mount",
        "overlay",
        "/mnt",
        "-o",
        "rw,lowerdir=/a,upperdir=/u",
    ]
    assert helper_argv(["src", "/mnt", "-ofoo=bar", "-sv"]) == [
        "mount",
        "src",
        "/mnt",
        "-o",
        "foo=bar",
    ]


def test_helper_fake_mount_does_nothing() -> None:
    assert helper_argv(["src", "/mnt", "-f", "-o", "x"]) is None


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overlayboot", *args], capture_output=True, text=True, timeout=60
    )


def test_missing_lower_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "u").mkdir()
    (tmp_path / "w").mkdir()
    (tmp_path / "m").mkdir()
    r = run_cli(
        "mount", "--lower", str(tmp_path / "nope"), "--upper", str(tmp_path / "u"),
        "--work", str(tmp_path / "w"), str(tmp_path / "m"),
    )  # fmt: skip
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("overlayboot: error: lower dir")
    assert "Traceback" not in r.stderr


def test_missing_arguments_is_usage_error(tmp_path: Path) -> None:
    r = run_cli("mount", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("overlayboot: error: no lower dir")


def test_umount_of_non_mountpoint(tmp_path: Path) -> None:
    r = run_cli("umount", str(tmp_path))
    assert r.returncode == 4
    assert "is not a mount point" in r.stderr and "Traceback" not in r.stderr
