"""Differential testing of an overlay against kernel overlayfs: trees, operations, sessions.

- ``TOP`` and ``BOTTOM`` describe two lower layers; ``build_lowers`` writes them.
- ``Op`` is one filesystem operation on paths relative to a mount; ``apply`` runs it
  and returns its outcome as a string (``"ok"``, ``"ok 5"`` or an errno name).
- ``scan`` takes a snapshot of a visible tree (or of an upper layer, with whiteouts
  and overlay xattrs); ``diff_trees`` turns two snapshots into readable lines.
- ``DiffSession`` mounts the subject and kernel overlayfs over the same lowers,
  applies each operation to both and compares outcomes and trees after each step;
  ``finish`` unmounts, compares the upper layers and mounts the subject's upper
  with kernel overlayfs to check that it shows the same tree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from overlayboot.fs import seal
from tests.fuse.helpers import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2
from tests.mounts import OVERLAYBOOT_KINDS, fresh_dir, overlay_mount, umount

REFERENCE = "kernel"

# Times given to every lower entry and by ``utime``: far in the past, so that an
# mtime older than OLD_NS can only come from the lowers or from utime, and must
# then be the same on both sides. Newer mtimes ("now") are not compared.
BASE_NS = 1_000_000_000 * 10**9
OLD_NS = 1_500_000_000 * 10**9

# -- the lower layers ---------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One entry of a lower layer (see the helpers below)."""

    kind: str  # dir, file, sparse, symlink, fifo, hardlink, whiteout
    data: bytes = b""
    size: int = 0  # sparse: the final size
    target: str = ""  # symlink: its target; hardlink: the path it links to
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()


def D(mode: int = 0o755, uid: int = 0, gid: int = 0, **x: bytes) -> Node:
    return Node("dir", mode=mode, uid=uid, gid=gid, xattrs=_x(x))


def F(data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0, **x: bytes) -> Node:
    return Node("file", data=data, mode=mode, uid=uid, gid=gid, xattrs=_x(x))


def _x(x: dict[str, bytes]) -> tuple[tuple[str, bytes], ...]:
    return tuple((k.replace("__", "."), v) for k, v in sorted(x.items()))


def _pattern(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed + i // 251) % 256 for i in range(n))


TOP: dict[str, Node] = {
    "merged": D(),
    "merged/t_only.txt": F(b"top only\n"),
    "merged/shared.txt": F(b"from top\n"),
    "merged/sub": D(),
    "merged/sub/t.txt": F(b"t\n"),
    "clash": F(b"a file in top, a dir in bottom\n"),
    "dir": D(),
    "dir/a": D(0o700),
    "dir/a/b": D(),
    "dir/a/b/c.txt": F(b"c" * 100),
    "dir/a/empty": D(),
    "dir/hl_b": Node("hardlink", target="hl_a"),
    "empty": D(),
    "small.txt": F(b"0123456789"),
    "medium.bin": F(_pattern(5000, 1)),
    "big.bin": F(_pattern(70000, 2), mode=0o640),
    "sparse.bin": Node("sparse", data=b"head", size=300_000),
    "link_rel": Node("symlink", target="small.txt"),
    "link_dir": Node("symlink", target="dir/a"),
    "link_dangling": Node("symlink", target="nowhere"),
    "link_abs": Node("symlink", target="/nonexistent-overlayboot-difftest/x"),
    "fifo": Node("fifo", mode=0o644),
    "hl_a": F(b"hard linked\n"),
    "xattr.txt": F(b"x\n", user__color=b"blue", user__empty=b""),
    "xdir": D(user__tag=b"dir"),
    "xdir/f": F(b"in xdir\n"),
    "suid.bin": F(b"#!/bin/true\n", mode=0o4755),
    "owned.txt": F(b"owned\n", mode=0o600, uid=1000, gid=1000),
    "ro.txt": F(b"read only\n", mode=0o444),
    "gone.txt": Node("whiteout"),
    "opq": D(trusted__overlay__opaque=b"y"),
    "opq/new.txt": F(b"new in opaque\n"),
}

BOTTOM: dict[str, Node] = {
    "merged": D(),
    "merged/b_only.txt": F(b"bottom only\n"),
    "merged/shared.txt": F(b"from bottom, hidden\n"),
    "merged/sub": D(),
    "merged/sub/deep.txt": F(b"deep\n"),
    "merged/bdir": D(0o750),
    "merged/bdir/x.txt": F(b"x\n"),
    "clash": D(),
    "clash/inner.txt": F(b"hidden by the file clash\n"),
    "bonly": D(0o775, uid=1000, gid=100),
    "bonly/file.txt": F(_pattern(3000, 3)),
    "bonly/empty": D(),
    "bfile.txt": F(b"bottom file\n"),
    "gone.txt": F(b"whited out by top\n"),
    "opq": D(),
    "opq/old.txt": F(b"hidden by the opaque dir\n"),
}

# Names that exist in no layer, in the root and in a few directories.
NEW_PATHS = ["n1", "n2", "merged/n3", "dir/a/n4", "bonly/n5", "clash/n6", "empty/n7", "opq/n8"]
LOWER_PATHS = sorted(set(TOP) | set(BOTTOM))
PATHS = LOWER_PATHS + NEW_PATHS
# Symlink targets stay inside the mount or point nowhere: creating a file through
# one that led outside would leave state shared by both mounts.
SYMLINK_TARGETS = ["small.txt", "merged", "dir/a", "nowhere", "merged/../small.txt", "/nonexistent"]


def _build_layer(root: Path, nodes: dict[str, Node]) -> None:
    root.mkdir(parents=True)
    order = sorted(nodes, key=lambda p: (nodes[p].kind == "hardlink", p))
    for rel in order:
        n, p = nodes[rel], root / rel
        if n.kind == "dir":
            p.mkdir()
        elif n.kind in ("file", "sparse"):
            p.write_bytes(n.data)
            if n.kind == "sparse":
                with open(p, "r+b") as f:
                    f.seek(n.size - 4)
                    f.write(b"tail")
        elif n.kind == "symlink":
            p.symlink_to(n.target)
        elif n.kind == "fifo":
            os.mkfifo(p)
        elif n.kind == "hardlink":
            os.link(root / n.target, p)
        elif n.kind == "whiteout":
            os.mknod(p, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        else:
            raise ValueError(n.kind)
        if n.kind in ("dir", "file", "sparse", "fifo"):
            os.chown(p, n.uid, n.gid)
            os.chmod(p, n.mode)
        for name, value in n.xattrs:
            os.setxattr(p, name, value)
    everything = [root / rel for rel in sorted(nodes, reverse=True)] + [root]
    for i, p in enumerate(everything):
        t = BASE_NS + i * 1_000_000_123
        os.utime(p, ns=(t, t), follow_symlinks=False)


def build_lowers(base: Path) -> list[Path]:
    """Write the two lower layers under ``base``; return them top first."""
    top, bottom = base / "top", base / "bottom"
    _build_layer(bottom, BOTTOM)
    _build_layer(top, TOP)
    return [top, bottom]


# -- operations ---------------------------------------------------------------


class Fill:
    """``n`` bytes of value ``byte``: data with a short repr for failure reports.

    (Not a dataclass: Hypothesis prints those field by field, over several lines.)
    """

    __slots__ = ("byte", "n")

    def __init__(self, byte: int, n: int) -> None:
        self.byte, self.n = byte, n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fill) and (self.byte, self.n) == (other.byte, other.n)

    def __hash__(self) -> int:
        return hash((self.byte, self.n))

    def __bytes__(self) -> bytes:
        return bytes([self.byte]) * self.n

    def __repr__(self) -> str:
        return f"{bytes([self.byte])!r}*{self.n}"


@dataclass(frozen=True)
class Op:
    """One operation: ``name`` is a function of this module named ``op_NAME``."""

    name: str
    args: tuple[object, ...]

    def __str__(self) -> str:
        return f"{self.name}({', '.join(map(repr, self.args))})"


def apply(op: Op, root: Path) -> str:
    """Run ``op`` under ``root``; its outcome as ``"ok"``, ``"ok VALUE"`` or an errno name."""
    fn = globals()[f"op_{op.name}"]
    args = [bytes(a) if isinstance(a, Fill) else a for a in op.args]
    try:
        value = fn(str(root), *args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok" if value is None else f"ok {value!r}"


def _p(root: str, rel: str) -> str:
    return os.path.join(root, rel)


def _write_fd(path: str, flags: int, data: bytes, offset: int | None = None) -> int:
    # O_NONBLOCK: opening a fifo for writing fails with ENXIO instead of hanging.
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        return os.pwrite(fd, data, offset) if offset is not None else os.write(fd, data)
    finally:
        os.close(fd)


def op_create_write(root: str, rel: str, how: str, data: bytes) -> int:
    extra = {"trunc": os.O_TRUNC, "excl": os.O_EXCL, "keep": 0}[how]
    return _write_fd(_p(root, rel), os.O_WRONLY | os.O_CREAT | extra, data)


def op_write_at(root: str, rel: str, offset: int, data: bytes) -> int:
    return _write_fd(_p(root, rel), os.O_WRONLY, data, offset)


def op_append(root: str, rel: str, data: bytes) -> int:
    return _write_fd(_p(root, rel), os.O_WRONLY | os.O_APPEND, data)


def op_truncate(root: str, rel: str, size: int) -> None:
    os.truncate(_p(root, rel), size)


def op_ftruncate(root: str, rel: str, size: int) -> None:
    fd = os.open(_p(root, rel), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def op_rename(root: str, src: str, dst: str, flags: str) -> None:
    if flags == "plain":
        os.rename(_p(root, src), _p(root, dst))
    else:
        bits = {"noreplace": RENAME_NOREPLACE, "exchange": RENAME_EXCHANGE}[flags]
        renameat2(_p(root, src), _p(root, dst), bits)


def op_unlink(root: str, rel: str) -> None:
    os.unlink(_p(root, rel))


def op_rmdir(root: str, rel: str) -> None:
    os.rmdir(_p(root, rel))


def op_mkdir(root: str, rel: str, mode: int) -> None:
    os.mkdir(_p(root, rel), mode)


def op_link(root: str, src: str, dst: str) -> None:
    os.link(_p(root, src), _p(root, dst), follow_symlinks=False)


def op_symlink(root: str, target: str, rel: str) -> None:
    os.symlink(target, _p(root, rel))


def op_chmod(root: str, rel: str, mode: int) -> None:
    os.chmod(_p(root, rel), mode)


def op_chown(root: str, rel: str, uid: int, gid: int) -> None:
    os.chown(_p(root, rel), uid, gid, follow_symlinks=False)


def op_utime(root: str, rel: str, atime_ns: int, mtime_ns: int) -> None:
    os.utime(_p(root, rel), ns=(atime_ns, mtime_ns), follow_symlinks=False)


def op_setxattr(root: str, rel: str, name: str, value: bytes, flags: int) -> None:
    os.setxattr(_p(root, rel), name, value, flags, follow_symlinks=False)


def op_removexattr(root: str, rel: str, name: str) -> None:
    os.removexattr(_p(root, rel), name, follow_symlinks=False)


def op_mkfifo(root: str, rel: str, mode: int) -> None:
    os.mkfifo(_p(root, rel), mode)


def op_read(root: str, rel: str) -> int:
    """Open for reading and read (a lower file must stay a lower file)."""
    fd = os.open(_p(root, rel), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return len(os.read(fd, 1 << 20))
    finally:
        os.close(fd)


# -- snapshots ----------------------------------------------------------------

# Bookkeeping xattrs of the implementations, ignored in upper layers.
IGNORED_UPPER_XATTRS = (
    "trusted.overlay.origin",
    "trusted.overlay.impure",
    "trusted.overlay.nlink",
    "trusted.overlay.uuid",
    "trusted.overlay.upper",
)
OWN_XATTRS = ("trusted.overlayboot.", "user.overlayboot.")
IGNORED_UPPER_PREFIXES = OWN_XATTRS
# Inside the work directory, each implementation's own directory: kernel overlayfs'
# index/ and work/, overlayboot's overlayboot/ (README, "On-disk format") in which only
# index/ and daemon.log may remain after a clean unmount (tmp.* would be a lost copy-up).
KERNEL_WORK_ENTRIES = {"index", "work"}
OWN_WORK_ENTRY = dict.fromkeys(OVERLAYBOOT_KINDS, "overlayboot")
OWN_WORK_KEPT = {"index", "daemon.log"}


@dataclass(frozen=True)
class Entry:
    """What is compared of one name; None where a field does not apply."""

    kind: str  # dir, file, symlink, fifo, chr, blk, sock, whiteout
    mode: int
    uid: int
    gid: int
    size: int | None = None  # not for directories
    nlink: int | None = None  # not for directories (merged dirs report 1)
    data: bytes | None = None
    target: bytes | None = None
    rdev: tuple[int, int] | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()
    mtime_ns: int | None = None  # only when older than OLD_NS
    links: tuple[str, ...] | None = None  # other names of the same inode
    dirent: tuple[str, ...] = ()  # where its directory entry disagrees with lstat


Tree = dict[str, Entry]

# For triage only: OVERLAYBOOT_DIFF_IGNORE=mtime_ns,links leaves fields out of every
# comparison, to look past a known disagreement. Unset, everything is compared.
IGNORED_FIELDS = frozenset(filter(None, os.environ.get("OVERLAYBOOT_DIFF_IGNORE", "").split(",")))
assert not IGNORED_FIELDS - {f.name for f in fields(Entry)}, f"unknown field in {IGNORED_FIELDS}"

_KINDS = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFSOCK: "sock",
}


def _xattrs(path: str, upper: bool) -> tuple[tuple[str, bytes], ...]:
    out = []
    for name in sorted(os.listxattr(path, follow_symlinks=False)):
        if upper and (name in IGNORED_UPPER_XATTRS or name.startswith(IGNORED_UPPER_PREFIXES)):
            continue
        out.append((name, os.getxattr(path, name, follow_symlinks=False)))
    return tuple(out)


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@dataclass
class _Dirent:
    """What readdir said of a name, checked against its lstat."""

    ino: int
    kind: str
    count: int = 1

    def problems(self, st: os.stat_result) -> tuple[str, ...]:
        out = []
        if self.count > 1:
            out.append(f"listed {self.count} times")
        if self.kind not in ("?", _KINDS[stat.S_IFMT(st.st_mode)]):
            out.append(f"d_type {self.kind}")
        if self.ino != st.st_ino:
            out.append("d_ino is not st_ino")
        return tuple(out)


def _dirent_kind(d: os.DirEntry[str]) -> str:
    # DirEntry answers from d_type without a system call when d_type is known.
    if d.is_symlink():
        return "symlink"
    if d.is_dir(follow_symlinks=False):
        return "dir"
    if d.is_file(follow_symlinks=False):
        return "file"
    return "?"


def scan(root: Path, *, upper: bool = False) -> Tree:
    """Snapshot the tree under ``root`` (keys are relative paths, ``"."`` for the root).

    With ``upper``, ``root`` is an upper layer: whiteouts are their own kind, overlay
    xattrs are kept (but not the bookkeeping ones), nlink and link groups are not kept.
    """
    tree: Tree = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    stack: list[tuple[str, str, _Dirent | None]] = [(str(root), ".", None)]
    while stack:
        path, rel, dirent = stack.pop()
        st = os.lstat(path)
        kind = _KINDS[stat.S_IFMT(st.st_mode)]
        rdev = (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("chr", "blk") else None
        if upper and kind == "chr" and rdev == (0, 0):
            kind = "whiteout"
        is_dir = kind == "dir"
        tree[rel] = Entry(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=None if is_dir or kind == "whiteout" else st.st_size,
            nlink=None if is_dir or upper else st.st_nlink,
            data=_read(path) if kind == "file" else None,
            target=os.fsencode(os.readlink(path)) if kind == "symlink" else None,
            rdev=rdev,
            xattrs=_xattrs(path, upper),
            mtime_ns=st.st_mtime_ns if st.st_mtime_ns < OLD_NS else None,
            dirent=dirent.problems(st) if dirent else (),
        )
        if kind == "whiteout":
            # Only its name means something. The kernel makes whiteouts in its work dir
            # (or links a shared one) and renames them in, so it ignores the setgid bit
            # of the directory: owner, mode and times are left out.
            tree[rel] = Entry(kind=kind, mode=0, uid=0, gid=0, rdev=rdev, xattrs=tree[rel].xattrs)
        if not is_dir:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            continue
        listed: dict[str, _Dirent] = {}
        with os.scandir(path) as it:
            for d in it:
                if d.name in listed:
                    listed[d.name].count += 1
                else:
                    listed[d.name] = _Dirent(d.inode(), _dirent_kind(d))
        for name in sorted(listed, reverse=True):
            child = name if rel == "." else f"{rel}/{name}"
            stack.append((os.path.join(path, name), child, listed[name]))
    if not upper:
        for group in inodes.values():
            for rel in group:
                others = tuple(sorted(r for r in group if r != rel))
                tree[rel] = _replace(tree[rel], links=others)
    return tree


def _replace(e: Entry, **changes: object) -> Entry:
    return dataclasses.replace(e, **changes)  # type: ignore[arg-type]


def without(tree: Tree, *names: str, skip: set[str] | frozenset[str] = frozenset()) -> Tree:
    """The tree less the paths in ``skip``, with the given Entry fields blanked."""
    blank = dict.fromkeys(names)
    return {rel: _replace(e, **blank) for rel, e in tree.items() if rel not in skip}


def _show(field: str, value: object) -> str:
    if field == "mode" and isinstance(value, int):
        return oct(value)
    if isinstance(value, bytes) and len(value) > 48:
        return f"{value[:40]!r}...({len(value)} bytes)"
    return repr(value)


def _data_diff(a: bytes, b: bytes) -> str:
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return (
        f"sizes {len(a)} / {len(b)}, first difference at offset {n}: "
        f"{a[n : n + 16]!r} / {b[n : n + 16]!r}"
    )


def diff_trees(a: Tree, b: Tree, name_a: str, name_b: str, limit: int = 40) -> list[str]:
    """Readable differences between two snapshots (empty when equal)."""
    lines: list[str] = []
    for rel in sorted(set(a) | set(b)):
        ea, eb = a.get(rel), b.get(rel)
        if ea == eb:
            continue
        if ea is None or eb is None:
            who, e = (name_a, ea) if eb is None else (name_b, eb)
            assert e is not None
            lines.append(f"  {rel}: only in {who} ({e.kind}, mode {oct(e.mode)})")
            continue
        for f in fields(Entry):
            va, vb = getattr(ea, f.name), getattr(eb, f.name)
            if va == vb or f.name in IGNORED_FIELDS:
                continue
            if f.name == "data" and isinstance(va, bytes) and isinstance(vb, bytes):
                lines.append(f"  {rel}: data: {_data_diff(va, vb)}")
            else:
                lines.append(
                    f"  {rel}: {f.name}: {name_a}={_show(f.name, va)} {name_b}={_show(f.name, vb)}"
                )
    if len(lines) > limit:
        lines = [*lines[:limit], f"  ... and {len(lines) - limit} more"]
    return lines


# -- a session: the subject and the reference side by side --------------------


_LOWER_VIEWS: dict[tuple[Path, ...], Tree] = {}


def lower_view(lowers: Sequence[Path], mnt: Path) -> Tree:
    """The tree the lowers show on their own (a read-only kernel overlay), cached."""
    key = tuple(lowers)
    if key not in _LOWER_VIEWS:
        mnt.mkdir(parents=True, exist_ok=True)
        opts = "lowerdir=" + ":".join(str(p) for p in lowers)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True)
        try:
            _LOWER_VIEWS[key] = scan(mnt)
        finally:
            umount(mnt)
    return _LOWER_VIEWS[key]


_MULTILINKED: dict[tuple[Path, ...], set[tuple[int, int]]] = {}


def multilinked(lowers: Sequence[Path]) -> set[tuple[int, int]]:
    """(layer index, inode) of every regular lower file with more than one name."""
    key = tuple(lowers)
    if key not in _MULTILINKED:
        found = set()
        for idx, layer in enumerate(lowers):
            for dirpath, _dirs, files in os.walk(layer):
                for name in files:
                    st = os.lstat(os.path.join(dirpath, name))
                    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                        found.add((idx, st.st_ino))
        _MULTILINKED[key] = found
    return _MULTILINKED[key]


def _origin(path: Path) -> tuple[int, int] | None:
    """overlayboot's record of the lower file a copy-up came from ("LAYER:INO")."""
    try:
        value = os.getxattr(path, "trusted.overlayboot.origin", follow_symlinks=False)
        layer, ino = value.split(b":")
        return int(layer), int(ino)
    except (OSError, ValueError):
        return None


def _same_as_lower(upper: Entry, lower: Entry) -> bool:
    return upper.kind != "whiteout" and upper == _replace(lower, nlink=None, links=None, dirent=())


class Mismatch(AssertionError):
    """The subject and kernel overlayfs disagree."""


@contextlib.contextmanager
def _no_mounts_below(base: Path) -> Iterator[None]:
    yield
    still = [m for m in base.glob("*/mnt") if os.path.ismount(m)]
    if not still:
        shutil.rmtree(base, ignore_errors=True)


class DiffSession:
    """Mounts ``subject`` and kernel overlayfs over ``lowers`` and runs operations on both.

    Every directory of the session lives under ``base`` (removed by ``finish``).
    """

    def __init__(self, subject: str, lowers: Sequence[Path], base: Path) -> None:
        self.subject = subject
        self.lowers = list(lowers)
        self.base = fresh_dir(base)
        self.names = (subject if subject != REFERENCE else "subject", REFERENCE)
        self.dirs = [base / "s", base / "r"]
        self.history: list[str] = []
        self.failed = False
        self.upper_tree: Tree = {}
        self._stack = contextlib.ExitStack()
        self.mnts: list[Path] = []

    def start(self) -> DiffSession:
        try:
            for kind, d in zip((self.subject, REFERENCE), self.dirs, strict=True):
                mnt = overlay_mount(kind, self.lowers, d / "upper", d / "work", d / "mnt")
                self.mnts.append(self._stack.enter_context(mnt))
            self._compare("mount", "ok", "ok")
        except BaseException:
            self.failed = True
            self._stack.close()
            raise
        return self

    def step(self, op: Op) -> str:
        """Apply ``op`` to both mounts; raise Mismatch if outcomes or trees differ."""
        __tracebackhide__ = True
        out_s = apply(op, self.mnts[0])
        out_r = apply(op, self.mnts[1])
        self._compare(str(op), out_s, out_r)
        return out_r

    def _compare(self, what: str, out_s: str, out_r: str) -> None:
        __tracebackhide__ = True
        n = len(self.history)
        self.history.append(f"{n:3}: {what}  -> {out_r}")
        try:
            ts, tr = scan(self.mnts[0]), scan(self.mnts[1])
        except BaseException:
            self.failed = True
            raise
        if self.subject in OVERLAYBOOT_KINDS:
            ts = self._documented_nlink(ts, tr)
        diff = diff_trees(ts, tr, *self.names)
        if out_s != out_r or diff:
            self.failed = True
            a, b = self.names
            msg = [f"step {n}: {what}", f"  {a}: {out_s}", f"  {b}: {out_r}"]
            if diff:
                msg += [f"visible trees differ after step {n} ({a} / {b}):", *diff]
            msg += ["operations so far:", *self.history]
            raise Mismatch("\n".join(msg))

    def _documented_nlink(self, ts: Tree, tr: Tree) -> Tree:
        """Tolerate a documented difference (README, "Known differences"): the nlink of a
        lower hard link not yet copied up is the lower file's, even after one of its
        names was removed; kernel overlayfs (index=on) counts the removal."""
        view: Tree = {}
        out = dict(ts)
        for rel, e in ts.items():
            other = tr.get(rel)
            if other is None or e.nlink is None or other.nlink is None or e.nlink <= other.nlink:
                continue
            view = view or lower_view(self.lowers, self.base / "lowerview")
            lower = view.get(rel)
            if lower is not None and lower.nlink == e.nlink and e.nlink > 1:
                out[rel] = _replace(e, nlink=other.nlink)
        return out

    def finish(self) -> None:
        """Unmount; unless a step failed, compare the uppers and check interoperability."""
        with _no_mounts_below(self.base):
            if self.failed:
                try:
                    self._stack.close()
                except Exception as exc:  # the step's failure is the one to report
                    print(f"unmounting after the failure: {exc}", file=sys.stderr)
                return
            final = scan(self.mnts[0])
            self._stack.close()
            self._seal_partial_copy_ups()
            self._check_uppers(final)
            self._check_interop(final)

    def _seal_partial_copy_ups(self) -> None:
        """Make the subject's upper kernel overlayfs format: what ``overlayboot upper seal``
        does (README, "Partial copy-up"). Every partial copy-up must check out first."""
        if self.subject not in OVERLAYBOOT_KINDS:
            return
        upper = os.fsencode(self.dirs[0] / "upper")
        lowers = [os.fsencode(p) for p in self.lowers]
        bad = [f for f in seal.walk(upper, lowers) if f.problem is not None]
        if bad:
            self._fail("upper check found problems:", [f"  {f.rel!r}: {f.problem}" for f in bad])
        unsealed = [f for f in seal.walk(upper, lowers, seal=True) if not f.sealed]
        if unsealed:
            self._fail("upper seal failed:", [f"  {f.rel!r}: {f.problem}" for f in unsealed])

    def _fail(self, title: str, lines: list[str]) -> None:
        __tracebackhide__ = True
        raise Mismatch("\n".join([title, *lines, "operations:", *self.history]))

    def _check_uppers(self, final: Tree) -> None:
        us, ur = (scan(d / "upper", upper=True) for d in self.dirs)
        self.upper_tree = dict(us)
        view: Tree = {}
        for rel in set(us) ^ set(ur):
            e = us.get(rel) or ur[rel]
            # A copy-up that changed nothing is invisible: the kernel copies up before
            # some operations that then fail (setxattr with XATTR_REPLACE of a missing
            # name, say). A name in one upper only is tolerated when it equals what the
            # lowers show there.
            view = view or lower_view(self.lowers, self.base / "lowerview")
            tolerated = rel in view and _same_as_lower(e, view[rel])
            # Documented (README, "Known differences"): when a multiply-linked lower file
            # is copied up, overlayboot links its other names into the upper too; the
            # kernel links a name only when that name is copied up and reaches the copy
            # through its index until then. Tolerated in the subject's upper for a copy
            # of a multiply-linked lower file (by its trusted.overlayboot.origin, README,
            # "On-disk format") that shows exactly what the mount showed there.
            seen = final.get(rel)
            tolerated |= (
                rel not in ur
                and seen is not None
                and e == _replace(seen, nlink=None, links=None, dirent=())
                and _origin(self.dirs[0] / "upper" / rel) in multilinked(self.lowers)
            )
            # The kernel's copy-up before a failing operation may sit under a name the
            # lowers do not have there (its directory renamed or exchanged since, a
            # redirect): tolerated in the reference's upper when it shows exactly what
            # the mount shows at that name.
            tolerated |= (
                rel not in us
                and seen is not None
                and e.kind == "file"
                and e == _replace(seen, nlink=None, links=None, dirent=())
            )
            if tolerated:
                us.pop(rel, None)
                ur.pop(rel, None)
        diff = diff_trees(us, ur, *self.names)
        if diff:
            self._fail("after unmount the upper layers differ:", diff)
        left = []
        for kind, d in zip((self.subject, REFERENCE), self.dirs, strict=True):
            own = OWN_WORK_ENTRY.get(kind)
            names = set(os.listdir(d / "work")) - KERNEL_WORK_ENTRIES
            if own in names:
                names.remove(own)
                kept = set(os.listdir(d / "work" / own)) - OWN_WORK_KEPT
                names.update(f"{own}/{n}" for n in kept)
            left.append(sorted(names))
        if left[0] != left[1]:
            self._fail("after unmount the work dirs differ:", [f"  {left[0]} / {left[1]}"])

    def _check_interop(self, final: Tree) -> None:
        d = self.base / "interop"
        upper = self.dirs[0] / "upper"
        with overlay_mount(REFERENCE, self.lowers, upper, d / "work", d / "mnt") as mnt:
            seen = scan(mnt)
        # Hard-link identity of copied-up lower files lives in the kernel's index (in
        # the work dir, which is fresh here): a name still served from a lower layer
        # whose hard-linked alias was copied up shows the alias' data and attributes
        # only through the index. So such names, nlink and link groups are skipped.
        skip = {rel for rel, e in final.items() if e.links and rel not in self.upper_tree}
        # The kernel shows every trusted.* xattr but its own: overlayboot's bookkeeping
        # (under trusted.overlayboot., as DESIGN.md decides) is visible to it.
        seen = {
            rel: _replace(e, xattrs=tuple(x for x in e.xattrs if not x[0].startswith(OWN_XATTRS)))
            for rel, e in seen.items()
        }
        # And without trusted.overlay.origin/impure (kernel bookkeeping that overlayboot
        # does not write) the kernel's readdir d_ino of copied-up directories is not
        # their st_ino: the readdir/lstat agreement is the subject's, not checked here.
        diff = diff_trees(
            without(final, "nlink", "links", "dirent", skip=skip),
            without(seen, "nlink", "links", "dirent", skip=skip),
            f"{self.names[0]}-mount",
            "kernel-on-its-upper",
        )
        if diff:
            self._fail(f"kernel overlayfs on {self.names[0]}'s upper shows another tree:", diff)
