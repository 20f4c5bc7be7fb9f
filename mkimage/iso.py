"""The hybrid live ISO: ISO9660 + El Torito (BIOS and UEFI) + an MBR, so ``dd`` to a stick boots.

Layout of the ISO filesystem (the boot flow finds the medium by its volume label)::

    /boot/vmlinuz                 the kernel
    /boot/initramfs.img           the initramfs (its OVERLAYBOOT_LABEL must be the volume label)
    /boot/grub/grub.cfg           the menu (mkimage.grub), /boot/grub/{i386-pc,x86_64-efi}/
    /live/filesystem.squashfs     the root
    /SHA256SUMS                   sha256sum(1) lines of the three payload files

Partition table (an MBR; xorriso ``-partition_offset 16``): partition 1 is the ISO
filesystem from 32 KiB (type 0x00, bootable), partition 2 the EFI system partition
(``efi.img``, type 0xef) appended after it; slots 3 and 4 are free (mkimage.usb puts the
persistence partition in slot 3). BIOS boots the El Torito image from a CD and the same
GRUB core through GRUB's ``boot_hybrid.img`` MBR from a disk; UEFI boots the EFI image as
the El Torito EFI entry from a CD and from the ESP on a disk; with ``signed_boot`` that
image is Debian's signed shim + GRUB, which Secure Boot accepts (mkimage.secureboot).

Reproducible: xorriso gets ``SOURCE_DATE_EPOCH`` (it then fixes every file and volume
date) and the volume UUID GRUB searches for is derived from it (mkimage.grub).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mkimage import grub
from mkimage.atomic import atomic_output
from mkimage.secureboot import SignedBoot
from overlayboot.errors import OverlaybootError, UsageError
from overlayboot.run import run

KERNEL = "boot/vmlinuz"
INITRD = "boot/initramfs.img"
SQUASHFS = "live/filesystem.squashfs"
SUMS = "SHA256SUMS"
PARTITION_OFFSET = 16  # 2 KiB blocks before partition 1: the ISO is mountable from it
ESP_SLOT = 2


class IsoError(OverlaybootError):
    """The ISO cannot be built from the inputs given."""


@dataclass(frozen=True)
class IsoSpec:
    """Everything an ISO is built from."""

    kernel: Path
    initramfs: Path
    squashfs: Path
    menu: grub.Menu = field(default_factory=grub.Menu)
    source_date_epoch: int = 0
    check_label: bool = True  # the initramfs's baked label must equal menu.label
    signed_boot: SignedBoot | None = None  # Debian's shim + GRUB in the EFI image


@dataclass(frozen=True)
class BuiltIso:
    path: Path
    size: int
    label: str
    secure_boot: bool = False  # the EFI image is the signed chain


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sums_text(payload: dict[str, Path]) -> str:
    """SHA256SUMS: ``HASH  PATH`` per payload file, paths relative to the ISO root."""
    return "".join(f"{sha256(src)}  {name}\n" for name, src in sorted(payload.items()))


def baked_label(initramfs: Path) -> str | None:
    """OVERLAYBOOT_LABEL of an initramfs's /etc/overlayboot/image.conf (None if absent)."""
    import shlex

    from mkimage.cpio import read_cpio
    from mkimage.initramfs import IMAGE_CONF

    name = str(IMAGE_CONF).lstrip("/")
    for member in read_cpio(initramfs):
        if member.name == name:
            for line in member.data.decode(errors="replace").splitlines():
                if line.startswith("OVERLAYBOOT_LABEL="):
                    words = shlex.split(line.split("=", 1)[1])
                    return words[0] if words else ""
    return None


def _graft(name: str, src: Path) -> str:
    """A mkisofs graft point ``NAME=SRC`` with ``=`` and ``\\`` escaped."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("=", "\\=")

    return f"{esc(name)}={esc(str(src.resolve()))}"


def xorriso_argv(spec: IsoSpec, tree: Path, efi: Path, out: Path, *, progress: bool) -> list[str]:
    """The xorriso (mkisofs emulation) command line."""
    payload = {KERNEL: spec.kernel, INITRD: spec.initramfs, SQUASHFS: spec.squashfs}
    argv = [
        "xorriso",
        "-volume_date",
        "all_file_dates",
        f"={spec.source_date_epoch}",
        "-as",
        "mkisofs",
        "-o",
        str(out),
        "-V",
        spec.menu.label,
        "--modification-date=" + grub.modification_date(spec.source_date_epoch),
        "-r",
        "-iso-level",
        "3",
        "-partition_offset",
        str(PARTITION_OFFSET),
        "--grub2-mbr",
        str(grub.hybrid_mbr()),
        "--mbr-force-bootable",
        "-append_partition",
        str(ESP_SLOT),
        "0xef",
        str(efi),
        "-b",
        "boot/grub/i386-pc/eltorito.img",
        "-no-emul-boot",
        "-boot-load-size",
        "4",
        "-boot-info-table",
        "--grub2-boot-info",
        "-eltorito-alt-boot",
        "-e",
        f"--interval:appended_partition_{ESP_SLOT}:all::",
        "-no-emul-boot",
        "-graft-points",
        _graft("/", tree),
        *(_graft(name, src) for name, src in sorted(payload.items())),
    ]
    if not progress:
        argv.insert(6, "-quiet")
    return argv


def check_inputs(spec: IsoSpec) -> None:
    """Every input exists and the initramfs looks for this ISO's label."""
    for what, path in (
        ("kernel", spec.kernel),
        ("initramfs", spec.initramfs),
        ("squashfs", spec.squashfs),
    ):
        if not path.is_file():
            raise IsoError(f"{what} {path} does not exist", _HINTS[what])
    with open(spec.squashfs, "rb") as f:
        if f.read(4) != b"hsqs":
            raise IsoError(f"{spec.squashfs} is not a squashfs image", _HINTS["squashfs"])
    if spec.check_label:
        label = baked_label(spec.initramfs)
        if label is not None and label != spec.menu.label:
            raise UsageError(
                f"the initramfs {spec.initramfs} looks for the label {label!r}, "
                f"the ISO would be {spec.menu.label!r}",
                f"use --label {label}, or rebuild the initramfs with --label {spec.menu.label}",
            )


_HINTS = {
    "kernel": "run: overlayboot kernel fetch, or give --kernel-image",
    "initramfs": "run: overlayboot build initramfs",
    "squashfs": "run: overlayboot build squashfs ROOTDIR",
}


def build_iso(spec: IsoSpec, dest: Path, *, progress: bool | None = None) -> BuiltIso:
    """Build the hybrid ISO at ``dest`` (written aside and renamed)."""
    check_inputs(spec)
    grub.check_tools()
    show = progress if progress is not None else sys.stdout.isatty()
    epoch = spec.source_date_epoch
    with tempfile.TemporaryDirectory(prefix="overlayboot-iso-") as tmp:
        tree = Path(tmp) / "tree"
        work = Path(tmp) / "work"
        tree.mkdir()
        work.mkdir()
        efi = grub.stage_grub(tree, work, spec.menu, epoch, spec.signed_boot)
        payload = {KERNEL: spec.kernel, INITRD: spec.initramfs, SQUASHFS: spec.squashfs}
        (tree / SUMS).write_text(sums_text(payload))
        for d in (tree / "boot", tree / "live"):
            d.mkdir(exist_ok=True)
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
        with atomic_output(dest) as out:
            run(xorriso_argv(spec, tree, efi, out, progress=show), env=env, capture=not show)
    return BuiltIso(dest, dest.stat().st_size, spec.menu.label, spec.signed_boot is not None)
