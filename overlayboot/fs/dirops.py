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
import functools
import os
import shutil
import stat
from collections.abc import Callable

from overlayboot.fs import longpath, sysio
from overlayboot.fs.copyup import child, copy_up, remove_tmp, require_child
from overlayboot.fs.core import Overlay
from overlayboot.fs.inodes import Node
from overlayboot.fs.lookup import lower_positive, upper_entry
from overlayboot.fs.readdir import upper_whiteouts
from overlayboot.fs.whiteout import (
    WHITEOUT_DEV,
    is_whiteout_stat,
    make_whiteout,
    set_opaque,
    set_redirect,
)

Builder = Callable[[bytes, int, int, int], None]
"""Builds a new object at a temporary path with (mode, uid, gid)."""


def _parent_lowers(parent: Node) -> tuple[tuple[int, bytes], ...]:
    return () if parent.opaque else parent.lowers


def is_lower_positive(overlay: Overlay, parent: Node, name: bytes) -> bool:
    return lower_positive(overlay.layers, _parent_lowers(parent), name)


def new_owner(
    overlay: Overlay, parent: Node, uid: int, gid: int, mode: int
) -> tuple[int, int, int]:
    """Owner and mode of a new object, with setgid-directory inheritance."""
    pst = longpath.lstat(overlay.upper_path(parent))
    if pst.st_mode & stat.S_ISGID:
        gid = pst.st_gid
        if stat.S_ISDIR(mode):
            mode |= stat.S_ISGID
    return uid, gid, mode


async def install(
    overlay: Overlay,
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
    await copy_up(overlay, parent)
    upath = overlay.upper_child(parent, name)
    existing = upper_entry(upath)
    if existing is None:
        if is_lower_positive(overlay, parent, name):
            raise OSError(errno.EEXIST, "exists")
    elif not is_whiteout_stat(existing):
        raise OSError(errno.EEXIST, "exists")
    tmp = overlay.tmp_path()
    try:
        make(tmp)
        if is_dir and _parent_lowers(parent):
            # as overlayfs does (without offline changes): a new directory in a merged
            # parent is opaque, so lookups below it never descend into the lower layers
            set_opaque(tmp, overlay.names)
        if existing is None:
            longpath.rename(tmp, upath, sysio.RENAME_NOREPLACE)
        elif is_dir:
            set_opaque(tmp, overlay.names)  # over a whiteout: always opaque
            longpath.rename(tmp, upath, sysio.RENAME_EXCHANGE)
            longpath.unlink(tmp)
        else:
            longpath.rename(tmp, upath)
    except BaseException:
        remove_tmp(tmp)
        raise
    return longpath.lstat(upath)


async def create(
    overlay: Overlay, parent: Node, name: bytes, mode: int, owner: tuple[int, int], build: Builder
) -> tuple[Node, os.stat_result]:
    """Create ``parent/name`` of type and mode ``mode`` for the caller ``owner`` (uid, gid):
    ``build`` makes it in the work dir. Caller holds the lock."""
    await copy_up(overlay, parent)
    uid, gid, mode = new_owner(overlay, parent, owner[0], owner[1], mode)

    def make(tmp: bytes) -> None:
        build(tmp, mode, uid, gid)

    st = await install(overlay, parent, name, make, is_dir=stat.S_ISDIR(mode))
    return overlay.adopt_new(parent, name, st), st


def device_builder(rdev: int) -> Builder:
    """A fifo, socket or device node. A whiteout (char 0/0) is the overlay's own: EPERM,
    as kernel overlayfs answers."""

    def build(tmp: bytes, mode: int, uid: int, gid: int) -> None:
        if stat.S_ISCHR(mode) and rdev == WHITEOUT_DEV:
            raise OSError(errno.EPERM, "a whiteout cannot be created through the overlay")
        longpath.mknod(tmp, mode, rdev)
        longpath.chown(tmp, uid, gid)
        longpath.chmod(tmp, stat.S_IMODE(mode))

    return build


def build_dir(tmp: bytes, mode: int, uid: int, gid: int) -> None:
    longpath.mkdir(tmp, 0o700)
    longpath.chown(tmp, uid, gid)
    longpath.chmod(tmp, stat.S_IMODE(mode))


def symlink_builder(target: bytes) -> Builder:
    def build(tmp: bytes, mode: int, uid: int, gid: int) -> None:
        longpath.symlink(target, tmp)
        longpath.chown(tmp, uid, gid)

    return build


def file_builder(opened: list[int]) -> Builder:
    """A regular file, left open read-write: its fd is appended to ``opened``."""

    def build(tmp: bytes, mode: int, uid: int, gid: int) -> None:
        fd = longpath.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        opened.append(fd)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, stat.S_IMODE(mode))

    return build


async def tmpfile(
    overlay: Overlay, parent: Node, mode: int, flags: int, owner: tuple[int, int]
) -> tuple[Node, int]:
    """An unnamed regular file in ``parent`` (``open(2)`` with ``O_TMPFILE``), made in
    the upper directory as kernel overlayfs makes it, open read-write: (its node, the
    fd). ``O_EXCL`` keeps it from ever being linked. Caller holds the lock."""
    await copy_up(overlay, parent)
    uid, gid, mode = new_owner(overlay, parent, owner[0], owner[1], stat.S_IFREG | mode)
    extra = os.O_EXCL if flags & os.O_EXCL else 0
    fd = longpath.open(overlay.upper_path(parent), os.O_TMPFILE | os.O_RDWR | extra, 0o600)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, stat.S_IMODE(mode))
        node = overlay.table.unnamed(overlay.new_ino(parent, os.fstat(fd)))
        node.clone = parent.clone
        node.upper = True
    except BaseException:
        os.close(fd)
        raise
    return node, fd


async def link(
    overlay: Overlay, node: Node, parent: Node, name: bytes, open_fd: int | None = None
) -> None:
    """A new name for ``node``; one with no name yet (an ``O_TMPFILE`` file) is linked
    from ``open_fd``, a file of it open on the upper."""
    if node.is_dir:
        raise OSError(errno.EPERM, "hard link to a directory")
    if node.clone != parent.clone:
        raise OSError(errno.EXDEV, "a hard link into or out of a clone")
    await copy_up(overlay, node)
    make: Callable[[bytes], None]
    if node.path() is not None:
        src = overlay.upper_path(node)
        make = functools.partial(longpath.link, src)
    elif open_fd is not None:
        make = functools.partial(sysio.link_open_file, open_fd)
    else:
        raise OSError(errno.ENOENT, "no name and not open")

    await install(overlay, parent, name, make, is_dir=False)
    overlay.table.add_name(node, parent, name)


def _whiteout_in_place(overlay: Overlay, upath: bytes) -> bytes:
    """Atomically replace ``upath`` by a whiteout; return where the old entry went."""
    wh = overlay.tmp_path()
    make_whiteout(wh)
    try:
        longpath.rename(wh, upath, sysio.RENAME_EXCHANGE)
    except BaseException:
        remove_tmp(wh)
        raise
    return wh


async def unlink(overlay: Overlay, parent: Node, name: bytes) -> Node:
    node = await require_child(overlay, parent, name)
    if node.is_dir:
        raise OSError(errno.EISDIR, "is a directory")
    await _copy_up_if_linked(overlay, node)
    await copy_up(overlay, parent)
    upath = overlay.upper_child(parent, name)
    positive = is_lower_positive(overlay, parent, name)
    if node.upper:
        last = longpath.lstat(upath).st_nlink <= 1
        if positive:
            remove_tmp(_whiteout_in_place(overlay, upath))
        else:
            longpath.unlink(upath)
        node.dead = node.dead or last
    else:
        make_whiteout(upath)
    overlay.table.remove_name(node, parent, name)
    return node


async def rmdir(overlay: Overlay, parent: Node, name: bytes) -> Node:
    node = await require_child(overlay, parent, name)
    if not node.is_dir:
        raise OSError(errno.ENOTDIR, "not a directory")
    if overlay.listing(node):
        raise OSError(errno.ENOTEMPTY, "directory not empty")
    await copy_up(overlay, parent)
    upath = overlay.upper_child(parent, name)
    positive = is_lower_positive(overlay, parent, name)
    node.removed_stat = longpath.lstat(overlay.real_path(node))  # an open fd's fstat shows it after
    if node.upper:
        if positive:
            shutil.rmtree(_whiteout_in_place(overlay, upath))
        else:
            _clear_whiteouts(upath)
            longpath.rmdir(upath)
        node.dead = True
    else:
        make_whiteout(upath)
    overlay.table.remove_name(node, parent, name)
    return node


async def _copy_up_if_linked(overlay: Overlay, node: Node) -> None:
    """Before a name of a multiply-linked lower file goes away, copy the file up.

    Its other names then share the upper copy, whose link count drops with the
    name, as overlayfs with ``index=on`` does; left in the lower, they would go on
    showing the lower file's link count.
    """
    if node.upper or node.is_dir or not node.lowers:
        return
    idx, rel = node.lowers[0]
    st = overlay.layers[idx].lstat(rel)
    if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
        await copy_up(overlay, node)


def _clear_whiteouts(upath: bytes) -> None:
    for wname in upper_whiteouts(upath):
        longpath.unlink(upath + b"/" + wname)


def _replace_with_empty_dir(overlay: Overlay, upath: bytes) -> None:
    """Swap an upper dir holding only whiteouts for an empty opaque one, atomically."""
    if not upper_whiteouts(upath):
        return
    st = longpath.lstat(upath)
    tmp = overlay.tmp_path()
    longpath.mkdir(tmp, 0o700)
    try:
        set_opaque(tmp, overlay.names)
        longpath.chown(tmp, st.st_uid, st.st_gid)
        longpath.chmod(tmp, stat.S_IMODE(st.st_mode))
        longpath.rename(tmp, upath, sysio.RENAME_EXCHANGE)
    except BaseException:
        remove_tmp(tmp)
        raise
    shutil.rmtree(tmp)


def _mark_moved_dir(
    overlay: Overlay, node: Node, upath: bytes, samedir: bool, old_name: bytes, new_parent: Node
) -> None:
    """Before moving a directory: a redirect if it merges lower dirs, else maybe opaque."""
    if node.lowers and not node.opaque:
        if node.redirect is not None and (samedir or node.redirect.startswith(b"/")):
            return
        # same parent: the lower dir is found by its old name; else by its absolute path
        value = old_name if samedir and node.redirect is None else b"/" + node.lowers[0][1]
        set_redirect(upath, value, overlay.names)
        node.redirect = value
    elif not node.opaque and _parent_lowers(new_parent):
        set_opaque(upath, overlay.names)
        node.opaque = True
        node.lowers = ()


def _check_rename(old: Node, new: Node | None, flags: int, overlay: Overlay) -> None:
    """The errors rename(2) gives before anything changes."""
    exchange = bool(flags & sysio.RENAME_EXCHANGE)
    if flags & sysio.RENAME_NOREPLACE and new is not None:
        raise OSError(errno.EEXIST, "target exists")
    if exchange and new is None:
        raise OSError(errno.ENOENT, "no target to exchange with")
    if new is None or new is old or exchange:
        return
    if old.is_dir and not new.is_dir:
        raise OSError(errno.ENOTDIR, "not a directory")
    if not old.is_dir and new.is_dir:
        raise OSError(errno.EISDIR, "is a directory")
    if new.is_dir and overlay.listing(new):
        raise OSError(errno.ENOTEMPTY, "directory not empty")


async def rename(
    overlay: Overlay, oldp: Node, oldname: bytes, newp: Node, newname: bytes, flags: int
) -> None:
    """rename(2) and renameat2(2)'s RENAME_NOREPLACE and RENAME_EXCHANGE. Caller holds the lock."""
    old = await require_child(overlay, oldp, oldname)
    new = await child(overlay, newp, newname, locked=True)
    _check_rename(old, new, flags, overlay)
    if new is old:
        return
    if oldp.clone != newp.clone:
        # a clone's files have numbers of their own (fs/clone.py): like kernel overlayfs
        # without redirect_dir, the move is refused and mv(1) copies instead
        raise OSError(errno.EXDEV, "a rename into or out of a clone")
    exchange = new is not None and bool(flags & sysio.RENAME_EXCHANGE)
    if new is not None and not exchange:
        await _copy_up_if_linked(overlay, new)
    await copy_up(overlay, oldp)
    await copy_up(overlay, newp)
    await copy_up(overlay, old, unshare=False)
    if new is not None and exchange:
        await copy_up(overlay, new, unshare=False)
    old_up = overlay.upper_child(oldp, oldname)
    new_up = overlay.upper_child(newp, newname)
    samedir = oldp is newp
    if old.is_dir:
        _mark_moved_dir(overlay, old, old_up, samedir, oldname, newp)
    if new is not None and exchange:
        if new.is_dir:
            _mark_moved_dir(overlay, new, new_up, samedir, newname, oldp)
        longpath.rename(old_up, new_up, sysio.RENAME_EXCHANGE)
        overlay.table.move_name(old, (oldp, oldname), (newp, b"\0exchange"))
        overlay.table.move_name(new, (newp, newname), (oldp, oldname))
        overlay.table.move_name(old, (newp, b"\0exchange"), (newp, newname))
        return
    if new is not None and new.is_dir:
        new.removed_stat = longpath.lstat(
            overlay.real_path(new)
        )  # an open fd's fstat shows it after
    replaced_last = _move(overlay, old, new, (oldp, oldname, old_up), new_up)
    if new is not None:
        overlay.table.remove_name(new, newp, newname)
        new.dead = new.dead or replaced_last
    overlay.table.move_name(old, (oldp, oldname), (newp, newname))


def _move(
    overlay: Overlay, old: Node, new: Node | None, source: tuple[Node, bytes, bytes], new_up: bytes
) -> bool:
    """Move ``old`` (``source``: parent, name, upper path) to ``new_up`` in the upper,
    leaving a whiteout where a lower layer still shows the old name. Returns whether the
    replaced target's last link went."""
    oldp, oldname, old_up = source
    positive = is_lower_positive(overlay, oldp, oldname)
    target = upper_entry(new_up)
    replaced_last = False
    if new is not None and new.upper and target is not None:
        if new.is_dir:
            _replace_with_empty_dir(overlay, new_up)
            replaced_last = True
        else:
            replaced_last = target.st_nlink <= 1
    if target is not None and is_whiteout_stat(target) and old.is_dir:
        # a directory cannot be renamed over a whiteout: exchange, then the whiteout
        # is at the old name, where it is needed if a lower layer shows that name
        longpath.rename(old_up, new_up, sysio.RENAME_EXCHANGE)
        if not positive:
            longpath.unlink(old_up)
    elif positive:
        _rename_leaving_whiteout(overlay, old_up, new_up)
    else:
        longpath.rename(old_up, new_up)
    return replaced_last


def _rename_leaving_whiteout(overlay: Overlay, old_up: bytes, new_up: bytes) -> None:
    """rename(2) that leaves a whiteout at the old name, atomically (RENAME_WHITEOUT).

    Where the upper filesystem or an unprivileged caller cannot, the whiteout is made in
    the work dir first and the old entry is moved and the whiteout put in its place by two
    renames: a crash between them shows the lower object at the old name again, and
    never loses the moved entry."""
    try:
        longpath.rename(old_up, new_up, sysio.RENAME_WHITEOUT)
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EPERM):
            raise
    wh = overlay.tmp_path()
    make_whiteout(wh)
    try:
        longpath.rename(old_up, new_up)
        longpath.rename(wh, old_up)
    except BaseException:
        remove_tmp(wh)
        raise
