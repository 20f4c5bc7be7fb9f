"""The lazy HTTP lower: one image on an HTTP server shown as one read-only file through FUSE,
read with range requests as the kernel asks for its blocks (what live-boot's ``httpfs=``
does with httpfs2). Phase fetch loop-mounts the file as the squashfs lower.

``python -m overlayboot.net.httpfs URL MOUNTPOINT [--address IP] [--cache BYTES]
[--log FILE] [--patience S] [--ca PEM] [--pid-file FILE] [--as-root] [--foreground]``

An https URL needs ``--ca``: the server's certificate is checked against that CA (and the
URL's host name), as nothing else checks the blocks read lazily.

The mount holds one file, ``image.squashfs``, of the image's size. Reads are served from a
RAM cache of chunks (``overlayboot.net.chunkcache``); missing chunks are fetched in a worker
thread, one range request per run of adjacent chunks, so the request loop never blocks.
While the server is away, reads wait and resume when it answers (``httpio``); an image
that changes on the server while in use, or a 404, is EIO and logged, never garbage.
It detaches once mounted (the parent exits 0, or 1 with an ``ERROR:`` line); with
``--as-root`` it ignores SIGTERM/SIGINT/SIGHUP and locks its memory, as the overlay daemon.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import stat
import sys
from pathlib import Path

import pyfuse3
import trio

from overlayboot.fs import survive
from overlayboot.net.chunkcache import ChunkCache
from overlayboot.net.detach import detach, helper_parser, log_to, ready
from overlayboot.net.fetch import target_of
from overlayboot.net.httpio import HttpError, RangeClient, Remote

log = logging.getLogger("overlayboot.net.httpfs")

FILE_NAME = b"image.squashfs"
FILE_INO = pyfuse3.ROOT_INODE + 1
TIMEOUT = 3600.0  # the image never changes while mounted: long attribute timeouts


class ImageOperations(pyfuse3.Operations):
    """A directory with one read-only file, the image, read through the cache."""

    def __init__(self, client: RangeClient, remote: Remote, cache_bytes: int) -> None:
        super().__init__()
        self.client = client
        self.remote = remote
        self.cache = ChunkCache(remote.size, cache_bytes)
        self._fetch_lock = trio.Lock()

    def _attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        if ino == pyfuse3.ROOT_INODE:
            e.st_mode, e.st_nlink, e.st_size = stat.S_IFDIR | 0o555, 2, 0
        else:
            e.st_mode, e.st_nlink, e.st_size = stat.S_IFREG | 0o444, 1, self.remote.size
            e.st_blocks = (self.remote.size + 511) // 512
        e.st_blksize = 4096
        e.attr_timeout = e.entry_timeout = TIMEOUT
        return e

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if inode not in (pyfuse3.ROOT_INODE, FILE_INO):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(inode)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != FILE_NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(FILE_INO)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, FILE_NAME, self._attrs(FILE_INO), 1)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode != FILE_INO:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        data = self.cache.slice(off, size)
        if data is not None:
            return data
        try:
            async with self._fetch_lock:
                for first, count in self.cache.missing(off, size):
                    start, length = self.cache.byte_range(first, count)
                    got = await trio.to_thread.run_sync(self.client.read, start, length)
                    self.cache.put_run(first, got)
        except HttpError as exc:
            log.error("read at %d: %s", off, exc.line())
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("INTERNAL: read at %d", off)
            raise pyfuse3.FUSEError(errno.EIO) from None
        data = self.cache.slice(off, size)
        if data is None:  # the run was larger than the cache: serve it straight
            log.error("read at %d of %d bytes: not in the cache after fetching", off, size)
            raise pyfuse3.FUSEError(errno.EIO)
        return data

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = (self.remote.size + 4095) // 4096
        s.f_files = 2
        s.f_namemax = 255
        return s


def serve(args: argparse.Namespace) -> int:
    """HEAD the image, mount, detach, serve until unmounted."""
    target = target_of(args.url, args.address, args.ca)
    if target.scheme == "https" and not target.ca:
        print(
            f"ERROR: {args.url}: an https image read lazily needs the CA that signed the "
            "server's certificate (overlayboot.lower.ca=; nothing else checks what it reads)",
            file=sys.stderr,
        )
        return 1
    client = RangeClient(target, on_outage=log.warning, patience=args.patience)
    try:
        remote = client.head()
    except HttpError as exc:
        print(f"ERROR: {exc.line()}", file=sys.stderr)
        return 1
    client.patience = None  # from now on, reads wait for the server for as long as it takes
    ops = ImageOperations(client, remote, args.cache)
    opts = set(pyfuse3.default_options) | {"ro", "fsname=overlayboot-http", "subtype=http"}
    if os.geteuid() == 0:
        opts.add("allow_other")
    if args.as_root:
        survive.ignore_termination()
    try:
        pyfuse3.init(ops, str(args.mountpoint), opts)
    except RuntimeError as exc:
        print(f"ERROR: cannot mount {args.mountpoint}: {exc}", file=sys.stderr)
        return 1
    wfd = None if args.foreground else detach()
    if args.as_root:
        survive.serve_as_root()
    log.info(
        "mounted %s: %s, %d bytes, cache %d MiB",
        args.mountpoint,
        args.url,
        remote.size,
        args.cache >> 20,
    )
    if args.pid_file is not None:
        with contextlib.suppress(OSError):
            args.pid_file.parent.mkdir(parents=True, exist_ok=True)
            args.pid_file.write_text(f"{os.getpid()}\n")
    ready(wfd)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
        log.info(
            "unmounted %s: %d requests, %d bytes received",
            args.mountpoint,
            client.requests,
            client.bytes_received,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = helper_parser("python -m overlayboot.net.httpfs", "mountpoint", Path)
    ap.add_argument("--cache", type=int, default=64 << 20)
    ap.add_argument("--ca", default="", help="https: the CA the server's certificate must chain to")
    ap.add_argument("--as-root", action="store_true")
    args = ap.parse_args(argv)
    log_to(args.log)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
