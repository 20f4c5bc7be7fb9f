"""Secure Boot: the ISO and the USB image boot under OVMF with Secure Boot enforced (the SMM
build, Microsoft's keys enrolled), and the guest sees it on; what is not signed is refused.

The images carry Debian's signed chain (mkimage.secureboot): shim (signed by Microsoft),
GRUB (signed by Debian), Debian's signed kernel. Inside the live root the test reads the
``SecureBoot`` EFI variable (efivarfs) and the kernel's lockdown state (securityfs), and
the kernel's own ``secureboot: Secure boot enabled`` line is on the console. Refused: the
same chain with the kernel's signature taken off (GRUB, through shim, rejects the kernel)
and the plain ``grub-mkimage`` EFI image (the firmware rejects it). The signed image also
boots with Secure Boot off (plain OVMF), as most PCs run.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from mkimage.grub import Menu
from mkimage.initramfs import DEFAULT_SOURCE_DATE_EPOCH, BuiltInitramfs
from mkimage.iso import IsoSpec, build_iso
from mkimage.kernel import DEFAULT_CACHE, Kernel
from mkimage.rootfs import ROOT_MARKER, build_busybox_root
from mkimage.secureboot import SignedBoot, cert_table, fetch_signed_boot, pe_signed
from mkimage.squashfs import SquashfsSpec, build_squashfs
from mkimage.usb import build_usb
from mkimage.vm import OVMF_CODE_SECBOOT, OVMF_VARS_MS
from tests.qemu.harness import OVMF_VARS, MediaVmConfig, Vm

pytestmark = [pytest.mark.qemu, pytest.mark.secureboot, pytest.mark.slow]

EFIVAR_SECUREBOOT = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
KERNEL_SB = r"secureboot: Secure boot enabled"
KERNEL_LOCKDOWN = r"Kernel is locked down from EFI Secure Boot"


@dataclass(frozen=True)
class Media:
    iso: Path  # the signed chain, the signed kernel
    usb: Path  # the same ISO plus its persistence partition
    unsigned_kernel: Path  # the signed chain, the kernel's signature taken off
    plain: Path  # GRUB's own unsigned grub-mkimage EFI image


def strip_signature(signed: Path, dest: Path) -> Path:
    """``signed`` without its Authenticode signature (what ``sbattach --remove`` does)."""
    table = cert_table(signed)
    assert table is not None and table.size > 0, f"{signed} is not signed"
    data = bytearray(signed.read_bytes()[: table.offset])
    data[table.entry : table.entry + 8] = bytes(8)
    dest.write_bytes(bytes(data))
    return dest


@pytest.fixture(scope="module")
def chain() -> SignedBoot:
    if not OVMF_CODE_SECBOOT.is_file():
        pytest.skip("OVMF with Secure Boot is not installed (Debian package ovmf)")
    return fetch_signed_boot(DEFAULT_CACHE)


@pytest.fixture(scope="module")
def media(
    kernel: Kernel,
    initramfs: BuiltInitramfs,
    chain: SignedBoot,
    tmp_path_factory: pytest.TempPathFactory,
) -> Media:
    assert pe_signed(kernel.image), f"the default kernel {kernel.image} is not the signed one"
    base = tmp_path_factory.mktemp("sbmedia")
    epoch = DEFAULT_SOURCE_DATE_EPOCH
    root = build_busybox_root(base / "rootfs")
    squashfs = build_squashfs(
        root.path, base / "fs.squashfs", SquashfsSpec(source_date_epoch=epoch)
    )
    menu = Menu(timeout=0, params=("overlayboot.onerror=poweroff",))

    def iso(name: str, image: Path, signed: SignedBoot | None) -> Path:
        spec = IsoSpec(image, initramfs.path, squashfs.path, menu, epoch, signed_boot=signed)
        return build_iso(spec, base / name, progress=False).path

    signed = iso("sb.iso", kernel.image, chain)
    unsigned = strip_signature(kernel.image, base / "vmlinuz-unsigned")
    assert not pe_signed(unsigned)
    return Media(
        signed,
        build_usb(signed, base / "sb-usb.img", size=16 << 20, epoch=epoch).path,
        iso("unsigned-kernel.iso", unsigned, chain),
        iso("plain.iso", kernel.image, None),
    )


@pytest.fixture
def sb_vm(tmp_path: Path) -> Iterator[MediaVmConfig]:
    """A config with Secure Boot on and its own copy of the enrolled variable store."""
    shutil.copyfile(OVMF_VARS_MS, tmp_path / "vars.fd")
    yield MediaVmConfig(secure_boot=True, vars=tmp_path / "vars.fd")


def guest_sees_secure_boot(vm: Vm) -> tuple[str, str]:
    """Boot to the live root; read SecureBoot and lockdown inside; power off."""
    vm.wait_for(KERNEL_SB, timeout=120)
    vm.wait_for(KERNEL_LOCKDOWN, timeout=10)
    vm.wait_for(ROOT_MARKER, timeout=180)
    vm.send(
        "mount -t efivarfs efivarfs /sys/firmware/efi/efivars; "
        "mount -t securityfs securityfs /sys/kernel/security\n"
    )
    vm.send(f"echo SB:$(od -An -tu1 {EFIVAR_SECUREBOOT} | tr -s ' ')\n")
    sb = vm.wait_for(r"^SB:(?!\$)", timeout=30).text
    vm.send("echo LD:$(cat /sys/kernel/security/lockdown)\n")
    lockdown = vm.wait_for(r"^LD:(?!\$)", timeout=30).text
    vm.send("poweroff\n")
    vm.wait_exit(timeout=60)
    return sb, lockdown


def assert_enforced(vm: Vm, sb: str, lockdown: str) -> None:
    # the variable: 4 bytes of attributes, then 1 = Secure Boot on
    assert sb.split()[-1] == "1", (sb, vm.tail())
    assert "[integrity]" in lockdown or "[confidentiality]" in lockdown, lockdown
    assert "EFI stub: UEFI Secure Boot is enabled." in vm.log()


def test_iso_boots_with_secure_boot_enforced(media: Media, sb_vm: MediaVmConfig) -> None:
    with Vm(replace(sb_vm, cdrom=media.iso)) as vm:
        sb, lockdown = guest_sees_secure_boot(vm)
    assert_enforced(vm, sb, lockdown)
    print(f"SB CD: {sb} / {lockdown}")


def test_usb_image_boots_with_secure_boot_enforced(media: Media, sb_vm: MediaVmConfig) -> None:
    with Vm(replace(sb_vm, disk=media.usb)) as vm:
        sb, lockdown = guest_sees_secure_boot(vm)
    assert_enforced(vm, sb, lockdown)


def test_unsigned_kernel_is_refused(media: Media, sb_vm: MediaVmConfig) -> None:
    with Vm(replace(sb_vm, cdrom=media.unsigned_kernel)) as vm:
        vm.wait_for(r"Booting .overlayboot.", timeout=120)
        refused = vm.wait_for(r"error: .*(shim|signature|verif)", timeout=60)
    assert "Linux version" not in vm.log(), vm.tail()
    print(f"GRUB: {refused.text}")


def test_unsigned_boot_loader_is_refused(media: Media, sb_vm: MediaVmConfig) -> None:
    with Vm(replace(sb_vm, cdrom=media.plain)) as vm:
        refused = vm.wait_for(r"failed to load .*Access Denied", timeout=120)
    assert "GRUB" not in vm.log(), vm.tail()
    print(f"firmware: {refused.text}")


def test_signed_image_boots_without_secure_boot(media: Media, tmp_path: Path) -> None:
    shutil.copyfile(OVMF_VARS, tmp_path / "vars.fd")
    with Vm(MediaVmConfig(disk=media.usb, uefi=True, vars=tmp_path / "vars.fd")) as vm:
        vm.wait_for(ROOT_MARKER, timeout=240)
        vm.send("poweroff\n")
        vm.wait_exit(timeout=60)
    assert "secureboot: Secure boot enabled" not in vm.log()
