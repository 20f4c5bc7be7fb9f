"""The block store against a model (no root, no FUSE): random writes across chunk edges,
flushes, reopen, a crash (close without commit), a torn commit, a full store, a wrong
base, merge, reset, info, store growth, and discards (zeros, slots freed)."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from overlayboot.block import manage
from overlayboot.block.format import PAGE, SECTOR, State, page_offset, unpack_super
from overlayboot.block.store import Store
from overlayboot.errors import BlockError

pytestmark = pytest.mark.block

KiB = 1 << 10
CHUNK = 4 * KiB
BASE_SIZE = 1 << 20 | 3 * KiB + 17  # an odd tail: the last chunk is short


@pytest.fixture
def base(tmp_path: Path) -> tuple[Path, bytes]:
    data = random.Random(7).randbytes(BASE_SIZE)
    path = tmp_path / "base.img"
    path.write_bytes(data)
    path.chmod(0o444)
    return path, data


def _store(tmp_path: Path, base: Path, **kw: int) -> Path:
    path = tmp_path / "s.store"
    manage.create(path, base, chunk_size=kw.pop("chunk", CHUNK), force=False, **kw)
    return path


def _random_write(rng: random.Random, model: bytearray, st: Store) -> None:
    if rng.random() < 0.3:  # around a chunk edge
        edge = rng.randrange(1, len(model) // CHUNK) * CHUNK
        off = max(0, edge - rng.randrange(1, 3 * CHUNK))
    else:
        off = rng.randrange(len(model))
    n = min(rng.choice([1, 511, 4096, 5000, 3 * CHUNK + 7, 70_000]), len(model) - off)
    data = rng.randbytes(n)
    assert st.write(off, data) == n
    model[off : off + n] = data


def test_random_writes_match_a_model_across_flushes_and_reopen(
    tmp_path: Path, base: tuple[Path, bytes]
) -> None:
    path = _store(tmp_path, base[0])
    model = bytearray(base[1])
    rng = random.Random(42)
    st = Store.open(path, base[0], writable=True)
    for step in range(400):
        _random_write(rng, model, st)
        if rng.random() < 0.15:
            st.flush()
        if step % 50 == 0:
            off = rng.randrange(len(model))
            assert st.read(off, 100_000) == model[off : off + 100_000]
    assert st.read(0, len(model) + 999) == model
    st.close()
    st = Store.open(path, base[0], writable=True)
    assert not st.was_dirty
    assert st.read(0, len(model)) == model
    # the next round of writes reuses the slots the old versions left
    for _ in range(100):
        _random_write(rng, model, st)
    st.close()
    st = Store.open(path, base[0], writable=False)
    assert st.read(0, len(model)) == model
    assert st.index.mapped <= st.sb.chunks
    size = os.path.getsize(path)
    assert size <= st.sb.slot_offset(st.index.mapped * 2)  # holes only from reuse order
    st.abandon()


def test_a_crash_loses_only_what_was_not_flushed(tmp_path: Path, base: tuple[Path, bytes]) -> None:
    path = _store(tmp_path, base[0])
    model = bytearray(base[1])
    rng = random.Random(1)
    st = Store.open(path, base[0], writable=True)
    for _ in range(60):
        _random_write(rng, model, st)
    st.flush()
    flushed = bytes(model)
    for _ in range(60):  # rewrites of flushed chunks and new ones, never flushed
        _random_write(rng, model, st)
    st.abandon()  # what kill -9 leaves: no commit, state dirty
    st = Store.open(path, base[0], writable=True)
    assert st.was_dirty
    assert st.read(0, len(model)) == flushed
    # the slots the lost writes took are free again: the file ends at the last one named
    assert os.path.getsize(path) == st.sb.slot_offset(st.slots.end)
    st.close()
    assert unpack_super(path.read_bytes()[: 2 * SECTOR]).state == State.CLEAN


def test_a_torn_commit_leaves_each_page_old_or_new(
    tmp_path: Path, base: tuple[Path, bytes]
) -> None:
    path = _store(tmp_path, base[0], chunk=4 * KiB)
    st = Store.open(path, base[0], writable=True)
    first = b"\x01" * CHUNK
    st.write(0, first)
    st.flush()
    st.write(0, b"\x02" * CHUNK)
    st.flush()
    current = st.index.current[0]
    st.close()
    # tear the copy of page 0 the last commit wrote: its previous copy counts again
    with open(path, "r+b") as f:
        f.seek(page_offset(0, current) + 100)
        f.write(b"torn")
    st = Store.open(path, base[0], writable=False)
    assert st.read(0, CHUNK) == first
    assert st.read(CHUNK, 10) == base[1][CHUNK : CHUNK + 10]
    st.abandon()
    # a torn super block copy A: copy B is read
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"xx")
    assert manage.info(path).sb.chunk_size == CHUNK


def test_a_full_store_fails_new_chunks_but_rewrites_and_stays_valid(
    tmp_path: Path, base: tuple[Path, bytes]
) -> None:
    """Room for 4 slots: 3 new chunks fit (one slot is kept for rewrites), a 4th gets
    ENOSPC; rewrites of the 3 after commits, several in one request and many between two
    commits (the store commits itself to free the slots they left) all work, and the
    store never grows past its maximum."""
    probe = _store(tmp_path, base[0])
    data_offset = manage.info(probe).sb.data_offset
    probe.unlink()
    with pytest.raises(BlockError, match="no room for data"):
        _store(tmp_path, base[0], max_size=data_offset + CHUNK)
    max_size = data_offset + 4 * CHUNK
    path = _store(tmp_path, base[0], max_size=max_size)
    model = bytearray(base[1])
    st = Store.open(path, base[0], writable=True)
    st.write(0, b"a" * 3 * CHUNK)
    model[: 3 * CHUNK] = b"a" * 3 * CHUNK
    for offset in (10 * CHUNK, 3 * CHUNK + 5):  # a new chunk, alone or after held ones
        with pytest.raises(OSError) as exc:
            st.write(offset, b"b" * 10)
        assert exc.value.errno == errno.ENOSPC
    st.flush()
    rng = random.Random(3)
    for step in range(60):
        off = rng.randrange(3 * CHUNK)
        data = rng.randbytes(rng.randrange(1, 3 * CHUNK - off + 1))
        assert st.write(off, data) == len(data)
        model[off : off + len(data)] = data
        if step % 7 == 0:
            st.flush()
        assert os.stat(path).st_size <= max_size
    assert st.read(0, len(model)) == model
    st.close()
    st = Store.open(path, base[0], writable=False)
    assert st.read(0, len(model)) == model
    st.abandon()
    assert os.stat(path).st_size <= max_size


def test_writes_past_the_end_fail(tmp_path: Path, base: tuple[Path, bytes]) -> None:
    path = _store(tmp_path, base[0])
    st = Store.open(path, base[0], writable=True)
    with pytest.raises(OSError) as exc:
        st.write(BASE_SIZE - 2, b"xyz")
    assert exc.value.errno == errno.ENOSPC
    st.write(BASE_SIZE - 2, b"yz")  # the short last chunk
    assert st.read(BASE_SIZE - 4, 100) == base[1][-4:-2] + b"yz"
    st.close()


def test_another_base_is_refused(tmp_path: Path, base: tuple[Path, bytes]) -> None:
    path = _store(tmp_path, base[0])
    other = tmp_path / "other.img"
    changed = bytearray(base[1])
    changed[5] ^= 1
    other.write_bytes(changed)
    with pytest.raises(BlockError, match="was made for another base"):
        Store.open(path, other, writable=True)
    other.write_bytes(base[1] + b"x")
    with pytest.raises(BlockError, match="was made for another base"):
        Store.open(path, other, writable=False)
    with pytest.raises(BlockError, match="not a usable block store"):
        Store.open(base[0], base[0], writable=False)


def test_a_store_is_attached_once(tmp_path: Path, base: tuple[Path, bytes]) -> None:
    path = _store(tmp_path, base[0])
    st = Store.open(path, base[0], writable=True)
    with pytest.raises(BlockError, match="in use"):
        Store.open(path, base[0], writable=True)
    with pytest.raises(BlockError, match="in use"):
        manage.merge(path, base[0], tmp_path / "out.img")
    st.close()


def test_merge_reset_info(tmp_path: Path, base: tuple[Path, bytes]) -> None:
    path = _store(tmp_path, base[0])
    model = bytearray(base[1])
    rng = random.Random(3)
    st = Store.open(path, base[0], writable=True)
    for _ in range(30):
        _random_write(rng, model, st)
    st.write(2 * CHUNK, bytes(3 * CHUNK))  # zeros: a hole in the merged image
    model[2 * CHUNK : 5 * CHUNK] = bytes(3 * CHUNK)
    st.close()
    info = manage.info(path)
    assert info.sb.base_hint == str(base[0])
    assert 0 < info.mapped <= info.sb.chunks
    assert any(line.startswith("changed: ") for line in info.lines())
    out = tmp_path / "merged.img"
    assert manage.merge(path, base[0], out) == len(model)
    assert out.read_bytes() == model
    with pytest.raises(BlockError, match="exists"):
        manage.merge(path, base[0], out)
    manage.reset(path)
    assert manage.info(path).mapped == 0
    assert os.path.getsize(path) == info.sb.data_offset
    st = Store.open(path, base[0], writable=False)
    assert st.read(0, BASE_SIZE) == base[1]
    st.abandon()


def test_bad_chunk_sizes(tmp_path: Path, base: tuple[Path, bytes]) -> None:
    for bad in (0, 1000, 2 * KiB, 2 << 20):
        with pytest.raises(BlockError, match="chunk size"):
            manage.create(tmp_path / "x", base[0], chunk_size=bad, force=False)
    assert PAGE == 4096


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overlayboot", "block", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_create_info_reset_and_one_line_errors(
    tmp_path: Path, base: tuple[Path, bytes]
) -> None:
    store = tmp_path / "cli.store"
    r = _cli("create", "--base", str(base[0]), "--chunk-size", "16K", str(store))
    assert r.returncode == 0, r.stderr
    r = _cli("info", str(store))
    assert "chunk size: 16384 bytes" in r.stdout and "state: clean" in r.stdout
    assert _cli("reset", str(store)).returncode == 0
    other = tmp_path / "other.img"
    other.write_bytes(b"x" * 8192)
    for args, code, start in [
        (("attach", "--base", str(other), str(store)), 7, "the block store"),
        (("create", "--base", str(base[0]), str(store)), 7, f"{store} exists"),
        (("create", "--base", str(base[0]), "--chunk-size", "3K", str(store) + "2"), 7, "chunk"),
        (("create", "--base", str(base[0]), "--chunk-size", "lots", str(store) + "2"), 2, ""),
        (("info", str(base[0])), 7, f"{base[0]} is not a usable block store"),
        (("merge", "-o", str(tmp_path / "m"), str(tmp_path / "nope")), 7, "cannot open"),
        (("detach", str(store)), 7, f"{store} is not an attached"),
    ]:
        r = _cli(*args)
        assert r.returncode == code, (args, r.stderr)
        assert r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"overlayboot: error: {start}"), r.stderr


def test_a_commit_whose_data_did_not_reach_the_disk_does_not_count(tmp_path: Path) -> None:
    base = tmp_path / "big.img"
    base.write_bytes(random.Random(9).randbytes(4 << 20))  # 1024 chunks: 3 index pages
    path = _store(tmp_path, base)
    far = 600  # a chunk of the second index page
    st = Store.open(path, base, writable=True)
    st.write(0, b"\x01" * CHUNK)
    st.write(far * CHUNK, b"\x03" * CHUNK)
    st.flush()
    st.write(0, b"\x02" * CHUNK)
    st.write(far * CHUNK, b"\x04" * CHUNK)
    st.flush()  # its super block says that the commit before it is durable, not itself
    at = st.sb.slot_offset(st.index.slot(0) or 0)
    last_copy = st.index.current[0]  # the copy of page 0 the last commit wrote
    st.abandon()  # the crash: then chunk 0's new data is found not to have reached the disk
    with open(path, "r+b") as f:
        f.seek(at + 100)
        f.write(b"\x09" * 10)
    st = Store.open(path, base, writable=False)
    assert st.read(0, CHUNK) == b"\x01" * CHUNK  # its page: the commit before
    assert st.read(far * CHUNK, CHUNK) == b"\x04" * CHUNK  # the other page's data is whole
    st.abandon()
    assert manage.info(path).mapped == 2
    st = Store.open(path, base, writable=True)  # drops the copy that does not count
    assert st.index.rejected == [(0, last_copy)]
    st.write(0, b"\x05" * 10)
    st.close()
    st = Store.open(path, base, writable=False)
    assert st.read(0, CHUNK) == b"\x05" * 10 + b"\x01" * (CHUNK - 10)
    assert st.read(far * CHUNK, CHUNK) == b"\x04" * CHUNK
    assert st.sb.durable == st.index.seq and not st.index.rejected
    st.abandon()


def test_discards_read_zeros_free_their_slots_and_survive_reopen_and_crash(
    tmp_path: Path, base: tuple[Path, bytes]
) -> None:
    path = _store(tmp_path, base[0])
    model = bytearray(base[1])
    rng = random.Random(5)
    st = Store.open(path, base[0], writable=True)
    for step in range(300):
        if rng.random() < 0.3:  # a discard: whole chunks, parts of chunks, across edges
            off = rng.randrange(len(model) - 1)
            n = min(rng.choice([1, 600, CHUNK, 3 * CHUNK + 5, 20 * CHUNK]), len(model) - off)
            st.discard(off, n)
            model[off : off + n] = bytes(n)
        else:
            _random_write(rng, model, st)
        if rng.random() < 0.2:
            st.flush()
        if step % 40 == 0:
            assert st.read(0, len(model)) == model
    st.flush()
    used = st.slots.in_use
    zeros = sum(st.index.is_zero(c) for c in range(st.sb.chunks))
    assert zeros > 0 and used + zeros <= st.index.mapped
    st.close()
    info = manage.info(path)  # what block info shows: chunks with data, discarded ones
    assert (info.stored, info.mapped - info.stored) == (used, zeros)
    assert f"in the store: {used} chunks' data, {zeros} discarded (read as zeros)" in info.lines()
    st = Store.open(path, base[0], writable=True)
    assert st.read(0, len(model)) == model  # after reopen: the zero entries are on disk
    flushed = bytes(model)
    st.discard(0, 8 * CHUNK)  # not flushed: a crash forgets it
    st.abandon()
    st = Store.open(path, base[0], writable=True)
    assert st.read(0, len(model)) == flushed
    # a discarded chunk's slot is reused: writing it all again does not grow the store
    size = os.path.getsize(path)
    st.discard(0, 16 * CHUNK)
    st.flush()
    st.write(0, rng.randbytes(16 * CHUNK))
    st.close()
    assert os.path.getsize(path) <= size
    st = Store.open(path, base[0], writable=True)
    with pytest.raises(OSError) as exc:
        st.discard(len(model) - 10, 20)
    st.close()
    assert exc.value.errno == errno.EINVAL
