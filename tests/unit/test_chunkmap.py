"""The chunk map of a partial copy-up: its encoding, its extent arithmetic, the copy-up policy."""

from __future__ import annotations

import itertools
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overlayboot.errors import UsageError
from overlayboot.fs.chunkmap import (
    END,
    HEADER_SIZE,
    SAMPLE,
    ChunkMap,
    LowerIdentity,
    MapError,
    decode,
    sample_offsets,
)
from overlayboot.fs.chunkpolicy import CopyUpMode, CopyUpPolicy, make_policy, parse_size
from overlayboot.fs.config import parse_mount_options

IDENT = LowerIdentity(1, b"usr/lib/big.img", b"/run/lower", 10_000_000, 4242, -5, b"d" * 16)


def cmap(*extents: tuple[int, int], valid: int = 10_000_000, shift: int = 16) -> ChunkMap:
    return ChunkMap(shift, IDENT, valid, tuple(extents))


def test_header_layout_is_the_documented_one() -> None:
    raw = cmap((0, 1), (3, 5)).encode()
    assert HEADER_SIZE == 60
    magic, version, shift, layer = struct.unpack_from("<4sBBH", raw)
    assert (magic, version, shift, layer) == (b"OBCM", 1, 16, 1)
    assert struct.unpack_from("<QQQq", raw, 8) == (10_000_000, 10_000_000, 4242, -5)
    assert raw[40:56] == b"d" * 16
    assert struct.unpack_from("<HH", raw, 56) == (15, 10)
    assert raw[60:85] == b"usr/lib/big.img/run/lower"
    # extents as (gap, length) varints: chunk 0 (gap 0, 1), chunks 3-4 (gap 2, 2)
    assert raw[85:] == bytes([0, 1, 2, 2])


def test_empty_map_roundtrips() -> None:
    m = cmap()
    assert decode(m.encode()) == m
    assert m.run_at(0) == (False, END)


extents_st = st.lists(st.tuples(st.integers(0, 1 << 40), st.integers(1, 1 << 20)), max_size=40)


@settings(max_examples=300)
@given(pairs=extents_st, valid=st.integers(0, 10_000_000))
def test_encode_decode_roundtrip(pairs: list[tuple[int, int]], valid: int) -> None:
    m = cmap(valid=valid)
    for start, length in pairs:
        m = m.with_range(start, start + length)
    assert decode(m.encode()) == m


@settings(max_examples=300)
@given(chunks=st.lists(st.integers(0, 200), max_size=80), probe=st.integers(0, 210))
def test_extents_are_canonical_and_match_a_set(chunks: list[int], probe: int) -> None:
    m = cmap().with_chunks(chunks)
    ext = m.extents
    assert all(s < e for s, e in ext)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ext))  # disjoint, not adjacent
    assert {c for s, e in ext for c in range(s, e)} == set(chunks)
    mapped, run_end = m.run_at(probe)
    assert mapped == (probe in chunks)
    # every chunk of the run has the same state; the first after it does not
    limit = min(run_end, 300)
    assert all(m.is_mapped(c) == mapped for c in range(probe, limit))
    if run_end != END:
        assert m.is_mapped(run_end) != mapped
    assert m.mapped_count() == len(set(chunks))


def test_with_range_merges_overlapping_and_touching_extents() -> None:
    m = cmap((0, 2), (5, 7), (10, 12))
    assert m.with_range(2, 5).extents == ((0, 7), (10, 12))
    assert m.with_range(6, 11).extents == ((0, 2), (5, 12))
    assert m.with_range(3, 4).extents == ((0, 2), (3, 4), (5, 7), (10, 12))
    assert m.with_range(20, 21).extents == ((0, 2), (5, 7), (10, 12), (20, 21))


def test_truncate_forgets_lower_bytes_and_chunks_beyond() -> None:
    m = cmap((0, 2), (5, 7), shift=12, valid=40_000)
    t = m.truncated(5 * 4096 + 1)  # six chunks: 0-5
    assert t.valid == 5 * 4096 + 1
    assert t.extents == ((0, 2), (5, 6))
    assert t.truncated(1 << 30) == t  # growing changes nothing
    assert m.truncated(0).extents == ()
    assert m.truncated(0).complete(0)


def test_gaps_and_completeness() -> None:
    m = cmap((1, 3), shift=12)
    assert list(m.gaps(5 * 4096)) == [(0, 1), (3, 5)]
    assert list(m.gaps(3 * 4096)) == [(0, 1)]
    assert not m.complete(3 * 4096)
    assert m.with_range(0, 1).complete(3 * 4096)
    assert m.with_range(0, 1).complete(3 * 4096 - 100)


def test_gaps_to_fill_picks_the_smallest() -> None:
    m = cmap((0, 1), (2, 3), (10, 11), (13, 14))
    assert m.gaps_to_fill(3) == [(1, 2)]
    assert m.gaps_to_fill(2) == [(1, 2), (11, 13)]
    assert m.gaps_to_fill(10) == []


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"OBCM", "shorter than the header"),
        (b"XXXX" + cmap().encode()[4:], "bad magic"),
        (cmap().encode()[:4] + b"\x02" + cmap().encode()[5:], "unknown version"),
        (cmap().encode()[:5] + b"\x05" + cmap().encode()[6:], "chunk shift"),
        (cmap().encode()[:70], "truncated lower path"),
        (cmap((0, 1)).encode() + b"\x00\x01", "canonical"),  # adjacent extents
        (cmap().encode() + b"\x00\x00", "canonical"),  # zero length
        (cmap().encode() + b"\x80", "varint"),
    ],
)
def test_decode_rejects_bad_maps(raw: bytes, why: str) -> None:
    with pytest.raises(MapError, match=why):
        decode(raw)


def test_valid_beyond_the_lower_size_is_refused() -> None:
    raw = bytearray(cmap().encode())
    struct.pack_into("<Q", raw, 8, IDENT.size + 1)
    with pytest.raises(MapError, match="valid"):
        decode(bytes(raw))


@given(size=st.integers(1, 1 << 40))
def test_sample_offsets_cover_first_and_last_bytes(size: int) -> None:
    offs = sample_offsets(size)
    assert offs[0] == 0
    assert offs == sorted(offs)
    assert offs[-1] + min(SAMPLE, size) == size
    assert 1 <= len(offs) <= 8


def test_identity_differences() -> None:
    assert IDENT.differs(IDENT.size, IDENT.ino, IDENT.mtime_ns, IDENT.digest) is None
    assert IDENT.differs(IDENT.size, IDENT.ino, IDENT.mtime_ns, None) is None
    assert "size" in (IDENT.differs(1, IDENT.ino, IDENT.mtime_ns, None) or "")
    assert "inode" in (IDENT.differs(IDENT.size, 1, IDENT.mtime_ns, None) or "")
    assert "mtime" in (IDENT.differs(IDENT.size, IDENT.ino, 0, None) or "")
    assert "content" in (IDENT.differs(IDENT.size, IDENT.ino, IDENT.mtime_ns, b"x" * 16) or "")


# -- the policy ---------------------------------------------------------------------------


def test_sizes() -> None:
    assert [parse_size(s, "x") for s in ("4096", "64K", "64KiB", "1M", "2g", "0")] == [
        4096,
        64 << 10,
        64 << 10,
        1 << 20,
        2 << 30,
        0,
    ]
    with pytest.raises(UsageError):
        parse_size("lots", "x")


def test_policy_defaults_and_validation() -> None:
    p = make_policy()
    assert p == CopyUpPolicy(CopyUpMode.CHUNKED, 1 << 20, None)
    assert p.chunk_for(4096) == 64 << 10
    assert p.chunk_for(256 << 10) == 256 << 10  # the upper's block size when larger
    assert make_policy("whole").mode is CopyUpMode.WHOLE
    assert make_policy(None, "0", "4K").chunk_for(65536) == 4096
    for bad in (("fast", None, None), (None, None, "3000"), (None, None, "1K"), (None, "x", None)):
        with pytest.raises(UsageError):
            make_policy(*bad)


def test_which_files_are_chunked(tmp_path: os.PathLike[str]) -> None:
    big = os.path.join(tmp_path, "big")
    with open(big, "wb") as f:
        f.truncate(2 << 20)
    p = make_policy()
    assert p.wants_chunks(os.stat(big))
    assert not make_policy("whole").wants_chunks(os.stat(big))
    os.link(big, big + ".2")
    assert not p.wants_chunks(os.stat(big))  # hard links are copied whole
    os.unlink(big + ".2")
    os.truncate(big, 100)
    assert not p.wants_chunks(os.stat(big))
    assert make_policy(None, "0").wants_chunks(os.stat(big))
    os.truncate(big, 0)
    assert not make_policy(None, "0").wants_chunks(os.stat(big))


def test_mount_options_of_the_policy() -> None:
    ours, rest = parse_mount_options(
        ["lowerdir=/l,upperdir=/u,workdir=/w,copy_up=whole,chunk_size=8K,seal_on_umount,ro"]
    )
    assert ours["copy_up"] == "whole" and ours["chunk_size"] == "8K"
    assert ours["seal_on_umount"] == ""
    assert rest == frozenset({"ro"})
