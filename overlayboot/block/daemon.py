"""Serving a block store: mount the device's FUSE directory and answer until unmounted.

The same life as the overlay daemon's (``overlayboot.fuseserve``): it detaches only once
the mount is live and its pid file is written; it holds the store's exclusive ``flock``
for its whole life; a plain mount stops cleanly on SIGTERM, SIGINT or an unmount, and one
that serves the root filesystem (``as_root``) ignores those signals and is protected from
the OOM killer. At the end it commits the store and marks it clean.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import pyfuse3

from overlayboot import fuseserve
from overlayboot.block.device import DeviceOperations
from overlayboot.block.store import Store
from overlayboot.fs.daemon import set_read_ahead, setup_logging
from overlayboot.fuseserve import Task

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


def _close(store: Store, store_path: Path) -> None:
    try:
        store.close()
        log.info("committed and closed %s", store_path)
    except OSError as exc:
        log.error("closing %s: %s (it shows its last flush)", store_path, exc)


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
    except BaseException:
        store.abandon()
        raise
    readahead = functools.partial(_widen_read_ahead, ops, mountpoint)
    closed: list[bool] = []

    def finish() -> None:
        closed.append(True)
        _close(store, store_path)

    try:
        fuseserve.serve(
            ops,
            mountpoint,
            fuse_options(f"overlayboot-block:{store_path}"),
            foreground=foreground,
            as_root=as_root,
            banner=f"serving {store_path} over {base} at {mountpoint}/disk",
            tasks=[Task("readahead", readahead, False)],
            workers=(1, 4),  # the handlers never await: one at a time
            finish=finish,
        )
    except BaseException:
        if not closed:  # not mounted: nothing served
            store.abandon()
        raise
