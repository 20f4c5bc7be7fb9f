"""Attaching a store as a block device and detaching it (``overlayboot block
attach|detach``): the daemon (``block serve``, started through the subprocess gate and
back once its mount is live), then a loop device over its ``disk``; in reverse order to
detach, waiting for the daemon to commit and exit."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from overlayboot import mounttable
from overlayboot.block import loop
from overlayboot.block.daemon import FSTYPE
from overlayboot.block.device import DISK_NAME
from overlayboot.block.store import Store
from overlayboot.errors import BlockError, MountError
from overlayboot.fuseserve import pid_file
from overlayboot.run import run

DEFAULT_DIR = Path("/run/overlayboot/block")


def default_dir(store: Path) -> Path:
    """Where the device's FUSE directory goes by default: one per store file."""
    escaped = str(store.resolve()).strip("/").replace("-", "--").replace("/", "-")
    return DEFAULT_DIR / escaped


def disk_of(mountpoint: Path) -> Path:
    return mountpoint / os.fsdecode(DISK_NAME)


def attach(store: Path, base: Path, mountpoint: Path | None, debug: bool = False) -> str:
    """Serve ``store`` over ``base`` and put a loop device on it; the device's path."""
    Store.open(store, base, writable=False).abandon()  # a wrong base or a busy store: here
    mnt = (mountpoint or default_dir(store)).absolute()
    mnt.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(mnt):
        raise MountError(f"{mnt} is already a mount point", "give another one: --dir DIR")
    argv = [sys.executable, "-m", "overlayboot"]
    argv += ["--debug"] if debug else []
    argv += ["block", "serve", "--base", str(base.absolute()), str(store.absolute()), str(mnt)]
    run(argv)
    try:
        return loop.attach(disk_of(mnt))
    except BaseException:
        stop(mnt)
        raise


def find_mount(target: Path) -> Path:
    """The FUSE directory of a device given as a loop device, a store or the directory."""
    if str(target).startswith("/dev/"):
        backing = loop.backing_file(str(target))
        if backing is None:
            raise BlockError(f"{target} is not an attached loop device")
        return Path(backing).parent
    ours = [m for m in mounttable.mounts() if m.fstype == FSTYPE]
    wanted = os.path.abspath(target)
    for m in reversed(ours):
        if m.target == wanted or m.source.partition(":")[2] == wanted:
            return Path(m.target)
    raise BlockError(f"{target} is not an attached block store or its directory")


def detach(target: Path, timeout: float = 30.0) -> Path:
    """Detach the loop devices over the device and stop its daemon; its directory."""
    mnt = find_mount(target)
    devices = loop.devices_of(disk_of(mnt))
    for m in mounttable.mounts():
        if m.source in devices:
            raise BlockError(f"{m.source} is mounted at {m.target}", "unmount it first")
    for dev in devices:
        loop.detach(dev)
    stop(mnt, timeout)
    return mnt


def stop(mnt: Path, timeout: float = 30.0) -> None:
    """Unmount the device's directory and wait for its daemon to commit and exit."""
    pidf = pid_file(mnt)
    try:
        pid: int | None = int(pidf.read_text().strip())
    except (OSError, ValueError):
        pid = None
    run(["umount", str(mnt)])
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise MountError(f"the block daemon (pid {pid}) of {mnt} has not exited after {timeout} s")
