"""``python -m bench``: options, the root check, signals; the suite itself is in suite.py."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

import click

from bench.options import QUICK, SYSTEMS, Options
from bench.scale import SYSTEMS as SCALE_SYSTEMS
from bench.scale import ScaleOptions
from bench.scale import execute as scale_run
from bench.suite import execute
from overlayboot.errors import OverlaybootError

HERE = Path(__file__).resolve().parent


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _cpus(value: str) -> tuple[int, ...] | None:
    if value == "all":
        return None
    if value == "auto":  # the last CPU: CPU 0 takes most interrupts
        return (max(os.sched_getaffinity(0)),)
    return tuple(int(c) for c in value.split(","))


def _scale_options(opts: Options, given: Mapping[str, object]) -> ScaleOptions:
    """The scale run's options: its own sizes, unless --files/--dirs/--reps/--comp say."""
    keep = {k: v for k, v in given.items() if k in ("files", "dirs", "reps", "comp")}
    systems = tuple(s for s in opts.systems if s in SCALE_SYSTEMS)
    return dataclasses.replace(
        ScaleOptions(systems=systems, cpus=opts.cpus, overlayboot_args=opts.overlayboot_args),
        **keep,  # type: ignore[arg-type]
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Smoke run (~2 min): small sizes.")
@click.option(
    "--scale",
    is_flag=True,
    help="Instead of the suite: the 1,000,000-file walk and the daemons' memory (bench/scale.py).",
)
@click.option("--reps", type=int, help="Repetitions of every figure (default 5).")
@click.option("--big-mib", type=int, help="Large lower file, MiB (default 1024).")
@click.option("--files", type=int, help="Small lower files (default 20000).")
@click.option("--dirs", type=int, help="Directories holding them (default 200).")
@click.option("--creates", type=int, help="Files created per create workload (default 10000).")
@click.option("--rm-dirs", type=int, help="Lower directories removed by rm -rf (default 50).")
@click.option("--write-mib", type=int, help="New file written sequentially, MiB (default 1024).")
@click.option("--execs", type=int, help="Runs of the lower /bin/true (default 1000).")
@click.option("--boot-runs", type=int, help="QEMU boots per overlay, 0 for none (default 5).")
@click.option("--build-reps", type=int, help="`build all` runs, 0 for none (default 3).")
@click.option("--tar-source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--comp", help="mksquashfs compressor of the lower (default lz4).")
@click.option(
    "--systems",
    default=",".join(SYSTEMS),
    show_default=True,
    help="Comma-separated subset to run.",
)
@click.option(
    "--cpus",
    default="auto",
    show_default=True,
    help="Pin the suite and its daemons: 'auto' (the last CPU), 'all' (no pinning), or '0,1'.",
)
@click.option(
    "--overlayboot-arg",
    "ob_args",
    multiple=True,
    help="Extra argument for `overlayboot mount` (repeat), e.g. --overlayboot-arg=--timeout=60.",
)
@click.option(
    "--dir",
    "base",
    type=click.Path(path_type=Path),
    default=Path("/var/tmp/overlayboot-bench"),
    show_default=True,
    help="Scratch dir (on disk: cold reads of the lower image hit the disk).",
)
@click.option("--results", type=click.Path(path_type=Path), default=HERE / "results")
@click.option("--rebuild", is_flag=True, help="Rebuild the lower image even if one fits.")
def main(
    quick: bool,
    scale: bool,
    systems: str,
    cpus: str,
    ob_args: tuple[str, ...],
    base: Path,
    results: Path,
    rebuild: bool,
    **sizes: int | str | Path | None,
) -> None:
    """Benchmark overlayboot against the raw squashfs, kernel overlayfs and fuse-overlayfs."""
    if os.geteuid() != 0:
        sys.exit(
            "bench: must run as root (it mounts squashfs, tmpfs and overlays): sudo make bench"
        )
    chosen = tuple(s.strip() for s in systems.split(",") if s.strip())
    unknown = sorted(set(chosen) - set(SYSTEMS))
    if unknown:
        raise click.BadParameter(f"unknown {unknown}; choose from {SYSTEMS}", param_hint="systems")
    given = {k: v for k, v in sizes.items() if v is not None}
    opts = dataclasses.replace(
        QUICK if quick else Options(),
        systems=chosen,
        cpus=_cpus(cpus),
        overlayboot_args=ob_args,
        **given,  # type: ignore[arg-type]
    )
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        if scale:
            sys.exit(scale_run(_scale_options(opts, given), base, results, rebuild))
        sys.exit(execute(opts, base, results, rebuild))
    except KeyboardInterrupt:
        sys.exit("bench: interrupted (everything it mounted is unmounted)")
    except OverlaybootError as exc:
        sys.exit(f"bench: error: {exc.line()}")
