"""``copy_file_range`` through the mount (``cp --reflink=auto``): a lazy copy where it can be.

- daemon-served target (``--no-passthrough``): ``cp --reflink=auto`` of a 256 MiB lower
  file grows the upper by less than 64 KiB and reads equal; a later 4 KiB write costs one
  chunk; a copy of that lazily copied file is lazy too; range copies (into a new and into
  an existing file, from a lower and from a partial file) and a write after the copy
  through the copier's fd are right; all of it survives a remount and ``upper seal``;
- default mount (FUSE passthrough where the kernel has it): the kernel sends the request
  to the daemon, which copies for real (the target is bound to its upper file); the
  same copies read right.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pyfuse3
import pytest

from tests.fuse.clonetree import upper_bytes
from tests.fuse.conftest import Ovl, OvlFactory
from tests.fuse.helpers import seal_upper
from tests.mounts import have_fuse

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.clone,
    pytest.mark.skipif(not have_fuse(), reason="needs root and /dev/fuse"),
]

BIG = 256 << 20
MIB = 1 << 20
CHUNK = 64 << 10
_BLOCK = bytes(range(256)) * 4096  # 1 MiB


def _mib(i: int) -> bytes:
    """MiB number ``i`` of the big lower file (each one differs)."""
    return i.to_bytes(8, "little") + _BLOCK[8 + i :] + _BLOCK[8 : 8 + i]


def _expected(off: int, n: int) -> bytes:
    first, last = off // MIB, (off + n - 1) // MIB
    data = b"".join(_mib(i) for i in range(first, last + 1))
    return data[off - first * MIB :][:n]


def _write_big(o: Ovl) -> None:
    with open(o.lower1 / "big", "wb") as f:
        for i in range(BIG // MIB):
            f.write(_mib(i))  # real data: cp copies a sparse file by its holes instead


def _same(a: str | Path, b: str | Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def _pread(path: str, off: int, n: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, n, off)
    finally:
        os.close(fd)


def _cfr_whole(src: str, dst: str, tail: bytes = b"") -> int:
    """``copy_file_range`` of all of ``src`` into a new ``dst`` (then ``tail`` written
    through the same fd, as ``(cat src; echo) > dst`` does)."""
    fd_in = os.open(src, os.O_RDONLY)
    fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        n = os.copy_file_range(fd_in, fd_out, 1 << 40)
        if tail:
            os.write(fd_out, tail)
        return n
    finally:
        os.close(fd_in)
        os.close(fd_out)


def _range_copies(o: Ovl) -> None:
    """Copies of parts: into a new file at an offset, into an existing file, from the
    lower file and from a (perhaps partial) copy of it."""
    fd_in = os.open(o.m("big"), os.O_RDONLY)
    fd_out = os.open(o.m("part"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        assert os.copy_file_range(fd_in, fd_out, 3 * MIB + 7, MIB + 5, 100) == 3 * MIB + 7
        assert os.copy_file_range(fd_in, fd_out, 100, BIG - 50, 0) == 50  # ends at EOF
    finally:
        os.close(fd_in)
        os.close(fd_out)
    want = _expected(BIG - 50, 50) + bytes(50) + _expected(MIB + 5, 3 * MIB + 7)
    with open(o.m("part"), "rb") as f:
        assert f.read() == want
    fd_in = os.open(o.m("copy"), os.O_RDONLY)
    fd_out = os.open(o.m("part"), os.O_WRONLY)
    try:
        assert os.copy_file_range(fd_in, fd_out, 2 * CHUNK, BIG // 4 - CHUNK, 4096) == 2 * CHUNK
    finally:
        os.close(fd_in)
        os.close(fd_out)
    want = want[:4096] + _pread(o.m("copy"), BIG // 4 - CHUNK, 2 * CHUNK) + want[4096 + 2 * CHUNK :]
    with open(o.m("part"), "rb") as f:
        assert f.read() == want


def _write_into_copy(o: Ovl) -> None:
    with open(o.m("copy"), "r+b") as f:
        f.seek(BIG // 4 + 100)
        f.write(b"w" * 4096)
        f.flush()
        os.fsync(f.fileno())


def _check_copies(o: Ovl, root: str | Path) -> None:
    """The copies read as they should (``root``: the mount, or a sealed upper)."""
    big = o.lower1 / "big"
    r = Path(root)
    assert _pread(str(r / "copy"), BIG // 4 + 100, 4096) == b"w" * 4096
    assert _pread(str(r / "copy"), BIG // 4 + 99, 1) == _expected(BIG // 4 + 99, 1)
    assert _same(r / "copy", r / "copy2")
    with open(r / "copy", "r+b") as f:  # undo the write: the rest equals the lower file
        f.seek(BIG // 4 + 100)
        f.write(_expected(BIG // 4 + 100, 4096))
    assert _same(big, r / "copy")
    with open(r / "cat", "rb") as f:
        f.seek(BIG - 3)
        assert f.read() == _expected(BIG - 3, 3) + b"tail\n"
    assert os.path.getsize(r / "cat") == BIG + 5
    with open(r / "copy", "r+b") as f:
        f.seek(BIG // 4 + 100)
        f.write(b"w" * 4096)


def test_copy_file_range_of_a_lower_file_is_lazy(ovl_factory: OvlFactory) -> None:
    assert hasattr(pyfuse3.Operations, "copy_file_range"), (
        "pyfuse3 lacks third_party/pyfuse3/copyrange.patch: run make venv"
    )
    o = ovl_factory("overlayboot-nopassthrough", standard=False, prepare=_write_big)
    before = upper_bytes(o.upper)
    t0 = time.monotonic()
    subprocess.run(["cp", "--reflink=auto", o.m("big"), o.m("copy")], check=True)
    took = time.monotonic() - t0
    grown = upper_bytes(o.upper) - before
    assert grown < 64 << 10, grown
    assert took < 2.0, took
    assert _same(o.lower1 / "big", o.m("copy"))
    _write_into_copy(o)
    assert upper_bytes(o.upper) - before <= grown + CHUNK
    # a copy of the lazily copied (partial) file: lazy too, its chunk and all
    grown = upper_bytes(o.upper) - before
    assert _cfr_whole(o.m("copy"), o.m("copy2")) == BIG
    assert upper_bytes(o.upper) - before <= grown + CHUNK + 4096
    assert _cfr_whole(o.m("big"), o.m("cat"), b"tail\n") == BIG
    _check_copies(o, o.mnt)
    _range_copies(o)
    o.remount()
    _check_copies(o, o.mnt)
    o.umount()
    seal_upper(o.upper)
    _check_copies(o, o.upper)


def test_copy_file_range_with_passthrough_copies(ovl_factory: OvlFactory) -> None:
    o = ovl_factory("overlayboot", standard=False, prepare=_write_big)
    subprocess.run(["cp", "--reflink=auto", o.m("big"), o.m("copy")], check=True)
    assert _same(o.lower1 / "big", o.m("copy"))
    _write_into_copy(o)
    assert _cfr_whole(o.m("copy"), o.m("copy2")) == BIG
    assert _cfr_whole(o.m("big"), o.m("cat"), b"tail\n") == BIG
    _check_copies(o, o.mnt)
    _range_copies(o)
    o.remount()
    _check_copies(o, o.mnt)
