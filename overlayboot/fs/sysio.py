"""System calls the Python standard library lacks: renameat2, linkat of an open file, a
d_type probe, hole punching."""

from __future__ import annotations

import ctypes
import errno
import os

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

AT_FDCWD = -100

# the C library the interpreter itself links (dlopen(NULL)); no ctypes.util.find_library,
# which runs ldconfig, gcc or ld to look for it (none in the initramfs: slow failures)
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int


def renameat2(
    old: bytes, new: bytes, flags: int = 0, old_dir: int = AT_FDCWD, new_dir: int = AT_FDCWD
) -> None:
    """rename(2) with flags (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT), each
    name relative to its directory fd (or the working directory)."""
    if _renameat2(old_dir, old, new_dir, new, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old, None, new)


def malloc_trim() -> None:
    """Give the C heap's free pages back to the system (glibc keeps freed memory in the
    middle of its heap mapped: after a big structure is freed, RSS would stay)."""
    trim = getattr(_libc, "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


AT_EMPTY_PATH = 0x1000
AT_SYMLINK_FOLLOW = 0x400
_linkat = _libc.linkat
_linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_linkat.restype = ctypes.c_int


def link_open_file(fd: int, new: bytes) -> None:
    """Give the file open on ``fd`` the name ``new`` (an ``O_TMPFILE`` file): linkat(2)
    with ``AT_EMPTY_PATH`` (CAP_DAC_READ_SEARCH), else through ``/proc/self/fd``."""
    if _linkat(fd, b"", AT_FDCWD, new, AT_EMPTY_PATH) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.ENOENT and os.path.isdir("/proc/self/fd"):
        proc = b"/proc/self/fd/%d" % fd
        if _linkat(AT_FDCWD, proc, AT_FDCWD, new, AT_SYMLINK_FOLLOW) == 0:
            return
        err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), None, None, new)


class _Dirent64(ctypes.Structure):
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


_opendir = _libc.opendir
_opendir.argtypes = [ctypes.c_char_p]
_opendir.restype = ctypes.c_void_p
_readdir = _libc.readdir64
_readdir.argtypes = [ctypes.c_void_p]
_readdir.restype = ctypes.POINTER(_Dirent64)
_closedir = _libc.closedir
_closedir.argtypes = [ctypes.c_void_p]

DT_UNKNOWN = 0


def dir_has_dtype(path: bytes) -> bool:
    """True if readdir on ``path`` reports entry types (d_type), as overlayfs requires.

    ``path`` must contain at least one entry other than ``.`` and ``..``.
    """
    d = _opendir(path)
    if not d:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    try:
        while True:
            ent = _readdir(d)
            if not ent:
                return True
            name = ent.contents.d_name
            if name in (b".", b".."):
                continue
            return bool(ent.contents.d_type != DT_UNKNOWN)
    finally:
        _closedir(d)


FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2

_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a byte range (it reads as zeros after); False if the filesystem cannot."""
    if length <= 0:
        return True
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err))
