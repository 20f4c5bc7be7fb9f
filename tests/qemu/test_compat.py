"""One boot per other tool's typical command line (marker ``compat``), on the hardware its
users have: live-boot's ``findiso`` on an exFAT partition of an NVMe disk, dracut's
``root=live:CDLABEL=`` with its persistence on an SD card, archiso's ``archisolabel`` on a
USB stick; each with its tool's media check against SHA256SUMS; and a medium that does not
match its SHA256SUMS, refused with the ERROR line.

The media are made here with the real tools (mksquashfs, xorriso, mkfs.exfat and exfat-fuse
to fill the exFAT partition, mkfs.ext4); the kernel and initramfs go to QEMU directly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from tests.qemu.compatmedia import Root, build_root, exfat_disk, iso_with, layer
from tests.qemu.live import Guest, booted, failed_boot
from tests.qemu.media import ext4_image

pytestmark = [pytest.mark.qemu, pytest.mark.compat]

STATE = "/run/overlayboot/state"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Root:
    return build_root(tmp_path_factory.mktemp("compat"))


def state(guest: Guest, key: str) -> str:
    return guest.sh(f"sed -n 's/^{key}=//p' {STATE}")


def test_live_boot_findiso_on_exfat_on_nvme(
    kernel: Kernel, initramfs: BuiltInitramfs, root: Root, tmp_path: Path
) -> None:
    # a layer over the image, named in /live/layers (phase layers)
    top = layer(tmp_path / "layer", {"etc/release": "from the layer\n", "etc/extra": "extra\n"})
    names = tmp_path / "layers"
    names.write_text("# stacked over filesystem.squashfs\nextra.squashfs\n")
    extra = {"live/extra.squashfs": top, "live/layers": names}
    iso = iso_with(root, "debian", "live/filesystem.squashfs", "d-live", extra=extra)
    stick = exfat_disk(tmp_path / "nvme.img", {"isos/live.iso": iso})
    rw = ext4_image(tmp_path / "persistence.img", label="persistence")
    drives = [
        "-drive", f"if=none,id=nv,file={stick},format=raw",
        "-device", "nvme,serial=compat1,drive=nv",
        "-drive", f"file={rw},format=raw,if=virtio",
    ]  # fmt: skip
    line = ("boot=live", "components", "findiso=/isos/live.iso", "toram", "verify-checksums",
            "persistence", "quiet")  # fmt: skip
    with booted(kernel, initramfs, drives, *line) as guest:
        vm = guest.vm
        vm.wait_for(r"checking the medium: 1/3 live/filesystem.squashfs", timeout=1)
        vm.wait_for(r"medium check: 3 files, .* match SHA256SUMS", timeout=1)
        assert state(guest, "medium") == "/dev/nvme0n1p1", vm.log()
        assert state(guest, "findiso") == "/isos/live.iso"
        assert state(guest, "check") == "ok" and state(guest, "toram") == "yes"
        assert state(guest, "persistent") == "yes" and state(guest, "upper") == "/dev/vda"
        assert guest.sh("grep -c -E '^(exfat|nvme) ' /proc/modules") == "2"
        assert guest.sh("cat /etc/release /etc/extra") == "from the layer extra"
        assert guest.sh("cat /etc/hostname") != ""  # the image below the layer
        assert state(guest, "layers") == "extra.squashfs"
        upper = state(guest, "upperdir")
        assert guest.sh(f"echo kept > /note && cat {upper}/note") == "kept"
        assert "WARNING" not in vm.log()


def test_dracut_line_with_persistence_on_an_sd_card(
    kernel: Kernel, initramfs: BuiltInitramfs, root: Root, tmp_path: Path
) -> None:
    iso = iso_with(root, "fedora", "LiveOS/squashfs.img", "Fedora-WS-Live-40")
    sd = ext4_image(tmp_path / "sd.img", label="persist")  # 64 MiB: QEMU's SD wants 2^n
    drives = [
        "-drive", f"file={iso},media=cdrom,readonly=on,if=ide",
        "-device", "sdhci-pci", "-drive", f"if=none,id=sd,file={sd},format=raw",
        "-device", "sd-card,drive=sd",
    ]  # fmt: skip
    line = ("root=live:CDLABEL=Fedora-WS-Live-40", "rd.live.image", "rd.live.check",
            "rd.live.overlay=LABEL=persist:/LiveOS/overlay", "rd.live.overlay.overlayfs",
            "rd.live.overlay.reset", "rd.writable.fsimg", "rhgb", "quiet")  # fmt: skip
    with booted(kernel, initramfs, drives, *line) as guest:
        vm = guest.vm
        vm.wait_for(
            r"^WARNING: overlayboot: rd\.writable\.fsimg \(dracut\) is not supported: ",
            timeout=1,
        )
        vm.wait_for(r"checking the medium: 1/1 LiveOS/squashfs.img", timeout=1)
        assert state(guest, "medium") == "/dev/sr0", vm.log()
        assert state(guest, "image") == "/LiveOS/squashfs.img"
        assert state(guest, "check") == "ok" and state(guest, "upper") == "/dev/mmcblk0"
        upper = state(guest, "upperdir")
        assert upper.startswith("/run/overlayboot/rw/LiveOS/overlay/images/"), upper
        assert guest.sh(f"echo kept > /note && cat {upper}/note") == "kept"
        assert state(guest, "reset") == "yes"  # rd.live.overlay.reset (nothing saved yet)
        # the boot's log in /var/log, with the WARNING line; overlayboot on the PATH
        log = "/var/log/overlayboot/boot.log"
        assert guest.sh(f"grep -c '^WARNING: overlayboot: rd.writable.fsimg' {log}") == "1"
        assert guest.sh(f"grep -c 'overlayboot: switching to the live root' {log}") == "1"
        assert guest.sh("overlayboot status | grep -c 'changes:'") == "1"
        # both come with the image (mkimage/liveroot.py): the boot wrote neither into the upper
        written = f"ls -d {upper}/usr/sbin/overlayboot {upper}/var/log/overlayboot 2>/dev/null"
        assert guest.sh(f"{written} | wc -l") == "0"


@pytest.mark.slow
def test_archiso_line_on_a_usb_stick(kernel: Kernel, initramfs: BuiltInitramfs, root: Root) -> None:
    iso = iso_with(root, "arch", "arch/x86_64/airootfs.sfs", "ARCH_202401")
    drives = [
        "-device", "qemu-xhci", "-drive", f"if=none,id=stick,file={iso},format=raw,readonly=on",
        "-device", "usb-storage,drive=stick",
    ]  # fmt: skip
    line = ("archisobasedir=arch", "archisolabel=ARCH_202401", "copytoram", "checksum",
            "cow_spacesize=256M")  # fmt: skip
    with booted(kernel, initramfs, drives, *line) as guest:
        vm = guest.vm
        vm.wait_for(r"checking the medium: 1/1 arch/x86_64/airootfs.sfs", timeout=1)
        assert state(guest, "medium") == "/dev/sda", vm.log()
        assert state(guest, "image") == "/arch/x86_64/airootfs.sfs"
        assert state(guest, "check") == "ok" and state(guest, "toram") == "yes"
        size = guest.sh("df -k /run/overlayboot/rw | tail -n 1 | awk '{print $2}'")
        assert size == str(256 * 1024)
        assert guest.sh("grep -c -E '^(uas|usb_storage|xhci_pci) ' /proc/modules") == "3"


def test_a_medium_that_does_not_match_is_refused(
    kernel: Kernel, initramfs: BuiltInitramfs, root: Root
) -> None:
    iso = iso_with(root, "damaged", "live/filesystem.squashfs", "OVERLAYBOOT", bad_sum=True)
    drives = ["-drive", f"file={iso},media=cdrom,readonly=on,if=ide"]
    with failed_boot(kernel, initramfs, drives, "overlayboot.check") as guest:
        assert guest.first.text.startswith(
            "ERROR: overlayboot: the medium does not match its SHA256SUMS: "
            "live/filesystem.squashfs has sha256 "
        ), guest.vm.log()
        guest.vm.wait_for(r"checking the medium: 1/1 live/filesystem.squashfs", timeout=1)
