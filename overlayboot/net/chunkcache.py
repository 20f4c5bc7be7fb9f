"""The lazy HTTP lower's RAM cache: fixed-size chunks of the image, least recently used out.

A read of ``[offset, offset+size)`` needs the chunks it covers; :meth:`ChunkCache.missing`
groups the ones not cached into runs of adjacent chunks (one range request each), and
:meth:`ChunkCache.slice` cuts the read out of the cached chunks. Pure: no I/O here.
"""

from __future__ import annotations

from collections import OrderedDict

CHUNK = 256 << 10
MAX_RUN = 16  # chunks in one range request (4 MiB)


class ChunkCache:
    """Chunks of one image of ``size`` bytes, at most ``limit`` bytes of them kept."""

    def __init__(self, size: int, limit: int, chunk: int = CHUNK) -> None:
        self.size = size
        self.chunk = chunk
        self.capacity = max(limit // chunk, 2 * MAX_RUN)  # a read always fits whole
        self._chunks: OrderedDict[int, bytes] = OrderedDict()

    def covering(self, offset: int, size: int) -> range:
        """The chunk numbers a read touches (empty past the end)."""
        end = min(offset + size, self.size)
        if offset >= end:
            return range(0)
        return range(offset // self.chunk, (end - 1) // self.chunk + 1)

    def missing(self, offset: int, size: int) -> list[tuple[int, int]]:
        """Runs ``(first chunk, count)`` of uncached chunks of a read, each at most MAX_RUN."""
        runs: list[tuple[int, int]] = []
        for n in self.covering(offset, size):
            if n in self._chunks:
                continue
            if runs and runs[-1][0] + runs[-1][1] == n and runs[-1][1] < MAX_RUN:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((n, 1))
        return runs

    def byte_range(self, first: int, count: int) -> tuple[int, int]:
        """``(offset, length)`` of a run of chunks in the image."""
        start = first * self.chunk
        return start, min((first + count) * self.chunk, self.size) - start

    def put_run(self, first: int, data: bytes) -> None:
        """Cache the chunks of a run fetched from ``first``."""
        for i in range(0, len(data), self.chunk):
            n = first + i // self.chunk
            self._chunks[n] = data[i : i + self.chunk]
            self._chunks.move_to_end(n)
        while len(self._chunks) > self.capacity:
            self._chunks.popitem(last=False)

    def slice(self, offset: int, size: int) -> bytes | None:
        """The bytes of a read from the cache; None if a chunk of it is not there."""
        parts = []
        for n in self.covering(offset, size):
            data = self._chunks.get(n)
            if data is None:
                return None
            self._chunks.move_to_end(n)
            parts.append(data)
        if not parts:
            return b""
        start = offset - self.covering(offset, size)[0] * self.chunk
        end = start + min(offset + size, self.size) - offset
        return b"".join(parts)[start:end]

    @property
    def cached_bytes(self) -> int:
        return sum(len(c) for c in self._chunks.values())
