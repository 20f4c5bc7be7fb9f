"""The boot flow end to end under QEMU: medium, lower, upper, overlay daemon, switch_root.

The medium here is a plain ISO9660 image (xorriso) labelled like the image, holding
/live/filesystem.squashfs of a tiny busybox root, attached as a CD; the kernel and
initramfs are given to QEMU directly, so these tests exercise the hooks, not GRUB.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from tests.qemu.harness import Vm, VmConfig

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
APPLETS = "sh cat echo ls mount grep sync poweroff setsid cttyhack dd df rm mkdir stat sleep head"


def _tiny_root(root: Path) -> None:
    for d in ("bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is needed"
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in APPLETS.split():
        (root / "bin" / applet).symlink_to("busybox")
    (root / "sbin" / "init").write_text(ROOT_INIT)
    (root / "sbin" / "init").chmod(0o755)
    (root / "etc" / "release").write_text("from the lower layer\n")


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
    iso = base / "live.iso"
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-V", "OVERLAYBOOT", "-o", str(iso),
         str(base / "iso")],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return iso


def _persistence(path: Path, label: str = "overlayboot-rw") -> Path:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, str(path), "64M"], check=True)
    return path


def boot(kernel: Kernel, initramfs: BuiltInitramfs, drives: list[str], *params: str) -> Vm:
    config = VmConfig(
        kernel=kernel.image,
        initrd=initramfs.path,
        append=("overlayboot.timeout=15", "overlayboot.onerror=poweroff", *params),
        extra=tuple(drives),
    )
    return Vm(config)


def cd(iso: Path) -> list[str]:
    return ["-drive", f"file={iso},media=cdrom,readonly=on,if=ide"]


def disk(img: Path) -> list[str]:
    return ["-drive", f"file={img},format=raw,if=virtio"]


def run(vm: Vm, tag: str, command: str, timeout: float = 30) -> str:
    """Run a shell command in the guest; return what it printed on its marked line."""
    vm.send(f"echo {tag}:$({command})\n")
    line = vm.wait_for(rf"^{tag}:(?!\$\()", timeout)
    return line.text.split(":", 1)[1]


@pytest.fixture
def vm_guard() -> Iterator[list[Vm]]:
    vms: list[Vm] = []
    yield vms
    for vm in vms:
        vm.kill()


def test_cd_boot_to_a_writable_fuse_root(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path
) -> None:
    with boot(kernel, initramfs, cd(medium)) as vm:
        up = vm.wait_for(r"OVERLAYBOOT-ROOT: up", timeout=240)
        root = vm.wait_for(r"^ROOT-MOUNT:", timeout=5)
        assert " / fuse.overlayboot " in root.text, vm.log()
        assert run(vm, "R1", "cat /etc/release") == "from the lower layer"
        assert run(vm, "R2", "echo written > /etc/new && cat /etc/new") == "written"
        assert run(vm, "R3", "ls /run/overlayboot/rw/upper/etc") == "new"
        assert run(vm, "R4", "grep -c persistent=no /run/overlayboot/state") == "1"
        status = run(vm, "R5", "/run/overlayboot/runtime/overlayboot status | grep changes:")
        assert "lost at power-off" in status
        vm.send("exit\n")
        vm.wait_exit(timeout=60)
    print(f"BIOS CD boot with overlayboot: shell after {up.at:.1f} s")


def test_kernel_overlayfs_fallback(kernel: Kernel, initramfs: BuiltInitramfs, medium: Path) -> None:
    with boot(kernel, initramfs, cd(medium), "overlayboot.overlay=kernel") as vm:
        up = vm.wait_for(r"OVERLAYBOOT-ROOT: up", timeout=240)
        root = vm.wait_for(r"^ROOT-MOUNT:", timeout=5)
        assert " / overlay " in root.text, vm.log()
        vm.send("exit\n")
        vm.wait_exit(timeout=60)
    print(f"BIOS CD boot with kernel overlayfs: shell after {up.at:.1f} s")


def test_persistence_survives_a_reboot(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, tmp_path: Path
) -> None:
    rw = _persistence(tmp_path / "rw.img")
    upper = "overlayboot.upper=LABEL=overlayboot-rw"
    with boot(kernel, initramfs, cd(medium) + disk(rw), upper) as vm:
        vm.wait_for(r"OVERLAYBOOT-ROOT: up", timeout=240)
        assert run(vm, "P1", "echo kept > /root-note && cat /root-note") == "kept"
        assert run(vm, "P2", "grep -c persistent=yes /run/overlayboot/state") == "1"
        vm.send("exit\n")
        vm.wait_exit(timeout=60)
    listing = subprocess.run(
        ["debugfs", "-R", "ls -p /overlayboot/OVERLAYBOOT/upper", str(rw)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "/root-note/" in listing
    with boot(kernel, initramfs, cd(medium) + disk(rw), upper) as vm:
        vm.wait_for(r"OVERLAYBOOT-ROOT: up", timeout=240)
        assert run(vm, "P3", "cat /root-note") == "kept"
        vm.send("exit\n")
        vm.wait_exit(timeout=60)
    with boot(kernel, initramfs, cd(medium) + disk(rw), "overlayboot.upper=tmpfs") as vm:
        vm.wait_for(r"OVERLAYBOOT-ROOT: up", timeout=240)
        assert run(vm, "P4", "cat /root-note 2>&1 || echo absent").endswith("absent")
        vm.send("exit\n")
        vm.wait_exit(timeout=60)


def test_wrong_label_says_what_it_saw(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path
) -> None:
    params = (
        "overlayboot.medium=LABEL=NOPE",
        "overlayboot.timeout=3",
        "overlayboot.onerror=poweroff",
    )
    with boot(kernel, initramfs, cd(medium), *params) as vm:
        err = vm.wait_for(r"^ERROR: ", timeout=240)
        assert "boot medium LABEL=NOPE not found after 3 s" in err.text
        seen = vm.wait_for(r"iso9660 +LABEL=OVERLAYBOOT", timeout=30)
        assert "/dev/sr0" in seen.text
        vm.wait_exit(timeout=60)
    assert "Kernel panic" not in vm.log()


def test_no_medium(kernel: Kernel, initramfs: BuiltInitramfs) -> None:
    params = ("overlayboot.timeout=2", "overlayboot.onerror=poweroff")
    with boot(kernel, initramfs, [], *params) as vm:
        err = vm.wait_for(r"^ERROR: ", timeout=240)
        assert "boot medium LABEL=OVERLAYBOOT not found" in err.text
        vm.wait_exit(timeout=60)
    assert "Kernel panic" not in vm.log()


def test_missing_persistence_label(kernel: Kernel, initramfs: BuiltInitramfs, medium: Path) -> None:
    params = ("overlayboot.upper=LABEL=missing-rw", "overlayboot.timeout=2",
              "overlayboot.onerror=poweroff")  # fmt: skip
    with boot(kernel, initramfs, cd(medium), *params) as vm:
        err = vm.wait_for(r"^ERROR: ", timeout=240)
        assert "persistence partition LABEL=missing-rw not found" in err.text
        vm.wait_exit(timeout=60)


def test_corrupt_squashfs(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "iso"
    (tree / "live").mkdir(parents=True)
    blob = bytearray((medium.parent / "iso/live/filesystem.squashfs").read_bytes())
    blob[0:96] = b"\0" * 96  # no superblock left
    (tree / "live/filesystem.squashfs").write_bytes(bytes(blob))
    bad = tmp_path / "bad.iso"
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-V", "OVERLAYBOOT", "-o", str(bad), str(tree)],
        check=True,
        capture_output=True,
    )
    with boot(kernel, initramfs, cd(bad), "overlayboot.onerror=poweroff") as vm:
        err = vm.wait_for(r"^ERROR: ", timeout=240)
        assert "cannot mount the image /live/filesystem.squashfs" in err.text
        vm.wait_exit(timeout=60)


def test_full_tmpfs_upper_gives_enospc_and_stays_up(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path
) -> None:
    with boot(kernel, initramfs, cd(medium), "overlayboot.upper.size=4M") as vm:
        vm.wait_for(r"OVERLAYBOOT-ROOT: up", timeout=240)
        out = run(
            vm,
            "F1",
            "dd if=/dev/zero of=/big bs=1M count=16 2>&1 | grep -o 'No space.*'",
            timeout=60,
        )
        assert "No space left on device" in out, vm.log()
        assert run(vm, "F2", "rm /big; echo small > /small && cat /small") == "small"
        assert run(vm, "F3", "cat /etc/release") == "from the lower layer"
        vm.send("exit\n")
        vm.wait_exit(timeout=60)
