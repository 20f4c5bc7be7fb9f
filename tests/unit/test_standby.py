"""The standby daemon process (boot phase standby): imports first, runs its arguments later."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import pytest

from overlayboot.errors import UsageError
from overlayboot.standby import wait_for_args
from tests.waiting import poll_until


def _put(path: Path, data: bytes) -> None:
    """Write ``path`` whole, as phase overlay does (a rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.rename(tmp, path)


def test_waits_for_the_file_then_returns_its_lines_and_removes_it(tmp_path: Path) -> None:
    args = tmp_path / "standby.args"
    looked = threading.Event()  # set when the waiter, having found nothing, goes to sleep
    got: list[list[str]] = []

    def on_call(_frame: FrameType, event: str, arg: object) -> None:
        if event == "c_call" and arg is time.sleep:
            looked.set()

    def waiter() -> None:
        sys.setprofile(on_call)
        try:
            got.append(wait_for_args(args, timeout=60))
        finally:
            sys.setprofile(None)

    t = threading.Thread(target=waiter)
    t.start()
    assert looked.wait(60), "wait_for_args never looked for its file"
    assert got == [] and t.is_alive()
    _put(args, b"mount\n--lower\n/lower dir\n/root\n")
    t.join(60)
    assert got == [["mount", "--lower", "/lower dir", "/root"]]
    assert not args.exists()


def test_an_empty_file_means_nothing_to_run(tmp_path: Path) -> None:
    args = tmp_path / "standby.args"
    args.write_bytes(b"")
    assert wait_for_args(args, timeout=1) == []


def test_gives_up_with_a_usage_error_after_its_timeout(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no arguments"):
        wait_for_args(tmp_path / "never", timeout=0.1)


def _preloaded(proc: subprocess.Popen[str]) -> bool:
    """The process has imported the daemon: pyfuse3's extension module is in its memory."""
    if proc.poll() is not None:
        return True  # it exited: the test's next assertion says so
    with open(f"/proc/{proc.pid}/maps") as f:
        return "pyfuse3" in f.read()


def test_the_cli_runs_the_command_it_is_given_later(tmp_path: Path) -> None:
    args = tmp_path / "standby.args"
    proc = subprocess.Popen(
        [sys.executable, "-m", "overlayboot", "standby", str(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # preload done (pyfuse3's extension module is mapped): it now waits for its arguments
    poll_until(lambda: _preloaded(proc), 120, "the standby's preload")
    assert proc.poll() is None  # still waiting
    _put(args, b"mount\n--lower\n" + str(tmp_path / "nope").encode() + b"\n")
    _out, err = proc.communicate(timeout=60)
    # the inner command ran: mount's own one-line error and its exit code
    assert proc.returncode == 2, err
    assert (
        err.strip()
        == "overlayboot: error: give the mount point: overlayboot mount [options] MOUNTPOINT"
    )
