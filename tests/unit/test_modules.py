"""The kernel-module closure from modules.dep, on a fake modules tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkimage.kernel import Kernel, KernelError
from mkimage.modules import module_name, parse_dep, resolve, resolve_extra

DEP = """\
kernel/fs/fuse/fuse.ko.xz:
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz kernel/lib/crc16.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/drivers/scsi/sr_mod.ko: kernel/drivers/cdrom/cdrom.ko kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/cdrom/cdrom.ko:
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/fs/nls/nls_iso8859-1.ko:
"""


def fake_kernel(tmp: Path, builtin: str = "kernel/fs/squashfs/squashfs.ko\n") -> Kernel:
    mods = tmp / "lib/modules/6.0.0-test"
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text(DEP)
    (mods / "modules.builtin").write_text(builtin)
    return Kernel("6.0.0-test", tmp / "vmlinuz", mods, None)


def test_module_name() -> None:
    assert module_name("kernel/fs/nls/nls_iso8859-1.ko.xz") == "nls_iso8859_1"
    assert module_name("a/usb-storage.ko") == "usb_storage"


def test_parse_dep() -> None:
    table = parse_dep(DEP)
    assert table["ext4"][1] == [
        "kernel/fs/jbd2/jbd2.ko.xz",
        "kernel/fs/mbcache.ko.xz",
        "kernel/lib/crc16.ko.xz",
    ]


def test_closure_in_load_order(tmp_path: Path) -> None:
    ms = resolve(fake_kernel(tmp_path), ("sr_mod", "ext4", "squashfs", "nls_iso8859-1"))
    files = list(ms.files)
    assert set(files) == {
        "kernel/drivers/scsi/sr_mod.ko",
        "kernel/drivers/cdrom/cdrom.ko",
        "kernel/drivers/scsi/scsi_mod.ko",
        "kernel/drivers/scsi/scsi_common.ko",
        "kernel/fs/ext4/ext4.ko.xz",
        "kernel/fs/jbd2/jbd2.ko.xz",
        "kernel/fs/mbcache.ko.xz",
        "kernel/lib/crc16.ko.xz",
        "kernel/fs/nls/nls_iso8859-1.ko",
    }
    for mod, deps in (
        ("kernel/drivers/scsi/sr_mod.ko", ["kernel/drivers/scsi/scsi_mod.ko"]),
        ("kernel/drivers/scsi/scsi_mod.ko", ["kernel/drivers/scsi/scsi_common.ko"]),
        ("kernel/fs/ext4/ext4.ko.xz", ["kernel/fs/jbd2/jbd2.ko.xz", "kernel/lib/crc16.ko.xz"]),
    ):
        for dep in deps:
            assert files.index(dep) < files.index(mod)
    assert ms.builtin == ("squashfs",)


def test_missing_module_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="lacks modules the boot needs: isofs"):
        resolve(fake_kernel(tmp_path), ("fuse", "isofs"))


def test_optional_module_may_be_missing(tmp_path: Path) -> None:
    assert resolve(fake_kernel(tmp_path), ("fuse", "uhci_hcd")).files == (
        "kernel/fs/fuse/fuse.ko.xz",
    )


def test_extra_load_list_leaves_out_what_the_boot_has(tmp_path: Path) -> None:
    """The network boot's list: its closure less the boot's modules; absent ones skipped."""
    kernel = fake_kernel(tmp_path)
    boot = resolve(kernel, ("sr_mod",))
    extra = resolve_extra(kernel, ("ext4", "scsi_common", "virtio_net", "squashfs"), boot)
    assert extra.files == (
        "kernel/fs/jbd2/jbd2.ko.xz",
        "kernel/fs/mbcache.ko.xz",
        "kernel/lib/crc16.ko.xz",
        "kernel/fs/ext4/ext4.ko.xz",
    )
    assert extra.builtin == ("squashfs",)
