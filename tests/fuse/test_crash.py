"""Crash safety: kill -9 the daemon in the middle of copy-ups, remount, find no torn file.

Every file must show either its complete old content or a complete new one
(old + whole appended records), and the remount must clear the scratch area
the killed daemon left in the work dir.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuse.conftest import Ovl, OvlFactory
from tests.mounts import have_fuse
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.slow,
    pytest.mark.skipif(not have_fuse(), reason="needs root and /dev/fuse"),
]

MiB = 1 << 20
SIZE_MIB = 200
NFILES = 3
MARK = b"<appended record>\n"
BLOCK = bytes(range(256)) * 4096  # 1 MiB, the lower files repeat it

WRITER = """
import sys
mark = sys.argv[1].encode()
paths = sys.argv[2:]
while True:
    for p in paths:
        try:
            with open(p, "ab") as f:
                f.write(mark)
        except OSError:
            sys.exit(0)
"""


def _big_files(o: Ovl) -> None:
    for i in range(NFILES):
        with open(o.lower1 / f"big{i}", "wb") as f:
            for _ in range(SIZE_MIB):
                f.write(BLOCK)


def _tmp_files(scratch: Path) -> list[Path]:
    try:
        return [scratch / n for n in os.listdir(scratch) if n.startswith("tmp.")]
    except FileNotFoundError:
        return []


def _check_whole(path: str) -> int:
    """Old content plus k whole records: return k; fail on anything torn."""
    size = os.stat(path).st_size
    base = SIZE_MIB * MiB
    k, rest = divmod(size - base, len(MARK))
    assert size >= base and rest == 0, (path, size)
    with open(path, "rb") as f:
        for i in range(SIZE_MIB):
            assert f.read(MiB) == BLOCK, (path, i)
        assert f.read() == MARK * k, path
    return k


def test_kill_9_during_copy_ups(ovl_factory: OvlFactory) -> None:
    o = ovl_factory(standard=False, prepare=_big_files, mount=False)
    o.extra_args = ("--copy-up=whole",)  # this test is about whole copy-ups in the work dir
    pid = o.mount_detached()
    assert os.path.ismount(o.mnt)
    paths = [o.m(f"big{i}") for i in range(NFILES)]
    writer = subprocess.Popen([sys.executable, "-c", WRITER, MARK.decode(), *paths])
    torn: list[Path] = []

    def second_copy_up_well_under_way() -> bool:
        # the first copy-up is done (big0 renamed into the upper) and another one has
        # written more than 8 MiB of its temporary copy in the scratch area
        if os.path.exists(o.u("big0")):
            torn[:] = [p for p in _tmp_files(o.scratch) if p.stat().st_size > 8 * MiB]
        return bool(torn)

    try:  # re-checked on every write, create and rename in the scratch area and the upper
        wait_for(second_copy_up_well_under_way, [o.scratch, o.upper], 120, "a torn copy-up")
    finally:  # whatever happened, the daemon dies and the dead mount goes
        o.kill_daemon(pid)
        writer.kill()
        writer.wait()
    assert torn, "never caught a copy-up in progress"
    assert not os.path.ismount(o.mnt)
    _check_after_crash(o, paths)


def _check_after_crash(o: Ovl, paths: list[str]) -> None:
    # the killed daemon left its half-built copy in the scratch area, nowhere else
    assert _tmp_files(o.scratch)
    for name in os.listdir(o.upper):
        _check_whole(o.u(name))
    assert _check_whole(o.u("big0")) >= 1

    o.mount()
    assert _tmp_files(o.scratch) == []
    appended = [_check_whole(p) for p in paths]
    assert appended[0] >= 1
    # the mount works on: finish the copy-ups that were cut off
    for p in paths:
        with open(p, "ab") as f:
            f.write(MARK)
    assert [_check_whole(p) for p in paths] == [k + 1 for k in appended]
    o.remount()
    assert [_check_whole(p) for p in paths] == [k + 1 for k in appended]
