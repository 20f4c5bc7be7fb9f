"""``overlayboot block``: create a store for a base, attach it as a block device, detach
it, show it, merge it into a new image, reset it (a lazy subgroup of ``overlayboot``)."""

from __future__ import annotations

from pathlib import Path

import click

from overlayboot.clierrors import domain_errors

PathArg = click.Path(path_type=Path)


@click.group("block")
def block() -> None:
    """Block-level copy-on-write over a read-only image: only changed chunks are stored."""


def _size(text: str | None, what: str) -> int:
    from overlayboot.fs.chunkpolicy import parse_size

    return parse_size(text, what) if text else 0


@block.command("create")
@click.option("--base", type=PathArg, required=True, help="The read-only base (file or device).")
@click.option("--chunk-size", metavar="SIZE", default="64K", show_default=True)
@click.option("--max-size", metavar="SIZE", help="Refuse writes beyond this store size.")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.argument("store", type=PathArg)
@domain_errors
def create_cmd(base: Path, chunk_size: str, max_size: str | None, force: bool, store: Path) -> None:
    """Create an empty STORE for BASE."""
    from overlayboot.block import manage

    sb = manage.create(
        store,
        base,
        chunk_size=_size(chunk_size, "chunk size"),
        max_size=_size(max_size, "max size"),
        force=force,
    )
    click.echo(f"{store}: {sb.chunks} chunks of {sb.chunk_size} bytes over {base}")


@block.command("attach")
@click.option("--base", type=PathArg, help="The base [default: the one given at create].")
@click.option("--dir", "mountpoint", type=PathArg, help="Where the device's file is mounted.")
@click.argument("store", type=PathArg)
@domain_errors
def attach_cmd(base: Path | None, mountpoint: Path | None, store: Path) -> None:
    """Attach STORE as a block device and print its path (/dev/loopN)."""
    import logging

    from overlayboot.block import attach, manage

    debug = logging.getLogger().isEnabledFor(logging.DEBUG)
    click.echo(attach.attach(store, manage.base_of(store, base), mountpoint, debug))


@block.command("detach")
@click.argument("target", type=PathArg)
@domain_errors
def detach_cmd(target: Path) -> None:
    """Detach a device: TARGET is its /dev/loopN, its store or its directory."""
    from overlayboot.block import attach

    attach.detach(target)


@block.command("serve")
@click.option("--base", type=PathArg, help="The base [default: the one given at create].")
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground.")
@click.option("--log", "log_file", type=PathArg, help="Daemon log file.")
@click.option("--debug", is_flag=True)
@click.option("--root", "as_root", is_flag=True, help="The device holds the root filesystem.")
@click.argument("store", type=PathArg)
@click.argument("mountpoint", type=PathArg)
@domain_errors
def serve_cmd(
    base: Path | None,
    foreground: bool,
    log_file: Path | None,
    debug: bool,
    as_root: bool,
    store: Path,
    mountpoint: Path,
) -> None:
    """Serve STORE as MOUNTPOINT/disk (no loop device; attach does both)."""
    from overlayboot.block import manage
    from overlayboot.block.daemon import serve

    base = manage.base_of(store, base)
    if log_file is None and not foreground:
        log_file = store.with_name(store.name + ".log")
    serve(
        store,
        base,
        mountpoint,
        foreground=foreground,
        log_file=log_file,
        debug=debug,
        as_root=as_root,
    )


@block.command("info")
@click.argument("store", type=PathArg)
@domain_errors
def info_cmd(store: Path) -> None:
    """Show STORE's base, chunk size, state and how much has changed."""
    from overlayboot.block import manage

    for line in manage.info(store).lines():
        click.echo(line)


@block.command("merge")
@click.option("--base", type=PathArg, help="The base [default: the one given at create].")
@click.option("-o", "--output", type=PathArg, required=True, help="The new image.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.argument("store", type=PathArg)
@domain_errors
def merge_cmd(base: Path | None, output: Path, force: bool, store: Path) -> None:
    """Write BASE with STORE's changes to a new image (STORE must not be attached)."""
    from overlayboot.block import manage

    size = manage.merge(store, manage.base_of(store, base), output, force)
    click.echo(f"{output}: {size} bytes")


@block.command("reset")
@click.argument("store", type=PathArg)
@domain_errors
def reset_cmd(store: Path) -> None:
    """Forget every change in STORE (it must not be attached)."""
    from overlayboot.block import manage

    manage.reset(store)
