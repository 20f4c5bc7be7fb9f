"""The hybrid ISO boots: BIOS (SeaBIOS) and UEFI (OVMF, q35) from CD, BIOS from the USB image.

Each boot goes through GRUB's menu (timeout 0) into the kernel, the initramfs and the boot
flow, to a shell in the live root (the built-in busybox root), where the test writes a
file, reads it back and checks that / is the overlay. VMs run one at a time.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkimage.grub import Menu
from mkimage.initramfs import DEFAULT_SOURCE_DATE_EPOCH, BuiltInitramfs
from mkimage.iso import IsoSpec, build_iso
from mkimage.kernel import Kernel
from mkimage.rootfs import build_busybox_root
from mkimage.squashfs import SquashfsSpec, build_squashfs
from mkimage.usb import build_usb
from tests.qemu.harness import OVMF_CODE, OVMF_VARS, MediaVmConfig, Vm

pytestmark = pytest.mark.qemu

GRUB_MENU = r"Booting .overlayboot."
ROOT_UP = r"OVERLAYBOOT-ROOT: up"


@dataclass(frozen=True)
class Media:
    iso: Path
    usb: Path


@pytest.fixture(scope="module")
def media(
    kernel: Kernel, initramfs: BuiltInitramfs, tmp_path_factory: pytest.TempPathFactory
) -> Media:
    base = tmp_path_factory.mktemp("media")
    epoch = DEFAULT_SOURCE_DATE_EPOCH
    root = build_busybox_root(base / "rootfs")
    squashfs = build_squashfs(
        root.path, base / "fs.squashfs", SquashfsSpec(source_date_epoch=epoch)
    )
    menu = Menu(timeout=0, params=("overlayboot.onerror=poweroff",))
    iso = build_iso(IsoSpec(kernel.image, initramfs.path, squashfs.path, menu, epoch),
                    base / "test.iso", progress=False)  # fmt: skip
    usb = build_usb(iso.path, base / "test-usb.img", size=32 << 20, epoch=epoch)
    return Media(iso.path, usb.path)


def boot(config: MediaVmConfig) -> dict[str, float]:
    """Boot to GRUB, the kernel, /init and a shell in the live root; use it; power off."""
    with Vm(config) as vm:
        seen = {"grub": vm.wait_for(GRUB_MENU, timeout=60).at}
        seen["kernel"] = vm.wait_for(r"Linux version \d", timeout=30).at
        seen["init"] = vm.wait_for(r"overlayboot: kernel .*, initramfs up", timeout=60).at
        seen["root"] = vm.wait_for(ROOT_UP, timeout=120).at
        root = vm.wait_for(r"OVERLAYBOOT-ROOT: / is ", timeout=10)
        assert " / fuse.overlayboot " in root.text, vm.tail()
        vm.send("echo W1:$(echo live > /tmp-note; cat /tmp-note)\n")
        vm.wait_for(r"^W1:live", timeout=30)
        vm.send("poweroff\n")
        vm.wait_exit(timeout=60)
    assert "console=ttyS0,115200" in vm.log()
    return seen


def test_bios_cdrom(media: Media) -> None:
    seen = boot(MediaVmConfig(cdrom=media.iso))
    print(f"BIOS CD: {seen}")
    assert seen["root"] > seen["init"] > seen["kernel"] > seen["grub"]


def test_uefi_cdrom(media: Media, tmp_path: Path) -> None:
    if not OVMF_CODE.is_file():
        pytest.skip("OVMF is not installed (Debian package ovmf)")
    shutil.copyfile(OVMF_VARS, tmp_path / "vars.fd")
    seen = boot(MediaVmConfig(cdrom=media.iso, uefi=True, vars=tmp_path / "vars.fd"))
    print(f"UEFI CD: {seen}")


def test_bios_usb_disk(media: Media) -> None:
    seen = boot(MediaVmConfig(disk=media.usb))
    print(f"BIOS USB: {seen}")
