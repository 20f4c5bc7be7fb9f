"""Copying file data between two open files at the same offsets, keeping holes.

Used by a whole copy-up (``copyup``) and by a partial one when it brings a chunk up
(``chunked``). It knows nothing of layers or nodes.
"""

from __future__ import annotations

import errno
import os

from overlayboot.fs import longpath

CHUNK = 1 << 20


def copy_data(src: bytes, dst_fd: int, size: int) -> None:
    """Copy ``src`` into ``dst_fd`` keeping holes (SEEK_DATA/SEEK_HOLE)."""
    fd = longpath.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        copy_segments(fd, dst_fd, 0, size)
        os.ftruncate(dst_fd, size)
    finally:
        os.close(fd)


def copy_segments(src_fd: int, dst_fd: int, start: int, end: int) -> None:
    """Copy the data in [start, end) of ``src_fd`` to the same offsets, skipping its holes."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(src_fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break  # only a hole remains
            if exc.errno != errno.EINVAL:
                raise
            data = pos  # no SEEK_DATA support: copy everything
        if data >= end:
            break
        try:
            hole = os.lseek(src_fd, data, os.SEEK_HOLE)
        except OSError:
            hole = end
        _copy_range(src_fd, dst_fd, data, min(hole, end) - data)
        pos = hole


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    end = offset + length
    pos = offset
    use_cfr = True
    while pos < end:
        n = min(CHUNK * 16, end - pos)
        if use_cfr:
            try:
                done = os.copy_file_range(src_fd, dst_fd, n, pos, pos)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                use_cfr = False
                continue
            if done == 0:
                break
            pos += done
        else:
            buf = os.pread(src_fd, min(n, CHUNK), pos)
            if not buf:
                break
            view = memoryview(buf)
            while view:
                w = os.pwrite(dst_fd, view, pos)
                pos += w
                view = view[w:]
