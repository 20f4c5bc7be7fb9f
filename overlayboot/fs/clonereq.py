"""A clone request as it reaches the daemon, and who asks: parsing and permission checks.

``overlayboot clone SRC DST`` sets the xattr ``user.overlayboot.clone`` on DST's parent
directory through the mount, with the value ``SRC\\0NAME``: SRC as a path from the
mount's root, NAME the new entry in that directory. The kernel has checked that the
caller may write that directory's xattrs; the daemon checks again, as ``mkdir`` would
(write and search on the parent), and that the caller may search every directory on
SRC's path and read SRC itself. Reading ``user.overlayboot.clone`` of any directory
waits until the kernel has forgotten what it cached about the names clones made (see
``operations``).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

REQUEST_XATTR = b"user.overlayboot.clone"

R_OK, W_OK, X_OK = 4, 2, 1


@dataclass(frozen=True)
class CloneRequest:
    src: bytes  # relative to the mount's root, no leading slash
    name: bytes  # the new entry in the directory the request was made on


def parse_request(value: bytes) -> CloneRequest:
    """``SRC\\0NAME`` -> a request; EINVAL if it is not one."""
    src, sep, name = value.partition(b"\0")
    src = src.strip(b"/")
    bad_name = not name or b"/" in name or b"\0" in name or name in (b".", b"..")
    parts = src.split(b"/")
    if not sep or not src or bad_name or any(p in (b"", b".", b"..") for p in parts):
        raise OSError(errno.EINVAL, "a clone request is SRC\\0NAME")
    if len(name) > 255:
        raise OSError(errno.ENAMETOOLONG, "name too long")
    return CloneRequest(src, name)


@dataclass(frozen=True)
class Caller:
    """The process asking: its user, its groups."""

    uid: int
    gids: frozenset[int]

    @classmethod
    def of(cls, uid: int, gid: int, pid: int) -> Caller:
        return cls(uid, frozenset({gid, *_supplementary_groups(pid)}))

    def may(self, st: os.stat_result, want: int) -> bool:
        """``access(2)``'s answer for a file with these attributes (no ACLs)."""
        if self.uid == 0:
            if want & X_OK and not stat.S_ISDIR(st.st_mode):
                return bool(st.st_mode & 0o111)
            return True
        mode = st.st_mode
        if st.st_uid == self.uid:
            bits = (mode >> 6) & 7
        elif st.st_gid in self.gids:
            bits = (mode >> 3) & 7
        else:
            bits = mode & 7
        return bits & want == want

    def require(self, st: os.stat_result, want: int) -> None:
        if not self.may(st, want):
            raise OSError(errno.EACCES, "permission denied")


def _supplementary_groups(pid: int) -> list[int]:
    """The caller's supplementary groups, from /proc (none if it is gone already)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return [int(g) for g in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []
