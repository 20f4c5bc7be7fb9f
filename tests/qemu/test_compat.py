"""One boot per other tool's typical command line (marker ``compat``), on the hardware its
users have: live-boot's ``findiso`` on an exFAT partition of an NVMe disk, dracut's
``root=live:CDLABEL=`` with its persistence on an SD card, archiso's ``archisolabel`` on a
USB stick; each with its tool's media check against SHA256SUMS; and a medium that does not
match its SHA256SUMS, refused with the ERROR line.

The media are made here with the real tools (mksquashfs, xorriso, mkfs.exfat and exfat-fuse
to fill the exFAT partition, mkfs.ext4); the kernel and initramfs go to QEMU directly.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from mkimage.mbr import SECTOR, Partition, add_partition, new_table
from mkimage.rootfs import build_busybox_root
from mkimage.squashfs import SquashfsSpec, build_squashfs
from tests.qemu.live import Guest, booted, failed_boot
from tests.qemu.media import ext4_image, plain_iso
from tests.waiting import poll_until

pytestmark = [pytest.mark.qemu, pytest.mark.compat]

STATE = "/run/overlayboot/state"
TYPE_EXFAT = 0x07  # the MBR type of exFAT and NTFS


@dataclass(frozen=True)
class Root:
    squashfs: Path
    base: Path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Root:
    base = tmp_path_factory.mktemp("compat")
    tree = build_busybox_root(base / "root").path
    (tree / "etc/release").write_text("from the lower layer\n")
    sq = base / "root.squashfs"
    build_squashfs(tree, sq, SquashfsSpec(source_date_epoch=1_700_000_000))
    return Root(sq, base)


def iso_with(root: Root, name: str, image: str, label: str, *, bad_sum: bool = False) -> Path:
    """An ISO9660 image holding the root at ``image`` and a SHA256SUMS listing it."""
    tree = root.base / name
    (tree / image).parent.mkdir(parents=True)
    shutil.copy(root.squashfs, tree / image)
    digest = hashlib.sha256((tree / image).read_bytes()).hexdigest()
    if bad_sum:  # what a medium damaged in one place looks like to the check
        digest = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    (tree / "SHA256SUMS").write_text(f"{digest}  {image}\n")
    return plain_iso(tree, root.base / f"{name}.iso", label=label)


def exfat_disk(dest: Path, files: dict[str, Path], size_mib: int = 64) -> Path:
    """A disk with an MBR and one exFAT partition from 1 MiB holding ``files``."""
    fs = dest.with_suffix(".fs")
    with open(fs, "wb") as f:
        f.truncate((size_mib - 1) << 20)
    subprocess.run(["mkfs.exfat", "-L", "STICK", str(fs)], check=True, capture_output=True)
    mnt = dest.with_suffix(".mnt")
    mnt.mkdir()
    loop = subprocess.run(["losetup", "-f", "--show", str(fs)], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    try:
        # exfat-fuse (it wants a block device) in the foreground: a fuseblk unmount waits
        # for it to write everything, and it has ended once it returns
        daemon = subprocess.Popen(["mount.exfat-fuse", "-d", loop, str(mnt)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            poll_until(lambda: mnt.is_mount() or daemon.poll() is not None, 10, "exfat mount")
            assert mnt.is_mount(), f"exfat-fuse did not mount (exit code {daemon.poll()})"
            for rel, src in files.items():
                (mnt / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, mnt / rel)
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
            daemon.wait(timeout=30)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    part = Partition(1, TYPE_EXFAT, 2048, (size_mib - 1) * 2048)
    table = add_partition(new_table(0x0B5E55ED), part)
    with open(dest, "wb") as out:
        out.write(table)
        out.seek(2048 * SECTOR)
        out.write(fs.read_bytes())
    fs.unlink()
    return dest


def state(guest: Guest, key: str) -> str:
    return guest.sh(f"sed -n 's/^{key}=//p' {STATE}")


def test_live_boot_findiso_on_exfat_on_nvme(
    kernel: Kernel, initramfs: BuiltInitramfs, root: Root, tmp_path: Path
) -> None:
    iso = iso_with(root, "debian", "live/filesystem.squashfs", "d-live")
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
        vm.wait_for(r"checking the medium: 1/1 live/filesystem.squashfs", timeout=1)
        vm.wait_for(r"medium check: 1 files, .* match SHA256SUMS", timeout=1)
        assert state(guest, "medium") == "/dev/nvme0n1p1", vm.log()
        assert state(guest, "findiso") == "/isos/live.iso"
        assert state(guest, "check") == "ok" and state(guest, "toram") == "yes"
        assert state(guest, "persistent") == "yes" and state(guest, "upper") == "/dev/vda"
        assert guest.sh("grep -c -E '^(exfat|nvme) ' /proc/modules") == "2"
        assert guest.sh("cat /etc/release") == "from the lower layer"
        upper = state(guest, "upperdir")
        assert guest.sh(f"echo kept > /note && ls {upper}") == "note"
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
            "rd.live.overlay.reset", "rhgb", "quiet")  # fmt: skip
    with booted(kernel, initramfs, drives, *line) as guest:
        vm = guest.vm
        vm.wait_for(
            r"^WARNING: overlayboot: rd\.live\.overlay\.reset \(dracut\) is not supported: ",
            timeout=1,
        )
        vm.wait_for(r"checking the medium: 1/1 LiveOS/squashfs.img", timeout=1)
        assert state(guest, "medium") == "/dev/sr0", vm.log()
        assert state(guest, "image") == "/LiveOS/squashfs.img"
        assert state(guest, "check") == "ok" and state(guest, "upper") == "/dev/mmcblk0"
        upper = state(guest, "upperdir")
        assert upper.startswith("/run/overlayboot/rw/LiveOS/overlay/images/"), upper
        assert guest.sh(f"echo kept > /note && ls {upper}") == "note"


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
