"""Serving a FUSE filesystem: mounted, detached once live, surviving signals as a root.

Both daemons (the overlay, ``overlayboot.fs.daemon``, and the block device,
``overlayboot.block.daemon``) live the same life through :func:`serve`: the mount is made
in the foreground; the process detaches only once the mount is live and its pid is written
to ``/run/overlayboot/mounts/<escaped mount point>.pid``, so the command that started it
returns 0 only when the filesystem is there. A plain mount stops cleanly on SIGTERM,
SIGINT or an unmount; one that serves the root filesystem (``as_root``) ignores those
signals and is protected from the OOM killer (``overlayboot.fs.survive``). Background
tasks share the request loop's nursery under :func:`supervised`: a failure is logged, never
fatal (a dead daemon is a dead machine).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from overlayboot.errors import MountError
from overlayboot.fs import survive

log = logging.getLogger("overlayboot.daemon")

RUN_DIR = Path("/run/overlayboot/mounts")
RESTART_DELAY = 1.0  # seconds before a failed background task runs again


def pid_file(mountpoint: Path) -> Path:
    escaped = str(mountpoint).strip("/").replace("-", "--").replace("/", "-") or "-"
    return RUN_DIR / f"{escaped}.pid"


@dataclass(frozen=True)
class Task:
    """A background task of the daemon."""

    name: str
    run: Callable[[], Awaitable[object]]
    again: bool  # meant to run for the daemon's life: started again after a failure


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


def serve(
    ops: pyfuse3.Operations,
    mountpoint: Path,
    options: set[str],
    *,
    foreground: bool,
    as_root: bool,
    banner: str,
    tasks: Sequence[Task] = (),
    workers: tuple[int, int] = (2, 64),
    finish: Callable[[], None] = lambda: None,
) -> None:
    """Mount ``ops`` at ``mountpoint`` and answer its requests until it is unmounted (or,
    unless ``as_root``, a termination signal); then ``finish()``. ``banner`` is logged
    once the daemon is up; ``workers``: pyfuse3's (min, max) request tasks. A mount that
    fails is a MountError, before any fork."""
    if as_root:
        survive.ignore_termination()
    try:
        pyfuse3.init(ops, str(mountpoint), options)
    except RuntimeError as exc:
        raise MountError(f"cannot mount {mountpoint}: {exc}") from None
    ready = None if foreground else _daemonize()
    if as_root:
        survive.serve_as_root()  # memory locks are not inherited across fork: after it
    pidf = _write_pid_file(mountpoint)
    _ready(ready)
    log.info("%s", banner)
    try:
        trio.run(_main_loop, tasks, as_root, workers)
    except BaseException:
        log.exception("INTERNAL: main loop failed")
        raise
    finally:
        pyfuse3.close(unmount=True)
        finish()
        with contextlib.suppress(OSError):
            pidf.unlink()


async def _main_loop(tasks: Sequence[Task], as_root: bool, workers: tuple[int, int]) -> None:
    async with trio.open_nursery() as nursery:
        if not as_root:
            nursery.start_soon(supervised, "signals", _unmount_on_signal, False)
        for task in tasks:
            nursery.start_soon(supervised, task.name, task.run, task.again)
        await pyfuse3.main(min_tasks=workers[0], max_tasks=workers[1])
        nursery.cancel_scope.cancel()


async def _unmount_on_signal() -> None:
    with trio.open_signal_receiver(*survive.TERMINATION_SIGNALS) as sigs:
        async for signum in sigs:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


def _daemonize() -> int:
    """Fork; the child detaches and gets the write end of a pipe, on which it reports
    that it is ready (``_ready``). The parent waits for that and exits 0, or 4 if the
    child died first: the command that started the daemon returns once it is fully up."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(wfd)
        ok = os.read(rfd, 1) == b"1"
        if not ok:
            os.write(2, b"overlayboot: error: the daemon failed to start (see its log)\n")
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
