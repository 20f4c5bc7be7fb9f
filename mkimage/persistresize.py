"""``overlayboot persistence resize``: grow or shrink a persistence filesystem, offline.

The target is what ``persistence create`` makes or a stick holds:

- an image file with a bare ext4 (a persistence *file*): the file is grown, then the
  filesystem (``resize2fs``); or the filesystem shrunk, then the file;
- a disk image whose MBR holds the ext4 as its *last* partition (``build usb``'s stick
  image, ``create --table``): the same, and the partition's entry is rewritten; resize2fs
  runs on a loop device over the partition (root): on a file at an offset it would cut
  the file at the filesystem's size, losing the filesystem's tail;
- a block device (an unmounted partition): the filesystem fills it (no ``--size``; grow
  the partition first with a partitioning tool) or takes ``--size``.

``e2fsck -f`` runs first (resize2fs wants a checked filesystem), on the image at its byte
offset (e2fsprogs' ``FILE?offset=N``): no root and no loop device for a bare file. Shrinking
below what the files need is resize2fs' error, passed on as one line.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mkimage import mbr
from mkimage.persistence import MIN_SIZE, PersistenceError, align_up
from overlayboot import mounttable
from overlayboot.errors import UsageError
from overlayboot.run import run, which


@dataclass(frozen=True)
class Resized:
    """What resize did: the filesystem's size before and after, where it is."""

    path: Path
    offset: int
    old: int
    new: int


def fs_size(spec: str) -> int:
    """The size in bytes of the ext2/3/4 filesystem at ``spec`` (dumpe2fs -h)."""
    out = run(["dumpe2fs", "-h", spec]).stdout.decode()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"])


def _check(spec: str, where: str) -> None:
    fsck = run(["e2fsck", "-f", "-p", spec], check=False)
    if fsck.returncode >= 4:
        raise PersistenceError(
            f"e2fsck found errors on {where} it cannot repair alone", f"run e2fsck -f {spec}"
        )


def _resize2fs(spec: str, size: int | None, where: str) -> None:
    argv = ["resize2fs", spec, *([f"{size >> 10}K"] if size is not None else [])]
    proc = run(argv, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
        why = next((ln for ln in reversed(lines) if ln.strip()), f"exit {proc.returncode}")
        raise PersistenceError(f"resize2fs could not resize {where}: {why.strip()}")


def _last_partition(path: Path, offset: int) -> mbr.Partition:
    with open(path, "rb") as f:
        parts = mbr.read_table(f.read(mbr.SECTOR))
    part = next(p for p in parts if p.start * mbr.SECTOR == offset)
    if any(p.end > part.end for p in parts):
        raise PersistenceError(
            f"the persistence partition of {path} is not its last one: it cannot grow there"
        )
    return part


@contextlib.contextmanager
def _loop(path: Path, offset: int, size: int) -> Iterator[str]:
    """A loop device over ``size`` bytes of ``path`` from ``offset`` (root)."""
    if os.geteuid() != 0:
        raise PersistenceError(
            f"resizing the partition of a disk image ({path}) needs root (a loop device)",
            "run it as root, or resize a bare persistence file",
        )
    argv = ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size)]
    dev = run([*argv, str(path)]).stdout.decode().strip()
    try:
        yield dev
    finally:
        run(["losetup", "-d", dev], check=False)


def _resize_bare(path: Path, size: int) -> int:
    """A bare ext4 file (resize2fs sizes the file itself); returns the old size."""
    old = fs_size(str(path))
    _check(str(path), str(path))
    if size > old:
        os.truncate(path, size)
    _resize2fs(str(path), size, str(path))
    os.truncate(path, size)
    return old


def _resize_partition(path: Path, offset: int, size: int) -> int:
    """The ext4 of a disk image's last MBR partition, through a loop device (resize2fs on a
    file at an offset would cut the file at the filesystem's size); returns the old size."""
    spec = f"{path}?offset={offset}"
    old = fs_size(spec)
    part = _last_partition(path, offset)
    _check(spec, str(path))
    if size > old:
        os.truncate(path, offset + size)
    with _loop(path, offset, max(size, old)) as dev:
        _resize2fs(dev, size, str(path))
    os.truncate(path, offset + size)
    new = mbr.Partition(part.slot, part.type, part.start, size // mbr.SECTOR, part.bootable)
    with open(path, "r+b") as f:
        table = mbr.remove_partition(f.read(mbr.SECTOR), part.slot)
        f.seek(0)
        f.write(mbr.add_partition(table, new))
    return old


def _resize_file(path: Path, offset: int, size: int) -> Resized:
    """An image file: bare ext4 (``offset`` 0) or its last MBR partition."""
    old = _resize_partition(path, offset, size) if offset else _resize_bare(path, size)
    return Resized(path, offset, old, fs_size(f"{path}?offset={offset}" if offset else str(path)))


def resize_persistence(target: Path, size: int | None) -> Resized:
    """Resize the persistence filesystem of ``target`` to ``size`` bytes (a device: None
    fills it)."""
    from overlayboot.images import ext_offset

    for tool in ("e2fsck", "resize2fs", "dumpe2fs"):
        which(tool)
    if not target.exists():
        raise UsageError(f"{target} does not exist", "give an image file or a device")
    if size is not None:
        size = align_up(size)
        if size < MIN_SIZE:
            raise UsageError(f"--size {size >> 20}M is too small (the minimum is 8M)")
    if stat.S_ISBLK(target.stat().st_mode):
        real = os.path.realpath(target)
        if any(os.path.realpath(m.source) == real for m in mounttable.mounts()):
            raise PersistenceError(f"{target} is mounted", "unmount it first (or boot without it)")
        old = fs_size(str(target))
        _check(str(target), str(target))
        _resize2fs(str(target), size, str(target))
        return Resized(target, 0, old, fs_size(str(target)))
    if not target.is_file():
        raise UsageError(f"{target} is neither an image file nor a block device")
    if size is None:
        raise UsageError("give the new size of an image file: --size 1G")
    return _resize_file(target, ext_offset(target), size)
