"""Serving a block store: mount the device's FUSE directory and answer until unmounted.

The same life as the overlay daemon's (``overlayboot.fs.daemon``, whose helpers it uses):
it detaches only once the mount is live and its pid file is written; it holds the
store's exclusive ``flock`` for its whole life; a plain mount stops cleanly on SIGTERM,
SIGINT or an unmount, and one that serves the root filesystem (``as_root``) ignores those
signals and is protected from the OOM killer (``survive``). At the end it commits the
store and marks it clean.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

import pyfuse3
import trio

from overlayboot.block.device import DeviceOperations
from overlayboot.block.store import Store
from overlayboot.errors import MountError
from overlayboot.fs import survive
from overlayboot.fs.daemon import (
    _daemonize,
    _ready,
    _unmount_on_signal,
    _write_pid_file,
    set_read_ahead,
    setup_logging,
    supervised,
)

log = logging.getLogger("overlayboot.block")

FSTYPE = "fuse.overlayboot-block"


def fuse_options(fsname: str) -> set[str]:
    opts = set(pyfuse3.default_options) | {f"fsname={fsname}", "subtype=overlayboot-block"}
    if os.geteuid() == 0:
        opts |= {"allow_other"}
    return opts


async def _widen_read_ahead(ops: DeviceOperations, mountpoint: Path) -> None:
    """A 1 MiB readahead window on the FUSE file (after INIT, which caps it)."""
    await ops.initialized.wait()
    set_read_ahead(mountpoint, fstype=FSTYPE)


async def _main_loop(ops: DeviceOperations, mountpoint: Path, as_root: bool) -> None:
    async with trio.open_nursery() as nursery:
        if not as_root:
            nursery.start_soon(supervised, "signals", _unmount_on_signal, False)
        nursery.start_soon(
            supervised, "readahead", functools.partial(_widen_read_ahead, ops, mountpoint), False
        )
        await pyfuse3.main(min_tasks=1, max_tasks=4)
        nursery.cancel_scope.cancel()


def serve(
    store_path: Path,
    base: Path,
    mountpoint: Path,
    *,
    foreground: bool,
    log_file: Path | None = None,
    debug: bool = False,
    as_root: bool = False,
) -> None:
    """Open the store over ``base`` and serve it as ``mountpoint/disk`` until unmounted."""
    os.umask(0o077)
    store = Store.open(store_path, base, writable=True)
    try:
        setup_logging(log_file, debug)
        if store.was_dirty:
            log.warning("%s was not detached cleanly: it shows its last flush", store_path)
        ops = DeviceOperations(store)
        if as_root:
            survive.ignore_termination()
        try:
            pyfuse3.init(ops, str(mountpoint), fuse_options(f"overlayboot-block:{store_path}"))
        except RuntimeError as exc:
            raise MountError(f"cannot mount {mountpoint}: {exc}") from None
    except BaseException:
        store.abandon()
        raise
    ready = None if foreground else _daemonize()
    if as_root:
        survive.serve_as_root()
    pidf = _write_pid_file(mountpoint)
    _ready(ready)
    log.info("serving %s over %s at %s/disk", store_path, base, mountpoint)
    try:
        trio.run(_main_loop, ops, mountpoint, as_root)
    except BaseException:
        log.exception("INTERNAL: main loop failed")
        raise
    finally:
        pyfuse3.close(unmount=True)
        try:
            store.close()
            log.info("committed and closed %s", store_path)
        except OSError as exc:
            log.error("closing %s: %s (it shows its last flush)", store_path, exc)
        with contextlib.suppress(OSError):
            pidf.unlink()
