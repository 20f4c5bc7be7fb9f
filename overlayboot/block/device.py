"""The FUSE side of the device: a directory holding one file, ``disk``, the store's
copy-on-write view (for ``losetup``). The only pyfuse3 import of ``overlayboot.block``.

Reads and writes go to the :class:`Store`, and so do discards (``fallocate``, with a
pyfuse3 that has the handler: ``DISCARD``); ``fsync`` (what the loop driver sends for a
flush of the block device) commits it. The handlers never await, so each runs whole
before the next: no lock is needed. No exception escapes (``guarded``): an ``OSError``
becomes its errno, anything else a logged EIO.
"""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3
import trio

from overlayboot.block.store import Store
from overlayboot.fs.operations import guarded

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
DISCARD = hasattr(pyfuse3.Operations, "fallocate")
"""Whether this pyfuse3 passes fallocate on (patched); without it the kernel answers
EOPNOTSUPP to a discard and the store keeps the chunks."""

DISK_NAME = b"disk"
DISK_INODE = 2
FOREVER = 365 * 24 * 3600.0


class DeviceOperations(pyfuse3.Operations):
    """pyfuse3 handlers over a :class:`Store`."""

    enable_writeback_cache = False

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        st = os.fstat(store.fd)
        self.times_ns = st.st_mtime_ns
        self.initialized = trio.Event()

    def init(self) -> None:
        self.initialized.set()

    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode
        e.entry_timeout = FOREVER
        e.attr_timeout = FOREVER
        if inode == pyfuse3.ROOT_INODE:
            e.st_mode = stat.S_IFDIR | 0o755
            e.st_nlink = 2
        elif inode == DISK_INODE:
            e.st_mode = stat.S_IFREG | (0o600 if self.store.writable else 0o400)
            e.st_nlink = 1
            e.st_size = self.store.size
            e.st_blocks = -(-self.store.size // 512)
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        e.st_blksize = 4096
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = self.times_ns
        return e

    @guarded
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name in (b".", b".."):
            return self._attrs(pyfuse3.ROOT_INODE)
        if name != DISK_NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(DISK_INODE)

    @guarded
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attrs(inode)

    @guarded
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if fields.update_size and attr.st_size != self.store.size:
            raise pyfuse3.FUSEError(errno.EPERM)  # a device keeps its size
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._attrs(inode)  # times: ignored, as a device node's would be

    @guarded
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, DISK_NAME, self._attrs(DISK_INODE), 1)

    @guarded
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode != DISK_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY and not self.store.writable:
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=DISK_INODE, keep_cache=True)

    @guarded
    async def read(  # type: ignore[override]  # pyfuse3 replies with any buffer
        self, fh: int, off: int, size: int
    ) -> bytes | bytearray:
        return self.store.read(off, size)

    @guarded
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.store.write(off, buf)

    @guarded
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """Punch a hole or zero a range (what the loop driver sends for a discard or a
        write of zeros): the range reads as zeros. Other modes: EOPNOTSUPP. Called only
        with a pyfuse3 that has the handler (third_party/pyfuse3/fallocate.patch)."""
        punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        if mode not in (punch, FALLOC_FL_ZERO_RANGE, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        self.store.discard(offset, min(length, self.store.size - offset))

    @guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        self.store.flush()

    @guarded
    async def flush(self, fh: int) -> None:
        return None  # close(2): a commit is fsync's job

    @guarded
    async def release(self, fh: int) -> None:
        return None

    @guarded
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.fstatvfs(self.store.fd)
        out = pyfuse3.StatvfsData()
        out.f_bsize = sv.f_bsize
        out.f_frsize = sv.f_frsize
        out.f_blocks = sv.f_blocks
        out.f_bfree = sv.f_bfree
        out.f_bavail = sv.f_bavail
        out.f_files = 2
        out.f_namemax = 255
        return out
