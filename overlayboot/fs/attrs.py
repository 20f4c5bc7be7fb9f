"""Changing and reading a node's attributes and xattrs (kernel overlayfs' inode.c).

A change copies the node up first (a truncate to 0 without its data), then applies
owner, mode, size and times in that order (chown clears setuid bits, so mode comes
after it; times come last as the others change ctime or mtime). Xattrs of the
overlay's own namespaces are hidden and refused.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from overlayboot.fs import longpath
from overlayboot.fs.copyup import copy_up
from overlayboot.fs.core import Overlay
from overlayboot.fs.inodes import Node


@dataclass(frozen=True)
class AttrChange:
    """What a SETATTR asks to change; None: leave as it is."""

    uid: int | None = None
    gid: int | None = None
    mode: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None

    def is_empty(self) -> bool:
        return self == AttrChange()


async def change(
    overlay: Overlay, node: Node, want: AttrChange, open_fd: int | None, fd_writable: bool
) -> None:
    """Apply ``want`` to ``node``. Caller holds the lock.

    ``open_fd``: the upper fd of the open file the change came through (an ``ftruncate``,
    ``fchmod``...), used when the node has no name any more; ``fd_writable``: whether a
    truncate may go through it.
    """
    await copy_up(overlay, node, data=want.size != 0)
    try:
        target: bytes | int = overlay.upper_path(node)
    except OSError:
        if open_fd is None:
            raise
        target = open_fd
    is_link = isinstance(target, bytes) and not node.is_dir and _is_symlink(target)
    if want.uid is not None or want.gid is not None:
        _chown(target, -1 if want.uid is None else want.uid, -1 if want.gid is None else want.gid)
    if want.mode is not None and not is_link:
        _chmod(target, stat.S_IMODE(want.mode))
    if want.size is not None:
        if open_fd is not None and fd_writable:
            target = open_fd
        _truncate(target, want.size)
        overlay.partials.truncated(target, want.size)
    if want.atime_ns is not None or want.mtime_ns is not None:
        _set_times(target, want.atime_ns, want.mtime_ns)


def _is_symlink(path: bytes) -> bool:
    try:
        return stat.S_ISLNK(longpath.lstat(path).st_mode)
    except OSError:
        return False


def _chmod(target: bytes | int, mode: int) -> None:
    if isinstance(target, bytes):
        longpath.chmod(target, mode)
    else:
        os.fchmod(target, mode)


def _truncate(target: bytes | int, size: int) -> None:
    if isinstance(target, bytes):
        longpath.truncate(target, size)
    else:
        os.ftruncate(target, size)


def _chown(target: bytes | int, uid: int, gid: int) -> None:
    if isinstance(target, bytes):
        longpath.chown(target, uid, gid)
    else:
        os.fchown(target, uid, gid)


def _set_times(target: bytes | int, atime_ns: int | None, mtime_ns: int | None) -> None:
    cur = longpath.lstat(target) if isinstance(target, bytes) else os.fstat(target)
    times = (
        cur.st_atime_ns if atime_ns is None else atime_ns,
        cur.st_mtime_ns if mtime_ns is None else mtime_ns,
    )
    if isinstance(target, bytes):
        longpath.utime(target, times)
    else:
        os.utime(target, ns=times)


# ---------------------------------------------------------------- xattrs


def _user_name(overlay: Overlay, name: bytes) -> str:
    """An xattr name the user may use; EOPNOTSUPP for the overlay's own ones."""
    text = os.fsdecode(name)
    if overlay.names.is_private(text):
        raise OSError(errno.EOPNOTSUPP, "reserved xattr name")
    return text


def get_xattr(overlay: Overlay, node: Node, name: bytes) -> bytes:
    path = overlay.real_path(node)
    return longpath.getxattr(path, _user_name(overlay, name))


def list_xattrs(overlay: Overlay, node: Node) -> list[bytes]:
    names = longpath.listxattr(overlay.real_path(node))
    return [os.fsencode(n) for n in names if not overlay.names.is_private(n)]


async def set_xattr(overlay: Overlay, node: Node, name: bytes, value: bytes) -> None:
    """Caller holds the lock."""
    text = _user_name(overlay, name)
    await copy_up(overlay, node)
    longpath.setxattr(overlay.upper_path(node), text, value)


async def remove_xattr(overlay: Overlay, node: Node, name: bytes) -> None:
    """Caller holds the lock."""
    text = _user_name(overlay, name)
    if not node.upper:
        # nothing to remove: fail without copying up, as overlayfs does
        longpath.getxattr(overlay.lower_path(node), text)
    await copy_up(overlay, node)
    longpath.removexattr(overlay.upper_path(node), text)
