"""``overlayboot persistence list|prune|reset``: the changes each image keeps on a persistence
partition.

The boot (hooks/40-upper.sh) keeps them per image id, under a base directory: ``overlayboot/
<medium label>`` on the partition, or the DIR of ``overlayboot.upper=DEV:DIR``::

    BASE/image-id              the id of the image booted last
    BASE/images/ID/upper       the changes of image ID (kernel overlayfs format)
    BASE/images/ID/work        its work directory
    BASE/images/ID/last-boot   when it was booted last (UTC)

The target is a directory (the partition's mount point: ``/run/overlayboot/rw`` in the live
system), or an ext4 image file (bare, or a disk image whose MBR holds it) or block device,
read and written with debugfs: no mount, no root for a file. debugfs does not release the
extended-attribute blocks of what it removes, so a prune there ends with ``e2fsck -fp``,
which returns them to the free space.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from overlayboot import mounttable
from overlayboot.errors import ConfigError, OverlaybootError, UsageError
from overlayboot.run import run

EXT_MAGIC = b"\x53\xef"  # s_magic, at byte 56 of the superblock, which is at byte 1024
_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


class PersistenceError(OverlaybootError):
    """The persistence partition cannot be read or changed as asked."""


@dataclass(frozen=True)
class Node:
    """A directory entry: its name, whether it is a directory, its size in bytes."""

    name: str
    is_dir: bool
    size: int


class Tree(Protocol):
    """A filesystem the commands read and change, by paths relative to its root."""

    @property
    def where(self) -> str: ...

    def listdirs(self, paths: list[str]) -> dict[str, list[Node] | None]: ...
    def read(self, path: str) -> str | None: ...
    def remove(self, paths: list[str]) -> None: ...


@dataclass(frozen=True)
class DirTree:
    """The partition mounted (or any directory holding the layout)."""

    root: Path

    @property
    def where(self) -> str:
        return str(self.root)

    def listdirs(self, paths: list[str]) -> dict[str, list[Node] | None]:
        out: dict[str, list[Node] | None] = {}
        for path in paths:
            try:
                with os.scandir(self.root / path) as it:
                    entries = [(e.name, e.stat(follow_symlinks=False)) for e in it]
            except (FileNotFoundError, NotADirectoryError):
                out[path] = None
                continue
            except OSError as exc:
                raise PersistenceError(f"cannot read {self.root / path}: {exc.strerror}") from exc
            out[path] = [Node(n, stat.S_ISDIR(st.st_mode), st.st_size) for n, st in sorted(entries)]
        return out

    def read(self, path: str) -> str | None:
        try:
            return (self.root / path).read_text(errors="replace")
        except OSError:
            return None

    def remove(self, paths: list[str]) -> None:
        for path in paths:
            try:
                shutil.rmtree(self.root / path)
            except OSError as exc:
                raise PersistenceError(f"cannot remove {self.root / path}: {exc}") from exc


@dataclass(frozen=True)
class DebugfsTree:
    """An ext2/3/4 filesystem in an image file or on a device, through debugfs."""

    path: Path
    offset: int

    @property
    def where(self) -> str:
        return f"{self.path}" + (f" (partition at byte {self.offset})" if self.offset else "")

    @property
    def spec(self) -> str:
        return f"{self.path}?offset={self.offset}" if self.offset else str(self.path)

    def _debugfs(self, commands: Iterable[str], *, write: bool = False) -> list[list[str]]:
        """The output lines of each command (debugfs -f echoes each as ``debugfs: CMD``)."""
        script = "".join(f"{c}\n" for c in commands)
        argv = ["debugfs", *(["-w"] if write else []), "-f", "-", self.spec]
        out = run(argv, input=script.encode()).stdout.decode(errors="replace")
        chunks: list[list[str]] = []
        for line in out.splitlines():
            if line.startswith("debugfs: "):
                chunks.append([])
            elif chunks:
                chunks[-1].append(line)
        return chunks

    def listdirs(self, paths: list[str]) -> dict[str, list[Node] | None]:
        if not paths:
            return {}
        chunks = self._debugfs(f'ls -p "/{p}"' for p in paths)
        out: dict[str, list[Node] | None] = {}
        for path, lines in zip(paths, chunks, strict=True):
            nodes = [_ls_node(ln) for ln in lines if ln.startswith("/")]
            found = [n for n in nodes if n is not None and n.name not in (".", "..")]
            out[path] = found if any(n is not None for n in nodes) else None
        return out

    def read(self, path: str) -> str | None:
        lines = self._debugfs([f'cat "/{path}"'])
        text = "\n".join(lines[0]) if lines else ""
        return text or None

    def remove(self, paths: list[str]) -> None:
        files, dirs = walk(self, paths)
        odd = [p for p in [*(f for f, _ in files), *dirs] if '"' in p or "\n" in p]
        if odd:
            raise PersistenceError(
                f"debugfs cannot remove {odd[0]!r}", "mount the partition and give its mount point"
            )
        commands = [f'rm "/{f}"' for f, _ in files]
        commands += [f'rmdir "/{d}"' for d in sorted(dirs, key=lambda d: -d.count("/"))]
        self._debugfs(commands, write=True)
        left = [p for p, nodes in self.listdirs(paths).items() if nodes is not None]
        if left:
            raise PersistenceError(f"debugfs could not remove {', '.join(left)} from {self.where}")
        fsck = run(["e2fsck", "-fp", self.spec], check=False)
        if fsck.returncode >= 4:
            raise PersistenceError(
                f"e2fsck after the removal found errors on {self.where}", "run e2fsck -f on it"
            )


def _ls_node(line: str) -> Node | None:
    """A line of ``debugfs ls -p``: ``/INODE/MODE/UID/GID/NAME/SIZE/``."""
    parts = line.split("/")
    if len(parts) != 8 or not parts[2].isdigit():
        return None
    return Node(parts[5], parts[2].startswith("04"), int(parts[6] or 0))


def walk(tree: Tree, tops: list[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """Every non-directory (with its size) and every directory under ``tops``, which are
    included when they exist (level by level: one listing per level)."""
    files: list[tuple[str, int]] = []
    dirs: list[str] = []
    level = list(tops)
    while level:
        listed = tree.listdirs(level)
        nxt: list[str] = []
        for path in level:
            nodes = listed.get(path)
            if nodes is None:
                continue
            dirs.append(path)
            for node in nodes:
                child = f"{path}/{node.name}"
                if node.is_dir:
                    nxt.append(child)
                else:
                    files.append((child, node.size))
        level = nxt
    return files, dirs


# --- the layout --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageChanges:
    """The changes one image keeps: how many files (whiteouts included), how many bytes."""

    image_id: str
    last_boot: str | None
    files: int
    size: int


@dataclass(frozen=True)
class Base:
    """A base directory of the layout and what is in it."""

    path: str  # relative to the root of the filesystem
    last_id: str | None  # the image booted last
    images: tuple[ImageChanges, ...]
    old_layout: tuple[str, ...]  # upper, upper.ID of an older release (the next boot moves them)


def base_paths(tree: Tree, base_dir: str | None) -> list[str]:
    """``base_dir``, or every ``overlayboot/LABEL`` of the filesystem."""
    if base_dir is not None:
        return [base_dir.strip("/")]
    top = tree.listdirs(["overlayboot"])["overlayboot"] or []
    return [f"overlayboot/{n.name}" for n in top if n.is_dir]


def the_base(tree: Tree, base_dir: str | None) -> Base:
    """The one base directory a command works on: ``base_dir``, or the only one there is."""
    bases = base_paths(tree, base_dir)
    if not bases:
        raise PersistenceError(f"{tree.where}: no overlayboot changes")
    if len(bases) > 1:
        raise UsageError(f"{tree.where} holds several base directories", "choose one with --dir")
    return read_base(tree, bases[0])


def read_base(tree: Tree, base: str) -> Base:
    """What ``base`` holds: each image's changes, counted, and the image booted last."""
    listed = tree.listdirs([base, f"{base}/images"])
    if listed[base] is None:
        raise PersistenceError(f"no directory {base} on {tree.where}")
    ids = [n.name for n in listed[f"{base}/images"] or [] if n.is_dir]
    files, _ = walk(tree, [f"{base}/images/{i}/upper" for i in ids])
    images = []
    for image_id in ids:
        prefix = f"{base}/images/{image_id}/upper/"
        mine = [size for path, size in files if path.startswith(prefix)]
        when = (tree.read(f"{base}/images/{image_id}/last-boot") or "").strip() or None
        images.append(ImageChanges(image_id, when, len(mine), sum(mine)))
    old = [n.name for n in listed[base] or [] if n.is_dir and n.name.split(".")[0] == "upper"]
    last = (tree.read(f"{base}/image-id") or "").strip() or None
    return Base(base, last, tuple(images), tuple(old))


def list_lines(tree: Tree, base_dir: str | None = None) -> list[str]:
    """``persistence list``: one line per base directory, then one per image."""
    lines: list[str] = []
    for path in base_paths(tree, base_dir):
        base = read_base(tree, path)
        lines.append(f"{tree.where}: /{base.path}: {len(base.images)} images")
        for img in base.images:
            mark = "  (booted last)" if img.image_id == base.last_id else ""
            lines.append(
                f"  {img.image_id}  {img.files:6d} files {img.size:12,d} bytes  "
                f"last boot {img.last_boot or '?'}{mark}"
            )
        for name in base.old_layout:
            lines.append(f"  {name}: the layout of an older release (the next boot moves it)")
    if not lines:
        lines.append(f"{tree.where}: no overlayboot changes")
    return lines


def _select(base: Base, wanted: list[str]) -> tuple[list[str], list[str]]:
    """The ids of ``base`` that ``wanted`` (ids or unique prefixes) name; what named none."""
    ids = [i.image_id for i in base.images]
    chosen: list[str] = []
    unknown: list[str] = []
    for w in wanted:
        hits = [i for i in ids if i == w] or [i for i in ids if i.startswith(w)]
        if len(hits) > 1:
            raise UsageError(f"{w} names {len(hits)} images in /{base.path}", "give more of it")
        (chosen if hits else unknown).extend(hits or [w])
    return chosen, unknown


def prune(
    tree: Tree,
    ids: list[str],
    *,
    all_but_last: bool = False,
    force: bool = False,
    base_dir: str | None = None,
) -> list[str]:
    """Remove the changes of the images ``ids`` (or of all but the one booted last)."""
    if bool(ids) == all_but_last:
        raise UsageError("give the image ids to remove, or --all-but-last")
    for w in ids:
        if not _ID.fullmatch(w):
            raise UsageError(f"{w!r} is not an image id", "see overlayboot persistence list")
    done: list[str] = []
    missing = set(ids)
    for path in base_paths(tree, base_dir):
        base = read_base(tree, path)
        if all_but_last:
            chosen = [i.image_id for i in base.images if i.image_id != base.last_id]
        else:
            chosen, unknown = _select(base, ids)
            missing &= set(unknown)
        if base.last_id in chosen and not force:
            raise PersistenceError(
                f"{base.last_id} is the image booted last from /{base.path}",
                "its changes are in use while it runs: give --force to remove them too",
            )
        _check_unused(tree, [f"{path}/images/{i}/upper" for i in chosen])
        tree.remove([f"{path}/images/{i}" for i in chosen])
        done += [f"removed the changes of image {i} from /{path}" for i in chosen]
    if missing and ids:
        raise PersistenceError(
            f"no changes of image {', '.join(sorted(missing))} on {tree.where}",
            "see overlayboot persistence list",
        )
    return done or [f"{tree.where}: nothing to remove"]


def reset(tree: Tree, image_id: str | None = None, base_dir: str | None = None) -> list[str]:
    """``persistence reset``: remove one image's saved changes (default: the image booted
    last), as the boot's ``overlayboot.upper.reset`` does; the next boot starts it afresh."""
    if image_id is not None and not _ID.fullmatch(image_id):
        raise UsageError(f"{image_id!r} is not an image id", "see overlayboot persistence list")
    base = the_base(tree, base_dir)
    want = image_id or base.last_id
    chosen, unknown = _select(base, [want] if want else [])
    if not chosen or unknown:
        known = ", ".join(i.image_id for i in base.images) or "none"
        raise PersistenceError(
            f"no saved changes of image {want or '(none booted last)'} in /{base.path}",
            f"images: {known}",
        )
    _check_unused(tree, [f"{base.path}/images/{i}/upper" for i in chosen])
    tree.remove([f"{base.path}/images/{i}" for i in chosen])
    return [f"reset image {i} on /{base.path}: its saved changes are removed" for i in chosen]


def _check_unused(tree: Tree, uppers: list[str]) -> None:
    """A mounted directory: no overlay (or daemon) may be using the uppers."""
    if not isinstance(tree, DirTree):
        return
    from overlayboot.upper import users

    for upper in uppers:
        busy = users(os.fsencode((tree.root / upper).resolve()))
        if busy:
            raise PersistenceError(f"/{upper} is in use by {', '.join(busy)}")


# --- the target --------------------------------------------------------------------------


def _has_ext(path: Path, offset: int) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(offset + 1024 + 56)
            return f.read(2) == EXT_MAGIC
    except OSError as exc:
        raise PersistenceError(f"cannot read {path}: {exc.strerror}") from exc


def ext_offset(path: Path) -> int:
    """Where the ext2/3/4 filesystem of an image or device starts: 0, or an MBR partition."""
    if _has_ext(path, 0):
        return 0
    from mkimage import mbr

    with open(path, "rb") as f:
        sector0 = f.read(mbr.SECTOR)
    try:
        parts = mbr.read_table(sector0)
    except OverlaybootError:
        parts = []
    for part in parts:
        if _has_ext(path, part.start * mbr.SECTOR):
            return part.start * mbr.SECTOR
    raise PersistenceError(f"{path} holds no ext2/3/4 filesystem, nor a partition with one")


def open_target(target: Path) -> Tree:
    """A mount point or directory, an image file, or a block device (not mounted)."""
    if target.is_dir():
        return DirTree(target)
    if not target.exists():
        raise UsageError(f"{target} does not exist", "give a mount point, an image or a device")
    if stat.S_ISBLK(target.stat().st_mode):
        real = os.path.realpath(target)
        for m in mounttable.mounts():
            if os.path.realpath(m.source) == real:
                raise ConfigError(f"{target} is mounted on {m.target}", "give its mount point")
    elif not target.is_file():
        raise UsageError(f"{target} is neither a directory, an image file nor a block device")
    return DebugfsTree(target, ext_offset(target))
