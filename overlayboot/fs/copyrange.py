"""``copy_file_range`` through the mount (``cp --reflink=auto``, ``cat``): lazy where it can be.

A copy of a whole file (offsets 0, at least its size) whose data is in a lower layer
(not copied up) or in a partial copy-up, into an empty upper file open only by the
copier and served by the daemon, makes the target a partial copy-up of the same lower
file, as ``overlayboot clone`` of a file does: no data is copied, a later write costs
one chunk. Any other copy is made by the daemon itself (``os.copy_file_range`` between
the two files, or through the partial copy-ups' reads and writes), so the call works
wherever it reaches the daemon.

A target the kernel reads and writes itself (FUSE passthrough: bound to its upper file
since it was created) is copied, never made lazy: the kernel would go on writing that
file past the chunk map, and read its holes as zeros.
"""

from __future__ import annotations

import errno
import os
import stat

import trio

from overlayboot.fs import chunked, longpath
from overlayboot.fs.chunkmap import ChunkMap, LowerIdentity
from overlayboot.fs.core import Overlay
from overlayboot.fs.datacopy import copy_data
from overlayboot.fs.files import FileHandle, OpenFiles
from overlayboot.fs.lookup import LowerRef

STEP = 1 << 20  # bytes per read and write of a copy through a partial file
THREAD_MIN = 1 << 20  # copies from this size on run in a thread


async def copy_range(
    files: OpenFiles, fh_in: int, off_in: int, fh_out: int, off_out: int, length: int
) -> int:
    """Copy ``length`` bytes (fewer at the source's end) from ``off_in`` of handle
    ``fh_in`` to ``off_out`` of handle ``fh_out``; how many were copied."""
    src, dst = files.get(fh_in), files.get(fh_out)
    if not dst.upper or not dst.writable:
        raise OSError(errno.EBADF, "not open for writing")
    size = _size(files.overlay, src)
    count = max(0, min(length, size - off_in))
    if count == 0:
        return 0
    if off_in == 0 and off_out == 0 and count == size:
        async with files.overlay.lock:
            if _lazy_target(files, dst) and await _make_lazy(files.overlay, src, dst, size):
                return size
    return await _copy(files, src, dst, off_in, off_out, count)


def _size(overlay: Overlay, h: FileHandle) -> int:
    if h.fd >= 0:
        return os.fstat(h.fd).st_size
    return longpath.lstat(overlay.lower_path(h.node)).st_size


def _lazy_target(files: OpenFiles, dst: FileHandle) -> bool:
    """``dst`` is an empty whole upper file, open once, that the daemon reads and writes."""
    if dst.partial is not None or dst.backing_id or dst.node.handles != 1:
        return False
    if files.bindings.has_backing(dst.node.ino, upper=True):
        return False
    st = os.fstat(dst.fd)
    return stat.S_ISREG(st.st_mode) and st.st_size == 0 and st.st_nlink == 1


async def _make_lazy(overlay: Overlay, src: FileHandle, dst: FileHandle, size: int) -> bool:
    """Make ``dst`` a partial copy-up with ``src``'s data; False if it cannot be."""
    if not src.node.upper:
        done = _from_lower(overlay, src.node.lowers[0], dst.fd, size)
    elif src.partial is not None and src.partial.cmap is not None:
        done = await _from_partial(overlay, src, dst.fd, size)
    else:
        done = False  # a whole upper file: copied
    if not done:
        return False
    os.fsync(dst.fd)
    overlay.partials.verified.add(os.fstat(dst.fd).st_ino)
    dst.partial = overlay.partials.acquire(dst.fd, overlay.upper_path(dst.node))
    return True


def _from_lower(overlay: Overlay, lower: LowerRef, fd: int, size: int) -> bool:
    """The map first, then the size: a crash between leaves an empty file."""
    idx, rel = lower
    layer = overlay.layers[idx]
    st = layer.lstat(rel)
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        return False
    lfd = longpath.open(layer.path(rel), os.O_RDONLY | os.O_NOFOLLOW)
    try:
        digest = chunked.lower_digest(lfd, size)
    finally:
        os.close(lfd)
    ident = LowerIdentity(idx, rel, layer.root, size, st.st_ino, st.st_mtime_ns, digest)
    raw = ChunkMap(overlay.partials.shift, ident, size).encode()
    if len(raw) > chunked.MAX_MAP_BYTES:
        return False
    try:
        os.setxattr(fd, overlay.partials.name, raw)
    except OSError as exc:
        if exc.errno in (errno.E2BIG, errno.ENOSPC, errno.ERANGE, errno.ENOTSUP):
            return False
        raise
    os.ftruncate(fd, size)
    return True


async def _from_partial(overlay: Overlay, src: FileHandle, fd: int, size: int) -> bool:
    """The chunks a partial copy-up holds, synced, then its map (the map follows the data)."""
    assert src.partial is not None
    src.partial.persist()  # the map on disk says which chunks the upper file holds
    upath = overlay.upper_path(src.node)
    raw = longpath.getxattr(upath, overlay.partials.name)
    if size >= THREAD_MIN:
        await trio.to_thread.run_sync(copy_data, upath, fd, size)
    else:
        copy_data(upath, fd, size)
    os.fdatasync(fd)
    os.setxattr(fd, overlay.partials.name, raw)
    return True


async def _copy(
    files: OpenFiles, src: FileHandle, dst: FileHandle, off_in: int, off_out: int, count: int
) -> int:
    """A real copy of ``count`` bytes, by the daemon."""
    if src.partial is None and dst.partial is None:
        fd = src.fd if src.fd >= 0 else _open_lower(files, src)
        try:
            if count >= THREAD_MIN:
                return await trio.to_thread.run_sync(
                    _kernel_copy, fd, dst.fd, off_in, off_out, count
                )
            return _kernel_copy(fd, dst.fd, off_in, off_out, count)
        finally:
            if fd != src.fd:
                os.close(fd)
    done = 0
    while done < count:
        buf = bytes(_read(files, src, off_in + done, min(STEP, count - done)))
        if not buf:
            break
        done += _write(dst, off_out + done, buf)
        await trio.lowlevel.checkpoint()
    return done


def _read(files: OpenFiles, h: FileHandle, off: int, size: int) -> bytes | memoryview:
    if h.partial is not None:
        return h.partial.read(off, size)
    if h.fd >= 0:
        return os.pread(h.fd, size, off)
    fd = _open_lower(files, h)
    try:
        return os.pread(fd, size, off)
    finally:
        os.close(fd)


def _write(h: FileHandle, off: int, buf: bytes) -> int:
    if h.partial is not None:
        return h.partial.write(h.fd, off, buf, sync=h.sync)
    return os.pwrite(h.fd, buf, off)


def _open_lower(files: OpenFiles, h: FileHandle) -> int:
    """The lower file of a handle the kernel reads through its backing file."""
    return longpath.open(files.overlay.lower_path(h.node), os.O_RDONLY | os.O_NOFOLLOW)


def _kernel_copy(fd_in: int, fd_out: int, off_in: int, off_out: int, count: int) -> int:
    """Copy between two layer files: ``copy_file_range`` (a reflink where the upper
    filesystem has them), else read and write (layers on two filesystems)."""
    done = 0
    while done < count:
        try:
            n = os.copy_file_range(fd_in, fd_out, count - done, off_in + done, off_out + done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            break
        if n == 0:
            return done
        done += n
    while done < count:
        buf = os.pread(fd_in, min(STEP, count - done), off_in + done)
        if not buf:
            break
        done += os.pwrite(fd_out, buf, off_out + done)
    return done
