"""Mounting the overlay and running the FUSE main loop, in the foreground or as a daemon.

The daemon detaches only once the mount is live, so ``overlayboot mount``
returning 0 means the overlay is there. It writes its pid to
``/run/overlayboot/mounts/<escaped mount point>.pid`` so that ``umount`` can
wait for it to finish, and stops cleanly on SIGTERM, SIGINT or an unmount.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import sys
from pathlib import Path

import pyfuse3
import trio

from overlayboot import mounttable
from overlayboot.errors import MountError
from overlayboot.fs import seal
from overlayboot.fs.config import OverlayConfig
from overlayboot.fs.core import Overlay
from overlayboot.fs.operations import OverlayOperations

log = logging.getLogger("overlayboot.daemon")

RUN_DIR = Path("/run/overlayboot/mounts")


def pid_file(mountpoint: Path) -> Path:
    escaped = str(mountpoint).strip("/").replace("-", "--").replace("/", "-") or "-"
    return RUN_DIR / f"{escaped}.pid"


def fuse_options(cfg: OverlayConfig) -> set[str]:
    opts = set(pyfuse3.default_options)
    opts |= {f"fsname={cfg.fsname}", "subtype=overlayboot"}
    if os.geteuid() == 0:
        opts |= {"allow_other", "dev", "suid"}
    opts |= set(cfg.options)
    return opts


READ_AHEAD_KB = 1024
"""The mount's readahead window. FUSE starts at 128 KiB, so a sequential read reaches the
daemon in 128 KiB requests; libfuse allows 1 MiB (max_pages 256), which this window uses."""


def mount_device(mountpoint: Path, fstype: str = "fuse.overlayboot") -> str | None:
    """``major:minor`` of the newest ``fstype`` mount at ``mountpoint``; None if none."""
    target = os.path.abspath(mountpoint)
    found = [m.dev for m in mounttable.mounts() if m.target == target and m.fstype == fstype]
    return found[-1] if found else None


def set_read_ahead(mountpoint: Path, kib: int = READ_AHEAD_KB) -> bool:
    """Set the mount's readahead (root only; best effort): whether it was set."""
    dev = mount_device(mountpoint)
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
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if log_file is not None:
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _daemonize() -> None:
    """Fork; the parent exits 0 (the mount is already live); the child detaches."""
    pid = os.fork()
    if pid > 0:
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


async def _widen_read_ahead(ops: OverlayOperations, mountpoint: Path) -> None:
    # the kernel caps the window at what it offered when it gets the INIT reply: after it
    await ops.initialized.wait()
    set_read_ahead(mountpoint)


async def _main_loop(ov: Overlay, ops: OverlayOperations, mountpoint: Path) -> None:
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async for signum in sigs:
                    log.info("signal %d: unmounting", signum)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signal)
        nursery.start_soon(ov.partials.flusher)
        nursery.start_soon(_widen_read_ahead, ops, mountpoint)
        await pyfuse3.main(min_tasks=2, max_tasks=64)
        nursery.cancel_scope.cancel()


def serve(
    cfg: OverlayConfig,
    mountpoint: Path,
    *,
    foreground: bool,
    log_file: Path | None = None,
    debug: bool = False,
) -> None:
    """Mount ``cfg`` at ``mountpoint`` and serve it until unmounted."""
    os.umask(0)
    _raise_fd_limit()
    ov = Overlay(cfg)
    ov.prepare_scratch()
    if log_file is None and not foreground:
        log_file = cfg.scratch / "daemon.log"
    setup_logging(log_file, debug)
    ops = OverlayOperations(ov)
    try:
        pyfuse3.init(ops, str(mountpoint), fuse_options(cfg))
    except RuntimeError as exc:
        raise MountError(f"cannot mount {mountpoint}: {exc}") from None
    if not foreground:
        _daemonize()
    pidf = pid_file(mountpoint)
    with contextlib.suppress(OSError):
        pidf.parent.mkdir(parents=True, exist_ok=True)
        pidf.write_text(f"{os.getpid()}\n")
    log.info(
        "mounted %s: lower=%s upper=%s work=%s",
        mountpoint,
        ":".join(map(str, cfg.lowers)),
        cfg.upper,
        cfg.work,
    )
    unmount = True
    try:
        trio.run(_main_loop, ov, ops, mountpoint)
    except BaseException:
        log.exception("INTERNAL: main loop failed")
        raise
    finally:
        pyfuse3.close(unmount=unmount)
        _finish_partials(ov)
        with contextlib.suppress(OSError):
            pidf.unlink()
        log.info("unmounted %s", mountpoint)


def _finish_partials(ov: Overlay) -> None:
    """Record every open partial file's map; with seal_on_umount, make them all whole."""
    try:
        ov.partials.shutdown()
        if not ov.cfg.seal_on_umount:
            return
        roots = [layer.root for layer in ov.layers]
        sealed = 0
        for found in seal.walk(ov.upper_root, roots, seal=True, spaces=[ov.names]):
            if found.sealed:
                sealed += 1
            else:
                log.error("seal at unmount: %s: %s", os.fsdecode(found.rel), found.problem)
        log.info("seal at unmount: %d partial copy-ups made whole", sealed)
    except OSError as exc:
        log.error("finishing the partial copy-ups at unmount: %s", exc)
    except Exception:
        log.exception("INTERNAL: finishing the partial copy-ups at unmount")
