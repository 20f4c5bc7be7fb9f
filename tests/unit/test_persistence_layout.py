"""The per-image layout of a persistence partition, as the boot's shell code makes it.

hooks/lib.sh's ``migrate_layout`` and ``image_changes`` run here in busybox sh on a
directory standing for the mounted partition (``$OB_RUN/rw``); ``die`` prints its ERROR
line and exits instead of opening a rescue shell.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkimage.imageid import ID_FILE
from mkimage.runtime import repo_root
from tests.unit.conftest import need_tools

LIB = repo_root() / "hooks" / "lib.sh"
A, B, NEW = "a" * 32, "b" * 32, "c" * 32
LEGACY = "1700000000-4096"


@dataclass(frozen=True)
class Boot:
    returncode: int
    out: str
    base: Path

    @property
    def changes(self) -> Path:
        line = next(ln for ln in self.out.splitlines() if ln.startswith("CHANGES="))
        return Path(line.split("=", 1)[1])


def boot(run_dir: Path, image_id: str, legacy_id: str = "0-0") -> Boot:
    """Phase upper's layout steps for an image with ``image_id``."""
    need_tools("busybox")
    script = f"""
        . {LIB}
        OB_RUN={run_dir} OB_STATE={run_dir}/state
        die() {{ echo "ERROR: overlayboot: $*"; exit 1; }}
        OB_IMAGE_ID={image_id} OB_LEGACY_ID={legacy_id}
        base=$OB_RUN/rw/overlayboot/OVERLAYBOOT
        mkdir -p "$base/images"
        migrate_layout "$base"
        image_changes "$base"
        echo "CHANGES=$OB_CHANGES"
    """
    proc = subprocess.run(
        ["busybox", "sh", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    return Boot(proc.returncode, proc.stdout + proc.stderr, run_dir / "rw/overlayboot/OVERLAYBOOT")


def sh(expr: str) -> int:
    need_tools("busybox")
    return subprocess.run(["busybox", "sh", "-c", f". {LIB}; {expr}"], check=False).returncode


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


def test_each_image_keeps_its_own_changes_and_gets_them_back(run_dir: Path) -> None:
    first = boot(run_dir, A)
    assert first.returncode == 0, first.out
    assert first.changes == first.base / "images" / A
    assert "starts with none" in first.out
    assert (first.changes / "upper").is_dir() and (first.changes / "work").is_dir()
    (first.changes / "upper/note").write_text("made with A\n")

    second = boot(run_dir, B)
    assert second.changes == second.base / "images" / B
    assert f"the image changed since the last boot (was {A}, now {B})" in second.out
    assert not (second.changes / "upper/note").exists()
    assert f"image_changed={A}" in (run_dir / "state").read_text()

    third = boot(run_dir, A)
    assert third.changes == third.base / "images" / A
    assert "booted here before: its changes come back" in third.out
    assert (third.changes / "upper/note").read_text() == "made with A\n"
    assert (third.base / "image-id").read_text() == A + "\n"
    assert (third.changes / "last-boot").is_file()


def test_the_same_image_again_is_no_change(run_dir: Path) -> None:
    boot(run_dir, A)
    again = boot(run_dir, A)
    assert again.returncode == 0
    assert "changed" not in again.out and "starts with none" not in again.out


def legacy_layout(run_dir: Path, image_id: str) -> Path:
    base = run_dir / "rw/overlayboot/OVERLAYBOOT"
    (base / "upper/etc").mkdir(parents=True)
    (base / "upper/etc/kept").write_text("old\n")
    (base / "work").mkdir()
    (base / "image-id").write_text(image_id + "\n")
    return base


def test_old_layout_of_another_image_is_moved_aside(run_dir: Path) -> None:
    base = legacy_layout(run_dir, LEGACY)
    (base / "upper.1690000000-8192/x").mkdir(parents=True)  # set aside by an older boot
    b = boot(run_dir, NEW, legacy_id="1700000000-8192")
    assert b.returncode == 0, b.out
    assert (base / "images" / LEGACY / "upper/etc/kept").read_text() == "old\n"
    assert (base / "images" / LEGACY / "work").is_dir()
    assert (base / "images/1690000000-8192/upper/x").is_dir()
    assert not (base / "upper").exists() and not (base / "upper.1690000000-8192").exists()
    assert not (b.changes / "upper/etc").exists()
    assert f"was {LEGACY}, now {NEW}" in b.out


def test_old_layout_of_this_image_becomes_its_changes(run_dir: Path) -> None:
    base = legacy_layout(run_dir, LEGACY)
    b = boot(run_dir, NEW, legacy_id=LEGACY)
    assert b.returncode == 0, b.out
    assert (b.changes / "upper/etc/kept").read_text() == "old\n"
    assert b.changes == base / "images" / NEW
    assert "are taken as this image's" in b.out
    assert "changed" not in b.out


def test_a_clash_stops_the_boot_and_moves_nothing(run_dir: Path) -> None:
    """The old mv put upper inside an existing upper.ID; now it is an ERROR line."""
    base = legacy_layout(run_dir, LEGACY)
    (base / "images" / LEGACY / "upper").mkdir(parents=True)
    b = boot(run_dir, NEW)
    assert b.returncode == 1
    assert "ERROR: overlayboot: cannot move /overlayboot/OVERLAYBOOT/upper to " in b.out
    assert "it exists" in b.out
    assert (base / "upper/etc/kept").is_file()
    assert list((base / "images" / LEGACY / "upper").iterdir()) == []


@pytest.mark.parametrize(
    ("value", "ok"),
    [(A, True), (LEGACY, True), ("", False), (".hidden", False), ("a/b", False),
     ("a b", False), ("x" * 64, True), ("x" * 65, False), ("..", False)],
)  # fmt: skip
def test_valid_id(value: str, ok: bool) -> None:
    assert (sh(f"valid_id '{value}'") == 0) == ok


def test_the_id_file_path_is_the_builders() -> None:
    assert f"OB_IMAGE_ID_FILE={ID_FILE}\n" in LIB.read_text()
