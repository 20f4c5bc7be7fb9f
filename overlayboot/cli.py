"""The ``overlayboot`` command: one click group; domain errors become one line and an exit code."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from overlayboot.clierrors import domain_errors
from overlayboot.errors import MountError, UsageError
from overlayboot.fs.config import CACHE_FOREVER
from overlayboot.lazygroup import LazyGroup

P = ParamSpec("P")
T = TypeVar("T")

# Commands imported only when used (overlayboot/lazygroup.py): the image builder is not
# needed to start the daemon, and is not part of the initramfs' runtime.
LAZY_COMMANDS = {
    "build": "mkimage.commands:build",
    "inspect": "mkimage.commands:inspect",
    "kernel": "mkimage.commands:kernel",
    "persistence": "mkimage.commands:persistence",
    "block": "overlayboot.block.cli:block",
    "serve": "overlayboot.net.serve:serve",
}


@click.group(
    cls=LazyGroup,
    lazy=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="overlayboot")
@click.option(
    "--debug",
    is_flag=True,
    help="Log each command run and the whole error output of a tool that fails.",
)
def cli(debug: bool) -> None:
    """overlayboot: a writable live system over read-only media."""
    if debug:
        logging.getLogger().setLevel(logging.DEBUG)


@cli.command("mount")
@click.option("--lower", "lower", help="Lower dirs, top first: DIR[:DIR...].")
@click.option("--upper", type=click.Path(path_type=Path), help="Upper (writable) dir.")
@click.option("--work", type=click.Path(path_type=Path), help="Work dir, on the upper's fs.")
@click.option(
    "-o",
    "options",
    multiple=True,
    help="Mount options, kernel syntax: lowerdir=A:B,upperdir=U,workdir=W[,allow_other,...].",
)
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground.")
@click.option("--log", "log_file", type=click.Path(path_type=Path), help="Daemon log file.")
@click.option("--debug", is_flag=True, help="Log every failed request.")
@click.option(
    "--timeout",
    type=float,
    default=CACHE_FOREVER,
    help="Seconds the kernel caches entries and attributes [default: a year: only the daemon "
    "changes the layers].",
)
@click.option(
    "--copy-up",
    "copy_up",
    type=click.Choice(["chunked", "whole"]),
    help="chunked (default): large files come up chunk by chunk as written; "
    "whole: copy whole files, as kernel overlayfs (-o copy_up=).",
)
@click.option(
    "--chunk-threshold",
    metavar="SIZE",
    help="Files this large or larger are copied up in chunks (default 1M; -o chunk_threshold=).",
)
@click.option(
    "--chunk-size",
    metavar="SIZE",
    help="Chunk size, a power of two (default: 64K or the upper's block size; -o chunk_size=).",
)
@click.option(
    "--seal-on-umount",
    is_flag=True,
    help="At unmount, make every partial copy-up whole (kernel overlayfs format; "
    "-o seal_on_umount).",
)
@click.option(
    "--no-passthrough",
    is_flag=True,
    help="Serve every read and write through the daemon, never through FUSE passthrough "
    "(which needs Linux 6.9+ and root; -o nopassthrough).",
)
@click.option(
    "--root",
    "as_root",
    is_flag=True,
    help="The overlay is the system's root filesystem: the daemon ignores SIGTERM, SIGINT and "
    "SIGHUP (only umount ends it), is never picked by the OOM killer and locks its memory.",
)
@click.argument("args", nargs=-1, type=click.Path(path_type=Path))
@domain_errors
def mount_cmd(
    lower: str | None,
    upper: Path | None,
    work: Path | None,
    options: tuple[str, ...],
    foreground: bool,
    log_file: Path | None,
    debug: bool,
    timeout: float,
    copy_up: str | None,
    chunk_threshold: str | None,
    chunk_size: str | None,
    seal_on_umount: bool,
    no_passthrough: bool,
    as_root: bool,
    args: tuple[Path, ...],
) -> None:
    """Mount an overlay at MOUNTPOINT ([SOURCE] MOUNTPOINT, SOURCE is ignored as in mount -t)."""
    from overlayboot.fs.chunkpolicy import make_policy
    from overlayboot.fs.config import (
        NO_PASSTHROUGH,
        OverlayConfig,
        check_config,
        check_mountpoint,
        parse_mount_options,
        split_lowerdir,
    )

    if not args or len(args) > 2:
        raise UsageError("give the mount point: overlayboot mount [options] MOUNTPOINT")
    mountpoint = args[-1]
    ours, rest = parse_mount_options(options)
    lower = lower or ours.get("lowerdir")
    upper_s = upper or (Path(ours["upperdir"]) if "upperdir" in ours else None)
    work_s = work or (Path(ours["workdir"]) if "workdir" in ours else None)
    if not lower:
        raise UsageError("no lower dir: --lower DIR[:DIR...] or -o lowerdir=...")
    if upper_s is None or work_s is None:
        raise UsageError("the upper and work dirs are required: --upper DIR --work DIR")
    rest = frozenset(o for o in rest if o not in ("rw", "defaults", "nofail", "_netdev"))
    cfg = check_config(
        OverlayConfig(
            lowers=split_lowerdir(lower),
            upper=upper_s,
            work=work_s,
            timeout=timeout,
            options=rest,
            copy_up=make_policy(
                copy_up or ours.get("copy_up"),
                chunk_threshold or ours.get("chunk_threshold"),
                chunk_size or ours.get("chunk_size"),
            ),
            seal_on_umount=seal_on_umount or "seal_on_umount" in ours,
            passthrough=not (no_passthrough or NO_PASSTHROUGH in ours),
        )
    )
    mnt = check_mountpoint(mountpoint)
    from overlayboot.fs.daemon import serve

    serve(cfg, mnt, foreground=foreground, log_file=log_file, debug=debug, as_root=as_root)


@cli.command("umount")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.argument("mountpoint", type=click.Path(path_type=Path))
@domain_errors
def umount_cmd(mountpoint: Path, timeout: float) -> None:
    """Unmount an overlayboot mount and wait for its daemon to finish."""
    from overlayboot.fuseserve import pid_file
    from overlayboot.run import run

    mnt = mountpoint.resolve()
    if not os.path.ismount(mnt):
        raise MountError(f"{mnt} is not a mount point")
    pidf = pid_file(mnt)
    pid = None
    if pidf.exists():
        try:
            pid = int(pidf.read_text().strip())
        except ValueError:
            pid = None
    if os.geteuid() == 0:
        run(["umount", str(mnt)])
    else:
        run(["fusermount3", "-u", str(mnt)])
    if pid is not None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise MountError(f"the daemon (pid {pid}) of {mnt} has not exited after {timeout} s")


@cli.group("upper")
def upper_group() -> None:
    """An upper layer's partial copy-ups: check them, or seal them into kernel overlayfs format."""


def _upper_args(fn: Callable[P, T]) -> Callable[P, T]:
    """UPPERDIR and --lower: the arguments of every ``upper`` command."""
    fn = click.argument("upperdir", type=click.Path(path_type=Path))(fn)
    lower_help = "Lower dirs, top first: DIR[:DIR...] (default: the roots recorded in each map)."
    return click.option("--lower", "lower", help=lower_help)(fn)


@upper_group.command("check")
@_upper_args
@domain_errors
def upper_check_cmd(upperdir: Path, lower: str | None) -> None:
    """List the partial copy-ups of UPPERDIR; fail if a map is bad or a lower file changed."""
    from overlayboot import upper

    upper.check(upperdir, lower, click.echo)


@upper_group.command("seal")
@_upper_args
@domain_errors
def upper_seal_cmd(upperdir: Path, lower: str | None) -> None:
    """Make every partial copy-up of UPPERDIR whole (the overlay must not be mounted)."""
    from overlayboot import upper

    upper.seal_upper(upperdir, lower, click.echo)


@cli.command("clone")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@domain_errors
def clone_cmd(src: Path, dst: Path) -> None:
    """Make DST a lazy copy-on-write copy of SRC, both inside one overlayboot mount:
    constant time for lower content, nothing copied until written."""
    from overlayboot.clonecmd import clone

    clone(src, dst)


@cli.command("status")
@domain_errors
def status_cmd() -> None:
    """Show what the running live system is made of: medium, layers, upper usage."""
    from overlayboot.status import read_status

    for line in read_status().lines():
        click.echo(line)


@cli.command("standby", hidden=True)
@click.argument("args_file", type=click.Path(path_type=Path))
@domain_errors
def standby_cmd(args_file: Path) -> None:
    """Import the daemon now; run the command written to ARGS_FILE later (the boot's phase
    "standby"; see overlayboot/standby.py)."""
    from overlayboot.standby import preload, wait_for_args

    preload()
    argv = wait_for_args(args_file)
    if argv:
        main(argv)


@cli.command("demo")
@click.option("--dir", "base", type=click.Path(path_type=Path), default=None)
@click.option("--overlay", is_flag=True, help="Show the overlay alone (no image, no VM).")
@domain_errors
def demo_cmd(base: Path | None, overlay: bool) -> None:
    """Build the default image and boot it under QEMU: a write, a reboot, the change survives."""
    from overlayboot.demo import run_demo, run_live_demo

    if overlay:
        run_demo(base or Path("build/demo"))
    else:
        run_live_demo(base or Path("build/demo-image"))


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="overlayboot: %(message)s")
    cli.main(args=list(argv) if argv is not None else None, prog_name="overlayboot")


def helper_argv(argv: Sequence[str]) -> list[str] | None:
    """mount(8)'s helper calling convention -> ``overlayboot mount`` arguments.

    mount(8) runs ``mount.fuse.overlayboot SOURCE DIR [-sfnv] [-o OPTS]``: ``-s``
    (sloppy), ``-n`` (no mtab) and ``-v`` change nothing here; ``-f`` (fake) means
    do nothing (None).
    """
    out: list[str] = ["mount"]
    it = iter(argv)
    for arg in it:
        if arg == "-o":
            out += ["-o", next(it, "")]
        elif arg.startswith("-o") and len(arg) > 2:
            out += ["-o", arg[2:]]
        elif arg.startswith("-") and len(arg) > 1 and set(arg[1:]) <= set("sfnv"):
            if "f" in arg:
                return None
        else:
            out.append(arg)
    return out


def mount_helper() -> None:
    """``mount.fuse.overlayboot SOURCE MOUNTPOINT -o OPTS``: what mount(8) runs for fstab."""
    args = helper_argv(sys.argv[1:])
    if args is not None:
        main(args)
