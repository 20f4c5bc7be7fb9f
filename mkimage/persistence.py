"""Persistence partitions: an ext4 filesystem labelled for ``overlayboot.upper=LABEL=...``.

``mkfs_ext4`` makes the filesystem inside an image file at a byte offset (``mkfs.ext4 -E
offset=``), so a partition of a disk image needs neither root nor a loop device; its UUID,
hash seed and times are derived from ``SOURCE_DATE_EPOCH`` so that images are
reproducible. ``create_persistence`` makes a standalone one: on a block device (a
partition of a stick), or as an image file, bare or with an MBR and one partition at 1 MiB.
The boot flow makes its directories (``overlayboot/LABEL/{upper,work}``) at first use.
"""

from __future__ import annotations

import os
import re
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from mkimage import mbr
from mkimage.atomic import atomic_output
from overlayboot import mounttable
from overlayboot.errors import OverlaybootError, UsageError
from overlayboot.run import run, which

DEFAULT_LABEL = "overlayboot-rw"
DEFAULT_SIZE = 256 << 20
ALIGN = 1 << 20  # partitions start on a MiB
MIN_SIZE = 8 << 20
_SIZE_RE = re.compile(r"(\d+)\s*([KMGT]?)(i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_LABEL_RE = re.compile(r"[A-Za-z0-9_.-]{1,16}")


class PersistenceError(OverlaybootError):
    """The persistence partition or image cannot be made."""


@dataclass(frozen=True)
class Ext4:
    """An ext4 filesystem made in an image file or on a device."""

    path: Path
    offset: int  # bytes
    size: int  # bytes
    label: str
    uuid: str


def parse_size(text: str) -> int:
    """``256M``, ``1G``, ``512MiB``, ``1048576`` -> bytes (powers of two)."""
    m = _SIZE_RE.fullmatch(text.strip())
    if not m:
        raise UsageError(f"bad size {text!r}", "use e.g. 256M or 1G")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def check_label(label: str) -> str:
    if not _LABEL_RE.fullmatch(label):
        raise UsageError(f"bad ext4 label {label!r}", "use 1-16 characters of A-Z a-z 0-9 _ . -")
    return label


def align_up(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to


def fs_uuid(label: str, epoch: int, salt: str = "") -> str:
    """A UUID that depends only on the label, the epoch and ``salt``."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"overlayboot:{label}:{epoch}:{salt}"))


def mkfs_ext4(path: Path, *, offset: int, size: int, label: str, epoch: int) -> Ext4:
    """An ext4 of ``size`` bytes at byte ``offset`` of ``path`` (a file or a device)."""
    check_label(label)
    if size < MIN_SIZE:
        raise UsageError(f"a persistence partition of {size} bytes is too small", "use 8M or more")
    which("mkfs.ext4")
    ident = fs_uuid(label, epoch, str(size))
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(epoch), SOURCE_DATE_EPOCH=str(epoch))
    extended = [f"hash_seed={ident}", "lazy_itable_init=0", "root_owner=0:0"]
    if offset:
        extended.insert(0, f"offset={offset}")
    run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", label, "-U", ident, "-m", "0",
         "-E", ",".join(extended), str(path), f"{size // 1024}k"],
        env=env,
    )  # fmt: skip
    return Ext4(path, offset, size, label, ident)


def _is_block(path: Path) -> bool:
    try:
        return stat.S_ISBLK(path.stat().st_mode)
    except OSError:
        return False


def _mounted(device: Path) -> bool:
    real = os.path.realpath(device)
    return any(os.path.realpath(m.source) == real for m in mounttable.mounts())


def create_persistence(
    target: Path,
    *,
    size: int = DEFAULT_SIZE,
    label: str = DEFAULT_LABEL,
    table: bool = False,
    force: bool = False,
    epoch: int = 0,
) -> Ext4:
    """A persistence filesystem on the block device ``target``, or as an image file there.

    An image file is a bare ext4 (``table=False``: mount it, or ``dd`` it to a partition)
    or a disk image with an MBR and one Linux partition at 1 MiB (``table=True``). An
    existing file or a device holding a filesystem is overwritten only with ``force``.
    """
    check_label(label)
    if _is_block(target):
        if _mounted(target):
            raise PersistenceError(f"{target} is mounted")
        if not force:
            probe = run(["blkid", "-o", "value", "-s", "TYPE", str(target)], check=False)
            if probe.stdout.strip():
                kind = probe.stdout.decode().strip()
                raise PersistenceError(
                    f"{target} holds a {kind} filesystem", "give --force to overwrite it"
                )
        return mkfs_ext4(target, offset=0, size=_device_size(target), label=label, epoch=epoch)
    if target.exists() and not target.is_file():
        raise PersistenceError(f"{target} is neither a block device nor a regular file")
    if target.exists() and not force:
        raise PersistenceError(f"{target} exists", "give --force to overwrite it")
    size = align_up(size)
    with atomic_output(target) as tmp:
        if table:
            offset = ALIGN
            with open(tmp, "wb") as f:
                f.truncate(offset + size)
                sector0 = mbr.new_table(int(fs_uuid(label, epoch)[:8], 16))
                part = mbr.Partition(1, mbr.TYPE_LINUX, offset // mbr.SECTOR, size // mbr.SECTOR)
                f.write(mbr.add_partition(sector0, part))
        else:
            offset = 0
            with open(tmp, "wb") as f:
                f.truncate(size)
        fs = mkfs_ext4(tmp, offset=offset, size=size, label=label, epoch=epoch)
    return Ext4(target, fs.offset, fs.size, fs.label, fs.uuid)


def _device_size(device: Path) -> int:
    fd = os.open(device, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
