"""Test helpers that mount overlays for real: overlayboot (FUSE), kernel overlayfs, fuse-overlayfs.

``overlay_mount(kind, lowers, upper, work, mnt)`` is a context manager that mounts,
waits until the mount is live, yields, then unmounts and checks that the
overlayboot daemon exited cleanly and logged no internal error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

# overlayboot with its default options, with every copy-up partial (no threshold, 4 KiB
# chunks: even small files come up chunk by chunk), with whole copy-ups only, and with
# every read and write through the daemon (no FUSE passthrough)
OVERLAYBOOT_KINDS = {
    "overlayboot": (),
    "overlayboot-chunked": ("--copy-up=chunked", "--chunk-threshold=0", "--chunk-size=4K"),
    "overlayboot-whole": ("--copy-up=whole",),
    "overlayboot-nopassthrough": ("--no-passthrough",),
}
KINDS = ("overlayboot", "overlayboot-chunked", "overlayboot-whole", "kernel", "fuse-overlayfs")
IS_ROOT = os.geteuid() == 0


def have_fuse() -> bool:
    return IS_ROOT and os.path.exists("/dev/fuse")


def have_kernel_overlay() -> bool:
    if not IS_ROOT:
        return False
    with open("/proc/filesystems") as f:
        if "overlay" in f.read():
            return True
    return subprocess.run(["modprobe", "overlay"], capture_output=True).returncode == 0


def wait_mounted(
    mnt: Path, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.ismount(mnt):
            return
        if proc is not None and proc.poll() is not None:
            _out, err = proc.communicate()
            raise RuntimeError(f"daemon exited with {proc.returncode}: {err.decode()}")
        time.sleep(0.02)
    raise TimeoutError(f"{mnt} not mounted after {timeout} s")


def umount(mnt: Path) -> None:
    for _ in range(50):
        r = subprocess.run(["umount", str(mnt)], capture_output=True)
        if r.returncode == 0 or not os.path.ismount(mnt):
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def overlayboot_argv(lowers: Sequence[Path], upper: Path, work: Path, mnt: Path) -> list[str]:
    return [
        sys.executable, "-m", "overlayboot", "mount", "-f",
        "--lower", ":".join(str(p) for p in lowers),
        "--upper", str(upper), "--work", str(work), str(mnt),
    ]  # fmt: skip


@contextlib.contextmanager
def overlay_mount(
    kind: str,
    lowers: Sequence[Path],
    upper: Path,
    work: Path,
    mnt: Path,
    extra_args: Sequence[str] = (),
) -> Iterator[Path]:
    """Mount an overlay of ``kind`` at ``mnt`` (created if needed) and yield ``mnt``."""
    for d in (upper, work, mnt):
        d.mkdir(parents=True, exist_ok=True)
    lowerdir = ":".join(str(p) for p in lowers)
    proc: subprocess.Popen[bytes] | None = None
    log_path = work.parent / f"{work.name}.daemon.log"
    if kind in OVERLAYBOOT_KINDS:
        argv = [*overlayboot_argv(lowers, upper, work, mnt), "--log", str(log_path)]
        argv += [*OVERLAYBOOT_KINDS[kind], *extra_args]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_mounted(mnt, proc=proc)
        except BaseException:
            # A daemon that never mounted must not outlive the test.
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            raise
    elif kind == "kernel":
        opts = f"lowerdir={lowerdir},upperdir={upper},workdir={work},redirect_dir=on,index=on"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True)
    elif kind == "fuse-overlayfs":
        opts = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
        subprocess.run(["fuse-overlayfs", "-o", opts, str(mnt)], check=True)
        wait_mounted(mnt)
    else:
        raise ValueError(kind)
    try:
        yield mnt
    finally:
        umount(mnt)
        if proc is not None:
            try:
                _out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _out, err = proc.communicate()
            log = log_path.read_text() if log_path.exists() else ""
            assert proc.returncode == 0, f"daemon exit {proc.returncode}: {err.decode()}\n{log}"
            assert "Traceback" not in err.decode(), err.decode()
            assert "INTERNAL" not in log, log


def copytree_preserving(src: Path, dst: Path) -> None:
    """Copy a tree keeping modes, owners, times, xattrs, special files and hard links."""
    subprocess.run(["cp", "-a", "--", f"{src}/.", str(dst)], check=True)


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
