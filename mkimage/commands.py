"""The image builder's commands: ``build``, ``inspect`` and ``kernel`` click groups.

They are added to the ``overlayboot`` group at the end of ``overlayboot/cli.py``, whose
``domain_errors`` turns a domain error into one line and an exit code; it is looked up
when a command runs, so that neither module needs the other to be imported first.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import click

from mkimage.kernel import DEFAULT_CACHE, DEFAULT_SERIES, Kernel, fetch_kernel, kernel_from_dirs
from overlayboot.errors import UsageError

if TYPE_CHECKING:
    from mkimage.cpio import Member

# the values of mkimage.cpio.Compression (not imported here: the runtime in the initramfs
# imports this module through overlayboot.cli, and the builders are not part of it)
COMPRESSIONS = ("zstd", "gzip", "xz", "none")

P = ParamSpec("P")
T = TypeVar("T")


def domain_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """``overlayboot.cli.domain_errors``, imported when the command runs."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        from overlayboot.cli import domain_errors as handle

        return handle(fn)(*args, **kwargs)

    return wrapper


def _default_epoch() -> int:
    from mkimage.initramfs import DEFAULT_SOURCE_DATE_EPOCH

    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return DEFAULT_SOURCE_DATE_EPOCH
    try:
        return int(value)
    except ValueError as exc:
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds") from exc


def _kernel(series: str, image: Path | None, modules_dir: Path | None, cache: Path) -> Kernel:
    if (image is None) != (modules_dir is None):
        raise UsageError("--kernel-image and --modules-dir go together")
    if image is not None and modules_dir is not None:
        return kernel_from_dirs(image, modules_dir)
    return fetch_kernel(cache, series)


@click.group("build")
def build() -> None:
    """Build parts of a live image."""


@build.command("initramfs")
@click.option("--kernel-series", default=DEFAULT_SERIES, show_default=True)
@click.option("--kernel-image", type=click.Path(path_type=Path), help="A kernel image file.")
@click.option(
    "--modules-dir", type=click.Path(path_type=Path), help="Its lib/modules/VERSION directory."
)
@click.option("--cache", type=click.Path(path_type=Path), default=DEFAULT_CACHE, show_default=True)
@click.option(
    "--compression",
    type=click.Choice(COMPRESSIONS),
    default=COMPRESSIONS[0],
    show_default=True,
)
@click.option("--label", default="OVERLAYBOOT", show_default=True, help="Boot medium label.")
@click.option("--param", "params", multiple=True, help="A default boot parameter (repeatable).")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=Path("build/initramfs.img"),
    show_default=True,
)
@click.option(
    "--source-date-epoch",
    type=int,
    default=None,
    help="Timestamp of every entry [default: $SOURCE_DATE_EPOCH or a fixed constant].",
)
@domain_errors
def build_initramfs_cmd(
    kernel_series: str,
    kernel_image: Path | None,
    modules_dir: Path | None,
    cache: Path,
    compression: str,
    label: str,
    params: tuple[str, ...],
    output: Path,
    source_date_epoch: int | None,
) -> None:
    """Build the initramfs: busybox, boot modules, the Python runtime, hooks and /init."""
    from mkimage.cpio import Compression
    from mkimage.initramfs import ImageConfig, InitramfsSpec, build_initramfs

    started = time.monotonic()
    kernel = _kernel(kernel_series, kernel_image, modules_dir, cache)
    spec = InitramfsSpec(
        kernel=kernel,
        compression=Compression(compression),
        source_date_epoch=source_date_epoch if source_date_epoch is not None else _default_epoch(),
        image=ImageConfig(label=label, params=params),
    )
    result = build_initramfs(spec, output)
    click.echo(
        f"{result.path}: {result.size:,d} bytes ({compression}), {result.entries} entries, "
        f"kernel {kernel.version}, {len(result.modules.files)} modules, "
        f"{time.monotonic() - started:.1f} s"
    )
    click.echo("runtime (uncompressed):")
    for line in result.runtime_sizes.lines():
        click.echo(f"  {line}")


@click.group("inspect")
def inspect() -> None:
    """Show what is inside built images."""


def ls_line(member: Member) -> str:
    """One ``ls -l`` style line for an archive member."""
    from mkimage.cpio import Kind

    mode = stat.filemode(member.mode)
    if member.kind in (Kind.CHAR, Kind.BLOCK):
        size = f"{member.rdevmajor:>4d},{member.rdevminor:>4d}"
    else:
        size = f"{len(member.data):>9d}"
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(member.mtime))
    name = "/" + member.name
    if member.kind is Kind.SYMLINK:
        name += f" -> {member.target}"
    return f"{mode} {member.nlink:>3d} {member.uid:>4d} {member.gid:>4d} {size} {when} {name}"


@inspect.command("initramfs")
@click.argument("file", type=click.Path(path_type=Path))
@domain_errors
def inspect_initramfs_cmd(file: Path) -> None:
    """List the entries of an initramfs FILE, and the Python runtime's size by part."""
    from mkimage.cpio import Kind, detect_compression, read_cpio
    from mkimage.initramfs import runtime_sizes_in

    if not file.is_file():
        raise UsageError(f"{file} does not exist or is not a file")
    members = read_cpio(file)
    with open(file, "rb") as f:
        head = f.read(8)
    for member in members:
        click.echo(ls_line(member))
    comp = detect_compression(head)
    raw = sum(len(m.data) for m in members if m.kind is Kind.FILE)
    click.echo(
        f"{len(members)} entries, {raw:,d} bytes of file data, "
        f"{file.stat().st_size:,d} bytes on disk ({comp.value if comp else 'unknown'})"
    )
    sizes = runtime_sizes_in((m.name, len(m.data)) for m in members if m.kind is Kind.FILE)
    if sizes.total:
        click.echo("Python runtime by part:")
        for line in sizes.lines():
            click.echo(f"  {line}")


@click.group("kernel")
def kernel() -> None:
    """Get a kernel for the image."""


@kernel.command("fetch")
@click.option("--series", default=DEFAULT_SERIES, show_default=True, help="Or an exact version.")
@click.option("--cache", type=click.Path(path_type=Path), default=DEFAULT_CACHE, show_default=True)
@domain_errors
def kernel_fetch_cmd(series: str, cache: Path) -> None:
    """Download a Debian kernel and its modules into the cache (the host's /boot untouched)."""
    k = fetch_kernel(cache, series)
    click.echo(f"kernel {k.version}")
    click.echo(f"  image   {k.image}")
    click.echo(f"  modules {k.modules}")
    if k.config is not None:
        click.echo(f"  config  {k.config}")
