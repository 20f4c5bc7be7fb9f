"""The machine the figures come from: hardware, versions, load; and dropping the page cache."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import shutil
from pathlib import Path

from overlayboot.errors import ToolError
from overlayboot.run import run

REPO = Path(__file__).resolve().parent.parent


def drop_caches() -> None:
    """Write back dirty data, then drop the page cache, dentries and inodes (a cold start)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) CPU ticks of the machine so far (/proc/stat's first line): the time
    the hypervisor gave this VM's CPUs to others shows as steal."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    steal = fields[7] if len(fields) > 7 else 0
    return steal, sum(fields[:8])


def steal_percent(start: tuple[int, int], end: tuple[int, int]) -> float:
    """The share of CPU time stolen by the hypervisor between two ``cpu_ticks``."""
    total = end[1] - start[1]
    return 100.0 * (end[0] - start[0]) / total if total > 0 else 0.0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def _first_line(argv: list[str]) -> str | None:
    try:
        proc = run(argv, check=False)
    except ToolError:
        return None
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else None


def _pkg_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_rev() -> str | None:
    if shutil.which("git") is None:
        return None
    head = run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], check=False)
    if head.returncode != 0:
        return None
    dirty = run(["git", "-C", REPO, "status", "--porcelain"], check=False).stdout.strip()
    return head.stdout.decode().strip() + ("+dirty" if dirty else "")


def _fuse_overlayfs_version() -> str | None:
    if shutil.which("fuse-overlayfs") is None:
        return None
    proc = run(["fuse-overlayfs", "--version"], check=False)
    for line in (proc.stdout + proc.stderr).decode(errors="replace").splitlines():
        if line.startswith("fuse-overlayfs"):
            return line.split("version", 1)[-1].strip()
    return None


def _loaded_libfuse() -> str:
    """The version of the libfuse pyfuse3 loads (its file name: libfuse3.so.3.17.2), which
    need not be the system's (the Makefile builds pyfuse3 against its own libfuse)."""
    try:
        import pyfuse3  # noqa: F401  (loads libfuse)

        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/libfuse3.so" in line}
    except (ImportError, OSError):
        return "?"
    names = sorted(os.path.basename(os.path.realpath(p)) for p in paths)
    return names[0].removeprefix("libfuse3.so.") if names else "?"


def describe() -> dict[str, object]:
    """Machine and software versions, for the JSON record and the table's header."""
    uname = os.uname()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": uname.nodename,
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_mib": _mem_total_mib(),
        "kernel": uname.release,
        "versions": {
            "kernel": uname.release,
            "python": platform.python_version(),
            "pyfuse3": _pkg_version("pyfuse3"),
            "trio": _pkg_version("trio"),
            "overlayboot": _pkg_version("overlayboot"),
            "overlayboot_git": _git_rev(),
            "fuse-overlayfs": _fuse_overlayfs_version(),
            "libfuse3": _loaded_libfuse(),
            "mksquashfs": _first_line(["mksquashfs", "-version"]),
        },
    }
