"""The per-image layout of a persistence partition, as the boot's shell code makes it.

hooks/lib.sh's ``migrate_layout`` and ``image_changes`` run here in busybox sh on a
directory standing for the mounted partition (``$OB_RUN/rw``); ``die`` prints its ERROR
line and exits instead of opening a rescue shell.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkimage.imageid import ID_FILE
from mkimage.persistence import mkfs_ext4
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


def fsck_upper(run_dir: Path, device: Path) -> subprocess.CompletedProcess[str]:
    """lib.sh's fsck_upper on an image file, with the host's e2fsck as the runtime's."""
    need_tools("busybox", "e2fsck", "debugfs")
    (run_dir / "runtime").mkdir(parents=True, exist_ok=True)
    e2fsck = run_dir / "runtime/e2fsck"
    if not e2fsck.exists():
        e2fsck.symlink_to(shutil.which("e2fsck") or "/usr/sbin/e2fsck")
    script = f"""
        . {LIB}
        OB_RUN={run_dir} OB_STATE={run_dir}/state
        die() {{ echo "ERROR: overlayboot: $*"; exit 1; }}
        fsck_upper {device}
        echo "WENT ON"
    """
    return subprocess.run(
        ["busybox", "sh", "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


def ext4(tmp_path: Path, *breakage: str) -> Path:
    img = tmp_path / "rw.img"
    mkfs_ext4(img, offset=0, size=16 << 20, label="overlayboot-rw", epoch=1)
    (tmp_path / "f").write_text("f\n")
    commands = [f"write {tmp_path / 'f'} /f", *breakage]
    subprocess.run(["debugfs", "-w", "-f", "-", str(img)], input="\n".join(commands),
                   text=True, capture_output=True, check=True)  # fmt: skip
    return img


def test_fsck_of_a_clean_partition(run_dir: Path, tmp_path: Path) -> None:
    proc = fsck_upper(run_dir, ext4(tmp_path))
    assert "WENT ON" in proc.stdout and "clean" in proc.stdout, proc.stdout
    assert "fsck=0" in (run_dir / "state").read_text()


def test_fsck_fixes_and_says_so(run_dir: Path, tmp_path: Path) -> None:
    img = ext4(tmp_path, "sif /f links_count 5", "ssv state 0")
    proc = fsck_upper(run_dir, img)
    assert "overlayboot: fsck: overlayboot-rw: Inode 12 ref count is 5" in proc.stdout
    assert f"overlayboot: fsck: errors on {img} fixed" in proc.stdout
    assert "WENT ON" in proc.stdout
    assert "fsck=1" in (run_dir / "state").read_text()


def test_fsck_that_needs_a_human_is_an_error(run_dir: Path, tmp_path: Path) -> None:
    img = ext4(tmp_path, "clri <2>", "ssv state 0")
    proc = fsck_upper(run_dir, img)
    assert "WENT ON" not in proc.stdout
    assert (
        f"ERROR: overlayboot: the persistence partition {img} has errors that e2fsck -p "
        "cannot fix (exit code 4)"
    ) in proc.stdout


def test_no_ext_filesystem_is_not_checked(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "zeros").write_bytes(bytes(1 << 16))
    proc = fsck_upper(run_dir, tmp_path / "zeros")
    assert "holds no ext2/3/4 filesystem: not checked" in proc.stdout
    assert "WENT ON" in proc.stdout


def test_no_image_id_is_an_error(run_dir: Path) -> None:
    b = boot(run_dir, "''")
    assert b.returncode == 1
    assert "ERROR: overlayboot: no image id for the changes" in b.out
