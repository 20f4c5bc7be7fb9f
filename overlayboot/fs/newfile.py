"""Creating a regular file in place, in a directory that has no lower part.

A new entry normally takes shape in the work dir and is renamed in (``dirops.install``),
so that a whiteout or a lower entry of the same name stays until the entry is whole.
In a directory that exists only in the upper (no lower stack, or opaque) and has
nothing at the name, there is nothing to hide: the file is created where it goes, as
kernel overlayfs does (``ovl_create_upper``), with one ``open(2)`` instead of an open in
the work dir, a rename and the lstats around them. Only for a file the daemon's own
uid and gid may own from its birth (root creating as root, in the live system nearly
every file): one for another owner would exist for a moment with the wrong owner, so
that takes the work dir.
"""

from __future__ import annotations

import os
import stat

from overlayboot.fs.core import Overlay
from overlayboot.fs.inodes import Node

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OWN = (os.geteuid(), os.getegid())  # the daemon's; it never changes them


def create_in_place(
    overlay: Overlay, parent: Node, name: bytes, mode: int, owner: tuple[int, int]
) -> tuple[Node, os.stat_result, int] | None:
    """Create the regular file ``parent/name`` directly in the upper, open read-write:
    its node, lstat and fd; None where the work dir is needed. Caller holds the lock."""
    if (parent.lowers and not parent.opaque) or not parent.upper:
        return None
    if owner != _OWN:
        return None
    path = overlay.upper_child(parent, name)
    try:
        fd = os.open(path, _FLAGS, stat.S_IMODE(mode))  # the daemon's umask is 0
    except FileExistsError:
        return None  # a whiteout, or a file the kernel did not know of: the general path
    try:
        if stat.S_IMODE(mode) & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
            os.fchmod(fd, stat.S_IMODE(mode))
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return overlay.adopt_new(parent, name, st), st, fd
