"""The USB image (ISO + persistence partition), the MBR writer and standalone persistence."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mkimage import mbr
from mkimage.iso import BuiltIso
from mkimage.persistence import (
    PersistenceError,
    create_persistence,
    parse_size,
)
from mkimage.usb import BuiltUsb, UsbError, build_usb
from overlayboot.cli import cli
from overlayboot.errors import UsageError
from overlayboot.run import run
from tests.unit.conftest import EPOCH, need_tools

MIB = 1 << 20


@pytest.fixture(scope="module")
def usb_image(iso_image: BuiltIso, tmp_path_factory: pytest.TempPathFactory) -> BuiltUsb:
    need_tools("mkfs.ext4", "debugfs", "sfdisk", "blkid")
    dest = tmp_path_factory.mktemp("usb") / "overlayboot-usb.img"
    return build_usb(iso_image.path, dest, size=64 * MIB, epoch=EPOCH)


def sfdisk_parts(image: Path) -> list[tuple[int, int, str]]:
    out = run(["sfdisk", "-d", str(image)]).stdout.decode()
    found = re.findall(r"start=\s*(\d+), size=\s*(\d+), type=(\w+)", out)
    return [(int(a), int(b), t) for a, b, t in found]


def fs_label(image: Path, offset: int) -> str:
    out = run(["debugfs", "-R", "stats", f"{image}?offset={offset}"]).stdout.decode()
    m = re.search(r"Filesystem volume name:\s*(\S+)", out)
    assert m, out
    return m.group(1)


def test_partition_table(usb_image: BuiltUsb, iso_image: BuiltIso) -> None:
    parts = sfdisk_parts(usb_image.path)
    assert [t for _, _, t in parts] == ["cd", "ef", "83"]
    start, size, _ = parts[2]
    assert start * 512 >= iso_image.size  # after the whole ISO (ESP included)
    assert all(s + n <= start for s, n, _ in parts[:2])
    assert start * 512 % MIB == 0 and size * 512 == 64 * MIB
    assert usb_image.size == start * 512 + size * 512
    head = usb_image.path.read_bytes()[: iso_image.size]
    iso = iso_image.path.read_bytes()
    assert head[512:] == iso[512:]  # the ISO itself is untouched
    assert head[:446] == iso[:446]  # and so is GRUB's MBR boot code


def test_persistence_label(usb_image: BuiltUsb) -> None:
    offset = usb_image.persistence.offset
    assert fs_label(usb_image.path, offset) == "overlayboot-rw"
    out = run(["blkid", "-p", "-O", str(offset), str(usb_image.path)]).stdout.decode()
    assert 'LABEL="overlayboot-rw"' in out and 'TYPE="ext4"' in out
    run(["e2fsck", "-fn", f"{usb_image.path}?offset={offset}"])


def test_reproducible(usb_image: BuiltUsb, iso_image: BuiltIso, tmp_path: Path) -> None:
    again = build_usb(iso_image.path, tmp_path / "again.img", size=64 * MIB, epoch=EPOCH)
    assert again.path.read_bytes() == usb_image.path.read_bytes()


def test_not_an_iso(tmp_path: Path) -> None:
    with pytest.raises(UsbError, match="does not exist"):
        build_usb(tmp_path / "none.iso", tmp_path / "o.img")
    (tmp_path / "plain.iso").write_bytes(bytes(4096))
    with pytest.raises(UsbError, match="not a hybrid ISO"):
        build_usb(tmp_path / "plain.iso", tmp_path / "o.img")
    assert not (tmp_path / "o.img").exists()


def test_mbr_rules() -> None:
    sector = mbr.new_table(0x1234)
    one = mbr.add_partition(sector, mbr.Partition(1, 0x83, 2048, 2048))
    assert mbr.read_table(one) == [mbr.Partition(1, 0x83, 2048, 2048)]
    with pytest.raises(mbr.MbrError, match="overlap"):
        mbr.add_partition(one, mbr.Partition(2, 0x83, 4000, 100))
    with pytest.raises(mbr.MbrError, match="already used"):
        mbr.add_partition(one, mbr.Partition(1, 0x83, 9000, 100))
    full = one
    for slot in (2, 3, 4):
        full = mbr.add_partition(full, mbr.Partition(slot, 0x83, slot * 10000, 100))
    with pytest.raises(mbr.MbrError, match="no free slot"):
        mbr.free_slot(mbr.read_table(full))
    gpt = mbr.add_partition(sector, mbr.Partition(1, 0xEE, 1, 1000))
    with pytest.raises(mbr.MbrError, match="GPT"):
        mbr.add_partition(gpt, mbr.Partition(2, 0x83, 2048, 100))
    with pytest.raises(mbr.MbrError, match="signature"):
        mbr.read_table(bytes(512))


def test_parse_size() -> None:
    assert parse_size("256M") == 256 * MIB
    assert parse_size("1G") == 1 << 30
    assert parse_size("512MiB") == 512 * MIB
    assert parse_size("4096") == 4096
    with pytest.raises(UsageError):
        parse_size("lots")


def test_persistence_create_bare_and_with_table(tmp_path: Path) -> None:
    need_tools("mkfs.ext4", "debugfs", "sfdisk")
    bare = create_persistence(tmp_path / "p.img", size=16 * MIB, label="mydata")
    assert bare.offset == 0 and (tmp_path / "p.img").stat().st_size == 16 * MIB
    assert fs_label(tmp_path / "p.img", 0) == "mydata"
    with pytest.raises(PersistenceError, match="exists"):
        create_persistence(tmp_path / "p.img", size=16 * MIB)
    create_persistence(tmp_path / "p.img", size=16 * MIB, force=True)
    assert fs_label(tmp_path / "p.img", 0) == "overlayboot-rw"
    disk = create_persistence(tmp_path / "d.img", size=16 * MIB, table=True)
    assert sfdisk_parts(tmp_path / "d.img") == [(2048, 16 * MIB // 512, "83")]
    assert fs_label(tmp_path / "d.img", disk.offset) == "overlayboot-rw"
    with pytest.raises(UsageError, match="bad ext4 label"):
        create_persistence(tmp_path / "e.img", label="much-too-long-for-ext4")
    with pytest.raises(UsageError, match="too small"):
        create_persistence(tmp_path / "e.img", size=MIB)
    assert not (tmp_path / "e.img").exists()


def test_cli(iso_image: BuiltIso, tmp_path: Path) -> None:
    need_tools("mkfs.ext4")
    runner = CliRunner()
    out = tmp_path / "usb.img"
    res = runner.invoke(cli, ["build", "usb", "--iso", str(iso_image.path), "-o", str(out),
                              "--persistence-size", "32M"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "partition 3 = ext4 overlayboot-rw" in res.output
    res = runner.invoke(cli, ["persistence", "create", str(tmp_path / "p.img"), "--size", "16M"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["persistence", "create", str(tmp_path / "p.img"), "--size", "16M"])
    assert res.exit_code != 0
    assert res.output.strip() == (
        f"overlayboot: error: {tmp_path / 'p.img'} exists (give --force to overwrite it)"
    )


def test_both_the_disk_and_its_first_partition_carry_the_label(usb_image: BuiltUsb) -> None:
    """Why the boot prefers a partition (overlayboot.probe.find, hooks/lib.sh find_device):
    on the USB image the disk and partition 1 both read as the ISO, and a mounted whole disk
    keeps the kernel from mounting the persistence partition (the QEMU USB test boots it)."""
    from overlayboot import probe

    raw = usb_image.path.read_bytes()
    assert probe.has_partition_table(raw[:512])
    start = sfdisk_parts(usb_image.path)[0][0] * 512
    whole = probe.identify(raw[:65536])
    assert whole[:2] == ("iso9660", "OVERLAYBOOT")
    assert probe.identify(raw[start : start + 65536])[:2] == whole[:2]
    assert not probe.has_partition_table(bytes(512))
