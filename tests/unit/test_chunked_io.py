"""Chunk I/O of a partial file on plain files (no FUSE): random operations against a model.

A lower file, an upper file made partial by ``chunked.begin``, then reads, writes,
truncates, map records, reloads and a final seal, each checked against a
``bytearray`` holding what the file must contain.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from overlayboot.fs import chunked
from overlayboot.fs.chunkmap import LowerIdentity
from overlayboot.fs.whiteout import XattrNames

NAME = XattrNames("user").chunks
SHIFT = 12  # 4 KiB chunks


def _lower(path: Path, size: int, seed: int, sparse: bool) -> bytes:
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    if sparse and size > 20_000:
        data[5000:20_000] = bytes(15_000)
    with open(path, "wb") as f:
        f.write(data)
    if sparse and size > 20_000:
        with open(path, "r+b") as f:  # a real hole in the middle
            os.posix_fallocate(f.fileno(), 0, 1)
    return bytes(data)


def _make_partial(tmp: Path, size: int, seed: int) -> tuple[Path, Path, bytes]:
    low, up = tmp / "lower", tmp / "upper"
    data = _lower(low, size, seed, sparse=seed % 2 == 0)
    st = os.stat(low)
    ident = LowerIdentity(0, b"lower", os.fsencode(tmp), st.st_size, st.st_ino, st.st_mtime_ns, b"")
    fd = os.open(up, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        assert chunked.begin(fd, os.fsencode(low), st, ident, SHIFT, NAME)
    finally:
        os.close(fd)
    return low, up, data


def _open(low: Path, up: Path) -> chunked.ChunkedFile:
    fd = os.open(up, os.O_RDWR)
    cmap = chunked.load_map(fd, NAME)
    if cmap is None:  # whole now: a pass-through
        return chunked.ChunkedFile(fd, -1, None, NAME)
    lower_fd = chunked.open_lower(os.fsencode(low), cmap.lower)
    p = chunked.ChunkedFile(fd, lower_fd, cmap, NAME)
    size = os.fstat(fd).st_size
    if size < cmap.valid:
        p.truncated(size)
    return p


def _check(p: chunked.ChunkedFile, model: bytearray, rng: random.Random) -> None:
    assert os.fstat(p.fd).st_size == len(model)
    off = rng.randrange(0, len(model) + 10_000)
    n = rng.choice([1, 100, 4096, 5000, 70_000, 1 << 20])
    assert p.read(off, n) == bytes(model[off : off + n])


@pytest.mark.parametrize("seed", range(16))
def test_random_operations_match_a_model(xattr_tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([1, 4095, 4096, 50_000, 200_001, 1_500_000, 3_000_000])
    low, up, data = _make_partial(xattr_tmp_path, size, seed)
    model = bytearray(data)
    p = _open(low, up)
    try:
        for _step in range(150):
            op = rng.random()
            if op < 0.5:
                off = rng.randrange(0, len(model) + 9000)
                buf = rng.randbytes(rng.choice([1, 10, 4096, 4097, 9000, 30_000]))
                off = off // 4096 * 4096 if rng.random() < 0.3 else off
                assert p.write(p.fd, off, buf) == len(buf)
                if off > len(model):
                    model.extend(bytes(off - len(model)))
                model[off : off + len(buf)] = buf
            elif op < 0.56:
                new = rng.choice([len(model) * 3 // 4, len(model) + 5000, rng.randrange(3 << 20)])
                new = 0 if rng.random() < 0.05 else new
                os.ftruncate(p.fd, new)
                p.truncated(new)
                del model[new:]
                model.extend(bytes(new - len(model)))
            elif op < 0.7:
                p.persist()
            elif op < 0.8:  # close and load again from what the upper records
                p.persist()
                p.close()
                p = _open(low, up)
            _check(p, model, rng)
        p.persist()
        p.close()
        p = _open(low, up)
        assert p.read(0, len(model) + 1) == bytes(model)
        p.seal()
    finally:
        p.close()
    assert up.read_bytes() == bytes(model)
    assert chunked.load_map(os.fsencode(up), NAME) is None
    assert low.read_bytes() == data


def test_first_write_to_a_chunk_copies_only_that_chunk(xattr_tmp_path: Path) -> None:
    low, up, data = _make_partial(xattr_tmp_path, 1 << 20, 1)
    p = _open(low, up)
    try:
        p.write(p.fd, 100_000, b"x" * 10)
        p.persist()
        assert p.cmap is not None and p.cmap.extents == ((24, 25),)
        assert os.stat(up).st_blocks * 512 <= 2 * 4096
        assert p.read(0, 1 << 20) == data[:100_000] + b"x" * 10 + data[100_010:]
    finally:
        p.close()


def test_unrecorded_chunks_read_old_after_a_crash(xattr_tmp_path: Path) -> None:
    """Data written but not yet in the recorded map: wholly old after a reload."""
    low, up, data = _make_partial(xattr_tmp_path, 64 * 1024, 3)
    p = _open(low, up)
    p.write(p.fd, 10, b"recorded")
    p.persist()
    p.write(p.fd, 30_000, b"lost in the crash")  # a new chunk, not recorded
    os.close(p.fd)  # the daemon dies: no persist
    os.close(p.lower_fd)
    p = _open(low, up)
    try:
        got = p.read(0, 1 << 20)
    finally:
        p.close()
    want = bytearray(data)
    want[10:18] = b"recorded"
    assert got == bytes(want)


def test_changed_lower_is_refused(xattr_tmp_path: Path) -> None:
    low, up, _data = _make_partial(xattr_tmp_path, 50_000, 5)
    cmap = chunked.load_map(os.fsencode(up), NAME)
    assert cmap is not None
    st = os.stat(low)
    with open(low, "r+b") as f:  # same size, same mtime, other bytes at the start
        f.write(b"\xff" * 16)
    os.utime(low, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(chunked.StaleLower, match="digest"):
        chunked.open_lower(os.fsencode(low), cmap.lower)
    os.truncate(low, 10)
    with pytest.raises(chunked.StaleLower, match="size"):
        chunked.open_lower(os.fsencode(low), cmap.lower)
    os.unlink(low)
    with pytest.raises(chunked.StaleLower, match="cannot open"):
        chunked.open_lower(os.fsencode(low), cmap.lower)


def test_a_fragmented_map_is_compacted(xattr_tmp_path: Path) -> None:
    low, up, data = _make_partial(xattr_tmp_path, 8 << 20, 7)  # 2048 chunks of 4 KiB
    p = _open(low, up)
    model = bytearray(data)
    try:
        for c in range(0, 2048, 2):  # every other chunk: 1024 extents before compaction
            p.write(p.fd, c * 4096 + 7, b"y")
            model[c * 4096 + 7] = ord("y")
        p.persist()
        raw = os.getxattr(up, NAME)
        assert len(raw) <= chunked.MAX_MAP_BYTES
        assert p.read(0, len(model)) == bytes(model)
    finally:
        p.close()
    p = _open(low, up)
    try:
        assert p.read(0, len(model)) == bytes(model)
    finally:
        p.close()
