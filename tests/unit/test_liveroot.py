"""The live root's ``/usr/sbin/overlayboot`` and ``/var/log/overlayboot``, put in the image by
mksquashfs (mkimage.liveroot), read back with unsquashfs; the script run with busybox sh."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from mkimage.liveroot import pseudo_argv
from mkimage.rootfs import Root, copy_root
from mkimage.squashfs import BuiltSquashfs, SquashfsSpec, build_squashfs, list_image
from overlayboot.run import run
from tests.unit.conftest import EPOCH, need_tools


def test_the_image_carries_the_command_and_the_log_link(
    squashfs_image: BuiltSquashfs, tmp_path: Path
) -> None:
    need_tools("unsquashfs", "busybox")
    listing = run(["unsquashfs", "-lls", "-d", "", str(squashfs_image.path)]).stdout.decode()
    link = next(
        ln for ln in listing.splitlines() if ln.endswith("/var/log/overlayboot -> /run/overlayboot")
    )
    assert link.startswith("lrwxrwxrwx")
    cmd = next(ln for ln in listing.splitlines() if ln.endswith("/usr/sbin/overlayboot"))
    assert cmd.startswith("-rwxr-xr-x root/root")
    script = run(["unsquashfs", "-cat", str(squashfs_image.path), "usr/sbin/overlayboot"]).stdout
    assert script.startswith(b"#!/bin/sh\n")
    assert b'exec /run/overlayboot/runtime/overlayboot "$@"\n' in script
    # run it against a stand-in runtime: the arguments arrive as they were given
    fake = tmp_path / "overlayboot"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done\n')
    fake.chmod(0o755)
    text = script.decode().replace("/run/overlayboot/runtime/overlayboot", str(fake))
    out = subprocess.run(["busybox", "sh", "-c", text, "overlayboot", "status", "a b"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out == "[status]\n[a b]\n"


def test_a_root_with_its_own_keeps_it(busybox_root: Root, tmp_path: Path) -> None:
    root = copy_root(busybox_root.path, tmp_path / "root").path
    (root / "usr/sbin").mkdir(parents=True, exist_ok=True)
    (root / "usr/sbin/overlayboot").write_text("#!/bin/sh\necho installed\n")
    (root / "var/log").mkdir(parents=True, exist_ok=True)
    (root / "var/log/overlayboot").mkdir()
    assert pseudo_argv(root) == []
    built = build_squashfs(root, tmp_path / "own.sq", SquashfsSpec(source_date_epoch=EPOCH))
    script = run(["unsquashfs", "-cat", str(built.path), "usr/sbin/overlayboot"]).stdout
    assert script == b"#!/bin/sh\necho installed\n"
    assert "var/log/overlayboot" in list_image(built.path)


def test_missing_parents_are_added_and_symlinked_ones_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    argv = pseudo_argv(root)
    defs = argv[1::2]
    assert defs[:2] == ["/usr d 755 0 0", "/usr/sbin d 755 0 0"]
    assert "/var d 755 0 0" in defs and "/var/log d 755 0 0" in defs
    assert defs[-1] == "/var/log/overlayboot s 777 0 0 /run/overlayboot"
    os.symlink("/elsewhere", root / "var")
    (root / "usr/sbin").mkdir(parents=True)
    defs = pseudo_argv(root)[1::2]
    assert len(defs) == 1 and defs[0].startswith("/usr/sbin/overlayboot f 755 0 0 printf ")
    shutil.rmtree(root / "usr")
