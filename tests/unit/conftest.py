"""Shared images for the image-builder tests: a busybox root, its squashfs, a small ISO.

Built once per session with the real tools (mksquashfs, grub-mkimage, xorriso); the ISO's
kernel is a stand-in file and its initramfs a tiny archive holding just the image.conf
(the ISO builder checks the label baked into it), so no kernel download is needed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkimage.cpio import Compression, Entry, write_archive
from mkimage.grub import Menu
from mkimage.iso import BuiltIso, IsoSpec, build_iso
from mkimage.rootfs import Root, build_busybox_root
from mkimage.squashfs import BuiltSquashfs, SquashfsSpec, build_squashfs

EPOCH = 1_690_000_000
TOOLS = ("busybox", "mksquashfs", "xorriso", "grub-mkimage", "mformat", "mkfs.ext4")


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        pytest.skip(f"missing tools: {' '.join(missing)}")


def fake_initramfs(dest: Path, label: str) -> Path:
    conf = f"OVERLAYBOOT_LABEL='{label}'\n".encode()
    write_archive(
        [Entry.file("etc/overlayboot/image.conf", conf)], dest, compression=Compression.GZIP
    )
    return dest


@dataclass(frozen=True)
class IsoInputs:
    kernel: Path
    initramfs: Path
    squashfs: Path

    def spec(self, menu: Menu | None = None, epoch: int = EPOCH) -> IsoSpec:
        menu = menu if menu is not None else Menu(timeout=1)
        return IsoSpec(self.kernel, self.initramfs, self.squashfs, menu, epoch)


@pytest.fixture(scope="session")
def busybox_root(tmp_path_factory: pytest.TempPathFactory) -> Root:
    need_tools("busybox")
    return build_busybox_root(tmp_path_factory.mktemp("rootfs") / "root")


@pytest.fixture(scope="session")
def squashfs_image(busybox_root: Root, tmp_path_factory: pytest.TempPathFactory) -> BuiltSquashfs:
    need_tools("mksquashfs")
    dest = tmp_path_factory.mktemp("squashfs") / "filesystem.squashfs"
    return build_squashfs(busybox_root.path, dest, SquashfsSpec(source_date_epoch=EPOCH))


@pytest.fixture(scope="session")
def iso_inputs(
    squashfs_image: BuiltSquashfs, tmp_path_factory: pytest.TempPathFactory
) -> IsoInputs:
    base = tmp_path_factory.mktemp("isoin")
    kernel = base / "vmlinuz"
    kernel.write_bytes(b"not really a kernel\n" * 1000)
    return IsoInputs(
        kernel, fake_initramfs(base / "initramfs.img", "OVERLAYBOOT"), squashfs_image.path
    )


@pytest.fixture(scope="session")
def iso_image(iso_inputs: IsoInputs, tmp_path_factory: pytest.TempPathFactory) -> BuiltIso:
    need_tools(*TOOLS)
    dest = tmp_path_factory.mktemp("iso") / "overlayboot.iso"
    return build_iso(iso_inputs.spec(), dest, progress=False)
