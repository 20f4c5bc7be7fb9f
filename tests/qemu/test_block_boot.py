"""Block-level mode under QEMU (overlayboot.overlay=block): a CD whose /live/filesystem.ext4
holds the tiny root, the copy-on-write store on a persistence partition.

One test, four boots: write in the live root and power off (the shutdown detaches the
device: the store is clean, with only the changed chunks); boot again and find the change;
boot the same image in the file-level mode (FUSE overlay, the ext4 image as lower); boot
another image with the same partition: the store is refused with the ERROR: line.
Another, two boots: the store in RAM (no persistence partition), with overlayboot.toram
(the image copied to RAM, the medium let go) and overlayboot.block.chunk=16K: writes work,
the store has 16 KiB chunks; fstrim in the guest frees the chunks of a deleted file in the
store (``block info`` in the guest); the next boot has none of the changes.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from mkimage.rootfs import ROOT_MARKER, build_busybox_root
from overlayboot.block import manage
from overlayboot.block.device import DISCARD
from tests.qemu.live import Guest, booted, failed_boot
from tests.qemu.media import ext4_image, plain_iso
from tests.qemu.test_boot import cd, disk

pytestmark = [pytest.mark.qemu, pytest.mark.block, pytest.mark.slow]

BLOCK = ("overlayboot.overlay=block", "overlayboot.upper=LABEL=overlayboot-rw")
STORE = "/overlayboot/OVERLAYBOOT/block.store"


def _block_medium(base: Path, extra: str = "") -> Path:
    """An ISO holding the default busybox root (its init hands over to the shutdown
    program) as an ext4 image, with ``extra`` in /etc/extra."""
    build_busybox_root(base / "root")
    (base / "root/etc/release").write_text("from the image\n")
    if extra:
        (base / "root/etc/extra").write_text(extra)
    (base / "iso/live").mkdir(parents=True)
    image = base / "iso/live/filesystem.ext4"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(base / "root"), str(image), "24M"],
        check=True,
        capture_output=True,
    )
    return plain_iso(base / "iso", base / "block.iso")


def _store_info(rw: Path, tmp_path: Path, clean: bool = False) -> manage.Info:
    """``block info`` of the store on the persistence image (read with debugfs)."""
    out = tmp_path / "block.store"
    out.unlink(missing_ok=True)
    state = subprocess.run(["dumpe2fs", "-h", str(rw)], capture_output=True, text=True).stdout
    if clean:
        assert "needs_recovery" not in state, state  # the shutdown unmounted the partition
    subprocess.run(
        ["debugfs", "-R", f"dump {STORE} {out}", str(rw)], check=True, capture_output=True
    )
    return manage.info(out)


def medium_image(base: Path) -> Path:
    return base / "iso/live/filesystem.ext4"


def _check_after_power_cut(rw: Path, image: Path, tmp_path: Path) -> None:
    """The persistence partition's journal replayed (as the next boot's e2fsck -p does),
    the store merged with its image: that filesystem's journal replays, e2fsck finds it
    clean, and every fsynced file is there whole."""
    r = subprocess.run(["e2fsck", "-p", str(rw)], capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    info = _store_info(rw, tmp_path)
    assert info.sb.state.name == "DIRTY"  # no detach: the power went
    merged = tmp_path / "merged.img"
    manage.merge(tmp_path / "block.store", image, merged, force=True)
    r = subprocess.run(["e2fsck", "-p", str(merged)], capture_output=True, text=True)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    r = subprocess.run(["e2fsck", "-fn", str(merged)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for i in range(3):
        got = subprocess.run(
            ["debugfs", "-R", f"cat /etc/f{i}", str(merged)], capture_output=True, check=True
        ).stdout
        assert got == "".join(f"{n}\n" for n in range(i, 10000)).encode(), i


def test_block_mode_persists_and_refuses_another_image(
    kernel: Kernel, initramfs: BuiltInitramfs, tmp_path: Path
) -> None:
    medium = _block_medium(tmp_path / "a")
    assert medium_image(tmp_path / "a").exists()
    rw = ext4_image(tmp_path / "rw.img")
    with booted(kernel, initramfs, cd(medium) + disk(rw), *BLOCK, until=ROOT_MARKER) as guest:
        mount = guest.vm.wait_for(r"^OVERLAYBOOT-ROOT: / is ", timeout=5).text
        assert re.search(r" is /dev/loop\d+ / ext4 rw", mount), guest.vm.log()
        assert guest.sh("cat /etc/release") == "from the image"
        assert guest.sh("echo kept > /etc/note && sync && cat /etc/note") == "kept"
        assert guest.sh("grep -c '^block_device=/dev/loop' /run/overlayboot/state") == "1"
        assert guest.sh("grep -c '^persistent=yes' /run/overlayboot/state") == "1"
        status = guest.sh("/run/overlayboot/runtime/overlayboot status | grep block:")
        assert re.search(r"/dev/loop\d+ over /run/overlayboot/rw/.*block.store", status), status
    first = guest.first.at
    log = guest.vm.log()
    (tmp_path / "boot1.log").write_text(log)
    assert "ERROR" not in log, log
    assert "overlayboot: shutdown: the overlay daemon" in log, log  # it finished by itself
    info = _store_info(rw, tmp_path, clean=True)
    assert info.sb.state.name == "CLEAN", log  # the shutdown detached the device
    assert 0 < info.mapped < info.sb.chunks // 4
    with booted(kernel, initramfs, cd(medium) + disk(rw), *BLOCK, until=ROOT_MARKER) as guest:
        assert guest.sh("cat /etc/note") == "kept"
        # fsynced files, then more writes, then the power goes
        for i in range(3):
            guest.sh(f"seq {i} 9999 > /etc/f{i}.tmp && dd if=/etc/f{i}.tmp of=/etc/f{i} conv=fsync")
        guest.sh("cp -r /bin /etc/unsynced-copy; echo done")
        guest.power_cut()
    _check_after_power_cut(rw, medium_image(tmp_path / "a"), tmp_path)
    # the same image in the file-level mode: a read-only lower layer under the FUSE overlay
    image = "overlayboot.image=/live/filesystem.ext4"
    with booted(kernel, initramfs, cd(medium), image, until=ROOT_MARKER) as guest:
        mount = guest.vm.wait_for(r"^OVERLAYBOOT-ROOT: / is ", timeout=5).text
        assert " / fuse.overlayboot " in mount, guest.vm.log()
        assert guest.sh("cat /etc/release") == "from the image"
        assert guest.sh("echo x > /etc/release && cat /etc/release") == "x"
    other = _block_medium(tmp_path / "b", extra="another image\n")
    with failed_boot(kernel, initramfs, cd(other) + disk(rw), *BLOCK) as guest:
        line = guest.first.text
    assert "the block device did not start" in line and "made for another base" in line, line
    print(f"block mode: shell after {first:.1f} s; store {info.mapped} chunks changed")


def _guest_info(guest: Guest) -> str:
    """``overlayboot block info`` of the RAM store, run in the guest."""
    return guest.sh(
        "/run/overlayboot/runtime/overlayboot block info /run/overlayboot/rw/block.store"
        " | grep -E 'chunk size|changed|in the store'",
        timeout=60,
    )


def _stored(info: str) -> int:
    found = re.search(r"in the store: (\d+) chunks", info)
    assert found, info
    return int(found[1])


def test_block_mode_in_ram_with_toram_and_a_chunk_size(
    kernel: Kernel, initramfs: BuiltInitramfs, tmp_path: Path
) -> None:
    medium = _block_medium(tmp_path / "a")
    ram = ("overlayboot.overlay=block", "overlayboot.toram", "overlayboot.block.chunk=16K")
    with booted(kernel, initramfs, cd(medium), *ram, until=ROOT_MARKER) as guest:
        mount = guest.vm.wait_for(r"^OVERLAYBOOT-ROOT: / is ", timeout=5).text
        assert re.search(r" is /dev/loop\d+ / ext4 rw", mount), guest.vm.log()
        state = guest.sh("grep -E '^(toram|persistent|upper)=' /run/overlayboot/state | sort")
        assert state == "persistent=no toram=yes upper=tmpfs", state
        # the daemon reads the image from RAM, the medium is let go
        assert guest.sh("grep -c ' /run/overlayboot/medium ' /proc/mounts") == "0"
        assert guest.sh("cat /etc/release") == "from the image"
        made = "dd if=/dev/urandom of=/etc/blob bs=64k count=40 2>/dev/null && sync"
        guest.sh(f"{made} && md5sum /etc/blob > /etc/blob.md5")
        assert guest.sh("echo kept > /etc/note && cat /etc/note") == "kept"
        guest.sh("echo 3 > /proc/sys/vm/drop_caches")  # read back through the device
        assert guest.sh("md5sum -c /etc/blob.md5 2>&1") == "/etc/blob: OK"
        info = _guest_info(guest)
        assert "chunk size: 16384 bytes" in info, info
        changed = re.search(r"changed: (\d+) chunks", info)
        assert changed and int(changed[1]) >= 40 * 4, info  # the blob alone is 160 chunks of 16 KiB
        # discard from the guest: the blob deleted, fstrim / frees its chunks in the store
        assert DISCARD, "the runtime's pyfuse3 has no fallocate handler: rebuild it (make deps)"
        before = _stored(info)
        trimmed = guest.sh("rm /etc/blob && sync && fstrim -v / && echo y > /etc/t && sync")
        assert re.search(r"/: \d+ bytes trimmed", trimmed), trimmed
        after = _stored(_guest_info(guest))
        assert after <= before - 120, (before, after)  # the 160 of the blob, give or take
        assert guest.sh("cat /etc/note") == "kept"
    log = guest.vm.log()
    assert "ERROR" not in log and "the medium can be removed" in log, log
    with booted(kernel, initramfs, cd(medium), ram[0], until=ROOT_MARKER) as guest:
        assert guest.sh("ls /etc/note /etc/blob 2>/dev/null | wc -l") == "0"
        assert guest.sh("cat /etc/release") == "from the image"
