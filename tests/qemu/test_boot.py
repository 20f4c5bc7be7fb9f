"""The boot flow end to end under QEMU: medium, lower, upper, overlay daemon, switch_root.

The medium here is a plain ISO9660 image (xorriso) labelled like the image, holding
/live/filesystem.squashfs of a tiny busybox root, attached as a CD; the kernel and
initramfs are given to QEMU directly, so these tests exercise the hooks, not GRUB.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from tests.qemu.live import Guest, booted, failed_boot
from tests.qemu.media import busybox_tree, ext4_image, plain_iso

pytestmark = pytest.mark.qemu

ROOT_INIT = """#!/bin/sh
export PATH=/bin:/sbin
echo "OVERLAYBOOT-ROOT: up $(uname -r)"
echo "ROOT-MOUNT: $(grep ' / ' /proc/mounts | grep -v rootfs)"
setsid cttyhack sh
sync
echo "OVERLAYBOOT-ROOT: powering off"
poweroff -f
"""
APPLETS = (
    "sh cat echo ls mount grep sync poweroff setsid cttyhack dd df rm mkdir stat sleep head "
    "seq md5sum wc tail cmp printf cut du"
)
DATA_FILES = 30


def _tiny_root(root: Path) -> None:
    busybox_tree(root, APPLETS.split(), ROOT_INIT, "from the lower layer\n")
    (root / "data").mkdir()
    for i in range(DATA_FILES):
        (root / "data" / f"f{i}").write_text(f"old-{i}\n" * 8000)
    (root / "data" / "big").write_bytes(bytes(range(256)) * 8192)  # 2 MiB: chunked copy-up


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("medium")
    _tiny_root(base / "root")
    (base / "iso" / "live").mkdir(parents=True)
    subprocess.run(
        ["mksquashfs", str(base / "root"), str(base / "iso/live/filesystem.squashfs"),
         "-noappend", "-quiet", "-comp", "zstd"],
        check=True,
    )  # fmt: skip
    return plain_iso(base / "iso", base / "live.iso")


def cd(iso: Path) -> list[str]:
    return ["-drive", f"file={iso},media=cdrom,readonly=on,if=ide"]


def disk(img: Path) -> list[str]:
    return ["-drive", f"file={img},format=raw,if=virtio"]


@pytest.mark.parametrize("cpus", [1, 2])
def test_cd_boot_to_a_writable_fuse_root(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, cpus: int
) -> None:
    with booted(kernel, initramfs, cd(medium), cpus=cpus) as guest:
        assert " / fuse.overlayboot " in guest.root_mount(), guest.vm.log()
        assert guest.sh("cat /etc/release") == "from the lower layer"
        assert guest.sh("echo written > /etc/new && cat /etc/new") == "written"
        assert guest.sh("ls /run/overlayboot/rw/upper/etc") == "new"
        assert guest.sh("grep -c persistent=no /run/overlayboot/state") == "1"
        status = guest.sh("/run/overlayboot/runtime/overlayboot status | grep changes:")
        assert "lost at power-off" in status
        # with two CPUs the daemon was started early (phase standby), with one directly
        started = "standby" if cpus > 1 else "direct"
        assert guest.sh("grep daemon_start= /run/overlayboot/state") == f"daemon_start={started}"
        bdi = "/sys/class/bdi/$(awk '$5 == \"/\" { d = $3 } END { print d }' /proc/self/mountinfo)"
        assert guest.sh(f"cat {bdi}/read_ahead_kb") == "1024"
        _lower_reads_reach_no_read_handler(guest)
    print(f"BIOS CD boot with overlayboot, {cpus} vCPU: shell after {guest.first.at:.1f} s")


def _lower_reads_reach_no_read_handler(guest: Guest) -> None:
    """The guest kernel (6.12) and the runtime's libfuse 3.17 give FUSE passthrough: the
    daemon says so, and reading a 2 MiB lower file makes the daemon read nothing."""
    log = "/run/overlayboot/daemon.log"
    assert guest.sh(f"grep -o 'FUSE passthrough o[nf]*' {log}") == "FUSE passthrough on"
    io = "/proc/$(cat /run/overlayboot/run/overlayboot/mounts/*.pid)/io"
    rchar = f"grep rchar {io} | cut -d' ' -f2"
    delta = guest.sh(f"a=$({rchar}); cat /data/big > /dev/null; b=$({rchar}); echo $((b - a))")
    assert int(delta) < 256 << 10, delta


def test_kernel_overlayfs_fallback(kernel: Kernel, initramfs: BuiltInitramfs, medium: Path) -> None:
    with booted(kernel, initramfs, cd(medium), "overlayboot.overlay=kernel") as guest:
        assert " / overlay " in guest.root_mount(), guest.vm.log()
    print(f"BIOS CD boot with kernel overlayfs: shell after {guest.first.at:.1f} s")


def test_persistence_survives_a_reboot(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, tmp_path: Path
) -> None:
    rw = ext4_image(tmp_path / "rw.img")
    upper = "overlayboot.upper=LABEL=overlayboot-rw"
    # two CPUs: the daemon comes from phase standby, on the persistence partition too
    with booted(kernel, initramfs, cd(medium) + disk(rw), upper, cpus=2) as guest:
        assert guest.sh("echo kept > /root-note && cat /root-note") == "kept"
        assert guest.sh("grep -c persistent=yes /run/overlayboot/state") == "1"
        upperdir = guest.sh("sed -n 's/^upperdir=//p' /run/overlayboot/state")
    # this image's changes, under images/ID on the partition (mounted at /run/overlayboot/rw)
    on_partition = upperdir.removeprefix("/run/overlayboot/rw")
    assert re.fullmatch(r"/overlayboot/OVERLAYBOOT/images/[0-9a-f]{32}/upper", on_partition)
    listing = subprocess.run(
        ["debugfs", "-R", f"ls -p {on_partition}", str(rw)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "/root-note/" in listing
    with booted(kernel, initramfs, cd(medium) + disk(rw), upper) as guest:
        assert guest.sh("cat /root-note") == "kept"
    with booted(kernel, initramfs, cd(medium) + disk(rw), "overlayboot.upper=tmpfs") as guest:
        assert guest.sh("cat /root-note 2>&1 || echo absent").endswith("absent")


def test_partial_copy_up_is_sealed_for_kernel_overlayfs(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, tmp_path: Path
) -> None:
    """A write into a large lower file is a partial copy-up on the persistence partition;
    booting the same partition with overlayboot.overlay=kernel seals it first."""
    rw = ext4_image(tmp_path / "rw.img")
    drives = cd(medium) + disk(rw)
    upper = "overlayboot.upper=LABEL=overlayboot-rw"
    write = "printf NEW | dd of=/data/big bs=1 seek=1048576 conv=notrunc 2>/dev/null"
    with booted(kernel, initramfs, drives, upper) as guest:
        before = guest.sh("md5sum /data/big | cut -c1-32")
        guest.sh(write)
        after = guest.sh("md5sum /data/big | cut -c1-32")
        assert after != before
        used = guest.sh("du -k $(sed -n 's/^upperdir=//p' /run/overlayboot/state)/data/big")
        assert int(used.split()[0]) < 1024, used  # one chunk, not the whole 2 MiB
    with booted(kernel, initramfs, drives, upper, "overlayboot.overlay=kernel") as guest:
        assert " / overlay " in guest.root_mount()
        assert guest.sh("md5sum /data/big | cut -c1-32") == after
        assert guest.sh("head -c 1048579 /data/big | tail -c 3") == "NEW"
    log = guest.vm.log()
    assert re.search(r"1 partial copy-ups in \S+ made whole, 0 left partial", log), guest.vm.tail()


def test_wrong_label_says_what_it_saw(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path
) -> None:
    params = (
        "overlayboot.medium=LABEL=NOPE",
        "overlayboot.timeout=3",
        "overlayboot.onerror=poweroff",
    )
    with failed_boot(kernel, initramfs, cd(medium), *params) as guest:
        assert "boot medium LABEL=NOPE not found after 3 s" in guest.first.text
        seen = guest.vm.wait_for(r"iso9660 +LABEL=OVERLAYBOOT", timeout=30)
        assert "/dev/sr0" in seen.text
    assert "Kernel panic" not in guest.vm.log()


def test_no_medium(kernel: Kernel, initramfs: BuiltInitramfs) -> None:
    params = ("overlayboot.timeout=2", "overlayboot.onerror=poweroff")
    with failed_boot(kernel, initramfs, [], *params) as guest:
        assert "boot medium LABEL=OVERLAYBOOT not found" in guest.first.text
    assert "Kernel panic" not in guest.vm.log()


def test_missing_persistence_label(kernel: Kernel, initramfs: BuiltInitramfs, medium: Path) -> None:
    params = ("overlayboot.upper=LABEL=missing-rw", "overlayboot.timeout=2",
              "overlayboot.onerror=poweroff")  # fmt: skip
    with failed_boot(kernel, initramfs, cd(medium), *params) as guest:
        assert "persistence partition LABEL=missing-rw not found" in guest.first.text


def test_corrupt_squashfs(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "iso"
    (tree / "live").mkdir(parents=True)
    blob = bytearray((medium.parent / "iso/live/filesystem.squashfs").read_bytes())
    blob[0:96] = b"\0" * 96  # no superblock left
    (tree / "live/filesystem.squashfs").write_bytes(bytes(blob))
    bad = plain_iso(tree, tmp_path / "bad.iso")
    with failed_boot(kernel, initramfs, cd(bad), "overlayboot.onerror=poweroff") as guest:
        assert "cannot mount the image /live/filesystem.squashfs" in guest.first.text


def test_full_tmpfs_upper_gives_enospc_and_stays_up(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path
) -> None:
    with booted(kernel, initramfs, cd(medium), "overlayboot.upper.size=4M") as guest:
        out = guest.sh(
            "dd if=/dev/zero of=/big bs=1M count=16 2>&1 | grep -o 'No space.*'", timeout=60
        )
        assert "No space left on device" in out, guest.vm.log()
        assert guest.sh("rm /big; echo small > /small && cat /small") == "small"
        assert guest.sh("cat /etc/release") == "from the lower layer"


def test_usb_stick_medium_and_usb_persistence(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, tmp_path: Path
) -> None:
    rw = ext4_image(tmp_path / "rw.img")
    usb = [
        "-device", "qemu-xhci,id=xhci",
        "-drive", f"if=none,id=stick,file={medium},format=raw,readonly=on",
        "-device", "usb-storage,bus=xhci.0,drive=stick",
        "-drive", f"if=none,id=rw,file={rw},format=raw",
        "-device", "usb-storage,bus=xhci.0,drive=rw",
    ]  # fmt: skip
    upper = "overlayboot.upper=LABEL=overlayboot-rw"
    with booted(kernel, initramfs, usb, upper) as guest:
        medium_line = guest.vm.wait_for(r"overlayboot: medium: ", timeout=1)
        assert "/dev/sd" in medium_line.text, guest.vm.log()
        assert guest.sh("echo usb > /usb-note && cat /usb-note") == "usb"
    with booted(kernel, initramfs, usb, upper) as guest:
        assert guest.sh("cat /usb-note") == "usb"


def test_toram_frees_the_medium(kernel: Kernel, initramfs: BuiltInitramfs, medium: Path) -> None:
    removable = r"overlayboot: the medium can be removed"
    with booted(kernel, initramfs, cd(medium), "overlayboot.toram", until=removable) as guest:
        guest.vm.wait_for(r"OVERLAYBOOT-ROOT: up", timeout=120)
        assert guest.sh("grep -c sr0 /proc/mounts") == "0"
        assert guest.sh("cat /etc/release") == "from the lower layer"


def test_findiso_on_a_partition(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    (store / "isos").mkdir(parents=True)
    shutil.copy(medium, store / "isos" / "live.iso")
    img = tmp_path / "store.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "isostore", "-d", str(store), str(img), "64M"], check=True
    )
    params = ("overlayboot.medium=LABEL=isostore", "overlayboot.findiso=/isos/live.iso")
    with booted(kernel, initramfs, disk(img), *params) as guest:
        assert guest.sh("grep -c findiso=/isos/live.iso /run/overlayboot/state") == "1"


def test_break_gives_a_shell_then_goes_on(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path
) -> None:
    stop = r"break before phase upper"
    with booted(kernel, initramfs, cd(medium), "overlayboot.break=upper", until=stop) as guest:
        guest.vm.wait_for(r"rescue shell", timeout=30)
        assert guest.sh("ls /run/overlayboot/lower/etc") == "release"
        guest.vm.send("exit\n")  # leave the rescue shell: the boot goes on
        guest.vm.wait_for(r"OVERLAYBOOT-ROOT: up", timeout=120)


def test_power_cut_leaves_old_or_new_contents(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, tmp_path: Path
) -> None:
    rw = ext4_image(tmp_path / "rw.img")
    drives = cd(medium) + disk(rw)
    upper = "overlayboot.upper=LABEL=overlayboot-rw"
    with booted(kernel, initramfs, drives, upper) as guest:
        # append to every lower file (a copy-up each), over and over, until the power goes
        guest.vm.send(
            "while true; do for i in $(seq 0 LAST); do echo new-$i >> /data/f$i; done; "
            "echo ROUND-DONE; done\n".replace("LAST", str(DATA_FILES - 1))
        )
        guest.vm.wait_for(r"^ROUND-DONE", timeout=120)
        guest.power_cut()  # mid-write
    with booted(kernel, initramfs, drives, upper) as guest:
        # every file: its 8000 old lines, then only whole "new-i" lines
        check = (
            "bad=0; for i in $(seq 0 LAST); do f=/data/f$i; "
            "[ $(head -n 8000 $f | grep -c ^old-$i$) = 8000 ] || bad=$((bad+1)); "
            "n=$(wc -l < $f); t=$((n - 8000)); "
            "[ $t = 0 ] || [ $(tail -n $t $f | grep -c ^new-$i$) = $t ] || bad=$((bad+1)); "
            "done; echo $bad"
        ).replace("LAST", str(DATA_FILES - 1))
        assert guest.sh(check, timeout=120) == "0", guest.vm.log()
    fsck = subprocess.run(["e2fsck", "-fn", str(rw)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
