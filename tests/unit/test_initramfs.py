"""The initramfs archive: its layout, its contents and byte-identical rebuilds (no VM)."""

from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import pytest

from mkimage.cpio import Compression, Kind, Member, UnsupportedCompressionError, read_cpio
from mkimage.initramfs import (
    HOOKS_DIR,
    IMAGE_CONF,
    MODULES_LOAD,
    RUNTIME_DIR,
    BuiltInitramfs,
    ImageConfig,
    InitramfsSpec,
    build_initramfs,
    runtime_sizes_in,
)
from mkimage.kernel import Kernel
from overlayboot.errors import UsageError
from overlayboot.run import run

pytestmark = pytest.mark.skipif(
    shutil.which("busybox") is None, reason="busybox-static is not installed"
)

VERSION = "6.0.0-test"
SDE = 1_690_000_000
DEP = """\
kernel/fs/isofs/isofs.ko.xz:
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/lib/crc16.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/drivers/unused/unused.ko.xz:
"""
CONFIG = "CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\nCONFIG_RD_ZSTD=y\n"


def fake_kernel(top: Path, config: str = CONFIG) -> Kernel:
    mods = top / "lib/modules" / VERSION
    for line in DEP.splitlines():
        path = mods / line.split(":")[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(lzma.compress(b"\x7fELF fake module " + path.name.encode()))
    (mods / "modules.dep").write_text(DEP)
    (mods / "modules.builtin").write_text("kernel/fs/fuse/fuse.ko\n")
    (top / "boot").mkdir()
    (top / "boot" / f"config-{VERSION}").write_text(config)
    (top / "boot" / f"vmlinuz-{VERSION}").write_bytes(b"kernel")
    return Kernel(
        VERSION, top / "boot" / f"vmlinuz-{VERSION}", mods, top / "boot" / f"config-{VERSION}"
    )


def spec_for(kernel: Kernel, hooks: Path, compression: Compression) -> InitramfsSpec:
    return InitramfsSpec(
        kernel=kernel,
        compression=compression,
        source_date_epoch=SDE,
        image=ImageConfig(label="TESTLABEL", params=("overlayboot.toram",)),
        modules=("ext4", "isofs", "fuse"),
        hooks=hooks,
    )


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltInitramfs, BuiltInitramfs]:
    top = tmp_path_factory.mktemp("initramfs")
    kernel = fake_kernel(top / "kernel")
    hooks = top / "hooks"
    hooks.mkdir()
    (hooks / "10-test.sh").write_text("# a hook\n")
    first = build_initramfs(spec_for(kernel, hooks, Compression.GZIP), top / "a" / "initrd.img")
    second = build_initramfs(spec_for(kernel, hooks, Compression.GZIP), top / "b" / "initrd.img")
    return first, second


@pytest.fixture(scope="module")
def members(builds: tuple[BuiltInitramfs, BuiltInitramfs]) -> dict[str, Member]:
    return {m.name: m for m in read_cpio(builds[0].path)}


def test_two_builds_are_byte_identical(builds: tuple[BuiltInitramfs, BuiltInitramfs]) -> None:
    first, second = builds
    assert first.path.read_bytes() == second.path.read_bytes()
    assert not list(first.path.parent.glob("*.tmp"))


def test_init(members: dict[str, Member]) -> None:
    init = members["init"]
    assert init.kind is Kind.FILE and init.perms == 0o755
    assert init.data.startswith(b"#!/bin/sh\n")
    assert b"overlayboot.smoke" in init.data
    if shutil.which("busybox"):  # the script at least parses in the shell that runs it
        run(["busybox", "sh", "-n", "-c", init.data.decode()])


def test_busybox_and_applets(members: dict[str, Member]) -> None:
    assert members["bin/busybox"].perms == 0o755
    applets = run(["busybox", "--list-full"]).stdout.decode().split()
    for applet in ("bin/sh", "sbin/insmod", "bin/mount", "sbin/poweroff", "bin/cp"):
        assert applet in applets
        assert members[applet].kind is Kind.SYMLINK
        assert members[applet].target == "/bin/busybox"
    assert "linuxrc" not in members


def test_modules_in_load_order(members: dict[str, Member]) -> None:
    base = f"lib/modules/{VERSION}"
    load = members[str(MODULES_LOAD).lstrip("/")].data.decode().splitlines()
    names = [line.rsplit("/", 1)[-1] for line in load]
    assert names[-1] == "isofs.ko"
    assert names.index("jbd2.ko") < names.index("ext4.ko")
    assert names.index("crc16.ko") < names.index("ext4.ko")
    assert all(line.startswith(f"/{base}/") and line[1:] in members for line in load)
    assert f"{base}/kernel/drivers/unused/unused.ko" not in members
    dep = members[f"{base}/modules.dep"].data.decode()
    assert "unused" not in dep and "kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko " in dep
    assert ".xz" not in dep


def test_modules_are_stored_uncompressed(members: dict[str, Member]) -> None:
    """The packaged .ko.xz unpacked: busybox insmod hands the file to the kernel as it is."""
    ext4 = members[f"lib/modules/{VERSION}/kernel/fs/ext4/ext4.ko"].data
    assert ext4 == b"\x7fELF fake module ext4.ko.xz"
    assert not [name for name in members if name.endswith((".ko.xz", ".ko.zst", ".ko.gz"))]


def test_runtime_hooks_and_config(members: dict[str, Member]) -> None:
    rt = str(RUNTIME_DIR).lstrip("/")
    for rel in ("python", "overlayboot", "bin/python3.11", "lib/python311.zip"):
        assert f"{rt}/{rel}" in members, rel
    assert members[f"{rt}/python"].perms == 0o755
    assert f"{str(HOOKS_DIR).lstrip('/')}/10-test.sh" in members
    conf = members[str(IMAGE_CONF).lstrip("/")].data.decode()
    assert "OVERLAYBOOT_LABEL=TESTLABEL\n" in conf
    assert "OVERLAYBOOT_PARAMS=overlayboot.toram\n" in conf
    assert "OVERLAYBOOT_RUNTIME_RUN=/run/overlayboot/runtime\n" in conf
    assert "OVERLAYBOOT_BUILTIN_MODULES=fuse\n" in conf
    sizes = runtime_sizes_in((m.name, len(m.data)) for m in members.values())
    assert sizes.get("interpreter") > 0 and sizes.get("zip") > 0


def test_devices_dirs_and_owners(members: dict[str, Member]) -> None:
    console, null = members["dev/console"], members["dev/null"]
    assert console.kind is Kind.CHAR and (console.rdevmajor, console.rdevminor) == (5, 1)
    assert null.kind is Kind.CHAR and (null.rdevmajor, null.rdevminor) == (1, 3)
    for d in ("proc", "sys", "run", "tmp", "dev"):
        assert members[d].kind is Kind.DIR
    assert members["tmp"].perms == 0o1777
    assert "etc/mtab" not in members
    assert {(m.uid, m.gid) for m in members.values()} == {(0, 0)}
    assert {m.mtime for m in members.values()} == {SDE}


def test_compression_checked_against_the_kernel(tmp_path: Path) -> None:
    kernel = fake_kernel(tmp_path / "k", config="CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\n")
    dest = tmp_path / "initrd.img"
    with pytest.raises(UnsupportedCompressionError, match="zstd"):
        build_initramfs(spec_for(kernel, tmp_path, Compression.ZSTD), dest)
    assert not dest.exists()


def test_bad_label() -> None:
    with pytest.raises(UsageError):
        ImageConfig(label="has space")
