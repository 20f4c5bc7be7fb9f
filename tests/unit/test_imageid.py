"""The image id: a digest of the root tree that follows every byte and nothing else."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from mkimage.imageid import ID_FILE, ID_LEN, ImageIdError, image_id, tree_digest
from mkimage.squashfs import SquashfsSpec, build_squashfs, read_image_id
from overlayboot.run import run
from tests.unit.conftest import EPOCH, need_tools

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod)")


def make_tree(root: Path, motd: bytes = b"hello\n") -> Path:
    """A small root: an init, a file of each interesting kind, a nested dir."""
    (root / "sbin").mkdir(parents=True)
    (root / "sbin/init").write_text("#!/bin/sh\nexec sh\n")
    (root / "sbin/init").chmod(0o755)
    (root / "etc").mkdir()
    (root / "etc/motd").write_bytes(motd)
    (root / "etc/hostname").write_text("box\n")
    (root / "bin").mkdir()
    (root / "bin/sh").symlink_to("busybox")
    (root / "empty").mkdir()
    return root


def copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "a")


def test_one_byte_of_one_file_changes_the_id(tree: Path, tmp_path: Path) -> None:
    other = make_tree(tmp_path / "b", motd=b"hellO\n")  # same sizes everywhere
    assert image_id(tree) != image_id(other)
    assert len(image_id(tree)) == ID_LEN
    assert all(c in "0123456789abcdef" for c in image_id(tree))


def test_the_same_tree_twice_gives_the_same_id(tree: Path, tmp_path: Path) -> None:
    again = copy(tree, tmp_path / "again")
    os.utime(again / "etc/motd", (1, 1))  # times are not part of the image's identity
    assert tree_digest(tree) == tree_digest(tree)
    assert image_id(again) == image_id(tree)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda r: (r / "etc/motd").chmod(0o600), id="mode"),
        pytest.param(lambda r: (r / "sbin/init").chmod(0o4755), id="setuid"),
        pytest.param(lambda r: os.setxattr(r / "etc/motd", "user.x", b"1"), id="xattr"),
        pytest.param(lambda r: (r / "etc/motd").rename(r / "etc/motD"), id="name"),
        pytest.param(lambda r: (r / "empty/f").touch(), id="new-empty-file"),
        pytest.param(lambda r: (r / "empty").rmdir(), id="removed-dir"),
        pytest.param(lambda r: os.truncate(r / "etc/motd", 7), id="size"),
    ],
)
def test_metadata_changes_change_the_id(tree: Path, tmp_path: Path, change: object) -> None:
    before = image_id(tree)
    changed = copy(tree, tmp_path / "changed")
    assert callable(change)
    change(changed)
    assert image_id(changed) != before


def test_symlink_target_and_type(tree: Path, tmp_path: Path) -> None:
    before = image_id(tree)
    relinked = copy(tree, tmp_path / "relinked")
    (relinked / "bin/sh").unlink()
    (relinked / "bin/sh").symlink_to("busybox2")
    assert image_id(relinked) != before
    # a file holding the link's target is not the link
    as_file = copy(tree, tmp_path / "as-file")
    (as_file / "bin/sh").unlink()
    (as_file / "bin/sh").write_text("busybox")
    assert image_id(as_file) != before


def test_a_hard_link_is_not_a_copy(tree: Path, tmp_path: Path) -> None:
    linked = copy(tree, tmp_path / "linked")
    os.link(linked / "etc/hostname", linked / "etc/hostname2")
    copied = copy(tree, tmp_path / "copied")
    shutil.copy2(copied / "etc/hostname", copied / "etc/hostname2")
    assert image_id(linked) != image_id(copied)


@as_root
def test_owner_counts_unless_all_root(tree: Path, tmp_path: Path) -> None:
    owned = copy(tree, tmp_path / "owned")
    os.chown(owned / "etc/motd", 1000, 1000)
    assert image_id(owned) != image_id(tree)
    assert image_id(owned, all_root=True) == image_id(tree, all_root=True)


@as_root
def test_device_numbers(tree: Path, tmp_path: Path) -> None:
    a = copy(tree, tmp_path / "da")
    os.mknod(a / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    b = copy(tree, tmp_path / "db")
    os.mknod(b / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    c = copy(tree, tmp_path / "dc")
    os.mknod(c / "null", 0o666 | stat.S_IFBLK, os.makedev(1, 3))
    assert len({image_id(a), image_id(b), image_id(c)}) == 3


def test_an_id_file_in_the_tree_is_not_part_of_it(tree: Path, tmp_path: Path) -> None:
    before = image_id(tree)
    (tree / ID_FILE).parent.mkdir()
    (tree / ID_FILE).write_text("0" * ID_LEN + "\n")
    first = image_id(tree)
    assert first != before  # the .overlayboot dir is part of the tree ...
    (tree / ID_FILE).write_text("something else entirely\n")
    assert image_id(tree) == first  # ... the id file is not


def test_an_unreadable_tree_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(ImageIdError, match="cannot read"):
        image_id(tmp_path / "missing")


def test_images_of_the_same_size_carry_different_ids(tree: Path, tmp_path: Path) -> None:
    """The fault of mkfs time + size: two images differing in one byte of /etc/motd."""
    need_tools("mksquashfs", "unsquashfs")
    spec = SquashfsSpec(source_date_epoch=EPOCH, progress=False)
    other = make_tree(tmp_path / "b", motd=b"hellO\n")
    a = build_squashfs(tree, tmp_path / "a.sqfs", spec)
    b = build_squashfs(other, tmp_path / "b.sqfs", spec)
    assert a.size == b.size  # what the old id was made of: the same ...
    assert a.path.read_bytes()[8:12] == b.path.read_bytes()[8:12]  # ... mkfs time, too
    assert a.image_id != b.image_id
    assert read_image_id(a.path) == a.image_id == image_id(tree, all_root=os.geteuid() != 0)
    assert read_image_id(b.path) == b.image_id
    again = build_squashfs(copy(tree, tmp_path / "a2"), tmp_path / "a2.sqfs", spec)
    assert again.path.read_bytes() == a.path.read_bytes()  # a rebuild: the same bytes


def test_a_stale_id_file_in_the_tree_is_replaced(tree: Path, tmp_path: Path) -> None:
    need_tools("mksquashfs", "unsquashfs")
    spec = SquashfsSpec(source_date_epoch=EPOCH, progress=False)
    (tree / ID_FILE).parent.mkdir()
    (tree / ID_FILE).write_text("stale\n")
    built = build_squashfs(tree, tmp_path / "s.sqfs", spec)
    assert read_image_id(built.path) == built.image_id != "stale"


def test_an_image_without_an_id(tree: Path, tmp_path: Path) -> None:
    need_tools("mksquashfs", "unsquashfs")
    plain = tmp_path / "plain.sqfs"
    run(["mksquashfs", str(tree), str(plain), "-quiet", "-no-progress"])
    assert read_image_id(plain) is None
