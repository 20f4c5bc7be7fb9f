"""The FUSE request handlers: the only module that imports pyfuse3.

Each handler only translates: a FUSE request becomes a call of the module of its
kind (``copyup.child`` for lookups, ``attrs`` for attributes and xattrs,
``dirops`` for changes of the namespace, ``files`` for open files, ``core`` for
listings), taking the overlay's lock where the call changes the upper, and the
result becomes a FUSE reply. None lets an exception escape: an ``OSError``
becomes its errno, anything else is logged (with the word INTERNAL) and answered
EIO. The daemon is the root filesystem; if it dies, the machine dies.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from overlayboot.fs import attrs, clone, copyrange, dirops, longpath
from overlayboot.fs.clonereq import REQUEST_XATTR, Caller, parse_request
from overlayboot.fs.copyup import child
from overlayboot.fs.core import Overlay, Stat
from overlayboot.fs.files import OpenFiles
from overlayboot.fs.inodes import Node
from overlayboot.fs.newfile import create_in_place

log = logging.getLogger("overlayboot.fs")

P = ParamSpec("P")
T = TypeVar("T")


def guarded(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn every exception of a handler into a FUSE error reply."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as exc:
            if exc.errno is None:
                log.error("INTERNAL: %s: OSError without errno: %r", fn.__name__, exc)
                raise pyfuse3.FUSEError(errno.EIO) from None
            if exc.errno not in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENODATA):
                log.debug("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.exception("INTERNAL: unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


DIR_CACHE = hasattr(pyfuse3.FileInfo, "cache_readdir")
"""Whether this pyfuse3 lets opendir set FOPEN_CACHE_DIR (the build the Makefile makes does;
see third_party/pyfuse3): without it every readdir goes to the daemon."""


DIR_INO = getattr(pyfuse3, "DIR_INO_HANDLES", False)
"""Whether this pyfuse3 names a directory read without OPENDIR by its inode (same build): then
opendir answers ENOSYS once and the kernel sends no OPENDIR or RELEASEDIR again, keeping
every listing in its cache (``FUSE_NO_OPENDIR_SUPPORT``; two requests of the three a
cached directory cost)."""

MAX_LISTINGS = 64
"""Listings kept between the READDIRPLUS requests of one directory when there are no
directory handles (``DIR_INO``); one evicted is read again."""


@dataclass
class DirHandle:
    """An open directory: the merged listing, taken at the first readdir from offset 0."""

    node: Node
    names: list[bytes] | None = None


PASSTHROUGH = hasattr(pyfuse3, "passthrough_open")
"""Whether this pyfuse3 can bind open files to backing files (FUSE passthrough: the build the
Makefile makes, against libfuse 3.17, does; see third_party/pyfuse3)."""


STAT_INO = hasattr(pyfuse3.EntryAttributes, "stat_ino")
"""Whether replies can show an st_ino other than the FUSE inode number (same build)."""


class _KernelBacking:
    """Backing files registered through pyfuse3 (``passthrough.Kernel``)."""

    def open_backing(self, fd: int) -> int:
        return int(pyfuse3.passthrough_open(fd))

    def close_backing(self, backing_id: int) -> None:
        pyfuse3.passthrough_close(backing_id)


def file_info(fh: int, backing_id: int) -> pyfuse3.FileInfo:
    """The open reply: kept page cache, or a backing file (the two exclude each other)."""
    if backing_id:
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, backing_id=backing_id)
    return pyfuse3.FileInfo(fh=fh, keep_cache=True)


class OverlayOperations(pyfuse3.Operations):
    """pyfuse3 handlers over an :class:`Overlay`."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, overlay: Overlay) -> None:
        super().__init__()
        self.overlay = overlay
        self.files = OpenFiles(overlay)
        self.dirs: dict[int, DirHandle] = {}
        self.timeout = overlay.cfg.timeout
        self.cache_dirs = self.timeout > 0 and DIR_CACHE
        # no OPENDIR (DIR_INO): readdir's fh is the directory's inode, listings by inode
        self.no_opendir = self.cache_dirs and DIR_INO
        self.listings: OrderedDict[int, DirHandle] = OrderedDict()
        self.initialized = trio.Event()  # set once the kernel's INIT has been answered
        self._closer_wanted = trio.Event()  # backing ids wait to be closed
        # asked for at INIT (pyfuse3 reads it there); the kernel may still say no
        self.enable_passthrough = PASSTHROUGH and overlay.cfg.passthrough
        # names made by clones whose cached (negative) entries the kernel has yet to drop
        self._invalidating: set[trio.Event] = set()

    def init(self) -> None:
        if self.enable_passthrough and pyfuse3.passthrough_enabled():
            self.files.bindings.kernel = _KernelBacking()
            self.files.bindings.wake = self._wake_closer
        log.info("FUSE passthrough %s", "on" if self.files.bindings.enabled else "off")
        self.initialized.set()

    def _wake_closer(self) -> None:
        self._closer_wanted.set()

    async def close_backings(self) -> None:
        """Close dropped backing ids in batches, between requests (``passthrough``):
        runs for the daemon's life."""
        bindings = self.files.bindings
        while True:
            await self._closer_wanted.wait()
            self._closer_wanted = trio.Event()
            while bindings.close_pending():
                await trio.sleep(0)

    @property
    def passthrough(self) -> bool:
        """Whether open files may be bound to backing files (INIT agreed, not given up)."""
        return self.files.bindings.enabled

    # ------------------------------------------------------------ replies

    def _attributes(self, node: Node, upper_st: os.stat_result | None = None) -> Stat:
        try:
            return self.overlay.stat(node, upper_st)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            handle = self.files.of_node(node)
            if handle is not None:
                st = os.fstat(handle.fd)  # unlinked, still open
                return Stat(node.ino, st, st.st_nlink)
            if node.handles and node.lowers:
                # open only on its lower file, bound to it (passthrough): that file is it
                idx, rel = node.lowers[0]
                st = self.overlay.layers[idx].lstat(rel)
                return Stat(node.ino, st, st.st_nlink)
            raise

    def _entry(self, node: Node, upper_st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        found = self._attributes(node, upper_st)
        st = found.st
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        shown = self.files.shown_ino.get(node.ino)
        if shown is not None and STAT_INO:
            e.stat_ino = shown  # a file given a new inode for its copy-up (files)
        e.generation = 0
        e.entry_timeout = self.timeout
        e.attr_timeout = self.timeout
        e.st_mode = st.st_mode
        e.st_nlink = found.nlink
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks if found.blocks is None else found.blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    def _lookup_ref(
        self, node: Node, upper_st: os.stat_result | None = None
    ) -> pyfuse3.EntryAttributes:
        """An entry reply: the kernel holds one more lookup reference to ``node``."""
        entry = self._entry(node, upper_st)
        node.nlookup += 1
        return entry

    # ------------------------------------------------------------ lookup & attributes

    @guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.overlay.node(parent_inode)
        if name == b".":
            return self._lookup_ref(parent)
        if name == b"..":
            return self._lookup_ref(parent.parent or parent)
        node = await child(self.overlay, parent, name, locked=False)
        if node is None:
            # a negative entry the kernel may cache (st_ino 0): names appear only through
            # requests it sends us (PATH and library searches stop asking)
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self.timeout
            return negative
        return self._lookup_ref(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # forget has no reply: it must never raise, not even a FUSEError
        for ino, count in inode_list:
            try:
                self.overlay.table.forget(ino, count)
                self.files.forgotten(ino)
            except Exception:
                log.exception("INTERNAL: forget(%#x, %d)", ino, count)

    @guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self.overlay.node(inode))

    @guarded
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.overlay.node(inode)
        want = attrs.AttrChange(
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            mode=attr.st_mode if fields.update_mode else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        if want.is_empty():
            return self._entry(node)
        handle = self.files.handles.get(fh) if fh is not None else None
        upper_fd = handle.fd if handle is not None and handle.upper else None
        if want.size is not None and (handle is None or not handle.writable):
            self.files.check_writable(node)  # a truncate changes the data
        async with self.overlay.lock:
            writable = handle is not None and handle.writable
            await attrs.change(self.overlay, node, want, upper_fd, writable)
            return self._entry(node)

    @guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return longpath.readlink(self.overlay.real_path(self.overlay.node(inode)))

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.overlay.upper_root)
        out = pyfuse3.StatvfsData()
        out.f_bsize = sv.f_bsize
        out.f_frsize = sv.f_frsize
        out.f_blocks = sv.f_blocks
        out.f_bfree = sv.f_bfree
        out.f_bavail = sv.f_bavail
        out.f_files = sv.f_files
        out.f_ffree = sv.f_ffree
        out.f_favail = sv.f_favail
        out.f_namemax = sv.f_namemax
        return out

    # ------------------------------------------------------------ creating entries

    async def _create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        ctx: pyfuse3.RequestContext,
        build: dirops.Builder,
    ) -> tuple[Node, pyfuse3.EntryAttributes]:
        overlay = self.overlay
        parent = overlay.node(parent_inode)
        async with overlay.lock:
            node, st = await dirops.create(overlay, parent, name, mode, (ctx.uid, ctx.gid), build)
            return node, self._lookup_ref(node, st)

    @guarded
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        build = dirops.device_builder(rdev)
        return (await self._create(parent_inode, name, mode, ctx, build))[1]

    @guarded
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        mode |= stat.S_IFDIR
        return (await self._create(parent_inode, name, mode, ctx, dirops.build_dir))[1]

    @guarded
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        build = dirops.symlink_builder(target)
        return (await self._create(parent_inode, name, stat.S_IFLNK | 0o777, ctx, build))[1]

    @guarded
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        made = await self._create_in_place(parent_inode, name, mode, ctx)
        if made is not None:
            return made
        opened: list[int] = []
        build = dirops.file_builder(opened)
        try:
            node, entry = await self._create(parent_inode, name, stat.S_IFREG | mode, ctx, build)
        except BaseException as exc:
            for fd in opened:
                os.close(fd)
            # the kernel sends CREATE for a name it believes absent; should it be there
            # after all, open it as open(2) without O_EXCL would
            if not isinstance(exc, OSError) or exc.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            return await self._open_existing(parent_inode, name, flags)
        fh = self.files.adopt_created(node, opened[0])
        return file_info(fh, self.files.backing_id(fh)), entry

    async def _create_in_place(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes] | None:
        """``create`` in a directory with no lower part (``newfile``); None: not there."""
        overlay = self.overlay
        parent = overlay.node(parent_inode)
        async with overlay.lock:
            made = create_in_place(overlay, parent, name, stat.S_IFREG | mode, (ctx.uid, ctx.gid))
            if made is None:
                return None
            node, st, fd = made
            try:
                entry = self._lookup_ref(node, st)
            except BaseException:
                os.close(fd)
                raise
        fh = self.files.adopt_created(node, fd)
        return file_info(fh, self.files.backing_id(fh)), entry

    async def _open_existing(
        self, parent_inode: int, name: bytes, flags: int
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = await child(self.overlay, self.overlay.node(parent_inode), name, locked=False)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        fh = await self.files.open(node, flags)
        return file_info(fh, self.files.backing_id(fh)), self._lookup_ref(node)

    @guarded
    async def tmpfile(
        self, parent_inode: int, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        """``open(2)`` with ``O_TMPFILE`` (pyfuse3's patch, libfuse 3.15+)."""
        overlay = self.overlay
        parent = overlay.node(parent_inode)
        async with overlay.lock:
            node, fd = await dirops.tmpfile(overlay, parent, mode, flags, (ctx.uid, ctx.gid))
        fh = self.files.adopt_created(node, fd)
        return file_info(fh, self.files.backing_id(fh)), self._lookup_ref(node)

    @guarded
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        overlay = self.overlay
        node = overlay.node(inode)
        parent = overlay.node(new_parent_inode)
        handle = self.files.of_node(node, upper=True)  # an O_TMPFILE file has only this
        async with overlay.lock:
            await dirops.link(overlay, node, parent, new_name, handle.fd if handle else None)
            return self._lookup_ref(node)

    # ------------------------------------------------------------ removing and renaming

    @guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        overlay = self.overlay
        async with overlay.lock:
            await dirops.unlink(overlay, overlay.node(parent_inode), name)

    @guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        overlay = self.overlay
        async with overlay.lock:
            await dirops.rmdir(overlay, overlay.node(parent_inode), name)

    @guarded
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        overlay = self.overlay
        old_parent = overlay.node(parent_inode_old)
        new_parent = overlay.node(parent_inode_new)
        async with overlay.lock:
            await dirops.rename(overlay, old_parent, name_old, new_parent, name_new, flags)

    # ------------------------------------------------------------ files

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        fh = await self.files.open(self.overlay.node(inode), flags)
        return file_info(fh, self.files.backing_id(fh))

    @guarded
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        # pyfuse3 replies with any buffer, at once: a partial file answers from the daemon's
        # one read buffer (a memoryview), which saves a copy of every request
        return self.files.read(fh, off, size)

    @guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.files.write(fh, off, buf)

    # No flush handler: the kernel then stops sending FLUSH at every close (a third of the
    # requests of an open-read-close). A partial copy-up records its map at release, which
    # the kernel sends as the last close returns.

    @guarded
    async def release(self, fh: int) -> None:
        self.files.release(fh)

    @guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        self.files.fsync(fh, datasync)

    # copy_file_range: a handler of the patched pyfuse3 only (third_party/pyfuse3/
    # copyrange.patch); a stock pyfuse3 never calls it (the kernel copies by read and write)
    @guarded
    async def copy_file_range(
        self, fh_in: int, off_in: int, fh_out: int, off_out: int, length: int, flags: int
    ) -> int:
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return await copyrange.copy_range(self.files, fh_in, off_in, fh_out, off_out, length)

    # ------------------------------------------------------------ directories

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int | pyfuse3.FileInfo:
        node = self.overlay.node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if self.no_opendir:
            # the kernel opens directories itself from now on, cached (see DIR_INO)
            raise pyfuse3.FUSEError(errno.ENOSYS)
        fh = self.files.new_number()
        self.dirs[fh] = DirHandle(node)
        if self.cache_dirs:
            # the kernel keeps the listing in its page cache across opens and drops it
            # itself when the directory changes through this mount (only this daemon
            # changes the layers): a warm readdir never reaches the daemon
            return pyfuse3.FileInfo(fh=fh, keep_cache=True, cache_readdir=True)
        return fh

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self._listing(fh)
        if listing.names is None or start_id == 0:
            # like kernel overlayfs, the merged listing is read at the first readdir
            # (and again after a rewinddir)
            listing.names = [b".", b"..", *self.overlay.listing(listing.node)]
        names = listing.names
        if start_id >= len(names) and self.no_opendir:
            del self.listings[fh]  # read to its end: the kernel has it all
        for i in range(start_id, len(names)):
            if not await self._reply_entry(token, listing.node, names[i], i + 1):
                return

    def _listing(self, fh: int) -> DirHandle:
        """The open directory ``fh`` (without OPENDIR: the directory of inode ``fh``)."""
        if not self.no_opendir:
            listing = self.dirs.get(fh)
            if listing is None:
                raise pyfuse3.FUSEError(errno.EBADF)
            return listing
        listing = self.listings.pop(fh, None)
        if listing is None or self.overlay.table.get(fh) is not listing.node:
            node = self.overlay.node(fh)
            if not node.is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            listing = DirHandle(node)
        self.listings[fh] = listing  # the newest last
        while len(self.listings) > MAX_LISTINGS:
            self.listings.popitem(last=False)
        return listing

    async def _reply_entry(
        self, token: pyfuse3.ReaddirToken, parent: Node, name: bytes, offset: int
    ) -> bool:
        """One entry of a readdirplus reply; False once the reply buffer is full."""
        if name == b"." or name == b"..":
            target = parent if name == b"." else (parent.parent or parent)
            # the kernel takes no reference for these two: count none
            return bool(pyfuse3.readdir_reply(token, name, self._entry(target), offset))
        try:
            node = await child(self.overlay, parent, name, locked=False)
        except OSError:
            node = None
        if node is None:
            return True  # removed since opendir
        if not pyfuse3.readdir_reply(token, name, self._entry(node), offset):
            self.overlay.table.forget(node.ino, 0)
            return False
        node.nlookup += 1
        return True

    @guarded
    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    @guarded
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        if self.no_opendir:
            node: Node | None = self.overlay.node(fh)
        else:
            listing = self.dirs.get(fh)
            node = listing.node if listing is not None else None
        if node is None or not node.upper:
            return
        fd = longpath.open(self.overlay.upper_path(node), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------ xattrs

    @guarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name == REQUEST_XATTR:
            # the clone command's barrier: the kernel sees the clones made so far
            for event in list(self._invalidating):
                await event.wait()
            return b"ok"
        return attrs.get_xattr(self.overlay, self.overlay.node(inode), name)

    @guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return attrs.list_xattrs(self.overlay, self.overlay.node(inode))

    @guarded
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        node = self.overlay.node(inode)
        if name == REQUEST_XATTR:
            await self._clone(node, value, ctx)
            return
        async with self.overlay.lock:
            await attrs.set_xattr(self.overlay, node, name, value)

    async def _clone(self, parent: Node, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        """``overlayboot clone``: make the clone, then have the kernel drop a negative
        entry it may have cached for the new name. That waits for the directory's lock,
        which the kernel holds until this request is answered: a task of its own does it."""
        req = parse_request(value)
        async with self.overlay.lock:
            await clone.clone(self.overlay, parent, req, Caller.of(ctx.uid, ctx.gid, ctx.pid))
        done = trio.Event()
        self._invalidating.add(done)
        trio.lowlevel.spawn_system_task(self._forget_entry, parent.ino, req.name, done)

    async def _forget_entry(self, parent_ino: int, name: bytes, done: trio.Event) -> None:
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_entry, parent_ino, name)
        except Exception as exc:  # a system task must not raise; ENOENT: nothing cached
            log.debug("invalidating %r after a clone: %s", name, exc)
        finally:
            self._invalidating.discard(done)
            done.set()

    @guarded
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self.overlay.node(inode)
        async with self.overlay.lock:
            await attrs.remove_xattr(self.overlay, node, name)

    @guarded
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True


__all__ = ["OverlayOperations"]
