"""Media for the compat and persistence boots, made with the real tools: an ISO9660 image
holding the root where a tool puts it with its SHA256SUMS, a disk with an exFAT partition
(mkfs.exfat, filled through a loop device and exfat-fuse)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mkimage.mbr import SECTOR, Partition, add_partition, new_table
from mkimage.rootfs import build_busybox_root
from mkimage.squashfs import SquashfsSpec, build_squashfs
from tests.qemu.media import plain_iso
from tests.waiting import poll_until

TYPE_EXFAT = 0x07  # the MBR type of exFAT and NTFS


@dataclass(frozen=True)
class Root:
    squashfs: Path
    base: Path


def build_root(base: Path) -> Root:
    """The default busybox root as a squashfs, with /etc/release from the lower layer."""
    tree = build_busybox_root(base / "root").path
    (tree / "etc/release").write_text("from the lower layer\n")
    sq = base / "root.squashfs"
    build_squashfs(tree, sq, SquashfsSpec(source_date_epoch=1_700_000_000))
    return Root(sq, base)


def iso_with(
    root: Root,
    name: str,
    image: str,
    label: str,
    *,
    bad_sum: bool = False,
    extra: dict[str, Path] | None = None,
) -> Path:
    """An ISO9660 image holding the root at ``image`` (and ``extra`` files) and a
    SHA256SUMS listing them."""
    tree = root.base / name
    files = {image: root.squashfs, **(extra or {})}
    sums = []
    for rel, src in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tree / rel)
        digest = hashlib.sha256((tree / rel).read_bytes()).hexdigest()
        if bad_sum and rel == image:  # what a medium damaged in one place looks like
            digest = digest[:-1] + ("0" if digest[-1] != "0" else "1")
        sums.append(f"{digest}  {rel}\n")
    (tree / "SHA256SUMS").write_text("".join(sums))
    return plain_iso(tree, root.base / f"{name}.iso", label=label)


def layer(base: Path, files: dict[str, str]) -> Path:
    """A squashfs layer holding ``files`` (path: text), to stack over the root."""
    tree = base / "tree"
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    dest = base / "layer.squashfs"
    subprocess.run(
        ["mksquashfs", str(tree), str(dest), "-noappend", "-quiet", "-all-root"], check=True
    )
    return dest


def exfat_disk(dest: Path, files: dict[str, Path], size_mib: int = 64) -> Path:
    """A disk with an MBR and one exFAT partition from 1 MiB holding ``files``."""
    fs = dest.with_suffix(".fs")
    with open(fs, "wb") as f:
        f.truncate((size_mib - 1) << 20)
    subprocess.run(["mkfs.exfat", "-L", "STICK", str(fs)], check=True, capture_output=True)
    mnt = dest.with_suffix(".mnt")
    mnt.mkdir()
    loop = subprocess.run(["losetup", "-f", "--show", str(fs)], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    try:
        # exfat-fuse (it wants a block device) in the foreground: a fuseblk unmount waits
        # for it to write everything, and it has ended once it returns
        daemon = subprocess.Popen(["mount.exfat-fuse", "-d", loop, str(mnt)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            poll_until(lambda: mnt.is_mount() or daemon.poll() is not None, 10, "exfat mount")
            assert mnt.is_mount(), f"exfat-fuse did not mount (exit code {daemon.poll()})"
            for rel, src in files.items():
                (mnt / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, mnt / rel)
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
            daemon.wait(timeout=30)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    part = Partition(1, TYPE_EXFAT, 2048, (size_mib - 1) * 2048)
    table = add_partition(new_table(0x0B5E55ED), part)
    with open(dest, "wb") as out:
        out.write(table)
        out.seek(2048 * SECTOR)
        out.write(fs.read_bytes())
    fs.unlink()
    return dest
