"""This process's mount table, from ``/proc/self/mountinfo``: one reader for every caller.

Read from /proc rather than found with stat(2): a stat of a FUSE mount whose daemon
is not serving yet (or is this very process) would wait for that daemon.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One mount, its fields unescaped (the kernel writes space, tab, newline and
    backslash, and in overlayfs' options also ``,`` and ``=``, as ``\\ooo``)."""

    dev: str  # "major:minor" of the filesystem
    target: str  # the mount point, as this process sees it
    fstype: str  # with its subtype: "fuse.overlayboot"
    source: str
    super_options: str  # the filesystem's own: "rw,lowerdir=...,upperdir=..."


def _unescape(field: bytes) -> str:
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), field))


def parse(line: bytes) -> Mount | None:
    """One mountinfo line; None if it is not one."""
    head, sep, tail = line.partition(b" - ")
    fields, rest = head.split(), tail.split()
    if not sep or len(fields) < 5 or len(rest) < 2:
        return None
    return Mount(
        dev=fields[2].decode(),
        target=_unescape(fields[4]),
        fstype=_unescape(rest[0]),
        source=_unescape(rest[1]),
        super_options=_unescape(rest[2]) if len(rest) > 2 else "",
    )


def mounts() -> list[Mount]:
    """Every mount, oldest first; empty without /proc (a chroot)."""
    try:
        with open(MOUNTINFO, "rb") as f:
            return [m for m in map(parse, f) if m is not None]
    except OSError:
        return []
