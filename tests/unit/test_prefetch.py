"""Read-ahead of a partial file's lower: which windows a reader's requests ask for, and
that the thread really brings a file's pages in."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

from overlayboot.fs.prefetch import STEP, WINDOW, Prefetcher, Sequential
from tests.waiting import poll_until

MIB = 1 << 20


def test_sequential_reader_keeps_a_window_ahead() -> None:
    seq = Sequential()
    limit = 64 * MIB
    asked: list[tuple[int, int]] = []
    for off in range(0, 16 * MIB, MIB):
        window = seq.after_read(off, off + MIB, limit)
        if window is not None:
            asked.append(window)
        ahead = seq.asked - (off + MIB)
        assert ahead + MIB >= STEP and ahead <= WINDOW, (off, ahead)
    # contiguous windows, none twice
    for (a, n), (b, _) in itertools.pairwise(asked):
        assert a + n == b
    # a jump elsewhere asks nothing, and then reading on from there does
    assert seq.after_read(40 * MIB, 41 * MIB, limit) is None
    assert seq.after_read(41 * MIB, 42 * MIB, limit) == (42 * MIB, STEP)
    # nothing past the lower's end
    assert seq.after_read(42 * MIB, limit, limit) is None


def test_prefetcher_reads_pages_in() -> None:
    # /var/tmp: on disk (a tmpfs /tmp would keep the file cached whatever it is told)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        _prefetch_window(Path(tmp) / "f")


def _prefetch_window(path: Path) -> None:
    path.write_bytes(os.urandom(4 * MIB))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert not _cached(fd, 3 * MIB)
        pre = Prefetcher()
        pre.ahead(fd, 2 * MIB, 2 * MIB)
        pre.stop()  # joins the thread: the advice was given
        poll_until(lambda: _cached(fd, 3 * MIB), 10, "the window read in")
        assert not _cached(fd, 0)  # only the window asked for
    finally:
        os.close(fd)


def _cached(fd: int, off: int) -> bool:
    """Is the page at ``off`` in the page cache (a read that must not wait succeeds)?"""
    try:
        return os.preadv(fd, [bytearray(4096)], off, os.RWF_NOWAIT) > 0
    except BlockingIOError:
        return False
