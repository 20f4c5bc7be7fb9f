"""A root that never mixes changes or dies: one daemon per upper, a daemon for ``/`` that
signals do not stop, no traceback for a bad argument, and the places where the daemon
differed from kernel overlayfs (each compared with it where it has the same operation).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from overlayboot.fs.daemon import pid_file
from tests.fuse.conftest import Ovl, OvlFactory
from tests.fuse.helpers import BOTH, errno_of, overlayboot_cli
from tests.mounts import overlayboot_argv

pytestmark = pytest.mark.fuse


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("overlayboot: error: ") and words in lines[0], lines[0]


# ------------------------------------------------------------------ one daemon per upper


def test_a_second_mount_of_the_same_upper_is_refused(ovl: Ovl, tmp_path: Path) -> None:
    in_flight = ovl.scratch / "tmp.99999.1"  # what a copy-up in progress looks like
    in_flight.write_bytes(b"in flight")
    second = tmp_path / "mnt2"
    second.mkdir()
    argv = overlayboot_argv(ovl.lowers, ovl.upper, ovl.work, second)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    _one_line_error(proc, 4, "is in use by another overlayboot daemon")
    assert not os.path.ismount(second)
    assert in_flight.read_bytes() == b"in flight"  # the second start-up cleaned nothing
    assert Path(ovl.m("top.txt")).read_text() == "top\n"


def test_the_lock_goes_with_a_killed_daemon(ovl_factory: OvlFactory) -> None:
    o = ovl_factory(mount=False)
    pid = o.mount_detached()
    o.kill_daemon(pid)
    o.mount()  # the dead daemon's lock is gone with it
    assert Path(o.m("top.txt")).read_text() == "top\n"


def test_upper_seal_refuses_an_upper_in_use(ovl: Ovl) -> None:
    proc = overlayboot_cli(
        "upper", "seal", "--lower", ":".join(map(str, ovl.lowers)), str(ovl.upper)
    )
    assert proc.returncode != 0
    assert "in use" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------ the daemon of /


def test_a_root_daemon_ignores_termination_signals(ovl_factory: OvlFactory) -> None:
    o = ovl_factory(mount=False)
    o.extra_args = ("--root",)
    pid = o.mount_detached()
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            os.kill(pid, signum)
            Path(o.m(f"after-{signum}")).write_text("still here\n")
            assert Path(o.m(f"after-{signum}")).read_text() == "still here\n"
        assert os.path.ismount(o.mnt)
        if _may_lower_oom_score():
            assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "-1000"
        else:  # a container without CAP_SYS_RESOURCE: said in the log (QEMU tests show it)
            assert "oom_score_adj not set" in o.log.read_text()
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        assert int(status["VmLck"].split()[0]) > 0, status["VmLck"]
    finally:
        proc = overlayboot_cli("umount", str(o.mnt))
        assert proc.returncode == 0, proc.stderr
    assert not pid_file(o.mnt).exists()


def _may_lower_oom_score() -> bool:
    """Whether this machine lets root lower an oom_score_adj (tried on a child)."""
    proc = subprocess.run(["sh", "-c", "echo -1 > /proc/self/oom_score_adj"], check=False)
    return proc.returncode == 0


def test_a_plain_daemon_unmounts_on_sigterm(ovl_factory: OvlFactory) -> None:
    o = ovl_factory(mount=False)
    pid = o.mount_detached()
    fd = os.pidfd_open(pid)  # not our child: a pidfd tells when it exits
    os.kill(pid, signal.SIGTERM)
    assert _wait_gone(fd) and not os.path.ismount(o.mnt)


def _wait_gone(fd: int) -> bool:
    """Wait on a pidfd until its process has exited; False after 60 s."""
    try:
        ready, _, _ = select.select([fd], [], [], 60)
        return bool(ready)
    finally:
        os.close(fd)


def test_the_pid_file_is_there_when_mount_returns(ovl_factory: OvlFactory) -> None:
    o = ovl_factory(mount=False)
    argv = [a for a in overlayboot_argv(o.lowers, o.upper, o.work, o.mnt) if a != "-f"]
    subprocess.run([*argv, "--log", str(o.log)], check=True, timeout=60)
    try:
        pid = int(pid_file(o.mnt).read_text())  # no wait: written before mount returned
        os.kill(pid, 0)
    finally:
        proc = overlayboot_cli("umount", str(o.mnt))
        assert proc.returncode == 0, proc.stderr


def test_a_log_in_a_missing_dir_is_one_line(ovl_factory: OvlFactory, tmp_path: Path) -> None:
    o = ovl_factory(mount=False)
    argv = [a for a in overlayboot_argv(o.lowers, o.upper, o.work, o.mnt) if a != "-f"]
    proc = subprocess.run(
        [*argv, "--log", str(tmp_path / "no/such/dir/log")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    _one_line_error(proc, 3, "cannot open the log file")
    assert not os.path.ismount(o.mnt)


# ------------------------------------------------------------------ same as kernel overlayfs


@BOTH
def test_mknod_of_a_whiteout_is_refused(ovl: Ovl) -> None:
    path = ovl.m("dir/fake-whiteout")
    assert errno_of(lambda: os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(0, 0))) == errno.EPERM
    assert "fake-whiteout" not in os.listdir(ovl.m("dir"))
    if ovl.kind != "kernel":
        assert not [n for n in os.listdir(ovl.scratch) if n.startswith("tmp.")]


def _nlink_of_open_dir_after(path: str, change: Callable[[], None]) -> int:
    """fstat of ``path``, opened before ``change`` removed or replaced it: its link count."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        change()
        st = os.fstat(fd)
        assert stat.S_ISDIR(st.st_mode)
        return st.st_nlink
    finally:
        os.close(fd)


@BOTH
def test_fstat_of_an_open_directory_after_rmdir(ovl: Ovl) -> None:
    os.mkdir(ovl.m("gone"))
    assert _nlink_of_open_dir_after(ovl.m("gone"), lambda: os.rmdir(ovl.m("gone"))) == 0


@BOTH
def test_fstat_of_an_open_lower_directory_after_rmdir(ovl: Ovl) -> None:
    def remove() -> None:
        os.unlink(ovl.m("only1/x"))
        os.rmdir(ovl.m("only1"))

    # the lower directory is still there: one link, as kernel overlayfs counts it
    assert _nlink_of_open_dir_after(ovl.m("only1"), remove) == 1


@BOTH
def test_fstat_of_an_open_directory_replaced_by_rename(ovl: Ovl) -> None:
    os.mkdir(ovl.m("target"))
    os.mkdir(ovl.m("source"))
    replace = lambda: os.rename(ovl.m("source"), ovl.m("target"))  # noqa: E731
    assert _nlink_of_open_dir_after(ovl.m("target"), replace) == 0


# with FUSE passthrough the early reader keeps the lower data (test_passthrough.py)
@pytest.mark.parametrize("ovl", ["overlayboot-nopassthrough", "kernel"], indirect=True)
def test_a_reader_opened_before_copy_up_reads_the_copy_after_unlink(ovl: Ovl) -> None:
    reader = os.open(ovl.m("top.txt"), os.O_RDONLY)
    try:
        with open(ovl.m("top.txt"), "r+b") as writer:
            writer.write(b"TOP")
            writer.flush()
            os.unlink(ovl.m("top.txt"))
            assert os.pread(reader, 100, 0) == b"TOP\n"
    finally:
        os.close(reader)


def test_noatime_leaves_upper_atimes_alone(ovl_factory: OvlFactory) -> None:
    o = ovl_factory(mount=False)
    o.extra_args = ("-o", "noatime")
    old = 1_500_000_000_000_000_000
    os.utime(o.u("upper_only.txt"), ns=(old, old))
    o.mount()
    assert Path(o.m("upper_only.txt")).read_text() == "upper only\n"
    assert os.stat(o.m("upper_only.txt")).st_atime_ns == old
    assert os.stat(o.u("upper_only.txt")).st_atime_ns == old


def test_fsname_option_is_what_the_mount_table_shows(ovl_factory: OvlFactory) -> None:
    o = ovl_factory(mount=False)
    o.extra_args = ("-o", "fsname=liveroot")
    o.mount()
    with open("/proc/self/mountinfo") as f:
        mine = [line for line in f if f" {o.mnt} " in line]
    assert mine and mine[-1].split(" - ")[1].split()[1] == "liveroot", mine


@pytest.mark.parametrize("free_inodes", [0, 1, 2])
def test_an_upper_without_free_inodes_is_one_line(tmp_path: Path, free_inodes: int) -> None:
    fs = tmp_path / "fs"
    fs.mkdir()
    # the root, upper and work take three inodes; the rest are taken by filler files
    opts = "nr_inodes=8,size=4m"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(fs)], check=True)
    try:
        for d in ("upper", "work"):
            (fs / d).mkdir()
        filler = 0
        while os.statvfs(fs).f_ffree > free_inodes:
            (fs / f"filler{filler}").touch()
            filler += 1
        lower, mnt = tmp_path / "lower", tmp_path / "mnt"
        lower.mkdir()
        mnt.mkdir()
        argv = overlayboot_argv([lower], fs / "upper", fs / "work", mnt)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        _one_line_error(proc, 3, "is full")
        assert not os.path.ismount(mnt)
    finally:
        subprocess.run(["umount", str(fs)], check=True)
