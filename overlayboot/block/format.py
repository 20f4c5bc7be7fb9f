"""The block store's on-disk format: the super block and the index pages, bytes <-> records.

Layout of a store file (all integers little-endian; README "Block-level mode")::

    0       super block, copy A (one 512-byte sector)
    512     super block, copy B (the same bytes; a reader takes the first valid copy)
    4096    index: N page pairs, pair p at 4096 + p * 8192 (copy 0, then copy 1)
    D       data: slot s at D + s * chunk_size (D = the end of the index, chunk aligned)

An index page maps ENTRIES_PER_PAGE chunks to slots, each with the CRC-32 of its data; of
the two copies of a page the valid one (magic, page number, CRC) with the higher sequence
number counts, if its sequence number is at most the super block's *durable* one (a
commit whose sync returned) or the data of every entry it changed matches its CRC. A
commit writes each changed page over its other copy, so a torn or unfinished commit leaves
the last durable one.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

MAGIC = b"OBBLKCOW"
VERSION = 1
SECTOR = 512
PAGE = 4096
INDEX_OFFSET = 4096
MIN_CHUNK_SHIFT = 12  # 4 KiB
MAX_CHUNK_SHIFT = 20  # 1 MiB
DIGEST_SIZE = 32
MAX_HINT = 400  # bytes of the base path recorded as a hint

# magic, version, chunk shift, state, reserved, base size, digest, max store size,
# index pages, data offset, created, durable sequence, hint length
_SUPER = struct.Struct("<8sHBBIQ32sQQQQQH")
_SUPER_CRC_AT = SECTOR - 4

PAGE_MAGIC = b"OBIX"
_PAGE_HEAD = struct.Struct("<4sIQI")  # magic, page number, sequence, reserved
ENTRIES_PER_PAGE = (PAGE - _PAGE_HEAD.size - 4) // 8  # 509 (slot, CRC) pairs, then the CRC
_ENTRIES = struct.Struct(f"<{2 * ENTRIES_PER_PAGE}I")


class FormatError(ValueError):
    """Bytes that are not a valid super block or index page."""


class State(IntEnum):
    CLEAN = 0  # detached after a last commit
    DIRTY = 1  # attached (or its daemon died): writes after the last flush may be lost


@dataclass(frozen=True)
class Super:
    """The super block: what the store is for and where its parts are."""

    chunk_shift: int
    base_size: int
    base_digest: bytes
    index_pages: int
    data_offset: int
    max_size: int = 0  # 0: no limit but the disk's
    created: int = 0
    base_hint: str = ""
    durable: int = 0  # the sequence number of the last commit known durable
    state: State = State.CLEAN
    version: int = VERSION

    @property
    def chunk_size(self) -> int:
        return 1 << self.chunk_shift

    @property
    def chunks(self) -> int:
        return -(-self.base_size // self.chunk_size)

    def slot_offset(self, slot: int) -> int:
        return self.data_offset + slot * self.chunk_size


def layout(base_size: int, chunk_shift: int) -> tuple[int, int]:
    """(index pages, data offset) of a store for a base of ``base_size`` bytes."""
    if not MIN_CHUNK_SHIFT <= chunk_shift <= MAX_CHUNK_SHIFT:
        raise FormatError(f"chunk shift {chunk_shift} is not in 12..20")
    chunks = -(-base_size // (1 << chunk_shift))
    pages = max(1, -(-chunks // ENTRIES_PER_PAGE))
    end = INDEX_OFFSET + 2 * pages * PAGE
    chunk = 1 << chunk_shift
    return pages, -(-end // chunk) * chunk


def pack_super(sb: Super) -> bytes:
    """The super block's two sectors (copy A, copy B)."""
    hint = sb.base_hint.encode()[:MAX_HINT]
    head = _SUPER.pack(
        MAGIC,
        sb.version,
        sb.chunk_shift,
        int(sb.state),
        0,
        sb.base_size,
        sb.base_digest,
        sb.max_size,
        sb.index_pages,
        sb.data_offset,
        sb.created,
        sb.durable,
        len(hint),
    )
    body = (head + hint).ljust(_SUPER_CRC_AT, b"\0")
    sector = body + struct.pack("<I", zlib.crc32(body))
    return sector * 2


def _unpack_sector(sector: bytes) -> Super:
    if len(sector) < SECTOR or sector[:8] != MAGIC:
        raise FormatError("no block store here (bad magic)")
    body = sector[:_SUPER_CRC_AT]
    (crc,) = struct.unpack_from("<I", sector, _SUPER_CRC_AT)
    if zlib.crc32(body) != crc:
        raise FormatError("the super block's checksum is wrong")
    (_, version, shift, state, _, size, digest, max_size, pages, data, created, durable, hlen) = (
        _SUPER.unpack_from(body)
    )
    if version != VERSION:
        raise FormatError(f"store format version {version} (this overlayboot reads {VERSION})")
    if state not in (0, 1) or hlen > MAX_HINT:
        raise FormatError("the super block holds impossible values")
    if (pages, data) != layout(size, shift):
        raise FormatError("the super block's layout does not match its base size")
    hint = body[_SUPER.size : _SUPER.size + hlen].decode(errors="replace")
    return Super(shift, size, digest, pages, data, max_size, created, hint, durable, State(state))


def unpack_super(data: bytes) -> Super:
    """The super block from the store's first two sectors: copy A, or B if A is torn."""
    errors = []
    for copy in (data[:SECTOR], data[SECTOR : 2 * SECTOR]):
        try:
            return _unpack_sector(copy)
        except FormatError as exc:
            errors.append(str(exc))
    raise FormatError(errors[0])


def page_offset(page: int, copy: int) -> int:
    return INDEX_OFFSET + (2 * page + copy) * PAGE


def pack_page(page: int, seq: int, slots: Sequence[int], crcs: Sequence[int]) -> bytes:
    """An index page: ``slots[i]`` is slot + 1 of chunk ``page * ENTRIES_PER_PAGE + i``
    (0: the chunk is the base's), ``crcs[i]`` the CRC-32 of its data."""
    if len(slots) != ENTRIES_PER_PAGE or len(crcs) != ENTRIES_PER_PAGE:
        raise ValueError(f"an index page holds {ENTRIES_PER_PAGE} entries")
    pairs = array("I", bytes(8 * ENTRIES_PER_PAGE))  # interleaved by slice: no Python loop
    pairs[0::2] = array("I", slots)
    pairs[1::2] = array("I", crcs)
    if sys.byteorder != "little":
        pairs.byteswap()
    body = _PAGE_HEAD.pack(PAGE_MAGIC, page, seq, 0) + pairs.tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


@dataclass(frozen=True)
class PageCopy:
    """A valid copy of an index page."""

    seq: int
    copy: int
    slots: tuple[int, ...]
    crcs: tuple[int, ...]


def unpack_page(data: bytes, page: int, copy: int) -> PageCopy | None:
    """Copy ``copy`` of ``page`` if it is valid; None if it is not (never written, torn,
    or another page's)."""
    if len(data) != PAGE or data[:4] != PAGE_MAGIC:
        return None
    (crc,) = struct.unpack_from("<I", data, PAGE - 4)
    if zlib.crc32(data[: PAGE - 4]) != crc:
        return None
    _, number, seq, _ = _PAGE_HEAD.unpack_from(data)
    if number != page:
        return None
    pairs = _ENTRIES.unpack_from(data, _PAGE_HEAD.size)
    return PageCopy(seq, copy, pairs[0::2], pairs[1::2])
