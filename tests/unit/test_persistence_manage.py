"""``overlayboot persistence reset|resize`` on real ext4 images: a bare file and a stick
image (MBR), through debugfs, e2fsck and resize2fs; no root, no loop device."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from mkimage import mbr
from mkimage.persistresize import fs_size
from overlayboot.images import open_target, read_base
from tests.unit.conftest import need_tools
from tests.unit.test_persistence_images import BASE, A, B, C, fsck_clean, image, invoke

__all__ = ["image"]  # the fixture: images A (booted last), B, C with changes


def spec(img: Path) -> str:
    offset = getattr(open_target(img), "offset", 0)
    return f"{img}?offset={offset}" if offset else str(img)


def ids(img: Path) -> set[str]:
    return {i.image_id for i in read_base(open_target(img), BASE).images}


def test_reset_the_image_booted_last(image: Path) -> None:
    res = invoke("reset", str(image))
    assert res.exit_code == 0, res.output
    assert res.output == f"reset image {A} on /{BASE}: its saved changes are removed\n"
    assert ids(image) == {B, C}
    assert fsck_clean(image)


def test_reset_another_image_by_prefix(image: Path) -> None:
    res = invoke("reset", str(image), "--image", C[:6])
    assert res.exit_code == 0, res.output
    assert ids(image) == {A, B}


def test_reset_errors_are_one_line(image: Path, tmp_path: Path) -> None:
    for args, _code, text in (
        (["--image", "d" * 32], 1, f"no saved changes of image {'d' * 32}"),
        (["--image", "../x"], 2, "is not an image id"),
    ):
        res = invoke("reset", str(image), *args)
        assert res.exit_code != 0 and text in res.output, res.output
        assert len(res.output.strip().splitlines()) <= 2 and "Traceback" not in res.output
    (tmp_path / "empty").mkdir()
    res = invoke("reset", str(tmp_path / "empty"))
    assert res.exit_code != 0 and "no overlayboot changes" in res.output
    assert ids(image) == {A, B, C}


def test_resize_grows_and_shrinks_keeping_the_changes(image: Path) -> None:
    need_tools("resize2fs", "dumpe2fs", "losetup")
    if getattr(open_target(image), "offset", 0) and os.geteuid() != 0:
        pytest.skip("needs root: a loop device over the stick image's partition")
    before = fs_size(spec(image))
    res = invoke("resize", str(image), "--size", "48M")
    assert res.exit_code == 0, res.output
    assert f"ext4 resized from {before:,d} to {48 << 20:,d} bytes" in res.output
    assert fs_size(spec(image)) == 48 << 20
    offset = getattr(open_target(image), "offset", 0)
    assert image.stat().st_size == offset + (48 << 20)
    if offset:  # the stick image's partition entry follows
        with open(image, "rb") as f:
            (part,) = mbr.read_table(f.read(mbr.SECTOR))
        assert part.sectors * mbr.SECTOR == 48 << 20
    assert ids(image) == {A, B, C} and fsck_clean(image)
    res = invoke("resize", str(image), "--size", "20M")
    assert res.exit_code == 0, res.output
    assert fs_size(spec(image)) == 20 << 20 and image.stat().st_size == offset + (20 << 20)
    assert ids(image) == {A, B, C} and fsck_clean(image)
    listing = invoke("list", str(image)).output
    assert "5,000 bytes" in listing


def test_resize_refusals(image: Path, tmp_path: Path) -> None:
    need_tools("resize2fs", "dumpe2fs")
    size = image.stat().st_size
    for args, text in (
        ([], "give the new size of an image file"),
        (["--size", "4M"], "too small"),
        (["--size", "lots"], "size"),
    ):
        res = invoke("resize", str(image), *args)
        assert res.exit_code != 0 and text in res.output, res.output
        assert "Traceback" not in res.output
    res = invoke("resize", str(tmp_path / "nothing.img"), "--size", "64M")
    assert res.exit_code == 2 and "does not exist" in res.output
    assert image.stat().st_size == size


def test_a_partition_that_is_not_the_last_cannot_grow(tmp_path: Path) -> None:
    need_tools("mkfs.ext4", "resize2fs", "dumpe2fs")
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(48 << 20)
        table = mbr.new_table(1)
        table = mbr.add_partition(table, mbr.Partition(1, mbr.TYPE_LINUX, 2048, 16 << 11))
        table = mbr.add_partition(table, mbr.Partition(2, 0x0C, 34 << 11, 8 << 11))
        f.write(table)
    subprocess.run(["mkfs.ext4", "-q", "-E", "offset=1048576", str(img), "16M"], check=True)
    res = invoke("resize", str(img), "--size", "32M")
    assert res.exit_code == 1 and "is not its last one" in res.output, res.output


@pytest.mark.parametrize("size", ["64M"])
def test_resize_a_file_made_by_create(tmp_path: Path, size: str) -> None:
    need_tools("mkfs.ext4", "resize2fs", "dumpe2fs")
    img = tmp_path / "persistence.img"
    assert invoke("create", str(img), "--size", "32M").exit_code == 0
    res = invoke("resize", str(img), "--size", size)
    assert res.exit_code == 0, res.output
    assert img.stat().st_size == 64 << 20 and fs_size(str(img)) == 64 << 20
