"""The upper-layer on-disk format of kernel overlayfs: whiteouts, opaque dirs, redirects.

- a whiteout is a character device 0/0 (or, read only, a legacy ``.wh.NAME``
  entry, or since Linux 6.7 an empty file carrying ``overlay.whiteout``);
- an opaque directory carries ``overlay.opaque = "y"``; ``"x"`` marks a merge
  directory that may contain xattr whiteouts;
- a renamed lower directory carries ``overlay.redirect`` (a name relative to the
  old parent, or an absolute path from the layer root);
- overlayboot's own bookkeeping lives under ``overlayboot.`` (``origin``: the
  lower file a copy-up came from, ``LAYER:INO``; ``chunks``: the chunk map of a
  partial copy-up, see ``chunkmap``).

The xattr namespace is ``trusted.`` when running as root, ``user.`` otherwise
(as overlayfs' ``userxattr`` option).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from overlayboot.fs import longpath

LEGACY_PREFIX = b".wh."
LEGACY_OPAQUE = b".wh..wh..opq"

WHITEOUT_DEV = os.makedev(0, 0)


@dataclass(frozen=True)
class XattrNames:
    """The xattr names for one namespace (``trusted`` or ``user``)."""

    prefix: str

    @property
    def opaque(self) -> str:
        return f"{self.prefix}.overlay.opaque"

    @property
    def redirect(self) -> str:
        return f"{self.prefix}.overlay.redirect"

    @property
    def whiteout(self) -> str:
        return f"{self.prefix}.overlay.whiteout"

    @property
    def origin(self) -> str:
        return f"{self.prefix}.overlayboot.origin"

    @property
    def chunks(self) -> str:
        return f"{self.prefix}.overlayboot.chunks"

    @property
    def pending(self) -> str:
        """On an indexed copy of a lower hard link: its lower names not linked up yet."""
        return f"{self.prefix}.overlayboot.pending"

    @property
    def clone(self) -> str:
        """On the root directory of a clone: its number (see ``fs/clone.py``)."""
        return f"{self.prefix}.overlayboot.clone"

    @property
    def cow(self) -> str:
        """On an upper file shared by a clone and its source until either changes."""
        return f"{self.prefix}.overlayboot.cow"

    def is_private(self, name: str) -> bool:
        """Names the overlay owns: hidden from listings, refused to get/set."""
        return name.startswith(
            (
                "trusted.overlay.",
                "user.overlay.",
                "trusted.overlayboot.",
                "user.overlayboot.",
            )
        )


def default_namespace() -> XattrNames:
    return XattrNames("trusted" if os.geteuid() == 0 else "user")


def is_whiteout_stat(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == WHITEOUT_DEV


def getxattr(path: bytes, name: str) -> bytes | None:
    """An xattr of ``path`` (not following symlinks), or None if absent/unsupported."""
    try:
        return longpath.getxattr(path, name)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOENT, errno.E2BIG, errno.EPERM):
            return None
        raise


def opaque_value(path: bytes, names: XattrNames) -> bytes | None:
    return getxattr(path, names.opaque)


def is_opaque_dir(path: bytes, names: XattrNames) -> bool:
    return opaque_value(path, names) == b"y"


def get_redirect(path: bytes, names: XattrNames) -> bytes | None:
    value = getxattr(path, names.redirect)
    return value if value else None


def is_xattr_whiteout(path: bytes, st: os.stat_result, names: XattrNames) -> bool:
    """The Linux 6.7+ whiteout form: an empty regular file with ``overlay.whiteout``."""
    return (
        stat.S_ISREG(st.st_mode) and st.st_size == 0 and getxattr(path, names.whiteout) is not None
    )


def make_whiteout(path: bytes) -> None:
    """Create a whiteout (char device 0/0, mode 0) at ``path``."""
    longpath.mknod(path, stat.S_IFCHR | 0o000, WHITEOUT_DEV)


def set_opaque(path: bytes, names: XattrNames) -> None:
    longpath.setxattr(path, names.opaque, b"y")


def set_redirect(path: bytes, target: bytes, names: XattrNames) -> None:
    longpath.setxattr(path, names.redirect, target)


def encode_origin(layer: int, ino: int) -> bytes:
    return b"%d:%d" % (layer, ino)


def get_pending(path: bytes, names: XattrNames) -> int:
    """The ``pending`` count of an upper file (0 when it has none or it is unreadable)."""
    raw = getxattr(path, names.pending)
    try:
        return max(int(raw), 0) if raw else 0
    except ValueError:
        return 0


def set_pending(path: bytes, names: XattrNames, count: int) -> None:
    if count > 0:
        longpath.setxattr(path, names.pending, b"%d" % count)
    elif getxattr(path, names.pending) is not None:
        longpath.removexattr(path, names.pending)


def get_clone_mark(path: bytes, names: XattrNames) -> int | None:
    """The clone number a directory starts (``overlayboot.clone``), None if it has none."""
    raw = getxattr(path, names.clone)
    try:
        return int(raw.split(b"\0", 1)[0]) if raw else None
    except ValueError:
        return None


def decode_origin(value: bytes | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        layer, ino = value.split(b":", 1)
        return int(layer), int(ino)
    except ValueError:
        return None
