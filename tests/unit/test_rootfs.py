"""The root trees: the built-in busybox root, copies of a directory or tarball, bad roots."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mkimage.elf import read_elf
from mkimage.rootfs import (
    INIT,
    ROOT_MARKER,
    Root,
    RootfsError,
    build_busybox_root,
    check_root,
    copy_root,
    find_init,
)
from overlayboot.cli import cli


def test_busybox_root_layout(busybox_root: Root) -> None:
    root = busybox_root.path
    assert busybox_root.init.as_posix() == "/sbin/init"
    assert read_elf(root / "bin/busybox").interpreter is None  # static
    assert os.readlink(root / "bin/sh") == "/bin/busybox"
    for rel in ("usr/bin/setsid", "sbin/poweroff", "bin/mount"):
        assert (root / rel).is_symlink(), rel
    for d in ("dev", "proc", "sys", "run", "tmp"):
        assert (root / d).is_dir(), d
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (root / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert (root / "etc/fstab").is_file()
    assert (root / "etc/hostname").read_text().strip()
    init = root / "sbin/init"
    assert not init.is_symlink() and os.access(init, os.X_OK)
    assert init.read_text() == INIT


def test_init_script_is_valid_sh_and_says_it_is_up() -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox is not installed")
    subprocess.run([busybox, "sh", "-n", "-c", INIT], check=True)
    assert f'echo "{ROOT_MARKER} $(uname -r)"' in INIT
    assert "setsid cttyhack sh" in INIT
    assert "sync" in INIT and '"$action" -f' in INIT
    assert " / " in INIT and "/proc/mounts" in INIT


def test_rebuild_replaces_the_tree(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    build_busybox_root(dest)
    (dest / "stale").write_text("x")
    build_busybox_root(dest)
    assert not (dest / "stale").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["root"]  # no temporary left


def test_find_init_follows_absolute_symlinks_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "lib/systemd").mkdir(parents=True)
    systemd = tmp_path / "lib/systemd/systemd"
    systemd.write_text("#!/bin/sh\n")
    systemd.chmod(0o755)
    (tmp_path / "sbin").mkdir()
    (tmp_path / "sbin/init").symlink_to("/lib/systemd/systemd")
    assert find_init(tmp_path) is not None
    assert str(find_init(tmp_path)) == "/sbin/init"
    (tmp_path / "sbin/init").unlink()
    (tmp_path / "sbin/init").symlink_to("/nonexistent")
    assert str(find_init(tmp_path)) == "/lib/systemd/systemd"


def test_check_root_errors(tmp_path: Path) -> None:
    with pytest.raises(RootfsError, match="does not exist"):
        check_root(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RootfsError, match="not a root filesystem: no executable init"):
        check_root(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RootfsError, match="not a directory"):
        check_root(tmp_path / "file")


def test_copy_root_from_directory_and_tarball(busybox_root: Root, tmp_path: Path) -> None:
    from_dir = copy_root(busybox_root.path, tmp_path / "a")
    assert from_dir.init == busybox_root.init
    assert os.readlink(tmp_path / "a/bin/sh") == "/bin/busybox"
    tarball = tmp_path / "root.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(busybox_root.path, arcname=".")
    from_tar = copy_root(tarball, tmp_path / "b")
    assert from_tar.init == busybox_root.init
    assert (tmp_path / "b/bin/busybox").stat().st_size == (
        busybox_root.path / "bin/busybox"
    ).stat().st_size


def test_copy_root_refuses_what_is_not_a_root(tmp_path: Path) -> None:
    (tmp_path / "notroot").mkdir()
    (tmp_path / "notroot/hello").write_text("hi")
    with pytest.raises(RootfsError, match="not a root filesystem"):
        copy_root(tmp_path / "notroot", tmp_path / "out")
    tarball = tmp_path / "notroot.tar"
    with tarfile.open(tarball, "w") as tar:
        tar.add(tmp_path / "notroot", arcname=".")
    with pytest.raises(RootfsError, match="not a root filesystem"):
        copy_root(tarball, tmp_path / "out")
    (tmp_path / "junk").write_text("neither")
    with pytest.raises(RootfsError, match="neither a directory nor a tar archive"):
        copy_root(tmp_path / "junk", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_build_rootfs(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["build", "rootfs", "-o", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "init /sbin/init" in res.output
    res = runner.invoke(cli, ["build", "rootfs", "--from", str(tmp_path / "nope"), "-o", "x"])
    assert res.exit_code != 0
    assert res.output.strip().splitlines() == [
        f"overlayboot: error: root source {tmp_path / 'nope'} does not exist"
    ]
