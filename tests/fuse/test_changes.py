"""``overlayboot persistence inspect|export`` on an upper written through a real overlayboot
mount (copy-up, whiteout, opaque directory, partial copy-up, new file), laid out as on a
persistence partition; then offline from an ext4 image of that partition (loop, root)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mounts import have_fuse, overlay_mount

pytestmark = pytest.mark.fuse

IMAGE_ID = "0123456789abcdef0123456789abcdef"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overlayboot", "persistence", *args], capture_output=True, text=True
    )


@pytest.fixture
def partition(tmp_path: Path) -> tuple[Path, Path]:
    """(the partition's root, the lower) after one session of changes."""
    if not have_fuse():
        pytest.skip("needs root and /dev/fuse")
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc/a").write_text("old\n")
    (lower / "etc/gone").write_text("bye\n")
    (lower / "dir").mkdir()
    (lower / "dir/x").write_text("x\n")
    (lower / "big").write_bytes(bytes(range(256)) * 8192)  # 2 MiB: a partial copy-up
    root = tmp_path / "part"
    base = root / "overlayboot/OVERLAYBOOT"
    image = base / "images" / IMAGE_ID
    with overlay_mount(
        "overlayboot", [lower], image / "upper", image / "work", tmp_path / "m"
    ) as m:
        (m / "etc/a").write_text("new\n")
        (m / "etc/gone").unlink()
        (m / "dir/x").unlink()
        (m / "dir").rmdir()
        (m / "dir").mkdir()
        (m / "new").write_text("added\n")
        with open(m / "big", "r+b") as f:
            f.seek(1 << 20)
            f.write(b"\xff" * 4096)
    (base / "image-id").write_text(IMAGE_ID + "\n")
    return root, lower


def check_listing(out: str) -> None:
    lines = out.splitlines()
    assert any(line.startswith("changed ") and line.endswith(" /etc/a") for line in lines), out
    assert any(line.startswith("deleted ") and line.endswith(" /etc/gone") for line in lines), out
    assert any(line.startswith("replaced") and " /dir/  (opaque" in line for line in lines), out
    assert any(line.startswith("added ") and line.endswith(" /new") for line in lines), out
    partial = [line for line in lines if line.startswith("partial ")]
    assert len(partial) == 1 and "/big  (1 of 32 chunks copied up, size 2097152)" in partial[0]
    assert partial[0].split()[1] == "65,536", out  # one 64 KiB chunk, not 2 MiB
    assert (
        lines[-1]
        == "1 partial, 1 replaced, 1 changed, 1 deleted, 1 added; 65,546 bytes in the upper"
    )


def test_inspect_and_export_online(partition: tuple[Path, Path], tmp_path: Path) -> None:
    root, lower = partition
    r = cli("inspect", str(root), "--lower", str(lower))
    assert r.returncode == 0, r.stderr
    check_listing(r.stdout)
    # without the lower, the copy-up origin tells a changed file from an added one
    assert cli("inspect", str(root)).stdout == r.stdout
    archive = tmp_path / "changes.tar"
    r = cli("export", str(root), str(archive), "--image", IMAGE_ID[:6])
    assert r.returncode == 0, r.stderr
    into = tmp_path / "unpacked"
    into.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-C", str(into), "-xf", str(archive)],
                   check=True)  # fmt: skip
    gone = os.lstat(into / "etc/gone")
    assert (gone.st_mode & 0o170000) == 0o020000 and gone.st_rdev == 0  # the whiteout
    assert os.getxattr(into / "dir", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(into / "big", "trusted.overlayboot.chunks")


def test_inspect_offline_from_an_image(partition: tuple[Path, Path], tmp_path: Path) -> None:
    root, lower = partition
    img = tmp_path / "rw.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(img), "32M"], check=True)
    r = cli("inspect", str(img), "--lower", str(lower))
    assert r.returncode == 0, r.stderr
    check_listing(r.stdout)
    assert (
        "overlayboot-inspect-"
        not in subprocess.run(
            ["cat", "/proc/mounts"], capture_output=True, text=True, check=True
        ).stdout
    )
    bad = cli("inspect", str(root), "--image", "ffff")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
