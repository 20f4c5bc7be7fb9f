"""Open files: opening a node, reading, writing, syncing and closing it.

An open file holds an fd on the layer that has the node when it is opened. One
opened for writing (or with ``O_TRUNC``) copies the node up first. One opened
read-only on the lower that is copied up meanwhile (by a writer) reads the upper
copy from its next read on, as kernel overlayfs does. A partial copy-up is read
and written through its :class:`ChunkedFile` (``partials``).

With FUSE passthrough (``passthrough``) a whole file is bound to its fd's file, and
the kernel inode keeps that backing file while any file of it is open. So a file
opened read-only on the lower keeps reading the lower after a copy-up (as a mapping
does on kernel overlayfs, and as read(2) did before Linux 4.19), and the copy-up
itself cannot use that inode: an open for writing (or ``O_TRUNC``, or a truncate)
of an inode bound to its lower file gives the node a new inode number and answers
ESTALE, on which the kernel looks the path up again (``LOOKUP_REVAL``) and opens
the new inode. ``stat`` shows the old number for both (``shown_ino``), as kernel
overlayfs, which has one inode, would.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
from dataclasses import dataclass

from overlayboot.fs import longpath
from overlayboot.fs.chunked import ChunkedFile
from overlayboot.fs.copyup import copy_up
from overlayboot.fs.core import Overlay
from overlayboot.fs.cow import node_shared
from overlayboot.fs.inodes import Node
from overlayboot.fs.passthrough import Bindings

log = logging.getLogger(__name__)

OPEN_PASS_FLAGS = os.O_SYNC | os.O_DSYNC
"""open(2) flags passed on to the upper file."""


@dataclass
class FileHandle:
    """An open file: its real fd, and whether that fd is on the upper layer.

    ``partial``: the file is a partial copy-up, read and written through it.
    ``backing_id``: > 0 when the kernel reads and writes ``fd``'s file itself.
    """

    node: Node
    fd: int
    upper: bool
    writable: bool
    partial: ChunkedFile | None = None
    sync: bool = False
    backing_id: int = 0


class OpenFiles:
    """The open files of one overlay, by file handle number."""

    def __init__(self, overlay: Overlay) -> None:
        self.overlay = overlay
        self.handles: dict[int, FileHandle] = {}
        self._numbers = itertools.count(1)
        # with noatime, reads through the daemon leave the upper files' atime alone
        self.read_flags = os.O_NOATIME if "noatime" in overlay.cfg.options else 0
        self.bindings = Bindings()  # its kernel is set once INIT agreed to passthrough
        # FUSE inode number -> the st_ino stat shows for it, where they differ (check_writable)
        self.shown_ino: dict[int, int] = {}

    def new_number(self) -> int:
        return next(self._numbers)

    def add(self, handle: FileHandle) -> int:
        """Register an open file (closing its fd if the kernel inode cannot take it)."""
        try:
            # the kernel opens the backing file anew, without O_NOATIME: with noatime,
            # reads of upper files stay with the daemon (lower files are not written)
            handle.backing_id = self.bindings.attach(
                handle.node.ino,
                handle.fd,
                upper=handle.upper,
                whole=handle.partial is None,
                bind=not (handle.upper and self.read_flags),
            )
        except BaseException:
            if handle.fd >= 0:
                os.close(handle.fd)
            raise
        if handle.backing_id and not handle.upper and handle.fd >= 0:
            os.close(handle.fd)  # the kernel holds the lower file now
            handle.fd = -1
        number = self.new_number()
        self.handles[number] = handle
        handle.node.handles += 1
        return number

    def backing_id(self, number: int) -> int:
        """The backing id for the open reply of handle ``number`` (0: none)."""
        return self.handles[number].backing_id

    def of_node(self, node: Node, *, upper: bool | None = None) -> FileHandle | None:
        """An open handle of ``node`` (on the upper if ``upper``), if any."""
        for handle in self.handles.values():
            if handle.fd < 0:
                continue  # a lower file the kernel reads through its backing file
            if handle.node is node and (upper is None or handle.upper == upper):
                return handle
        return None

    # ------------------------------------------------------------ opening

    async def open(self, node: Node, flags: int) -> int:
        """Open ``node`` (not a directory); return the new handle's number."""
        overlay = self.overlay
        if node.is_dir:
            raise OSError(errno.EISDIR, "is a directory")
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        trunc = bool(flags & os.O_TRUNC)
        if writable or trunc:
            self.check_writable(node)
        if (writable or trunc) and (not node.upper or node_shared(overlay, node)):
            async with overlay.lock:
                await copy_up(overlay, node, data=not trunc)
        extra = flags & OPEN_PASS_FLAGS
        partial = None
        if node.upper:
            mode = os.O_RDWR if writable else os.O_RDONLY | self.read_flags
            if trunc:
                mode |= os.O_TRUNC  # Linux truncates even with O_RDONLY
            path = overlay.upper_path(node)
            fd = self._open_real(path, mode | extra)
            partial = self._partial_of(fd, path)
        elif self.bindings.has_backing(node.ino, upper=False):
            fd = -1  # the kernel reads its backing file: the daemon needs no fd
        else:
            fd = longpath.open(overlay.lower_path(node), os.O_RDONLY | os.O_NOFOLLOW)
        return self.add(FileHandle(node, fd, node.upper, writable, partial, bool(extra)))

    def adopt_created(self, node: Node, fd: int) -> int:
        """A file ``dirops.create_file`` just made, open read-write on the upper."""
        return self.add(FileHandle(node, fd, True, True))

    def check_writable(self, node: Node) -> None:
        """Before ``node``'s data change: if its kernel inode is bound to the lower file
        (or to an upper file shared with a clone, see ``cow``),
        give the node a new inode and make the kernel look it up again (ESTALE)."""
        if not self.bindings.bound_to_lower(node.ino) and not (
            self.bindings.has_backing(node.ino, upper=True) and node_shared(self.overlay, node)
        ):
            return
        table = self.overlay.table
        new_ino = table.dynamic_ino()
        # the numbers lookups compute for this file now lead to the new node
        for raw, ino in list(table.overrides.items()):
            if ino == node.ino:
                table.overrides[raw] = new_ino
        table.overrides.setdefault(node.ino, new_ino)
        self.shown_ino[new_ino] = self.shown_ino.get(node.ino, node.ino)
        for parent, name in list(node.names()):
            table.remove_name(node, parent, name)
        log.debug("inode %#x bound to its lower file: %#x for the copy-up", node.ino, new_ino)
        raise OSError(errno.ESTALE, "the file is open on its lower layer: look it up again")

    def _open_real(self, path: bytes, flags: int) -> int:
        try:
            return longpath.open(path, flags | os.O_NOFOLLOW)
        except PermissionError:
            if not flags & os.O_NOATIME:
                raise
            return longpath.open(path, (flags & ~os.O_NOATIME) | os.O_NOFOLLOW)  # not the owner

    def _partial_of(self, fd: int, path: bytes) -> ChunkedFile | None:
        """The partial copy-up behind ``fd``, an upper file just opened (closed on failure)."""
        try:
            return self.overlay.partials.acquire(fd, path)
        except BaseException:
            os.close(fd)
            raise

    # ------------------------------------------------------------ I/O

    def get(self, number: int) -> FileHandle:
        """The handle ``number``, moved to the upper copy if its node was copied up."""
        handle = self.handles.get(number)
        if handle is None:
            raise OSError(errno.EBADF, "no such file handle")
        if not handle.upper and handle.node.upper and not handle.backing_id:
            self._move_to_upper(handle)
        return handle

    def _move_to_upper(self, handle: FileHandle) -> None:
        """A read-only handle opened on the lower whose node was copied up since: read the
        upper copy from now on (never the lower again: it is no longer the file)."""
        try:
            path = self.overlay.upper_path(handle.node)
            fd = self._open_real(path, os.O_RDONLY | self.read_flags)
        except OSError as exc:
            # unlinked since its copy-up: an open upper handle of the same file still has it
            other = self.of_node(handle.node, upper=True)
            if other is None:
                log.error("reopening a copied-up file failed: %s", exc)
                raise OSError(errno.EIO, "the copied-up file cannot be reopened") from exc
            fd, partial = os.dup(other.fd), _share(other.partial)
        else:
            partial = self._partial_of(fd, path)
        os.close(handle.fd)
        handle.fd, handle.upper, handle.partial = fd, True, partial

    def read(self, number: int, off: int, size: int) -> bytes | memoryview:
        """Bytes of handle ``number`` (a memoryview: valid until the next partial read)."""
        handle = self.get(number)
        if handle.partial is not None:
            return handle.partial.read(off, size)
        return os.pread(handle.fd, size, off)

    def write(self, number: int, off: int, buf: bytes) -> int:
        handle = self.get(number)
        if not handle.upper:
            raise OSError(errno.EBADF, "not open for writing")
        if handle.partial is not None:
            return handle.partial.write(handle.fd, off, buf, sync=handle.sync)
        return os.pwrite(handle.fd, buf, off)

    def fsync(self, number: int, datasync: bool) -> None:
        handle = self.get(number)
        if handle.partial is not None:
            handle.partial.persist(full=not datasync)
        if handle.upper:
            (os.fdatasync if datasync else os.fsync)(handle.fd)

    def release(self, number: int) -> None:
        """The last close of a handle: bookkeeping first, the fd last, whatever fails."""
        handle = self.handles.pop(number, None)
        if handle is None:
            return
        try:
            handle.node.handles -= 1
            self.bindings.detach(handle.node.ino)
            self.overlay.table.forget(handle.node.ino, 0)
            self.forgotten(handle.node.ino)
            if handle.partial is not None:
                self.overlay.partials.release(handle.partial)
        finally:
            if handle.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(handle.fd)

    def forgotten(self, ino: int) -> None:
        """The kernel forgot ``ino`` (no node left): its idle binding goes too."""
        if self.overlay.table.get(ino) is None:
            self.bindings.drop(ino)


def _share(partial: ChunkedFile | None) -> ChunkedFile | None:
    """One more user of an open partial copy-up (released with the handle)."""
    if partial is not None:
        partial.refs += 1
    return partial
