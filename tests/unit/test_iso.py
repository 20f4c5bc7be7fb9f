"""The hybrid ISO: label, El Torito BIOS and UEFI, MBR, layout, checksums, menu, reproducibility."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from mkimage import mbr
from mkimage.grub import Menu, MenuEntry, grub_cfg, modification_date, volume_uuid
from mkimage.iso import BuiltIso, IsoError, build_iso
from overlayboot.cli import cli
from overlayboot.errors import UsageError
from overlayboot.run import run
from tests.unit.conftest import IsoInputs, fake_initramfs


def xorriso_report(iso: Path) -> str:
    proc = run(
        ["xorriso", "-indev", str(iso), "-report_el_torito", "plain", "-report_system_area",
         "plain", "-pvd_info"]
    )  # fmt: skip
    return proc.stdout.decode() + proc.stderr.decode()


def extract(iso: Path, path: str, dest: Path) -> bytes:
    run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", path, str(dest)])
    return dest.read_bytes()


def test_label_and_el_torito_bios_and_uefi(iso_image: BuiltIso) -> None:
    report = xorriso_report(iso_image.path)
    assert re.search(r"Volume [Ii]d\s*:\s*'?OVERLAYBOOT'?", report), report
    assert re.search(r"El Torito boot img :\s+1\s+BIOS\s+y\s+none", report), report
    assert re.search(r"El Torito boot img :\s+2\s+UEFI\s+y\s+none", report), report
    assert "/boot/grub/i386-pc/eltorito.img" in report
    assert "MBR grub2-mbr" in report


def test_mbr_iso_and_esp_with_free_slots(iso_image: BuiltIso) -> None:
    with open(iso_image.path, "rb") as f:
        parts = mbr.read_table(f.read(512))
    assert [(p.slot, p.type) for p in parts] == [(1, 0xCD), (2, 0xEF)]
    assert parts[0].bootable and parts[0].start == 64
    assert parts[1].end * 512 <= iso_image.size
    assert mbr.free_slot(parts) == 3


def test_layout_checksums_and_menu(
    iso_image: BuiltIso, iso_inputs: IsoInputs, tmp_path: Path
) -> None:
    listing = run(["xorriso", "-indev", str(iso_image.path), "-find", "/", "-type", "f"])
    files = set(re.findall(r"'(/[^']*)'", listing.stdout.decode()))
    for path in ("/boot/vmlinuz", "/boot/initramfs.img", "/live/filesystem.squashfs",
                 "/SHA256SUMS", "/boot/grub/grub.cfg", "/boot/grub/i386-pc/normal.mod",
                 "/boot/grub/x86_64-efi/normal.mod"):  # fmt: skip
        assert path in files, path
    sums = extract(iso_image.path, "/SHA256SUMS", tmp_path / "sums").decode()
    expected = {
        "boot/vmlinuz": iso_inputs.kernel,
        "boot/initramfs.img": iso_inputs.initramfs,
        "live/filesystem.squashfs": iso_inputs.squashfs,
    }
    assert sums == "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {n}\n" for n, p in sorted(expected.items())
    )
    squashfs = extract(iso_image.path, "/live/filesystem.squashfs", tmp_path / "sq")
    assert squashfs == iso_inputs.squashfs.read_bytes()
    cfg = extract(iso_image.path, "/boot/grub/grub.cfg", tmp_path / "cfg").decode()
    assert cfg == grub_cfg(Menu(timeout=1))


def test_grub_cfg_entries() -> None:
    menu = Menu(timeout=0, params=("quiet",), extra=(MenuEntry("smoke", ("overlayboot.smoke",)),))
    cfg = grub_cfg(menu)
    assert "serial --unit=0 --speed=115200" in cfg
    assert "terminal_input serial console" in cfg and "terminal_output serial console" in cfg
    assert "set timeout=0" in cfg
    linux = [ln.strip() for ln in cfg.splitlines() if ln.strip().startswith("linux ")]
    assert linux == [
        "linux /boot/vmlinuz console=tty0 console=ttyS0,115200 quiet",
        "linux /boot/vmlinuz console=tty0 console=ttyS0,115200 quiet overlayboot.toram",
        "linux /boot/vmlinuz console=tty0 console=ttyS0,115200 quiet "
        "overlayboot.upper=LABEL=overlayboot-rw",
        "linux /boot/vmlinuz console=tty0 console=ttyS0,115200 quiet overlayboot.debug",
        "linux /boot/vmlinuz console=tty0 console=ttyS0,115200 quiet overlayboot.break",
        "linux /boot/vmlinuz console=tty0 console=ttyS0,115200 quiet overlayboot.smoke",
    ]
    assert cfg.count("initrd /boot/initramfs.img") == 6
    assert "serial" not in grub_cfg(Menu(serial=False))
    assert volume_uuid(0) == "1970-01-01-00-00-00-00"
    assert modification_date(1_690_000_000) == "2023072204264000"


def test_two_builds_are_byte_identical(
    iso_image: BuiltIso, iso_inputs: IsoInputs, tmp_path: Path
) -> None:
    import os

    os.utime(iso_inputs.squashfs, (1, 1))  # input times do not matter
    again = build_iso(iso_inputs.spec(), tmp_path / "again.iso", progress=False)
    assert again.path.read_bytes() == iso_image.path.read_bytes()


def test_label_must_match_the_initramfs(iso_inputs: IsoInputs, tmp_path: Path) -> None:
    spec = iso_inputs.spec(Menu(label="OTHER"))
    with pytest.raises(UsageError, match="looks for the label 'OVERLAYBOOT'"):
        build_iso(spec, tmp_path / "x.iso", progress=False)
    other = fake_initramfs(tmp_path / "other.img", "OTHER")
    built = build_iso(replace(spec, initramfs=other), tmp_path / "y.iso", progress=False)
    assert "'OTHER'" in xorriso_report(built.path)
    assert not (tmp_path / "x.iso").exists()


def test_missing_inputs(iso_inputs: IsoInputs, tmp_path: Path) -> None:
    spec = replace(iso_inputs.spec(), squashfs=tmp_path / "none.squashfs")
    with pytest.raises(IsoError, match=r"squashfs .* does not exist") as err:
        build_iso(spec, tmp_path / "x.iso", progress=False)
    assert err.value.line().endswith("(run: overlayboot build squashfs ROOTDIR)")
    notsq = tmp_path / "not.squashfs"
    notsq.write_bytes(b"junk")
    with pytest.raises(IsoError, match="not a squashfs image"):
        build_iso(replace(spec, squashfs=notsq), tmp_path / "x.iso", progress=False)
    assert not (tmp_path / "x.iso").exists()


def test_cli(iso_inputs: IsoInputs, tmp_path: Path) -> None:
    out = tmp_path / "cli.iso"
    args = ["build", "iso", "-o", str(out), "--kernel-image", str(iso_inputs.kernel),
            "--initramfs", str(iso_inputs.initramfs), "--squashfs", str(iso_inputs.squashfs),
            "--timeout", "0", "--source-date-epoch", "1690000000"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "label OVERLAYBOOT" in res.output
    res = CliRunner().invoke(cli, [*args, "--label", "bad label!"])
    assert res.exit_code == 2
    assert res.output.startswith("overlayboot: error: bad medium label")
