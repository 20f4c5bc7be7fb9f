"""The block device on real mounts: a FUSE daemon, a loop device, ext4 on top.

- random writes through the loop device (sizes and offsets across chunk edges, flushes)
  against a full copy of the base: the store's bytes (read from the daemon with O_DIRECT)
  equal the model after every flush, and the device after a re-attach;
- ext4 made on a base, mounted on the device read-write, an fsx-style and a metadata
  workload, unmounted, e2fsck clean, re-attached: the same tree; merge gives that image;
- kill -9 of the daemon in the middle of whole-chunk writes: every chunk is wholly one
  version, none older than its last flush; a second attach of a store in use is refused;
- kill -9 under ext4 with fsyncing writers: e2fsck clean after the journal replay;
- a store on a full disk: the writes fail, the device stays, the store stays valid.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from overlayboot.block import attach, manage
from overlayboot.block.device import DISCARD
from overlayboot.block.store import Store
from overlayboot.errors import BlockError
from overlayboot.fuseserve import pid_file
from tests.fuse.helpers import tmpfs
from tests.mounts import have_fuse, umount
from tests.waiting import wait_exit, wait_for

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.block,
    pytest.mark.skipif(not have_fuse(), reason="needs root and /dev/fuse"),
]

KiB, MiB = 1 << 10, 1 << 20


@dataclass
class Device:
    """An attached store: its loop device, FUSE directory, store and base."""

    store: Path
    base: Path
    mnt: Path
    dev: str = ""

    def attach(self) -> str:
        self.dev = attach.attach(self.store, self.base, self.mnt)
        return self.dev

    def detach(self) -> None:
        attach.detach(Path(self.dev))
        self.dev = ""

    def daemon_pid(self) -> int:
        return int(pid_file(self.mnt.absolute()).read_text())


@contextlib.contextmanager
def attached(tmp_path: Path, base: Path, chunk: int) -> Iterator[Device]:
    store = tmp_path / "dev.store"
    manage.create(store, base, chunk_size=chunk, force=False)
    d = Device(store, base, tmp_path / "mnt")
    d.attach()
    try:
        yield d
    finally:
        _cleanup(d)


def _cleanup(d: Device) -> None:
    """Whatever state a test left: no mount, loop device or daemon stays behind."""
    for m in (d.mnt.parent / "fs", d.mnt):
        if os.path.ismount(m):
            umount(m)
    for dev in (d.dev, *_loops_of(d)):
        if dev:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
    if os.path.ismount(d.mnt):
        umount(d.mnt)


def _loops_of(d: Device) -> list[str]:
    from overlayboot.block import loop

    return loop.devices_of(attach.disk_of(d.mnt.absolute()))


def _random_base(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def _direct_read(path: Path | str, size: int) -> bytes:
    """``size`` bytes of ``path`` read with O_DIRECT: from the daemon, not a page cache."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, MiB)
    out = bytearray()
    try:
        while len(out) < size:
            n = os.preadv(fd, [buf], len(out))
            if n <= 0:
                break
            out += buf[:n]
    finally:
        os.close(fd)
        buf.close()
    return bytes(out[:size])


def test_device_matches_a_full_copy(tmp_path: Path) -> None:
    size, chunk = 16 * MiB, 16 * KiB
    model = bytearray(_random_base(tmp_path / "base.img", size, 1))
    rng = random.Random(2)
    with attached(tmp_path, tmp_path / "base.img", chunk) as d:
        disk = attach.disk_of(d.mnt)
        fd = os.open(d.dev, os.O_RDWR)
        try:
            for step in range(1, 301):
                if rng.random() < 0.3:
                    off = max(0, rng.randrange(1, size // chunk) * chunk - rng.randrange(1, 9000))
                else:
                    off = rng.randrange(size)
                n = min(rng.choice([1, 512, 4096, 5000, chunk, 3 * chunk + 1, 200_000]), size - off)
                data = rng.randbytes(n)
                assert os.pwrite(fd, data, off) == n
                model[off : off + n] = data
                if step % 30 == 0:
                    os.fsync(fd)  # the loop device's flush: the daemon commits
                    assert _direct_read(disk, size) == model, f"after step {step}"
            os.fsync(fd)
        finally:
            os.close(fd)
        d.detach()
        info = manage.info(d.store)
        assert info.sb.state.name == "CLEAN"
        assert 0 < info.mapped < info.sb.chunks
        # the store grew by the changed chunks (and the slots their rewrites left free)
        assert info.file_size <= info.sb.slot_offset(2 * info.mapped)
        d.attach()
        with open(d.dev, "rb") as f:
            assert f.read() == model
        d.detach()
    out = tmp_path / "merged.img"
    manage.merge(d.store, d.base, out)
    assert out.read_bytes() == model


def _fsx(path: Path, rng: random.Random, ops: int) -> bytes:
    """Random writes, truncates and extensions on one file, checked against a model."""
    model = bytearray()
    with open(path, "w+b") as f:
        for i in range(ops):
            op = rng.random()
            if op < 0.7:
                off = rng.randrange(len(model) + 70_000)
                data = rng.randbytes(rng.randrange(1, 70_000))
                f.seek(off)
                f.write(data)
                if off > len(model):
                    model += bytes(off - len(model))
                model[off : off + len(data)] = data
            elif op < 0.85:
                n = rng.randrange(len(model) + 1)
                f.truncate(n)
                del model[n:]
            else:
                f.flush()
                os.fsync(f.fileno())
            if i % 40 == 0:
                f.flush()
                f.seek(0)
                assert f.read() == model
    return bytes(model)


def _metadata(root: Path, rng: random.Random) -> None:
    """Many small files, dirs, renames, links, symlinks, deletions, xattrs."""
    for i in range(40):
        sub = root / f"d{i:02d}"
        sub.mkdir()
        for j in range(40):
            (sub / f"f{j}").write_bytes(rng.randbytes(rng.randrange(0, 3000)))
        os.symlink(f"f{i % 40}", sub / "link")
        os.link(sub / "f0", root / f"hard{i}")
    for i in range(0, 40, 3):
        os.rename(root / f"d{i:02d}", root / f"moved{i:02d}")
    for i in (i for i in range(1, 40, 4) if i % 3):
        for j in range(0, 40, 2):
            os.unlink(root / f"d{i:02d}" / f"f{j}")
    os.setxattr(root / "d01", "user.note", b"kept")


def _tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """path -> (mode, links, content digest or link target)."""
    out: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                what = os.readlink(p)
            elif p.is_file():
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = ",".join(sorted(os.listxattr(p)))
            out[str(p.relative_to(root))] = (st.st_mode, st.st_nlink, what)
    return out


def _e2fsck_clean(target: str | Path) -> None:
    r = subprocess.run(["e2fsck", "-fn", str(target)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ext4_on_the_device(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    subprocess.run(["truncate", "-s", "64M", str(base)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(base)], check=True)
    base_bytes = base.read_bytes()
    rng = random.Random(5)
    with attached(tmp_path, base, 64 * KiB) as d:
        fs = d.mnt.parent / "fs"
        fs.mkdir()
        subprocess.run(["mount", d.dev, str(fs)], check=True)
        try:
            big = _fsx(fs / "fsx.bin", rng, 400)
            _metadata(fs, rng)
            tree = _tree(fs)
        finally:
            umount(fs)
        _e2fsck_clean(d.dev)
        d.detach()
        assert base.read_bytes() == base_bytes  # the base is never written
        d.attach()
        subprocess.run(["mount", d.dev, str(fs)], check=True)
        try:
            assert _tree(fs) == tree
            assert (fs / "fsx.bin").read_bytes() == big
        finally:
            umount(fs)
        d.detach()
    merged = tmp_path / "merged.img"
    manage.merge(d.store, base, merged)
    _e2fsck_clean(merged)


WRITER = """
import os, sys
dev, chunk, chunks, log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
import mmap, random
rng = random.Random(11)
buf = mmap.mmap(-1, chunk)
fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
gen = 0
with open(log, "a", buffering=1) as out:
    while True:
        gen += 1
        for _ in range(8):
            c = rng.randrange(chunks)
            buf[:] = (c.to_bytes(4, "little") + gen.to_bytes(4, "little")) * (chunk // 8)
            try:
                os.pwritev(fd, [buf], c * chunk)
            except OSError:
                sys.exit(0)
            out.write(f"w {c} {gen}\\n")
        try:
            os.fsync(fd)
        except OSError:
            sys.exit(0)
        out.write(f"f {gen}\\n")
"""


def _flushed_generations(log: Path) -> dict[int, int]:
    """chunk -> the last generation written to it before a flush that returned."""
    written: dict[int, int] = {}
    flushed: dict[int, int] = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if parts[0] == "w" and len(parts) == 3:
            written[int(parts[1])] = int(parts[2])
        elif parts[0] == "f" and len(parts) == 2:
            flushed.update(written)
    return flushed


def test_kill_9_mid_writes_leaves_whole_chunks(tmp_path: Path) -> None:
    size, chunk = 8 * MiB, 16 * KiB
    base = _random_base(tmp_path / "base.img", size, 3)
    log = tmp_path / "writes.log"
    log.touch()
    with attached(tmp_path, tmp_path / "base.img", chunk) as d:
        with pytest.raises(BlockError, match="in use"):
            Store.open(d.store, d.base, writable=True)
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, d.dev, str(chunk), str(size // chunk), str(log)]
        )
        pid = d.daemon_pid()
        try:
            wait_for(lambda: log.read_text().count("f ") >= 50, [tmp_path], 60, "50 flushes")
        finally:
            os.kill(pid, signal.SIGKILL)
            wait_exit(pid, 30)
            writer.wait(timeout=60)
    flushed = _flushed_generations(log)
    assert len(flushed) > 20
    newer = 0
    st = Store.open(d.store, d.base, writable=False)  # as it is: no repair step
    try:
        assert st.was_dirty
        for c in range(size // chunk):
            data = st.read(c * chunk, chunk)
            if data == base[c * chunk : (c + 1) * chunk]:
                assert c not in flushed, f"chunk {c} lost its flushed generation {flushed[c]}"
                continue
            head = data[:8]
            assert data == head * (chunk // 8), f"chunk {c} is torn"
            assert int.from_bytes(head[:4], "little") == c
            gen = int.from_bytes(head[4:], "little")
            assert gen >= flushed.get(c, 0), f"chunk {c} is old"
            newer += gen > flushed.get(c, 0)
    finally:
        st.abandon()
    print(f"{len(flushed)} chunks flushed, {newer} newer than their last flush seen")


FILE_WRITER = """
import hashlib, os, random, sys
root, log = sys.argv[1], sys.argv[2]
rng = random.Random(13)
with open(log, "a", buffering=1) as out:
    for i in range(100000):
        data = rng.randbytes(rng.randrange(1, 300_000))
        name = f"{root}/f{i % 300}"
        digest = hashlib.sha256(data).hexdigest()
        if i % 3 == 0:
            out.write(f"b {name} {digest}\\n")
        try:
            with open(name + ".tmp", "wb") as f:
                f.write(data)
                if i % 3 == 0:
                    f.flush()
                    os.fsync(f.fileno())
            os.rename(name + ".tmp", name)
            if i % 3 == 0:
                dfd = os.open(root, os.O_RDONLY)
                os.fsync(dfd)
                os.close(dfd)
                out.write(f"d {name} {digest}\\n")
        except OSError:
            sys.exit(0)
"""


def test_kill_9_under_ext4_then_fsck_clean(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    subprocess.run(["truncate", "-s", "128M", str(base)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(base)], check=True)
    log = tmp_path / "fsynced.log"
    log.touch()
    with attached(tmp_path, base, 64 * KiB) as d:
        fs = d.mnt.parent / "fs"
        fs.mkdir()
        subprocess.run(["mount", d.dev, str(fs)], check=True)
        pid = d.daemon_pid()
        writer = subprocess.Popen([sys.executable, "-c", FILE_WRITER, str(fs), str(log)])
        try:
            wait_for(lambda: log.read_text().count("d ") >= 60, [tmp_path], 120, "60 fsyncs")
        finally:
            os.kill(pid, signal.SIGKILL)
            wait_exit(pid, 30)
            writer.wait(timeout=60)
        _cleanup(d)
        d.attach()
        r = subprocess.run(["e2fsck", "-p", d.dev], capture_output=True, text=True)
        assert r.returncode in (0, 1), r.stdout + r.stderr  # the journal replayed
        _e2fsck_clean(d.dev)
        subprocess.run(["mount", "-o", "ro", d.dev, str(fs)], check=True)
        try:
            versions = _fsynced_versions(log)
            assert len(versions) >= 20
            for name, allowed in versions.items():
                got = hashlib.sha256(Path(name).read_bytes()).hexdigest()
                assert got in allowed, name
        finally:
            umount(fs)
        d.detach()


def _fsynced_versions(log: Path) -> dict[str, set[str]]:
    """name -> the digests it may hold after the crash: its last version whose fsync (and
    its directory's) returned, or one begun after it (fsynced maybe, not yet logged)."""
    allowed: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        kind, name, digest = line.split()
        if kind == "d":
            allowed[name] = {digest}
        elif name in allowed:
            allowed[name].add(digest)
    return allowed


def test_a_full_disk_fails_writes_and_the_store_stays_valid(tmp_path: Path) -> None:
    size, chunk = 16 * MiB, 64 * KiB
    base = _random_base(tmp_path / "base.img", size, 4)
    with tmpfs(tmp_path / "small", "2M") as small:
        store = small / "dev.store"
        manage.create(store, tmp_path / "base.img", chunk_size=chunk, force=False)
        d = Device(store, tmp_path / "base.img", tmp_path / "mnt")
        d.attach()
        try:
            fd = os.open(d.dev, os.O_RDWR | os.O_DIRECT)
            buf = mmap.mmap(-1, chunk)
            buf.write(b"\x5a" * chunk)
            written, failed = 0, None
            try:
                for c in range(size // chunk):
                    try:
                        os.pwritev(fd, [buf], c * chunk)
                        os.fsync(fd)
                        written += 1
                    except OSError as exc:
                        failed = exc
                        break
                assert failed is not None and failed.errno in (errno.EIO, errno.ENOSPC), failed
                assert 0 < written < size // chunk
                # the device is still there: what was flushed reads back, the rest is the base
                assert _direct_read(d.dev, chunk) == bytes(buf)
            finally:
                os.close(fd)
                buf.close()
            d.detach()
        finally:
            _cleanup(d)
        st = Store.open(store, d.base, writable=False)
        try:
            assert st.read(0, written * chunk) == b"\x5a" * (written * chunk)
            tail = written * chunk
            assert st.read(tail, size - tail) == base[tail:]
        finally:
            st.abandon()


def _in_use(d: Device) -> tuple[int, int]:
    """(slots in use, zero chunks) of the detached store."""
    st = Store.open(d.store, d.base, writable=False)
    try:
        zeros = sum(st.index.is_zero(c) for c in range(st.sb.chunks))
        return st.slots.in_use, zeros
    finally:
        st.abandon()


@pytest.mark.skipif(not DISCARD, reason="pyfuse3 without fallocate (third_party/pyfuse3)")
def test_discard_reads_zeros_and_frees_chunks(tmp_path: Path) -> None:
    size, chunk = 8 * MiB, 64 * KiB
    model = bytearray(_random_base(tmp_path / "base.img", size, 3))
    with attached(tmp_path, tmp_path / "base.img", chunk) as d:
        with open(d.dev, "r+b", buffering=0) as f:
            data = random.Random(4).randbytes(2 * MiB)
            f.write(data)
            os.fsync(f.fileno())
        model[: 2 * MiB] = data
        # whole written chunks, part of a written chunk, base chunks never written
        for off, n in ((chunk, 4 * chunk), (MiB + 4 * KiB, 8 * KiB), (4 * MiB, MiB)):
            subprocess.run(["blkdiscard", "-o", str(off), "-l", str(n), d.dev], check=True)
            model[off : off + n] = bytes(n)
        with open(d.dev, "rb") as f:
            os.fsync(f.fileno())
        assert _direct_read(attach.disk_of(d.mnt), size) == model
        d.detach()
        assert _in_use(d) == (32 - 4, 4 + 16)  # the partial discard: a new version, as a write
        d.attach()
        with open(d.dev, "rb") as f:
            assert f.read() == model
        # ext4's fstrim: a deleted file's chunks leave the store
        fs = d.mnt.parent / "fs"
        fs.mkdir()
        subprocess.run(["mkfs.ext4", "-q", "-F", d.dev], check=True)
        subprocess.run(["mount", d.dev, str(fs)], check=True)
        try:
            (fs / "big").write_bytes(random.Random(5).randbytes(4 * MiB))
        finally:
            umount(fs)
        d.detach()
        before = _in_use(d)[0]
        d.attach()
        subprocess.run(["mount", d.dev, str(fs)], check=True)
        try:
            (fs / "big").unlink()
            subprocess.run(["sync", "-f", str(fs)], check=True)  # its blocks free on disk
            subprocess.run(["fstrim", str(fs)], check=True)
        finally:
            umount(fs)
        _e2fsck_clean(d.dev)
        d.detach()
        assert _in_use(d)[0] <= before - 60, (before, _in_use(d))
