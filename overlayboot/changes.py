"""``overlayboot persistence inspect|export``: one image's saved changes, listed or archived.

The changes are an upper layer in kernel overlayfs' format (``BASE/images/ID/upper``, the
layout of :mod:`overlayboot.images`), read as overlayfs reads it:

- a character device 0/0 is a **deleted** name; a directory with ``overlay.opaque = y``
  **replaces** the lower directory (nothing of the lower one shows through);
- a regular file with ``overlayboot.chunks`` is a **partial** copy-up: only its mapped
  chunks are in the upper (their bytes are counted, and the file's size);
- any other file or symlink was **changed** when the lower layer has that name (with
  ``--lower``), or it carries a copy-up origin (``overlayboot.origin``, overlayfs'
  ``overlay.origin``); else it was **added**. Directories are listed only when opaque or
  (with ``--lower``) new.

``export`` writes the upper as a tar archive (GNU tar, with its xattrs: whiteouts,
opaque directories, chunk maps and all), which another persistence's ``images/ID/upper``
can be unpacked into (as root), or kernel overlayfs can use as an upper.

TARGET is the persistence's mount point (``/run/overlayboot/rw`` in the live system), or
offline on the host an image file or device, mounted read-only through a loop device for
the time of the command (root).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from overlayboot.errors import UsageError
from overlayboot.fs.chunkmap import decode
from overlayboot.images import DebugfsTree, open_target, the_base
from overlayboot.run import run

_NS = ("trusted.", "user.")


@dataclass(frozen=True)
class Change:
    """One changed name: what happened to it, its path in the merged tree, bytes it takes."""

    kind: str  # added, changed, partial, deleted, replaced
    path: str
    size: int
    detail: str = ""


def _xattr(path: Path, name: str) -> bytes | None:
    for ns in _NS:
        try:
            return os.getxattr(path, ns + name, follow_symlinks=False)
        except OSError:
            continue
    return None


def _partial(path: Path, st: os.stat_result, raw: bytes) -> Change:
    try:
        cmap = decode(raw)
        held = min(cmap.mapped_count() * cmap.chunk_size, st.st_size)
        detail = f"{cmap.mapped_count()} of {cmap.chunks_of(st.st_size)} chunks copied up"
    except Exception:  # a map this version cannot read is still a partial copy-up
        held, detail = st.st_blocks * 512, "chunk map unreadable"
    return Change("partial", "", held, detail)


def _entry(path: Path, rel: str, st: os.stat_result, lower: Path | None) -> Change | None:
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return Change("deleted", rel, 0)
    if stat.S_ISDIR(st.st_mode):
        if _xattr(path, "overlay.opaque") == b"y":
            return Change("replaced", rel + "/", 0, "opaque directory")
        if lower is not None and not (lower / rel.lstrip("/")).exists():
            return Change("added", rel + "/", 0)
        return None
    if stat.S_ISREG(st.st_mode):
        raw = _xattr(path, "overlayboot.chunks")
        if raw is not None:
            c = _partial(path, st, raw)
            return Change(c.kind, rel, c.size, f"{c.detail}, size {st.st_size}")
    in_lower = lower is not None and os.path.lexists(lower / rel.lstrip("/"))
    origin = _xattr(path, "overlayboot.origin") or _xattr(path, "overlay.origin")
    kind = "changed" if in_lower or (lower is None and origin is not None) else "added"
    return Change(kind, rel, st.st_size if stat.S_ISREG(st.st_mode) else 0)


def changes(upper: Path, lower: Path | None = None) -> list[Change]:
    """Every change an upper holds, sorted by path (see the module's text)."""
    out: list[Change] = []
    for dirpath, dirnames, filenames in os.walk(upper):
        here = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            path = here / name
            rel = "/" + str(path.relative_to(upper))
            change = _entry(path, rel, path.lstat(), lower)
            if change is not None:
                out.append(change)
    return sorted(out, key=lambda c: c.path)


def inspect_lines(upper: Path, lower: Path | None = None) -> list[str]:
    """``persistence inspect``: one line per change, then the totals."""
    found = changes(upper, lower)
    lines = [
        f"{c.kind:8s} {c.size:12,d}  {c.path}" + (f"  ({c.detail})" if c.detail else "")
        for c in found
    ]
    counts = {k: sum(1 for c in found if c.kind == k) for k in dict.fromkeys(c.kind for c in found)}
    summary = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no changes"
    lines.append(f"{summary}; {sum(c.size for c in found):,d} bytes in the upper")
    return lines


def export(upper: Path, dest: Path) -> None:
    """The upper as a tar archive with its xattrs and device nodes (GNU tar)."""
    run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", upper, "-cf", dest, "."])


@contextlib.contextmanager
def mounted(target: Path) -> Iterator[Path]:
    """``target`` itself if it is a directory; else an image or device mounted read-only."""
    if target.is_dir():
        yield target
        return
    tree = open_target(target)  # refuses a mounted device, finds the ext4 in an image
    offset = tree.offset if isinstance(tree, DebugfsTree) else 0
    with tempfile.TemporaryDirectory(prefix="overlayboot-inspect-") as mnt:
        opts = f"ro,loop,offset={offset}" if target.is_file() else "ro"
        run(["mount", "-o", opts, target, mnt])
        try:
            yield Path(mnt)
        finally:
            run(["umount", mnt])


def upper_of(root: Path, image_id: str | None, base_dir: str | None) -> Path:
    """The upper of image ``image_id`` (a unique prefix; default: the one booted last)."""
    tree = open_target(root)
    base = the_base(tree, base_dir)
    want = image_id or base.last_id
    ids = [i.image_id for i in base.images if want and i.image_id.startswith(want)]
    if len(ids) != 1:
        known = ", ".join(i.image_id for i in base.images) or "none"
        raise UsageError(f"no single image {want!r} in /{base.path}", f"images: {known}")
    return root / base.path / "images" / ids[0] / "upper"
