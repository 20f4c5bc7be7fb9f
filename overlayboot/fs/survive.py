"""Keeping the daemon alive while it serves the root filesystem.

When the overlay is ``/`` (``overlayboot mount --root``, as the boot flow mounts it), the
machine lives and dies with the daemon, so it:

- ignores SIGTERM, SIGINT and SIGHUP (``overlayboot umount`` or the shutdown program end
  it; kernel overlayfs cannot be killed either);
- asks the OOM killer never to pick it (``oom_score_adj`` -1000): under memory pressure
  the process that allocates is killed, not the root filesystem;
- locks its pages in memory as they are touched (``mlockall`` with ``MCL_ONFAULT``), so
  that its code and heap are never swapped out while the machine needs the root.

Each step is best effort and logged: a daemon that cannot take one still serves.
"""

from __future__ import annotations

import ctypes
import logging
import signal

log = logging.getLogger(__name__)

TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
OOM_SCORE_ADJ_MIN = -1000
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4

_libc = ctypes.CDLL(None, use_errno=True)


def ignore_termination() -> None:
    """SIGTERM, SIGINT and SIGHUP change nothing from now on."""
    for signum in TERMINATION_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def protect_from_oom(proc: str = "/proc/self") -> bool:
    """Set ``oom_score_adj`` to -1000; False (logged) where /proc is not there (a chroot:
    the boot flow then sets it from outside by the daemon's pid)."""
    try:
        with open(f"{proc}/oom_score_adj", "w") as f:
            f.write(f"{OOM_SCORE_ADJ_MIN}\n")
    except OSError as exc:
        log.info("oom_score_adj not set here (%s): the boot flow sets it by pid", exc)
        return False
    return True


def lock_memory() -> bool:
    """Lock the process's pages as they are touched; False (logged) if not allowed."""
    if _libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        log.warning("mlockall failed: errno %d", ctypes.get_errno())
        return False
    return True


def serve_as_root() -> None:
    """The OOM protection and the memory lock, in the process that serves (after the
    daemon's fork: memory locks are not inherited); ``ignore_termination`` comes first."""
    protect_from_oom()
    lock_memory()
