"""``overlayboot build all``: every part of the image, in order, timed, under one directory.

    OUTPUT/rootfs/                  the root tree (busybox, Debian, or a copy of the user's)
    OUTPUT/filesystem.squashfs      the root image
    OUTPUT/initramfs.img            the initramfs (label and parameters baked in)
    OUTPUT/overlayboot.iso          the hybrid ISO
    OUTPUT/overlayboot-usb.img      the ISO plus a persistence partition

The kernel comes from the cache (``overlayboot kernel fetch``), and a Debian root is
debootstrapped once into the cache and copied from there afterwards.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mkimage import grub, rootfs, secureboot
from mkimage.cachelock import cache_lock
from mkimage.config import ImageSpec
from mkimage.iso import IsoSpec, build_iso
from mkimage.kernel import DEFAULT_CACHE, Kernel, fetch_kernel, kernel_from_dirs
from mkimage.persistence import parse_size
from mkimage.progress import Steps
from mkimage.squashfs import SquashfsSpec, build_squashfs
from mkimage.usb import build_usb
from overlayboot.errors import UsageError
from overlayboot.run import run

STEPS = ("kernel", "rootfs", "squashfs", "initramfs", "iso", "usb")


@dataclass(frozen=True)
class Outputs:
    """Where ``build all`` writes."""

    rootfs: Path
    squashfs: Path
    initramfs: Path
    iso: Path
    usb: Path

    @classmethod
    def under(cls, out: Path) -> Outputs:
        return cls(
            out / "rootfs",
            out / "filesystem.squashfs",
            out / "initramfs.img",
            out / "overlayboot.iso",
            out / "overlayboot-usb.img",
        )


def get_kernel(spec: ImageSpec, cache: Path) -> Kernel:
    k = spec.kernel
    if (k.image is None) != (k.modules is None):
        raise UsageError("kernel.image and kernel.modules go together")
    if k.image is not None and k.modules is not None:
        return kernel_from_dirs(k.image, k.modules)
    return fetch_kernel(cache, k.series)


def add_extra_files(root: Path, extra: tuple[tuple[object, Path], ...]) -> None:
    """Copy the configured extra files into the root tree."""
    for dest, src in extra:
        if not src.is_file():
            raise UsageError(f"extra file {src} does not exist")
        target = root / str(dest).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def run_script(root: Path, script: Path, epoch: int | None) -> None:
    """The image's script, run in the root (chroot, its /bin/sh), then removed from it."""
    if not script.is_file():
        raise UsageError(f"rootfs.script {script} does not exist")
    inside = root / "overlayboot-script"
    shutil.copy2(script, inside)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C"}
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    try:
        run(["chroot", root, "/bin/sh", "/overlayboot-script"], env=env)
    finally:
        inside.unlink()


def make_root(spec: ImageSpec, dest: Path, cache: Path, epoch: int | None = None) -> rootfs.Root:
    """The root tree the spec asks for, at ``dest``."""
    r = spec.rootfs
    if r.source == "busybox":
        root = rootfs.build_busybox_root(dest)
    elif r.source == "debian":
        include = (*rootfs.DEBIAN_INCLUDE, *r.packages)
        key = hashlib.sha256(" ".join(include).encode()).hexdigest()[:12]
        cached = (
            cache / f"rootfs-debian-{r.suite}"
            if not r.packages
            else (cache / f"rootfs-debian-{r.suite}-{key}")
        )
        with cache_lock(cache, cached.name):
            if rootfs.find_init(cached) is None:
                rootfs.build_debian_root(cached, suite=r.suite, include=include)
        root = rootfs.copy_root(cached, dest)
    else:
        assert r.path is not None
        root = rootfs.copy_root(r.path, dest)
    add_extra_files(dest, r.extra_files)
    if r.script is not None:
        run_script(dest, r.script, epoch)
    return root


def build_all(spec: ImageSpec, epoch: int, *, steps: Steps, cache: Path = DEFAULT_CACHE) -> Outputs:
    """Build every part; ``steps`` times and reports them."""
    from mkimage.cpio import Compression
    from mkimage.initramfs import ImageConfig, InitramfsSpec, build_initramfs

    out = Outputs.under(spec.output)
    image = ImageConfig(label=spec.label, params=spec.initramfs_params)  # checks the label
    persistence = parse_size(spec.persistence_size)
    with steps.step("kernel"):
        kernel = get_kernel(spec, cache)
    with steps.step("rootfs"):
        make_root(spec, out.rootfs, cache, epoch)
    with steps.step("squashfs", ticker=False):
        sq = SquashfsSpec(
            compression=spec.squashfs_compression,
            level=spec.squashfs_level,
            source_date_epoch=epoch,
        )
        build_squashfs(out.rootfs, out.squashfs, sq)
    with steps.step("initramfs"):
        build_initramfs(
            InitramfsSpec(
                kernel=kernel,
                compression=Compression(spec.initramfs_compression),
                source_date_epoch=epoch,
                image=image,
            ),
            out.initramfs,
        )
    with steps.step("iso"):
        menu = grub.Menu(
            label=spec.label,
            timeout=spec.timeout,
            params=spec.boot_params,
            persistence_label=spec.persistence_label,
            serial=spec.serial,
        )
        chain = secureboot.resolve(secureboot.Mode(spec.secure_boot), kernel.image, cache)
        iso = IsoSpec(kernel.image, out.initramfs, out.squashfs, menu, epoch, signed_boot=chain)
        build_iso(iso, out.iso, progress=False)
    with steps.step("usb"):
        build_usb(out.iso, out.usb, size=persistence, label=spec.persistence_label, epoch=epoch)
    return out


def sizes(out: Outputs) -> list[tuple[Path, int]]:
    """The files written and their sizes (apparent)."""
    return [(p, os.stat(p).st_size) for p in (out.squashfs, out.initramfs, out.iso, out.usb)]
