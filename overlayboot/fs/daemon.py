"""Mounting the overlay and running the FUSE main loop, in the foreground or as a daemon
(the life both daemons share is ``overlayboot.fuseserve``'s).

The daemon detaches only once the mount is live and its pid is written to
``/run/overlayboot/mounts/<escaped mount point>.pid``, so ``overlayboot mount``
returning 0 means the overlay is there and ``umount`` can wait for the daemon to
finish. It holds the lock of its upper and work dirs (``upperlock``) for its life.
A plain mount stops cleanly on SIGTERM, SIGINT or an unmount; a mount that serves
``/`` (``as_root``) ignores those signals (``survive``). A background task that
fails is logged and started again: it never takes the request loop down with it.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import sys
from pathlib import Path

import pyfuse3

from overlayboot import fuseserve, mounttable
from overlayboot.errors import ConfigError
from overlayboot.fs import cloneseal, cowseal, seal, upperlock
from overlayboot.fs.config import OverlayConfig
from overlayboot.fs.core import Overlay
from overlayboot.fs.operations import OverlayOperations
from overlayboot.fuseserve import Task
from overlayboot.fuseserve import pid_file as pid_file  # where the other modules look

log = logging.getLogger("overlayboot.daemon")


def fuse_options(cfg: OverlayConfig) -> set[str]:
    """The FUSE mount options: ours, then the user's; a user's ``fsname=`` or ``subtype=``
    replaces ours (one of each reaches libfuse)."""
    opts = set(pyfuse3.default_options)
    if os.geteuid() == 0:
        opts |= {"allow_other", "dev", "suid"}
    named = {"fsname": cfg.fsname, "subtype": "overlayboot"}
    for opt in cfg.options:
        key, sep, value = opt.partition("=")
        if sep and key in named:
            named[key] = value
        else:
            opts.add(opt)
    return opts | {f"{key}={value}" for key, value in named.items()}


READ_AHEAD_KB = 1024
"""The mount's readahead window. FUSE starts at 128 KiB, so a sequential read reaches the
daemon in 128 KiB requests; libfuse allows 1 MiB (max_pages 256), which this window uses."""


def mount_device(mountpoint: Path, fstype: str = "fuse.overlayboot") -> str | None:
    """``major:minor`` of the newest ``fstype`` mount at ``mountpoint``; None if none."""
    target = os.path.abspath(mountpoint)
    found = [m.dev for m in mounttable.mounts() if m.target == target and m.fstype == fstype]
    return found[-1] if found else None


def set_read_ahead(
    mountpoint: Path, kib: int = READ_AHEAD_KB, fstype: str = "fuse.overlayboot"
) -> bool:
    """Set the readahead of the ``fstype`` mount at ``mountpoint`` (root only; best
    effort): whether it was set."""
    dev = mount_device(mountpoint, fstype)
    if dev is None:
        return False
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(f"{kib}\n")
    except OSError as exc:
        log.debug("readahead of %s not set: %s", mountpoint, exc)
        return False
    return True


def setup_logging(log_file: Path | None, debug: bool) -> None:
    root = logging.getLogger()
    handler: logging.Handler
    if log_file is not None:
        try:
            handler = logging.FileHandler(log_file)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the log file {log_file}: {exc.strerror}",
                "give --log a path in an existing, writable directory",
            ) from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _widen_read_ahead(ops: OverlayOperations, mountpoint: Path) -> None:
    # the kernel caps the window at what it offered when it gets the INIT reply: after it
    await ops.initialized.wait()
    set_read_ahead(mountpoint)


def serve(
    cfg: OverlayConfig,
    mountpoint: Path,
    *,
    foreground: bool,
    log_file: Path | None = None,
    debug: bool = False,
    as_root: bool = False,
) -> None:
    """Mount ``cfg`` at ``mountpoint`` and serve it until unmounted.

    ``as_root``: the overlay is the system's root filesystem (see ``survive``)."""
    os.umask(0)
    _raise_fd_limit()
    locks = upperlock.lock_layers(cfg.upper, cfg.work)
    if log_file is None and not foreground:
        log_file = cfg.scratch / "daemon.log"
    overlay = _prepare(cfg, log_file, debug)
    ops = OverlayOperations(overlay)
    tasks = [
        Task("flusher", overlay.partials.flusher, True),
        Task("backing-closer", ops.close_backings, True),
        Task("readahead", functools.partial(_widen_read_ahead, ops, mountpoint), False),
    ]
    lowers = ":".join(map(str, cfg.lowers))

    def finish() -> None:
        _finish_partials(overlay)
        log.info("unmounted %s", mountpoint)

    try:
        fuseserve.serve(
            ops,
            mountpoint,
            fuse_options(cfg),
            foreground=foreground,
            as_root=as_root,
            banner=f"mounted {mountpoint}: lower={lowers} upper={cfg.upper} work={cfg.work}",
            tasks=tasks,
            finish=finish,
        )
    finally:
        for fd in locks:
            os.close(fd)


def _prepare(cfg: OverlayConfig, log_file: Path | None, debug: bool) -> Overlay:
    """The log, the overlay's state and its scratch dir; a failure is one ConfigError."""
    try:
        if log_file is not None and log_file.parent == cfg.scratch:
            cfg.scratch.mkdir(parents=True, exist_ok=True)
        setup_logging(log_file, debug)
        overlay = Overlay(cfg)
        overlay.prepare_scratch()
    except OSError as exc:
        raise ConfigError(
            f"cannot prepare the work dir {cfg.work}: {exc.strerror}",
            "check that the upper filesystem has free space and inodes",
        ) from None
    return overlay


def _finish_partials(overlay: Overlay) -> None:
    """Record every open partial file's map; with seal_on_umount, make them all whole."""
    try:
        overlay.partials.shutdown()
        if not overlay.cfg.seal_on_umount:
            return
        roots = [layer.root for layer in overlay.layers]
        cloneseal.materialize_all(overlay.upper_root, roots, overlay.names)
        unshared = cowseal.unshare_all(overlay.upper_root, [overlay.names])
        if unshared:
            log.info("seal at unmount: %d files shared with clones copied", unshared)
        sealed = 0
        for found in seal.walk(overlay.upper_root, roots, seal=True, spaces=[overlay.names]):
            if found.sealed:
                sealed += 1
            else:
                log.error("seal at unmount: %s: %s", os.fsdecode(found.rel), found.problem)
        log.info("seal at unmount: %d partial copy-ups made whole", sealed)
    except OSError as exc:
        log.error("finishing the partial copy-ups at unmount: %s", exc)
    except Exception:
        log.exception("INTERNAL: finishing the partial copy-ups at unmount")
