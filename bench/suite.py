"""One run of the suite: the lower once, then every system per repetition, interleaved."""

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
from bench.boot import BOOT_SYSTEMS, Samples, run_boot_build
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
    for system in systems:
        if system == "fuse-overlayfs" and shutil.which("fuse-overlayfs") is None:
            notes.append("fuse-overlayfs skipped: not installed (apt-get install fuse-overlayfs)")
            continue
        if system == "kernel" and not _have_overlay():
            notes.append("kernel overlayfs skipped: no overlay module")
            continue
        if system in ("fuse-overlayfs", "overlayboot") and not os.path.exists("/dev/fuse"):
            notes.append(f"{system} skipped: no /dev/fuse")
            continue
        keep.append(system)
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
        self.samples: Samples = {metric.key: {} for metric in metrics(opts)}
        self.notes: list[str] = []

    def upper_size(self) -> str:
        # the two copied-up big files, the new one, and 1 GiB for small files and the sources
        mib = 2 * self.opts.big_mib + self.opts.write_mib + 1024
        return f"{mib}m"

    def measure_system(self, mnts: Mounts, system: str, lowermnt: Path) -> None:
        """Mount ``system`` on a fresh tmpfs upper, run every workload, unmount."""
        root = self.base / "sys" / system
        rw = root / "rw"
        mnt = lowermnt
        if system != "raw":
            mnts.tmpfs(rw, self.upper_size())
            mnt = root / "mnt"
            mnts.overlay(
                system, lowermnt, rw / "upper", rw / "work", mnt, self.opts.overlayboot_args
            )
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
                mnts.release(mnt)
                if system == "overlayboot" and (n := _daemon_errors(rw / "work")):
                    self.notes.append(f"overlayboot daemon logged {n} INTERNAL errors")
                mnts.release(rw)


Summaries = dict[str, dict[str, report.Summary | None]]


def _summaries(metric_list: list[Metric], samples: Samples, systems: list[str]) -> Summaries:
    return {
        metric.key: {name: report.summarize(samples[metric.key].get(name, [])) for name in systems}
        for metric in metric_list
    }


def _records(
    metric_list: list[Metric], samples: Samples, summaries: Summaries, systems: list[str]
) -> list[dict[str, object]]:
    """The JSON form of some metrics: samples, summaries, overlayboot's ratios."""
    return [
        {
            "key": metric.key,
            "title": metric.title,
            "unit": metric.kind.value,
            "samples": samples[metric.key],
            "summary": {
                system: (
                    summary.as_json()
                    if (summary := summaries[metric.key][system]) is not None
                    else None
                )
                for system in systems
            },
            "overlayboot_speed_ratio": {
                other: report.speed_ratio(
                    metric,
                    summaries[metric.key].get(report.OURS),
                    summaries[metric.key].get(other),
                )
                for other in report.COMPARED
                if other in systems and report.OURS in systems
            },
        }
        for metric in metric_list
    ]


def _prepare(opts: Options, base: Path, rebuild: bool, notes: list[str]) -> Run:
    """Unmount what an earlier run left, make the lower image and the list of small files."""
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
    return bench


def _measure(bench: Run, systems: list[str]) -> None:
    """Every repetition: each system in turn (the order rotated), on the lower image.

    A system that cannot be mounted is dropped from ``systems``, with a note."""
    opts = bench.opts
    with mounts() as mnts:
        lowermnt = bench.base / "lower"
        mnts.squashfs(bench.lower.image, lowermnt)
        for rep in range(opts.reps):
            order = systems[rep % len(systems) :] + systems[: rep % len(systems)]
            for system in list(order):
                started = time.monotonic()
                try:
                    bench.measure_system(mnts, system, lowermnt)
                except ToolError as exc:
                    bench.notes.append(f"{system}: mount failed, dropped: {exc.line()}")
                    print(f"bench: {system}: {exc.line()}", file=sys.stderr)
                    systems.remove(system)
                    continue
                took = time.monotonic() - started
                print(f"rep {rep + 1}/{opts.reps} {system}: {took:.0f} s", file=sys.stderr)


@dataclass(frozen=True)
class Conditions:
    """What the machine was like during the run: for the header and the record."""

    info: dict[str, object]
    load_start: list[float]
    load_end: list[float]
    elapsed: float
    steal_pct: float  # CPU time the hypervisor gave others (FUSE round trips suffer most)


def _header(opts: Options, cond: Conditions) -> list[str]:
    info = cond.info
    versions = info["versions"]
    assert isinstance(versions, dict)
    pin = ",".join(map(str, opts.cpus)) if opts.cpus is not None else "not pinned"
    return [
        f"overlayboot bench {info['date']}{' (--quick)' if opts.quick else ''}: "
        f"{info['nproc']} CPUs ({info['cpu_model']}), {info['mem_total_mib']} MiB, "
        f"kernel {info['kernel']}",
        f"pyfuse3 {versions['pyfuse3']}, libfuse {versions['libfuse3']}, "
        f"fuse-overlayfs {versions['fuse-overlayfs']}, overlayboot {versions['overlayboot_git']}",
        SHARED_NOTE,
        f"loadavg {cond.load_start[0]:.2f} at start, {cond.load_end[0]:.2f} at end; "
        f"CPU steal {cond.steal_pct:.1f} %; CPUs: {pin}; "
        f"{opts.reps} reps, systems interleaved (order rotated each rep); "
        f"runtime {cond.elapsed / 60:.1f} min",
        "cells: median ±(max-min)/median; ob/X: overlayboot's speed relative to X "
        "(1.00 = same, 0.50 = twice as slow, >1 = faster)",
    ]


def _write_results(results: Path, record: dict[str, object], quick: bool) -> None:
    results.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"{stamp}{'-quick' if quick else ''}.json"
    payload = json.dumps(record, indent=1) + "\n"
    (results / name).write_text(payload)
    (results / "latest.json").write_text(payload)
    print(f"\nresults: {results / name} (and latest.json)", file=sys.stderr)


def _report(
    bench: Run, systems: list[str], boot: tuple[list[Metric], Samples], cond: Conditions
) -> dict[str, object]:
    """Print the tables and notes; return the JSON record of the run."""
    opts = bench.opts
    boot_metrics, boot_samples = boot
    metric_list = metrics(opts)
    summaries = _summaries(metric_list, bench.samples, systems)
    boot_summaries = _summaries(boot_metrics, boot_samples, list(BOOT_SYSTEMS))
    text = report.table(metric_list, summaries, systems, _header(opts, cond))
    if report.OURS in systems:
        bench.notes.extend(report.partial_copy_up_notes(summaries))
    if boot_metrics:
        text += "\n\n" + report.table(
            boot_metrics,
            boot_summaries,
            list(BOOT_SYSTEMS),
            ["boot (kernel: overlayboot.overlay=kernel, same image) and build"],
        )
    if bench.notes:
        text += "\n\nnotes:\n" + "\n".join(f"- {n}" for n in bench.notes)
    print(text)
    return {
        "machine": cond.info,
        "shared_machine": True,
        "loadavg": {"start": cond.load_start, "end": cond.load_end},
        "cpu_steal_pct": round(cond.steal_pct, 2),
        "runtime_s": round(cond.elapsed, 1),
        "options": opts.as_json(),
        "systems": systems,
        "ratio_meaning": "overlayboot speed / other speed (time ratio inverted); >1 = faster",
        "metrics": _records(metric_list, bench.samples, summaries, systems),
        "boot_build": _records(boot_metrics, boot_samples, boot_summaries, list(BOOT_SYSTEMS)),
        "notes": bench.notes,
        "table": text,
    }


def execute(opts: Options, base: Path, results: Path, rebuild: bool) -> int:
    """The whole run: prepare, measure every system, boot and build, report, save."""
    t_start = time.monotonic()
    info = machine.describe()
    load_start = machine.loadavg()
    ticks_start = machine.cpu_ticks()
    notes: list[str] = []
    systems = _available(opts.systems, notes)
    bench = _prepare(opts, base, rebuild, notes)
    _measure(bench, systems)
    boot: tuple[list[Metric], Samples] = ([], {})
    if opts.build_reps > 0:
        boot = run_boot_build(opts, base, bench.notes)
    steal = machine.steal_percent(ticks_start, machine.cpu_ticks())
    cond = Conditions(info, load_start, machine.loadavg(), time.monotonic() - t_start, steal)
    record = _report(bench, systems, boot, cond)
    _write_results(results, record, opts.quick)
    return 0
