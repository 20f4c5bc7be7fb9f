"""The index in memory: chunk -> slot, read from and committed to double-buffered pages.

Each index page has two copies on disk; ``current[p]`` is the copy that holds the last
committed version of page ``p`` (-1: neither copy is valid yet). A commit writes every
changed page over its *other* copy with the new sequence number; only once that is
durable (the store's ``fdatasync``) does :meth:`Index.committed` make it current. So a
crash during a commit leaves each page whole: its last committed version, or the new one.
"""

from __future__ import annotations

import os
from array import array

from overlayboot.block.format import ENTRIES_PER_PAGE, PAGE, Super, pack_page, page_offset
from overlayboot.block.format import unpack_page as _unpack_page

NONE = 0  # an entry of 0: the chunk is the base's


class Index:
    """chunk -> slot + 1 (0: unmapped), the pages changed since the last commit, the
    current copy of each page and the highest sequence number seen."""

    def __init__(self, sb: Super) -> None:
        self.pages = sb.index_pages
        self.chunks = sb.chunks
        self.entries = array("I", bytes(4 * self.pages * ENTRIES_PER_PAGE))
        self.current = array("b", [-1] * self.pages)
        self.seq = 0
        self.dirty: set[int] = set()
        self.mapped = 0

    @classmethod
    def load(cls, fd: int, sb: Super) -> Index:
        """Read both copies of every page and keep the valid one with the higher sequence."""
        index = cls(sb)
        for p in range(index.pages):
            raw = os.pread(fd, 2 * PAGE, page_offset(p, 0))
            best: tuple[int, int, tuple[int, ...]] | None = None
            for copy in (0, 1):
                found = _unpack_page(raw[copy * PAGE : (copy + 1) * PAGE], p)
                if found is not None and (best is None or found[0] > best[0]):
                    best = (found[0], copy, found[1])
            if best is None:
                continue
            seq, copy, entries = best
            index.current[p] = copy
            index.seq = max(index.seq, seq)
            start = p * ENTRIES_PER_PAGE
            index.entries[start : start + ENTRIES_PER_PAGE] = array("I", entries)
        index._trim()
        index.mapped = sum(1 for e in index.entries if e)
        return index

    def _trim(self) -> None:
        """Entries past the last chunk are never used (a corrupt page could set them)."""
        for i in range(self.chunks, len(self.entries)):
            self.entries[i] = NONE

    def slot(self, chunk: int) -> int | None:
        entry = self.entries[chunk]
        return entry - 1 if entry else None

    def set(self, chunk: int, slot: int) -> None:
        if not self.entries[chunk]:
            self.mapped += 1
        self.entries[chunk] = slot + 1
        self.dirty.add(chunk // ENTRIES_PER_PAGE)

    def used_slots(self) -> list[int]:
        return [e - 1 for e in self.entries if e]

    def write_dirty(self, fd: int) -> list[int]:
        """Write every changed page over its other copy with a new sequence number (not
        synced: the caller syncs, then calls :meth:`committed`); return the pages written."""
        self.seq += 1
        pages = sorted(self.dirty)
        for p in pages:
            start = p * ENTRIES_PER_PAGE
            data = pack_page(p, self.seq, self.entries[start : start + ENTRIES_PER_PAGE])
            os.pwrite(fd, data, page_offset(p, self._other(p)))
        return pages

    def _other(self, page: int) -> int:
        return 1 if self.current[page] == 0 else 0

    def committed(self, pages: list[int]) -> None:
        """The pages written by :meth:`write_dirty` are durable: they are current now."""
        for p in pages:
            self.current[p] = self._other(p)
            self.dirty.discard(p)
