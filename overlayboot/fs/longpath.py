"""Path system calls that also work on paths longer than PATH_MAX.

The daemon names layer objects by absolute byte paths (layer root + merged path). The
kernel refuses a path of PATH_MAX (4096) bytes or more with ENAMETOOLONG, while a merged
tree may be deeper than that (kernel overlayfs works by dentries and has no such limit).
Each call here takes the plain system call for a short path, the usual case, and for a
long one opens the parent directory by walking the path in pieces shorter than the
limit (``openat`` with ``O_PATH``, one piece relative to the one before) and makes the
``*at`` call relative to it. xattr calls have no ``*at`` form before Linux 6.13: for a
long path they run in the parent directory (``fchdir``, under a lock, back to ``/``
after); every other path the daemon uses is absolute, so the working directory is
nobody else's concern.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from overlayboot.fs import sysio

LIMIT = 4000  # a path at least this long takes the walk (PATH_MAX is 4096, with the NUL)
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_cwd_lock = threading.Lock()
T = TypeVar("T")


def _open_dir(path: bytes) -> int:
    """An ``O_PATH`` fd of directory ``path`` (absolute), opened piece by piece."""
    fd = os.open(b"/", _DIR)
    rest = path.lstrip(b"/")
    try:
        while rest:
            if len(rest) < LIMIT:
                piece, rest = rest, b""
            else:
                cut = rest.rfind(b"/", 0, LIMIT)
                piece, rest = rest[:cut], rest[cut + 1 :]
            fd, old = os.open(piece, _DIR, dir_fd=fd), fd
            os.close(old)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _parent(path: bytes) -> Iterator[tuple[int, bytes]]:
    """(fd of the parent directory, last name) of a long absolute ``path``."""
    head, _, name = path.rstrip(b"/").rpartition(b"/")
    fd = _open_dir(head or b"/")
    try:
        yield fd, name
    finally:
        os.close(fd)


def _in_parent(path: bytes, call: Callable[[bytes], T]) -> T:
    """``call(name)`` run with the working directory in ``path``'s parent."""
    with _parent(path) as (fd, name), _cwd_lock:
        os.fchdir(fd)
        try:
            return call(name)
        finally:
            os.chdir(b"/")


def lstat(path: bytes) -> os.stat_result:
    if len(path) < LIMIT:
        return os.lstat(path)
    with _parent(path) as (fd, name):
        return os.stat(name, dir_fd=fd, follow_symlinks=False)


def exists(path: bytes) -> bool:
    """Whether a name is there (a dangling symlink counts), like ``os.path.lexists``."""
    try:
        lstat(path)
    except OSError:
        return False
    return True


def open(path: bytes, flags: int, mode: int = 0o777) -> int:
    if len(path) < LIMIT:
        return os.open(path, flags, mode)
    with _parent(path) as (fd, name):
        return os.open(name, flags, mode, dir_fd=fd)


def mkdir(path: bytes, mode: int) -> None:
    if len(path) < LIMIT:
        return os.mkdir(path, mode)
    with _parent(path) as (fd, name):
        os.mkdir(name, mode, dir_fd=fd)


def mknod(path: bytes, mode: int, device: int = 0) -> None:
    if len(path) < LIMIT:
        return os.mknod(path, mode, device)
    with _parent(path) as (fd, name):
        os.mknod(name, mode, device, dir_fd=fd)


def symlink(target: bytes, path: bytes) -> None:
    if len(path) < LIMIT:
        return os.symlink(target, path)
    with _parent(path) as (fd, name):
        os.symlink(target, name, dir_fd=fd)


def readlink(path: bytes) -> bytes:
    if len(path) < LIMIT:
        return os.readlink(path)
    with _parent(path) as (fd, name):
        return os.readlink(name, dir_fd=fd)


def unlink(path: bytes) -> None:
    if len(path) < LIMIT:
        return os.unlink(path)
    with _parent(path) as (fd, name):
        os.unlink(name, dir_fd=fd)


def rmdir(path: bytes) -> None:
    if len(path) < LIMIT:
        return os.rmdir(path)
    with _parent(path) as (fd, name):
        os.rmdir(name, dir_fd=fd)


def rename(old: bytes, new: bytes, flags: int = 0) -> None:
    """rename(2), or renameat2(2) with ``flags`` (sysio's RENAME_*)."""
    if len(old) < LIMIT and len(new) < LIMIT:
        if flags:
            return sysio.renameat2(old, new, flags)
        return os.rename(old, new)
    with _parent(old) as (old_fd, old_name), _parent(new) as (new_fd, new_name):
        sysio.renameat2(old_name, new_name, flags, old_fd, new_fd)


def link(old: bytes, new: bytes) -> None:
    if len(old) < LIMIT and len(new) < LIMIT:
        return os.link(old, new)
    with _parent(old) as (old_fd, old_name), _parent(new) as (new_fd, new_name):
        os.link(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd, follow_symlinks=False)


def chmod(path: bytes, mode: int) -> None:
    if len(path) < LIMIT:
        return os.chmod(path, mode)
    with _parent(path) as (fd, name):
        os.chmod(name, mode, dir_fd=fd)


def chown(path: bytes, uid: int, gid: int) -> None:
    """lchown(2): a symlink itself, not what it points to."""
    if len(path) < LIMIT:
        return os.chown(path, uid, gid, follow_symlinks=False)
    with _parent(path) as (fd, name):
        os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)


def utime(path: bytes, ns: tuple[int, int]) -> None:
    """utimensat(2) with AT_SYMLINK_NOFOLLOW."""
    if len(path) < LIMIT:
        return os.utime(path, ns=ns, follow_symlinks=False)
    with _parent(path) as (fd, name):
        os.utime(name, ns=ns, dir_fd=fd, follow_symlinks=False)


def truncate(path: bytes, size: int) -> None:
    if len(path) < LIMIT:
        return os.truncate(path, size)
    fd = open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


@contextlib.contextmanager
def scandir(path: bytes) -> Iterator[Iterator[os.DirEntry[bytes]]]:
    """``os.scandir`` of a directory; for a long path the entries' ``path`` is the bare
    name (build full paths from ``path``, not from the entry)."""
    if len(path) < LIMIT:
        with os.scandir(path) as it:
            yield it
        return
    fd = open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with os.scandir(fd) as it_fd:
            yield (entry_as_bytes(e) for e in it_fd)
    finally:
        os.close(fd)


def regular_files(top: bytes) -> Iterator[bytes]:
    """The path of every regular file under directory ``top`` (symlinks not followed),
    depth first, each directory's names in sorted order and listed whole before its files
    are yielded (so a caller may replace the file it was given)."""
    stack = [top]
    while stack:
        d = stack.pop()
        with scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for ent in entries:
            path = d + b"/" + ent.name  # not ent.path: a bare name past LIMIT
            if ent.is_dir(follow_symlinks=False):
                stack.append(path)
            elif ent.is_file(follow_symlinks=False):
                yield path


class _BytesEntry:
    """A DirEntry of an fd scan (str names) seen with a bytes name, as path scans give."""

    def __init__(self, entry: os.DirEntry[str]) -> None:
        self._entry = entry
        self.name = os.fsencode(entry.name)
        self.path = self.name

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return self._entry.is_dir(follow_symlinks=follow_symlinks)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return self._entry.is_file(follow_symlinks=follow_symlinks)

    def is_symlink(self) -> bool:
        return self._entry.is_symlink()

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return self._entry.stat(follow_symlinks=follow_symlinks)


def entry_as_bytes(entry: os.DirEntry[str]) -> os.DirEntry[bytes]:
    return _BytesEntry(entry)  # type: ignore[return-value]  # the same reading interface


def getxattr(path: bytes, name: bytes | str) -> bytes:
    if len(path) < LIMIT:
        return os.getxattr(path, name, follow_symlinks=False)
    return _in_parent(path, lambda n: os.getxattr(n, name, follow_symlinks=False))


def setxattr(path: bytes, name: bytes | str, value: bytes, flags: int = 0) -> None:
    if len(path) < LIMIT:
        return os.setxattr(path, name, value, flags, follow_symlinks=False)
    _in_parent(path, lambda n: os.setxattr(n, name, value, flags, follow_symlinks=False))


def removexattr(path: bytes, name: bytes | str) -> None:
    if len(path) < LIMIT:
        return os.removexattr(path, name, follow_symlinks=False)
    _in_parent(path, lambda n: os.removexattr(n, name, follow_symlinks=False))


def listxattr(path: bytes) -> list[str]:
    if len(path) < LIMIT:
        return os.listxattr(path, follow_symlinks=False)
    return _in_parent(path, lambda n: os.listxattr(n, follow_symlinks=False))
