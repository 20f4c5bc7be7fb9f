"""The image builder's commands: the ``build``, ``inspect``, ``kernel`` and ``persistence``
click groups.

``overlayboot/cli.py`` names them in its table of lazily imported commands: this module
(and the builders it imports) is loaded only when one of them runs or ``--help`` lists
them, never when the daemon starts.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mkimage import secureboot
from mkimage.kernel import DEFAULT_CACHE, DEFAULT_SERIES, Kernel, fetch_kernel, kernel_from_dirs
from overlayboot.clierrors import domain_errors
from overlayboot.errors import UsageError

if TYPE_CHECKING:
    from mkimage.cpio import Member

# the values of mkimage.cpio.Compression (not imported here: the builders are imported
# only when a build command runs)
COMPRESSIONS = ("zstd", "gzip", "xz", "none")


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
    fetched = fetch_kernel(cache, series)
    click.echo(f"kernel {fetched.version}")
    click.echo(f"  image   {fetched.image}")
    click.echo(f"  modules {fetched.modules}")
    if fetched.config is not None:
        click.echo(f"  config  {fetched.config}")


# --- root, squashfs, ISO, USB, everything --------------------------------------------


@build.command("rootfs")
@click.option(
    "--from",
    "source",
    type=click.Path(path_type=Path),
    help="A root directory or tarball to use instead of the built-in busybox root.",
)
@click.option(
    "--debian",
    is_flag=True,
    help="debootstrap --variant=minbase bookworm + systemd-sysv (slow; root, network).",
)
@click.option(
    "--output", "-o", type=click.Path(path_type=Path), default=Path("build/rootfs"),
    show_default=True,
)  # fmt: skip
@domain_errors
def build_rootfs_cmd(source: Path | None, debian: bool, output: Path) -> None:
    """Build the root tree: the busybox default, a Debian root, or a copy of DIR/TARBALL."""
    from mkimage import rootfs

    started = time.monotonic()
    if source is not None and debian:
        raise UsageError("--from and --debian exclude each other")
    if debian:
        root = rootfs.build_debian_root(output)
    elif source is not None:
        root = rootfs.copy_root(source, output)
    else:
        root = rootfs.build_busybox_root(output)
    click.echo(f"{root.path}: init {root.init}, {time.monotonic() - started:.1f} s")


@build.command("squashfs")
@click.argument("rootdir", type=click.Path(path_type=Path))
@click.option(
    "--output", "-o", type=click.Path(path_type=Path),
    default=Path("build/filesystem.squashfs"), show_default=True,
)  # fmt: skip
@click.option(
    "--compression",
    type=click.Choice(("zstd", "xz", "gzip", "lz4", "lzo")),
    default="zstd",
    show_default=True,
)
@click.option("--level", type=int, help="Compression level (zstd 1-22; mksquashfs default 15).")
@click.option("--all-root/--keep-owners", default=None, help="[default: all-root if not root's]")
@click.option("--source-date-epoch", type=int, default=None)
@domain_errors
def build_squashfs_cmd(
    rootdir: Path,
    output: Path,
    compression: str,
    level: int | None,
    all_root: bool | None,
    source_date_epoch: int | None,
) -> None:
    """Build a reproducible squashfs image of ROOTDIR (which must hold an init)."""
    from mkimage.squashfs import SquashfsSpec, build_squashfs

    started = time.monotonic()
    epoch = source_date_epoch if source_date_epoch is not None else _default_epoch()
    spec = SquashfsSpec(compression, level, epoch, all_root=all_root)
    built = build_squashfs(rootdir, output, spec)
    click.echo(
        f"{built.path}: {built.size:,d} bytes ({compression}), init {built.root.init}, "
        f"image id {built.image_id}, {time.monotonic() - started:.1f} s"
    )


@build.command("iso")
@click.option(
    "--output", "-o", type=click.Path(path_type=Path), default=Path("build/overlayboot.iso"),
    show_default=True,
)  # fmt: skip
@click.option("--kernel-series", default=DEFAULT_SERIES, show_default=True)
@click.option("--kernel-image", type=click.Path(path_type=Path), help="A kernel image file.")
@click.option("--cache", type=click.Path(path_type=Path), default=DEFAULT_CACHE, show_default=True)
@click.option(
    "--initramfs", type=click.Path(path_type=Path), default=Path("build/initramfs.img"),
    show_default=True,
)  # fmt: skip
@click.option(
    "--squashfs", type=click.Path(path_type=Path), default=Path("build/filesystem.squashfs"),
    show_default=True,
)  # fmt: skip
@click.option("--label", default="OVERLAYBOOT", show_default=True, help="ISO volume label.")
@click.option("--timeout", type=int, default=5, show_default=True, help="GRUB menu seconds.")
@click.option("--param", "params", multiple=True, help="A boot parameter for every entry.")
@click.option("--no-serial", is_flag=True, help="No serial console in GRUB and the kernel.")
@click.option(
    "--secure-boot", type=click.Choice(secureboot.MODES), default="auto", show_default=True,
    help="Debian's signed shim + GRUB in the EFI image (auto: when the kernel is signed).",
)  # fmt: skip
@click.option("--source-date-epoch", type=int, default=None)
@domain_errors
def build_iso_cmd(
    output: Path,
    kernel_series: str,
    kernel_image: Path | None,
    cache: Path,
    initramfs: Path,
    squashfs: Path,
    label: str,
    timeout: int,
    params: tuple[str, ...],
    no_serial: bool,
    secure_boot: str,
    source_date_epoch: int | None,
) -> None:
    """Build the hybrid ISO (BIOS + UEFI, CD + USB) from kernel, initramfs and squashfs."""
    from mkimage.grub import Menu
    from mkimage.initramfs import ImageConfig
    from mkimage.iso import IsoSpec, build_iso

    started = time.monotonic()
    ImageConfig(label=label)  # the same label rules as the initramfs
    epoch = source_date_epoch if source_date_epoch is not None else _default_epoch()
    image = kernel_image if kernel_image is not None else fetch_kernel(cache, kernel_series).image
    menu = Menu(label=label, timeout=timeout, params=params, serial=not no_serial)
    chain = secureboot.resolve(secureboot.Mode(secure_boot), image, cache)
    built = build_iso(IsoSpec(image, initramfs, squashfs, menu, epoch, signed_boot=chain), output)
    click.echo(
        f"{built.path}: {built.size:,d} bytes, label {built.label}, "
        f"secure boot {'on (shim + signed GRUB)' if built.secure_boot else 'off'}, "
        f"{time.monotonic() - started:.1f} s"
    )


@build.command("usb")
@click.option(
    "--output", "-o", type=click.Path(path_type=Path),
    default=Path("build/overlayboot-usb.img"), show_default=True,
)  # fmt: skip
@click.option(
    "--iso", type=click.Path(path_type=Path), default=Path("build/overlayboot.iso"),
    show_default=True,
)  # fmt: skip
@click.option("--persistence-size", default="256M", show_default=True)
@click.option("--persistence-label", default="overlayboot-rw", show_default=True)
@click.option("--source-date-epoch", type=int, default=None)
@domain_errors
def build_usb_cmd(
    output: Path,
    iso: Path,
    persistence_size: str,
    persistence_label: str,
    source_date_epoch: int | None,
) -> None:
    """Build a USB stick image: the hybrid ISO plus an ext4 persistence partition."""
    from mkimage.persistence import parse_size
    from mkimage.usb import build_usb

    started = time.monotonic()
    epoch = source_date_epoch if source_date_epoch is not None else _default_epoch()
    built = build_usb(
        iso, output, size=parse_size(persistence_size), label=persistence_label, epoch=epoch
    )
    part = built.partition
    click.echo(
        f"{built.path}: {built.size:,d} bytes; partition {part.slot} = ext4 "
        f"{built.persistence.label} at sector {part.start}, {part.sectors} sectors; "
        f"{time.monotonic() - started:.1f} s"
    )


@build.command("all")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="An image.toml.")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="[default: build]")
@click.option("--cache", type=click.Path(path_type=Path), default=DEFAULT_CACHE, show_default=True)
@domain_errors
def build_all_cmd(config_file: Path | None, output: Path | None, cache: Path) -> None:
    """Build everything: kernel, rootfs, squashfs, initramfs, ISO and USB image."""
    from dataclasses import replace

    from mkimage.config import ImageSpec, load_spec
    from mkimage.pipeline import STEPS, build_all, sizes
    from mkimage.progress import Steps

    spec = load_spec(config_file) if config_file is not None else ImageSpec()
    if output is not None:
        spec = replace(spec, output=output)
    epoch = spec.source_date_epoch if spec.source_date_epoch is not None else _default_epoch()
    steps = Steps(len(STEPS))
    out = build_all(spec, epoch, steps=steps, cache=cache)
    for path, size in sizes(out):
        click.echo(f"  {path}  {size / (1 << 20):.1f} MiB")
    click.echo(steps.summary())


@click.group("persistence")
def persistence() -> None:
    """Make persistence partitions and images; list and prune the changes kept on them."""


@persistence.command("create")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--size", default="256M", show_default=True, help="Size of a new image file.")
@click.option("--label", default="overlayboot-rw", show_default=True)
@click.option("--table", is_flag=True, help="Image file: an MBR and one partition at 1 MiB.")
@click.option("--force", is_flag=True, help="Overwrite an existing file or filesystem.")
@domain_errors
def persistence_create_cmd(target: Path, size: str, label: str, table: bool, force: bool) -> None:
    """Make an ext4 persistence filesystem on a DEVICE (partition) or as an IMAGE file."""
    from mkimage.persistence import create_persistence, parse_size

    fs = create_persistence(
        target, size=parse_size(size), label=label, table=table, force=force,
        epoch=_default_epoch(),
    )  # fmt: skip
    where = f" at byte {fs.offset}" if fs.offset else ""
    click.echo(f"{fs.path}: ext4 {fs.label} ({fs.size:,d} bytes{where}), UUID {fs.uuid}")


_TARGET_HELP = "The base dir, as in overlayboot.upper=DEV:DIR [default: each overlayboot/LABEL]."


@persistence.command("list")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--dir", "base_dir", help=_TARGET_HELP)
@domain_errors
def persistence_list_cmd(target: Path, base_dir: str | None) -> None:
    """List the changes each image keeps on a persistence partition.

    TARGET is its mount point (/run/overlayboot/rw in the live system), an image file or an
    unmounted device (read with debugfs)."""
    from overlayboot.images import list_lines, open_target

    for line in list_lines(open_target(target), base_dir):
        click.echo(line)


@persistence.command("inspect")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--image", "image_id", help="An image id or prefix [default: the one booted last].")
@click.option(
    "--lower", type=click.Path(path_type=Path), help="The image's root: changed vs added."
)
@click.option("--dir", "base_dir", help=_TARGET_HELP)
@domain_errors
def persistence_inspect_cmd(
    target: Path, image_id: str | None, lower: Path | None, base_dir: str | None
) -> None:
    """What one image's saved changes are: added, changed, partial, deleted, replaced.

    TARGET is the mount point, or an image file or device (mounted read-only, as root)."""
    from overlayboot.changes import inspect_lines, mounted, upper_of

    with mounted(target) as root:
        for line in inspect_lines(upper_of(root, image_id, base_dir), lower):
            click.echo(line)


@persistence.command("export")
@click.argument("target", type=click.Path(path_type=Path))
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("--image", "image_id", help="An image id or prefix [default: the one booted last].")
@click.option("--dir", "base_dir", help=_TARGET_HELP)
@domain_errors
def persistence_export_cmd(
    target: Path, archive: Path, image_id: str | None, base_dir: str | None
) -> None:
    """One image's saved changes as a tar ARCHIVE (xattrs, whiteouts: an upper layer).

    TARGET as for inspect."""
    from overlayboot.changes import export, mounted, upper_of

    with mounted(target) as root:
        export(upper_of(root, image_id, base_dir), archive.resolve())
    click.echo(f"{archive}: the changes, as an upper layer (unpack as root with tar --xattrs)")


@persistence.command("prune")
@click.argument("target", type=click.Path(path_type=Path))
@click.argument("ids", nargs=-1)
@click.option("--all-but-last", is_flag=True, help="Every image but the one booted last.")
@click.option("--force", is_flag=True, help="Remove the changes of the image booted last too.")
@click.option("--dir", "base_dir", help=_TARGET_HELP)
@domain_errors
def persistence_prune_cmd(
    target: Path, ids: tuple[str, ...], all_but_last: bool, force: bool, base_dir: str | None
) -> None:
    """Remove the changes of images IDS (ids or unique prefixes) from a persistence partition.

    TARGET as for list; an image file or device is changed with debugfs, then e2fsck -fp."""
    from overlayboot.images import open_target, prune

    tree = open_target(target)
    for line in prune(tree, list(ids), all_but_last=all_but_last, force=force, base_dir=base_dir):
        click.echo(line)


@persistence.command("reset")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--image", "image_id", help="An image id or prefix [default: the one booted last].")
@click.option("--dir", "base_dir", help=_TARGET_HELP)
@domain_errors
def persistence_reset_cmd(target: Path, image_id: str | None, base_dir: str | None) -> None:
    """Remove one image's saved changes: it boots next as if new (overlayboot.upper.reset).

    TARGET as for list (a mount point while the image is not running from it)."""
    from overlayboot.images import open_target, reset

    for line in reset(open_target(target), image_id, base_dir):
        click.echo(line)


@persistence.command("resize")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--size", help="The new size (e.g. 2G) [default for a device: all of it].")
@domain_errors
def persistence_resize_cmd(target: Path, size: str | None) -> None:
    """Grow or shrink the persistence filesystem of an image file or an unmounted device.

    An image file is a bare ext4 or a disk image whose last MBR partition holds it (a stick
    image); the file, its partition entry and the filesystem change together."""
    from mkimage.persistence import parse_size
    from mkimage.persistresize import resize_persistence

    done = resize_persistence(target, parse_size(size) if size is not None else None)
    where = f" (partition at byte {done.offset})" if done.offset else ""
    click.echo(f"{done.path}{where}: ext4 resized from {done.old:,d} to {done.new:,d} bytes")
