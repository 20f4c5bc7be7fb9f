"""Upper files shared by a clone and its source, made plain copies (``upper seal``).

Kernel overlayfs cannot represent an upper file shared by several names that must change
apart (``cow``): sealing gives every name but the first of such a file a copy of its
own (data with its holes, owner, mode, xattrs, times), so that kernel overlayfs shows the
same tree. Each copy is made unnamed (``O_TMPFILE``) in the file's directory, named,
synced and renamed over the name it replaces: an interrupted seal can be run again.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence

from overlayboot.fs import longpath, sysio
from overlayboot.fs.datacopy import copy_data
from overlayboot.fs.whiteout import XattrNames, getxattr

TMP_NAME = b".overlayboot-unshare.tmp"


def copy_attributes(
    src: bytes, fd: int, st: os.stat_result, names: XattrNames, *, data: bool = True
) -> None:
    """Owner, mode, every xattr (the overlay's own too, but the shared mark), times.

    Without ``data`` a partial copy-up's chunk map is left behind (the file is empty).
    """
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    skip = {names.cow} if data else {names.cow, names.chunks}
    try:
        keys = longpath.listxattr(src)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.ENODATA):
            raise
        keys = []
    for key in keys:
        if key in skip:
            continue
        value = getxattr(src, key)
        if value is not None:
            os.setxattr(fd, key, value)
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def shared_files(upper: bytes, names: XattrNames) -> Iterator[tuple[bytes, os.stat_result]]:
    """(path, lstat) of every name of an upper regular file marked shared."""
    for path in longpath.regular_files(upper):
        st = longpath.lstat(path)
        if st.st_nlink > 1 and getxattr(path, names.cow) is not None:
            yield path, st


def unshare_all(upper: bytes, spaces: Sequence[XattrNames]) -> int:
    """Give every name of a shared upper file but one a copy of its own; how many copies."""
    made = 0
    for names in spaces:
        seen: set[int] = set()
        for path, st in list(shared_files(upper, names)):
            if st.st_ino not in seen:
                seen.add(st.st_ino)  # the first name keeps the file
                continue
            _replace_with_copy(path, st, names)
            made += 1
        if seen:
            _drop_marks(upper, names)
    return made


def _replace_with_copy(path: bytes, st: os.stat_result, names: XattrNames) -> None:
    parent = path.rsplit(b"/", 1)[0]
    tmp = parent + b"/" + TMP_NAME
    fd = longpath.open(parent, os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        copy_data(path, fd, st.st_size)
        os.ftruncate(fd, st.st_size)
        copy_attributes(path, fd, st, names)
        os.fsync(fd)
        try:
            longpath.unlink(tmp)  # left by an interrupted seal
        except FileNotFoundError:
            pass
        sysio.link_open_file(fd, tmp)
    finally:
        os.close(fd)
    pst = longpath.lstat(parent)
    longpath.rename(tmp, path)
    longpath.utime(parent, (pst.st_atime_ns, pst.st_mtime_ns))


def _drop_marks(upper: bytes, names: XattrNames) -> None:
    """Remove the shared mark of the files that kept it (one name each now)."""
    for path in longpath.regular_files(upper):
        if getxattr(path, names.cow) is not None:
            longpath.removexattr(path, names.cow)
