"""The chunk map of a partial copy-up: which chunks the upper holds, and of which lower file.

A partial upper file has the logical size of the file (its ``st_size``) and holds
the data of the *mapped* chunks only. Every other chunk reads from the lower file
up to ``valid`` (the lower bytes still shown: the lower size, lowered by every
truncate) and as zeros beyond. The map is the xattr ``overlayboot.chunks``
(``trusted.`` or ``user.``) of the upper file, set atomically as a whole.

Format version 1, little-endian::

    offset size  field
    0      4     magic "OBCM"
    4      1     version (1)
    5      1     chunk shift: chunk size = 1 << shift (12..30)
    6      2     lower layer index (0 = top lower layer)
    8      8     valid: bytes of the lower file still shown
    16     8     lower file size at copy-up
    24     8     lower file inode number
    32     8     lower file mtime (ns, signed)
    40     16    lower sample digest (see ``sample_offsets``)
    56     2     P = length of the lower path
    58     2     R = length of the lower layer root
    60     P     lower path, relative to the layer root
    60+P   R     the layer root as the daemon saw it (absolute)
    60+P+R ...   mapped chunks: pairs of unsigned LEB128 varints (gap, length), in
                 chunks; an extent starts ``gap`` chunks after the end of the one
                 before (the first: after chunk 0); gap >= 1 after the first,
                 length >= 1 (canonical: extents are disjoint and not adjacent)

A reader refuses any other magic or version.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

MAGIC = b"OBCM"
VERSION = 1
MIN_SHIFT = 12
MAX_SHIFT = 30
_HEADER = struct.Struct("<4sBBHQQQq16sHH")
HEADER_SIZE = _HEADER.size  # 60

SAMPLE = 4096  # bytes per sample of the lower file's digest
SAMPLES = 8
END = sys.maxsize  # "no further extent"

Extent = tuple[int, int]  # [start, end) in chunks


class MapError(ValueError):
    """A chunk map that cannot be decoded (corrupt, truncated, unknown version)."""


@dataclass(frozen=True)
class LowerIdentity:
    """The lower file a partial copy-up reads from, and what it was like then."""

    layer: int
    path: bytes  # relative to the layer root
    root: bytes  # the layer root when the copy-up was made
    size: int
    ino: int
    mtime_ns: int
    digest: bytes  # 16 bytes: see sample_offsets

    def differs(self, size: int, ino: int, mtime_ns: int, digest: bytes | None) -> str | None:
        """Why a lower file with these attributes is not this one (None: it is)."""
        if size != self.size:
            return f"size {self.size} -> {size}"
        if ino != self.ino:
            return f"inode {self.ino} -> {ino}"
        if mtime_ns != self.mtime_ns:
            return f"mtime {self.mtime_ns} -> {mtime_ns}"
        if digest is not None and digest != self.digest:
            return "content (sample digest) differs"
        return None


@dataclass(frozen=True)
class ChunkMap:
    """Which chunks of a partial file live in the upper (immutable; changes return a copy)."""

    shift: int
    lower: LowerIdentity
    valid: int
    extents: tuple[Extent, ...] = ()
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(s for s, _ in self.extents))

    @property
    def chunk_size(self) -> int:
        return 1 << self.shift

    def chunks_of(self, size: int) -> int:
        """How many chunks a file of ``size`` bytes has."""
        return (size + self.chunk_size - 1) >> self.shift

    def run_at(self, chunk: int) -> tuple[bool, int]:
        """(is ``chunk`` mapped, the first chunk after the run of equal state it is in)."""
        i = bisect.bisect_right(self._starts, chunk) - 1
        if i >= 0 and chunk < self.extents[i][1]:
            return True, self.extents[i][1]
        nxt = i + 1
        return False, self.extents[nxt][0] if nxt < len(self.extents) else END

    def is_mapped(self, chunk: int) -> bool:
        return self.run_at(chunk)[0]

    def mapped_count(self) -> int:
        return sum(e - s for s, e in self.extents)

    def with_range(self, start: int, end: int) -> ChunkMap:
        """The map with chunks [start, end) mapped too."""
        if start >= end:
            return self
        # every extent that overlaps or touches [start, end) merges into it
        lo = bisect.bisect_left([e for _, e in self.extents], start)
        hi = bisect.bisect_right(self._starts, end)
        merged = list(self.extents[:lo])
        if lo < hi:
            start = min(start, self.extents[lo][0])
            end = max(end, self.extents[hi - 1][1])
        merged.append((start, end))
        merged.extend(self.extents[hi:])
        return replace(self, extents=tuple(merged))

    def with_chunks(self, chunks: Iterable[int]) -> ChunkMap:
        out = self
        run: list[int] = []
        for c in sorted(set(chunks)):
            if run and c != run[1]:
                out = out.with_range(run[0], run[1])
                run = []
            run = [run[0] if run else c, c + 1]
        if run:
            out = out.with_range(run[0], run[1])
        return out

    def truncated(self, size: int) -> ChunkMap:
        """After the file was truncated to ``size``: lower data beyond is gone for good."""
        n = self.chunks_of(size)
        kept = tuple((s, min(e, n)) for s, e in self.extents if s < n)
        valid = min(self.valid, size)
        if kept == self.extents and valid == self.valid:
            return self
        return replace(self, valid=valid, extents=kept)

    def gaps(self, size: int) -> Iterator[Extent]:
        """The unmapped chunk ranges of a file of ``size`` bytes."""
        n = self.chunks_of(size)
        pos = 0
        for s, e in self.extents:
            if s >= n:
                break
            if pos < s:
                yield pos, s
            pos = e
        if pos < n:
            yield pos, n

    def complete(self, size: int) -> bool:
        """Does the upper hold every chunk of a file of ``size`` bytes?"""
        return next(self.gaps(size), None) is None

    def gaps_to_fill(self, max_extents: int) -> list[Extent]:
        """The smallest gaps between extents whose filling leaves at most ``max_extents``."""
        ext = self.extents
        inner = [(ext[i + 1][0] - ext[i][1], ext[i][1], ext[i + 1][0]) for i in range(len(ext) - 1)]
        excess = len(self.extents) - max(max_extents, 1)
        if excess <= 0:
            return []
        inner.sort()
        return sorted((s, e) for _, s, e in inner[:excess])

    # -- encoding --------------------------------------------------------------------

    def encode(self) -> bytes:
        lower = self.lower
        head = _HEADER.pack(
            MAGIC,
            VERSION,
            self.shift,
            lower.layer,
            self.valid,
            lower.size,
            lower.ino,
            lower.mtime_ns,
            lower.digest,
            len(lower.path),
            len(lower.root),
        )
        out = bytearray(head + lower.path + lower.root)
        prev = 0
        for s, e in self.extents:
            _put_varint(out, s - prev)
            _put_varint(out, e - s)
            prev = e
        return bytes(out)


def decode(raw: bytes) -> ChunkMap:
    """Parse and validate an encoded map; MapError says what is wrong."""
    if len(raw) < HEADER_SIZE:
        raise MapError(f"{len(raw)} bytes: shorter than the header")
    magic, version, shift, layer, valid, size, ino, mtime, digest, plen, rlen = _HEADER.unpack_from(
        raw
    )
    if magic != MAGIC:
        raise MapError(f"bad magic {magic!r}")
    if version != VERSION:
        raise MapError(f"unknown version {version}")
    if not MIN_SHIFT <= shift <= MAX_SHIFT:
        raise MapError(f"chunk shift {shift} out of range")
    pos = HEADER_SIZE
    if pos + plen + rlen > len(raw):
        raise MapError("truncated lower path")
    path = raw[pos : pos + plen]
    root = raw[pos + plen : pos + plen + rlen]
    pos += plen + rlen
    if not path:
        raise MapError("empty lower path")
    extents: list[Extent] = []
    prev = 0
    while pos < len(raw):
        gap, pos = _get_varint(raw, pos)
        length, pos = _get_varint(raw, pos)
        if length < 1 or (extents and gap < 1):
            raise MapError("extents not in canonical form")
        start = prev + gap
        extents.append((start, start + length))
        prev = start + length
    lower = LowerIdentity(layer, path, root, size, ino, mtime, digest)
    if valid > size:
        raise MapError(f"valid {valid} beyond the lower size {size}")
    return ChunkMap(shift, lower, valid, tuple(extents))


def _put_varint(out: bytearray, value: int) -> None:
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


def _get_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise MapError("truncated or oversized varint")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def sample_offsets(size: int) -> list[int]:
    """Where the digest samples the lower file: ``SAMPLES`` spans of ``SAMPLE`` bytes,
    evenly spread from the first byte to the last (one span for a small file)."""
    if size <= SAMPLE:
        return [0]
    n = min(SAMPLES, (size + SAMPLE - 1) // SAMPLE)
    last = size - SAMPLE
    return [last * k // (n - 1) for k in range(n)]


def digest_of(size: int, samples: Iterable[bytes]) -> bytes:
    """The 16-byte digest of a lower file from its size and its samples, in order."""
    h = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
    for s in samples:
        h.update(s)
    return h.digest()
