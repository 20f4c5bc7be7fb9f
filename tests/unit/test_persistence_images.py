"""``overlayboot persistence list|prune`` on real ext4 images (debugfs) and on directories."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mkimage.persistence import create_persistence
from overlayboot.cli import cli
from overlayboot.images import DirTree, open_target, read_base
from tests.unit.conftest import EPOCH, need_tools

A, B, C = "a" * 32, "b" * 32, "c" * 32
BASE = "overlayboot/OVERLAYBOOT"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["persistence", *args])


def debugfs(spec: str, *commands: str) -> None:
    subprocess.run(
        ["debugfs", "-w", "-f", "-", spec], input="\n".join(commands), text=True,
        capture_output=True, check=True,
    )  # fmt: skip


def layout_commands(src: Path) -> list[str]:
    """debugfs commands: images A (last booted), B, C with files, whiteouts, big xattrs."""
    (src / "f").write_bytes(b"x" * 5000)
    (src / "id").write_text(A + "\n")
    cmds = ["mkdir overlayboot", f"mkdir {BASE}", f"mkdir {BASE}/images"]
    for image in (A, B, C):
        d = f"{BASE}/images/{image}"
        cmds += [f"mkdir {d}", f"mkdir {d}/upper", f"mkdir {d}/work", f"mkdir {d}/upper/etc"]
        cmds += [f"write {src / 'f'} {d}/upper/etc/f"]
        cmds += [f"cd /{d}/upper/etc", "mknod gone c 0 0", "cd /"]  # (mknod takes no path)
        # an xattr too big for the inode: it goes to a block of its own
        cmds += [f"ea_set {d}/upper/etc user.big {'v' * 2000}"]
    cmds += [f"write {src / 'id'} {BASE}/image-id"]
    return cmds


@pytest.fixture(params=["bare", "table"])
def image(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    need_tools("mkfs.ext4", "debugfs", "e2fsck")
    img = tmp_path / "rw.img"
    fs = create_persistence(img, size=32 << 20, table=request.param == "table", epoch=EPOCH)
    spec = f"{img}?offset={fs.offset}" if fs.offset else str(img)
    debugfs(spec, *layout_commands(tmp_path))
    assert fsck_clean(img)
    return img


def fsck_clean(img: Path) -> bool:
    tree = open_target(img)
    spec = f"{img}?offset={tree.offset}" if getattr(tree, "offset", 0) else str(img)
    return subprocess.run(["e2fsck", "-fn", spec], capture_output=True).returncode == 0


def test_list_an_image_file(image: Path) -> None:
    res = invoke("list", str(image))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].endswith(f"/{BASE}: 3 images")
    a_line = next(ln for ln in lines if A in ln)
    assert "2 files" in a_line and "5,000 bytes" in a_line and "(booted last)" in a_line
    assert "(booted last)" not in next(ln for ln in lines if B in ln)


def test_prune_leaves_a_clean_filesystem(image: Path) -> None:
    res = invoke("prune", str(image), B)
    assert res.exit_code == 0, res.output
    assert f"removed the changes of image {B}" in res.output
    listed = invoke("list", str(image)).output
    assert B not in listed and A in listed and C in listed
    assert fsck_clean(image)  # the xattr blocks debugfs leaves behind are given back


def test_the_image_booted_last_needs_force(image: Path) -> None:
    res = invoke("prune", str(image), "aaaa")  # a prefix is enough
    assert res.exit_code == 1
    assert res.output.count("\n") == 1 and "is the image booted last" in res.output
    assert "--force" in res.output
    assert A in invoke("list", str(image)).output
    res = invoke("prune", "--force", str(image), "aaaa")
    assert res.exit_code == 0, res.output
    assert A not in invoke("list", str(image)).output


def test_all_but_last(image: Path) -> None:
    res = invoke("prune", "--all-but-last", str(image))
    assert res.exit_code == 0, res.output
    listed = invoke("list", str(image)).output
    assert A in listed and B not in listed and C not in listed
    assert fsck_clean(image)


def test_unknown_ids_and_bad_arguments(image: Path, tmp_path: Path) -> None:
    res = invoke("prune", str(image), "d" * 32)
    assert res.exit_code == 1 and "no changes of image dddd" in res.output
    assert invoke("prune", str(image)).exit_code == 2  # neither ids nor --all-but-last
    assert invoke("prune", str(image), "../x").exit_code == 2
    res = invoke("list", str(tmp_path / "nothing"))
    assert res.exit_code == 2 and "does not exist" in res.output
    (tmp_path / "zeros").write_bytes(bytes(1 << 16))
    res = invoke("list", str(tmp_path / "zeros"))
    assert res.exit_code == 1 and "holds no ext2/3/4 filesystem" in res.output


def test_a_mounted_partition_is_a_directory(tmp_path: Path) -> None:
    root = tmp_path / "mnt"
    for image in (A, B):
        (root / BASE / "images" / image / "upper/etc").mkdir(parents=True)
        (root / BASE / "images" / image / "upper/etc/f").write_text("12345")
        (root / BASE / "images" / image / "last-boot").write_text("2026-11-29T10:00:00Z\n")
    (root / "overlayboot/OTHER/images" / C / "upper").mkdir(parents=True)
    (root / BASE / "image-id").write_text(A + "\n")
    (root / BASE / "upper.1600000000-4096").mkdir()
    res = invoke("list", str(root))
    assert res.exit_code == 0, res.output
    assert "/overlayboot/OTHER: 1 images" in res.output
    assert "last boot 2026-11-29T10:00:00Z" in res.output
    assert "upper.1600000000-4096: the layout of an older release" in res.output
    base = read_base(DirTree(root), BASE)
    assert base.last_id == A and [(i.files, i.size) for i in base.images] == [(1, 5), (1, 5)]
    res = invoke("prune", "--dir", BASE, str(root), B)
    assert res.exit_code == 0, res.output
    assert not (root / BASE / "images" / B).exists() and (root / BASE / "images" / A).is_dir()
    assert (root / "overlayboot/OTHER/images" / C).is_dir()


def test_a_whiteout_in_a_directory_counts_as_a_file(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod of a whiteout needs root")
    upper = tmp_path / BASE / "images" / A / "upper"
    upper.mkdir(parents=True)
    os.mknod(upper / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    assert [(i.files, i.size) for i in read_base(DirTree(tmp_path), BASE).images] == [(1, 0)]
