"""The media check (overlayboot.check) on a medium tree made here, SHA256SUMS by sha256sum(1)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from overlayboot.mediacheck import NO_SUMS, MediaCheckError, check, parse_sums

IMAGE = "/live/filesystem.squashfs"


@pytest.fixture
def medium(tmp_path: Path) -> Path:
    (tmp_path / "live").mkdir()
    (tmp_path / "boot").mkdir()
    (tmp_path / "live/filesystem.squashfs").write_bytes(os.urandom(3 << 20))
    (tmp_path / "boot/vmlinuz").write_bytes(b"kernel" * 1000)
    sums = subprocess.run(
        ["sha256sum", "live/filesystem.squashfs", "./boot/vmlinuz"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "SHA256SUMS").write_text(sums)
    return tmp_path


def run_check(root: Path, image: str = IMAGE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overlayboot.mediacheck", str(root), image],
        capture_output=True,
        text=True,
    )


def test_a_matching_medium_passes_with_progress(medium: Path) -> None:
    r = run_check(medium)
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0] == "overlayboot: checking the medium: 1/2 live/filesystem.squashfs (3 MiB)"
    assert lines[1] == "overlayboot: checking the medium: 2/2 boot/vmlinuz (0 MiB)"
    assert lines[2].startswith("overlayboot: medium check: 2 files, 3 MiB, match SHA256SUMS (")


def test_one_changed_byte_is_refused(medium: Path) -> None:
    image = medium / "live/filesystem.squashfs"
    with open(image, "r+b") as f:
        f.seek(2 << 20)
        byte = f.read(1)
        f.seek(2 << 20)
        f.write(bytes([byte[0] ^ 1]))
    r = run_check(medium)
    assert r.returncode == 1
    assert r.stderr.startswith(
        "the medium does not match its SHA256SUMS: live/filesystem.squashfs has sha256 "
    )
    assert r.stderr.endswith("(the medium is damaged or was changed: write it again, or boot "
                             "without overlayboot.check)\n")  # fmt: skip
    assert len(r.stderr.splitlines()) == 1


def test_a_missing_file_is_refused(medium: Path) -> None:
    (medium / "boot/vmlinuz").unlink()
    r = run_check(medium)
    assert r.returncode == 1 and "boot/vmlinuz is missing" in r.stderr


def test_no_sums_warns_and_boots(medium: Path) -> None:
    (medium / "SHA256SUMS").unlink()
    r = run_check(medium)
    assert r.returncode == NO_SUMS
    assert r.stdout.startswith("overlayboot: WARNING: overlayboot.check: no SHA256SUMS")


def test_an_unlisted_image_is_named(medium: Path) -> None:
    r = run_check(medium, "/LiveOS/squashfs.img")
    assert r.returncode == 0
    assert r.stdout.splitlines()[-1] == (
        "overlayboot: WARNING: the image /LiveOS/squashfs.img is not listed in SHA256SUMS: "
        "it was not checked"
    )


def test_progress_lines_within_a_file(medium: Path) -> None:
    ticks = itertools.count(0, 1.5)  # every read of the clock is 1.5 s later
    lines: list[str] = []
    done = check(medium, IMAGE, lines.append, clock=lambda: next(ticks))
    assert done.files == 2 and done.image_listed
    percents = [line for line in lines if "%" in line]
    assert percents and percents[-1].endswith("of 3 MiB)"), lines


@pytest.mark.parametrize(
    "text",
    ["nothex  file\n", f"{'0' * 64}  /etc/passwd\n", f"{'0' * 64}  live/../../x\n", "0" * 64],
)
def test_malformed_sums(text: str) -> None:
    with pytest.raises(MediaCheckError):
        parse_sums(text)


def test_binary_mode_lines() -> None:
    assert parse_sums(f"{'A' * 64} *boot/x\n\n")[0].path == "boot/x"
