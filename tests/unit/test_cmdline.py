"""Kernel command-line parsing, tested without a VM."""

from __future__ import annotations

import subprocess
import sys

import pytest

from overlayboot.cmdline import (
    DEFAULT_IMAGE,
    BootConfig,
    CmdlineError,
    DeviceSpec,
    parse_cmdline,
    split_cmdline,
    to_shell,
)


def test_split_like_the_kernel() -> None:
    assert split_cmdline('ro quiet foo="a b" x= -- init args') == [
        ("ro", None),
        ("quiet", None),
        ("foo", "a b"),
        ("x", ""),
    ]


def test_defaults() -> None:
    cfg = parse_cmdline("console=ttyS0 quiet")
    assert cfg.medium == DeviceSpec("label", "OVERLAYBOOT")
    assert cfg.image == DEFAULT_IMAGE and cfg.upper is None and cfg.overlay == "fuse"
    assert cfg.upper_size == "50%" and cfg.init == "/sbin/init" and not cfg.toram


def test_baked_defaults_are_overridden_by_cmdline() -> None:
    cfg = parse_cmdline("overlayboot.medium=LABEL=OTHER", {"medium": "LABEL=BAKED", "timeout": "9"})
    assert cfg.medium == DeviceSpec("label", "OTHER") and cfg.timeout == 9


def test_all_overlayboot_parameters() -> None:
    cfg = parse_cmdline(
        "overlayboot.medium=UUID=1234-ABCD overlayboot.image=img/root.sfs "
        "overlayboot.findiso=/isos/live.iso overlayboot.upper=LABEL=overlayboot-rw:images/a "
        "overlayboot.upper.size=2G overlayboot.toram overlayboot.overlay=kernel "
        "overlayboot.break=upper,2 overlayboot.debug init=/bin/sh overlayboot.timeout=5 "
        "overlayboot.onerror=poweroff"
    )
    assert cfg == BootConfig(
        medium=DeviceSpec("uuid", "1234-ABCD"),
        image="/img/root.sfs",
        findiso="/isos/live.iso",
        upper=DeviceSpec("label", "overlayboot-rw"),
        upper_dir="images/a",
        upper_size="2G",
        toram=True,
        overlay="kernel",
        breaks=frozenset({"upper", "medium"}),
        debug=True,
        init="/bin/sh",
        timeout=5,
        onerror="poweroff",
    )


def test_dracut_forms() -> None:
    cfg = parse_cmdline(
        "root=live:CDLABEL=Fedora-Live rd.live.image rd.live.squashimg=squashfs.img "
        "rd.live.ram=1 rd.live.overlay=LABEL=persist:/overlay rd.live.overlay.size=4096"
    )
    assert cfg.medium == DeviceSpec("label", "Fedora-Live")
    assert cfg.image == "/LiveOS/squashfs.img" and cfg.toram
    assert cfg.upper == DeviceSpec("label", "persist") and cfg.upper_dir == "overlay"
    assert cfg.upper_size == "4096M"
    assert parse_cmdline("root=live:/dev/sr0").medium == DeviceSpec("path", "/dev/sr0")


def test_upper_tmpfs_and_scan() -> None:
    cfg = parse_cmdline("overlayboot.upper=LABEL=x overlayboot.upper=tmpfs overlayboot.medium=scan")
    assert cfg.upper is None and cfg.medium is None


@pytest.mark.parametrize(
    "bad",
    [
        "overlayboot.overlay=zfs",
        "overlayboot.upper=sdb1",
        "overlayboot.upper.size=lots",
        "overlayboot.upper.size=150%",
        "overlayboot.break=nowhere",
        "overlayboot.timeout=0",
        "init=sbin/init",
        "overlayboot.medium=",
        "overlayboot.toram=maybe",
        "overlayboot.onerror=panic",
    ],
)
def test_bad_parameters(bad: str) -> None:
    with pytest.raises(CmdlineError):
        parse_cmdline(bad)


def test_unknown_parameter_warns() -> None:
    cfg = parse_cmdline("overlayboot.colour=blue")
    assert cfg.warnings == ("unknown parameter overlayboot.colour ignored",)


def test_shell_export_round_trips_through_sh() -> None:
    cfg = parse_cmdline("overlayboot.upper=LABEL=it's-mine overlayboot.break")
    script = to_shell(cfg) + 'printf "%s|%s|%s\\n" "$OB_UPPER" "$OB_UPPER_KIND" "$OB_BREAK"\n'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == "it's-mine|label|switch\n"


def test_main_reports_one_error_line() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "overlayboot.cmdline", "overlayboot.overlay=zfs"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and r.stdout == ""
    assert (
        r.stderr
        == "ERROR: bad kernel command line: overlayboot.overlay='zfs' (use fuse, kernel or block)\n"
    )


def test_block_mode_defaults_to_an_ext4_image() -> None:
    from overlayboot.cmdline import DEFAULT_BLOCK_IMAGE

    assert parse_cmdline("overlayboot.overlay=block").image == DEFAULT_BLOCK_IMAGE
    cfg = parse_cmdline("overlayboot.overlay=block overlayboot.image=/live/root.img")
    assert (cfg.overlay, cfg.image) == ("block", "/live/root.img")


def test_block_chunk_size() -> None:
    cfg = parse_cmdline("overlayboot.overlay=block overlayboot.block.chunk=16K")
    assert cfg.block_chunk == "16384" and "OB_BLOCK_CHUNK=16384" in to_shell(cfg)
    assert parse_cmdline("overlayboot.block.chunk=1m").block_chunk == str(1 << 20)
    assert "OB_BLOCK_CHUNK=''" in to_shell(parse_cmdline("overlayboot.overlay=block"))
    for bad in ("3K", "2K", "2M", "64KB", "x"):
        with pytest.raises(CmdlineError, match="not a power of two from 4K to 1M"):
            parse_cmdline(f"overlayboot.block.chunk={bad}")
