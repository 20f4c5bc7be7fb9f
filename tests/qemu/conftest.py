"""Fixtures for boots: the fetched default kernel and an initramfs built from this tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkimage.cpio import Compression
from mkimage.initramfs import BuiltInitramfs, InitramfsSpec, build_initramfs
from mkimage.kernel import Kernel, fetch_kernel
from tests.qemu.harness import qemu_available


@pytest.fixture(scope="session")
def kernel() -> Kernel:
    if not qemu_available():
        pytest.skip("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")
    return fetch_kernel()


@pytest.fixture(scope="session")
def initramfs(kernel: Kernel, tmp_path_factory: pytest.TempPathFactory) -> BuiltInitramfs:
    dest: Path = tmp_path_factory.mktemp("initramfs") / "initramfs.img"
    return build_initramfs(InitramfsSpec(kernel=kernel, compression=Compression.ZSTD), dest)
