"""Copy-up: make a lower object exist in the upper before it changes.

A copy-up is atomic: the copy is built under the work dir (data with its holes,
owner, mode, times, xattrs, the ``overlayboot.origin`` record), synced, then
renamed into place. Parent directories are copied up first, with their
metadata. A lower file with several names gets all of them linked in the
upper at once, so they stay one inode. A failure (ENOSPC, say) removes the
partial copy and leaves the upper as it was.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from typing import TYPE_CHECKING

import trio

from overlayboot.fs.inodes import Node
from overlayboot.fs.layers import split
from overlayboot.fs.lookup import LowerRef, lookup
from overlayboot.fs.whiteout import XattrNames, encode_origin, set_pending

if TYPE_CHECKING:
    from overlayboot.fs.core import Overlay

log = logging.getLogger(__name__)

THREAD_COPY_MIN = 1 << 20  # copy files at least this large in a worker thread
CHUNK = 1 << 20


def copy_data(src: bytes, dst_fd: int, size: int) -> None:
    """Copy ``src`` into ``dst_fd`` keeping holes (SEEK_DATA/SEEK_HOLE)."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
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


def copy_xattrs(src: bytes, dst: bytes, names: XattrNames) -> None:
    """Copy the user-visible xattrs (not the overlay's own) from src to dst."""
    try:
        keys = os.listxattr(src, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA):
            return
        raise
    for key in keys:
        if names.is_private(key):
            continue
        try:
            value = os.getxattr(src, key, follow_symlinks=False)
            os.setxattr(dst, key, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.ENODATA):
                continue
            if exc.errno == errno.EPERM and key.startswith("trusted."):
                continue
            raise


def set_metadata(
    src: bytes, path: bytes, st: os.stat_result, names: XattrNames, origin: tuple[int, int]
) -> None:
    """Owner, mode, xattrs, times, in the order that keeps each of them.

    chown clears setuid/setgid and ``security.capability``, so it comes first;
    times come last since setting xattrs changes none of them but writing would.
    """
    os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    copy_xattrs(src, path, names)
    os.setxattr(path, names.origin, encode_origin(*origin), follow_symlinks=False)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


class KeepTimes:
    """Restore a directory's times after a copy-up renamed something into it.

    A copy-up is not a change the user made: overlayfs restores the parent's
    times too.
    """

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.st = os.lstat(path)

    def restore(self) -> None:
        os.utime(self.path, ns=(self.st.st_atime_ns, self.st.st_mtime_ns), follow_symlinks=False)


def remove_tmp(path: bytes) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


async def build_copy(
    ov: Overlay,
    src: bytes,
    st: os.stat_result,
    origin: tuple[int, int],
    *,
    data: bool = True,
    lower: LowerRef | None = None,
) -> bytes:
    """Build a copy of lower object ``src`` under the work dir; return its temporary path.

    With ``lower`` (where ``src`` is), a large file may become a partial copy-up
    (a sparse file and its chunk map: see ``partials``) instead of a whole copy.
    """
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return copy_dir_sync(ov, src, st, origin)
    tmp = ov.tmp_path()
    try:
        if stat.S_ISREG(mode):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                size = st.st_size if data else 0
                if size and lower is not None and ov.partials.start(fd, src, st, lower):
                    pass  # partial: no data yet, each chunk comes up when first written
                elif size >= THREAD_COPY_MIN:
                    await trio.to_thread.run_sync(copy_data, src, fd, size)
                elif size:
                    copy_data(src, fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), tmp)
        else:
            os.mknod(tmp, mode, st.st_rdev)
        set_metadata(src, tmp, st, ov.names, origin)
    except BaseException:
        remove_tmp(tmp)
        raise
    return tmp


async def copy_up(ov: Overlay, node: Node, *, data: bool = True) -> None:
    """Make ``node`` exist in the upper. Caller holds ``ov.lock``.

    ``data=False`` skips the file contents (for an open with O_TRUNC or a
    truncate to 0, where they would be thrown away at once).
    """
    if ov.has_upper(node):
        return
    parent = node.parent
    if parent is None:
        raise OSError(errno.ENOENT, "unlinked")
    await copy_up(ov, parent)
    dst = ov.upper_path(node)
    if node.is_dir and _upper_is_dir(dst):
        node.upper = True
        return
    src = ov.lower_path(node)
    st = os.lstat(src)
    idx, rel = node.lowers[0]
    lower_ino = ov.layers[idx].lstat(rel).st_ino
    tmp = await build_copy(ov, src, st, (idx, lower_ino), data=data, lower=(idx, rel))
    try:
        parent_times = KeepTimes(ov.upper_path(parent))
        os.rename(tmp, dst)
    except BaseException:
        remove_tmp(tmp)
        raise
    parent_times.restore()
    node.upper = True
    if not node.is_dir and st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
        try:
            os.link(dst, ov.index_path(idx, lower_ino))
        except FileExistsError:
            pass
        try:
            link_siblings(ov, idx, lower_ino, dst)
        except OSError as exc:
            log.warning("copy-up of %r: could not link its other names: %s", rel, exc)
        # the names left in the lower (under a renamed directory, say) still count, as
        # overlayfs' index=on counts them; each is linked up at its first lookup
        linked = os.lstat(dst).st_nlink - 1  # the index entry is not a name
        set_pending(dst, ov.names, st.st_nlink - linked)


def _upper_is_dir(path: bytes) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def hardlink_map(ov: Overlay, idx: int) -> dict[int, list[bytes]]:
    """inode -> paths of the multiply-linked files of lower layer ``idx`` (built once)."""
    found = ov.hardlink_maps.get(idx)
    if found is not None:
        return found
    result: dict[int, list[bytes]] = {}
    root = ov.layers[idx].root
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                result.setdefault(st.st_ino, []).append(os.path.relpath(path, root))
    ov.hardlink_maps[idx] = result
    return result


def link_siblings(ov: Overlay, idx: int, ino: int, upper_file: bytes) -> None:
    """Link the other visible names of a copied-up lower hard link to its upper copy."""
    for other in hardlink_map(ov, idx).get(ino, []):
        # the name just copied up (whichever it was) is found in the upper and skipped
        parent_rel, name = split(other)
        parent_upper = ensure_upper_dirs(ov, parent_rel)
        if parent_upper is None:
            continue
        res = lookup(ov.layers, ov.names, parent_upper[0], parent_upper[1], name)
        if res is None or res.upper is not None or res.is_dir or res.lowers != ((idx, other),):
            continue  # that name is deleted, replaced or not the same file in the merged view
        times = KeepTimes(parent_upper[0])
        os.link(upper_file, parent_upper[0] + b"/" + name)
        times.restore()


def ensure_upper_dirs(
    ov: Overlay, rel: bytes
) -> tuple[bytes, tuple[tuple[int, bytes], ...]] | None:
    """Copy up the merged directory at ``rel`` (and its parents), walking by path.

    Returns (its upper path, its lower stack), or None if it is not a visible
    directory in the merged view.
    """
    upper = ov.upper_root
    lowers = ov.table.root.lowers
    if not rel:
        return upper, lowers
    for part in rel.split(b"/"):
        res = lookup(ov.layers, ov.names, upper, lowers, part)
        if res is None or not res.is_dir:
            return None
        child = upper + b"/" + part
        if res.upper is None:
            src_idx, src_rel = res.lowers[0]
            src = ov.layers[src_idx].path(src_rel)
            st = os.lstat(src)
            tmp = copy_dir_sync(ov, src, st, (src_idx, st.st_ino))
            times = KeepTimes(upper)
            os.rename(tmp, child)
            times.restore()
            ov.path_copyups += 1
        upper, lowers = child, res.lowers
    return upper, lowers


def copy_dir_sync(ov: Overlay, src: bytes, st: os.stat_result, origin: tuple[int, int]) -> bytes:
    """Build a copy of lower directory ``src`` (not its entries: they stay merged) in work."""
    tmp = ov.tmp_path()
    try:
        os.mkdir(tmp, 0o700)
        set_metadata(src, tmp, st, ov.names, origin)
    except BaseException:
        remove_tmp(tmp)
        raise
    return tmp
