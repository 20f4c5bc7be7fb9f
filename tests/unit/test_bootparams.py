"""live-boot's, archiso's and dracut's boot parameters, tested without a VM (as dracut's
TEST-98 tests its own command-line parsing): each either becomes overlayboot's own or
gives one warning; none is ignored silently."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from overlayboot.bootparams import RULES, translate
from overlayboot.cmdline import (
    DEFAULT_IMAGE,
    BootConfig,
    CmdlineError,
    DeviceSpec,
    parse_cmdline,
    split_cmdline,
    to_shell,
)

README = Path(__file__).resolve().parents[2] / "README.md"
BASE = parse_cmdline("")


def test_live_boot_typical_line() -> None:
    cfg = parse_cmdline(
        "boot=live findiso=/isos/debian-live.iso toram persistence persistence-label=mine "
        "verify-checksums quiet splash"
    )
    assert cfg == BootConfig(
        medium=None,  # findiso with no medium named: every disk is searched
        findiso="/isos/debian-live.iso",
        toram=True,
        upper=DeviceSpec("name", "mine"),  # a partition labelled mine, else a file /mine
        check=True,
    )
    assert cfg.image == DEFAULT_IMAGE


def test_live_boot_medium_and_path() -> None:
    cfg = parse_cmdline("boot=live live-media=/dev/sdb1 live-media-path=/custom findiso=x.iso")
    assert cfg.medium == DeviceSpec("path", "/dev/sdb1") and cfg.findiso == "/x.iso"
    assert cfg.image == "/custom/filesystem.squashfs"
    assert parse_cmdline("boot=live live-media=removable").medium is None
    assert parse_cmdline("boot=live persistence").upper == DeviceSpec("name", "persistence")
    assert parse_cmdline("boot=live persistence nopersistence").upper is None


def test_archiso_typical_line() -> None:
    cfg = parse_cmdline(
        "archisobasedir=arch archisolabel=ARCH_202401 copytoram cow_label=cow "
        "cow_directory=persistent/x86_64 cow_spacesize=1G checksum=y"
    )
    assert cfg == BootConfig(
        medium=DeviceSpec("label", "ARCH_202401"),
        image="/arch/x86_64/airootfs.sfs",
        toram=True,
        upper=DeviceSpec("label", "cow"),
        upper_dir="persistent/x86_64",
        upper_size="1G",
        check=True,
    )


def test_archiso_iso_in_a_file_and_copytoram_forms() -> None:
    cfg = parse_cmdline("img_dev=/dev/nvme0n1p2 img_loop=/isos/arch.iso archisobasedir=a")
    assert cfg.medium == DeviceSpec("path", "/dev/nvme0n1p2") and cfg.findiso == "/isos/arch.iso"
    assert cfg.image == "/a/x86_64/airootfs.sfs"
    assert not parse_cmdline("archisolabel=X copytoram=n").toram
    auto = parse_cmdline("archisolabel=X copytoram=auto")
    assert not auto.toram and auto.warnings == (
        "copytoram=auto (archiso) is not supported: "
        "copytoram=y copies the image to RAM, else it stays",
    )
    assert parse_cmdline("archisosearchuuid=2024-01-01-00-00-00-00").medium == DeviceSpec(
        "uuid", "2024-01-01-00-00-00-00"
    )


def test_dracut_typical_line() -> None:
    cfg = parse_cmdline(
        "root=live:CDLABEL=Fedora-WS-Live-40 rd.live.image rd.live.check quiet rhgb"
    )
    assert cfg == BootConfig(
        medium=DeviceSpec("label", "Fedora-WS-Live-40"), image="/LiveOS/squashfs.img", check=True
    )
    # root=live: alone is a dracut line too
    assert parse_cmdline("root=live:LABEL=x").image == "/LiveOS/squashfs.img"


def test_dracut_dir_image_overlay_and_iso_scan() -> None:
    cfg = parse_cmdline(
        "root=live:LABEL=L rd.live.dir=/live rd.live.squashimg=root.img rd.live.ram=1 "
        "rd.live.overlay=LABEL=persist:/overlay rd.live.overlay.size=4096 rd.live.debug"
    )
    assert cfg.image == "/live/root.img" and cfg.toram and cfg.debug
    assert cfg.upper == DeviceSpec("label", "persist") and cfg.upper_dir == "overlay"
    assert cfg.upper_size == "4096M"
    assert parse_cmdline("rd.live.squashimg=/abs/x.img").image == "/abs/x.img"
    assert parse_cmdline("rd.live.overlay=LABEL=p rd.live.overlay=none").upper is None
    iso = parse_cmdline("rd.live.image iso-scan/filename=/isos/Fedora.iso")
    assert iso.medium is None and iso.findiso == "/isos/Fedora.iso"
    named = parse_cmdline("root=live:LABEL=store iso-scan/filename=/isos/Fedora.iso")
    assert named.medium == DeviceSpec("label", "store")


def test_overlayboot_own_parameters_win() -> None:
    cfg = parse_cmdline("root=live:LABEL=x rd.live.image overlayboot.image=/mine.sfs")
    assert cfg.image == "/mine.sfs"
    cfg = parse_cmdline("overlayboot.image=/mine.sfs archisolabel=X")
    assert cfg.image == "/mine.sfs"
    # a baked-in medium label does not count as a medium named on the command line
    cfg = parse_cmdline("findiso=/a.iso", {"medium": "LABEL=BAKED"})
    assert cfg.medium is None
    cfg = parse_cmdline("overlayboot.findiso=/a.iso overlayboot.medium=LABEL=S")
    assert cfg.medium == DeviceSpec("label", "S")


def test_not_a_live_boot_line() -> None:
    assert parse_cmdline("boot=casper") == BASE
    assert translate([("ro", None), ("boot", "casper")]).tools == frozenset()


# one command line per parameter of the table, in the form people type it
SAMPLES: dict[str, str] = {
    "boot": "boot=live",
    "findiso": "findiso=/live.iso",
    "toram": "toram",
    "live-media": "live-media=/dev/sdb1",
    "bootfrom": "bootfrom=LABEL=stick",
    "live-media-path": "live-media-path=/casper",
    "persistence": "persistence",
    "persistence-label": "persistence persistence-label=p",
    "nopersistence": "overlayboot.upper=LABEL=x nopersistence",
    "persistence-read-only": "persistence persistence-read-only",
    "persistence-encryption": "persistence persistence-encryption=luks",
    "persistence-path": "persistence persistence-path=/p",
    "verify-checksums": "verify-checksums",
    "union": "union=aufs",
    "archisolabel": "archisolabel=ARCH",
    "archisodevice": "archisodevice=/dev/sr0",
    "archisosearchuuid": "archisosearchuuid=1234",
    "archisobasedir": "archisobasedir=arch",
    "copytoram": "copytoram",
    "copytoram_size": "archisolabel=A copytoram_size=2G",
    "cow_label": "cow_label=cow",
    "cow_device": "cow_device=/dev/sda3",
    "cow_directory": "cow_label=cow cow_directory=persistent",
    "cow_spacesize": "cow_spacesize=1G",
    "checksum": "checksum",
    "verify": "archisolabel=A verify=y",
    "img_dev": "img_dev=/dev/sdb2",
    "img_label": "img_label=STORE",
    "img_loop": "img_loop=/arch.iso",
    "rd.live.image": "rd.live.image",
    "rd.live.dir": "rd.live.dir=images",
    "rd.live.squashimg": "rd.live.squashimg=root.img",
    "rd.live.ram": "rd.live.ram",
    "rd.live.overlay": "rd.live.overlay=LABEL=persist",
    "rd.live.overlay.size": "rd.live.overlay.size=512",
    "rd.live.overlay.overlayfs": "rd.live.overlay.overlayfs",
    "rd.live.overlay.readonly": "rd.live.overlay=LABEL=p rd.live.overlay.readonly",
    "rd.live.overlay.reset": "rd.live.overlay=LABEL=p rd.live.overlay.reset",
    "rd.live.check": "rd.live.check",
    "rd.live.debug": "rd.live.debug",
    "iso-scan/filename": "iso-scan/filename=/f.iso",
    "rd.writable.fsimg": "rd.live.image rd.writable.fsimg",
}
# "a live boot", "a LUKS persistence": what overlayboot does anyway
ACCEPTED_AS_IS = {"boot", "persistence-encryption"}


def test_every_parameter_has_a_sample() -> None:
    assert set(SAMPLES) == set(RULES)


@pytest.mark.parametrize("key", sorted(RULES))
def test_no_parameter_is_silently_ignored(key: str) -> None:
    """Each parameter changes the configuration, or warns (one line), as the table says."""
    line = SAMPLES[key]
    cfg = parse_cmdline(line)
    without = " ".join(w for w in line.split() if w.split("=")[0] != key)
    changed = replace(cfg, warnings=()) != parse_cmdline(without)
    assert bool(cfg.warnings) == RULES[key].does.startswith("WARNING") or key == "union"
    if cfg.warnings:
        assert not changed and len(cfg.warnings) == 1, cfg
        assert cfg.warnings[0].startswith(
            f"{line.split()[-1]} ({RULES[key].tool}) is not supported: "
        )
    elif key in ACCEPTED_AS_IS:
        assert not changed and not cfg.warnings
        assert translate(split_cmdline(line)).tools == {RULES[key].tool}
    else:
        assert changed and not cfg.warnings, cfg


def test_union_overlay_is_accepted() -> None:
    assert parse_cmdline("boot=live union=overlay") == BASE


def test_errors_name_the_parameter_as_typed() -> None:
    with pytest.raises(CmdlineError, match=r"^rd\.live\.overlay=sdb1: overlayboot\.upper="):
        parse_cmdline("rd.live.overlay=sdb1")
    with pytest.raises(CmdlineError, match=r"^cow_spacesize=lots: "):
        parse_cmdline("cow_spacesize=lots")
    with pytest.raises(CmdlineError, match=r"^live-media=sdb: "):
        parse_cmdline("live-media=sdb")


def test_warning_reaches_the_console_as_one_line() -> None:
    script = to_shell(parse_cmdline("boot=live persistence persistence-encryption=plain"))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stderr.splitlines() == [
        "WARNING: overlayboot: persistence-encryption=plain (live-boot) is not supported: "
        "a persistence is plain or LUKS, recognised"
    ]


def test_persistence_modes() -> None:
    cfg = parse_cmdline("boot=live persistence persistence-read-only")
    assert cfg.upper == DeviceSpec("name", "persistence") and cfg.upper_readonly
    cfg = parse_cmdline("rd.live.overlay=/dev/sda1:/LiveOS/overlay.img rd.live.overlay.reset")
    assert cfg.upper == DeviceSpec("path", "/dev/sda1") and cfg.upper_reset
    assert cfg.upper_dir == "LiveOS/overlay.img"  # a file there is mounted (phase persistence)
    cfg = parse_cmdline("overlayboot.upper=name:mine overlayboot.upper.readonly=0")
    assert cfg.upper == DeviceSpec("name", "mine") and not cfg.upper_readonly
    with pytest.raises(CmdlineError):
        parse_cmdline("overlayboot.upper=name:a/b")


def test_readme_table_lists_every_parameter() -> None:
    text = README.read_text()
    start = text.index("## Other live systems' boot parameters")
    rows = re.findall(r"^\| `([^`=]+)[^|]*\| ([a-z-]+) \|", text[start:], re.MULTILINE)
    assert {key: tool for key, tool in rows} == {k: r.tool for k, r in RULES.items()}


def test_layers() -> None:
    cfg = parse_cmdline("overlayboot.layers=extra.squashfs,/live/top.squashfs")
    assert cfg.layers == ("extra.squashfs", "/live/top.squashfs")
    assert "OB_LAYERS='extra.squashfs /live/top.squashfs'" in to_shell(cfg)
    with pytest.raises(CmdlineError, match="bad image name"):
        parse_cmdline("overlayboot.layers=../up.squashfs")
