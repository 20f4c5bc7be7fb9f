"""Helpers for the mounted semantics tests: raw syscalls, tree fingerprints, running as a user.

Nothing here mounts an overlay (tests/mounts.py and tests/fuse/conftest.py do);
these are the small tools the tests use to look at the result exactly.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import pickle
import stat
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayboot.fs import sysio

# overlayboot (default options, and with every copy-up partial) and the reference
KINDS = ["overlayboot", "overlayboot-chunked", "kernel"]
OURS = ("overlayboot", "overlayboot-chunked")
# run one test body against overlayboot and kernel overlayfs (the reference)
BOTH = pytest.mark.parametrize("ovl", KINDS, indirect=True)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

RENAME_NOREPLACE = sysio.RENAME_NOREPLACE
RENAME_EXCHANGE = sysio.RENAME_EXCHANGE
_SYS_GETDENTS64 = 217  # x86_64

_libc.syscall.restype = ctypes.c_long
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


def _raise_errno(path: object = None) -> None:
    err = ctypes.get_errno()
    if path is None:
        raise OSError(err, os.strerror(err))
    raise OSError(err, os.strerror(err), str(path))


def renameat2(old: str | Path, new: str | Path, flags: int) -> None:
    """renameat2(2) with RENAME_NOREPLACE / RENAME_EXCHANGE (the daemon's own ctypes binding)."""
    sysio.renameat2(os.fsencode(old), os.fsencode(new), flags)


def fallocate(fd: int, offset: int, length: int, mode: int = 0) -> None:
    """fallocate(2) itself, without glibc's posix_fallocate emulation."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        _raise_errno()


def getdents(path: str | Path, bufsize: int) -> list[tuple[bytes, int, int, int]]:
    """All entries of a directory read with getdents64 and a ``bufsize``-byte buffer.

    Returns (name, d_ino, d_off, d_type) in the order the kernel gave them.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    buf = ctypes.create_string_buffer(bufsize)
    out: list[tuple[bytes, int, int, int]] = []
    try:
        while True:
            n = _libc.syscall(_SYS_GETDENTS64, fd, buf, ctypes.c_uint(bufsize))
            if n < 0:
                _raise_errno(path)
            if n == 0:
                return out
            raw = buf.raw[:n]
            pos = 0
            while pos < n:
                ino = int.from_bytes(raw[pos : pos + 8], "little")
                off = int.from_bytes(raw[pos + 8 : pos + 16], "little", signed=True)
                reclen = int.from_bytes(raw[pos + 16 : pos + 18], "little")
                dtype = raw[pos + 18]
                name = raw[pos + 19 : pos + reclen].split(b"\0", 1)[0]
                out.append((name, ino, off, dtype))
                pos += reclen
    finally:
        os.close(fd)


class _Dirent64(ctypes.Structure):
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.opendir.restype = ctypes.c_void_p
_libc.readdir64.argtypes = [ctypes.c_void_p]
_libc.readdir64.restype = ctypes.POINTER(_Dirent64)
_libc.telldir.argtypes = [ctypes.c_void_p]
_libc.telldir.restype = ctypes.c_long
_libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
_libc.seekdir.restype = None
_libc.rewinddir.argtypes = [ctypes.c_void_p]
_libc.rewinddir.restype = None
_libc.closedir.argtypes = [ctypes.c_void_p]


class Dir:
    """libc's DIR stream: readdir, telldir, seekdir, rewinddir."""

    def __init__(self, path: str | Path) -> None:
        self._d = _libc.opendir(os.fsencode(path))
        if not self._d:
            _raise_errno(path)

    def read(self) -> bytes | None:
        ent = _libc.readdir64(self._d)
        return bytes(ent.contents.d_name) if ent else None

    def tell(self) -> int:
        return int(_libc.telldir(self._d))

    def seek(self, pos: int) -> None:
        _libc.seekdir(self._d, pos)

    def rewind(self) -> None:
        _libc.rewinddir(self._d)

    def close(self) -> None:
        if self._d:
            _libc.closedir(self._d)
            self._d = None

    def __enter__(self) -> Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def xattrs(path: str | Path) -> dict[str, bytes]:
    out = {}
    for key in os.listxattr(path, follow_symlinks=False):
        out[key] = os.getxattr(path, key, follow_symlinks=False)
    return out


def _file_digest(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything about a tree that a read-only user must never change (not atime).

    Walks with directory fds (paths through /proc/self/fd stay short), so trees
    deeper than PATH_MAX work too.
    """
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirs, files, dfd in os.fwalk(root):
        names = [*dirs, *files] + (["."] if dirpath == str(root) else [])
        for name in names:
            path = f"/proc/self/fd/{dfd}/{name}"
            st = os.lstat(path)
            content: str | None = None
            if stat.S_ISREG(st.st_mode):
                content = _file_digest(path)
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            rel = os.path.normpath(os.path.join(os.path.relpath(dirpath, root), name))
            out[rel] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_nlink,
                st.st_ino,
                st.st_rdev,
                st.st_mtime_ns,
                st.st_ctime_ns,
                tuple(sorted(xattrs(path).items())),
                content,
            )
    return out


def set_times(path: str | Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def errno_of(fn: Callable[[], object]) -> int:
    """The errno ``fn`` fails with, 0 if it succeeds."""
    try:
        fn()
    except OSError as exc:
        return exc.errno or -1
    return 0


def as_user(uid: int, gid: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child as ``uid``/``gid`` (no supplementary groups).

    Returns what ``fn`` returned; an OSError it raised comes back as
    ``("errno", number)``; anything else is re-raised here as AssertionError.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 0
        try:
            os.close(rfd)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            try:
                result: Any = ("ok", fn())
            except OSError as exc:
                result = ("errno", exc.errno)
            except BaseException:
                result = ("crash", traceback.format_exc())
            with os.fdopen(wfd, "wb") as f:
                pickle.dump(result, f)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the child process failed"
    kind, value = pickle.loads(data)
    if kind == "crash":
        raise AssertionError(f"as_user({uid}) failed:\n{value}")
    return value if kind == "ok" else ("errno", value)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the duration."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size},mode=0755"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def blocks_bytes(path: str | Path) -> int:
    """Bytes actually allocated to a file."""
    return os.lstat(path).st_blocks * 512


def is_whiteout(path: str | Path) -> bool:
    """A kernel-overlayfs whiteout: a character device 0/0."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


CHUNKS_XATTR = "trusted.overlayboot.chunks"


def _varints(raw: bytes) -> list[int]:
    out, value, shift = [], 0, 0
    for byte in raw:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            out.append(value)
            value, shift = 0, 0
    return out


def wait_for_queued_release(merged_dir: str | Path) -> None:
    """Wait until the daemon has handled the RELEASE the last close queued (a partial
    copy-up records its map then): a request that always reaches the daemon (xattrs
    are never cached) is answered after the ones queued before it."""
    os.listxattr(merged_dir)


def upper_bytes(upper_file: str | Path, lowers: list[Path]) -> bytes:
    """The contents of an upper file as a whole file.

    A partial copy-up (README, "Partial copy-up") is decoded here on its own, from
    the documented map format and its lower file, as a kernel-side reader would.
    """
    with open(upper_file, "rb") as f:
        data = f.read()
    try:
        raw = os.getxattr(upper_file, CHUNKS_XATTR)
    except OSError:
        return data
    magic, version, shift, layer, valid, *_, plen, rlen = struct.unpack_from("<4sBBHQQQq16sHH", raw)
    assert (magic, version) == (b"OBCM", 1)
    with open(lowers[layer] / os.fsdecode(raw[60 : 60 + plen]), "rb") as f:
        lower = f.read()[:valid]
    pairs = _varints(raw[60 + plen + rlen :])
    mapped: set[int] = set()
    end = 0
    for gap, length in zip(pairs[::2], pairs[1::2], strict=True):
        mapped.update(range(end + gap, end + gap + length))
        end += gap + length
    cs = 1 << shift
    out = bytearray(len(data))
    for start in range(0, len(data), cs):
        stop = min(start + cs, len(data))
        src = data[start:stop] if start // cs in mapped else lower[start:stop]
        out[start : start + len(src)] = src
    return bytes(out)


def overlayboot_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m overlayboot ARGS…`` as a user runs it: text output, 120 s at most."""
    argv = [sys.executable, "-m", "overlayboot", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def seal_upper(upper: Path) -> None:
    """``overlayboot upper seal UPPER`` (the lower from the maps' records); it must work."""
    r = overlayboot_cli("upper", "seal", str(upper))
    assert r.returncode == 0, r.stderr
