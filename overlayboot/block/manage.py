"""Making and looking after block stores: create, info, merge (base + changes into a new
image) and reset (forget every change). Each works on a store that is not attached."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from overlayboot.block.format import (
    INDEX_OFFSET,
    MAX_CHUNK_SHIFT,
    MIN_CHUNK_SHIFT,
    Super,
    layout,
    pack_super,
)
from overlayboot.block.identity import identify
from overlayboot.block.store import RESERVE, Store, lock, open_base, read_super
from overlayboot.errors import BlockError

DEFAULT_CHUNK = 64 << 10
COPY_BLOCK = 1 << 20


def chunk_shift(size: int) -> int:
    """The shift of a chunk size: a power of two from 4 KiB to 1 MiB."""
    shift = size.bit_length() - 1
    if size <= 0 or size != 1 << shift or not MIN_CHUNK_SHIFT <= shift <= MAX_CHUNK_SHIFT:
        raise BlockError(
            f"chunk size {size} is not a power of two from 4K to 1M", "e.g. --chunk-size 64K"
        )
    return shift


@contextlib.contextmanager
def _new_file(path: Path, force: bool) -> Iterator[int]:
    """A file written under a temporary name, synced and renamed to ``path`` at the end."""
    if path.exists() and not force:
        raise BlockError(f"{path} exists", "give another path, or --force to replace it")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BlockError(f"cannot create {path}: {exc.strerror}") from None
    try:
        yield fd
        os.fsync(fd)
        os.rename(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise BlockError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)


def _write_empty(fd: int, sb: Super) -> None:
    """The super block and an index of zeros (written, not a hole: a commit never needs a
    new block of the disk)."""
    os.pwrite(fd, pack_super(sb), 0)
    os.pwrite(fd, bytes(sb.data_offset - INDEX_OFFSET), INDEX_OFFSET)


def create(
    path: Path, base: Path, *, chunk_size: int = DEFAULT_CHUNK, max_size: int = 0, force: bool
) -> Super:
    """A new, empty store at ``path`` for ``base``."""
    shift = chunk_shift(chunk_size)
    base_fd = open_base(base)
    try:
        ident = identify(base_fd)
    finally:
        os.close(base_fd)
    if ident.size == 0:
        raise BlockError(f"the base {base} is empty")
    pages, data = layout(ident.size, shift)
    if max_size and max_size < data + (RESERVE + 1) * chunk_size:
        raise BlockError(
            f"--max-size {max_size} leaves no room for data (the index takes {data} bytes, "
            f"and {RESERVE} chunk is kept for rewrites)",
            f"give at least {data + (RESERVE + 1) * chunk_size} bytes",
        )
    sb = Super(
        chunk_shift=shift,
        base_size=ident.size,
        base_digest=ident.digest,
        index_pages=pages,
        data_offset=data,
        max_size=max_size,
        created=int(time.time()),
        base_hint=os.path.abspath(base),
    )
    with _new_file(path, force) as fd:
        _write_empty(fd, sb)
    return sb


def reset(path: Path, force: bool = False) -> Super:
    """Forget every change: the store is made empty again (a new file, renamed over it)."""
    fd = _open(path)
    try:
        lock(fd, path, exclusive=True)
        sb = read_super(fd, path)
        fresh = Super(
            sb.chunk_shift,
            sb.base_size,
            sb.base_digest,
            sb.index_pages,
            sb.data_offset,
            sb.max_size,
            int(time.time()),
            sb.base_hint,
        )
        with _new_file(path, force=True) as new:
            _write_empty(new, fresh)
        return fresh
    finally:
        os.close(fd)


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BlockError(f"cannot open the block store {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class Info:
    """What ``block info`` shows."""

    sb: Super
    mapped: int  # chunks that differ from the base (as of the last commit)
    file_size: int
    disk_bytes: int
    stored: int = 0  # of them, chunks whose data is in the store (the others: discarded)

    def lines(self) -> list[str]:
        sb = self.sb
        return [
            f"base: {sb.base_hint or '(not recorded)'}",
            f"base size: {sb.base_size} bytes, digest {sb.base_digest.hex()}",
            f"chunk size: {sb.chunk_size} bytes ({sb.chunks} chunks)",
            f"state: {sb.state.name.lower()}",
            f"changed: {self.mapped} chunks, {self.mapped * sb.chunk_size} bytes "
            f"({100 * self.mapped / max(sb.chunks, 1):.1f} %)",
            f"in the store: {self.stored} chunks' data, {self.mapped - self.stored} discarded "
            "(read as zeros)",
            f"store: {self.file_size} bytes ({self.disk_bytes} on disk), "
            f"max size {sb.max_size or 'none'}",
        ]


def info(path: Path) -> Info:
    """The store's super block and how much has changed (read without a lock: an attached
    store shows its last commit)."""
    from overlayboot.block.index import Index
    from overlayboot.block.store import verifier

    fd = _open(path)
    try:
        sb = read_super(fd, path)
        index = Index.load(fd, sb, verifier(fd, sb))
        st = os.fstat(fd)
        stored = len(index.used_slots())
        return Info(sb, index.mapped, st.st_size, st.st_blocks * 512, stored)
    finally:
        os.close(fd)


def base_of(path: Path, base: Path | None) -> Path:
    """The base given, or the one recorded in the store when it was created."""
    if base is not None:
        return base
    fd = _open(path)
    try:
        hint = read_super(fd, path).base_hint
    finally:
        os.close(fd)
    if not hint:
        raise BlockError(f"the block store {path} records no base", "give it: --base FILE")
    return Path(hint)


def merge(path: Path, base: Path, output: Path, force: bool = False) -> int:
    """Write the view (base + changes) to a new image ``output``; runs of zeros are left
    as holes. Returns the bytes written."""
    store = Store.open(path, base, writable=False)
    try:
        with _new_file(output, force) as out:
            for offset in range(0, store.size, COPY_BLOCK):
                data = store.read(offset, COPY_BLOCK)
                if data.count(0) != len(data):
                    os.pwrite(out, data, offset)
            os.ftruncate(out, store.size)
        return store.size
    finally:
        store.abandon()
