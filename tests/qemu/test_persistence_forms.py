"""Persistence forms people manage (markers ``persistence``, ``slow``): an ext4 image in a
file on a stick's exFAT partition, found by name (live-boot's ``persistence``) and by path
(dracut's ``rd.live.overlay=DEV:PATH``), its read-only mode (``persistence-read-only``:
what the session writes is gone after it) and its reset (``rd.live.overlay.reset``).
One image file, four boots in a row on it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from tests.qemu.compatmedia import build_root, exfat_disk, iso_with
from tests.qemu.live import Guest, booted

pytestmark = [pytest.mark.qemu, pytest.mark.persistence, pytest.mark.slow]

STATE = "/run/overlayboot/state"


def state(guest: Guest, key: str) -> str:
    return guest.sh(f"sed -n 's/^{key}=//p' {STATE} | tail -n 1")


def test_a_persistence_file_by_name_by_path_read_only_and_reset(
    kernel: Kernel, initramfs: BuiltInitramfs, tmp_path: Path
) -> None:
    root = build_root(tmp_path / "root")
    iso = iso_with(root, "live", "live/filesystem.squashfs", "OVERLAYBOOT")
    image = tmp_path / "persistence"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "inafile", str(image), "48M"], check=True)
    stick = exfat_disk(tmp_path / "stick.img", {"persistence": image}, size_mib=96)
    drives = [
        "-drive", f"file={iso},media=cdrom,readonly=on,if=ide",
        "-drive", f"file={stick},format=raw,if=virtio",
    ]  # fmt: skip
    # 1: live-boot's persistence: no partition labelled "persistence", the file /persistence
    with booted(kernel, initramfs, drives, "boot=live", "persistence") as guest:
        assert state(guest, "persistence_file") == "/dev/vda1:/persistence", guest.vm.log()
        assert state(guest, "persistent") == "yes"
        assert guest.sh("grep -c ' /run/overlayboot/rw ext4 ' /proc/mounts") == "1"
        assert guest.sh("echo one > /note && cat /note") == "one"
    # 2: by path, read-only: the note is there; what this boot writes is not kept
    line = ("rd.live.image", "rd.live.overlay=/dev/vda1:/persistence", "rd.live.overlay.readonly")
    with booted(
        kernel, initramfs, drives, "overlayboot.image=/live/filesystem.squashfs", *line
    ) as guest:
        assert state(guest, "readonly") == "yes", guest.vm.log()
        assert guest.sh("cat /note") == "one"
        assert guest.sh("echo two > /note && echo new > /new && cat /note") == "two"
        assert guest.sh("grep -c ' /run/overlayboot/rw ext4 ro' /proc/mounts") == "1"
    # 3: by path again: the note of boot 1, nothing of boot 2
    with booted(kernel, initramfs, drives, "overlayboot.upper=/dev/vda1:/persistence") as guest:
        assert guest.sh("cat /note") == "one", guest.vm.log()
        assert state(guest, "fsck") == "0"  # the shutdowns left the file's ext4 clean
        assert guest.sh("ls /new 2>&1 || echo absent").endswith("absent")
    # 4: reset: this image starts with no saved changes
    with booted(
        kernel, initramfs, drives, "boot=live", "persistence", "overlayboot.upper.reset"
    ) as guest:
        assert state(guest, "reset") == "yes", guest.vm.log()
        assert guest.sh("cat /note 2>&1 || echo absent").endswith("absent")


def luks_partition(path: Path, passphrase: str) -> str:
    """An ext4 persistence partition encrypted in place with LUKS2 (cryptsetup reencrypt
    --encrypt works on a file, no device-mapper on the host); returns its LUKS UUID."""
    subprocess.run(["truncate", "-s", "64M", str(path)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "secret", str(path), "48M"], check=True)
    key = path.with_suffix(".key")
    key.write_text(passphrase)
    subprocess.run(
        ["cryptsetup", "reencrypt", "--encrypt", "--type", "luks2", "--reduce-device-size",
         "16M", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file",
         str(key), "-q", str(path)],
        check=True,
    )  # fmt: skip
    return subprocess.run(
        ["cryptsetup", "luksUUID", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_luks_persistence_asks_its_passphrase_on_the_console(
    kernel: Kernel, initramfs: BuiltInitramfs, tmp_path: Path
) -> None:
    root = build_root(tmp_path / "root")
    iso = iso_with(root, "live", "live/filesystem.squashfs", "OVERLAYBOOT")
    crypt = tmp_path / "crypt.img"
    uuid = luks_partition(crypt, "correct horse")
    drives = [
        "-drive", f"file={iso},media=cdrom,readonly=on,if=ide",
        "-drive", f"file={crypt},format=raw,if=virtio",
    ]  # fmt: skip
    line = ("boot=live", f"overlayboot.upper=UUID={uuid}", "persistence-encryption=luks")
    prompt = r"^overlayboot: passphrase of the encrypted persistence /dev/vda \(LUKS, try 1 of 3\):"
    for n in (1, 2):
        with booted(kernel, initramfs, drives, *line, until=prompt) as guest:
            vm = guest.vm
            if n == 1:  # a wrong one first: asked again
                vm.send("wrong horse\n")
                vm.wait_for(r"overlayboot: persistence: wrong passphrase for /dev/vda", timeout=60)
                vm.wait_for(r"\(LUKS, try 2 of 3\):", timeout=60)
            vm.send("correct horse\n")
            vm.wait_for(r"OVERLAYBOOT-ROOT: up", timeout=120)
            assert state(guest, "encrypted") == "/dev/vda", vm.log()
            assert state(guest, "upper") in ("/dev/mapper/overlayboot-rw", "/dev/dm-0")
            if n == 1:
                assert guest.sh("echo sealed > /secret && cat /secret") == "sealed"
            else:
                assert guest.sh("cat /secret") == "sealed"
    assert b"sealed" not in crypt.read_bytes()  # encrypted on the disk


def test_a_luks_persistence_file_on_exfat(
    kernel: Kernel, initramfs: BuiltInitramfs, tmp_path: Path
) -> None:
    """A LUKS2 file on a stick's exFAT partition: found by name, then by path; the
    passphrase asked for the file; the shutdown closes it so that the stick's partition
    is unmounted and the file's ext4 is clean at the next boot."""
    root = build_root(tmp_path / "root")
    iso = iso_with(root, "live", "live/filesystem.squashfs", "OVERLAYBOOT")
    luks_partition(tmp_path / "persistence", "correct horse")
    stick = exfat_disk(tmp_path / "stick.img", {"persistence": tmp_path / "persistence"},
                       size_mib=96)  # fmt: skip
    drives = [
        "-drive", f"file={iso},media=cdrom,readonly=on,if=ide",
        "-drive", f"file={stick},format=raw,if=virtio",
    ]  # fmt: skip
    prompt = r"^overlayboot: passphrase of the encrypted persistence .*/persistence \(LUKS, try 1"
    for line in (("boot=live", "persistence"), ("overlayboot.upper=/dev/vda1:/persistence",)):
        with booted(kernel, initramfs, drives, *line, until=prompt) as guest:
            vm = guest.vm
            vm.send("correct horse\n")
            vm.wait_for(r"OVERLAYBOOT-ROOT: up", timeout=120)
            assert state(guest, "encrypted_file") == "yes", vm.log()
            assert state(guest, "persistence_file") == "/dev/vda1:/persistence"
            if line[0] == "boot=live":
                assert guest.sh("echo sealed > /secret && cat /secret") == "sealed"
            else:
                assert guest.sh("cat /secret") == "sealed"
                assert state(guest, "fsck") == "0"  # the shutdown left the file's ext4 clean
        shutdown = [ln.text for ln in vm.lines if "shutdown" in ln.text]
        assert not [ln for ln in shutdown if ln.startswith("ERROR")], shutdown
        assert any("is unmounted" in ln for ln in shutdown), shutdown
    assert b"sealed" not in stick.read_bytes()  # encrypted on the stick
