"""Lazy copy-on-write clones inside the overlay (``overlayboot clone SRC DST``).

A clone shows what its source showed at that moment and changes apart from it:

- a lower directory becomes an upper directory with an absolute ``overlay.redirect`` to
  it (kernel overlayfs' form for a moved directory): constant time, and its entries are
  read through the lower layers, which never change, until they are written;
- a lower regular file becomes a partial copy-up with no chunk yet (a sparse upper file
  and its chunk map, see ``chunked``): its data stays in the lower until written, chunk
  by chunk;
- the upper part of a source (an upper or merged directory) is cloned entry by entry:
  directories are made, whiteouts, opaque marks and redirects copied, upper regular files
  linked and marked shared (``cow``: each name gets a copy of its own at its first
  change), an upper file that is open copied, one with hard links of its own copied
  once (its names in the clone stay hard links of each other, as ``cp -a`` keeps them);
- a single upper file is copied (keeping holes, so a partial copy-up costs its chunks).

The root directory of a clone carries ``overlayboot.clone``, a random number: everything
seen below it gets inode numbers of its own (``inodes.clone_ino``), so a clone's files
are never taken for its source's. The clone is built under the work dir and renamed into
place: after a crash it is there whole or not at all (``Overlay.prepare_scratch`` removes
what a crash left).
"""

from __future__ import annotations

import errno
import os
import random
import stat
from dataclasses import dataclass

import trio

from overlayboot.fs import chunked, cow, longpath, sysio
from overlayboot.fs.chunkmap import LowerIdentity
from overlayboot.fs.clonereq import R_OK, W_OK, X_OK, Caller, CloneRequest
from overlayboot.fs.cloneseal import encode_mark
from overlayboot.fs.copyup import copy_up, copy_xattrs, remove_tmp
from overlayboot.fs.core import Overlay
from overlayboot.fs.datacopy import copy_data
from overlayboot.fs.dirops import is_lower_positive
from overlayboot.fs.inodes import Node
from overlayboot.fs.lookup import LowerRef, Resolved, lookup, upper_entry
from overlayboot.fs.whiteout import (
    XattrNames,
    getxattr,
    is_whiteout_stat,
    make_whiteout,
    set_opaque,
    set_redirect,
)

THREAD_COPY_MIN = 1 << 20


@dataclass(frozen=True)
class Build:
    """One clone being built: the upper files open now (``busy``: copied, not shared),
    and the copies made of upper files with hard links (by source inode: their other
    names in the clone link to it)."""

    busy: frozenset[int]
    links: dict[int, bytes]


@dataclass(frozen=True)
class Source:
    """What a clone copies: a merged entry, where its upper part is (if any)."""

    res: Resolved
    upper: bytes | None  # the upper path, when the upper has it

    @property
    def lower(self) -> LowerRef | None:
        return self.res.lowers[0] if self.res.lowers else None


async def clone(overlay: Overlay, parent: Node, req: CloneRequest, caller: Caller) -> None:
    """Make ``parent/req.name`` a clone of ``req.src``. Caller holds the lock."""
    caller.require(overlay.stat(parent).st, W_OK | X_OK)
    if overlay.resolve(parent, req.name) is not None:
        raise OSError(errno.EEXIST, "exists")
    src = find_source(overlay, req.src, caller)
    await copy_up(overlay, parent)
    tmp = await build_top(overlay, src)
    try:
        place(overlay, parent, req.name, tmp, src)
    except BaseException:
        remove_tmp(tmp)
        raise
    fd = longpath.open(overlay.upper_path(parent), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def find_source(overlay: Overlay, rel: bytes, caller: Caller) -> Source:
    """Resolve ``rel`` from the root by the layers (no nodes made), checking that the
    caller may search every directory on the way and read the source."""
    upper: bytes | None = overlay.upper_root
    lowers: tuple[LowerRef, ...] = overlay.table.root.lowers
    res: Resolved | None = None
    dir_st = longpath.lstat(overlay.upper_root)
    for part in rel.split(b"/"):
        if res is not None and not res.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        caller.require(dir_st, X_OK)
        res = lookup(overlay.layers, overlay.names, upper, lowers, part)
        if res is None:
            raise OSError(errno.ENOENT, "no such source")
        upper = upper + b"/" + part if upper is not None and res.upper is not None else None
        lowers = () if res.opaque else res.lowers
        dir_st = _stat_of(overlay, res)
    assert res is not None
    caller.require(dir_st, R_OK if not res.is_dir else R_OK | X_OK)
    return Source(res, upper)


def _stat_of(overlay: Overlay, res: Resolved) -> os.stat_result:
    if res.upper is not None:
        return res.upper
    idx, rel = res.lowers[0]
    return overlay.layers[idx].lstat(rel)


def place(overlay: Overlay, parent: Node, name: bytes, tmp: bytes, src: Source) -> None:
    """Rename the built clone ``tmp`` to ``parent/name`` (over a whiteout if one is there).

    A directory that shows no lower directory of its own (no redirect) is made opaque
    where the parent's lower layers have the name, as ``mkdir`` does."""
    upath = overlay.upper_child(parent, name)
    existing = upper_entry(upath)
    if existing is not None and not is_whiteout_stat(existing):
        raise OSError(errno.EEXIST, "exists")
    is_dir = src.res.is_dir
    redirected = is_dir and bool(src.res.lowers) and not src.res.opaque
    hides = existing is not None or is_lower_positive(overlay, parent, name)
    if is_dir and not redirected and hides:
        set_opaque(tmp, overlay.names)
    if existing is None:
        longpath.rename(tmp, upath, sysio.RENAME_NOREPLACE)
    elif is_dir:
        longpath.rename(tmp, upath, sysio.RENAME_EXCHANGE)
        longpath.unlink(tmp)
    else:
        longpath.rename(tmp, upath)


async def build_top(overlay: Overlay, src: Source) -> bytes:
    """The clone of ``src`` built under the work dir; its path there."""
    tmp = overlay.tmp_path()
    try:
        if src.res.is_dir:
            busy = _open_upper_files(overlay) if src.upper is not None else frozenset()
            await build_dir(overlay, src, tmp, Build(busy, {}), top=True)
        elif src.upper is not None:
            st = longpath.lstat(src.upper)
            if stat.S_ISREG(st.st_mode):
                await copy_upper_file(overlay, src.upper, tmp)
            else:  # a symlink, fifo or device: made anew (opening it would follow it)
                _copy_special(overlay.names, src.upper, tmp, st)
        else:
            lower = src.lower
            assert lower is not None
            await copy_lower(overlay, lower, tmp)
    except BaseException:
        remove_tmp(tmp)
        raise
    return tmp


async def build_dir(overlay: Overlay, src: Source, tmp: bytes, build: Build, *, top: bool) -> None:
    """The directory ``src`` at ``tmp``: its lower part by redirect, its upper part
    entry by entry (see the module's docstring)."""
    res = src.res
    real = src.upper if src.upper is not None else _lower_path(overlay, src)
    st = _stat_of(overlay, res)
    longpath.mkdir(tmp, 0o700)
    if res.opaque:
        set_opaque(tmp, overlay.names)
    if top:
        if res.lowers and not res.opaque:
            set_redirect(tmp, b"/" + res.lowers[0][1], overlay.names)
            _check_redirect(overlay, tmp, res)
        _new_mark(overlay, tmp)
    elif src.upper is not None:
        if res.redirect is not None:
            set_redirect(tmp, res.redirect, overlay.names)  # same parent stack: same meaning
        if getxattr(src.upper, overlay.names.clone) is not None:
            # a clone inside the source: its copy shows the same lower directory again,
            # so it needs numbers of its own too
            _new_mark(overlay, tmp)
    if src.upper is not None:
        await clone_entries(overlay, src, tmp, build)
    _set_attributes(overlay.names, real, tmp, st)


def _new_mark(overlay: Overlay, path: bytes) -> None:
    """Make ``path`` the root of a clone: a new random number, and the lower roots."""
    roots = [layer.root for layer in overlay.layers]
    longpath.setxattr(path, overlay.names.clone, encode_mark(random.getrandbits(62), roots))


def _check_redirect(overlay: Overlay, tmp: bytes, res: Resolved) -> None:
    """An absolute redirect is looked up from the top lower layer down: it must find the
    source's own stack (it does unless a layer above the source's hides it)."""
    parent, _, name = tmp.rpartition(b"/")
    again = lookup(overlay.layers, overlay.names, parent, (), name)
    if again is None or again.lowers != res.lowers:
        raise OSError(errno.EXDEV, "this directory's lower layers cannot be redirected to")


async def clone_entries(overlay: Overlay, src: Source, tmp: bytes, build: Build) -> None:
    """The upper entries of directory ``src`` into ``tmp`` (sub-directories recursively)."""
    assert src.upper is not None
    lowers = () if src.res.opaque else src.res.lowers
    with longpath.scandir(src.upper) as entries:
        names = [e.name for e in entries]
    for name in names:
        spath = src.upper + b"/" + name
        dpath = tmp + b"/" + name
        st = longpath.lstat(spath)
        if is_whiteout_stat(st):
            make_whiteout(dpath)
        elif stat.S_ISDIR(st.st_mode):
            res = lookup(overlay.layers, overlay.names, src.upper, lowers, name)
            assert res is not None
            await build_dir(overlay, Source(res, spath), dpath, build, top=False)
        elif stat.S_ISREG(st.st_mode):
            await share_file(overlay, spath, dpath, st, build)
        else:
            _copy_special(overlay.names, spath, dpath, st)
    await trio.lowlevel.checkpoint()


async def share_file(
    overlay: Overlay, spath: bytes, dpath: bytes, st: os.stat_result, build: Build
) -> None:
    """Link an upper file into the clone, marked shared; copy it if it is open (its
    writers would change both) or has hard links of its own (copied once: its other
    names in the clone are hard links of that copy, as with ``cp -a``)."""
    if st.st_nlink > 1 and not cow.shared(spath, overlay.names):
        first = build.links.get(st.st_ino)
        if first is not None:
            longpath.link(first, dpath)
            return
        await copy_upper_file(overlay, spath, dpath)
        build.links[st.st_ino] = dpath
        return
    if st.st_ino in build.busy:
        await copy_upper_file(overlay, spath, dpath)
        return
    cow.mark(overlay, spath)
    longpath.link(spath, dpath)


def _open_upper_files(overlay: Overlay) -> frozenset[int]:
    """The upper inode numbers of the files open through the mount (written, perhaps)."""
    found: set[int] = set(overlay.partials.open)
    for node in list(overlay.table.nodes.values()):
        if node.handles > 0 and node.upper and not node.is_dir:
            try:
                found.add(longpath.lstat(overlay.upper_path(node)).st_ino)
            except OSError:
                pass
    for p in overlay.partials.open.values():
        p.persist()  # the map on disk is what a copy of the file reads
    return frozenset(found)


async def copy_upper_file(overlay: Overlay, spath: bytes, dpath: bytes) -> None:
    """A copy of upper file ``spath`` at ``dpath`` (holes and a chunk map kept)."""
    tmp = await cow.own_copy(overlay, spath)
    longpath.rename(tmp, dpath)
    for name in (overlay.names.origin, overlay.names.pending):
        try:
            longpath.removexattr(dpath, name)  # a new file: its own number, no lower links
        except OSError:
            pass


async def copy_lower(overlay: Overlay, lower: LowerRef, tmp: bytes) -> None:
    """A clone of a lower non-directory: a regular file as a partial copy-up with no
    chunk yet (its data read from the lower until written), others copied."""
    idx, rel = lower
    layer = overlay.layers[idx]
    path = layer.path(rel)
    st = layer.lstat(rel)
    if not stat.S_ISREG(st.st_mode):
        _copy_special(overlay.names, path, tmp, st)
        return
    fd = longpath.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        ident = LowerIdentity(idx, rel, layer.root, st.st_size, st.st_ino, st.st_mtime_ns, b"")
        parts = overlay.partials
        if st.st_size and not chunked.begin(fd, path, st, ident, parts.shift, parts.name):
            if st.st_size >= THREAD_COPY_MIN:
                await trio.to_thread.run_sync(copy_data, path, fd, st.st_size)
            else:
                copy_data(path, fd, st.st_size)
        os.fsync(fd)
        parts.verified.add(os.fstat(fd).st_ino)
    finally:
        os.close(fd)
    _set_attributes(overlay.names, path, tmp, st)


def _copy_special(names_: XattrNames, src: bytes, dst: bytes, st: os.stat_result) -> None:
    """A symlink, fifo, socket or device copied (they have no data to share)."""
    if stat.S_ISLNK(st.st_mode):
        longpath.symlink(longpath.readlink(src), dst)
    else:
        longpath.mknod(dst, st.st_mode, st.st_rdev)
    _set_attributes(names_, src, dst, st)


def _set_attributes(names: XattrNames, src: bytes, dst: bytes, st: os.stat_result) -> None:
    """Owner, mode, the user's xattrs, times of ``src`` onto ``dst``, as ``cp -a``."""
    longpath.chown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        longpath.chmod(dst, stat.S_IMODE(st.st_mode))
    copy_xattrs(src, dst, names)
    longpath.utime(dst, (st.st_atime_ns, st.st_mtime_ns))


def _lower_path(overlay: Overlay, src: Source) -> bytes:
    lower = src.lower
    assert lower is not None
    return overlay.layers[lower[0]].path(lower[1])
