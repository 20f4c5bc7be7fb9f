"""The standby daemon process (boot phase standby): imports first, runs its arguments later."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from overlayboot.errors import UsageError
from overlayboot.standby import wait_for_args


def _write_later(path: Path, data: bytes, delay: float) -> threading.Thread:
    def write() -> None:
        time.sleep(delay)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.rename(tmp, path)

    t = threading.Thread(target=write)
    t.start()
    return t


def test_waits_for_the_file_then_returns_its_lines_and_removes_it(tmp_path: Path) -> None:
    args = tmp_path / "standby.args"
    t = _write_later(args, b"mount\n--lower\n/lower dir\n/root\n", 0.2)
    assert wait_for_args(args, timeout=10) == ["mount", "--lower", "/lower dir", "/root"]
    t.join()
    assert not args.exists()


def test_an_empty_file_means_nothing_to_run(tmp_path: Path) -> None:
    args = tmp_path / "standby.args"
    args.write_bytes(b"")
    assert wait_for_args(args, timeout=1) == []


def test_gives_up_with_a_usage_error_after_its_timeout(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no arguments"):
        wait_for_args(tmp_path / "never", timeout=0.1)


def test_the_cli_runs_the_command_it_is_given_later(tmp_path: Path) -> None:
    args = tmp_path / "standby.args"
    proc = subprocess.Popen(
        [sys.executable, "-m", "overlayboot", "standby", str(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    assert proc.poll() is None  # still waiting
    _write_later(args, b"mount\n--lower\n" + str(tmp_path / "nope").encode() + b"\n", 0).join()
    _out, err = proc.communicate(timeout=60)
    # the inner command ran: mount's own one-line error and its exit code
    assert proc.returncode == 2, err
    assert (
        err.strip()
        == "overlayboot: error: give the mount point: overlayboot mount [options] MOUNTPOINT"
    )
