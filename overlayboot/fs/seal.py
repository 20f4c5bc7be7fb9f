"""Finding the partial copy-ups of an upper layer, checking them, and making them whole.

Used offline (``overlayboot upper check|seal``) and by the daemon at unmount
(``--seal-on-umount``). Sealing a file fills its unmapped chunks from its lower
file, syncs, restores its times and removes its map: the upper is then plain
kernel overlayfs format. A file whose lower file is missing or changed is
reported and left as it is.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from overlayboot.fs import chunked, longpath
from overlayboot.fs.chunkmap import ChunkMap, MapError
from overlayboot.fs.whiteout import XattrNames


@dataclass(frozen=True)
class Finding:
    """One partial copy-up of an upper layer, and what was found or done."""

    rel: bytes  # its path in the upper
    size: int
    cmap: ChunkMap | None  # None: the map could not be read
    lower: bytes | None  # the lower file it reads from (None: not known)
    problem: str | None = None  # why it cannot be read or sealed (None: fine)
    sealed: bool = False


def namespaces() -> list[XattrNames]:
    """The xattr namespaces a map may be in: ``user.``, and ``trusted.`` as root."""
    user = XattrNames("user")
    return [XattrNames("trusted"), user] if os.geteuid() == 0 else [user]


def partial_files(upper: bytes, spaces: Sequence[XattrNames]) -> Iterator[tuple[bytes, str]]:
    """(path, xattr name) of every regular file of ``upper`` that has a chunk map."""
    for path in longpath.regular_files(upper):
        for ns in spaces:
            try:
                longpath.getxattr(path, ns.chunks)
            except OSError as exc:
                if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM):
                    continue
                raise
            yield path, ns.chunks
            break


def lower_path(cmap: ChunkMap, lowers: Sequence[bytes] | None) -> bytes | None:
    """Where the lower file of ``cmap`` is: under ``lowers[layer]``, else its recorded root."""
    layer = cmap.lower.layer
    if lowers is not None:
        if layer >= len(lowers):
            return None
        root = lowers[layer]
    else:
        root = cmap.lower.root
    return os.path.join(root, cmap.lower.path)


def examine(
    path: bytes, rel: bytes, name: str, lowers: Sequence[bytes] | None, *, seal: bool = False
) -> Finding:
    """Check one partial file (its map decodes, its lower is there and unchanged); seal it."""
    size = longpath.lstat(path).st_size
    try:
        cmap = chunked.load_map(path, name)
    except MapError as exc:
        return Finding(rel, size, None, None, f"its chunk map is corrupt: {exc}")
    if cmap is None:
        return Finding(rel, size, None, None, "its chunk map went away")
    cmap = cmap.truncated(size)
    low = lower_path(cmap, lowers)
    if low is None:
        return Finding(rel, size, cmap, None, f"no lower layer {cmap.lower.layer} given")
    lower_fd = -1
    if cmap.valid > 0:
        try:
            lower_fd = chunked.open_lower(low, cmap.lower)
        except chunked.StaleLower as exc:
            return Finding(rel, size, cmap, low, str(exc))
    if not seal:
        if lower_fd >= 0:
            os.close(lower_fd)
        return Finding(rel, size, cmap, low)
    try:
        fd = longpath.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except BaseException:
        if lower_fd >= 0:
            os.close(lower_fd)
        raise
    p = chunked.ChunkedFile(fd, lower_fd, cmap, name)
    try:
        p.seal()
    finally:
        p.close()
    return Finding(rel, size, cmap, low, sealed=True)


def walk(
    upper: bytes,
    lowers: Sequence[bytes] | None,
    *,
    seal: bool = False,
    spaces: Sequence[XattrNames] | None = None,
) -> Iterator[Finding]:
    """Examine (and with ``seal``, make whole) every partial copy-up under ``upper``."""
    for path, name in partial_files(upper, spaces or namespaces()):
        rel = os.path.relpath(path, upper)
        try:
            yield examine(path, rel, name, lowers, seal=seal)
        except OSError as exc:
            yield Finding(rel, 0, None, None, f"{exc.strerror or exc}")
