"""The FUSE request handlers: the only module that imports pyfuse3.

Each handler is a thin adapter from a FUSE request to the overlay (``core``,
``copyup``, ``dirops``). None lets an exception escape: an ``OSError`` becomes
its errno, anything else is logged (with the word INTERNAL) and answered EIO.
The daemon is the root filesystem; if it dies, the machine dies.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from overlayboot.fs import dirops
from overlayboot.fs.chunked import Partial
from overlayboot.fs.copyup import copy_up
from overlayboot.fs.core import Overlay
from overlayboot.fs.inodes import Node

log = logging.getLogger("overlayboot.fs")

P = ParamSpec("P")
T = TypeVar("T")

OPEN_PASS_FLAGS = os.O_SYNC | os.O_DSYNC


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


@dataclass
class FileHandle:
    """An open file: its real fd, and whether that fd is on the upper layer.

    ``partial``: the file is a partial copy-up, read and written through it.
    """

    node: Node
    fd: int
    upper: bool
    writable: bool
    partial: Partial | None = None
    sync: bool = False


DIR_CACHE = hasattr(pyfuse3.FileInfo, "cache_readdir")
"""Whether this pyfuse3 lets opendir set FOPEN_CACHE_DIR (the build the Makefile makes does;
see third_party/pyfuse3): without it every readdir goes to the daemon."""


@dataclass
class DirHandle:
    """An open directory: the merged listing, taken at the first readdir from offset 0."""

    node: Node
    names: list[bytes] | None = None


class OverlayOperations(pyfuse3.Operations):
    """pyfuse3 handlers over an :class:`Overlay`."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, ov: Overlay) -> None:
        super().__init__()
        self.ov = ov
        self.files: dict[int, FileHandle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._fh = itertools.count(1)
        self.timeout = ov.cfg.timeout
        self.cache_dirs = self.timeout > 0 and DIR_CACHE
        self.initialized = trio.Event()  # set once the kernel's INIT has been answered

    def init(self) -> None:
        self.initialized.set()

    # ------------------------------------------------------------ helpers

    def _entry(self, node: Node, upper_st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        try:
            s = self.ov.stat(node, upper_st)
            st, nlink, blocks = s.st, s.nlink, s.blocks
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            handle = self._any_handle(node)
            if handle is None:
                raise
            st = os.fstat(handle.fd)
            nlink, blocks = st.st_nlink, None
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        e.entry_timeout = self.timeout
        e.attr_timeout = self.timeout
        e.st_mode = st.st_mode
        e.st_nlink = nlink
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = st.st_blksize
        e.st_blocks = st.st_blocks if blocks is None else blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        return e

    def _any_handle(self, node: Node) -> FileHandle | None:
        for h in self.files.values():
            if h.node is node:
                return h
        return None

    def _lookup_ref(
        self, node: Node, upper_st: os.stat_result | None = None
    ) -> pyfuse3.EntryAttributes:
        entry = self._entry(node, upper_st)
        node.nlookup += 1
        return entry

    def _new_fh(self) -> int:
        return next(self._fh)

    # ------------------------------------------------------------ lookup & attributes

    @guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self.ov.node(parent_inode)
        if name == b".":
            return self._lookup_ref(parent)
        if name == b"..":
            return self._lookup_ref(parent.parent or parent)
        node = self.ov.child(parent, name)
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
                self.ov.table.forget(ino, count)
            except Exception:
                log.exception("INTERNAL: forget(%#x, %d)", ino, count)

    @guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self.ov.node(inode))

    @guarded
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        ov = self.ov
        node = ov.node(inode)
        if not (
            fields.update_uid
            or fields.update_gid
            or fields.update_mode
            or fields.update_size
            or fields.update_atime
            or fields.update_mtime
        ):
            return self._entry(node)
        async with ov.lock:
            truncating = fields.update_size and attr.st_size == 0
            await copy_up(ov, node, data=not truncating)
            handle = self.files.get(fh) if fh is not None else None
            try:
                path: bytes | int = ov.upper_path(node)
            except OSError:
                if handle is None:
                    raise
                path = handle.fd
            is_link = not node.is_dir and isinstance(path, bytes) and os.path.islink(path)
            if fields.update_uid or fields.update_gid:
                uid = attr.st_uid if fields.update_uid else -1
                gid = attr.st_gid if fields.update_gid else -1
                if isinstance(path, bytes):
                    os.chown(path, uid, gid, follow_symlinks=False)
                else:
                    os.fchown(path, uid, gid)
            if fields.update_mode and not is_link:
                os.chmod(path, stat.S_IMODE(attr.st_mode))
            if fields.update_size:
                if handle is not None and handle.upper and handle.writable:
                    os.ftruncate(handle.fd, attr.st_size)
                    ov.partials.truncated(handle.fd, attr.st_size)
                else:
                    os.truncate(path, attr.st_size)
                    ov.partials.truncated(path, attr.st_size)
            if fields.update_atime or fields.update_mtime:
                cur = os.lstat(path) if isinstance(path, bytes) else os.fstat(path)
                atime = attr.st_atime_ns if fields.update_atime else cur.st_atime_ns
                mtime = attr.st_mtime_ns if fields.update_mtime else cur.st_mtime_ns
                if isinstance(path, bytes):
                    os.utime(path, ns=(atime, mtime), follow_symlinks=False)
                else:
                    os.utime(path, ns=(atime, mtime))
            return self._entry(node)

    @guarded
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.readlink(self.ov.real_path(self.ov.node(inode)))

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.ov.upper_root)
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

    async def _make(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        ctx: pyfuse3.RequestContext,
        build: Callable[[bytes, int, int, int], None],
    ) -> pyfuse3.EntryAttributes:
        ov = self.ov
        parent = ov.node(parent_inode)
        async with ov.lock:
            await copy_up(ov, parent)
            uid, gid, mode = dirops.new_owner(ov, parent, ctx.uid, ctx.gid, mode)

            def make(tmp: bytes) -> None:
                build(tmp, mode, uid, gid)

            st = await dirops.install(ov, parent, name, make, is_dir=stat.S_ISDIR(mode))
            return self._lookup_ref(ov.adopt_new(parent, name, st), st)

    @guarded
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        def build(tmp: bytes, mode: int, uid: int, gid: int) -> None:
            os.mknod(tmp, mode, rdev)
            os.chown(tmp, uid, gid)
            os.chmod(tmp, stat.S_IMODE(mode))

        return await self._make(parent_inode, name, mode, ctx, build)

    @guarded
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        def build(tmp: bytes, mode: int, uid: int, gid: int) -> None:
            os.mkdir(tmp, 0o700)
            os.chown(tmp, uid, gid)
            os.chmod(tmp, stat.S_IMODE(mode))

        return await self._make(parent_inode, name, stat.S_IFDIR | mode, ctx, build)

    @guarded
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        def build(tmp: bytes, mode: int, uid: int, gid: int) -> None:
            os.symlink(target, tmp)
            os.chown(tmp, uid, gid, follow_symlinks=False)

        return await self._make(parent_inode, name, stat.S_IFLNK | 0o777, ctx, build)

    @guarded
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        ov = self.ov
        fds: list[int] = []

        def build(tmp: bytes, mode: int, uid: int, gid: int) -> None:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            fds.append(fd)
            os.fchown(fd, uid, gid)
            os.fchmod(fd, stat.S_IMODE(mode))

        try:
            entry = await self._make(parent_inode, name, stat.S_IFREG | mode, ctx, build)
        except BaseException as exc:
            for fd in fds:
                os.close(fd)
            # the kernel sends CREATE for a name it believes absent; should it be there
            # after all, open it as open(2) without O_EXCL would
            if not isinstance(exc, OSError) or exc.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            existing = ov.require_child(ov.node(parent_inode), name)
            return await self._open_node(existing, flags), self._lookup_ref(existing)
        node = ov.node(entry.st_ino)
        fh = self._new_fh()
        self.files[fh] = FileHandle(node, fds[0], True, True)
        node.handles += 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), entry

    @guarded
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        ov = self.ov
        node = ov.node(inode)
        parent = ov.node(new_parent_inode)
        async with ov.lock:
            await dirops.link(ov, node, parent, new_name)
            return self._lookup_ref(node)

    # ------------------------------------------------------------ removing and renaming

    @guarded
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        ov = self.ov
        async with ov.lock:
            await dirops.unlink(ov, ov.node(parent_inode), name)

    @guarded
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        ov = self.ov
        async with ov.lock:
            await dirops.rmdir(ov, ov.node(parent_inode), name)

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
        ov = self.ov
        async with ov.lock:
            await dirops.rename(
                ov,
                ov.node(parent_inode_old),
                name_old,
                ov.node(parent_inode_new),
                name_new,
                flags,
            )

    # ------------------------------------------------------------ files

    def _partial_of(self, fd: int, path: bytes) -> Partial | None:
        """The partial copy-up behind ``fd``, an upper file just opened (closed on failure)."""
        try:
            return self.ov.partials.acquire(fd, path)
        except BaseException:
            os.close(fd)
            raise

    async def _open_node(self, node: Node, flags: int) -> pyfuse3.FileInfo:
        ov = self.ov
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        trunc = bool(flags & os.O_TRUNC)
        if (writable or trunc) and not node.upper:
            async with ov.lock:
                await copy_up(ov, node, data=not trunc)
        extra = flags & OPEN_PASS_FLAGS
        sync = bool(extra)
        partial = None
        if node.upper:
            mode = os.O_RDWR if writable else os.O_RDONLY
            if trunc:
                extra |= os.O_TRUNC  # Linux truncates even with O_RDONLY
            path = ov.upper_path(node)
            fd = os.open(path, mode | extra | os.O_NOFOLLOW)
            partial = self._partial_of(fd, path)
        else:
            fd = os.open(ov.lower_path(node), os.O_RDONLY | os.O_NOFOLLOW)
        fh = self._new_fh()
        self.files[fh] = FileHandle(node, fd, node.upper, writable, partial, sync)
        node.handles += 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return await self._open_node(self.ov.node(inode), flags)

    def _handle(self, fh: int) -> FileHandle:
        h = self.files.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if not h.upper and h.node.upper:
            # copied up since it was opened: read the upper copy from now on
            try:
                path = self.ov.upper_path(h.node)
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                return h
            h.partial = self._partial_of(fd, path)
            os.close(h.fd)
            h.fd, h.upper = fd, True
        return h

    @guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handle(fh)
        if h.partial is not None:
            return h.partial.read(off, size)
        return os.pread(h.fd, size, off)

    @guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handle(fh)
        if not h.upper:
            raise pyfuse3.FUSEError(errno.EBADF)
        if h.partial is not None:
            return h.partial.write(h.fd, off, buf, sync=h.sync)
        return os.pwrite(h.fd, buf, off)

    # No flush handler: the kernel then stops sending FLUSH at every close (a third of the
    # requests of an open-read-close). A partial copy-up records its map at release, which
    # the kernel sends as the last close returns.

    @guarded
    async def release(self, fh: int) -> None:
        h = self.files.pop(fh, None)
        if h is None:
            return
        os.close(h.fd)
        h.node.handles -= 1
        self.ov.table.forget(h.node.ino, 0)
        if h.partial is not None:
            self.ov.partials.release(h.partial)

    @guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handle(fh)
        if h.partial is not None:
            h.partial.persist(full=not datasync)
        if h.upper:
            (os.fdatasync if datasync else os.fsync)(h.fd)

    # ------------------------------------------------------------ directories

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int | pyfuse3.FileInfo:
        node = self.ov.node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._new_fh()
        self.dirs[fh] = DirHandle(node)
        if self.cache_dirs:
            # the kernel keeps the listing in its page cache across opens and drops it
            # itself when the directory changes through this mount (only this daemon
            # changes the layers): a warm readdir never reaches the daemon
            return pyfuse3.FileInfo(fh=fh, keep_cache=True, cache_readdir=True)
        return fh

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self.dirs.get(fh)
        if d is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        ov = self.ov
        if d.names is None or start_id == 0:
            # like kernel overlayfs, the merged listing is read at the first readdir
            # (and again after a rewinddir)
            d.names = [b".", b"..", *ov.listing(d.node)]
        names = d.names
        for i in range(start_id, len(names)):
            name = names[i]
            if name == b"." or name == b"..":
                target = d.node if name == b"." else (d.node.parent or d.node)
                # the kernel takes no reference for these two: count none
                if not pyfuse3.readdir_reply(token, name, self._entry(target), i + 1):
                    return
                continue
            try:
                node = ov.child(d.node, name)
            except OSError:
                node = None
            if node is None:
                continue  # removed since opendir
            entry = self._entry(node)
            if not pyfuse3.readdir_reply(token, name, entry, i + 1):
                ov.table.forget(node.ino, 0)
                return
            node.nlookup += 1

    @guarded
    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    @guarded
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        d = self.dirs.get(fh)
        if d is None or not d.node.upper:
            return
        fd = os.open(self.ov.upper_path(d.node), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------ xattrs

    def _check_name(self, name: bytes) -> str:
        sname = os.fsdecode(name)
        if self.ov.names.is_private(sname):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        return sname

    @guarded
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        sname = self._check_name(name)
        return os.getxattr(self.ov.real_path(self.ov.node(inode)), sname, follow_symlinks=False)

    @guarded
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        names = os.listxattr(self.ov.real_path(self.ov.node(inode)), follow_symlinks=False)
        return [os.fsencode(n) for n in names if not self.ov.names.is_private(n)]

    @guarded
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        sname = self._check_name(name)
        ov = self.ov
        node = ov.node(inode)
        async with ov.lock:
            await copy_up(ov, node)
            os.setxattr(ov.upper_path(node), sname, value, follow_symlinks=False)

    @guarded
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        sname = self._check_name(name)
        ov = self.ov
        node = ov.node(inode)
        async with ov.lock:
            if not node.upper:
                # nothing to remove: fail without copying up, as overlayfs does
                os.getxattr(ov.lower_path(node), sname, follow_symlinks=False)
            await copy_up(ov, node)
            os.removexattr(ov.upper_path(node), sname, follow_symlinks=False)

    @guarded
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        return True


__all__ = ["OverlayOperations"]
