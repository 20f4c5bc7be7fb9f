"""Mounting and, whatever happens, unmounting: the lower image, tmpfs uppers and the overlays.

Every mount goes through a :class:`Mounts` stack, whose ``close()`` (in a ``finally``)
unmounts all that is still mounted, newest first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from overlayboot import mounttable
from overlayboot.errors import ToolError
from overlayboot.run import run


def mounted_under(base: Path) -> list[Path]:
    """Mount points at or below ``base``, deepest first."""
    found: list[Path] = []
    prefix = str(base.resolve())
    for m in mounttable.mounts():
        if m.target == prefix or m.target.startswith(prefix + "/"):
            found.append(Path(m.target))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _umount(mnt: Path) -> None:
    """Unmount, retrying while busy (a FUSE daemon may still hold files), lazily at the end."""
    for _ in range(50):
        if not os.path.ismount(mnt):
            return
        if run(["umount", mnt], check=False).returncode == 0:
            return
        time.sleep(0.1)
    run(["umount", "-l", mnt], check=False)
    print(f"bench: warning: {mnt} was busy, unmounted lazily", file=sys.stderr)


@dataclass
class _Entry:
    mnt: Path
    kind: str


class Mounts:
    """A stack of what this run mounted; ``close()`` unmounts it all, newest first."""

    def __init__(self) -> None:
        self._stack: list[_Entry] = []

    def push(self, mnt: Path, kind: str) -> None:
        self._stack.append(_Entry(mnt, kind))

    def release(self, mnt: Path) -> None:
        """Unmount ``mnt`` (and anything pushed after it) now."""
        while self._stack:
            entry = self._stack.pop()
            self._unmount(entry)
            if entry.mnt == mnt:
                return

    def close(self) -> None:
        """Unmount everything; a second Ctrl-C or SIGTERM waits until this is done."""
        held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            while self._stack:
                entry = self._stack.pop()
                try:
                    self._unmount(entry)
                except (ToolError, OSError) as exc:
                    print(f"bench: warning: unmounting {entry.mnt}: {exc}", file=sys.stderr)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    @staticmethod
    def _unmount(entry: _Entry) -> None:
        if entry.kind == "overlayboot" and os.path.ismount(entry.mnt):
            # its own umount waits until the daemon has exited
            r = run([sys.executable, "-m", "overlayboot", "umount", entry.mnt], check=False)
            if r.returncode == 0:
                return
        _umount(entry.mnt)

    # --- the mounts the suite makes -------------------------------------------------

    def squashfs(self, image: Path, mnt: Path) -> None:
        mnt.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "squashfs", "-o", "loop,ro", image, mnt])
        self.push(mnt, "squashfs")

    def tmpfs(self, mnt: Path, size: str) -> None:
        mnt.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "bench-upper", mnt])
        self.push(mnt, "tmpfs")

    def overlay(
        self,
        system: str,
        lower: Path,
        upper: Path,
        work: Path,
        mnt: Path,
        extra: tuple[str, ...] = (),
    ) -> None:
        for d in (upper, work, mnt):
            d.mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
        if system == "kernel":
            run(["mount", "-t", "overlay", "overlay", "-o", opts, mnt])
        elif system == "fuse-overlayfs":
            run(["fuse-overlayfs", "-o", opts, mnt])
        elif system == "overlayboot":
            argv: list[str | Path] = [sys.executable, "-m", "overlayboot", "mount"]
            argv += ["--lower", lower, "--upper", upper, "--work", work, *extra, mnt]
            run(argv)
        else:
            raise ValueError(system)
        self.push(mnt, system)
        deadline = time.monotonic() + 15
        while not os.path.ismount(mnt):
            if time.monotonic() > deadline:
                raise ToolError(f"{system}: {mnt} not mounted after 15 s")
            time.sleep(0.02)


@contextlib.contextmanager
def mounts() -> Iterator[Mounts]:
    stack = Mounts()
    try:
        yield stack
    finally:
        stack.close()
