"""The USB stick image: the hybrid ISO, then a persistence partition after it.

The ISO's MBR (mkimage.iso) uses slots 1 (the ISO) and 2 (the ESP); the image is the ISO,
padded to the next MiB, then ``size`` bytes of ext4 labelled ``overlayboot-rw``, entered
in the first free MBR slot (3) as a Linux partition. ``dd`` it to a stick: BIOS and UEFI
boot it as they boot the ISO, and ``overlayboot.upper=LABEL=overlayboot-rw`` (a GRUB menu
entry) keeps the changes on it. No root and no loop device are needed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mkimage import mbr
from mkimage.atomic import atomic_output
from mkimage.persistence import DEFAULT_LABEL, DEFAULT_SIZE, Ext4, align_up, mkfs_ext4
from overlayboot.errors import OverlaybootError


class UsbError(OverlaybootError):
    """The USB image cannot be made from the ISO given."""


@dataclass(frozen=True)
class BuiltUsb:
    path: Path
    size: int
    iso_size: int
    persistence: Ext4
    partition: mbr.Partition


def build_usb(
    iso: Path,
    dest: Path,
    *,
    size: int = DEFAULT_SIZE,
    label: str = DEFAULT_LABEL,
    epoch: int = 0,
) -> BuiltUsb:
    """``iso`` plus a persistence partition of ``size`` bytes, written to ``dest``."""
    if not iso.is_file():
        raise UsbError(f"ISO {iso} does not exist", "run: overlayboot build iso")
    iso_size = iso.stat().st_size
    with open(iso, "rb") as f:
        sector0 = f.read(mbr.SECTOR)
    try:
        parts = mbr.read_table(sector0)
    except mbr.MbrError as exc:
        raise UsbError(f"{iso} is not a hybrid ISO: {exc.message}") from exc
    start = align_up(max([iso_size, *(p.end * mbr.SECTOR for p in parts)]))
    size = align_up(size)
    part = mbr.Partition(mbr.free_slot(parts), mbr.TYPE_LINUX, start // mbr.SECTOR,
                         size // mbr.SECTOR)  # fmt: skip
    table = mbr.add_partition(sector0, part)
    with atomic_output(dest) as tmp:
        shutil.copyfile(iso, tmp)
        with open(tmp, "r+b") as f:
            f.truncate(start + size)
            f.seek(0)
            f.write(table[: mbr.SECTOR])
        fs = mkfs_ext4(tmp, offset=start, size=size, label=label, epoch=epoch)
    return BuiltUsb(
        dest, dest.stat().st_size, iso_size, Ext4(dest, start, size, label, fs.uuid), part
    )
