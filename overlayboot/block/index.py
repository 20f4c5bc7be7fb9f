"""The index in memory: chunk -> slot and the CRC-32 of its data, read from and committed
to double-buffered pages.

Each index page has two copies on disk; ``current[p]`` is the copy that holds the last
committed version of page ``p`` (-1: neither copy is valid yet). A commit writes every
changed page over its *other* copy with the new sequence number, and the store syncs data
and pages together, once. So after a crash the newest copy of a page may name data that
never reached the disk: a copy newer than the super block's *durable* sequence number
counts only if the data of every entry it changed (against the other copy) matches its
CRC; otherwise the other copy counts (the slots it names were not reused: a slot becomes
free only once the commit that left it is durable).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable

from overlayboot.block.format import (
    ENTRIES_PER_PAGE,
    PAGE,
    PageCopy,
    Super,
    pack_page,
    page_offset,
    unpack_page,
)

NONE = 0  # a slot entry of 0: the chunk is the base's
ZERO = 0xFFFFFFFF  # a slot entry of 2**32 - 1: the chunk reads as zeros (discarded), no slot

Verify = Callable[[int, int, int], bool]
"""(chunk, slot, crc) -> whether the slot holds data with that CRC."""


def _changed(newer: PageCopy, older: PageCopy | None) -> list[int]:
    """The entries ``newer`` maps differently from ``older`` (all it maps, without one)."""
    if older is None:
        return [i for i, s in enumerate(newer.slots) if s not in (NONE, ZERO)]
    return [
        i
        for i, (s, c) in enumerate(zip(newer.slots, newer.crcs, strict=True))
        if s not in (NONE, ZERO) and (s != older.slots[i] or c != older.crcs[i])
    ]


def choose(copies: list[PageCopy], page: int, durable: int, verify: Verify) -> PageCopy | None:
    """The copy of ``page`` that counts (see the module's doc); None: neither."""
    copies = sorted(copies, key=lambda c: c.seq, reverse=True)
    base = page * ENTRIES_PER_PAGE
    for k, copy in enumerate(copies):
        if copy.seq <= durable:
            return copy
        older = copies[k + 1] if k + 1 < len(copies) else None
        changed = _changed(copy, older)
        if all(verify(base + i, copy.slots[i] - 1, copy.crcs[i]) for i in changed):
            return copy
    return None


class Index:
    """chunk -> slot + 1 (0: unmapped) and CRC, the pages changed since the last commit,
    the current copy of each page and the highest sequence number seen."""

    def __init__(self, sb: Super) -> None:
        self.pages = sb.index_pages
        self.chunks = sb.chunks
        self.entries = array("I", bytes(4 * self.pages * ENTRIES_PER_PAGE))
        self.crcs = array("I", bytes(4 * self.pages * ENTRIES_PER_PAGE))
        self.current = array("b", [-1] * self.pages)
        self.seq = 0
        self.dirty: set[int] = set()
        self.mapped = 0
        self.rejected: list[tuple[int, int]] = []  # (page, copy): newer copies not counted

    @classmethod
    def load(cls, fd: int, sb: Super, verify: Verify) -> Index:
        """Read both copies of every page and keep the one that counts."""
        index = cls(sb)
        for p in range(index.pages):
            raw = os.pread(fd, 2 * PAGE, page_offset(p, 0))
            copies = [
                c
                for c in (unpack_page(raw[k * PAGE : (k + 1) * PAGE], p, k) for k in (0, 1))
                if c is not None
            ]
            index.seq = max([index.seq, *(c.seq for c in copies)])
            chosen = choose(copies, p, sb.durable, verify)
            index.rejected += [(p, c.copy) for c in copies if chosen is None or c.seq > chosen.seq]
            if chosen is None:
                continue
            index.current[p] = chosen.copy
            start = p * ENTRIES_PER_PAGE
            index.entries[start : start + ENTRIES_PER_PAGE] = array("I", chosen.slots)
            index.crcs[start : start + ENTRIES_PER_PAGE] = array("I", chosen.crcs)
        for i in range(index.chunks, len(index.entries)):  # past the last chunk: never used
            index.entries[i] = NONE
        index.mapped = sum(1 for e in index.entries if e)
        return index

    def slot(self, chunk: int) -> int | None:
        """The chunk's slot; None: it has none (the base's, or zeros)."""
        entry = self.entries[chunk]
        return entry - 1 if entry not in (NONE, ZERO) else None

    def is_zero(self, chunk: int) -> bool:
        return self.entries[chunk] == ZERO

    def set_zero(self, chunk: int) -> None:
        """The chunk reads as zeros from now on (a discard): no slot, no CRC."""
        if not self.entries[chunk]:
            self.mapped += 1
        self.entries[chunk] = ZERO
        self.crcs[chunk] = 0
        self.dirty.add(chunk // ENTRIES_PER_PAGE)

    def set(self, chunk: int, slot: int, crc: int = 0) -> None:
        if not self.entries[chunk]:
            self.mapped += 1
        self.entries[chunk] = slot + 1
        self.crcs[chunk] = crc
        self.dirty.add(chunk // ENTRIES_PER_PAGE)

    def set_crc(self, chunk: int, crc: int) -> None:
        if self.crcs[chunk] != crc:
            self.crcs[chunk] = crc
            self.dirty.add(chunk // ENTRIES_PER_PAGE)

    def used_slots(self) -> list[int]:
        return [e - 1 for e in self.entries if e not in (NONE, ZERO)]

    def write_dirty(self, fd: int) -> list[int]:
        """Write every changed page over its other copy with a new sequence number (not
        synced: the caller syncs, then calls :meth:`committed`); return the pages written."""
        self.seq += 1
        pages = sorted(self.dirty)
        for p in pages:
            start, end = p * ENTRIES_PER_PAGE, (p + 1) * ENTRIES_PER_PAGE
            data = pack_page(p, self.seq, self.entries[start:end], self.crcs[start:end])
            os.pwrite(fd, data, page_offset(p, self._other(p)))
        return pages

    def _other(self, page: int) -> int:
        return 1 if self.current[page] == 0 else 0

    def committed(self, pages: list[int]) -> None:
        """The pages written by :meth:`write_dirty` are durable: they are current now."""
        for p in pages:
            self.current[p] = self._other(p)
            self.dirty.discard(p)
