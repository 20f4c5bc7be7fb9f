"""What is on a block device: filesystem type, label and UUID, read from its superblock.

Used by the boot flow to say what it saw when the medium it looks for is not
there (busybox has ``findfs`` but no ``blkid``), to pick a partition over its whole
disk when both carry the label (``--find``), and by ``overlayboot status``.
Knows iso9660, ext2/3/4, vfat and squashfs; reads 64 KiB of each device.
"""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

SYS_BLOCK = Path("/sys/class/block")


@dataclass(frozen=True)
class Probe:
    """A device and what its first sectors say it holds."""

    device: str
    size: int
    fstype: str | None
    label: str | None
    uuid: str | None

    def line(self) -> str:
        parts = [f"  {self.device:<12}", f"{self.fstype or '-':<9}"]
        if self.label:
            parts.append(f"LABEL={self.label}")
        if self.uuid:
            parts.append(f"UUID={self.uuid}")
        parts.append(f"({human(self.size)})")
        return " ".join(parts)


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _text(raw: bytes) -> str | None:
    value = raw.split(b"\0", 1)[0].decode("latin-1").strip()
    return value or None


def identify(head: bytes) -> tuple[str | None, str | None, str | None]:
    """(fstype, label, uuid) from the first 64 KiB of a device or image."""
    if head[:4] == b"hsqs":
        return "squashfs", None, None
    if head[32769:32774] == b"CD001":
        return "iso9660", _text(head[32808:32840]), None
    if len(head) >= 1024 + 136 and head[1024 + 56 : 1024 + 58] == b"\x53\xef":
        sb = head[1024:]
        compat_journal = int.from_bytes(sb[92:96], "little") & 0x4
        incompat = int.from_bytes(sb[96:100], "little")
        kind = "ext4" if incompat & 0x2C0 else ("ext3" if compat_journal else "ext2")
        return kind, _text(sb[120:136]), str(uuid.UUID(bytes=bytes(sb[104:120])))
    if head[510:512] == b"\x55\xaa":
        if head[82:87] == b"FAT32":
            return "vfat", _text(head[71:82]), f"{int.from_bytes(head[67:71], 'little'):08X}"
        if head[54:59] in (b"FAT12", b"FAT16"):
            return "vfat", _text(head[43:54]), f"{int.from_bytes(head[39:43], 'little'):08X}"
    return None, None, None


def probe(device: str) -> Probe:
    name = os.path.basename(device)
    try:
        size = int((SYS_BLOCK / name / "size").read_text()) * 512
    except (OSError, ValueError):
        size = 0
    try:
        with open(device, "rb") as f:
            head = f.read(65536)
    except OSError:
        return Probe(device, size, None, None, None)
    return Probe(device, size, *identify(head))


def probe_all() -> list[Probe]:
    if not SYS_BLOCK.is_dir():
        return []
    out = []
    for entry in sorted(SYS_BLOCK.iterdir()):
        if entry.name.startswith(("ram", "loop", "zram")) and not (entry / "loop").exists():
            continue
        out.append(probe(f"/dev/{entry.name}"))
    return out


def is_partition(name: str) -> bool:
    return (SYS_BLOCK / name / "partition").exists()


def has_partition_table(sector0: bytes) -> bool:
    """True if SECTOR0 is an MBR (or GPT's protective MBR) with at least one entry in use."""
    if len(sector0) < 512 or sector0[510:512] != b"\x55\xaa":
        return False
    return any(sector0[446 + 16 * i + 4] != 0 for i in range(4))


def partitions_pending(name: str) -> bool:
    """True if whole disk NAME has a partition table the kernel will scan, and none of its
    partitions have shown up yet."""
    try:
        ext_range = int((SYS_BLOCK / name / "ext_range").read_text())
        with open(f"/dev/{name}", "rb") as f:
            sector0 = f.read(512)
    except (OSError, ValueError):
        return False
    if ext_range <= 1 or not has_partition_table(sector0):
        return False
    return not any(is_partition(child.name) for child in (SYS_BLOCK / name).glob(name + "*"))


def find(tag: str, value: str) -> str | None:
    """The device whose TAG (LABEL or UUID) is VALUE; a partition wins over its whole disk
    (a hybrid ISO on a USB stick carries the label on both, and a mounted whole disk keeps
    its partitions from being mounted). A whole disk whose partitions may still appear is
    returned as ``"whole DEV"`` so that the caller waits a little for them."""
    whole = None
    for p in probe_all():
        if (p.label if tag == "LABEL" else p.uuid) != value:
            continue
        name = os.path.basename(p.device)
        if is_partition(name):
            return p.device
        whole = whole or name
    if whole is None:
        return None
    return f"whole /dev/{whole}" if partitions_pending(whole) else f"/dev/{whole}"


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--find" and "=" in sys.argv[2]:
        tag, value = sys.argv[2].split("=", 1)
        dev = find(tag.upper(), value)
        if dev is None:
            return 1
        print(dev)
        return 0
    found = probe_all()
    if not found:
        print("  (no block devices)")
    for p in found:
        print(p.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
