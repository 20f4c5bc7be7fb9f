"""Upper files a clone shares with its source: the mark, and a copy of its own at first change.

A clone of upper content (``fs/clone.py``) links each upper regular file of the source
into the clone and marks the shared inode with ``overlayboot.cow``. Before the first
change of its data or metadata through any of its names (write, truncate, chmod, chown,
utimes, xattrs, a new hard link), that name gets a copy of its own, built in the work dir
(data with its holes, a partial copy-up's chunk map, owner, mode, xattrs, times), synced,
then renamed over the name; the other names keep the shared inode. A mark on a file with
one name left is dropped at its next change. ``upper seal`` gives every name its own copy
(kernel overlayfs has no such links).
"""

from __future__ import annotations

import os
import stat

import trio

from overlayboot.fs import longpath
from overlayboot.fs.core import Overlay
from overlayboot.fs.cowseal import copy_attributes
from overlayboot.fs.datacopy import copy_data
from overlayboot.fs.inodes import Node, clone_ino
from overlayboot.fs.lookup import Resolved
from overlayboot.fs.whiteout import XattrNames, getxattr

THREAD_COPY_MIN = 1 << 20


def shared(path: bytes, names: XattrNames) -> bool:
    """Is the upper file ``path`` shared with a clone (marked, more than one name)?"""
    try:
        st = longpath.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and getxattr(path, names.cow) is not None


def node_shared(overlay: Overlay, node: Node) -> bool:
    """``shared`` for a node (False when no clone shared anything in this upper)."""
    if not overlay.cow_links or node.is_dir or not node.upper:
        return False
    try:
        return shared(overlay.upper_path(node), overlay.names)
    except OSError:
        return False


def mark(overlay: Overlay, path: bytes) -> None:
    """Mark the upper file ``path`` shared (before its second name is made)."""
    if not overlay.cow_links:
        flag = overlay.cow_flag()
        fd = os.open(flag, os.O_WRONLY | os.O_CREAT, 0o600)
        os.fsync(fd)
        os.close(fd)
        overlay.cow_links = True
    if getxattr(path, overlay.names.cow) is None:
        longpath.setxattr(path, overlay.names.cow, b"1")


async def unshare_file(overlay: Overlay, node: Node, *, data: bool = True) -> None:
    """Give ``node``'s name an upper file of its own if it shares one. Caller holds the lock.

    ``data=False``: its contents are about to be thrown away (``O_TRUNC``).
    """
    try:
        path = overlay.upper_path(node)
    except OSError:
        return  # unlinked: an open fd changes the file it has
    if not shared(path, overlay.names):
        if getxattr(path, overlay.names.cow) is not None:
            longpath.removexattr(path, overlay.names.cow)  # its last name
        return
    tmp = await own_copy(overlay, path, data=data)
    parent = path.rsplit(b"/", 1)[0]
    times = longpath.lstat(parent)
    old_key = _number_key(overlay, node, path)
    try:
        longpath.rename(tmp, path)
    except BaseException:
        longpath.unlink(tmp)
        raise
    longpath.utime(parent, (times.st_atime_ns, times.st_mtime_ns))
    _keep_number(overlay, node, old_key, _number_key(overlay, node, path))


def _number_key(overlay: Overlay, node: Node, path: bytes) -> int:
    """The number a lookup of ``node``'s name computes from the upper file at ``path``."""
    ino = overlay.ino_of(Resolved(False, longpath.lstat(path), ()), path)
    return clone_ino(node.clone, ino) if node.clone else ino


def _keep_number(overlay: Overlay, node: Node, old_key: int, new_key: int) -> None:
    """After a name got a new upper inode: lookups of it still find ``node`` (its number
    for the daemon's life: a hard link made to it now, a listing, show the same file),
    and the number the old inode gave leads to a new node from now on (once that inode
    is freed, a new file may get it). A file born in the upper shows its new upper
    inode's number after a remount."""
    if new_key == old_key:
        return  # a number from an origin record: the copy keeps it
    table = overlay.table
    table.overrides[new_key] = node.ino
    table.overrides[old_key] = table.dynamic_ino()


async def own_copy(overlay: Overlay, src: bytes, *, data: bool = True) -> bytes:
    """A copy of upper file ``src`` under the work dir, without the shared mark; its path."""
    st = longpath.lstat(src)
    tmp = overlay.tmp_path()
    try:
        fd = longpath.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            size = st.st_size if data else 0
            if size >= THREAD_COPY_MIN:
                await trio.to_thread.run_sync(copy_data, src, fd, size)
            elif size:
                copy_data(src, fd, size)
            os.ftruncate(fd, size)  # a partial file's trailing hole
            copy_attributes(src, fd, st, overlay.names, data=data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        try:
            longpath.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return tmp
