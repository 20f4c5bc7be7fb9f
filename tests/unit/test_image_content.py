"""image.toml's image content: the Debian suite, packages, and a script run in the root
(tested on the busybox root, chrooted; the Debian root's debootstrap is the slow tier's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mkimage.config import spec_from_dict
from mkimage.pipeline import make_root
from mkimage.squashfs import SquashfsSpec, build_squashfs
from overlayboot.errors import ToolError, UsageError


def test_debian_suite_and_packages(tmp_path: Path) -> None:
    spec = spec_from_dict(
        {"rootfs": {"source": "debian", "suite": "trixie", "packages": ["less", "vim-tiny"]}},
        tmp_path,
    )
    assert spec.rootfs.suite == "trixie" and spec.rootfs.packages == ("less", "vim-tiny")
    assert spec_from_dict({}).rootfs.suite == "bookworm"


@pytest.mark.parametrize(
    "rootfs",
    [
        {"source": "busybox", "packages": ["less"]},
        {"source": "busybox", "suite": "trixie"},
        {"source": "debian", "packages": ["Less; rm -rf /"]},
        {"source": "debian", "packages": "less"},
        {"source": "debian", "suite": "../x"},
    ],
)
def test_bad_content(rootfs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        spec_from_dict({"rootfs": rootfs})


SCRIPT = """set -e
echo "made at $SOURCE_DATE_EPOCH" > /etc/built
mkdir -p /srv/app && echo hello > /srv/app/greeting
rm /etc/motd
"""


def _build(tmp_path: Path, name: str) -> bytes:
    (tmp_path / "setup.sh").write_text(SCRIPT)
    (tmp_path / "motd").write_text("extra\n")
    spec = spec_from_dict(
        {"rootfs": {"script": "setup.sh", "extra_files": {"/etc/motd": "motd"}}}, tmp_path
    )
    root = tmp_path / name
    make_root(spec, root, tmp_path / "cache", epoch=1_700_000_000)
    assert (root / "etc/built").read_text() == "made at 1700000000\n"
    assert (root / "srv/app/greeting").read_text() == "hello\n"
    assert not (root / "etc/motd").exists()  # the extra file came first, the script after
    assert not (root / "overlayboot-script").exists()
    sq = tmp_path / f"{name}.squashfs"
    build_squashfs(root, sq, SquashfsSpec(source_date_epoch=1_700_000_000))
    return sq.read_bytes()


def test_script_runs_in_the_root_reproducibly(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    assert _build(tmp_path, "a") == _build(tmp_path, "b")  # byte for byte


def test_a_failing_script_stops_the_build(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    (tmp_path / "bad.sh").write_text("exit 3\n")
    spec = spec_from_dict({"rootfs": {"script": "bad.sh"}}, tmp_path)
    with pytest.raises(ToolError):
        make_root(spec, tmp_path / "root", tmp_path / "cache")
