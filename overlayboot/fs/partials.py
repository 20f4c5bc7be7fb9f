"""The daemon's partial files: starting them at copy-up, the open ones, their flushing, st_blocks.

Open partial files are shared by every handle of the same upper inode (keyed by
its inode number) and closed with the last one. A partial file whose lower file
changed (an image upgrade under the upper) opens, but its reads and writes fail
``EIO``, with one log line saying so: its data is never mixed with another lower.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence

import trio

from overlayboot.fs import chunked, longpath
from overlayboot.fs.chunkmap import ChunkMap, LowerIdentity, MapError
from overlayboot.fs.chunkpolicy import CopyUpPolicy
from overlayboot.fs.layers import LowerLayer
from overlayboot.fs.lookup import LowerRef
from overlayboot.fs.whiteout import XattrNames

log = logging.getLogger(__name__)

FLUSH_EVERY = 1.0  # seconds between two looks at open files with unrecorded chunks


class PartialCopyUps:
    """Partial copy-ups of one overlay: policy, open files, verified lower files."""

    def __init__(
        self,
        policy: CopyUpPolicy,
        names: XattrNames,
        layers: Sequence[LowerLayer],
        upper_root: bytes,
    ) -> None:
        self.policy = policy
        self.name = names.chunks
        self.layers = layers
        self.shift = policy.chunk_for(os.statvfs(upper_root).f_bsize).bit_length() - 1
        self.open: dict[int, chunked.ChunkedFile] = {}
        self.verified: set[int] = set()  # upper inodes whose lower digest was checked
        self.reported: set[int] = set()  # upper inodes whose stale lower was logged
        self._blocks: dict[tuple[int, int], int | None] = {}  # (ino, ctime) -> blocks
        self.read_buf = chunked.ReadBuffer()  # shared by every open partial file

    def start(self, tmp_fd: int, src: bytes, st: os.stat_result, lower: LowerRef) -> bool:
        """At copy-up: make ``tmp_fd`` a partial copy of ``src`` if the policy says so."""
        if not self.policy.wants_chunks(st):
            return False
        idx, rel = lower
        root = self.layers[idx].root
        ident = LowerIdentity(idx, rel, root, st.st_size, st.st_ino, st.st_mtime_ns, b"")
        if not chunked.begin(tmp_fd, src, st, ident, self.shift, self.name):
            return False
        self.verified.add(os.fstat(tmp_fd).st_ino)
        return True

    # -- open files ------------------------------------------------------------------

    def acquire(self, fd: int, path: bytes) -> chunked.ChunkedFile | None:
        """The partial file behind ``fd`` (an open upper file at ``path``), None if whole."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        p = self.open.get(st.st_ino)
        if p is not None:
            p.refs += 1
            if p.cmap is not None and st.st_size < p.cmap.valid:
                p.truncated(st.st_size)  # opened with O_TRUNC while open elsewhere
            return p
        why = None
        try:
            cmap = chunked.load_map(fd, self.name)
        except MapError as exc:
            cmap, why = None, f"its chunk map is corrupt ({exc})"
        if cmap is None and why is None:
            return None
        own, lower_fd = _reopen(fd, path, st), -1
        if cmap is not None and min(cmap.valid, st.st_size) > 0:
            try:
                lower_fd, why = self._open_lower(cmap, st.st_ino)
            except BaseException:
                os.close(own)
                raise
        p = chunked.ChunkedFile(own, lower_fd, cmap, self.name, error=why, buf=self.read_buf)
        self.open[st.st_ino] = p
        if why is not None:
            self._report(st.st_ino, path, why)
            return p
        try:
            if cmap is not None and st.st_size < cmap.valid:
                p.truncated(st.st_size)  # a crash came between a truncate and its map update
        except BaseException:
            self.release(p)
            raise
        if p.cmap is None:
            self.release(p)
            return None
        return p

    def _open_lower(self, cmap: ChunkMap, upper_ino: int) -> tuple[int, str | None]:
        lower = cmap.lower
        if lower.layer >= len(self.layers):
            return -1, f"its lower layer {lower.layer} is not there"
        try:
            fd = chunked.open_lower(
                self.layers[lower.layer].path(lower.path),
                lower,
                check_digest=upper_ino not in self.verified,
            )
        except chunked.StaleLower as exc:
            return -1, str(exc)
        self.verified.add(upper_ino)
        return fd, None

    def _report(self, ino: int, path: bytes, why: str) -> None:
        if ino in self.reported:
            return
        self.reported.add(ino)
        log.error(
            "partial copy-up %s: %s; its reads and writes fail with EIO "
            "(see `overlayboot upper check`)",
            os.fsdecode(path),
            why,
        )

    def release(self, p: chunked.ChunkedFile) -> None:
        """One handle less; the last one records the map and closes the files."""
        p.refs -= 1
        if p.refs > 0:
            return
        try:
            p.persist()
        except OSError as exc:
            # kept open (and its new chunks readable): the flusher tries again
            log.error("partial copy-up: recording its chunk map failed at close: %s", exc)
            return
        for ino, q in list(self.open.items()):
            if q is p:
                del self.open[ino]
        p.close()

    def truncated(self, target: bytes | int, size: int) -> None:
        """After a truncate of an upper file (by path or through an open fd)."""
        st = os.fstat(target) if isinstance(target, int) else longpath.lstat(target)
        if not stat.S_ISREG(st.st_mode):
            return
        p = self.open.get(st.st_ino)
        if p is not None:
            p.truncated(size)
            return
        if isinstance(target, int):
            return  # an open handle would have the file in self.open if it were partial
        fd = longpath.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            q = self.acquire(fd, target)
            if q is not None:
                try:
                    q.truncated(size)
                finally:
                    self.release(q)
        finally:
            os.close(fd)

    # -- attributes --------------------------------------------------------------------

    def blocks(self, path: bytes, st: os.stat_result) -> int | None:
        """st_blocks of a partial file as a whole copy would have it (None: not partial)."""
        if not stat.S_ISREG(st.st_mode) or st.st_blocks * 512 >= st.st_size:
            return None  # a partial file has unmapped chunks, so holes
        p = self.open.get(st.st_ino)
        if p is not None:
            cmap = p.cmap
        else:
            key = (st.st_ino, st.st_ctime_ns)
            if key in self._blocks:
                return self._blocks[key]
            try:
                cmap = chunked.load_map(path, self.name)
            except (OSError, MapError):
                cmap = None
        result = None if cmap is None else st.st_blocks + self._lower_blocks(cmap, st.st_size)
        if p is None:
            if len(self._blocks) > 10_000:
                self._blocks.clear()
            self._blocks[(st.st_ino, st.st_ctime_ns)] = result
        return result

    def _lower_blocks(self, cmap: ChunkMap, size: int) -> int:
        """The lower's blocks under the unmapped chunks (in proportion to its size)."""
        shown = 0
        for a, b in cmap.gaps(size):
            shown += max(0, min(b << cmap.shift, cmap.valid) - (a << cmap.shift))
        if not shown:
            return 0
        lower = cmap.lower
        try:
            lower_blocks = self.layers[lower.layer].lstat(lower.path).st_blocks
        except (OSError, IndexError):
            return (shown + 511) // 512
        return lower_blocks * shown // max(lower.size, 1)

    # -- flushing ----------------------------------------------------------------------

    async def flusher(self) -> None:
        """Record the chunks of files left open and idle (runs for the daemon's life)."""
        while True:
            await trio.sleep(FLUSH_EVERY)
            for ino, p in list(self.open.items()):
                if p.due(FLUSH_EVERY):
                    self._flush(ino, p)

    def _flush(self, ino: int, p: chunked.ChunkedFile) -> None:
        """Record one file's map; close it if it was released meanwhile. Never raises."""
        try:
            p.persist()
            if p.refs <= 0:  # closed while its map could not be recorded: done now
                del self.open[ino]
                p.close()
        except OSError as exc:
            log.error("partial copy-up: recording its chunk map failed: %s", exc)
        except Exception:
            log.exception("INTERNAL: flushing a chunk map")

    def shutdown(self) -> None:
        """At unmount: record every map and close every file."""
        for p in list(self.open.values()):
            try:
                p.persist()
            except OSError as exc:
                log.error("partial copy-up: recording its chunk map failed at unmount: %s", exc)
            p.close()
        self.open.clear()


def _reopen(fd: int, path: bytes, st: os.stat_result) -> int:
    """An fd of our own on the same upper file, writable when we may (for sealing)."""
    try:
        own = longpath.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return os.dup(fd)
    if os.fstat(own).st_ino != st.st_ino:
        os.close(own)
        return os.dup(fd)
    return own
