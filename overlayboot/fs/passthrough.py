"""FUSE passthrough: which backing file the kernel inode of each node reads and writes.

With passthrough (Linux 6.9+, libfuse 3.17+, the daemon root) an open reply can name a
backing file, registered with the kernel beforehand: the kernel then reads, writes and
maps that file itself, and no READ or WRITE request reaches the daemon. The kernel
imposes three rules, kept here:

* while files of an inode are open, all of them use the same backing file, or none
  does (an open that breaks this fails with EIO in the kernel);
* a backing file is chosen at open and stays for the life of the open file;
* FOPEN_KEEP_CACHE does not combine with it (the page cache is the backing file's).

The daemon binds whole files: a lower file opened read-only, an upper file (read and
write). A partial copy-up is served by the daemon (its chunks live in two files).
What an fd opened on the lower before a copy-up reads afterwards follows from the
second rule: see ``files.OpenFiles.open``.

A binding outlives the last release of its inode, until the kernel forgets the inode
(its inode cache bounds them; ``MAX_IDLE`` is a safety cap, least recently used first):
the next open of a file read again reuses its backing id, with no open(2) or ioctl in
the daemon. Dropped ids are closed in batches between requests (``close_pending``): a
``drop_caches`` forgets tens of thousands of inodes at once. An upper file's binding goes
with its last release, closed at once: the upper file may be unlinked, and an open
backing file would keep its blocks.
"""

from __future__ import annotations

import errno
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

# a backing file the kernel refuses for good reasons (stacked too deep, not supported
# by its filesystem): that file is served by the daemon
_REFUSED = (errno.EINVAL, errno.ELOOP, errno.EOPNOTSUPP, errno.EBADF)

MAX_IDLE = 1 << 20
"""Bindings kept with no file open (each holds an open file in the kernel, ~300 bytes)."""
CLOSE_BATCH = 64  # backing ids closed in one go by close_pending


class Kernel(Protocol):
    """Registers backing files with the kernel (pyfuse3's passthrough_open/close)."""

    def open_backing(self, fd: int) -> int: ...

    def close_backing(self, backing_id: int) -> None: ...


@dataclass
class InodeIo:
    """How the kernel inode of one node does I/O while files of it are open.

    ``backing_id`` 0: through the daemon (READ and WRITE requests)."""

    backing_id: int
    upper: bool  # the backing file is the upper copy (else the lower file)
    users: int = 0


class Bindings:
    """The I/O mode of every kernel inode with open files, by inode number."""

    def __init__(self, max_idle: int = MAX_IDLE) -> None:
        self.kernel: Kernel | None = None
        self.by_ino: dict[int, InodeIo] = {}
        self.idle: OrderedDict[int, None] = OrderedDict()  # no file open, oldest first
        self.max_idle = max_idle
        self.closing: list[int] = []  # dropped backing ids not closed yet
        # called when ids are waiting to be closed (the daemon's closer task); without
        # it they are closed at once
        self.wake: Callable[[], None] | None = None

    @property
    def enabled(self) -> bool:
        return self.kernel is not None

    def bound_to_lower(self, ino: int) -> bool:
        """Files of ``ino`` are open with the lower file as their backing file."""
        io = self.by_ino.get(ino)
        return io is not None and io.users > 0 and io.backing_id > 0 and not io.upper

    def has_backing(self, ino: int, *, upper: bool) -> bool:
        """An open of ``ino`` on that layer needs no fd: it shares a backing id."""
        io = self.by_ino.get(ino)
        return io is not None and io.backing_id > 0 and io.upper == upper

    def attach(self, ino: int, fd: int, *, upper: bool, whole: bool, bind: bool = True) -> int:
        """A file of ``ino`` is being opened on ``fd``: the backing id for its open reply
        (0: the daemon serves it). ``whole``: ``fd`` holds the whole file's data;
        ``bind``: bind the inode to ``fd``'s file if it is not bound yet."""
        io = self.by_ino.get(ino)
        if io is not None and io.users == 0:
            self.idle.pop(ino, None)
            if io.upper != upper or not whole or not io.backing_id:
                self.drop(ino)  # copied up (or partial) since: bind afresh
                io = None
        if io is None:
            io = InodeIo(self._register(fd) if whole and bind and fd >= 0 else 0, upper)
            self.by_ino[ino] = io
        elif io.backing_id and not whole:
            raise OSError(errno.EBUSY, "the kernel reads this file from a backing file")
        io.users += 1
        return io.backing_id

    def detach(self, ino: int) -> None:
        """One file of ``ino`` was released; after the last one the binding stays idle."""
        io = self.by_ino.get(ino)
        if io is None:
            return
        io.users -= 1
        if io.users > 0:
            return
        if not io.backing_id:
            del self.by_ino[ino]
            return
        if io.upper:
            # an upper file may be unlinked: its backing file, open in the kernel, would
            # keep its blocks (a full tmpfs upper stayed full after rm): closed now
            self.drop(ino, now=True)
            return
        self.idle[ino] = None
        while len(self.idle) > self.max_idle:
            self.drop(next(iter(self.idle)))

    def drop(self, ino: int, *, now: bool = False) -> None:
        """Forget the binding of ``ino`` (no file of it open), freeing its backing id
        (``now``: at once, else in the next batch)."""
        io = self.by_ino.get(ino)
        if io is None or io.users > 0:
            return
        del self.by_ino[ino]
        self.idle.pop(ino, None)
        if io.backing_id and self.kernel is not None:
            self.closing.append(io.backing_id)
            if now:
                self.closing.pop()
                self._close(io.backing_id)
            elif self.wake is None:
                self.close_pending(len(self.closing))
            elif len(self.closing) == 1:
                self.wake()

    def close_pending(self, limit: int = CLOSE_BATCH) -> int:
        """Close up to ``limit`` dropped backing ids; how many are left."""
        batch, self.closing = self.closing[:limit], self.closing[limit:]
        for backing_id in batch:
            if self.kernel is None:
                break
            self._close(backing_id)
        return len(self.closing)

    def _close(self, backing_id: int) -> None:
        if self.kernel is None:
            return
        try:
            self.kernel.close_backing(backing_id)
        except OSError as exc:
            log.error("closing backing id %d: %s", backing_id, exc)

    def _register(self, fd: int) -> int:
        if self.kernel is None:
            return 0
        try:
            return self.kernel.open_backing(fd)
        except OSError as exc:
            if exc.errno in _REFUSED:
                log.debug("no passthrough for this file: %s", exc)
                return 0
            # EPERM (not root) or an ioctl this kernel lacks: none will work
            log.warning("FUSE passthrough disabled: %s", exc)
            self.kernel = None
            return 0
