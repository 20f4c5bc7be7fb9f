"""One run of the suite: the lower once, then every system per repetition, interleaved."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

from bench import machine, report
from bench.boot import BOOT_SYSTEMS, run_boot_build
from bench.lower import Lower, prepare
from bench.mounts import Mounts, mounted_under, mounts
from bench.options import Options
from bench.workloads import Metric, Target, for_system, metrics
from overlayboot.errors import ToolError
from overlayboot.run import run

SHARED_NOTE = (
    "The machine was shared (other engineers' QEMU VMs and tests ran at the same time): "
    "figures are noisy; compare systems only within this run."
)


def _available(systems: tuple[str, ...], notes: list[str]) -> list[str]:
    """The systems that can run here; a note for each one skipped."""
    keep: list[str] = []
    for s in systems:
        if s == "fuse-overlayfs" and shutil.which("fuse-overlayfs") is None:
            notes.append("fuse-overlayfs skipped: not installed (apt-get install fuse-overlayfs)")
            continue
        if s == "kernel" and not _have_overlay():
            notes.append("kernel overlayfs skipped: no overlay module")
            continue
        if s in ("fuse-overlayfs", "overlayboot") and not os.path.exists("/dev/fuse"):
            notes.append(f"{s} skipped: no /dev/fuse")
            continue
        keep.append(s)
    return keep


def _have_overlay() -> bool:
    if "overlay" in Path("/proc/filesystems").read_text():
        return True
    return run(["modprobe", "overlay"], check=False).returncode == 0


def _daemon_errors(work: Path) -> int:
    log = work / "overlayboot" / "daemon.log"
    if not log.exists():
        return 0
    return sum("INTERNAL" in line for line in log.read_text(errors="replace").splitlines())


class Run:
    """The samples of one run, filled system by system."""

    def __init__(self, opts: Options, base: Path, lower: Lower, listfile: Path) -> None:
        self.opts = opts
        self.base = base
        self.lower = lower
        self.listfile = listfile
        self.samples: dict[str, dict[str, list[float]]] = {m.key: {} for m in metrics(opts)}
        self.notes: list[str] = []

    def upper_size(self) -> str:
        # the two copied-up big files, the new one, and 1 GiB for small files and the sources
        mib = 2 * self.opts.big_mib + self.opts.write_mib + 1024
        return f"{mib}m"

    def one(self, m: Mounts, system: str, lowermnt: Path) -> None:
        """Mount ``system`` on a fresh tmpfs upper, run every workload, unmount."""
        root = self.base / "sys" / system
        rw = root / "rw"
        mnt = lowermnt
        if system != "raw":
            m.tmpfs(rw, self.upper_size())
            mnt = root / "mnt"
            m.overlay(system, lowermnt, rw / "upper", rw / "work", mnt, self.opts.overlayboot_args)
        target = Target(system, mnt, rw if system != "raw" else None, self.lower, self.opts)
        try:
            for name, workload in for_system(system, self.listfile):
                try:
                    for key, value in workload(target):
                        self.samples[key].setdefault(system, []).append(value)
                except (ToolError, OSError) as exc:
                    msg = exc.line() if isinstance(exc, ToolError) else str(exc)
                    self.notes.append(f"{system}: {name} failed: {msg}")
                    print(f"bench: {system}: {name} failed: {msg}", file=sys.stderr)
        finally:
            if system != "raw":
                m.release(mnt)
                if system == "overlayboot" and (n := _daemon_errors(rw / "work")):
                    self.notes.append(f"overlayboot daemon logged {n} INTERNAL errors")
                m.release(rw)


Summaries = dict[str, dict[str, report.Summary | None]]


def _summaries(
    ms: list[Metric], samples: dict[str, dict[str, list[float]]], systems: list[str]
) -> Summaries:
    return {m.key: {s: report.summarize(samples[m.key].get(s, [])) for s in systems} for m in ms}


def _records(
    ms: list[Metric],
    samples: dict[str, dict[str, list[float]]],
    summaries: Summaries,
    systems: list[str],
) -> list[dict[str, object]]:
    """The JSON form of some metrics: samples, summaries, overlayboot's ratios."""
    return [
        {
            "key": m.key,
            "title": m.title,
            "unit": m.kind.value,
            "samples": samples[m.key],
            "summary": {
                s: (v.as_json() if (v := summaries[m.key][s]) is not None else None)
                for s in systems
            },
            "overlayboot_speed_ratio": {
                c: report.speed_ratio(m, summaries[m.key].get(report.OURS), summaries[m.key].get(c))
                for c in report.COMPARED
                if c in systems and report.OURS in systems
            },
        }
        for m in ms
    ]


def execute(opts: Options, base: Path, results: Path, rebuild: bool) -> int:
    t_start = time.monotonic()
    info = machine.describe()
    load_start = machine.loadavg()
    notes: list[str] = []
    systems = _available(opts.systems, notes)
    if opts.cpus is not None:
        os.sched_setaffinity(0, opts.cpus)  # inherited by every tool and daemon started
    base.mkdir(parents=True, exist_ok=True)
    for stale in mounted_under(base):
        print(f"bench: unmounting {stale}, left over from an earlier run", file=sys.stderr)
        run(["umount", "-l", stale], check=False)
    lower = prepare(base, opts, rebuild)
    listfile = base / "small-files.list"
    listfile.write_bytes(b"".join(f.encode() + b"\0" for f in lower.small_files))
    bench = Run(opts, base, lower, listfile)
    bench.notes.extend(notes)

    with mounts() as m:
        lowermnt = base / "lower"
        m.squashfs(lower.image, lowermnt)
        for rep in range(opts.reps):
            order = systems[rep % len(systems) :] + systems[: rep % len(systems)]
            for system in list(order):
                t0 = time.monotonic()
                try:
                    bench.one(m, system, lowermnt)
                except ToolError as exc:
                    bench.notes.append(f"{system}: mount failed, dropped: {exc.line()}")
                    print(f"bench: {system}: {exc.line()}", file=sys.stderr)
                    systems.remove(system)
                    continue
                took = time.monotonic() - t0
                print(f"rep {rep + 1}/{opts.reps} {system}: {took:.0f} s", file=sys.stderr)

    boot_ms: list[Metric] = []
    boot_samples: dict[str, dict[str, list[float]]] = {}
    if opts.build_reps > 0:
        boot_ms, boot_samples = run_boot_build(opts, base, bench.notes)

    elapsed = time.monotonic() - t_start
    load_end = machine.loadavg()
    ms = metrics(opts)
    summaries = _summaries(ms, bench.samples, systems)
    boot_summaries = _summaries(boot_ms, boot_samples, list(BOOT_SYSTEMS))
    versions = info["versions"]
    assert isinstance(versions, dict)
    pin = ",".join(map(str, opts.cpus)) if opts.cpus is not None else "not pinned"
    header = [
        f"overlayboot bench {info['date']}{' (--quick)' if opts.quick else ''}: "
        f"{info['nproc']} CPUs ({info['cpu_model']}), {info['mem_total_mib']} MiB, "
        f"kernel {info['kernel']}",
        f"pyfuse3 {versions['pyfuse3']}, libfuse {versions['libfuse3']}, "
        f"fuse-overlayfs {versions['fuse-overlayfs']}, overlayboot {versions['overlayboot_git']}",
        SHARED_NOTE,
        f"loadavg {load_start[0]:.2f} at start, {load_end[0]:.2f} at end; CPUs: {pin}; "
        f"{opts.reps} reps, systems interleaved (order rotated each rep); "
        f"runtime {elapsed / 60:.1f} min",
        "cells: median ±(max-min)/median; ob/X: overlayboot's speed relative to X "
        "(1.00 = same, 0.50 = twice as slow, >1 = faster)",
    ]
    text = report.table(ms, summaries, systems, header)
    if report.OURS in systems:
        bench.notes.extend(report.partial_copy_up_notes(summaries))
    if boot_ms:
        text += "\n\n" + report.table(
            boot_ms,
            boot_summaries,
            list(BOOT_SYSTEMS),
            ["boot (kernel: overlayboot.overlay=kernel, same image) and build"],
        )
    if bench.notes:
        text += "\n\nnotes:\n" + "\n".join(f"- {n}" for n in bench.notes)
    print(text)

    record = {
        "machine": info,
        "shared_machine": True,
        "loadavg": {"start": load_start, "end": load_end},
        "runtime_s": round(elapsed, 1),
        "options": opts.as_json(),
        "systems": systems,
        "ratio_meaning": "overlayboot speed / other speed (time ratio inverted); >1 = faster",
        "metrics": _records(ms, bench.samples, summaries, systems),
        "boot_build": _records(boot_ms, boot_samples, boot_summaries, list(BOOT_SYSTEMS)),
        "notes": bench.notes,
        "table": text,
    }
    results.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{stamp}{'-quick' if opts.quick else ''}.json"
    payload = json.dumps(record, indent=1) + "\n"
    (results / name).write_text(payload)
    (results / "latest.json").write_text(payload)
    print(f"\nresults: {results / name} (and latest.json)", file=sys.stderr)
    return 0
