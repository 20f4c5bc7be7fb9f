"""Changing the namespace: create, link, unlink, rmdir and rename, in the upper layer.

Each operation keeps the upper a valid kernel-overlayfs upper at every step a
crash could stop at: new objects are built in the work dir and renamed into
place; a name that a lower layer still shows is replaced by a whiteout
atomically (exchange with a whiteout made in the work dir); renamed lower
directories get ``overlay.redirect``, pure-upper directories moved into a
merged parent get ``overlay.opaque``.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from overlayboot.fs import sysio
from overlayboot.fs.copyup import copy_up, remove_tmp
from overlayboot.fs.inodes import Node
from overlayboot.fs.lookup import lower_positive, upper_entry
from overlayboot.fs.readdir import upper_whiteouts
from overlayboot.fs.whiteout import is_whiteout_stat, make_whiteout, set_opaque, set_redirect

if TYPE_CHECKING:
    from overlayboot.fs.core import Overlay


def _parent_lowers(parent: Node) -> tuple[tuple[int, bytes], ...]:
    return () if parent.opaque else parent.lowers


def is_lower_positive(ov: Overlay, parent: Node, name: bytes) -> bool:
    return lower_positive(ov.layers, _parent_lowers(parent), name)


def new_owner(ov: Overlay, parent: Node, uid: int, gid: int, mode: int) -> tuple[int, int, int]:
    """Owner and mode of a new object, with setgid-directory inheritance."""
    pst = os.lstat(ov.upper_path(parent))
    if pst.st_mode & stat.S_ISGID:
        gid = pst.st_gid
        if stat.S_ISDIR(mode):
            mode |= stat.S_ISGID
    return uid, gid, mode


async def install(
    ov: Overlay,
    parent: Node,
    name: bytes,
    make: Callable[[bytes], None],
    *,
    is_dir: bool,
) -> os.stat_result:
    """Create a new entry ``parent/name``: ``make(tmp)`` builds it in the work dir.

    Over a whiteout, a directory becomes opaque (the lower one stays hidden).
    Returns the new entry's lstat.
    """
    await copy_up(ov, parent)
    upath = ov.upper_child(parent, name)
    existing = upper_entry(upath)
    if existing is None:
        if is_lower_positive(ov, parent, name):
            raise OSError(errno.EEXIST, "exists")
    elif not is_whiteout_stat(existing):
        raise OSError(errno.EEXIST, "exists")
    tmp = ov.tmp_path()
    make(tmp)
    try:
        if is_dir and _parent_lowers(parent):
            # as overlayfs does (without offline changes): a new directory in a merged
            # parent is opaque, so lookups below it never descend into the lower layers
            set_opaque(tmp, ov.names)
        if existing is None:
            sysio.renameat2(tmp, upath, sysio.RENAME_NOREPLACE)
        elif is_dir:
            set_opaque(tmp, ov.names)  # over a whiteout: always opaque
            sysio.renameat2(tmp, upath, sysio.RENAME_EXCHANGE)
            os.unlink(tmp)
        else:
            os.rename(tmp, upath)
    except BaseException:
        remove_tmp(tmp)
        raise
    return os.lstat(upath)


async def link(ov: Overlay, node: Node, parent: Node, name: bytes) -> None:
    if node.is_dir:
        raise OSError(errno.EPERM, "hard link to a directory")
    await copy_up(ov, node)
    src = ov.upper_path(node)

    def make(tmp: bytes) -> None:
        os.link(src, tmp)

    await install(ov, parent, name, make, is_dir=False)
    ov.table.add_name(node, parent, name)


def _whiteout_in_place(ov: Overlay, upath: bytes) -> bytes:
    """Atomically replace ``upath`` by a whiteout; return where the old entry went."""
    wh = ov.tmp_path()
    make_whiteout(wh)
    try:
        sysio.renameat2(wh, upath, sysio.RENAME_EXCHANGE)
    except BaseException:
        remove_tmp(wh)
        raise
    return wh


async def unlink(ov: Overlay, parent: Node, name: bytes) -> Node:
    node = ov.require_child(parent, name)
    if node.is_dir:
        raise OSError(errno.EISDIR, "is a directory")
    await _copy_up_if_linked(ov, node)
    await copy_up(ov, parent)
    upath = ov.upper_child(parent, name)
    positive = is_lower_positive(ov, parent, name)
    if node.upper:
        last = os.lstat(upath).st_nlink <= 1
        if positive:
            remove_tmp(_whiteout_in_place(ov, upath))
        else:
            os.unlink(upath)
        node.dead = node.dead or last
    else:
        make_whiteout(upath)
    ov.table.remove_name(node, parent, name)
    return node


async def rmdir(ov: Overlay, parent: Node, name: bytes) -> Node:
    node = ov.require_child(parent, name)
    if not node.is_dir:
        raise OSError(errno.ENOTDIR, "not a directory")
    if ov.listing(node):
        raise OSError(errno.ENOTEMPTY, "directory not empty")
    await copy_up(ov, parent)
    upath = ov.upper_child(parent, name)
    positive = is_lower_positive(ov, parent, name)
    if node.upper:
        if positive:
            shutil.rmtree(_whiteout_in_place(ov, upath))
        else:
            _clear_whiteouts(upath)
            os.rmdir(upath)
        node.dead = True
    else:
        make_whiteout(upath)
    ov.table.remove_name(node, parent, name)
    return node


async def _copy_up_if_linked(ov: Overlay, node: Node) -> None:
    """Before a name of a multiply-linked lower file goes away, copy the file up.

    Its other names then share the upper copy, whose link count drops with the
    name, as overlayfs with ``index=on`` does; left in the lower, they would go on
    showing the lower file's link count.
    """
    if node.upper or node.is_dir or not node.lowers:
        return
    idx, rel = node.lowers[0]
    st = ov.layers[idx].lstat(rel)
    if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
        await copy_up(ov, node)


def _clear_whiteouts(upath: bytes) -> None:
    for wname in upper_whiteouts(upath):
        os.unlink(upath + b"/" + wname)


def _replace_with_empty_dir(ov: Overlay, upath: bytes) -> None:
    """Swap an upper dir holding only whiteouts for an empty opaque one, atomically."""
    if not upper_whiteouts(upath):
        return
    st = os.lstat(upath)
    tmp = ov.tmp_path()
    os.mkdir(tmp, 0o700)
    try:
        set_opaque(tmp, ov.names)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        sysio.renameat2(tmp, upath, sysio.RENAME_EXCHANGE)
    except BaseException:
        remove_tmp(tmp)
        raise
    shutil.rmtree(tmp)


def _mark_moved_dir(
    ov: Overlay, node: Node, upath: bytes, samedir: bool, old_name: bytes, new_parent: Node
) -> None:
    """Before moving a directory: a redirect if it merges lower dirs, else maybe opaque."""
    if node.lowers and not node.opaque:
        if node.redirect is not None and (samedir or node.redirect.startswith(b"/")):
            return
        # same parent: the lower dir is found by its old name; else by its absolute path
        value = old_name if samedir and node.redirect is None else b"/" + node.lowers[0][1]
        set_redirect(upath, value, ov.names)
        node.redirect = value
    elif not node.opaque and _parent_lowers(new_parent):
        set_opaque(upath, ov.names)
        node.opaque = True
        node.lowers = ()


async def rename(
    ov: Overlay, oldp: Node, oldname: bytes, newp: Node, newname: bytes, flags: int
) -> None:
    old = ov.require_child(oldp, oldname)
    new = ov.child(newp, newname)
    exchange = bool(flags & sysio.RENAME_EXCHANGE)
    if flags & sysio.RENAME_NOREPLACE and new is not None:
        raise OSError(errno.EEXIST, "target exists")
    if exchange and new is None:
        raise OSError(errno.ENOENT, "no target to exchange with")
    if new is old:
        return
    if new is not None and not exchange:
        if old.is_dir and not new.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        if not old.is_dir and new.is_dir:
            raise OSError(errno.EISDIR, "is a directory")
        if new.is_dir and ov.listing(new):
            raise OSError(errno.ENOTEMPTY, "directory not empty")
    if new is not None and not exchange:
        await _copy_up_if_linked(ov, new)
    await copy_up(ov, oldp)
    await copy_up(ov, newp)
    await copy_up(ov, old)
    if exchange and new is not None:
        await copy_up(ov, new)
    old_up = ov.upper_child(oldp, oldname)
    new_up = ov.upper_child(newp, newname)
    samedir = oldp is newp
    if old.is_dir:
        _mark_moved_dir(ov, old, old_up, samedir, oldname, newp)
    if exchange and new is not None:
        if new.is_dir:
            _mark_moved_dir(ov, new, new_up, samedir, newname, oldp)
        sysio.renameat2(old_up, new_up, sysio.RENAME_EXCHANGE)
        ov.table.move_name(old, (oldp, oldname), (newp, b"\0exchange"))
        ov.table.move_name(new, (newp, newname), (oldp, oldname))
        ov.table.move_name(old, (newp, b"\0exchange"), (newp, newname))
        return
    positive = is_lower_positive(ov, oldp, oldname)
    target = upper_entry(new_up)
    replaced_last = False
    if new is not None and new.upper and target is not None:
        if new.is_dir:
            _replace_with_empty_dir(ov, new_up)
            replaced_last = True
        else:
            replaced_last = target.st_nlink <= 1
    if target is not None and is_whiteout_stat(target) and old.is_dir:
        # a directory cannot be renamed over a whiteout: exchange, then the whiteout
        # is at the old name, where it is needed if a lower layer shows that name
        sysio.renameat2(old_up, new_up, sysio.RENAME_EXCHANGE)
        if not positive:
            os.unlink(old_up)
    elif positive:
        try:
            sysio.renameat2(old_up, new_up, sysio.RENAME_WHITEOUT)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EPERM):
                raise
            os.rename(old_up, new_up)
            make_whiteout(old_up)
    else:
        os.rename(old_up, new_up)
    if new is not None:
        ov.table.remove_name(new, newp, newname)
        new.dead = new.dead or replaced_last
    ov.table.move_name(old, (oldp, oldname), (newp, newname))
