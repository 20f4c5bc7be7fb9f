"""``overlayboot build all``: every step, timed, under one output directory (slow: ~20 s)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mkimage import mbr
from overlayboot.cli import cli
from overlayboot.run import run

pytestmark = pytest.mark.slow


def test_build_all_with_a_config(tmp_path: Path) -> None:
    if shutil.which("apt-get") is None:
        pytest.skip("needs apt-get for the kernel")
    (tmp_path / "motd").write_text("hello from image.toml\n")
    (tmp_path / "image.toml").write_text(
        'label = "TESTLIVE"\noutput = "out"\n'
        '[rootfs]\nextra_files = { "/etc/motd" = "motd" }\n'
        '[boot]\ntimeout = 1\n[usb]\npersistence_size = "32M"\n'
    )
    res = CliRunner().invoke(cli, ["build", "all", "--config", str(tmp_path / "image.toml")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    for name in ("filesystem.squashfs", "initramfs.img", "overlayboot.iso", "overlayboot-usb.img"):
        assert (out / name).is_file(), name
    assert (out / "rootfs/etc/motd").read_text() == "hello from image.toml\n"
    for step in ("[1/6] kernel", "[3/6] squashfs", "[6/6] usb", "total "):
        assert step in res.output
    # the default kernel is Debian's signed one, so the EFI partition holds the signed chain
    with open(out / "overlayboot.iso", "rb") as f:
        esp = mbr.read_table(f.read(mbr.SECTOR))[1]
    image = f"-i{out / 'overlayboot.iso'}@@{esp.start * mbr.SECTOR}"
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    listing = run(["mdir", "-/", "-b", image, "::/EFI/BOOT"], env=env).stdout.decode()
    assert "BOOTX64.EFI" in listing and "grubx64.efi" in listing, listing
