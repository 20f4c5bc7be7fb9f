"""FUSE passthrough: whole files are read and written by the kernel, not by the daemon.

Whether a read reached the daemon's READ handler is seen from outside, in the
daemon's own I/O counters (``/proc/PID/io``): a read through the daemon makes it
read the real file (``rchar`` grows by the file's size); a passthrough read is done
by the reading process on the backing file. Needs Linux 6.9+ and root (this host);
a mount whose kernel refuses passthrough fails these tests, it does not skip them.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import pytest

from overlayboot.fs.daemon import pid_file
from tests.fuse.conftest import Ovl, OvlFactory

SIZE = 8 << 20  # well above the request buffers and readahead the daemon reads itself
DATA = bytes(range(256)) * (SIZE // 256)


def _io(ovl: Ovl) -> dict[str, int]:
    """The daemon's I/O counters."""
    pid = int(pid_file(Path(ovl.m())).read_text())
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def _passthrough_state(ovl: Ovl) -> str:
    for line in reversed(ovl.log.read_text().splitlines()):
        if "FUSE passthrough" in line:
            return line.rsplit(" ", 1)[-1]
    raise AssertionError(f"the daemon logged no passthrough state in {ovl.log}")


def _with_big_files(ovl: Ovl) -> None:
    (ovl.lower1 / "big").write_bytes(DATA)


def _read_all(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def test_whole_files_reach_no_read_or_write_handler(ovl_factory: OvlFactory) -> None:
    ovl = ovl_factory(prepare=_with_big_files)
    assert _passthrough_state(ovl) == "on", "this kernel (6.9+ needed) refused FUSE passthrough"
    before = _io(ovl)
    assert _read_all(ovl.m("big")) == DATA  # a lower file
    with open(ovl.m("new"), "wb", buffering=0) as f:  # an upper file, created
        f.write(DATA)
    with open(ovl.m("new"), "r+b", buffering=0) as f:  # opened again, read and written
        assert f.read() == DATA
        f.seek(SIZE)
        f.write(b"tail")
    after = _io(ovl)
    assert after["rchar"] - before["rchar"] < SIZE // 8, (before, after)
    assert after["wchar"] - before["wchar"] < SIZE // 8, (before, after)
    assert Path(ovl.u("new")).read_bytes() == DATA + b"tail"
    assert os.stat(ovl.m("new")).st_size == SIZE + 4
    assert not os.path.exists(ovl.u("big"))  # reading copied nothing up


def test_without_passthrough_the_daemon_reads(ovl_factory: OvlFactory) -> None:
    ovl = ovl_factory(mount=False, prepare=_with_big_files)
    ovl.extra_args = ("--no-passthrough",)
    ovl.mount()
    assert _passthrough_state(ovl) == "off"
    before = _io(ovl)
    assert _read_all(ovl.m("big")) == DATA
    with open(ovl.m("new"), "wb", buffering=0) as f:
        f.write(DATA)
    after = _io(ovl)
    assert after["rchar"] - before["rchar"] >= SIZE
    assert after["wchar"] - before["wchar"] >= SIZE
    assert Path(ovl.u("new")).read_bytes() == DATA


@pytest.mark.parametrize("ovl", ["overlayboot", "overlayboot-chunked"], indirect=True)
def test_fd_opened_before_copy_up_keeps_the_lower_data(ovl: Ovl) -> None:
    """The decision (README, "FUSE passthrough"): an fd open on the lower file before a
    copy-up is bound to that file; it reads the lower data after the copy-up, as a
    mapping of it does on kernel overlayfs. Everything opened after sees the new data,
    and both show the same inode number."""
    assert _passthrough_state(ovl) == "on"
    with open(ovl.m("bottom.txt"), "rb", buffering=0) as early:
        mapped = mmap.mmap(early.fileno(), 0, prot=mmap.PROT_READ)
        with open(ovl.m("bottom.txt"), "r+b", buffering=0) as w:
            w.write(b"BOT")
            assert os.pread(early.fileno(), 100, 0) == b"bottom\n"
            assert mapped[:] == b"bottom\n"
            assert _read_all(ovl.m("bottom.txt")) == b"BOTtom\n"
            assert os.pread(w.fileno(), 100, 0) == b"BOTtom\n"
        assert os.fstat(early.fileno()).st_ino == os.lstat(ovl.m("bottom.txt")).st_ino
        mapped.close()
    assert _read_all(ovl.m("bottom.txt")) == b"BOTtom\n"
    assert Path(ovl.u("bottom.txt")).read_bytes() == b"BOTtom\n"


def test_truncate_and_o_trunc_while_the_lower_file_is_open(ovl: Ovl) -> None:
    """A truncate by path and an open with O_TRUNC of a file open on its lower layer
    (the kernel looks it up again: see files.OpenFiles.check_writable)."""
    early = os.open(ovl.m("top.txt"), os.O_RDONLY)
    early2 = os.open(ovl.m("dir/a1.txt"), os.O_RDONLY)
    try:
        os.truncate(ovl.m("top.txt"), 2)
        assert _read_all(ovl.m("top.txt")) == b"to"
        assert os.stat(ovl.m("top.txt")).st_size == 2
        with open(ovl.m("dir/a1.txt"), "wb") as f:
            f.write(b"new a1")
        assert _read_all(ovl.m("dir/a1.txt")) == b"new a1"
        assert os.pread(early, 100, 0) == b"top\n"
        assert os.pread(early2, 100, 0) == b"a1\n"
        st = os.lstat(ovl.m("top.txt"))
        assert os.fstat(early).st_ino == st.st_ino
        assert st.st_ino in {e.inode() for e in os.scandir(ovl.m())}
    finally:
        os.close(early)
        os.close(early2)
    assert Path(ovl.u("top.txt")).read_bytes() == b"to"
    assert Path(ovl.u("dir/a1.txt")).read_bytes() == b"new a1"


def test_fstat_of_an_early_fd_after_a_chmod_and_a_write(ovl: Ovl) -> None:
    """The file got its metadata copied up while bound to its lower file, then was
    written: the early fd's inode has no name and no fd in the daemon, and fstat still
    answers (from the lower file it reads)."""
    early = os.open(ovl.m("dir/a1.txt"), os.O_RDONLY)
    try:
        assert os.pread(early, 100, 0) == b"a1\n"
        os.chmod(ovl.m("dir/a1.txt"), 0o600)
        with open(ovl.m("dir/a1.txt"), "ab") as w:
            w.write(b"more\n")
        assert os.pread(early, 100, 0) == b"a1\n"
        st = os.fstat(early)
        assert st.st_ino == os.lstat(ovl.m("dir/a1.txt")).st_ino
        assert st.st_size == 3
    finally:
        os.close(early)
    assert _read_all(ovl.m("dir/a1.txt")) == b"a1\nmore\n"


def test_an_unlinked_upper_file_gives_its_space_back(ovl_factory: OvlFactory) -> None:
    """The kernel holds a passed-through file's backing file open; after the last close
    of an unlinked upper file its blocks must be free again (CI found a full tmpfs upper
    that stayed full after rm)."""
    ovl = ovl_factory(upper_size="6M")
    assert _passthrough_state(ovl) == "on", "this kernel (6.9+ needed) refused FUSE passthrough"
    for _ in range(3):
        fd = os.open(ovl.m("fill"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with pytest.raises(OSError) as full:
                while True:  # until the 6 MiB are full
                    os.write(fd, DATA[: 1 << 20])
            assert full.value.errno == errno.ENOSPC
        finally:
            os.close(fd)
        os.unlink(ovl.m("fill"))
        with open(ovl.m("small"), "wb", buffering=0) as f:
            f.write(b"small")
        with open(ovl.m("small"), "rb") as f:
            assert f.read() == b"small"
