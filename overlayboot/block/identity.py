"""Which base a store belongs to: the base's size and a sampled SHA-256 of its bytes.

The digest covers the size (8 bytes, little-endian), the first and the last MiB and 256
samples of 4 KiB evenly spread between them: about 3 MiB read, whatever the base's size,
so attaching a store over a CD or a network export does not read the whole image at every
boot. A filesystem that was ever written records it in its first MiB (ext2/3/4, FAT and
XFS keep their super block, mount count and times there), and any rebuilt image has a new
UUID there too; a change that misses every sample and keeps the size is not seen (README
"Block-level mode": the base must be read-only).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

MiB = 1 << 20
SAMPLES = 256
SAMPLE = 4096


@dataclass(frozen=True)
class BaseIdentity:
    size: int
    digest: bytes

    def short(self) -> str:
        return self.digest.hex()[:16]


def _read_at(fd: int, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` (fewer only at the end of the base)."""
    out = bytearray()
    while len(out) < size:
        piece = os.pread(fd, size - len(out), offset + len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


def base_size(fd: int) -> int:
    """The size of a base file or block device."""
    return os.lseek(fd, 0, os.SEEK_END)


def identify(fd: int) -> BaseIdentity:
    """The identity of the base open at ``fd``."""
    size = base_size(fd)
    h = hashlib.sha256(size.to_bytes(8, "little"))
    if size <= 2 * MiB + SAMPLES * SAMPLE:
        h.update(_read_at(fd, 0, size))
        return BaseIdentity(size, h.digest())
    h.update(_read_at(fd, 0, MiB))
    span = size - 2 * MiB - SAMPLE
    for i in range(SAMPLES):
        h.update(_read_at(fd, MiB + span * i // (SAMPLES - 1), SAMPLE))
    h.update(_read_at(fd, size - MiB, MiB))
    return BaseIdentity(size, h.digest())
