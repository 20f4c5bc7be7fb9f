"""The host programs bundled with the runtime (e2fsck): they run with its loader and libraries."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mkimage.persistence import mkfs_ext4
from mkimage.runtime import Runtime, stage_runtime
from tests.unit.conftest import EPOCH, need_tools


@pytest.fixture(scope="module")
def copied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Runtime, Path]:
    staged = stage_runtime(tmp_path_factory.mktemp("rt") / "runtime", mtime=EPOCH)
    dest = tmp_path_factory.mktemp("elsewhere") / "runtime"
    shutil.copytree(staged.root, dest, symlinks=True)
    return staged, dest


def e2fsck(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(root / "e2fsck"), *args], env={}, capture_output=True, text=True, timeout=60
    )


def test_e2fsck_and_its_libraries_are_bundled(copied: tuple[Runtime, Path]) -> None:
    staged, root = copied
    assert (root / "bin/e2fsck").is_file()
    assert {"libext2fs.so.2", "libcom_err.so.2", "libe2p.so.2"} <= set(staged.libraries)


def test_e2fsck_checks_an_ext4_image_with_only_bundled_libraries(
    copied: tuple[Runtime, Path], tmp_path: Path
) -> None:
    need_tools("mkfs.ext4")
    _, root = copied
    img = tmp_path / "rw.img"
    img.write_bytes(b"")
    mkfs_ext4(img, offset=0, size=16 << 20, label="t", epoch=EPOCH)
    clean = e2fsck(root, "-p", str(img))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "clean" in clean.stdout
    # the libraries it loads are the runtime's (ld.so lists them, without running e2fsck)
    listed = subprocess.run(
        [str(root / "lib/ld-linux-x86-64.so.2"), "--list", "--library-path", str(root / "lib"),
         str(root / "bin/e2fsck")],
        env={}, capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    libs = [ln.split("=>")[1].split()[0] for ln in listed.splitlines() if "=>" in ln]
    assert libs and all(lib.startswith(str(root)) for lib in libs), listed
