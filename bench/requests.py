"""Requests per operation: run commands on an overlay whose daemon logs every FUSE request.

``python -m bench.requests --lower DIR [--system fuse-overlayfs] [--cold] -- CMD [CMD ...]``
mounts DIR under a fresh tmpfs upper with libfuse's debug log on (``-o debug``, the daemon
in the foreground, its stderr to a file), runs each CMD with ``sh -c`` in the mount point,
and prints for each the FUSE requests it cost, by opcode, and the daemon's CPU time
(``/proc/PID/stat``: user and system, in ms; the debug log itself adds to it). ``--cold``
drops the caches before each command. Root. The counts are exact; the CPU times are for
comparing commands of one run. bench/README, "Requests per operation".
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click

from bench.machine import drop_caches
from bench.mounts import mounts
from overlayboot.errors import ToolError
from overlayboot.run import run, spawn

OPCODE = re.compile(rb"opcode: ([A-Z_]+)")
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Daemon:
    """A mounted overlay's daemon: its pid and its debug log."""

    pid: int
    log: Path
    mnt: Path


@dataclass(frozen=True)
class Cost:
    """What one command cost the daemon."""

    requests: dict[str, int]
    user_ms: float
    sys_ms: float
    wall_s: float


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime, stime) of ``pid`` in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def _argv(system: str, lower: Path, upper: Path, work: Path, mnt: Path) -> list[str | Path]:
    if system == "overlayboot":
        layers: list[str | Path] = ["--lower", lower, "--upper", upper, "--work", work]
        return [sys.executable, "-m", "overlayboot", "mount", "-f", "-o", "debug", *layers, mnt]
    opts = f"debug,lowerdir={lower},upperdir={upper},workdir={work}"
    return ["fuse-overlayfs", "-f", "-o", opts, mnt]


@contextmanager
def debug_mount(system: str, lower: Path, base: Path) -> Iterator[Daemon]:
    """``lower`` mounted by ``system`` at ``base/mnt`` (tmpfs upper), its requests logged."""
    with mounts() as stack:
        stack.tmpfs(base / "upperfs", "1g")
        upper, work, mnt = base / "upperfs/upper", base / "upperfs/work", base / "mnt"
        for d in (upper, work, mnt):
            d.mkdir(parents=True, exist_ok=True)
        log = base / "requests.log"
        with open(log, "wb") as out:
            proc = spawn(_argv(system, lower, upper, work, mnt), stderr=out.fileno())
        stack.push(mnt, "fuse")  # a plain umount: the daemon is our child, waited for below
        try:
            _wait_mounted(proc, mnt)
            yield Daemon(proc.pid, log, mnt)
        finally:
            stack.release(mnt)
            proc.wait(timeout=60)


def _wait_mounted(proc: subprocess.Popen[bytes], mnt: Path) -> None:
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise ToolError(f"the overlay did not come up at {mnt} (see its log)")
        time.sleep(0.02)


def _settled_size(log: Path) -> int:
    """The log's size once it stopped growing (RELEASE and FORGET come after a command)."""
    size = -1
    while True:
        now = log.stat().st_size
        if now == size:
            return now
        size = now
        time.sleep(0.2)


def measure(daemon: Daemon, command: str, *, cold: bool = False) -> Cost:
    """The requests and daemon CPU time ``command`` (``sh -c``, in the mount) costs."""
    if cold:
        drop_caches()
    start = _settled_size(daemon.log)
    u0, s0 = cpu_ticks(daemon.pid)
    t0 = time.monotonic()
    run(["sh", "-c", command], cwd=daemon.mnt)
    wall = time.monotonic() - t0
    end = _settled_size(daemon.log)
    u1, s1 = cpu_ticks(daemon.pid)
    with open(daemon.log, "rb") as f:
        f.seek(start)
        text = f.read(end - start)
    counts = collections.Counter(m.decode() for m in OPCODE.findall(text))
    return Cost(dict(counts.most_common()), (u1 - u0) * TICK_MS, (s1 - s0) * TICK_MS, wall)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--lower", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--system", type=click.Choice(["overlayboot", "fuse-overlayfs"]), default="overlayboot"
)
@click.option("--cold", is_flag=True, help="Drop the caches before each command.")
@click.argument("commands", nargs=-1, required=True)
def main(lower: Path, system: str, cold: bool, commands: tuple[str, ...]) -> None:
    """Count the FUSE requests of each COMMAND on LOWER mounted by SYSTEM."""
    try:
        with (
            tempfile.TemporaryDirectory(prefix="ob-requests-") as tmp,
            debug_mount(system, lower, Path(tmp)) as daemon,
        ):
            for command in commands:
                click.echo(f"{command}: {describe(measure(daemon, command, cold=cold))}")
    except ToolError as exc:
        raise click.ClickException(str(exc)) from None


def describe(cost: Cost) -> str:
    shown = ", ".join(f"{n} {op}" for op, n in cost.requests.items()) or "none"
    return (
        f"{sum(cost.requests.values())} requests ({shown}); daemon {cost.user_ms:.0f} ms "
        f"user, {cost.sys_ms:.0f} ms sys; {cost.wall_s:.3f} s"
    )


__all__ = ["Cost", "Daemon", "debug_mount", "main", "measure"]

if __name__ == "__main__":
    main()
