"""``python -m bench.clone``: copying the bench's lower tree and 1 GiB file inside an overlay
(root; a few minutes): ``overlayboot clone`` against ``cp -a`` on kernel overlayfs,
fuse-overlayfs and overlayboot, ``cp --reflink=always`` where it works, and ``cp
--reflink=auto`` (copy_file_range; on overlayboot also without FUSE passthrough, where it
becomes a lazy copy).

The lower is the suite's squashfs image (bench/lower.py: 20,000 small files in 200
directories, a 1 GiB file), each system on a fresh tmpfs upper. Per system and repetition,
after a cold start (``drop_caches``): the time and the upper's growth (its tmpfs' used
bytes) of a copy of ``tree`` and of ``big``; for overlayboot's clone also the cost of the
first 4 KiB write (+ fsync) into the cloned 1 GiB file. Medians; JSON in
bench/results/clone-*.json.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from bench import machine
from bench.lower import prepare
from bench.mounts import Mounts, mounted_under, mounts
from bench.options import Options
from overlayboot.clonecmd import clone
from overlayboot.run import run

HERE = Path(__file__).resolve().parent
SYSTEMS = ("kernel", "fuse-overlayfs", "overlayboot")
KiB = 1024

Figures = dict[str, float]


def used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def measure(upper_fs: Path, action: Callable[[], object]) -> tuple[float, int]:
    """(milliseconds, upper growth in bytes) of ``action`` after a cold start."""
    machine.drop_caches()
    before = used(upper_fs)
    t = time.perf_counter()
    action()
    ms = (time.perf_counter() - t) * 1e3
    os.sync()
    return ms, used(upper_fs) - before


def cp(*args: str | Path) -> Callable[[], bool]:
    def go() -> bool:
        return run(["cp", *args], check=False).returncode == 0

    return go


def first_write(path: Path) -> Callable[[], None]:
    def go() -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, b"\xa5" * 4096, 512 << 20)
            os.fsync(fd)
        finally:
            os.close(fd)

    return go


def one_system(m: Mounts, system: str, lower: Path, base: Path) -> Figures:
    upper_fs = base / f"up-{system}"
    m.tmpfs(upper_fs, "2g")
    mnt = base / f"mnt-{system}"
    m.overlay(system, lower, upper_fs / "upper", upper_fs / "work", mnt)
    out: Figures = {}
    try:
        out["cp_tree_ms"], out["cp_tree_growth"] = measure(
            upper_fs, cp("-a", mnt / "tree", mnt / "t1")
        )
        out["cp_big_ms"], out["cp_big_growth"] = measure(
            upper_fs, cp("-a", mnt / "big", mnt / "b1")
        )
        (mnt / "b1").unlink()
        ok: list[bool] = []
        ms, grown = measure(
            upper_fs, lambda: ok.append(cp("--reflink=always", mnt / "big", mnt / "b2")())
        )
        if ok[0]:
            out["reflink_big_ms"], out["reflink_big_growth"] = ms, grown
        (mnt / "b2").unlink(missing_ok=True)
        out["cfr_big_ms"], out["cfr_big_growth"] = measure(
            upper_fs, cp("--reflink=auto", mnt / "big", mnt / "b4")
        )
        if system == "overlayboot":
            out["clone_tree_ms"], out["clone_tree_growth"] = measure(
                upper_fs, lambda: clone(mnt / "tree", mnt / "t2")
            )
            out["clone_big_ms"], out["clone_big_growth"] = measure(
                upper_fs, lambda: clone(mnt / "big", mnt / "b3")
            )
            out["clone_write_ms"], out["clone_write_growth"] = measure(
                upper_fs, first_write(mnt / "b3")
            )
            t = time.perf_counter()
            run([sys.executable, "-m", "overlayboot", "clone", mnt / "tree", mnt / "t3"])
            out["clone_cli_ms"] = (time.perf_counter() - t) * 1e3
    finally:
        m.release(mnt)
        m.release(upper_fs)
    if system == "overlayboot":
        out.update(lazy_copy_range(m, lower, base))
    return out


def lazy_copy_range(m: Mounts, lower: Path, base: Path) -> Figures:
    """``cp --reflink=auto`` of the 1 GiB file on overlayboot without FUSE passthrough
    (where copy_file_range becomes a lazy copy), and the first write into the copy."""
    upper_fs = base / "up-nopassthrough"
    m.tmpfs(upper_fs, "2g")
    mnt = base / "mnt-nopassthrough"
    m.overlay(
        "overlayboot", lower, upper_fs / "upper", upper_fs / "work", mnt, ("--no-passthrough",)
    )
    out: Figures = {}
    try:
        out["lazy_cfr_big_ms"], out["lazy_cfr_big_growth"] = measure(
            upper_fs, cp("--reflink=auto", mnt / "big", mnt / "b5")
        )
        out["lazy_cfr_write_ms"], out["lazy_cfr_write_growth"] = measure(
            upper_fs, first_write(mnt / "b5")
        )
    finally:
        m.release(mnt)
        m.release(upper_fs)
    return out


LABELS = {
    "cp_tree_ms": "cp -a tree (20,000 files), ms",
    "cp_tree_growth": "  upper growth, KiB",
    "cp_big_ms": "cp -a big (1 GiB), ms",
    "cp_big_growth": "  upper growth, KiB",
    "reflink_big_ms": "cp --reflink=always big, ms",
    "reflink_big_growth": "  upper growth, KiB",
    "cfr_big_ms": "cp --reflink=auto big (copy_file_range), ms",
    "cfr_big_growth": "  upper growth, KiB",
    "lazy_cfr_big_ms": "cp --reflink=auto big, overlayboot --no-passthrough (lazy), ms",
    "lazy_cfr_big_growth": "  upper growth, KiB",
    "lazy_cfr_write_ms": "first 4 KiB write + fsync into that copy, ms",
    "lazy_cfr_write_growth": "  upper growth, KiB",
    "clone_tree_ms": "overlayboot clone tree, ms",
    "clone_tree_growth": "  upper growth, KiB",
    "clone_big_ms": "overlayboot clone big, ms",
    "clone_big_growth": "  upper growth, KiB",
    "clone_write_ms": "first 4 KiB write + fsync into the cloned big, ms",
    "clone_write_growth": "  upper growth, KiB",
    "clone_cli_ms": "`overlayboot clone tree` as a command (Python start included), ms",
}


def report(medians: dict[str, Figures]) -> list[str]:
    lines = ["| figure | " + " | ".join(SYSTEMS) + " |", "|---" * (len(SYSTEMS) + 1) + "|"]
    for key, label in LABELS.items():
        cells = []
        for system in SYSTEMS:
            value = medians[system].get(key)
            if value is None:
                cells.append("-")
            else:
                cells.append(f"{value / KiB:.0f}" if key.endswith("growth") else f"{value:.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


@click.command()
@click.option("--dir", "base", default="/var/tmp/overlayboot-bench", show_default=True)
@click.option("--reps", default=3, show_default=True)
def main(base: str, reps: int) -> None:
    """Clone and copy figures (see the module's docstring)."""
    root = Path(base)
    work = root / "clone"
    for stale in reversed(mounted_under(work)):
        run(["umount", "-l", stale], check=False)
    image = prepare(root, Options(), rebuild=False).image
    runs: dict[str, list[Figures]] = {s: [] for s in SYSTEMS}
    with mounts() as m:
        m.squashfs(image, work / "lower")
        for rep in range(reps):
            for i in range(len(SYSTEMS)):
                system = SYSTEMS[(rep + i) % len(SYSTEMS)]
                runs[system].append(one_system(m, system, work / "lower", work))
                print(f"rep {rep + 1} {system}: {runs[system][-1]}", file=sys.stderr)
    medians = {
        s: {k: statistics.median(r[k] for r in runs[s] if k in r) for k in runs[s][0]}
        for s in SYSTEMS
    }
    for line in report(medians):
        print(line)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = HERE / "results" / f"clone-{stamp}.json"
    out.write_text(
        json.dumps({"machine": machine.describe(), "runs": runs, "medians": medians}, indent=1)
    )
    print(f"written {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
