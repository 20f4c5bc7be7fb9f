"""Boot media made for the tests with the real tools: a busybox root tree, a plain ISO9660
CD, an ext4 image."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

ROOT_DIRS = ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp")


def busybox_tree(
    root: Path, applets: Iterable[str], init: str, release: str, dirs: Iterable[str] = ()
) -> Path:
    """A tiny root at ``root``: busybox with ``applets`` linked to it, ``init`` as /sbin/init,
    ``release`` in /etc/release, and the usual top directories plus ``dirs``."""
    for d in (*ROOT_DIRS, *dirs):
        (root / d).mkdir(parents=True, exist_ok=True)
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is needed"
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in applets:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "sbin" / "init").write_text(init)
    (root / "sbin" / "init").chmod(0o755)
    (root / "etc" / "release").write_text(release)
    return root


def plain_iso(tree: Path, dest: Path, label: str = "OVERLAYBOOT") -> Path:
    """An ISO9660 image of ``tree`` with volume ``label`` (no boot loader: QEMU gets -kernel)."""
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-V", label, "-o", str(dest), str(tree)],
        check=True,
        capture_output=True,
    )
    return dest


def ext4_image(path: Path, size: str = "64M", label: str = "overlayboot-rw") -> Path:
    """An empty ext4 filesystem image (a persistence partition), made without root."""
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, str(path), size], check=True)
    return path
