"""The scale run's lower: a million small files, streamed as a tar into ``mksquashfs -tar``.

Nothing is written to disk but the image: the files exist only in the tar stream
(``mksquashfs -tar`` reads it from stdin), so building it needs neither a million
inodes nor gigabytes of scratch space. Layout (paths relative to the image's root):

    tree/dNNNN/fNNNNNNN    the files, 64 B to 1 KiB each, ``files / dirs`` per directory

The image is kept under the bench's ``--dir`` with a key of its sizes and reused.
"""

from __future__ import annotations

import io
import random
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from overlayboot.errors import ToolError
from overlayboot.run import spawn

MTIME = 1_700_000_000


@dataclass(frozen=True)
class ScaleLower:
    """The image and what it holds."""

    image: Path
    files: int
    dirs: int

    @property
    def inodes(self) -> int:
        """Every inode a walk of ``tree`` meets: the files, their directories, ``tree``."""
        return self.files + self.dirs + 1


def _dirinfo(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
    return info


def _stream(out: io.BufferedIOBase, files: int, dirs: int) -> None:
    """Write the tar of the tree to ``out``."""
    rng = random.Random(12)
    pool = rng.randbytes(1 << 16)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_dirinfo("tree"))
        per_dir = -(-files // dirs)
        for d in range(dirs):
            tar.addfile(_dirinfo(f"tree/d{d:04d}"))
            for i in range(d * per_dir, min(files, (d + 1) * per_dir)):
                size = 64 * (1 + (i * 37) % 16)
                info = tarfile.TarInfo(f"tree/d{d:04d}/f{i:07d}")
                info.size, info.mode, info.mtime = size, 0o644, MTIME
                start = (i * 4099) % (len(pool) - size)
                tar.addfile(info, io.BytesIO(pool[start : start + size]))


def prepare(base: Path, files: int, dirs: int, comp: str, rebuild: bool) -> ScaleLower:
    """Build the image (or reuse the one built for the same sizes)."""
    image = base / f"scale-{files}-{dirs}-{comp}.sqfs"
    lower = ScaleLower(image, files, dirs)
    if image.exists() and not rebuild:
        print(f"scale: reusing {image}", file=sys.stderr)
        return lower
    base.mkdir(parents=True, exist_ok=True)
    tmp = image.with_suffix(".tmp")
    t0 = time.monotonic()
    print(f"scale: building {files} files in {dirs} dirs into {image}", file=sys.stderr)
    argv: list[str | Path] = ["mksquashfs", "-", tmp, "-tar", "-comp", comp]
    argv += ["-noappend", "-quiet", "-no-progress"]
    proc = spawn(argv, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        _stream(proc.stdin, files, dirs)  # type: ignore[arg-type]
    finally:
        proc.stdin.close()
        code = proc.wait()
    if code != 0:
        tmp.unlink(missing_ok=True)
        raise ToolError(f"mksquashfs -tar failed with exit code {code} building {image}")
    tmp.rename(image)
    print(f"scale: {image} built in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return lower
