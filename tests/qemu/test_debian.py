"""A real Debian root with systemd boots on overlayboot, persists, and shuts down cleanly.

debootstrap --variant=minbase bookworm + systemd-sysv (about 40 s here, packages from
apt), a marker service that reports what / is and whether the daemon survived
switch-root, writes a file and powers the machine off with systemd. A second boot finds
the file: the daemon served the root until systemd's very end. systemd-shutdown SIGSTOPs
the daemon too while it walks /proc; before the kernel cached entries and negative
lookups for good, that hung the machine right after "Sending SIGKILL". Then
systemd-shutdown hands over to /run/initramfs/shutdown, which unmounts the persistence
partition: after each poweroff its ext4 is clean (no journal to replay). Slow tier.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from mkimage.rootfs import build_debian_root
from mkimage.squashfs import SquashfsSpec, build_squashfs
from tests.qemu.harness import Vm, VmConfig
from tests.qemu.media import ext4_image, plain_iso
from tests.qemu.test_shutdown import ext4_state

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

MARKER_UNIT = """[Unit]
Description=overlayboot test marker
After=multi-user.target

[Service]
Type=oneshot
StandardOutput=tty
TTYPath=/dev/ttyS0
ExecStart=/bin/sh -c 'echo "OVERLAYBOOT-SYSTEMD: / is $(grep " / " /proc/mounts | \
tail -n1 | cut -d" " -f3)"; \
echo "OVERLAYBOOT-SYSTEMD: daemon $(grep -l "^@overlayboot" /proc/[0-9]*/cmdline | wc -l)"; \
echo "OVERLAYBOOT-SYSTEMD: previous $(cat /var/lib/overlayboot-test 2>/dev/null || echo none)"; \
echo "OVERLAYBOOT-SYSTEMD: journal $(journalctl -b -t overlayboot | grep -c "switching to")"; \
echo "OVERLAYBOOT-SYSTEMD: path $(command -v overlayboot)"; \
echo "boot-$(cat /proc/sys/kernel/random/boot_id)" > /var/lib/overlayboot-test; sync; \
systemctl --no-block poweroff'

[Install]
WantedBy=multi-user.target
"""


@pytest.fixture(scope="module")
def debian_medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("debian")
    root = build_debian_root(base / "root").path
    unit = root / "etc/systemd/system/overlayboot-marker.service"
    unit.write_text(MARKER_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "overlayboot-marker.service").symlink_to("../overlayboot-marker.service")
    (base / "iso/live").mkdir(parents=True)
    build_squashfs(root, base / "iso/live/filesystem.squashfs", SquashfsSpec())
    return plain_iso(base / "iso", base / "debian.iso")


@pytest.mark.timeout(1800)
def test_systemd_root_boots_persists_and_shuts_down(
    kernel: Kernel, initramfs: BuiltInitramfs, debian_medium: Path, tmp_path: Path
) -> None:
    rw = ext4_image(tmp_path / "rw.img", "256M")
    config = VmConfig(
        kernel=kernel.image,
        initrd=initramfs.path,
        append=("overlayboot.upper=LABEL=overlayboot-rw", "overlayboot.onerror=poweroff"),
        extra=(
            "-drive",
            f"file={debian_medium},media=cdrom,readonly=on,if=ide",
            "-drive",
            f"file={rw},format=raw,if=virtio",
        ),
        memory_mib=1536,
    )
    boot_ids = []
    for n in (1, 2):
        with Vm(config) as vm:
            fs = vm.wait_for(r"OVERLAYBOOT-SYSTEMD: / is", timeout=600)
            assert fs.text.endswith("fuse.overlayboot"), vm.tail()
            assert vm.wait_for(r"OVERLAYBOOT-SYSTEMD: daemon", 30).text.endswith(" 1"), vm.tail()
            previous = vm.wait_for(r"OVERLAYBOOT-SYSTEMD: previous", 30).text.split()[-1]
            # the boot's log in the journal (hooks/55-liveroot.sh), overlayboot on the PATH
            assert vm.wait_for(r"OVERLAYBOOT-SYSTEMD: journal", 30).text.endswith(" 1"), vm.tail()
            assert vm.wait_for(r"OVERLAYBOOT-SYSTEMD: path", 30).text.endswith(
                " /usr/sbin/overlayboot"
            ), vm.tail()
            boot_ids.append(previous)
            vm.wait_exit(timeout=150)  # systemd's poweroff, with the daemon spared to the end
            log = vm.log()
        assert "Kernel panic" not in log
        assert "overlayboot: shutdown: the persistence partition /dev/vda is unmounted" in log
        assert "ERROR" not in log[log.index("overlayboot: shutdown: ") :], log
        ext4 = ext4_state(rw)
        assert ext4.state == "clean" and "needs_recovery" not in ext4.features, ext4
        print(f"debian boot {n}: marker after {fs.at:.1f} s")
    assert boot_ids[0] == "none"
    assert boot_ids[1].startswith("boot-"), "the file written before the first poweroff is lost"
