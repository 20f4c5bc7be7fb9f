"""``python -m bench --scale``: a walk of a million lower files, and the daemons' memory.

Per repetition and system (kernel overlayfs, fuse-overlayfs, overlayboot; and the raw
squashfs as the floor), on a fresh tmpfs upper over the one scale lower: ``find tree
-printf '%s %m\\n'`` cold (after ``drop_caches``) and warm, and for the FUSE daemons their
resident memory (``VmRSS``) right after the mount, after the walk (the kernel then holds
every inode, so the daemon knows each one) and after ``echo 3 > drop_caches`` (the kernel
forgets them all: FORGET for every inode). Bytes per cached inode = (after walk - after
mount) / inodes walked.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import machine, report
from bench.mounts import mounted_under, mounts
from bench.scalelower import ScaleLower, prepare
from bench.workloads import Kind, Metric
from overlayboot.errors import ToolError
from overlayboot.fuseserve import pid_file
from overlayboot.run import run

SYSTEMS = ("raw", "kernel", "fuse-overlayfs", "overlayboot")
DAEMONS = ("fuse-overlayfs", "overlayboot")
MIB = 1 << 20


@dataclass(frozen=True)
class ScaleOptions:
    """What the scale run measures."""

    files: int = 1_000_000
    dirs: int = 1_000
    reps: int = 3
    comp: str = "lz4"
    systems: tuple[str, ...] = SYSTEMS
    cpus: tuple[int, ...] | None = None
    overlayboot_args: tuple[str, ...] = ()


def metrics(opts: ScaleOptions) -> list[Metric]:
    walk = f"find+stat {opts.files} files/{opts.dirs} dirs"
    return [
        Metric("find_cold", f"{walk}, cold", Kind.TIME, True),
        Metric("find_warm", f"{walk}, warm", Kind.TIME, True),
        Metric("rss_mounted", "daemon RSS after mount", Kind.SIZE, False),
        Metric("rss_walked", "daemon RSS after the walk", Kind.SIZE, False),
        Metric("rss_dropped", "daemon RSS after drop_caches", Kind.SIZE, False),
    ]


PER_INODE = "bytes_per_inode"  # not in the table (its unit is bytes): a note per daemon


def _daemon_pid(system: str, mnt: Path) -> int:
    """The process serving the FUSE mount ``mnt``."""
    if system == "overlayboot":
        return int(pid_file(mnt).read_text().split()[0])
    needle = str(mnt).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"fuse-overlayfs") and needle in argv:
            return int(entry.name)
    raise ToolError(f"{system}: no daemon process found for {mnt}")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ToolError(f"/proc/{pid}/status has no VmRSS")


def _settled_rss(pid: int, timeout: float = 60.0) -> int:
    """RSS once the daemon has worked through the FORGETs (unchanged for a second)."""
    deadline = time.monotonic() + timeout
    last = _rss(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = _rss(pid)
        if now == last:
            return now
        last = now
    return last


def _find(mnt: Path) -> float:
    t0 = time.perf_counter()
    run(["sh", "-c", "find tree -printf '%s %m\\n' > /dev/null"], cwd=mnt)
    return (time.perf_counter() - t0) * 1000.0


def _walks(system: str, mnt: Path, lower: ScaleLower) -> dict[str, float]:
    """The cold and warm walk of one mount; the daemon's memory around them."""
    pid = _daemon_pid(system, mnt) if system in DAEMONS else None
    out: dict[str, float] = {}
    machine.drop_caches()
    if pid is not None:
        out["rss_mounted"] = _settled_rss(pid) / MIB
    out["find_cold"] = _find(mnt)
    out["find_warm"] = _find(mnt)
    if pid is not None:
        walked = _rss(pid)
        out["rss_walked"] = walked / MIB
        out[PER_INODE] = (walked - out["rss_mounted"] * MIB) / lower.inodes
        machine.drop_caches()
        out["rss_dropped"] = _settled_rss(pid) / MIB
    return out


def _measure(
    opts: ScaleOptions, base: Path, lower: ScaleLower, systems: list[str]
) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {m.key: {} for m in metrics(opts)}
    samples[PER_INODE] = {}
    with mounts() as mnts:
        lowermnt = base / "scale-lower"
        mnts.squashfs(lower.image, lowermnt)
        for rep in range(opts.reps):
            order = systems[rep % len(systems) :] + systems[: rep % len(systems)]
            for system in order:
                t0 = time.monotonic()
                mnt = lowermnt
                rw = base / "scale-sys" / system / "rw"
                if system != "raw":
                    mnts.tmpfs(rw, "1g")
                    mnt = rw.parent / "mnt"
                    extra = opts.overlayboot_args if system == "overlayboot" else ()
                    mnts.overlay(system, lowermnt, rw / "upper", rw / "work", mnt, extra)
                try:
                    for key, value in _walks(system, mnt, lower).items():
                        samples[key].setdefault(system, []).append(value)
                finally:
                    if system != "raw":
                        mnts.release(mnt)
                        mnts.release(rw)
                took = time.monotonic() - t0
                print(f"scale rep {rep + 1}/{opts.reps} {system}: {took:.0f} s", file=sys.stderr)
    return samples


def _memory_notes(summaries: dict[str, dict[str, report.Summary | None]]) -> list[str]:
    """The issue's targets for overlayboot's memory, and the cold walk against the kernel."""
    out: list[str] = []

    def med(key: str, system: str) -> float | None:
        s = summaries.get(key, {}).get(system)
        return s.median if s is not None else None

    ours, kernel = med("find_cold", report.OURS), med("find_cold", "kernel")
    if ours and kernel:
        out.append(f"cold walk: overlayboot takes {ours / kernel:.2f}x kernel's time (target <= 2)")
    for system in DAEMONS:
        per = med(PER_INODE, system)
        if per is not None:
            target = " (target <= 400)" if system == report.OURS else ""
            out.append(f"{system}: {per:.0f} bytes per cached inode{target}")
    dropped = med("rss_dropped", report.OURS)
    if dropped is not None:
        out.append(f"overlayboot: {dropped:.0f} MiB after drop_caches (target < 100 MB)")
    return out


def execute(opts: ScaleOptions, base: Path, results: Path, rebuild: bool) -> int:
    """The whole scale run: the lower, every system per repetition, the table, the JSON."""
    t_start = time.monotonic()
    info = machine.describe()
    if opts.cpus is not None:
        os.sched_setaffinity(0, opts.cpus)
    for stale in mounted_under(base / "scale-sys") + mounted_under(base / "scale-lower"):
        run(["umount", "-l", stale], check=False)
    lower = prepare(base, opts.files, opts.dirs, opts.comp, rebuild)
    systems = [s for s in opts.systems if s != "fuse-overlayfs" or shutil.which("fuse-overlayfs")]
    samples = _measure(opts, base, lower, systems)
    metric_list = metrics(opts)
    summaries = {
        key: {s: report.summarize(per.get(s, [])) for s in systems} for key, per in samples.items()
    }
    header = [
        f"overlayboot scale run {info['date']}: {info['nproc']} CPUs ({info['cpu_model']}), "
        f"{info['mem_total_mib']} MiB, kernel {info['kernel']}; {opts.reps} reps; "
        f"runtime {(time.monotonic() - t_start) / 60:.1f} min",
    ]
    notes = _memory_notes(summaries)
    text = report.table(metric_list, summaries, systems, header)
    text += "\n\nnotes:\n" + "\n".join(f"- {n}" for n in notes)
    print(text)
    record = {
        "machine": info,
        "options": {"files": opts.files, "dirs": opts.dirs, "reps": opts.reps, "comp": opts.comp},
        "systems": systems,
        "samples": samples,
        "notes": notes,
        "table": text,
    }
    results.mkdir(parents=True, exist_ok=True)
    name = results / f"scale-{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    name.write_text(json.dumps(record, indent=1) + "\n")
    print(f"\nresults: {name}", file=sys.stderr)
    return 0
