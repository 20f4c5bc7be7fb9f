"""Mounting the overlay and running the FUSE main loop, in the foreground or as a daemon.

The daemon detaches only once the mount is live and its pid is written to
``/run/overlayboot/mounts/<escaped mount point>.pid``, so ``overlayboot mount``
returning 0 means the overlay is there and ``umount`` can wait for the daemon to
finish. It holds the lock of its upper and work dirs (``upperlock``) for its life.
A plain mount stops cleanly on SIGTERM, SIGINT or an unmount; a mount that serves
``/`` (``as_root``) ignores those signals (``survive``). A background task that
fails is logged and started again: it never takes the request loop down with it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pyfuse3
import trio

from overlayboot import mounttable
from overlayboot.errors import ConfigError, MountError
from overlayboot.fs import cloneseal, cowseal, seal, survive, upperlock
from overlayboot.fs.config import OverlayConfig
from overlayboot.fs.core import Overlay
from overlayboot.fs.operations import OverlayOperations

log = logging.getLogger("overlayboot.daemon")

RUN_DIR = Path("/run/overlayboot/mounts")


def pid_file(mountpoint: Path) -> Path:
    escaped = str(mountpoint).strip("/").replace("-", "--").replace("/", "-") or "-"
    return RUN_DIR / f"{escaped}.pid"


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


def _daemonize() -> int:
    """Fork; the child detaches and gets the write end of a pipe, on which it reports
    that it is ready (``_ready``). The parent waits for that and exits 0, or 4 if the
    child died first: ``overlayboot mount`` returns once the daemon is fully up."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(wfd)
        ok = os.read(rfd, 1) == b"1"
        if not ok:
            os.write(2, b"overlayboot: error: the overlay daemon failed to start (see its log)\n")
        os._exit(0 if ok else MountError.exit_code)
    os.close(rfd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)
    return wfd


def _ready(wfd: int | None) -> None:
    """Tell the waiting parent that the daemon is up (no-op in the foreground)."""
    if wfd is None:
        return
    with contextlib.suppress(OSError):
        os.write(wfd, b"1")
    with contextlib.suppress(OSError):
        os.close(wfd)


def _write_pid_file(mountpoint: Path) -> Path:
    pidf = pid_file(mountpoint)
    with contextlib.suppress(OSError):
        pidf.parent.mkdir(parents=True, exist_ok=True)
        tmp = pidf.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.rename(pidf)
    return pidf


async def _widen_read_ahead(ops: OverlayOperations, mountpoint: Path) -> None:
    # the kernel caps the window at what it offered when it gets the INIT reply: after it
    await ops.initialized.wait()
    set_read_ahead(mountpoint)


RESTART_DELAY = 1.0  # seconds before a failed background task runs again


async def supervised(name: str, task: Callable[[], Awaitable[object]], again: bool) -> None:
    """Run a background task so that its failure is logged, never fatal: the nursery it
    shares with the request loop would otherwise cancel the loop, and unmount ``/``.
    ``again``: a task meant to run for the daemon's life is started again after a pause."""
    while True:
        try:
            await task()
        except Exception:
            log.exception("INTERNAL: background task %s failed", name)
        if not again:
            return
        log.warning("background task %s: starting it again", name)
        await trio.sleep(RESTART_DELAY)


async def _unmount_on_signal() -> None:
    with trio.open_signal_receiver(*survive.TERMINATION_SIGNALS) as sigs:
        async for signum in sigs:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


async def _main_loop(
    overlay: Overlay, ops: OverlayOperations, mountpoint: Path, as_root: bool
) -> None:
    async with trio.open_nursery() as nursery:
        if not as_root:
            nursery.start_soon(supervised, "signals", _unmount_on_signal, False)
        nursery.start_soon(supervised, "flusher", overlay.partials.flusher, True)
        nursery.start_soon(supervised, "backing-closer", ops.close_backings, True)
        nursery.start_soon(
            supervised, "readahead", functools.partial(_widen_read_ahead, ops, mountpoint), False
        )
        await pyfuse3.main(min_tasks=2, max_tasks=64)
        nursery.cancel_scope.cancel()


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
    if as_root:
        survive.ignore_termination()
    try:
        pyfuse3.init(ops, str(mountpoint), fuse_options(cfg))
    except RuntimeError as exc:
        raise MountError(f"cannot mount {mountpoint}: {exc}") from None
    ready = None if foreground else _daemonize()
    if as_root:
        survive.serve_as_root()  # memory locks are not inherited across fork: after it
    pidf = _write_pid_file(mountpoint)
    _ready(ready)
    log.info(
        "mounted %s: lower=%s upper=%s work=%s",
        mountpoint,
        ":".join(map(str, cfg.lowers)),
        cfg.upper,
        cfg.work,
    )
    try:
        trio.run(_main_loop, overlay, ops, mountpoint, as_root)
    except BaseException:
        log.exception("INTERNAL: main loop failed")
        raise
    finally:
        pyfuse3.close(unmount=True)
        _finish_partials(overlay)
        with contextlib.suppress(OSError):
            pidf.unlink()
        log.info("unmounted %s", mountpoint)
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
