"""Boot media made for the tests with the real tools: a plain ISO9660 CD, an ext4 image."""

from __future__ import annotations

import subprocess
from pathlib import Path


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
