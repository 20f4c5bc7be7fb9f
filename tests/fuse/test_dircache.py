"""Directories read without OPENDIR (``operations.DIR_INO``, third_party/pyfuse3 dirino.patch).

The daemon answers the first OPENDIR with ENOSYS; from then on the kernel opens every
directory itself, keeps its listing cached and sends READDIRPLUS and FSYNCDIR naming the
directory by its inode. What is checked: that opening a directory costs the daemon no
request (its read(2)s of /dev/fuse, ``syscr`` in /proc/PID/io, one or more per
request), and that listings stay right where the daemon keeps them by inode between
requests: two readers interleaved, more directories half read than it keeps, changes
between reads, ``fsync`` of a directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from overlayboot.fs.daemon import pid_file
from overlayboot.fs.operations import DIR_INO, MAX_LISTINGS
from tests.fuse.conftest import Ovl, OvlFactory
from tests.fuse.helpers import getdents

NAMES = [f"entry-with-a-longish-name-{i:05d}" for i in range(600)]  # many READDIRPLUS


def _syscr(ovl: Ovl) -> int:
    pid = int(pid_file(Path(ovl.m())).read_text())
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("syscr:"))


def _big_dirs(ovl: Ovl) -> None:
    big = ovl.lower1 / "big"
    big.mkdir()
    for name in NAMES:
        (big / name).write_bytes(b"x")
    for i in range(MAX_LISTINGS + 6):
        d = ovl.lower1 / "many" / f"d{i:03d}"
        d.mkdir(parents=True)
        for name in NAMES[:80]:
            (d / name).write_bytes(b"")


def _names(entries: list[tuple[bytes, int, int, int]]) -> list[str]:
    return [os.fsdecode(e[0]) for e in entries if e[0] not in (b".", b"..")]


def test_opening_a_directory_costs_no_request(ovl_factory: OvlFactory) -> None:
    ovl = ovl_factory()
    assert DIR_INO, "this pyfuse3 lacks dirino.patch (the Makefile's build has it)"
    os.listdir(ovl.m())  # the first OPENDIR: answered ENOSYS
    os.listdir(ovl.m())  # now cached
    before = _syscr(ovl)
    for _ in range(500):
        fd = os.open(ovl.m(), os.O_RDONLY | os.O_DIRECTORY)
        os.close(fd)
        os.listdir(ovl.m())
    spent = _syscr(ovl) - before
    # with OPENDIR and RELEASEDIR it would be at least 2,000 reads of /dev/fuse
    assert spent < 100, f"the daemon read {spent} requests for 1,000 cached directory opens"


def test_listings_right_without_handles(ovl_factory: OvlFactory) -> None:
    ovl = ovl_factory(prepare=_big_dirs)
    big = ovl.m("big")
    # two readers interleaved on a directory the kernel has not cached yet
    with os.scandir(big) as it:
        first = [next(it).name]  # the first buffer of many
        assert sorted(os.listdir(big)) == NAMES  # the second reads it all meanwhile
        first += [e.name for e in it]
    assert sorted(first) == NAMES
    assert sorted(_names(getdents(big, 1024))) == NAMES
    # more directories half read at once than the daemon keeps listings for
    fds = [os.open(ovl.m(f"many/d{i:03d}"), os.O_RDONLY | os.O_DIRECTORY) for i in range(70)]
    try:
        for i in range(70):
            assert sorted(os.listdir(ovl.m(f"many/d{i:03d}"))) == NAMES[:80]
    finally:
        for fd in fds:
            os.close(fd)
    # changes through the mount show in the next listing (the kernel drops its cache)
    os.unlink(os.path.join(big, NAMES[3]))
    Path(big, "new").write_bytes(b"")
    os.rename(os.path.join(big, NAMES[5]), os.path.join(big, "renamed"))
    want = sorted({*NAMES, "new", "renamed"} - {NAMES[3], NAMES[5]})
    assert sorted(os.listdir(big)) == want
    assert sorted(_names(getdents(big, 512))) == want


def test_fsync_of_directories(ovl_factory: OvlFactory) -> None:
    ovl = ovl_factory()
    os.mkdir(ovl.m("made"))
    for rel in ("", "made"):
        fd = os.open(ovl.m(rel), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
            os.fdatasync(fd)
        finally:
            os.close(fd)
    assert os.path.isdir(ovl.u("made"))
