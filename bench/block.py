"""``python -m bench.block``: the block-level device against qemu-storage-daemon's qcow2
over FUSE and a loop device on a full copy, on one base, interleaved (root; ~2 min).

Every figure is taken on the raw loop device with O_DIRECT (no page cache of the device;
the base's and the store's caches are dropped per file before a cold read), on a device
made fresh for each repetition: 4 KiB random writes with an fsync after each (new chunks:
copy-on-write of the base), the same offsets written again (chunks already in the
overlay), the store's growth after them, a cold sequential read of the whole device, and a
sequential write of it with a final fsync; and the CPU time its daemon used for all of
it. The order of the devices turns with each
repetition. Medians of the repetitions; JSON in bench/results/block-*.json.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from bench.blockdevs import CHUNK, TARGETS, Target
from overlayboot.errors import OverlaybootError

MiB = 1 << 20
HERE = Path(__file__).resolve().parent


def _direct(dev: str, write: bool) -> int:
    return os.open(dev, (os.O_RDWR if write else os.O_RDONLY) | os.O_DIRECT)


def seq_read(dev: str, size: int) -> float:
    """MB/s of a sequential read in 1 MiB requests."""
    fd, buf = _direct(dev, False), mmap.mmap(-1, MiB)
    t = time.perf_counter()
    for off in range(0, size, MiB):
        os.preadv(fd, [buf], off)
    dt = time.perf_counter() - t
    os.close(fd)
    return size / dt / 1e6


def seq_write(dev: str, size: int) -> float:
    """MB/s of a sequential write in 1 MiB requests and a final fsync."""
    fd, buf = _direct(dev, True), mmap.mmap(-1, MiB)
    buf.write(random.Random(1).randbytes(MiB))
    t = time.perf_counter()
    for off in range(0, size, MiB):
        os.pwritev(fd, [buf], off)
    os.fsync(fd)
    dt = time.perf_counter() - t
    os.close(fd)
    return size / dt / 1e6


def rand_writes(dev: str, offsets: list[int]) -> float:
    """Milliseconds per 4 KiB write + fsync."""
    fd, buf = _direct(dev, True), mmap.mmap(-1, 4096)
    buf.write(b"\xa5" * 4096)
    t = time.perf_counter()
    for off in offsets:
        os.pwritev(fd, [buf], off)
        os.fsync(fd)
    dt = time.perf_counter() - t
    os.close(fd)
    return dt / len(offsets) * 1e3


def one_run(target: Target, size: int, offsets: list[int]) -> dict[str, float]:
    dev = target.setup()
    try:
        out = {"randwrite_new_ms": rand_writes(dev, offsets)}
        out["randwrite_again_ms"] = rand_writes(dev, offsets)
        out["growth_mib"] = target.growth() / MiB
        target.cold()
        out["seqread_mbs"] = seq_read(dev, size)
        out["seqwrite_mbs"] = seq_write(dev, size)
        out["daemon_cpu_s"] = target.daemon_cpu()
        return out
    finally:
        target.teardown()


FIGURES: dict[str, tuple[str, Callable[[float, float], float]]] = {
    # name -> (label, ours-relative-to-theirs as "times their time": >1 is slower)
    "seqread_mbs": ("seq read, cold (MB/s)", lambda ours, theirs: theirs / ours),
    "seqwrite_mbs": ("seq write + fsync (MB/s)", lambda ours, theirs: theirs / ours),
    "randwrite_new_ms": ("4 KiB random write + fsync, new chunks (ms)", lambda o, t: o / t),
    "randwrite_again_ms": ("4 KiB random write + fsync, again (ms)", lambda o, t: o / t),
    "growth_mib": ("growth after the random writes (MiB)", lambda o, t: o / t if t else 0.0),
    "daemon_cpu_s": ("daemon CPU time over the run (s)", lambda o, t: o / t if t else 0.0),
}


def report(medians: dict[str, dict[str, float]], changed_mib: float) -> list[str]:
    names = list(medians)
    lines = [
        "| figure | " + " | ".join(names) + " | ob time / qsd time |",
        "|---" * (len(names) + 2) + "|",
    ]
    for key, (label, ratio) in FIGURES.items():
        cells = [f"{medians[n][key]:.2f}" for n in names]
        r = ratio(medians["overlayboot"][key], medians["qsd-qcow2"][key])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {r:.2f} |")
    lines.append(f"changed chunks after the random writes: {changed_mib:.2f} MiB")
    return lines


@click.command()
@click.option("--size-mib", default=256, show_default=True, help="Size of the base.")
@click.option("--writes", default=400, show_default=True, help="4 KiB random writes per run.")
@click.option("--reps", default=3, show_default=True)
@click.option(
    "--cpu",
    default=-1,
    show_default=True,
    help="Pin the run and the daemons it starts to this CPU (-1: the last one; a round trip "
    "between CPUs is slower and noisier here), or -2 for no pinning.",
)
@click.option(
    "--dir", "work", type=click.Path(path_type=Path), default=Path("/var/tmp/ob-block-bench")
)
def main(size_mib: int, writes: int, reps: int, cpu: int, work: Path) -> None:
    """Run the block benchmark and print a table (Markdown)."""
    if os.geteuid() != 0:
        sys.exit("bench.block: run as root (loop devices, FUSE)")
    if cpu != -2:
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0)) if cpu == -1 else cpu})
    work.mkdir(parents=True, exist_ok=True)
    size = size_mib * MiB
    base = work / "base.img"
    if not base.exists() or base.stat().st_size != size:
        with open(base, "wb") as f:
            rng = random.Random(0)
            for _ in range(size_mib):
                f.write(rng.randbytes(MiB))
    rng = random.Random(2)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(writes)]
    changed = len({o // CHUNK for o in offsets}) * CHUNK / MiB
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in TARGETS}
    try:
        names = list(TARGETS)
        for rep in range(reps):
            for name in names[rep % 3 :] + names[: rep % 3]:  # none always after another
                runs[name].append(one_run(TARGETS[name](name, work, base), size, offsets))
                print(f"rep {rep + 1} {name}: {runs[name][-1]}", flush=True)
    except OverlaybootError as exc:
        sys.exit(f"bench.block: {exc.line()}")
    medians = {
        n: {k: statistics.median(r[k] for r in rs) for k in FIGURES} for n, rs in runs.items()
    }
    for line in report(medians, changed):
        print(line)
    HERE.joinpath("results").mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = HERE / "results" / f"block-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "size_mib": size_mib,
                "writes": writes,
                "cpu": cpu,
                "reps": reps,
                "changed_mib": changed,
                "runs": runs,
                "medians": medians,
            },
            indent=1,
        )
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
