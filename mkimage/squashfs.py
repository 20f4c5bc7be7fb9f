"""The squashfs image of a root tree: mksquashfs, zstd, reproducible.

Reproducible: every inode time and the filesystem time are ``SOURCE_DATE_EPOCH``
(``-all-time``, ``-mkfs-time``), directories are sorted (mksquashfs always sorts them) and
``-reproducible`` keeps the fragment order independent of thread timing. Owners are kept
as they are when the tree belongs to root (a debootstrapped root has files of other users
that must stay theirs); a tree whose top is owned by someone else was built without root
privileges and gets ``-all-root``. Extended attributes (file capabilities, SELinux labels)
are kept. On a terminal mksquashfs draws its own progress bar.

The image carries its id (``mkimage.imageid``: a digest of the tree) at
``/.overlayboot/image-id``, added as a pseudo file, so the tree on disk is not touched;
an id file already in the tree is left out in favour of the new one. With it come
``/usr/sbin/overlayboot`` and ``/var/log/overlayboot`` (mkimage.liveroot).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from mkimage import imageid, liveroot
from mkimage.atomic import atomic_output
from mkimage.rootfs import Root, check_root
from overlayboot.errors import OverlaybootError, UsageError
from overlayboot.run import run, which

COMPRESSORS = ("zstd", "xz", "gzip", "lz4", "lzo")


class SquashfsError(OverlaybootError):
    """The squashfs image cannot be built."""


@dataclass(frozen=True)
class SquashfsSpec:
    """How to build the image."""

    compression: str = "zstd"
    level: int | None = None  # mksquashfs -Xcompression-level (zstd 1-22, default 15)
    source_date_epoch: int = 0
    block_size: str = "1M"
    all_root: bool | None = None  # None: only when the tree is not owned by root
    progress: bool | None = None  # None: when stdout is a terminal

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSORS:
            raise UsageError(f"unknown squashfs compression {self.compression!r}")


@dataclass(frozen=True)
class BuiltSquashfs:
    path: Path
    size: int
    root: Root
    image_id: str


def needs_all_root(root: Path) -> bool:
    """True when the tree was not made by root, so its owners mean nothing in the image."""
    return root.stat().st_uid != 0


def all_root_of(root: Path, spec: SquashfsSpec) -> bool:
    """Whether the image gets ``-all-root``."""
    return spec.all_root if spec.all_root is not None else needs_all_root(root)


def id_file_argv(root: Path, image_id: str) -> list[str]:
    """mksquashfs options that put ``image_id`` at ``/.overlayboot/image-id`` of the image."""
    argv: list[str] = []
    if not (root / imageid.ID_DIR).is_dir():
        argv += ["-p", f"/{imageid.ID_DIR} d 755 0 0"]
    # a pseudo file's contents are the output of its command, run by mksquashfs
    argv += ["-p", f"/{imageid.ID_FILE} f 444 0 0 echo {image_id}", "-e", imageid.ID_FILE]
    return argv


def mksquashfs_argv(
    root: Path, dest: Path, spec: SquashfsSpec, *, progress: bool, image_id: str | None = None
) -> list[str]:
    """The mksquashfs command line (with the id file when ``image_id`` is given)."""
    argv = [
        "mksquashfs",
        str(root),
        str(dest),
        "-noappend",
        "-reproducible",
        "-comp",
        spec.compression,
        "-b",
        spec.block_size,
        "-mkfs-time",
        str(spec.source_date_epoch),
        "-all-time",
        str(spec.source_date_epoch),
        "-xattrs",
    ]
    if spec.level is not None:
        if spec.compression not in ("zstd", "gzip", "lz4"):
            raise UsageError(f"a compression level does not apply to {spec.compression}")
        argv += ["-Xcompression-level", str(spec.level)]
    if all_root_of(root, spec):
        argv.append("-all-root")
    if not progress:
        argv += ["-no-progress", "-quiet"]
    if image_id is not None:
        # last: the id file's options end with -e, which takes every argument after it
        argv += liveroot.pseudo_argv(root)
        argv += id_file_argv(root, image_id)
    return argv


def build_squashfs(root_dir: Path, dest: Path, spec: SquashfsSpec) -> BuiltSquashfs:
    """Build ``dest`` from ``root_dir`` (checked to be a root); never left half-written."""
    root = check_root(root_dir)
    which("mksquashfs")
    progress = spec.progress if spec.progress is not None else sys.stdout.isatty()
    image_id = imageid.image_id(root_dir, all_root=all_root_of(root_dir, spec))
    # mksquashfs refuses SOURCE_DATE_EPOCH together with -all-time: the options say it all
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    with atomic_output(dest) as tmp:
        argv = mksquashfs_argv(root_dir, tmp, spec, progress=progress, image_id=image_id)
        proc = run(argv, capture=not progress, env=env, check=False)
        if proc.returncode != 0:
            err = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
            why = err[-1] if err else f"exit code {proc.returncode}"
            raise SquashfsError(f"mksquashfs of {root_dir} failed: {why}")
    return BuiltSquashfs(dest, dest.stat().st_size, root, image_id)


def list_image(image: Path) -> list[str]:
    """The paths in a squashfs image (``unsquashfs -l``), relative, without the root."""
    out = run(["unsquashfs", "-l", "-d", "", str(image)]).stdout.decode()
    return [ln.strip().lstrip("/") for ln in out.splitlines() if ln.startswith("/")]


def read_image_id(image: Path) -> str | None:
    """The id carried by a squashfs image (``/.overlayboot/image-id``), or None."""
    proc = run(["unsquashfs", "-cat", str(image), imageid.ID_FILE], check=False)
    text = proc.stdout.decode(errors="replace").strip()
    return text if proc.returncode == 0 and text else None
