"""Loop devices over the device's file, through ``losetup`` (util-linux, or busybox at
boot): attach one, find the ones over a file, detach one."""

from __future__ import annotations

import os
from pathlib import Path

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


def detach(device: str) -> None:
    run(["losetup", "--detach", device])
