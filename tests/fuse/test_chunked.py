"""Partial (chunked) copy-up on real mounts: only the written chunks come up.

- an fsx-style run of random reads, writes, truncates and mmap writes on a lower
  file, checked against a model, across reopens and remounts, then sealed and
  mounted by kernel overlayfs;
- what the upper grows by, and what stat shows meanwhile;
- renames and hard links of partial files; lower hard links copied whole;
- a changed lower file: EIO and a log line, ``upper check`` says so;
- ``upper seal`` and ``--seal-on-umount`` leave kernel overlayfs format;
- kill -9 in the middle of writes: every chunk is wholly old or wholly new.
"""

from __future__ import annotations

import errno
import mmap
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fuse.conftest import Ovl, OvlFactory
from tests.fuse.helpers import CHUNKS_XATTR, blocks_bytes, errno_of, overlayboot_cli, upper_bytes
from tests.mounts import have_fuse, have_kernel_overlay, overlay_mount
from tests.waiting import wait_for

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not have_fuse(), reason="needs root and /dev/fuse"),
]

MiB = 1 << 20
KiB = 1 << 10
SMALL_CHUNKS = ("--chunk-size=4K", "--chunk-threshold=0")


def _lower_file(name: str, size: int, seed: int = 1) -> tuple[bytes, object]:
    data = random.Random(seed).randbytes(size)

    def prepare(o: Ovl) -> None:
        (o.lower1 / name).write_bytes(data)

    return data, prepare


def _mount(ovl_factory: OvlFactory, prepare: object, *args: str) -> Ovl:
    o = ovl_factory(standard=False, prepare=prepare, mount=False)
    o.extra_args = args
    o.mount()
    return o


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _has_map(path: str) -> bool:
    try:
        os.getxattr(path, CHUNKS_XATTR)
    except OSError:
        return False
    return True


# -- fsx ----------------------------------------------------------------------------------


class Fsx:
    """Random operations on one file through the mount, mirrored on a bytearray."""

    def __init__(self, o: Ovl, rel: str, data: bytes, seed: int) -> None:
        self.o, self.path = o, o.m(rel)
        self.model = bytearray(data)
        self.rng = random.Random(seed)
        self.fd = os.open(self.path, os.O_RDWR)
        self.log: list[str] = []

    def step(self) -> None:
        op = self.rng.choices(
            ["write", "read", "truncate", "mmap_write", "mmap_read", "reopen", "fsync"],
            weights=[30, 25, 6, 10, 8, 5, 3],
        )[0]
        getattr(self, op)()

    def _span(self, extra: int = 20_000) -> tuple[int, int]:
        off = self.rng.randrange(0, len(self.model) + extra)
        if self.rng.random() < 0.3:
            off -= off % 4096
        return off, self.rng.choice([1, 17, 4095, 4096, 4097, 9000, 65_536, 70_000])

    def write(self) -> None:
        off, n = self._span()
        buf = self.rng.randbytes(n)
        self.log.append(f"write {off} {n}")
        assert os.pwrite(self.fd, buf, off) == n
        if off > len(self.model):
            self.model.extend(bytes(off - len(self.model)))
        self.model[off : off + n] = buf

    def read(self) -> None:
        off, n = self._span(5000)
        got = os.pread(self.fd, n, off)
        assert got == bytes(self.model[off : off + n]), (self.log[-5:], off, n)

    def truncate(self) -> None:
        size = self.rng.choice(
            [len(self.model) * 3 // 4, len(self.model) + 10_000, self.rng.randrange(400_000)]
        )
        self.log.append(f"truncate {size}")
        if self.rng.random() < 0.5:
            os.ftruncate(self.fd, size)
        else:
            os.truncate(self.path, size)
        del self.model[size:]
        self.model.extend(bytes(size - len(self.model)))

    def mmap_write(self) -> None:
        if not self.model:
            return
        off = self.rng.randrange(len(self.model))
        n = min(self.rng.choice([1, 100, 5000]), len(self.model) - off)
        buf = self.rng.randbytes(n)
        self.log.append(f"mmap_write {off} {n}")
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        with mmap.mmap(self.fd, len(self.model), mmap.MAP_SHARED, prot) as mm:
            mm[off : off + n] = buf
            mm.flush()
        self.model[off : off + n] = buf

    def mmap_read(self) -> None:
        if not self.model:
            return
        with mmap.mmap(self.fd, len(self.model), mmap.MAP_SHARED, mmap.PROT_READ) as mm:
            off = self.rng.randrange(len(self.model))
            assert mm[off : off + 9000] == bytes(self.model[off : off + 9000]), self.log[-5:]

    def reopen(self) -> None:
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def remount(self) -> None:
        os.close(self.fd)
        self.o.remount()
        self.fd = os.open(self.path, os.O_RDWR)

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.parametrize(
    ("size", "args", "seed"),
    [
        (300_000, SMALL_CHUNKS, 1),  # 4 KiB chunks: many chunk edges
        (300_000, SMALL_CHUNKS, 2),
        (3 * MiB + 5, (), 3),  # the defaults: 64 KiB chunks from 1 MiB
    ],
)
def test_fsx_random_io_matches_a_model(
    ovl_factory: OvlFactory, size: int, args: tuple[str, ...], seed: int
) -> None:
    data, prepare = _lower_file("f", size, seed)
    o = _mount(ovl_factory, prepare, *args)
    fsx = Fsx(o, "f", data, seed)
    partial_seen = False
    try:
        for i in range(400):
            fsx.step()
            if i % 150 == 149:
                fsx.remount()
            partial_seen |= _has_map(o.u("f"))
    finally:
        fsx.close()
    assert partial_seen
    assert _read(o.m("f")) == bytes(fsx.model)
    o.remount()
    assert _read(o.m("f")) == bytes(fsx.model)
    assert upper_bytes(o.u("f"), o.lowers) == bytes(fsx.model)
    o.umount()
    if _has_map(o.u("f")):
        r = overlayboot_cli("upper", "seal", "--lower", ":".join(map(str, o.lowers)), str(o.upper))
        assert r.returncode == 0, r.stderr
    assert not _has_map(o.u("f"))
    assert _read(o.u("f")) == bytes(fsx.model)
    if have_kernel_overlay():
        with overlay_mount("kernel", o.lowers, o.upper, o.base / "kwork", o.base / "kmnt") as k:
            assert _read(str(k / "f")) == bytes(fsx.model)


# -- what the upper holds ------------------------------------------------------------------


def test_small_changes_to_a_large_file_copy_up_one_chunk(ovl_factory: OvlFactory) -> None:
    data, prepare = _lower_file("big", 32 * MiB)
    o = _mount(ovl_factory, prepare)
    before = os.lstat(o.m("big"))
    with open(o.m("big"), "ab") as f:
        f.write(b"!")
    assert blocks_bytes(o.u("big")) <= 64 * KiB
    with open(o.m("big"), "r+b") as f:
        f.seek(16 * MiB + 8192)
        f.write(b"m" * 4096)
    up = os.lstat(o.u("big"))
    assert up.st_size == 32 * MiB + 1
    assert up.st_blocks * 512 <= 2 * 64 * KiB  # two chunks (the map is an xattr)
    want = data[: 16 * MiB + 8192] + b"m" * 4096 + data[16 * MiB + 12288 :] + b"!"
    assert _read(o.m("big")) == want
    after = os.lstat(o.m("big"))
    assert after.st_ino == before.st_ino
    assert after.st_size == 32 * MiB + 1
    # st_blocks as a whole copy would have it, not the sparse upper's
    assert abs(after.st_blocks - before.st_blocks) <= 2 * 64 * KiB // 512
    o.remount()
    assert os.lstat(o.m("big")).st_ino == before.st_ino
    assert _read(o.m("big")) == want


def test_metadata_changes_copy_no_data(ovl_factory: OvlFactory) -> None:
    data, prepare = _lower_file("big", 8 * MiB)
    o = _mount(ovl_factory, prepare)
    low = os.lstat(o.lower1 / "big")
    os.chmod(o.m("big"), 0o600)
    os.chown(o.m("big"), 1000, 1000)
    os.setxattr(o.m("big"), "user.tag", b"x")
    # no data (ext4 may count one block for the xattrs)
    assert blocks_bytes(o.u("big")) <= 4096 and _has_map(o.u("big"))
    st = os.lstat(o.m("big"))
    assert (st.st_mode & 0o7777, st.st_uid, st.st_size) == (0o600, 1000, 8 * MiB)
    assert st.st_mtime_ns == low.st_mtime_ns
    assert _read(o.m("big")) == data
    assert CHUNKS_XATTR.split(".", 1)[1] not in " ".join(os.listxattr(o.m("big")))
    assert errno_of(lambda: os.getxattr(o.m("big"), CHUNKS_XATTR)) == errno.EOPNOTSUPP


def test_truncate_and_extend_a_partial_file(ovl_factory: OvlFactory) -> None:
    data, prepare = _lower_file("big", 4 * MiB)
    o = _mount(ovl_factory, prepare)
    os.truncate(o.m("big"), 1 * MiB + 3)
    os.truncate(o.m("big"), 2 * MiB)  # the lower bytes beyond 1 MiB + 3 are gone for good
    assert _read(o.m("big")) == data[: MiB + 3] + bytes(MiB - 3)
    o.remount()
    assert _read(o.m("big")) == data[: MiB + 3] + bytes(MiB - 3)
    with open(o.m("big"), "r+b") as f:  # O_TRUNC-free rewrite of the start
        f.write(b"s")
    os.truncate(o.m("big"), 0)
    assert not _has_map(o.u("big"))  # nothing of the lower is left: a plain file
    assert _read(o.m("big")) == b""


def test_rename_and_hard_links_of_a_partial_file(ovl_factory: OvlFactory) -> None:
    data, prepare = _lower_file("big", 2 * MiB)
    o = _mount(ovl_factory, prepare)
    ino = os.lstat(o.m("big")).st_ino
    with open(o.m("big"), "r+b") as f:
        f.write(b"head")
    os.mkdir(o.m("d"))
    os.rename(o.m("big"), o.m("d/moved"))
    os.link(o.m("d/moved"), o.m("alias"))
    with open(o.m("alias"), "ab") as f:
        f.write(b"tail")
    want = b"head" + data[4:] + b"tail"
    for rel in ("d/moved", "alias"):
        st = os.lstat(o.m(rel))
        assert (st.st_ino, st.st_nlink, _read(o.m(rel))) == (ino, 2, want)
    assert _has_map(o.u("d/moved"))
    o.remount()
    assert _read(o.m("alias")) == want and os.lstat(o.m("d/moved")).st_ino == ino


def _linked_lower(o: Ovl) -> None:
    (o.lower1 / "a").write_bytes(b"L" * (2 * MiB))
    os.link(o.lower1 / "a", o.lower1 / "b")


def test_lower_hard_links_are_copied_up_whole(ovl_factory: OvlFactory) -> None:
    o = _mount(ovl_factory, _linked_lower)
    with open(o.m("a"), "r+b") as f:
        f.write(b"x")
    assert not _has_map(o.u("a"))
    assert _read(o.m("b")) == b"x" + b"L" * (2 * MiB - 1)
    assert os.lstat(o.m("a")).st_ino == os.lstat(o.m("b")).st_ino


def test_whole_mode_copies_whole_files(ovl_factory: OvlFactory) -> None:
    data, prepare = _lower_file("big", 2 * MiB)
    o = _mount(ovl_factory, prepare, "--copy-up=whole")
    with open(o.m("big"), "ab") as f:
        f.write(b"!")
    assert not _has_map(o.u("big"))
    assert _read(o.u("big")) == data + b"!"


def test_full_upper_fails_chunk_writes_and_keeps_the_file_readable(
    ovl_factory: OvlFactory,
) -> None:
    data, prepare = _lower_file("big", 20 * MiB)
    o = ovl_factory(standard=False, prepare=prepare, upper_size="8m")
    with open(o.m("big"), "ab") as f:  # one chunk: fits
        f.write(b"x")

    def rewrite() -> None:
        with open(o.m("big"), "r+b") as f:
            f.write(b"w" * (16 * MiB))

    assert errno_of(rewrite) == errno.ENOSPC
    got = _read(o.m("big"))
    assert len(got) == 20 * MiB + 1 and got[-1:] == b"x"
    for c in range(0, 20 * MiB, 64 * KiB):  # each chunk old or new, never a mix
        assert got[c : c + 64 * KiB] in (data[c : c + 64 * KiB], b"w" * (64 * KiB)), c
    os.truncate(o.m("big"), 0)
    with open(o.m("big"), "wb") as f:
        f.write(b"again")
    assert _read(o.m("big")) == b"again"


# -- interoperability: seal, check, a changed lower ----------------------------------------


def test_seal_refuses_an_upper_kernel_overlayfs_has_mounted(ovl_factory: OvlFactory) -> None:
    if not have_kernel_overlay():
        pytest.skip("kernel overlayfs is not available")
    o = ovl_factory("kernel")
    r = overlayboot_cli("upper", "seal", str(o.upper))
    assert r.returncode == 3 and f"a kernel overlay mount ({o.m()})" in r.stderr, r


def test_seal_then_kernel_overlayfs_shows_the_same(ovl_factory: OvlFactory) -> None:
    if not have_kernel_overlay():
        pytest.skip("kernel overlayfs is not available")
    _data, prepare = _lower_file("big", 3 * MiB)
    o = _mount(ovl_factory, prepare)
    with open(o.m("big"), "r+b") as f:
        f.seek(MiB)
        f.write(b"middle")
    want = _read(o.m("big"))
    mtime = os.lstat(o.m("big")).st_mtime_ns
    lowers = ":".join(map(str, o.lowers))
    r = overlayboot_cli("upper", "seal", "--lower", lowers, str(o.upper))
    assert r.returncode == 3 and "in use" in r.stderr, r  # not while mounted
    o.umount()
    r = overlayboot_cli("upper", "check", str(o.upper))  # lower from the map's record
    assert r.returncode == 0 and "partial  big" in r.stdout, r
    # kernel overlayfs on an unsealed upper would show holes: seal first
    r = overlayboot_cli("upper", "seal", str(o.upper))
    assert r.returncode == 0 and "sealed   big" in r.stdout, r
    assert not _has_map(o.u("big"))
    assert os.lstat(o.u("big")).st_mtime_ns == mtime
    r = overlayboot_cli("upper", "check", str(o.upper))
    assert r.returncode == 0 and r.stdout.startswith("0 partial copy-ups"), r
    with overlay_mount("kernel", o.lowers, o.upper, o.base / "kwork", o.base / "kmnt") as k:
        assert _read(str(k / "big")) == want
        assert os.lstat(k / "big").st_mtime_ns == mtime


def test_seal_on_umount(ovl_factory: OvlFactory) -> None:
    data, prepare = _lower_file("big", 2 * MiB)
    o = _mount(ovl_factory, prepare, "--seal-on-umount")
    with open(o.m("big"), "ab") as f:
        f.write(b"!")
    assert _has_map(o.u("big"))
    o.umount()
    assert not _has_map(o.u("big"))
    assert _read(o.u("big")) == data + b"!"
    assert "1 partial copy-ups made whole" in o.log.read_text()


def test_a_changed_lower_is_detected_never_mixed(tmp_path: Path) -> None:
    # not ovl_factory: its teardown insists that lower layers never change
    lower, upper, work, mnt = (tmp_path / d for d in ("lower", "upper", "work", "mnt"))
    lower.mkdir()
    (lower / "big").write_bytes(random.Random(4).randbytes(2 * MiB))
    log = tmp_path / "work.daemon.log"
    with overlay_mount("overlayboot", [lower], upper, work, mnt), open(mnt / "big", "r+b") as f:
        f.write(b"new")
    # an image upgrade: same name, size, inode and mtime, other content
    st = os.lstat(lower / "big")
    with open(lower / "big", "r+b") as f:
        f.write(b"\x00" * 4096)
    os.utime(lower / "big", ns=(st.st_atime_ns, st.st_mtime_ns))
    r = overlayboot_cli("upper", "check", "--lower", str(lower), str(upper))
    assert r.returncode == 6, r
    assert "PROBLEM  big" in r.stdout and "changed" in r.stdout
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("overlayboot: error:")
    r = overlayboot_cli("upper", "seal", str(upper))
    assert r.returncode == 6 and "FAILED   big" in r.stdout, r
    assert _has_map(str(upper / "big"))
    with overlay_mount("overlayboot", [lower], upper, work, mnt):
        assert errno_of(lambda: _read(str(mnt / "big"))) == errno.EIO
        assert os.lstat(mnt / "big").st_size == 2 * MiB  # stat still works
        assert "partial copy-up" in log.read_text() and "changed" in log.read_text()
        with open(mnt / "big", "wb") as f:  # O_TRUNC: nothing of the lower is needed any more
            f.write(b"fresh")
        assert _read(str(mnt / "big")) == b"fresh"
        assert not _has_map(str(upper / "big"))


# -- crash: kill -9 during writes ------------------------------------------------------

# The writer writes one chunk after the other in the order given and logs each after its
# pwrite returned. Its 10 ms pace is the workload, not a wait: the map flush is time-based
# (MAX_AGE), and the writes must spread over seconds for old ones to be flushed.
WRITER = """
import os, sys, time
path, log, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
order = [int(c) for c in sys.argv[4].split(",")]
fd = os.open(path, os.O_WRONLY)
with open(log, "w", buffering=1) as out:
    for c in order:
        off = c * chunk + (c * 997) % (chunk - 200)
        try:
            os.pwrite(fd, bytes([0xAA]) * 100, off)
        except OSError:
            sys.exit(0)
        out.write(f"{c} {time.monotonic()}\\n")
        time.sleep(0.01)
"""


def _write_order(nchunks: int) -> list[int]:
    """The odd chunks, then the even ones: the map's records are not in order."""
    order = list(range(nchunks))
    return order[1::2] + order[::2]


def _lines(path: Path) -> int:
    try:
        return len(path.read_bytes().splitlines())
    except FileNotFoundError:
        return 0


def test_kill_9_during_chunk_writes_leaves_whole_chunks(ovl_factory: OvlFactory) -> None:
    chunk, nchunks = 64 * KiB, 512
    data, prepare = _lower_file("big", chunk * nchunks, 9)
    o = ovl_factory(standard=False, prepare=prepare, mount=False)
    pid = o.mount_detached()
    log = o.base / "writes.log"
    order = _write_order(nchunks)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, o.m("big"), str(log), str(chunk), ",".join(map(str, order))]
    )
    try:  # re-checked on every line the writer logs
        wait_for(lambda: _lines(log) >= 250, [o.base], 120, "250 logged writes")
        killed_at = time.monotonic()
    finally:
        o.kill_daemon(pid)
        writer.kill()
        writer.wait()
    written = {}
    for line in log.read_text().splitlines():
        c, t = line.split()
        written[int(c)] = float(t)
    assert list(written) == order[: len(written)] and len(written) >= 250
    # the only chunk that may be new without a log line: the one being written at the kill
    # (its pwrite reached the daemon, the writer died before it logged it)
    in_flight = order[len(written)] if len(written) < nchunks else None
    o.mount()
    got = _read(o.m("big"))
    new = 0
    for c in range(nchunks):
        old = data[c * chunk : (c + 1) * chunk]
        off = (c * 997) % (chunk - 200)
        fresh = old[:off] + bytes([0xAA]) * 100 + old[off + 100 :]
        shown = got[c * chunk : (c + 1) * chunk]
        assert shown in (old, fresh), f"chunk {c} is neither old nor new"
        if shown == fresh:
            new += 1
            assert c in written or c == in_flight, (c, in_flight)
        elif c in written:
            # a write not yet recorded in the map when the daemon died: at most the
            # last MAX_AGE (1 s) plus one flusher period, not older ones
            assert killed_at - written[c] < 3.0, (c, killed_at - written[c])
    assert new >= 100


def test_o_trunc_while_open_elsewhere_forgets_the_lower(ovl_factory: OvlFactory) -> None:
    _data, prepare = _lower_file("big", 2 * MiB)
    o = _mount(ovl_factory, prepare)
    with open(o.m("big"), "r+b", buffering=0) as keep:
        keep.write(b"k")  # partial, and open
        with open(o.m("big"), "wb") as f:
            f.write(b"short")
        os.truncate(o.m("big"), 3 * MiB)
        assert os.pread(keep.fileno(), 10, 0) == b"short" + bytes(5)
        assert os.pread(keep.fileno(), 10, MiB) == bytes(10)
    assert _read(o.m("big")) == b"short" + bytes(3 * MiB - 5)


def test_st_blocks_of_plain_sparse_files_are_their_own(ovl_factory: OvlFactory) -> None:
    o = _mount(ovl_factory, None, "--timeout=0")  # every stat asks the daemon
    with open(o.m("sparse"), "wb") as f:
        f.truncate(10 * MiB)
        f.write(b"x")
    for _ in range(3):
        assert os.lstat(o.m("sparse")).st_blocks == os.lstat(o.u("sparse")).st_blocks
