"""Loop devices over the device's file, through ``losetup`` (util-linux, or busybox at
boot): attach one, find the ones over a file, detach one."""

from __future__ import annotations

import os
import time
from pathlib import Path

from overlayboot.errors import BlockError
from overlayboot.run import run

SYS_BLOCK = Path("/sys/block")


def attach(file: Path, *, read_only: bool = False) -> str:
    """A new loop device over ``file``; its path (``/dev/loopN``)."""
    argv = ["losetup", "--find", "--show"]
    if read_only:
        argv.append("--read-only")
    out = run([*argv, str(file)]).stdout.decode().strip()
    return out.splitlines()[-1]


def backing_file(device: str) -> str | None:
    """The file behind loop ``device`` (``/dev/loopN``); None if it is not attached."""
    name = os.path.basename(os.path.realpath(device))
    try:
        text = (SYS_BLOCK / name / "loop" / "backing_file").read_text()
    except OSError:
        return None
    return text.rstrip("\n")


def devices_of(file: Path) -> list[str]:
    """The loop devices whose backing file is ``file``."""
    target = os.path.abspath(file)
    found = []
    for entry in sorted(SYS_BLOCK.glob("loop*")):
        if backing_file(entry.name) == target:
            found.append(f"/dev/{entry.name}")
    return found


def detach(device: str, timeout: float = 30.0) -> None:
    """Detach ``device`` and wait until it has let go of its file: a device still open
    (an unmount's last release, a udev probe) is only marked to detach at its last close,
    and until then its file, in the device's FUSE mount, keeps that mount busy."""
    run(["losetup", "--detach", device])
    deadline = time.monotonic() + timeout
    while backing_file(device) is not None:
        if time.monotonic() > deadline:
            raise BlockError(f"{device} still holds its file {timeout:.0f} s after detach")
        time.sleep(0.02)
