"""Failures: bad mount commands end with one line and a non-zero exit; a full upper
fails the writer with ENOSPC and leaves neither a partial copy nor scratch behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fuse.conftest import Ovl, OvlFactory
from tests.fuse.helpers import errno_of, tmpfs
from tests.mounts import have_fuse, umount

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not have_fuse(), reason="needs root and /dev/fuse"),
]


def _layers(base: Path) -> dict[str, Path]:
    paths = {name: base / name for name in ("lower", "upper", "work", "mnt")}
    for p in paths.values():
        p.mkdir()
    return paths


@contextlib.contextmanager
def _missing(p: dict[str, Path], key: str) -> Iterator[None]:
    p[key].rmdir()
    yield


@contextlib.contextmanager
def _same_upper_and_lower(p: dict[str, Path], key: str) -> Iterator[None]:
    p["upper"] = p["lower"]
    yield


@contextlib.contextmanager
def _work_on_other_fs(p: dict[str, Path], key: str) -> Iterator[None]:
    with tmpfs(p["work"], "4m"):
        yield


@contextlib.contextmanager
def _busy_mountpoint(p: dict[str, Path], key: str) -> Iterator[None]:
    with tmpfs(p["mnt"], "1m"):
        yield


CASES: dict[str, tuple[Callable[..., contextlib.AbstractContextManager[None]], str]] = {
    "missing lower": (_missing, "lower"),
    "missing upper": (_missing, "upper"),
    "missing work": (_missing, "work"),
    "upper is lower": (_same_upper_and_lower, ""),
    "work on another fs": (_work_on_other_fs, ""),
    "busy mount point": (_busy_mountpoint, ""),
    "missing mount point": (_missing, "mnt"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_mount_commands_fail_with_one_line(tmp_path: Path, case: str) -> None:
    p = _layers(tmp_path)
    setup, key = CASES[case]
    with setup(p, key):
        argv = [sys.executable, "-m", "overlayboot", "mount"]
        argv += ["--lower", str(p["lower"]), "--upper", str(p["upper"])]
        argv += ["--work", str(p["work"]), str(p["mnt"])]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if r.returncode == 0:  # it mounted: undo before failing
            umount(p["mnt"])
        assert r.returncode != 0, case
        lines = r.stderr.splitlines()
        assert len(lines) == 1, (case, r.stderr)
        assert lines[0].startswith("overlayboot: error:"), (case, r.stderr)
        assert "Traceback" not in r.stderr and r.stdout == ""
    assert not os.path.ismount(p["mnt"])


def _big_lower(o: Ovl) -> None:
    with open(o.lower1 / "big", "wb") as f:
        f.write(os.urandom(20 << 20))


# whole copy-ups: a partial one copies a chunk, not the file (test_chunked.py has its case)
@pytest.mark.parametrize("kind", ["overlayboot-whole", "kernel"])
def test_full_upper_fails_the_writer_and_leaves_no_partial_copy(
    ovl_factory: OvlFactory, kind: str
) -> None:
    o = ovl_factory(kind, prepare=_big_lower, upper_size="8m")
    with open(o.lower1 / "big", "rb") as f:
        lower_data = f.read()
    upper_before = sorted(os.listdir(o.upper))

    def append() -> None:
        with open(o.m("big"), "ab") as f:
            f.write(b"x")

    assert errno_of(append) == errno.ENOSPC
    assert errno_of(lambda: os.truncate(o.m("big"), 1)) == errno.ENOSPC
    assert sorted(os.listdir(o.upper)) == upper_before
    if kind != "kernel":
        assert [n for n in os.listdir(o.scratch) if n.startswith("tmp.")] == []
    else:
        assert os.listdir(o.work / "work") == []
    # the space came back and the mount keeps working
    with open(o.m("big"), "rb") as f:
        assert f.read() == lower_data
    with open(o.m("small"), "wb") as f:
        f.write(b"s" * (1 << 20))
    with open(o.m("small"), "rb") as f:
        assert f.read() == b"s" * (1 << 20)
    os.chmod(o.m("top.txt"), 0o600)  # a small copy-up still works
    assert os.path.exists(o.u("top.txt"))
    os.unlink(o.m("small"))
    os.unlink(o.m("bottom.txt"))
    shown = set(os.listdir(o.lower1)) | set(os.listdir(o.lower2)) | {"upper_only.txt"}
    assert sorted(os.listdir(o.m())) == sorted(shown - {"bottom.txt"})

    # a write that fills the upper fails ENOSPC too, and the file stays usable
    def fill() -> None:
        with open(o.m("filler"), "wb") as f:
            f.write(b"f" * (16 << 20))

    assert errno_of(fill) == errno.ENOSPC
    os.unlink(o.m("filler"))
    with open(o.m("after"), "w") as f:
        f.write("ok\n")
    with open(o.m("after")) as f:
        assert f.read() == "ok\n"
