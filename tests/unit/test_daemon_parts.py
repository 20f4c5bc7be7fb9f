"""The daemon's parts that need no mount: FUSE options, supervised background tasks,
the upper lock, and the origin record of a copy in the ``user.`` namespace."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import cast

import pytest
import trio

from overlayboot.fs import longpath, sysio, upperlock
from overlayboot.fs.config import OverlayConfig
from overlayboot.fs.copyup import set_origin
from overlayboot.fs.core import Overlay
from overlayboot.fs.daemon import fuse_options
from overlayboot.fs.dirops import _rename_leaving_whiteout
from overlayboot.fs.whiteout import XattrNames, is_whiteout_stat
from overlayboot.fuseserve import supervised


def _cfg(tmp_path: Path, *options: str) -> OverlayConfig:
    return OverlayConfig((tmp_path,), tmp_path, tmp_path, options=frozenset(options))


@pytest.mark.parametrize("seed", range(5))
def test_a_users_fsname_replaces_ours(tmp_path: Path, seed: int) -> None:
    opts = fuse_options(_cfg(tmp_path, "fsname=live", f"x-seed={seed}", "subtype=root"))
    assert [o for o in opts if o.startswith("fsname=")] == ["fsname=live"]
    assert [o for o in opts if o.startswith("subtype=")] == ["subtype=root"]
    assert f"x-seed={seed}" in opts


def test_default_fsname(tmp_path: Path) -> None:
    opts = fuse_options(_cfg(tmp_path))
    assert "fsname=overlayboot" in opts and "subtype=overlayboot" in opts


def test_a_failing_background_task_is_restarted_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("overlayboot.fuseserve.RESTART_DELAY", 0)
    runs: list[int] = []
    done = trio.Event()

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")
        done.set()
        await trio.sleep_forever()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervised, "flaky", flaky, True)
            await done.wait()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert len(runs) == 3


def test_a_one_shot_task_that_fails_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise ValueError("once")

    trio.run(supervised, "once", broken, False)
    assert [r for r in caplog.records if "background task once failed" in r.getMessage()]


def test_upper_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    fds = upperlock.lock_layers(upper, work)
    with pytest.raises(upperlock.UpperInUse, match=r"upper dir .* is in use"):
        upperlock.lock_upper(upper)
    with pytest.raises(upperlock.UpperInUse, match=r"upper dir .* is in use"):
        upperlock.lock_layers(upper, work)
    for fd in fds:
        os.close(fd)
    os.close(upperlock.lock_upper(upper))
    for fd in upperlock.lock_layers(upper, work):
        os.close(fd)


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_origin_of_a_special_file_in_the_user_namespace(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "copy"
    if kind == "symlink":
        os.symlink("target", path)
    else:
        os.mkfifo(path)
    with pytest.raises(PermissionError):  # the kernel's rule, for root too
        os.setxattr(path, "user.overlayboot.origin", b"0:42", follow_symlinks=False)
    set_origin(os.fsencode(path), os.lstat(path), XattrNames("user"), (0, 42))  # no error


def test_origin_of_a_regular_file_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "copy"
    path.write_bytes(b"x")
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode)
    set_origin(os.fsencode(path), st, XattrNames("user"), (1, 42))
    assert os.getxattr(path, "user.overlayboot.origin") == b"1:42"


class _Scratch:
    """The one thing the rename needs of the overlay: a name in its work dir."""

    def __init__(self, work: Path) -> None:
        self.work = work

    def tmp_path(self) -> bytes:
        return bytes(self.work / "tmp.whiteout")


@pytest.mark.parametrize("second_fails", [False, True])
def test_rename_leaving_a_whiteout_where_the_upper_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second_fails: bool
) -> None:
    """An upper filesystem that refuses RENAME_WHITEOUT (EINVAL: NFS, FUSE): the entry
    moves and a whiteout takes the old name; if the second rename fails (the moment a
    crash would hit), the entry is at its new name, never lost, and the work dir empty."""
    work, upper = tmp_path / "work", tmp_path / "upper"
    work.mkdir()
    upper.mkdir()
    (upper / "old").write_bytes(b"data")
    real, calls = longpath.rename, []

    def refusing(old: bytes, new: bytes, flags: int = 0) -> None:
        calls.append(flags)
        if flags & sysio.RENAME_WHITEOUT:
            raise OSError(errno.EINVAL, "no RENAME_WHITEOUT here")
        if second_fails and len(calls) == 3:
            raise OSError(errno.EIO, "cut")
        real(old, new, flags)

    monkeypatch.setattr(longpath, "rename", refusing)
    old, new = bytes(upper / "old"), bytes(upper / "new")
    if second_fails:
        with pytest.raises(OSError, match="cut"):
            _rename_leaving_whiteout(cast(Overlay, _Scratch(work)), old, new)
        assert not os.path.lexists(old)
    else:
        _rename_leaving_whiteout(cast(Overlay, _Scratch(work)), old, new)
        assert is_whiteout_stat(os.lstat(old))
    assert (upper / "new").read_bytes() == b"data"
    assert os.listdir(work) == []
