"""``overlayboot clone SRC DST``: ask the daemon of the mount holding both for a lazy clone.

The request is an xattr set on DST's parent directory through the mount (see
``overlayboot/fs/clonereq.py``); a failure's errno becomes one line and exit code 9.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from overlayboot import mounttable
from overlayboot.errors import OverlaybootError, UsageError
from overlayboot.fs.clonereq import REQUEST_XATTR

FSTYPE = "fuse.overlayboot"

WHY = {
    errno.EEXIST: "DST exists already",
    errno.ENOENT: "SRC does not exist",
    errno.EACCES: "permission denied (DST's directory must be writable, SRC readable)",
    errno.EPERM: "permission denied (DST's directory must be writable, SRC readable)",
    errno.ENOTDIR: "a component of SRC is not a directory",
    errno.EXDEV: "SRC's lower directory cannot be redirected to (a layer above hides it)",
    errno.ENOSPC: "the upper layer is full",
    errno.EOPNOTSUPP: "this overlayboot daemon cannot clone (too old?)",
    errno.ENOTSUP: "this overlayboot daemon cannot clone (too old?)",
}


class CloneError(OverlaybootError):
    """A clone the daemon refused or could not make."""

    exit_code = 9


def _without_last_link(path: Path) -> Path:
    """``path`` absolute, its parent's symlinks resolved, not its last component's
    (a clone of a symlink is a symlink, as ``cp -a`` copies it)."""
    path = Path(os.path.abspath(path))
    return Path(os.path.realpath(path.parent)) / path.name


def _mount_of(path: Path) -> Path | None:
    """The overlayboot mount ``path`` lies in (the innermost mount holding it), if any."""
    best = None
    for m in mounttable.mounts():
        target = Path(m.target)
        inside = path == target or target in path.parents
        if inside and (best is None or len(str(target)) >= len(str(best[0]))):
            best = (target, m.fstype)
    if best is None or best[1] != FSTYPE:
        return None
    return best[0]


def clone(src: Path, dst: Path) -> None:
    """Make DST a lazy copy-on-write copy of SRC (both inside one overlayboot mount)."""
    src = _without_last_link(src)
    dst = _without_last_link(dst)
    if dst.name in ("", ".", ".."):
        raise UsageError(f"{dst}: not a name for a new entry")
    if not dst.parent.is_dir():
        raise UsageError(f"{dst.parent}: no such directory")
    root = _mount_of(src)
    if root is None or root != _mount_of(dst.parent):
        raise UsageError(
            f"{src} and {dst} are not inside one overlayboot mount",
            "clone works inside a mounted overlay only",
        )
    if src == root:
        raise UsageError("the root of the mount cannot be cloned")
    value = os.fsencode(src.relative_to(root)) + b"\0" + os.fsencode(dst.name)
    try:
        os.setxattr(dst.parent, REQUEST_XATTR, value, follow_symlinks=False)
        os.getxattr(dst.parent, REQUEST_XATTR, follow_symlinks=False)  # the barrier
    except OSError as exc:
        why = WHY.get(exc.errno or 0, exc.strerror or str(exc))
        raise CloneError(f"clone {src} -> {dst}: {why}") from None
