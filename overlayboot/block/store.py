"""An open block store: reads and writes of the copy-on-write view, and commits.

A chunk's first write after a commit goes to a new slot (the whole chunk: the bytes the
write does not cover are copied from the chunk's current version), and the index maps
the chunk there in memory, with the CRC-32 of its data; later writes before the next
commit go to that slot in place. Nothing on disk names the new slot until
:meth:`Store.flush` (the device's flush, which a filesystem on top sends at every journal
commit): it writes the changed index pages (double-buffered, ``index``) and the super
block (the last durable commit) and syncs data and pages at once. After a crash, a page of
the unfinished commit counts only if the data it names matches its CRCs, so every chunk
reads as of a flush, wholly, and the store opens as it is: no repair step.
A write that finds the store or its disk full fails (``ENOSPC``) and changes nothing on
disk that the index names; in a store with a maximum size, a rewrite of a chunk it holds
does not fail (``RESERVE``, and a commit that frees the slots earlier rewrites left).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeAlias

from overlayboot.block.format import (
    PAGE,
    SECTOR,
    FormatError,
    State,
    Super,
    pack_super,
    page_offset,
    unpack_super,
)
from overlayboot.block.identity import identify
from overlayboot.block.index import Index, Verify
from overlayboot.block.slots import Slots
from overlayboot.errors import BlockError

log = logging.getLogger("overlayboot.block")

Buffer: TypeAlias = bytes | bytearray | memoryview

SUPER_EVERY = 32
"""The super block's *durable* is written with every 32nd commit, and at attach and detach:
on disk it is a lower bound (a commit newer than it is checked against its CRCs at open),
and most commits write only data and index pages."""

ZEROS = -1
"""The source of a chunk that reads as zeros (a discarded one): no file."""

RESERVE = 1
"""Slots of a store with a maximum size that only rewrites of chunks it holds may take: a
rewrite needs a slot before it can leave its old one (free after the next commit)."""

PREFETCH = 8 << 20
"""How far ahead of a sequential reader the base is read (``posix_fadvise`` WILLNEED)."""


@dataclass(frozen=True)
class Piece:
    """The part of one request that falls in one chunk."""

    chunk: int
    start: int  # offset in the chunk
    length: int
    at: int  # offset in the request's buffer


def read_super(fd: int, path: Path) -> Super:
    """The super block of the store open at ``fd``; BlockError if it is not a store."""
    try:
        return unpack_super(os.pread(fd, 2 * SECTOR, 0))
    except FormatError as exc:
        raise BlockError(f"{path} is not a usable block store: {exc}") from None


def lock(fd: int, path: Path, exclusive: bool) -> None:
    """flock the store: exclusive while attached, shared while read whole (merge)."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise BlockError(
            f"the block store {path} is in use (attached)",
            "detach it first: overlayboot block detach",
        ) from None


def open_base(base: Path) -> int:
    try:
        return os.open(base, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BlockError(f"cannot open the base {base}: {exc.strerror}") from None


def check_base(sb: Super, base_fd: int, base: Path, path: Path) -> None:
    """Refuse a base other than the one the store was made for."""
    ident = identify(base_fd)
    if ident.size != sb.base_size or ident.digest != sb.base_digest:
        raise BlockError(
            f"the block store {path} was made for another base than {base} "
            f"(store: {sb.base_size} bytes, digest {sb.base_digest.hex()[:16]}; "
            f"base: {ident.size} bytes, digest {ident.short()})",
            "give the base it was made for, or make a new store: overlayboot block create",
        )


def verifier(fd: int, sb: Super) -> Verify:
    """Whether a slot holds the data of a chunk with a given CRC (for ``Index.load``)."""

    def verify(chunk: int, slot: int, crc: int) -> bool:
        length = min(sb.chunk_size, sb.base_size - chunk * sb.chunk_size)
        try:
            data = _pread_full(fd, sb.slot_offset(slot), length)
        except OSError:
            return False
        return zlib.crc32(data) == crc

    return verify


class Store:
    """The copy-on-write view of a base through a store file."""

    def __init__(self, path: Path, fd: int, sb: Super, base_fd: int, writable: bool) -> None:
        self.path = path
        self.fd = fd
        self.sb = sb
        self.base_fd = base_fd
        self.writable = writable
        self.index = Index.load(fd, sb, verifier(fd, sb))
        self.slots = Slots(self.index.used_slots())
        self.fresh: set[int] = set()  # chunks whose slot was taken since the last commit
        self.stale: set[int] = set()  # chunks whose CRC in the index is not their data's
        self.was_dirty = sb.state == State.DIRTY
        self.durable = sb.durable  # the last commit whose sync returned (on disk: <= it)
        self.read_end = -1  # where the last read ended (sequential reads: prefetch)
        self.fetched = 0  # the base is read ahead up to here

    @classmethod
    def open(cls, path: Path, base: Path, *, writable: bool) -> Store:
        """Open ``path`` over ``base``: locked (exclusive when ``writable``), its base
        checked, and, when writable, marked dirty until :meth:`close`."""
        try:
            fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        except OSError as exc:
            raise BlockError(f"cannot open the block store {path}: {exc.strerror}") from None
        base_fd = -1
        try:
            lock(fd, path, exclusive=writable)
            sb = read_super(fd, path)
            base_fd = open_base(base)
            check_base(sb, base_fd, base, path)
            store = cls(path, fd, sb, base_fd, writable)
            if writable:
                store._start()
            return store
        except BaseException:
            os.close(fd)
            if base_fd >= 0:
                os.close(base_fd)
            raise

    def _start(self) -> None:
        """After a crash: drop the slots past the last one named (a crash left them) and
        the page copies that did not count, make what counts durable; mark dirty."""
        end = self.sb.slot_offset(self.slots.end)
        if os.fstat(self.fd).st_size > end:
            os.ftruncate(self.fd, end)
        for page, copy in self.index.rejected:
            os.pwrite(self.fd, bytes(PAGE), page_offset(page, copy))
        if self.index.seq > self.sb.durable:
            os.fdatasync(self.fd)
            self.durable = self.index.seq
        self._set_state(State.DIRTY)

    def _set_state(self, state: State, sync: bool = True) -> None:
        """Write the super block: ``state`` and the last durable commit."""
        self.sb = replace(self.sb, state=state, durable=self.durable)
        os.pwrite(self.fd, pack_super(self.sb), 0)
        if sync:
            os.fdatasync(self.fd)

    # ------------------------------------------------------------------ geometry

    @property
    def size(self) -> int:
        return self.sb.base_size

    def chunk_length(self, chunk: int) -> int:
        return min(self.sb.chunk_size, self.size - chunk * self.sb.chunk_size)

    def pieces(self, offset: int, length: int) -> Iterator[Piece]:
        """The chunks that ``length`` bytes at ``offset`` cover (clamped to the size)."""
        end = min(offset + length, self.size)
        shift, mask = self.sb.chunk_shift, self.sb.chunk_size - 1
        pos = offset
        while pos < end:
            start = pos & mask
            n = min(end - pos, self.sb.chunk_size - start)
            yield Piece(pos >> shift, start, n, pos - offset)
            pos += n

    # ------------------------------------------------------------------ reads

    def _source(self, piece: Piece) -> tuple[int, int]:
        """(fd, offset) where the bytes of ``piece`` are now; fd ``ZEROS``: zeros."""
        slot = self.index.slot(piece.chunk)
        if slot is None and self.index.is_zero(piece.chunk):
            return ZEROS, 0
        if slot is None:
            return self.base_fd, (piece.chunk << self.sb.chunk_shift) + piece.start
        return self.fd, self.sb.slot_offset(slot) + piece.start

    def _runs(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """(fd, offset, length) of the reads that give the view's bytes at ``offset``:
        adjacent pieces from the same file make one run."""
        runs: list[tuple[int, int, int]] = []
        for piece in self.pieces(offset, length):
            fd, at = self._source(piece)
            if runs and runs[-1][0] == fd and (fd == ZEROS or runs[-1][1] + runs[-1][2] == at):
                runs[-1] = (fd, runs[-1][1], runs[-1][2] + piece.length)
            else:
                runs.append((fd, at, piece.length))
        return runs

    def read(self, offset: int, length: int) -> bytes | bytearray:
        """The view's bytes at ``offset`` (fewer only past its end): one ``pread`` per run
        of the same file, straight into the buffer returned."""
        runs = self._runs(offset, length)
        self._prefetch(offset, offset + sum(n for _, _, n in runs))
        if len(runs) == 1 and runs[0][0] != ZEROS:
            return _pread_full(*runs[0])
        out = bytearray(sum(n for _, _, n in runs))
        view, at = memoryview(out), 0
        for fd, off, n in runs:
            if fd != ZEROS:
                _preadv_full(fd, view[at : at + n], off)
            at += n
        return out

    def _prefetch(self, offset: int, end: int) -> None:
        """A sequential reader: have the kernel read the base ahead of it (``PREFETCH``
        bytes, asynchronously), so that its next request does not wait for the disk."""
        sequential, self.read_end = offset == self.read_end, end
        if not sequential or end + PREFETCH // 2 <= self.fetched:
            return
        start, stop = max(end, self.fetched), min(end + PREFETCH, self.size)
        if stop > start:
            os.posix_fadvise(self.base_fd, start, stop - start, os.POSIX_FADV_WILLNEED)
        self.fetched = stop

    # ------------------------------------------------------------------ writes

    def write(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``; ENOSPC past the end of the view, or when the store
        (``max_size``) or its disk is full. The chunks that move to new slots are written
        with one ``pwritev`` per run of consecutive slots (a sequential write: one per
        request), then mapped."""
        if not self.writable:
            raise OSError(errno.EROFS, "the store is open read-only")
        if offset + len(data) > self.size:
            raise OSError(errno.ENOSPC, "write past the end of the device")
        view = memoryview(data)
        moved: list[tuple[int, int, Buffer]] = []  # chunk, new slot, its whole new version
        try:
            for piece in self.pieces(offset, len(data)):
                part = view[piece.at : piece.at + piece.length]
                if piece.chunk in self.fresh:
                    slot = self.index.slot(piece.chunk)
                    assert slot is not None
                    _pwrite_full(self.fd, part, self.sb.slot_offset(slot) + piece.start)
                    self.stale.add(piece.chunk)
                else:
                    slot = self._slot_for(piece.chunk, moved)
                    moved.append((piece.chunk, slot, self._new_version(piece, part)))
            self._write_moved(moved)
        except BaseException:
            for _, slot, _ in reversed(moved):
                self.slots.give_back(slot)
            raise
        return len(data)

    def _write_moved(self, moved: list[tuple[int, int, Buffer]]) -> None:
        """Write the new versions in ``moved`` to their slots, map them, empty ``moved``."""
        while moved:
            run = _consecutive(moved)
            _pwritev_full(self.fd, [whole for _, _, whole in run], self._at(run[0][1]))
            for chunk, slot, whole in run:
                self._map(chunk, slot, zlib.crc32(whole))
            del moved[: len(run)]

    def discard(self, offset: int, length: int) -> None:
        """The view reads zeros at ``offset`` from now on (``fallocate`` punch-hole or
        zero-range: a block device's discard). A whole chunk becomes a zero entry in the
        index and leaves its slot (free after the next commit); the part of a chunk it
        covers is written with zeros (copy-on-write, as any write). Durable at the next
        commit, as writes are."""
        if not self.writable:
            raise OSError(errno.EROFS, "the store is open read-only")
        if offset < 0 or length <= 0 or offset + length > self.size:
            raise OSError(errno.EINVAL, "discard outside the device")
        for piece in self.pieces(offset, length):
            if piece.start == 0 and piece.length == self.chunk_length(piece.chunk):
                old = self.index.slot(piece.chunk)
                self.index.set_zero(piece.chunk)
                self.fresh.discard(piece.chunk)
                self.stale.discard(piece.chunk)
                if old is not None:
                    self.slots.leave(old)
            else:
                self.write((piece.chunk << self.sb.chunk_shift) + piece.start, bytes(piece.length))

    def _at(self, slot: int) -> int:
        return self.sb.slot_offset(slot)

    def _slot_for(self, chunk: int, moved: list[tuple[int, int, Buffer]]) -> int:
        """A slot for the chunk's new version. A full store (``max_size``) refuses a new
        chunk (ENOSPC) but not a rewrite of one it holds: that takes the slot kept free for
        rewrites (``RESERVE``), or commits first (what is in ``moved`` too) so that the
        slots earlier rewrites left are free again."""
        rewrite = self.index.slot(chunk) is not None
        slot = self._take_slot(rewrite)
        if slot is None and rewrite and (moved or self.slots.pending):
            self._write_moved(moved)
            self.flush()
            slot = self._take_slot(rewrite)
        if slot is None:
            raise OSError(errno.ENOSPC, "the block store is full (its maximum size)")
        return slot

    def _take_slot(self, rewrite: bool) -> int | None:
        """A free slot within ``max_size`` (for a new chunk: leaving ``RESERVE`` slots to
        rewrites); None: none."""
        if not self.sb.max_size:
            return self.slots.take()
        room = (self.sb.max_size - self.sb.data_offset) >> self.sb.chunk_shift
        if not rewrite and self.slots.in_use + RESERVE >= room:
            return None
        slot = self.slots.take()
        if slot >= room:
            self.slots.give_back(slot)
            return None
        return slot

    def _new_version(self, piece: Piece, part: memoryview) -> Buffer:
        """The chunk's new content: ``part`` where it falls, its current bytes elsewhere."""
        length = self.chunk_length(piece.chunk)
        if piece.start == 0 and piece.length == length:
            return part
        whole = bytearray(length)  # read in place: no copy, and a reader's prefetch stays
        fd, at = self._source(Piece(piece.chunk, 0, length, 0))
        if fd != ZEROS:
            _preadv_full(fd, memoryview(whole), at)
        whole[piece.start : piece.start + piece.length] = part
        return whole

    def _map(self, chunk: int, slot: int, crc: int) -> None:
        """The chunk's first write since the last commit is in ``slot``: map it there."""
        old = self.index.slot(chunk)
        self.index.set(chunk, slot, crc)
        self.stale.discard(chunk)
        self.fresh.add(chunk)
        if old is not None:
            self.slots.leave(old)

    def flush(self) -> None:
        """Make every write so far durable: the changed index pages written (and, with every
        ``SUPER_EVERY``-th commit, the super block), then one sync. If it fails, the chunks
        written since the last commit are copied again at their next write (their slots
        may be named on disk now) and nothing is freed."""
        if not self.writable or (not self.fresh and not self.index.dirty):
            return
        try:
            for chunk in sorted(self.stale):
                slot = self.index.slot(chunk)
                assert slot is not None
                data = _pread_full(self.fd, self.sb.slot_offset(slot), self.chunk_length(chunk))
                self.index.set_crc(chunk, zlib.crc32(data))
            self.stale.clear()
            pages = self.index.write_dirty(self.fd)
            if self.index.seq - self.sb.durable > SUPER_EVERY:
                self._set_state(self.sb.state, sync=False)
            os.fdatasync(self.fd)
        except BaseException:
            self.fresh.clear()
            raise
        self.index.committed(pages)
        self.slots.commit_done()
        self.fresh.clear()
        self.durable = self.index.seq

    def close(self) -> None:
        """Commit, mark the store clean (writable) and close it."""
        try:
            if self.writable:
                self.flush()
                self._set_state(State.CLEAN)
        finally:
            os.close(self.fd)
            os.close(self.base_fd)

    def abandon(self) -> None:
        """Close without a commit (the store stays dirty: what a crash leaves)."""
        os.close(self.fd)
        os.close(self.base_fd)


def _pread_full(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise OSError(errno.EIO, "short read from the base or the store")
        data += more
    return data


def _preadv_full(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.preadv(fd, [view], offset)
        if n == 0:
            raise OSError(errno.EIO, "short read from the base or the store")
        view, offset = view[n:], offset + n


def _consecutive(moved: list[tuple[int, int, Buffer]]) -> list[tuple[int, int, Buffer]]:
    """The leading run of ``moved`` whose slots follow one another."""
    n = 1
    while n < len(moved) and moved[n][1] == moved[n - 1][1] + 1:
        n += 1
    return moved[:n]


def _pwritev_full(fd: int, buffers: list[Buffer], offset: int) -> None:
    total = sum(len(b) for b in buffers)
    n = os.pwritev(fd, buffers, offset)
    if n < total:
        _pwrite_full(fd, b"".join(buffers)[n:], offset + n)


def _pwrite_full(fd: int, data: Buffer, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
