"""The MBR partition table, read and written from Python (no root, no loop device, no fdisk).

Only the four primary entries at byte 446 and the 0x55AA signature are touched; the boot
code before them (GRUB's isohybrid MBR) is kept. Positions are in 512-byte sectors; the
CHS fields are set to the "use LBA" values (0xFE 0xFF 0xFF) that every current firmware
and Linux accept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from overlayboot.errors import OverlaybootError

SECTOR = 512
TABLE_OFFSET = 446
ENTRY = struct.Struct("<B3sB3sII")
SIGNATURE = b"\x55\xaa"
CHS_LBA = b"\xfe\xff\xff"
TYPE_LINUX = 0x83
TYPE_GPT_PROTECTIVE = 0xEE


class MbrError(OverlaybootError):
    """No MBR, no free slot, or a partition that would overlap another."""


@dataclass(frozen=True)
class Partition:
    """One primary partition: slot 1-4, type byte, first sector, sector count."""

    slot: int
    type: int
    start: int
    sectors: int
    bootable: bool = False

    @property
    def end(self) -> int:
        """The first sector after the partition."""
        return self.start + self.sectors

    def overlaps(self, other: Partition) -> bool:
        return self.start < other.end and other.start < self.end


def read_table(sector0: bytes) -> list[Partition]:
    """The used primary partitions of an MBR (the first 512 bytes of a disk)."""
    if len(sector0) < SECTOR or sector0[510:512] != SIGNATURE:
        raise MbrError("no MBR partition table (no 0x55AA signature)")
    parts = []
    for i in range(4):
        off = TABLE_OFFSET + i * ENTRY.size
        status, _, ptype, _, start, sectors = ENTRY.unpack_from(sector0, off)
        if ptype != 0 or sectors != 0:
            parts.append(Partition(i + 1, ptype, start, sectors, status == 0x80))
    return parts


def free_slot(parts: list[Partition]) -> int:
    """The first unused slot, or an :class:`MbrError`."""
    used = {p.slot for p in parts}
    for slot in range(1, 5):
        if slot not in used:
            return slot
    raise MbrError("the MBR has no free slot for another partition")


def add_partition(sector0: bytes, part: Partition) -> bytes:
    """``sector0`` with ``part`` written into its slot; refuses overlaps and GPT disks."""
    parts = read_table(sector0)
    if any(p.type == TYPE_GPT_PROTECTIVE for p in parts):
        raise MbrError("the disk has a GPT (protective MBR): not handled here")
    for p in parts:
        if p.slot == part.slot:
            raise MbrError(f"MBR slot {part.slot} is already used")
        if p.overlaps(part):
            raise MbrError(
                f"partition {part.slot} (sectors {part.start}-{part.end - 1}) would overlap "
                f"partition {p.slot} (sectors {p.start}-{p.end - 1})"
            )
    if part.start >= 1 << 32 or part.sectors >= 1 << 32:
        raise MbrError("a partition beyond 2 TiB does not fit an MBR")
    entry = ENTRY.pack(
        0x80 if part.bootable else 0, CHS_LBA, part.type, CHS_LBA, part.start, part.sectors
    )
    off = TABLE_OFFSET + (part.slot - 1) * ENTRY.size
    return sector0[:off] + entry + sector0[off + ENTRY.size : SECTOR] + sector0[SECTOR:]


def remove_partition(sector0: bytes, slot: int) -> bytes:
    """``sector0`` with slot ``slot`` emptied (to write it again with another size)."""
    read_table(sector0)  # an MBR, or an MbrError
    off = TABLE_OFFSET + (slot - 1) * ENTRY.size
    return sector0[:off] + bytes(ENTRY.size) + sector0[off + ENTRY.size :]


def new_table(disk_id: int) -> bytes:
    """An empty MBR (no boot code) with a disk identifier."""
    sector = bytearray(SECTOR)
    struct.pack_into("<I", sector, 440, disk_id & 0xFFFFFFFF)
    sector[510:512] = SIGNATURE
    return bytes(sector)
