"""Clones of lower directories made plain copies (``upper seal``), for kernel overlayfs.

A clone of a lower directory is an upper directory redirected to it (``fs/clone.py``);
overlayboot shows the source and the clone apart, but kernel overlayfs keys a merged
directory (and a lower file) by its lower inode and refuses (``ESTALE``) a second upper
directory merged with the same lower one. So sealing *materializes* each clone: every
entry its lower part still shows is copied into the upper (directories made, files copied
whole, symlinks and special files made, with owner, mode, xattrs and times), whiteouts are
dropped, and each directory of the clone becomes opaque and loses its redirect. Every step
leaves the clone reading the same, so an interrupted seal can be run again.

The lower layers are the ones given, else the roots the clone recorded when it was made.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator, Sequence

from overlayboot.fs import longpath
from overlayboot.fs.datacopy import copy_data
from overlayboot.fs.layers import LowerLayer
from overlayboot.fs.lookup import LowerRef, Resolved, lookup, upper_entry
from overlayboot.fs.readdir import merged_names
from overlayboot.fs.whiteout import (
    XattrNames,
    get_redirect,
    getxattr,
    is_opaque_dir,
    is_whiteout_stat,
    set_opaque,
)


def encode_mark(number: int, roots: Sequence[bytes]) -> bytes:
    """The ``overlayboot.clone`` value: the clone's number, then the lower roots."""
    return b"\0".join([b"%d" % number, *roots])


def recorded_roots(value: bytes) -> list[bytes]:
    return [r for r in value.split(b"\0")[1:] if r]


def clone_roots(upper: bytes, names: XattrNames) -> Iterator[tuple[bytes, bytes]]:
    """(path, mark) of every redirected clone root in the upper, each before the clone
    roots below it (a clone made inside a clone, perhaps under an opaque directory,
    which materializing the outer one does not reach)."""
    stack = [upper]
    while stack:
        d = stack.pop()
        with longpath.scandir(d) as it:
            dirs = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        for name in dirs:
            path = d + b"/" + name
            mark = getxattr(path, names.clone)
            if mark is not None and get_redirect(path, names) is not None:
                yield path, mark
            stack.append(path)


def materialize_all(upper: bytes, lowers: Sequence[bytes] | None, names: XattrNames) -> int:
    """Materialize every clone of lower directories in ``upper``; how many."""
    done = 0
    for path, mark in clone_roots(upper, names):
        if get_redirect(path, names) is None:
            continue  # materialized with a clone around it
        roots = list(lowers) if lowers is not None else recorded_roots(mark)
        if not roots:
            raise OSError(0, "no lower layers given or recorded", path)
        layers = [LowerLayer(i, r, names) for i, r in enumerate(roots)]
        parent, _, name = path.rpartition(b"/")
        res = lookup(layers, names, parent, (), name)
        if res is not None and res.is_dir:
            materialize(layers, names, path, () if res.opaque else res.lowers)
        done += 1
    return done


def materialize(
    layers: Sequence[LowerLayer], names: XattrNames, upath: bytes, lowers: Sequence[LowerRef]
) -> None:
    """Make the upper directory ``upath`` (merged with ``lowers``) hold all it shows."""
    times = longpath.lstat(upath)
    for name in merged_names(layers, upath, lowers):
        child = upath + b"/" + name
        st = upper_entry(child)
        if st is None:
            res = lookup(layers, names, None, lowers, name)
            if res is not None:
                copy_lower(layers, names, res, child)
        elif stat.S_ISDIR(st.st_mode) and not is_opaque_dir(child, names):
            res = lookup(layers, names, upath, lowers, name)
            if res is not None and res.lowers:
                materialize(layers, names, child, res.lowers)
    with longpath.scandir(upath) as it:
        gone = [e.name for e in it if is_whiteout_stat(longpath.lstat(upath + b"/" + e.name))]
    for name in gone:
        longpath.unlink(upath + b"/" + name)
    set_opaque(upath, names)
    if getxattr(upath, names.redirect) is not None:
        longpath.removexattr(upath, names.redirect)
    longpath.utime(upath, (times.st_atime_ns, times.st_mtime_ns))


def copy_lower(layers: Sequence[LowerLayer], names: XattrNames, res: Resolved, dst: bytes) -> None:
    """A whole copy of the lower entry ``res`` (a merged lower directory: all of it) at
    ``dst``, built beside it and renamed into place."""
    tmp = dst.rpartition(b"/")[0] + b"/.overlayboot-materialize.tmp"
    _remove(tmp)
    idx, rel = res.lowers[0]
    src = layers[idx].path(rel)
    st = longpath.lstat(src)
    if res.is_dir:
        longpath.mkdir(tmp, 0o700)
        for name in merged_names(layers, None, res.lowers):
            sub = lookup(layers, names, None, res.lowers, name)
            if sub is not None:
                copy_lower(layers, names, sub, tmp + b"/" + name)
    elif stat.S_ISREG(st.st_mode):
        fd = longpath.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            copy_data(src, fd, st.st_size)
            os.ftruncate(fd, st.st_size)
            os.fsync(fd)
        finally:
            os.close(fd)
    elif stat.S_ISLNK(st.st_mode):
        longpath.symlink(longpath.readlink(src), tmp)
    else:
        longpath.mknod(tmp, st.st_mode, st.st_rdev)
    _attributes(src, tmp, st, names)
    longpath.rename(tmp, dst)


def _attributes(src: bytes, dst: bytes, st: os.stat_result, names: XattrNames) -> None:
    longpath.chown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        longpath.chmod(dst, stat.S_IMODE(st.st_mode))
        for key in longpath.listxattr(src):
            if not names.is_private(key):
                longpath.setxattr(dst, key, longpath.getxattr(src, key))
    longpath.utime(dst, (st.st_atime_ns, st.st_mtime_ns))


def _remove(path: bytes) -> None:
    """What an interrupted materialization left at ``path``."""
    try:
        st = longpath.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        longpath.unlink(path)
