"""The hybrid ISO boots: BIOS (SeaBIOS) and UEFI (OVMF, q35) from CD, BIOS from the USB image.

Each boot goes through GRUB's menu (timeout 0) into the kernel, the initramfs and the boot
flow, to a shell in the live root (the built-in busybox root), where the test writes a
file, reads it back and checks that / is the overlay. VMs run one at a time.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkimage.grub import Menu
from mkimage.initramfs import DEFAULT_SOURCE_DATE_EPOCH, BuiltInitramfs
from mkimage.iso import IsoSpec, build_iso
from mkimage.kernel import Kernel
from mkimage.rootfs import ROOT_MARKER, build_busybox_root
from mkimage.squashfs import SquashfsSpec, build_squashfs
from mkimage.usb import build_usb
from tests.qemu.harness import OVMF_CODE, OVMF_VARS, MediaVmConfig, Vm

pytestmark = pytest.mark.qemu

GRUB_MENU = r"Booting .overlayboot."


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
        seen["root"] = vm.wait_for(ROOT_MARKER, timeout=120).at
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


def test_usb_image_persistence_over_usb_storage(
    kernel: Kernel, initramfs: BuiltInitramfs, tmp_path: Path
) -> None:
    """The USB image on a usb-storage stick: its own persistence partition keeps a write."""
    epoch = DEFAULT_SOURCE_DATE_EPOCH
    root = build_busybox_root(tmp_path / "rootfs")
    squashfs = build_squashfs(
        root.path, tmp_path / "fs.squashfs", SquashfsSpec(source_date_epoch=epoch)
    )
    menu = Menu(timeout=0, params=("overlayboot.onerror=poweroff",))

    def stick(name: str, *params: str) -> Path:
        m = Menu(timeout=0, params=(*menu.params, *params))
        iso = build_iso(IsoSpec(kernel.image, initramfs.path, squashfs.path, m, epoch),
                        tmp_path / f"{name}.iso", progress=False)  # fmt: skip
        return build_usb(iso.path, tmp_path / f"{name}.img", size=32 << 20, epoch=epoch).path

    def usb(img: Path) -> MediaVmConfig:
        return MediaVmConfig(
            extra=(
                "-device",
                "qemu-xhci,id=xhci",
                "-drive",
                f"if=none,id=stick,file={img},format=raw",
                "-device",
                "usb-storage,bus=xhci.0,drive=stick,bootindex=0",
            )
        )

    img = stick("persist", "overlayboot.upper=LABEL=overlayboot-rw")
    for n, command, expect in (
        (1, "echo kept > /usb-note; cat /usb-note", "kept"),
        (2, "cat /usb-note", "kept"),
    ):
        with Vm(usb(img)) as vm:
            vm.wait_for(ROOT_MARKER, timeout=180)
            # the ISO partition, not the whole stick (which would keep sda3 from mounting)
            assert re.search(r"overlayboot: medium: /dev/sda1 ", vm.log()), vm.tail(40)
            vm.send(f"echo S{n}:$({command})\n")
            vm.wait_for(rf"^S{n}:{expect}", timeout=30)
            vm.send("poweroff\n")
            vm.wait_exit(timeout=60)
    # the same stick, its boot part rebuilt with overlayboot.upper=tmpfs (the partition table
    # and the persistence partition kept): the change is not there
    tmpfs_iso = tmp_path / "tmpfs.iso"
    stick("tmpfs", "overlayboot.upper=tmpfs")
    iso_bytes = tmpfs_iso.read_bytes()
    blob = bytearray(img.read_bytes())
    assert len(iso_bytes) <= (tmp_path / "persist.iso").stat().st_size
    blob[512 : len(iso_bytes)] = iso_bytes[512:]
    img.write_bytes(bytes(blob))
    with Vm(usb(img)) as vm:
        vm.wait_for(ROOT_MARKER, timeout=180)
        vm.send("echo S3:$(cat /usb-note 2>/dev/null || echo absent)\n")
        vm.wait_for(r"^S3:absent", timeout=30)
        vm.send("poweroff\n")
        vm.wait_exit(timeout=60)
