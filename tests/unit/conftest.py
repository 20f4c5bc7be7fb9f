"""Shared images for the image-builder tests: a busybox root, its squashfs, a small ISO.

Built once per session with the real tools (mksquashfs, grub-mkimage, xorriso); the ISO's
kernel is a stand-in file and its initramfs a tiny archive holding just the image.conf
(the ISO builder checks the label baked into it), so no kernel download is needed.
``xattr_tmp_path`` is a temporary directory that takes ``user.*`` xattrs (partial files).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
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


def user_xattrs_work(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.overlayboot.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


@pytest.fixture
def xattr_tmp_path(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """``tmp_path`` if its filesystem takes ``user.*`` xattrs, else a directory under the
    checkout's ``build/`` (a ``/tmp`` on tmpfs takes them only from Linux 6.6 on)."""
    if user_xattrs_work(tmp_path):
        yield tmp_path
        return
    build = request.config.rootpath / "build"
    build.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="xattr-test-", dir=build))
    try:
        if not user_xattrs_work(path):
            pytest.skip(f"user.* xattrs work neither in {tmp_path} nor in {build}")
        yield path
    finally:
        shutil.rmtree(path)
