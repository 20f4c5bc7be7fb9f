"""The overlay daemon's process started before its arguments are known.

At boot the daemon's start-up is mostly imports (trio and pyfuse3: about 2 s under QEMU's
TCG), and nothing it imports depends on the medium. The initramfs therefore starts
``overlayboot standby ARGS_FILE`` right after the early phase: it imports the daemon's
modules while the kernel modules load and the medium is searched, then waits for
ARGS_FILE, which phase ``overlay`` writes whole (a rename) with one argument per line,
and runs those arguments as an ``overlayboot`` command in this same process.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from overlayboot.errors import UsageError

FIRST_POLL = 0.02
"""Seconds between looks for the arguments at first; doubles up to LAST_POLL."""
LAST_POLL = 1.0


def preload() -> None:
    """Import what the daemon needs (trio, pyfuse3, the handlers)."""
    import overlayboot.fs.daemon  # noqa: F401


def wait_for_args(args_file: Path, *, timeout: float | None = None) -> list[str]:
    """The lines of ``args_file`` once it exists; an empty list means: nothing to run."""
    delay = FIRST_POLL
    start = time.monotonic()
    while True:
        try:
            data = args_file.read_bytes()
            break
        except FileNotFoundError:
            pass
        if timeout is not None and time.monotonic() - start > timeout:
            raise UsageError(f"standby: no arguments in {args_file} after {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, LAST_POLL)
    with contextlib.suppress(OSError):
        args_file.unlink()
    return [os.fsdecode(line) for line in data.split(b"\n") if line]
