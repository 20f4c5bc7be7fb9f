"""A clean shutdown: the live root hands back to /run/initramfs/shutdown, which unmounts it all.

The default busybox root (plus a 2 MiB file in the image, for a partial copy-up) boots
with a persistence partition; the test writes, powers off or reboots from the live root,
and then reads the partition on the host: its ext4 is clean (no journal to replay), and
the writes are there (debugfs). A control boot without the shutdown program shows what
the checks catch: the partition is left needing recovery. systemd's side of the protocol
is tested by the Debian root of the slow tier (tests/qemu/test_debian.py).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkimage.initramfs import DEFAULT_LABEL, BuiltInitramfs
from mkimage.kernel import Kernel
from mkimage.rootfs import ROOT_MARKER, build_busybox_root
from mkimage.squashfs import SquashfsSpec, build_squashfs
from tests.qemu.harness import Vm, VmConfig
from tests.qemu.media import ext4_image, plain_iso

pytestmark = [pytest.mark.qemu, pytest.mark.slow]  # several boots each: the slow tier (CI runs it)

IMAGES = f"/overlayboot/{DEFAULT_LABEL}/images"
BIG = bytes(range(256)) * 8192  # 2 MiB: written in part, it is copied up in chunks
PATCH_AT, PATCH_LEN = 409600, 4096
STEP = "overlayboot: shutdown: "


@dataclass(frozen=True)
class Ext4State:
    """What dumpe2fs -h says of a filesystem image."""

    state: str
    features: frozenset[str]


def ext4_state(img: Path) -> Ext4State:
    out = subprocess.run(
        ["dumpe2fs", "-h", str(img)], check=True, capture_output=True, text=True
    ).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return Ext4State(
        fields["Filesystem state"].strip(), frozenset(fields["Filesystem features"].split())
    )


def upper_of(img: Path) -> str:
    """The upper dir of the one image that booted on the partition: images/ID/upper."""
    names = debugfs(img, f"ls -p {IMAGES}").decode().split("\n")
    ids = [
        n.split("/")[5]
        for n in names
        if n.count("/") > 5 and n.split("/")[5] not in ("", ".", "..")
    ]
    assert len(ids) == 1, names
    return f"{IMAGES}/{ids[0]}/upper"


def debugfs(img: Path, request: str) -> bytes:
    return subprocess.run(
        ["debugfs", "-R", request, str(img)], check=True, capture_output=True
    ).stdout


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("shutdown")
    root = build_busybox_root(base / "root").path
    (root / "data").mkdir()
    (root / "data/big").write_bytes(BIG)
    (base / "iso/live").mkdir(parents=True)
    build_squashfs(root, base / "iso/live/filesystem.squashfs", SquashfsSpec())
    return plain_iso(base / "iso", base / "live.iso")


def boot(kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, rw: Path, *params: str) -> Vm:
    config = VmConfig(
        kernel=kernel.image,
        initrd=initramfs.path,
        append=(
            "overlayboot.upper=LABEL=overlayboot-rw",
            "overlayboot.timeout=15",
            "overlayboot.onerror=poweroff",
            *params,
        ),
        extra=(
            "-drive",
            f"file={medium},media=cdrom,readonly=on,if=ide",
            "-drive",
            f"file={rw},format=raw,if=virtio",
        ),
    )
    return Vm(config)


def write_and_leave(vm: Vm, verb: str, *before: str) -> None:
    """In the live root: a new file and a partial rewrite of /data/big, then ``verb``."""
    vm.wait_for(ROOT_MARKER, timeout=240)
    vm.send(
        "echo kept > /root/note; "
        f"dd if=/dev/zero of=/data/big bs={PATCH_LEN} seek={PATCH_AT // PATCH_LEN} count=1 "
        "conv=notrunc 2>/dev/null; echo W:$(cat /root/note)\n"
    )
    vm.wait_for(r"^W:kept", timeout=60)
    for command in before:
        vm.send(f"{command}; echo B:$?\n")
        vm.wait_for(r"^B:0", timeout=30)
    vm.send(f"{verb}\n")
    vm.wait_exit(timeout=180)


def shutdown_log(vm: Vm) -> str:
    log = vm.log()
    return log[log.index("OVERLAYBOOT-ROOT: ") :]


def assert_steps(vm: Vm, *steps: str) -> str:
    """Each step (a regex) on the console, no ERROR line from the root's end on; the log."""
    log = shutdown_log(vm)
    for step in steps:
        assert vm.wait_for(step, timeout=1), log
    assert "ERROR" not in log, log
    return log


def assert_clean_with_the_writes(rw: Path) -> None:
    ext4 = ext4_state(rw)
    assert ext4.state == "clean", ext4
    assert "needs_recovery" not in ext4.features, ext4
    assert debugfs(rw, f"cat {upper_of(rw)}/root/note") == b"kept\n"
    patched = BIG[:PATCH_AT] + bytes(PATCH_LEN) + BIG[PATCH_AT + PATCH_LEN :]
    assert (
        debugfs(rw, f"cat {upper_of(rw)}/data/big")[PATCH_AT - 8 : PATCH_AT + PATCH_LEN + 8]
        == (patched[PATCH_AT - 8 : PATCH_AT + PATCH_LEN + 8])
    )


def test_poweroff_leaves_the_persistence_partition_clean(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, tmp_path: Path
) -> None:
    rw = ext4_image(tmp_path / "rw.img")
    with boot(kernel, initramfs, medium, rw) as vm:
        write_and_leave(vm, "poweroff")
    log = assert_steps(
        vm,
        STEP + "poweroff: syncing",
        STEP + "unmounting the old root",
        STEP + r"the overlay daemon \(pid \d+\) has finished",
        STEP + "the persistence partition /dev/vda is unmounted",
        STEP + "poweroff$",
    )
    assert_clean_with_the_writes(rw)
    # not sealed: /data/big stays a partial copy-up, its chunk map recorded
    assert b"overlayboot.chunks" in debugfs(rw, f"ea_list {upper_of(rw)}/data/big"), log


def test_reboot_seals_partial_copy_ups_when_asked(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, tmp_path: Path
) -> None:
    rw = ext4_image(tmp_path / "rw.img")
    with boot(kernel, initramfs, medium, rw) as vm:
        write_and_leave(vm, "reboot", "touch /run/overlayboot/seal-at-shutdown")
    log = assert_steps(vm, STEP + "sealing the partial copy-ups", STEP + "reboot$")
    assert_clean_with_the_writes(rw)
    assert b"overlayboot.chunks" not in debugfs(rw, f"ea_list {upper_of(rw)}/data/big"), log
    assert debugfs(rw, f"cat {upper_of(rw)}/data/big") == (
        BIG[:PATCH_AT] + bytes(PATCH_LEN) + BIG[PATCH_AT + PATCH_LEN :]
    )


def test_kernel_overlayfs_root_shuts_down_clean(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, tmp_path: Path
) -> None:
    rw = ext4_image(tmp_path / "rw.img")
    with boot(kernel, initramfs, medium, rw, "overlayboot.overlay=kernel") as vm:
        write_and_leave(vm, "poweroff")
    log = assert_steps(vm, STEP + "the persistence partition /dev/vda is unmounted")
    assert "the overlay daemon" not in log, log
    assert_clean_with_the_writes(rw)


def test_without_the_shutdown_program_the_partition_needs_recovery(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Path, tmp_path: Path
) -> None:
    """The control: what the root did before (sync, poweroff -f) leaves a journal to replay."""
    rw = ext4_image(tmp_path / "rw.img")
    with boot(kernel, initramfs, medium, rw) as vm:
        write_and_leave(vm, "poweroff", "rm /run/initramfs/shutdown")
        log = shutdown_log(vm)
    assert STEP not in log, log
    assert "needs_recovery" in ext4_state(rw).features
