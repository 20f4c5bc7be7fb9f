"""Boots that need a root you can trust: each image's own changes, and a checked partition.

Images A and B are the builder's default busybox root, differing in one byte of
/etc/motd: their squashfs images have the same size and mkfs time (the old image id), but
different ids. The persistence partitions are ext4 images made and broken on the host
with mkfs.ext4 and debugfs.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from mkimage.rootfs import build_busybox_root, copy_root
from mkimage.squashfs import SquashfsSpec, build_squashfs
from tests.qemu.live import booted, failed_boot
from tests.qemu.media import ext4_image, plain_iso
from tests.qemu.test_boot import cd, disk

pytestmark = [pytest.mark.qemu, pytest.mark.slow]  # several boots each: the slow tier (CI runs it)

UPPER = "overlayboot.upper=LABEL=overlayboot-rw"
EPOCH = 1_700_000_000


@dataclass(frozen=True)
class Image:
    iso: Path
    squashfs: Path
    image_id: str


def make_image(root: Path, base: Path, *, with_id: bool = True) -> Image:
    sq = base / "iso/live/filesystem.squashfs"
    sq.parent.mkdir(parents=True)
    if with_id:
        image_id = build_squashfs(root, sq, SquashfsSpec(source_date_epoch=EPOCH)).image_id
    else:  # an image overlayboot did not build: plain mksquashfs
        subprocess.run(["mksquashfs", str(root), str(sq), "-quiet", "-no-progress"], check=True)
        image_id = hashlib.sha256(sq.read_bytes()).hexdigest()[:32]
    return Image(plain_iso(base / "iso", base / "live.iso"), sq, image_id)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image]:
    base = tmp_path_factory.mktemp("images")
    a = build_busybox_root(base / "root-a").path
    (a / "etc/motd").write_text("image A\n")
    b = copy_root(a, base / "root-b").path
    (b / "etc/motd").write_text("image B\n")
    out = {"A": make_image(a, base / "a"), "B": make_image(b, base / "b")}
    out["plain"] = make_image(a, base / "plain", with_id=False)
    return out


def debugfs(img: Path, *commands: str, write: bool = False) -> str:
    argv = ["debugfs", *(["-w"] if write else []), "-f", "-", str(img)]
    proc = subprocess.run(argv, input="\n".join(commands), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def assert_clean(img: Path) -> None:
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_each_image_gets_its_own_changes_back(
    kernel: Kernel, initramfs: BuiltInitramfs, images: dict[str, Image], tmp_path: Path
) -> None:
    a, b = images["A"], images["B"]
    assert a.squashfs.stat().st_size == b.squashfs.stat().st_size  # the old id: the same
    assert a.image_id != b.image_id
    rw = ext4_image(tmp_path / "rw.img")
    with booted(kernel, initramfs, cd(a.iso) + disk(rw), UPPER) as guest:
        assert f"image id {a.image_id}, from /.overlayboot/image-id" in guest.vm.log()
        assert guest.sh("cat /etc/motd") == "image A"
        assert guest.sh("echo from-a > /etc/note; rm /etc/hostname; cat /etc/note") == "from-a"
    listing = debugfs(rw, f"ls -p /overlayboot/OVERLAYBOOT/images/{a.image_id}/upper/etc")
    assert "/note/" in listing and "/hostname/" in listing  # the file and its whiteout

    with booted(kernel, initramfs, cd(b.iso) + disk(rw), UPPER) as guest:
        log = guest.vm.log()
        assert f"the image changed since the last boot (was {a.image_id}, now {b.image_id})" in log
        assert guest.sh("cat /etc/motd") == "image B"
        assert guest.sh("cat /etc/note 2>/dev/null || echo absent") == "absent"
        assert guest.sh("cat /etc/hostname") == "overlayboot"  # no whiteout of A's
        assert guest.sh("echo from-b > /etc/note-b; cat /etc/note-b") == "from-b"

    with booted(kernel, initramfs, cd(a.iso) + disk(rw), UPPER) as guest:
        assert "this image was booted here before: its changes come back" in guest.vm.log()
        assert guest.sh("cat /etc/note") == "from-a"
        assert guest.sh("cat /etc/hostname 2>/dev/null || echo absent") == "absent"
        assert guest.sh("cat /etc/note-b 2>/dev/null || echo absent") == "absent"
        state = guest.sh("grep -E '^(image_id|image_changed|fsck)=' /run/overlayboot/state")
        assert state == f"image_id={a.image_id} fsck=0 image_changed={b.image_id}"
    assert_clean(rw)


def test_an_image_without_an_id_is_known_by_its_sha256(
    kernel: Kernel, initramfs: BuiltInitramfs, images: dict[str, Image], tmp_path: Path
) -> None:
    plain = images["plain"]
    rw = ext4_image(tmp_path / "rw.img")
    with booted(kernel, initramfs, cd(plain.iso) + disk(rw), UPPER) as guest:
        assert "has no /.overlayboot/image-id (not built by overlayboot)" in guest.vm.log()
        assert f"image id {plain.image_id}, from sha256 of the image file" in guest.vm.log()
        guest.sh("echo x > /etc/x")
    assert "/x/" in debugfs(rw, f"ls -p /overlayboot/OVERLAYBOOT/images/{plain.image_id}/upper/etc")


def test_the_old_layout_is_moved_and_kept(
    kernel: Kernel, initramfs: BuiltInitramfs, images: dict[str, Image], tmp_path: Path
) -> None:
    """A partition written by an older release: changes in upper/, the old id in image-id."""
    a = images["A"]
    rw = ext4_image(tmp_path / "rw.img")
    old_id = "1600000000-4096"  # not image A's mkfs time and size: another image's changes
    (tmp_path / "old").write_text("old changes\n")
    (tmp_path / "id").write_text(old_id + "\n")
    debugfs(
        rw,
        "mkdir /overlayboot", "mkdir /overlayboot/OVERLAYBOOT",
        "mkdir /overlayboot/OVERLAYBOOT/upper", "mkdir /overlayboot/OVERLAYBOOT/upper/etc",
        "mkdir /overlayboot/OVERLAYBOOT/work",
        f"write {tmp_path / 'old'} /overlayboot/OVERLAYBOOT/upper/etc/old",
        f"write {tmp_path / 'id'} /overlayboot/OVERLAYBOOT/image-id",
        write=True,
    )  # fmt: skip
    with booted(kernel, initramfs, cd(a.iso) + disk(rw), UPPER) as guest:
        assert f"moving the changes of image {old_id} to " in guest.vm.log()
        assert guest.sh("cat /etc/old 2>/dev/null || echo absent") == "absent"
    kept = debugfs(rw, f"cat /overlayboot/OVERLAYBOOT/images/{old_id}/upper/etc/old")
    assert "old changes" in kept


def broken_partition(path: Path, *commands: str) -> Path:
    """An ext4 with a file, broken by ``commands`` (debugfs) and marked not clean."""
    rw = ext4_image(path)
    (path.parent / "file").write_text("a file\n")
    debugfs(rw, f"write {path.parent / 'file'} /file", *commands, "ssv state 0", write=True)
    return rw


def test_fsck_repairs_the_persistence_partition_before_the_boot_uses_it(
    kernel: Kernel, initramfs: BuiltInitramfs, images: dict[str, Image], tmp_path: Path
) -> None:
    rw = broken_partition(tmp_path / "rw.img", "sif /file links_count 5")
    with booted(kernel, initramfs, cd(images["A"].iso) + disk(rw), UPPER) as guest:
        fixed = guest.vm.wait_for(r"overlayboot: fsck: .*ref count is 5, should be 1\.\s+FIXED", 5)
        guest.vm.wait_for(r"overlayboot: fsck: errors on /dev/vda fixed", timeout=5)
        assert fixed.at < guest.vm.wait_for(r"overlayboot: upper: /dev/vda", timeout=5).at
        assert guest.sh("grep ^fsck= /run/overlayboot/state") == "fsck=1"
    assert_clean(rw)


def test_a_partition_that_needs_a_human_stops_the_boot(
    kernel: Kernel, initramfs: BuiltInitramfs, images: dict[str, Image], tmp_path: Path
) -> None:
    rw = broken_partition(tmp_path / "rw.img", "clri <2>")  # no root directory
    with failed_boot(kernel, initramfs, cd(images["A"].iso) + disk(rw), UPPER) as guest:
        err = guest.first
        assert "the persistence partition /dev/vda has errors that e2fsck -p cannot fix" in err.text
        assert "exit code 4" in err.text
        assert "UNEXPECTED INCONSISTENCY" in guest.vm.log()
    assert "OVERLAYBOOT-ROOT: up" not in guest.vm.log()
    assert "overlayboot: upper: " not in guest.vm.log()  # stopped before the mount
