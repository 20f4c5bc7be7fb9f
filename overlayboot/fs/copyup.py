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

import trio

from overlayboot.fs import longpath
from overlayboot.fs.core import HardlinkMap, Overlay
from overlayboot.fs.cow import unshare_file
from overlayboot.fs.datacopy import copy_data
from overlayboot.fs.inodes import Node
from overlayboot.fs.layers import split
from overlayboot.fs.lookup import LowerRef, Resolved, lookup
from overlayboot.fs.whiteout import XattrNames, encode_origin, get_pending, set_pending

log = logging.getLogger(__name__)

THREAD_COPY_MIN = 1 << 20  # copy files at least this large in a worker thread


def copy_xattrs(src: bytes, dst: bytes, names: XattrNames) -> None:
    """Copy the user-visible xattrs (not the overlay's own) from src to dst."""
    try:
        keys = longpath.listxattr(src)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA):
            return
        raise
    for key in keys:
        if names.is_private(key):
            continue
        try:
            value = longpath.getxattr(src, key)
            longpath.setxattr(dst, key, value)
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
    longpath.chown(path, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        longpath.chmod(path, stat.S_IMODE(st.st_mode))
    copy_xattrs(src, path, names)
    set_origin(path, st, names, origin)
    longpath.utime(path, (st.st_atime_ns, st.st_mtime_ns))


def set_origin(path: bytes, st: os.stat_result, names: XattrNames, origin: tuple[int, int]) -> None:
    """Record where a copy came from. ``user.`` xattrs are not allowed on symlinks and
    special files (EPERM, for root too): without the namespace of root, such a copy goes
    without its origin (its inode number then comes from the upper, as kernel overlayfs'
    ``userxattr`` mode has no origin either)."""
    try:
        longpath.setxattr(path, names.origin, encode_origin(*origin))
    except PermissionError:
        if names.prefix != "user" or stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
            raise


class KeepTimes:
    """Restore a directory's times after a copy-up renamed something into it.

    A copy-up is not a change the user made: overlayfs restores the parent's
    times too.
    """

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.st = longpath.lstat(path)

    def restore(self) -> None:
        longpath.utime(self.path, (self.st.st_atime_ns, self.st.st_mtime_ns))


def remove_tmp(path: bytes) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            longpath.unlink(path)
    except FileNotFoundError:
        pass


async def build_copy(
    overlay: Overlay,
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
        return copy_dir_sync(overlay, src, st, origin)
    tmp = overlay.tmp_path()
    try:
        if stat.S_ISREG(mode):
            fd = longpath.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                size = st.st_size if data else 0
                if size and lower is not None and overlay.partials.start(fd, src, st, lower):
                    pass  # partial: no data yet, each chunk comes up when first written
                elif size >= THREAD_COPY_MIN:
                    await trio.to_thread.run_sync(copy_data, src, fd, size)
                elif size:
                    copy_data(src, fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        elif stat.S_ISLNK(mode):
            longpath.symlink(longpath.readlink(src), tmp)
        else:
            longpath.mknod(tmp, mode, st.st_rdev)
        set_metadata(src, tmp, st, overlay.names, origin)
    except BaseException:
        remove_tmp(tmp)
        raise
    return tmp


async def copy_up(overlay: Overlay, node: Node, *, data: bool = True, unshare: bool = True) -> None:
    """Make ``node`` exist in the upper. Caller holds ``overlay.lock``.

    ``data=False`` skips the file contents (for an open with O_TRUNC or a
    truncate to 0, where they would be thrown away at once). An upper file a clone
    shares with its source gets a copy of its own first (``cow``), unless ``unshare``
    is False (a rename changes no file).
    """
    if overlay.has_upper(node):
        if unshare and overlay.cow_links and not node.is_dir:
            await unshare_file(overlay, node, data=data)
        return
    parent = node.parent
    if parent is None:
        raise OSError(errno.ENOENT, "unlinked")
    await copy_up(overlay, parent)
    dst = overlay.upper_path(node)
    if node.is_dir and _upper_is_dir(dst):
        node.upper = True
        return
    src = overlay.lower_path(node)
    st = longpath.lstat(src)
    idx, rel = node.lowers[0]
    lower_ino = overlay.layers[idx].lstat(rel).st_ino
    tmp = await build_copy(overlay, src, st, (idx, lower_ino), data=data, lower=(idx, rel))
    try:
        parent_times = KeepTimes(overlay.upper_path(parent))
        longpath.rename(tmp, dst)
    except BaseException:
        remove_tmp(tmp)
        raise
    parent_times.restore()
    node.upper = True
    if not node.is_dir and st.st_nlink > 1 and stat.S_ISREG(st.st_mode) and not node.clone:
        # (in a clone, the file's other lower names are the source's, not the clone's)
        try:
            longpath.link(dst, overlay.index_path(idx, lower_ino))
        except FileExistsError:
            pass
        try:
            await link_siblings(overlay, idx, lower_ino, dst)
            link_known_names(overlay, node, (idx, lower_ino), dst)
        except OSError as exc:
            log.warning("copy-up of %r: could not link its other names: %s", rel, exc)
        # the names left in the lower (under a renamed directory, say) still count, as
        # overlayfs' index=on counts them; each is linked up at its first lookup
        linked = longpath.lstat(dst).st_nlink - 1  # the index entry is not a name
        set_pending(dst, overlay.names, st.st_nlink - linked)


def _upper_is_dir(path: bytes) -> bool:
    try:
        return stat.S_ISDIR(longpath.lstat(path).st_mode)
    except OSError:
        return False


def scan_hardlinks(root: bytes) -> HardlinkMap:
    """inode -> paths of the multiply-linked regular files under ``root`` (a whole walk)."""
    result: HardlinkMap = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                st = longpath.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                result.setdefault(st.st_ino, []).append(os.path.relpath(path, root))
    return result


async def hardlink_map(overlay: Overlay, idx: int) -> HardlinkMap:
    """The hard links of lower layer ``idx``, built once, in a worker thread: the walk
    reads the whole layer, and the request loop must go on serving meanwhile."""
    found = overlay.hardlink_map(idx)
    if found is None:
        found = await trio.to_thread.run_sync(scan_hardlinks, overlay.layers[idx].root)
        overlay.remember_hardlink_map(idx, found)
    return found


async def link_siblings(overlay: Overlay, idx: int, ino: int, upper_file: bytes) -> None:
    """Link the other visible names of a copied-up lower hard link to its upper copy."""
    for other in (await hardlink_map(overlay, idx)).get(ino, []):
        # the name just copied up (whichever it was) is found in the upper and skipped
        parent_rel, name = split(other)
        _link_if_same(overlay, parent_rel, name, (idx, ino), upper_file)


def link_known_names(
    overlay: Overlay, node: Node, lower_file: tuple[int, int], upper_file: bytes
) -> None:
    """Link the other names the kernel knows ``node`` by to its new upper copy.

    ``link_siblings`` finds names by their lower paths; a name under a renamed directory
    is not found that way, yet the kernel may hold it in its dentry cache and ask for
    the node's attributes through it, without a lookup that would link it
    (``link_pending``): so every name the node table has is linked now.
    """
    for parent, name in list(node.names()):
        parent_rel = None if parent.clone else parent.path()
        if parent_rel is not None and _link_if_same(
            overlay, parent_rel, name, lower_file, upper_file
        ):
            parent.upper = True


def _link_if_same(
    overlay: Overlay,
    parent_rel: bytes,
    name: bytes,
    lower_file: tuple[int, int],
    upper_file: bytes,
) -> bool:
    """Link ``parent_rel/name`` to ``upper_file`` if the merged view still shows the lower
    file ``lower_file`` (layer, inode) there, from the lower only; whether it did."""
    found = ensure_upper_dirs(overlay, parent_rel)
    if found is None:
        return False
    res = lookup(overlay.layers, overlay.names, found[0], found[1], name)
    if res is None or res.upper is not None or res.is_dir or len(res.lowers) != 1:
        return False  # deleted, the copied name itself, already linked, or replaced
    idx, rel = res.lowers[0]
    if idx != lower_file[0] or overlay.layers[idx].lstat(rel).st_ino != lower_file[1]:
        return False  # another file now
    times = KeepTimes(found[0])
    longpath.link(upper_file, found[0] + b"/" + name)
    times.restore()
    return True


def link_pending(
    overlay: Overlay, parent: Node, name: bytes, res: Resolved, index: bytes
) -> Resolved:
    """Link ``parent/name``, a lower name of a hard link whose copy is already up (its
    index entry ``index``), to that copy. Caller holds ``overlay.lock``.

    Other names of the same lower file are linked at copy-up when they can be found; a
    name that could not (under a renamed directory, say) is linked here, at its first
    lookup, through the index.
    """
    parent_rel = parent.path()
    if parent_rel is None or ensure_upper_dirs(overlay, parent_rel) is None:
        return res
    parent_upper = overlay.upper_path(parent)
    times = KeepTimes(parent_upper)
    longpath.link(index, parent_upper + b"/" + name)
    times.restore()
    set_pending(index, overlay.names, get_pending(index, overlay.names) - 1)
    parent.upper = True
    again = overlay.resolve(parent, name)
    return again if again is not None else res


async def child(overlay: Overlay, parent: Node, name: bytes, *, locked: bool) -> Node | None:
    """Resolve ``parent/name`` to a node (created or refreshed), None if absent.

    A pending hard-link name is linked up first (``link_pending``): under the lock,
    taken here unless the caller holds it (``locked``).
    """
    res = overlay.resolve(parent, name)
    if res is None:
        return None
    index = None if parent.clone else overlay.pending_link(res)
    if index is not None:
        if locked:
            res = link_pending(overlay, parent, name, res, index)
        else:
            async with overlay.lock:
                return await child(overlay, parent, name, locked=True)
    return overlay.node_from(parent, name, res)


async def require_child(overlay: Overlay, parent: Node, name: bytes) -> Node:
    """``child`` for a caller holding the lock; ENOENT if absent."""
    node = await child(overlay, parent, name, locked=True)
    if node is None:
        raise OSError(errno.ENOENT, "no such entry")
    return node


def ensure_upper_dirs(
    overlay: Overlay, rel: bytes
) -> tuple[bytes, tuple[tuple[int, bytes], ...]] | None:
    """Copy up the merged directory at ``rel`` (and its parents), walking by path.

    Returns (its upper path, its lower stack), or None if it is not a visible
    directory in the merged view.
    """
    upper = overlay.upper_root
    lowers = overlay.table.root.lowers
    if not rel:
        return upper, lowers
    for part in rel.split(b"/"):
        res = lookup(overlay.layers, overlay.names, upper, lowers, part)
        if res is None or not res.is_dir:
            return None
        child = upper + b"/" + part
        if res.upper is None:
            src_idx, src_rel = res.lowers[0]
            src = overlay.layers[src_idx].path(src_rel)
            st = longpath.lstat(src)
            tmp = copy_dir_sync(overlay, src, st, (src_idx, st.st_ino))
            times = KeepTimes(upper)
            longpath.rename(tmp, child)
            times.restore()
            overlay.note_dir_copied_by_path()
        upper, lowers = child, res.lowers
    return upper, lowers


def copy_dir_sync(
    overlay: Overlay, src: bytes, st: os.stat_result, origin: tuple[int, int]
) -> bytes:
    """Build a copy of lower directory ``src`` (not its entries: they stay merged) in work."""
    tmp = overlay.tmp_path()
    try:
        longpath.mkdir(tmp, 0o700)
        set_metadata(src, tmp, st, overlay.names, origin)
    except BaseException:
        remove_tmp(tmp)
        raise
    return tmp
