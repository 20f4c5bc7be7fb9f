"""kill -9 of the daemon while clones (and lazy ``copy_file_range`` copies) are made and
first written through.

A writer process clones a lower tree and a merged one (whose upper files are shared with
the clone) again and again, writing 4 KiB into each clone's files; the daemon is killed
in the middle. After a remount every name shows its old or its new content, never a mix,
never the other side's change; the sources are as they were, the scratch area is clean.
A copier does the same with ``copy_file_range`` of whole lower files (lazy copies).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyfuse3
import pytest

from tests.fuse.conftest import Ovl, OvlFactory
from tests.mounts import have_fuse
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.clone,
    pytest.mark.skipif(not have_fuse(), reason="needs root and /dev/fuse"),
]

NFILES = 12
SIZE = 256 << 10
NEW = b"N" * 4096

WRITER = r"""
import os, sys
from pathlib import Path
from overlayboot.clonecmd import clone
mnt, nfiles = sys.argv[1], int(sys.argv[2])
new = b"N" * 4096
i = 0
while True:
    for src, dst, prefix in (("tree", f"c{i}", "f"), ("merged", f"m{i}", "u")):
        clone(Path(mnt, src), Path(mnt, dst))
        for j in range(nfiles):
            fd = os.open(os.path.join(mnt, dst, f"{prefix}{j}"), os.O_WRONLY)
            os.pwrite(fd, new, 8192)
            os.close(fd)
    i += 1
"""


def _prepare(o: Ovl) -> None:
    tree = o.lower1 / "tree"
    tree.mkdir()
    for j in range(NFILES):
        (tree / f"f{j}").write_bytes(b"L" * SIZE)
    (o.lower1 / "merged").mkdir()


def _is_clone(name: str) -> bool:
    return name[0] in "cm" and name[1:].isdigit()


def _check(path: str, old: bytes) -> None:
    """Old content, or old with the 4 KiB at 8 KiB new: nothing else."""
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) == SIZE, path
    new = data[:8192] + NEW + data[8192 + 4096 :]
    assert data == old * SIZE or (data == new and data[:8192] == old * 8192), path


def _kill_daemon_during(
    o: Ovl, pid: int, script: str, far_enough: Callable[[], bool], what: str
) -> None:
    """Run ``script`` (MNT NFILES) against the mount until ``far_enough``, then kill -9
    the daemon (pid ``pid``) and the script."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", script, o.m(), str(NFILES)], env=env)
    try:
        wait_for(far_enough, [o.upper], 120, what)
    finally:
        o.kill_daemon(pid)
        proc.kill()
        proc.wait()


def test_kill_9_during_clones_and_first_writes(ovl_factory: OvlFactory) -> None:
    o = ovl_factory(standard=False, prepare=_prepare, mount=False)
    pid = o.mount_detached()
    for j in range(NFILES):  # the merged source's files live in the upper
        with open(o.m(f"merged/u{j}"), "wb") as f:
            f.write(b"U" * SIZE)

    def several_clones() -> bool:
        return sum(_is_clone(name) for name in os.listdir(o.upper)) >= 6

    _kill_daemon_during(o, pid, WRITER, several_clones, "clones being made")
    o.mount()
    names = os.listdir(o.m())
    assert sum(_is_clone(n) and n[0] == "c" for n in names) >= 3
    for j in range(NFILES):
        _check(o.m(f"tree/f{j}"), b"L")
        with open(o.m(f"merged/u{j}"), "rb") as f:
            assert f.read() == b"U" * SIZE
    for name in names:
        if _is_clone(name):
            prefix, old = ("f", b"L") if name[0] == "c" else ("u", b"U")
            assert sorted(os.listdir(o.m(name))) == sorted(f"{prefix}{j}" for j in range(NFILES))
            for j in range(NFILES):
                _check(o.m(f"{name}/{prefix}{j}"), old)
    assert not [n for n in os.listdir(o.scratch) if n.startswith(b"tmp.".decode())]
    # the shared files still change apart after the crash
    with open(o.m("merged/u0"), "r+b") as f:
        f.write(b"S")
    for name in names:
        if _is_clone(name) and name[0] == "m":
            with open(o.m(f"{name}/u0"), "rb") as f:
                assert f.read(1) == b"U", name


COPIER = r"""
import os, sys
mnt, nfiles = sys.argv[1], int(sys.argv[2])
i = 0
while True:
    for j in range(nfiles):
        src = os.open(os.path.join(mnt, "tree", f"f{j}"), os.O_RDONLY)
        dst = os.open(os.path.join(mnt, f"k{i}.{j}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.copy_file_range(src, dst, 1 << 30)
        os.pwrite(dst, b"N" * 4096, 8192)
        os.close(src)
        os.close(dst)
    i += 1
"""


def test_kill_9_during_lazy_copy_file_range(ovl_factory: OvlFactory) -> None:
    """``copy_file_range`` of whole lower files, made lazy (``--no-passthrough``), then a
    first write, with the daemon killed in the middle: each copy is empty (its map came
    first, its size last), or whole, or whole with the write."""
    assert hasattr(pyfuse3.Operations, "copy_file_range"), (
        "pyfuse3 lacks third_party/pyfuse3/copyrange.patch: run make venv"
    )
    o = ovl_factory(standard=False, prepare=_prepare, mount=False)
    o.extra_args = ("--no-passthrough",)
    pid = o.mount_detached()

    def several_copies() -> bool:
        return sum(name.startswith("k") for name in os.listdir(o.upper)) >= 3 * NFILES

    _kill_daemon_during(o, pid, COPIER, several_copies, "copies being made")
    lazy = [n for n in os.listdir(o.upper) if n.startswith("k") and _has_map(o.upper / n)]
    assert lazy, "no copy was made lazily"
    o.mount()
    names = [n for n in os.listdir(o.m()) if n.startswith("k")]
    assert len(names) >= 3 * NFILES
    for name in names:
        if os.path.getsize(o.m(name)) == 0:
            continue  # created, killed before its copy was whole
        _check(o.m(name), b"L")
    assert not [n for n in os.listdir(o.scratch) if n.startswith("tmp.")]


def _has_map(path: Path) -> bool:
    return any(key.endswith(".overlayboot.chunks") for key in os.listxattr(path))
