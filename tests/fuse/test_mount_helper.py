"""``mount -t fuse.overlayboot`` with the kernel's option syntax, as an fstab entry would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mounts import have_fuse, umount, wait_mounted

pytestmark = [pytest.mark.fuse, pytest.mark.skipif(not have_fuse(), reason="needs root + FUSE")]

HELPER = Path("/sbin/mount.fuse.overlayboot")


def test_mount_t_fuse_overlayboot(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "mount.fuse.overlayboot"
    if not script.exists():
        pytest.skip("package not installed with its scripts")
    if HELPER.exists() and os.path.realpath(HELPER) != os.path.realpath(script):
        pytest.skip(f"{HELPER} belongs to another install")
    for d in ("l", "u", "w", "m"):
        (tmp_path / d).mkdir()
    (tmp_path / "l" / "f").write_text("from lower\n")
    HELPER.unlink(missing_ok=True)
    HELPER.symlink_to(script)
    mnt = tmp_path / "m"
    try:
        opts = f"lowerdir={tmp_path}/l,upperdir={tmp_path}/u,workdir={tmp_path}/w"
        subprocess.run(
            ["mount", "-t", "fuse.overlayboot", "overlay", str(mnt), "-o", opts], check=True
        )
        wait_mounted(mnt)
        info = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE,OPTIONS", str(mnt)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert info.split()[0] == "fuse.overlayboot"
        assert "allow_other" in info and "nosuid" not in info and "nodev" not in info
        assert (mnt / "f").read_text() == "from lower\n"
        (mnt / "g").write_text("new\n")
        assert (tmp_path / "u" / "g").read_text() == "new\n"
    finally:
        umount(mnt)
        HELPER.unlink(missing_ok=True)
    shutil.rmtree(tmp_path / "w", ignore_errors=True)
