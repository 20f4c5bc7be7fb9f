"""The built initramfs boots the Debian kernel under QEMU and its Python imports pyfuse3, trio."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from tests.qemu.harness import Vm, VmConfig

pytestmark = pytest.mark.qemu

MARKER = r"OVERLAYBOOT-SMOKE: python (ok|FAILED)"


def test_smoke_boot_imports_pyfuse3_and_trio(
    kernel: Kernel, initramfs: BuiltInitramfs, record_property: Callable[[str, object], None]
) -> None:
    config = VmConfig(kernel=kernel.image, initrd=initramfs.path, append=("overlayboot.smoke",))
    with Vm(config) as vm:
        line = vm.wait_for(MARKER, timeout=180)
        assert line.text.startswith("OVERLAYBOOT-SMOKE: python ok pyfuse3 3."), vm.tail()
        assert " trio " in line.text
        modules = vm.wait_for(r"overlayboot: modules: ", timeout=1)
        assert " 0 failed" in modules.text, vm.log()
        vm.wait_exit(timeout=60)  # poweroff -f, and -no-reboot ends QEMU
    record_property("seconds_to_marker", round(line.at, 2))
    record_property("initramfs_bytes", initramfs.size)
    print(f"smoke boot: marker after {line.at:.1f} s; initramfs {initramfs.size:,d} bytes")
