"""Secure Boot without a VM: PE signatures, which kernel package, the mode, the EFI image.

The boots themselves are tests/qemu/test_secureboot.py; here the PE reader runs on
synthetic images, the chain on stand-in files (no download), the EFI image is built with
the real tools (mformat, mcopy) and read back with mtools.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from mkimage import grub
from mkimage.config import spec_from_dict
from mkimage.kernel import package_pattern
from mkimage.secureboot import Mode, SignedBoot, cert_table, pe_signed, resolve
from overlayboot.cli import cli
from overlayboot.errors import UsageError
from overlayboot.run import run
from tests.unit.conftest import EPOCH, IsoInputs, need_tools


def pe_image(path: Path, *, signed: bool, pe32plus: bool = True) -> Path:
    """A minimal PE header: MZ, the PE signature, COFF, an optional header with its data
    directories; with ``signed`` a certificate table after the headers."""
    opt = bytearray(240 if pe32plus else 224)
    struct.pack_into("<H", opt, 0, 0x20B if pe32plus else 0x10B)
    cert = 0x400
    if signed:
        dirs = 112 if pe32plus else 96
        struct.pack_into("<II", opt, dirs + 8 * 4, cert, 16)
    head = bytearray(0x80)
    head[:2] = b"MZ"
    struct.pack_into("<I", head, 0x3C, 0x80)
    coff = struct.pack("<HHIIIHH", 0x8664, 0, 0, 0, 0, len(opt), 0x22)
    data = bytes(head) + b"PE\0\0" + coff + bytes(opt)
    data = data.ljust(cert, b"\0") + (b"\x10\0\0\0\0\x02\x02\0" + bytes(8) if signed else b"")
    path.write_bytes(data)
    return path


def test_pe_signature(tmp_path: Path) -> None:
    assert pe_signed(pe_image(tmp_path / "signed.efi", signed=True))
    assert pe_signed(pe_image(tmp_path / "signed32.efi", signed=True, pe32plus=False))
    unsigned = pe_image(tmp_path / "unsigned.efi", signed=False)
    assert not pe_signed(unsigned)
    table = cert_table(unsigned)
    assert table is not None and (table.offset, table.size) == (0, 0)
    (tmp_path / "text").write_text("not a PE image at all\n" * 10)
    (tmp_path / "mz").write_bytes(b"MZ" + bytes(100))
    for name in ("text", "mz"):
        assert cert_table(tmp_path / name) is None
        assert not pe_signed(tmp_path / name)


def test_kernel_package_names() -> None:
    signed = re.compile(package_pattern("6.12"))
    unsigned = re.compile(package_pattern("6.12", signed=False))
    assert signed.search("linux-image-6.12.118+deb12-amd64")
    assert unsigned.search("linux-image-6.12.118+deb12-amd64-unsigned")
    assert re.search(package_pattern("6.1"), "linux-image-6.1.0-41-amd64")
    for other in ("linux-image-6.12.118+deb12-cloud-amd64", "linux-image-6.12.118+deb12-rt-amd64",
                  "linux-image-6.12.118+deb12-amd64-dbg", "linux-image-6.12-amd64",
                  "linux-image-6.12.118+deb12-amd64-unsigned"):  # fmt: skip
        assert not signed.search(other), other
    assert not unsigned.search("linux-image-6.12.118+deb12-amd64")
    exact = package_pattern("6.12.118+deb12")
    assert re.search(exact, "linux-image-6.12.118+deb12-amd64")


def test_mode_against_the_kernel(tmp_path: Path) -> None:
    unsigned = pe_image(tmp_path / "vmlinuz", signed=False)
    assert resolve(Mode.OFF, unsigned, tmp_path) is None
    assert resolve(Mode.AUTO, unsigned, tmp_path) is None  # plain GRUB, nothing fetched
    with pytest.raises(UsageError, match="is not signed"):
        resolve(Mode.ON, unsigned, tmp_path)
    assert not (tmp_path / "secureboot").exists()
    assert spec_from_dict({"boot": {"secure_boot": "on"}}).secure_boot == "on"
    assert spec_from_dict({}).secure_boot == "auto"
    with pytest.raises(
        UsageError, match=re.escape("boot.secure_boot = 'yes' is not one of auto, on, off")
    ):
        spec_from_dict({"boot": {"secure_boot": "yes"}})


def mtools(*args: str) -> str:
    return run(list(args), env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}).stdout.decode()


def test_efi_image_with_the_signed_chain(tmp_path: Path) -> None:
    need_tools("grub-mkimage", "mformat", "mcopy", "mdir")
    shim = tmp_path / "shim"
    shim.write_bytes(b"shim" * 300_000)  # 1.2 MB: the image grows past its 4 MiB default
    gcd = tmp_path / "gcd"
    gcd.write_bytes(b"grub" * 900_000)
    tree, work = tmp_path / "tree", tmp_path / "work"
    tree.mkdir()
    work.mkdir()
    chain = SignedBoot(shim, gcd, ("1", "2"))
    efi = grub.stage_grub(tree, work, grub.Menu(), EPOCH, chain)
    assert efi.stat().st_size == 6 << 20  # 4.8 MB + 512 KiB, rounded up to MiB
    img = f"-i{efi}"
    assert mtools("mtype", img, "::/EFI/BOOT/BOOTX64.EFI").encode() == shim.read_bytes()
    assert mtools("mtype", img, "::/EFI/BOOT/grubx64.efi").encode() == gcd.read_bytes()
    redirect = mtools("mtype", img, "::/boot/grub/grub.cfg")
    assert f"--fs-uuid --set=root {grub.volume_uuid(EPOCH)}\n" in redirect
    assert "source $prefix/grub.cfg" in redirect
    assert (tree / "boot/grub/grub.cfg").is_file()
    plain = grub.stage_grub(tree, tmp_path, grub.Menu(), EPOCH)
    assert plain.stat().st_size == grub.EFI_IMAGE_KIB << 10
    listing = mtools("mdir", "-/", "-b", f"-i{plain}", "::/")
    assert "grubx64.efi" not in listing and "BOOTX64.EFI" in listing


def test_cli_refuses_secure_boot_with_an_unsigned_kernel(
    iso_inputs: IsoInputs, tmp_path: Path
) -> None:
    args = ["build", "iso", "-o", str(tmp_path / "sb.iso"), "--kernel-image",
            str(iso_inputs.kernel), "--initramfs", str(iso_inputs.initramfs), "--squashfs",
            str(iso_inputs.squashfs), "--secure-boot", "on"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert res.output.startswith("overlayboot: error: the kernel ")
    assert "is not signed" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "sb.iso").exists()
