"""One daemon per upper layer: an exclusive lock on the upper and work directories.

Kernel overlayfs refuses a second mount of an upper/work pair that is in use (EBUSY);
overlayboot does the same with ``flock(LOCK_EX)`` on both directories, taken before
the daemon touches the work dir and held by the daemon for its whole life (the open
file descriptions are inherited across its fork). The kernel drops a lock when the
process holding it dies, so a lock left by a dead daemon is never in the way.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from overlayboot.errors import MountError


class UpperInUse(MountError):
    """The upper or work directory is held by a running daemon."""


def _lock_dir(path: Path, what: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise UpperInUse(
                f"{what} {path} is in use by another overlayboot daemon",
                "unmount that overlay first (overlayboot umount MOUNTPOINT)",
            ) from None
        raise MountError(f"cannot lock {what} {path}: {exc.strerror}") from None
    return fd


def lock_layers(upper: Path, work: Path) -> tuple[int, ...]:
    """Lock ``upper`` and ``work`` for this process; the fds hold the locks (keep them)."""
    first = _lock_dir(upper, "upper dir")
    try:
        return first, _lock_dir(work, "work dir")
    except BaseException:
        os.close(first)
        raise


def lock_upper(upper: Path) -> int:
    """Lock ``upper`` alone (``overlayboot upper seal``); UpperInUse if a daemon has it."""
    return _lock_dir(upper, "upper dir")
