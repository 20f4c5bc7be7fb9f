"""Filesystem type, label and UUID from superblocks, on real images made by the real tools."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from overlayboot.probe import identify, probe


def head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(65536)


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs")
def test_ext4(tmp_path: Path) -> None:
    img = tmp_path / "p.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-L", "overlayboot-rw", "-U", "0f0e0d0c-0b0a-0908-0706-050403020100",
         str(img), "8M"],
        check=True,
    )  # fmt: skip
    assert identify(head(img)) == ("ext4", "overlayboot-rw", "0f0e0d0c-0b0a-0908-0706-050403020100")
    p = probe(str(img))
    assert "LABEL=overlayboot-rw" in p.line()


@pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="needs squashfs-tools")
def test_squashfs(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    img = tmp_path / "s.img"
    subprocess.run(["mksquashfs", str(tmp_path / "d"), str(img), "-quiet", "-noappend"], check=True)
    assert identify(head(img)) == ("squashfs", None, None)


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="needs xorriso")
def test_iso9660(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    img = tmp_path / "c.iso"
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-V", "OVERLAYBOOT", "-o", str(img), str(tmp_path / "d")],
        check=True,
        capture_output=True,
    )
    assert identify(head(img))[:2] == ("iso9660", "OVERLAYBOOT")


@pytest.mark.skipif(shutil.which("mkfs.vfat") is None, reason="needs dosfstools")
def test_vfat(tmp_path: Path) -> None:
    img = tmp_path / "v.img"
    img.write_bytes(b"\0" * (8 << 20))
    subprocess.run(["mkfs.vfat", "-n", "EFIBOOT", "-i", "1234ABCD", str(img)], check=True,
                   capture_output=True)  # fmt: skip
    assert identify(head(img)) == ("vfat", "EFIBOOT", "1234ABCD")


def test_unknown() -> None:
    assert identify(b"\0" * 65536) == (None, None, None)
