"""Waiting for a condition instead of for time: inotify on directories, pidfd on processes.

``wait_for(condition, dirs, timeout)`` checks ``condition()`` at once and again each time
an entry of one of ``dirs`` is created, written, moved in, renamed or closed, until it holds
or ``timeout`` seconds (a generous bound, not a pace) have passed. ``wait_exit(pid, timeout)``
waits for a process that need not be our child to end. ``poll_until`` is for a condition
no file event announces (a process's memory map): it re-checks it every ``interval``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import time
from collections.abc import Callable, Iterable
from pathlib import Path

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
CHANGES = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
CHANGES |= IN_CREATE | IN_DELETE

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


class Watch:
    """An inotify instance watching some directories for changes to their entries."""

    def __init__(self, dirs: Iterable[Path | str]) -> None:
        self.fd = _check(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")
        try:
            for d in dirs:
                _check(_libc.inotify_add_watch(self.fd, os.fsencode(d), CHANGES), f"watch {d}")
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        os.close(self.fd)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for events; drain them. False if none came."""
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0))
        if not ready:
            return False
        while True:
            try:
                if not os.read(self.fd, 65536):
                    break
            except BlockingIOError:
                break
        return True


def wait_for(
    condition: Callable[[], bool], dirs: Iterable[Path | str], timeout: float, what: str = ""
) -> None:
    """Return once ``condition()`` holds, re-checked on every change in ``dirs``.

    Raises ``TimeoutError`` after ``timeout`` seconds (``what`` says what was awaited)."""
    watch = Watch(dirs)  # before the first check: no change can fall between the two
    try:
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{what or 'condition'} not met after {timeout:g} s")
            watch.wait(left)
    finally:
        watch.close()


def poll_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Return once ``condition()`` holds, checked every ``interval`` s; ``TimeoutError``
    after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {timeout:g} s")
        time.sleep(interval)


def wait_exit(pid: int, timeout: float) -> None:
    """Return once process ``pid`` has ended (any process: a pidfd, not waitpid)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise TimeoutError(f"process {pid} still running after {timeout:g} s")
    finally:
        os.close(fd)
