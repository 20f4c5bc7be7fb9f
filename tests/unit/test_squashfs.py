"""The squashfs image of a root: its tree, reproducibility, owners, bad input."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mkimage.rootfs import Root, RootfsError, copy_root
from mkimage.squashfs import (
    BuiltSquashfs,
    SquashfsSpec,
    build_squashfs,
    list_image,
    mksquashfs_argv,
)
from overlayboot import run as run_mod
from overlayboot.cli import cli
from overlayboot.errors import ToolError
from overlayboot.run import run
from tests.unit.conftest import EPOCH


def test_image_lists_the_tree(squashfs_image: BuiltSquashfs) -> None:
    names = set(list_image(squashfs_image.path))
    assert {"bin/busybox", "bin/sh", "sbin/init", "etc/passwd", "proc", "dev", "tmp"} <= names
    with open(squashfs_image.path, "rb") as f:
        assert f.read(4) == b"hsqs"


def test_times_and_owners(squashfs_image: BuiltSquashfs) -> None:
    out = run(["unsquashfs", "-lln", "-d", "", str(squashfs_image.path)]).stdout.decode()
    lines = [ln for ln in out.splitlines() if ln.endswith("/sbin/init")]
    assert lines and "0/0" in lines[0]
    assert time.strftime("%Y-%m-%d %H:%M", time.gmtime(EPOCH)) in lines[0]
    stats = run(["unsquashfs", "-s", str(squashfs_image.path)]).stdout.decode()
    assert "Compression zstd" in stats


def test_two_builds_are_byte_identical(busybox_root: Root, tmp_path: Path) -> None:
    root = copy_root(busybox_root.path, tmp_path / "root").path
    spec = SquashfsSpec(source_date_epoch=EPOCH)
    a = build_squashfs(root, tmp_path / "a.sqfs", spec)
    os.utime(root / "etc/passwd", (1, 1))  # input times do not matter
    (root / "etc/passwd").chmod(0o644)
    b = build_squashfs(root, tmp_path / "b.sqfs", spec)
    assert a.path.read_bytes() == b.path.read_bytes()


def test_all_root_only_for_trees_not_owned_by_root(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    spec = SquashfsSpec(source_date_epoch=EPOCH)
    argv = mksquashfs_argv(tmp_path / "r", tmp_path / "o", spec, progress=False)
    assert ("-all-root" in argv) == (os.getuid() != 0)
    if os.getuid() == 0:
        os.chown(tmp_path / "r", 1000, 1000)
        argv = mksquashfs_argv(tmp_path / "r", tmp_path / "o", spec, progress=False)
        assert "-all-root" in argv
    forced = SquashfsSpec(source_date_epoch=EPOCH, all_root=False)
    assert "-all-root" not in mksquashfs_argv(
        tmp_path / "r", tmp_path / "o", forced, progress=False
    )
    assert "-no-progress" in argv
    assert "-no-progress" not in mksquashfs_argv(
        tmp_path / "r", tmp_path / "o", spec, progress=True
    )


def test_not_a_root_leaves_no_output(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree/file").write_text("x")
    with pytest.raises(RootfsError, match="no executable init"):
        build_squashfs(tmp_path / "tree", tmp_path / "out.sqfs", SquashfsSpec())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]


def test_missing_mksquashfs_names_the_package(
    busybox_root: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = run_mod.shutil.which
    monkeypatch.setattr(
        run_mod.shutil,
        "which",
        lambda t, path=None: None if t == "mksquashfs" else real(t, path=path),
    )
    with pytest.raises(ToolError) as err:
        build_squashfs(busybox_root.path, tmp_path / "o.sqfs", SquashfsSpec())
    assert "squashfs-tools" in err.value.line()
    assert not (tmp_path / "o.sqfs").exists()


def test_cli(busybox_root: Root, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "fs.sqfs"
    res = runner.invoke(cli, ["build", "squashfs", str(busybox_root.path), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file() and "init /sbin/init" in res.output
    res = runner.invoke(cli, ["build", "squashfs", str(tmp_path / "none"), "-o", str(out)])
    assert res.exit_code != 0
    assert len(res.output.strip().splitlines()) == 1
    assert "does not exist" in res.output
