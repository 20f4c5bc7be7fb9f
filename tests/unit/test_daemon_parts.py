"""The daemon's parts that need no mount: FUSE options, supervised background tasks,
the upper lock, and the origin record of a copy in the ``user.`` namespace."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from overlayboot.fs import upperlock
from overlayboot.fs.config import OverlayConfig
from overlayboot.fs.copyup import set_origin
from overlayboot.fs.daemon import fuse_options, supervised
from overlayboot.fs.whiteout import XattrNames


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
    monkeypatch.setattr("overlayboot.fs.daemon.RESTART_DELAY", 0)
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
