"""``overlayboot status``: what the running live system is made of.

Reads what the boot phases recorded in ``/run/overlayboot/state`` (``KEY=value``
lines: medium, image, upper, persistence, overlay kind) and adds the upper's
usage and free space and what is mounted on ``/`` (``overlayboot.mounttable``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from overlayboot import mounttable
from overlayboot.errors import OverlaybootError
from overlayboot.probe import human

STATE = Path("/run/overlayboot/state")


@dataclass(frozen=True)
class Status:
    state: dict[str, str]
    upper_total: int | None
    upper_free: int | None
    root_mount: str | None

    def lines(self) -> list[str]:
        s = self.state
        persistent = s.get("persistent") == "yes"
        out = [
            f"overlay:     {s.get('overlay', '?')} ({self.root_mount or 'root mount not found'})",
            f"medium:      {s.get('medium', '?')}"
            + (f" (ISO {s['findiso']})" if "findiso" in s else ""),
            f"image:       {s.get('image', '?')} (id {s.get('image_id', '?')})"
            + (", copied to RAM" if s.get("toram") == "yes" else ""),
            f"upper:       {s.get('upper', '?')} -> {s.get('upperdir', '?')}",
            "changes:     "
            + ("persist across reboots" if persistent else "lost at power-off (tmpfs)"),
        ]
        if self.upper_total is not None and self.upper_free is not None:
            used = self.upper_total - self.upper_free
            out.append(
                f"upper space: {human(used)} used, {human(self.upper_free)} free "
                f"of {human(self.upper_total)}"
            )
        if "block_store" in s:  # overlayboot.overlay=block
            out.append(f"block:       {s.get('block_device', '?')} over {s['block_store']}")
        if "image_changed" in s:
            out.append(
                "note:        the image changed; older changes kept aside "
                f"(id {s['image_changed']})"
            )
        return out


def read_status(state: Path = STATE) -> Status:
    if not state.is_file():
        raise OverlaybootError(f"{state} not found: this system was not booted by overlayboot")
    values: dict[str, str] = {}
    for line in state.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    total = free = None
    upperdir = values.get("upperdir")
    if upperdir and os.path.isdir(upperdir):
        sv = os.statvfs(upperdir)
        total, free = sv.f_blocks * sv.f_frsize, sv.f_bavail * sv.f_frsize
    root = None
    for m in mounttable.mounts():
        if m.target == "/" and m.fstype != "rootfs":
            root = f"{m.source} on / type {m.fstype}"
    return Status(values, total, free, root)
