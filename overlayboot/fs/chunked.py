"""Chunk I/O of one partial upper file: merged reads, chunked writes, truncation, sealing.

The rules that keep a partial file crash-safe (README, "Partial copy-up"):

- a mapped chunk reads from the upper; any other from the lower file below
  ``valid`` and as zeros above. The upper's bytes of an unmapped chunk are never
  read: a crash may have left a half-written chunk there;
- a write first writes every unmapped chunk it touches in full (the bytes it does
  not cover from the lower, or zeros), then its own data, and only then maps
  those chunks (in memory; reads see them at once);
- the map on disk follows the data: ``fdatasync``, then one atomic ``setxattr``
  of the whole map. So after ``kill -9`` or a power cut a chunk is wholly old
  (unmapped: the lower's) or wholly new, and never mapped before its data is
  durable. The map is written at ``fsync``, at ``close``, after a shrinking
  truncate, for every write through an ``O_SYNC``/``O_DSYNC`` file, and when
  new chunks are more than ``MAX_PENDING`` or older than ``MAX_AGE`` seconds;
- sealing fills every unmapped chunk, syncs, restores the times, and only then
  removes the map: at every step the file reads the same.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator

from overlayboot.fs import longpath, sysio
from overlayboot.fs.chunkmap import (
    SAMPLE,
    ChunkMap,
    LowerIdentity,
    decode,
    digest_of,
    sample_offsets,
)
from overlayboot.fs.datacopy import copy_segments

MAX_MAP_BYTES = 2048  # above this the map is compacted (it must fit an ext4 xattr block)
MAX_PENDING = 256  # new chunks kept unrecorded at most ...
MAX_AGE = 1.0  # ... and for at most this many seconds
_TOO_BIG = (errno.E2BIG, errno.ENOSPC, errno.ERANGE)


class StaleLower(Exception):
    """The lower file of a partial copy-up is missing or is not the one it was copied from."""


def load_map(fd_or_path: int | bytes, name: str) -> ChunkMap | None:
    """The chunk map of an upper file; None for a whole file. MapError if it is corrupt."""
    try:
        if isinstance(fd_or_path, int):
            raw = os.getxattr(fd_or_path, name)
        else:
            raw = longpath.getxattr(fd_or_path, name)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise
    return decode(raw)


def lower_digest(fd: int, size: int) -> bytes:
    """The sample digest of an open lower file (see chunkmap.sample_offsets)."""
    n = min(SAMPLE, size)
    return digest_of(size, (_pread_full(fd, off, n) for off in sample_offsets(size)))


def open_lower(path: bytes, ident: LowerIdentity, *, check_digest: bool = True) -> int:
    """Open the lower file of a partial copy-up, checking it is the one it came from."""
    try:
        fd = longpath.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise StaleLower(f"cannot open {os.fsdecode(path)}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        digest = lower_digest(fd, st.st_size) if check_digest else None
        why = ident.differs(st.st_size, st.st_ino, st.st_mtime_ns, digest)
    except BaseException:
        os.close(fd)
        raise
    if why is not None:
        os.close(fd)
        raise StaleLower(f"{os.fsdecode(path)} changed since the copy-up: {why}")
    return fd


def begin(
    tmp_fd: int, src: bytes, st: os.stat_result, ident: LowerIdentity, shift: int, name: str
) -> bool:
    """Make ``tmp_fd`` (a new, empty upper file) a partial copy of lower file ``src``.

    ``ident`` without its digest (computed here). False when the map does not fit
    the upper's xattrs: the caller copies the file whole instead.
    """
    fd = longpath.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        digest = lower_digest(fd, st.st_size)
    finally:
        os.close(fd)
    cmap = ChunkMap(shift, _with_digest(ident, digest), st.st_size)
    raw = cmap.encode()
    if len(raw) > MAX_MAP_BYTES:
        return False
    os.ftruncate(tmp_fd, st.st_size)
    try:
        os.setxattr(tmp_fd, name, raw)
    except OSError as exc:
        if exc.errno not in (*_TOO_BIG, errno.ENOTSUP):
            raise
        os.ftruncate(tmp_fd, 0)
        return False
    return True


def _with_digest(ident: LowerIdentity, digest: bytes) -> LowerIdentity:
    return LowerIdentity(
        ident.layer, ident.path, ident.root, ident.size, ident.ino, ident.mtime_ns, digest
    )


class ReadBuffer:
    """The buffer partial files answer reads from: one per daemon, as the daemon handles one
    request at a time and the reply is sent before the next one runs."""

    def __init__(self) -> None:
        self.data = bytearray()

    def view(self, n: int) -> memoryview:
        if len(self.data) < n:
            self.data = bytearray(n)  # a new one: a view of the old one may still be alive
        return memoryview(self.data)[:n]


class ChunkedFile:
    """One open partial file: an fd on the upper file, one on the lower, and the map.

    ``cmap`` is what reads and writes use, ``saved`` what the upper records;
    ``cmap`` None means the file is whole now (sealed, or every chunk written).
    ``error`` set: the lower file changed, and every read and write fails EIO.
    """

    def __init__(
        self,
        fd: int,
        lower_fd: int,
        cmap: ChunkMap | None,
        name: str,
        error: str | None = None,
        buf: ReadBuffer | None = None,
    ) -> None:
        self.fd = fd
        self.lower_fd = lower_fd
        self.cmap = cmap
        self.saved = cmap
        self.name = name
        self.error = error
        self.refs = 1
        self.pending = 0
        self.dirty_since: float | None = None
        self.buf = buf if buf is not None else ReadBuffer()

    # -- reading -------------------------------------------------------------------

    def read(self, off: int, size: int) -> bytes | memoryview:
        """``size`` bytes at ``off`` (fewer at the end of the file): the lower's bytes of
        the request in one read (so the lower's readahead stays sequential), then the
        upper's mapped runs over them, all in ``buf`` (valid until the next read of a
        partial file: the reply is sent before any other request runs)."""
        cmap = self._map()
        if cmap is None:
            return os.pread(self.fd, size, off)
        end = min(off + size, os.fstat(self.fd).st_size)
        if end <= off:
            return b""
        view = self.buf.view(end - off)
        runs = list(_runs(cmap, off, end))
        holes = [(a, b) for mapped, a, b in runs if not mapped]
        if holes:
            self._read_lower(cmap, view, off, holes[0][0], holes[-1][1])
        for mapped, a, b in runs:
            if mapped:
                _preadv_full(self.fd, view[a - off : b - off], a)
        return view

    def _read_lower(self, cmap: ChunkMap, view: memoryview, off: int, a: int, b: int) -> None:
        """Bytes [a, b) of the file as the lower shows them (zeros past ``valid``) into
        ``view`` (which starts at ``off``)."""
        lim = min(b, cmap.valid)
        got = _preadv_full(self.lower_fd, view[a - off : lim - off], a) if a < lim else 0
        if a + got < b:
            view[a + got - off : b - off] = bytes(b - a - got)

    # -- writing -------------------------------------------------------------------

    def write(self, fd: int, off: int, buf: bytes, *, sync: bool = False) -> int:
        """Write ``buf`` at ``off`` through ``fd`` (a writable fd of the upper file)."""
        cmap = self._map()
        if cmap is None:
            return _pwrite_all(fd, buf, off)
        if not buf:
            return 0
        end = off + len(buf)
        size = os.fstat(fd).st_size
        new_size = max(size, end)
        cs = cmap.chunk_size
        touched = range(off >> cmap.shift, ((end - 1) >> cmap.shift) + 1)
        fresh = [c for c in touched if not cmap.is_mapped(c)]
        for c in fresh:
            a, b = c * cs, min((c + 1) * cs, new_size)
            if a < off:
                self._fill(fd, cmap, a, min(off, b), size)
            if end < b:
                self._fill(fd, cmap, end, b, size)
        n = _pwrite_all(fd, buf, off)
        if fresh:
            self.cmap = cmap.with_chunks(fresh)
            self.pending += len(fresh)
            if self.dirty_since is None:
                self.dirty_since = time.monotonic()
        if sync and self.cmap != self.saved:
            self.persist(full=True)  # the data went through an O_SYNC fd: now the map
        elif self.due(MAX_AGE) or self.pending >= MAX_PENDING:
            self.persist()
        return n

    def _fill(self, fd: int, cmap: ChunkMap, start: int, end: int, size: int) -> None:
        """Write [start, end) of the file as the map shows it unmapped (lower, else zeros)
        into the upper, over whatever the upper held there. Nothing past ``size``."""
        end = min(end, size)
        if start >= end:
            return
        if not sysio.punch_hole(fd, start, end - start):
            _pwrite_all(fd, bytes(end - start), start)
        lim = min(end, cmap.valid)
        if start < lim:
            copy_segments(self.lower_fd, fd, start, lim)

    def truncated(self, size: int) -> None:
        """The upper file was just truncated to ``size``: forget the lower beyond it."""
        if self.error is not None and size == 0:
            self._drop_map()  # nothing of the (changed) lower is shown any more
            self.error = None
            return
        cmap = self._map()
        if cmap is None:
            return
        new = cmap.truncated(size)
        if new is not cmap:
            self.cmap = new
            self.persist()  # before any extension could show the forgotten lower bytes

    # -- the map on disk -----------------------------------------------------------

    def due(self, age: float) -> bool:
        return self.dirty_since is not None and time.monotonic() - self.dirty_since >= age

    def persist(self, *, full: bool = False) -> None:
        """Make the map on disk what reads use: data first, then the map (then fsync)."""
        cmap = self.cmap
        if self.error is not None:
            return
        if cmap is None or cmap == self.saved:
            if full:
                os.fsync(self.fd)
            return
        size = os.fstat(self.fd).st_size
        if cmap.complete(size):
            self._drop_map()
        else:
            raw = cmap.encode()
            if len(raw) > MAX_MAP_BYTES:
                cmap = self._compact(cmap, size)
                raw = cmap.encode()
            os.fdatasync(self.fd)
            try:
                os.setxattr(self.fd, self.name, raw)
            except OSError as exc:
                if exc.errno not in _TOO_BIG:
                    raise
                self.seal()  # the upper cannot hold this map: make the file whole
            else:
                self.saved = cmap
        if full:
            os.fsync(self.fd)
        self.pending = 0
        self.dirty_since = None

    def _compact(self, cmap: ChunkMap, size: int) -> ChunkMap:
        """Fill the smallest gaps between mapped extents until the map is small again."""
        while len(cmap.encode()) > MAX_MAP_BYTES * 3 // 4 and len(cmap.extents) > 1:
            for a, b in cmap.gaps_to_fill(len(cmap.extents) // 2):
                self._fill(self.fd, cmap, a << cmap.shift, b << cmap.shift, size)
                cmap = cmap.with_range(a, b)
        self.cmap = cmap
        return cmap

    def seal(self) -> None:
        """Fill every unmapped chunk and drop the map: the file is whole again."""
        cmap = self._map()
        if cmap is None:
            return
        st = os.fstat(self.fd)
        for a, b in cmap.gaps(st.st_size):
            self._fill(self.fd, cmap, a << cmap.shift, b << cmap.shift, st.st_size)
        os.utime(self.fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        self._drop_map()

    def _drop_map(self) -> None:
        os.fdatasync(self.fd)
        try:
            os.removexattr(self.fd, self.name)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise
        self.cmap = self.saved = None
        self.pending = 0
        self.dirty_since = None

    def _map(self) -> ChunkMap | None:
        if self.error is not None:
            raise OSError(errno.EIO, self.error)
        return self.cmap

    def close(self) -> None:
        for fd in (self.fd, self.lower_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.lower_fd = -1


def _pread_full(fd: int, off: int, n: int) -> bytes:
    """``n`` bytes at ``off`` (fewer only at the end of the file)."""
    data = os.pread(fd, n, off)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = os.pread(fd, n - got, off + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _runs(cmap: ChunkMap, start: int, end: int) -> Iterator[tuple[bool, int, int]]:
    """(mapped, from, to) for the runs of equal state that make up bytes [start, end)."""
    pos = start
    while pos < end:
        mapped, run_end = cmap.run_at(pos >> cmap.shift)
        seg_end = min(end, run_end << cmap.shift)
        yield mapped, pos, seg_end
        pos = seg_end


def _preadv_full(fd: int, view: memoryview, off: int) -> int:
    """Fill ``view`` from ``fd`` at ``off``; how many bytes (fewer only at the end of the file)."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], off + got)
        if n == 0:
            break
        got += n
    return got


def _pwrite_all(fd: int, buf: bytes, off: int) -> int:
    view = memoryview(buf)
    done = 0
    while done < len(buf):
        done += os.pwrite(fd, view[done:], off + done)
    return done
