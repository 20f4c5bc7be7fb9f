"""The one lower layer of a run: a tree built once, packed with mksquashfs, reused by key.

Layout of the tree (every system sees the same image):

    big                 the large file (random bytes: squashfs stores it uncompressed)
    big2                the same bytes again (squashfs stores them once): a second large
                        lower file for the partial copy-up workloads
    tree/dNNN/fNNNNN    the small files, 512 B to 4 KiB of random bytes each
    bin/true            a copy of /bin/true (the exec workload)
    src.tar             an uncompressed tar of the tar source (the unpack-and-grep workload)
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.options import Options
from overlayboot.run import run

CHUNK = 1 << 20


@dataclass(frozen=True)
class Lower:
    """Where the image is and what the tree holds (paths relative to its root)."""

    image: Path
    small_files: tuple[str, ...]
    dirs: tuple[str, ...]
    small_bytes: int


def small_layout(opts: Options) -> tuple[tuple[str, ...], tuple[str, ...], list[int]]:
    """Directory names, file paths and sizes of the small files (deterministic)."""
    dirs = tuple(f"tree/d{d:03d}" for d in range(opts.dirs))
    files: list[str] = []
    sizes: list[int] = []
    for i in range(opts.files):
        files.append(f"{dirs[i % opts.dirs]}/f{i:05d}")
        sizes.append(512 * (1 + (i * 37) % 8))
    return dirs, tuple(files), sizes


def _write_big(path: Path, mib: int) -> None:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(CHUNK))


def _write_tree(src: Path, opts: Options) -> None:
    dirs, files, sizes = small_layout(opts)
    for d in dirs:
        (src / d).mkdir(parents=True)
    rng = random.Random(5)
    pool = rng.randbytes(1 << 20)
    for rel, size in zip(files, sizes, strict=True):
        start = rng.randrange(0, len(pool) - size)
        (src / rel).write_bytes(pool[start : start + size])
    (src / "bin").mkdir()
    shutil.copy2("/bin/true", src / "bin/true")
    tar: list[str | Path] = ["tar", "-cf", src / "src.tar", "--exclude=__pycache__"]
    tar += ["--exclude=*-packages", "-C", opts.tar_source.parent, opts.tar_source.name]
    run(tar)


def prepare(base: Path, opts: Options, rebuild: bool) -> Lower:
    """Build the squashfs image (or reuse the one built for the same sizes)."""
    dirs, files, sizes = small_layout(opts)
    image = base / f"lower-{opts.lower_key()}.sqfs"
    lower = Lower(image, files, dirs, sum(sizes))
    if image.exists() and not rebuild:
        print(f"lower: reusing {image}", file=sys.stderr)
        return lower
    for old in base.glob("lower-*.sqfs"):
        old.unlink()
    src = base / "lower-src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    t0 = time.monotonic()
    print(f"lower: building {opts.big_mib} MiB + {opts.files} files in {src}", file=sys.stderr)
    try:
        _write_big(src / "big", opts.big_mib)
        shutil.copyfile(src / "big", src / "big2")
        _write_tree(src, opts)
        tmp = image.with_suffix(".tmp")
        run(["mksquashfs", src, tmp, "-comp", opts.comp, "-noappend", "-quiet", "-no-progress"])
        tmp.rename(image)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    print(f"lower: {image} built in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return lower
