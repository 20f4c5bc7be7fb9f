"""The workloads: each runs on one mounted system and yields (metric, value) pairs.

Times are wall-clock (``time.perf_counter``) around the operation alone; tools run
through ``sh -c`` with their output sent to /dev/null, so every system pays the same
process start-up. "cold" means the page cache, dentries and inodes were dropped just
before; "warm" runs straight after the cold run, on what it left cached.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from bench.lower import Lower
from bench.machine import drop_caches
from bench.options import Options
from overlayboot.run import run

MIB = 1 << 20


class Kind(Enum):
    TIME = "ms"  # lower is better
    RATE = "MB/s"  # higher is better
    SIZE = "MiB"  # a quantity, not a speed


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    kind: Kind
    raw: bool  # also measured on the raw squashfs (read-only workloads)


def metrics(opts: Options) -> list[Metric]:
    """Every figure of the suite, in table order."""
    big, n, w = f"{opts.big_mib} MiB", opts.files, opts.write_mib
    rm_files = opts.files * opts.rm_dirs // max(opts.dirs, 1)
    return [
        Metric("seqread_cold", f"seq read {big} file, cold", Kind.RATE, True),
        Metric("seqread_warm", f"seq read {big} file, warm", Kind.RATE, True),
        Metric("find_cold", f"find+stat {n} files/{opts.dirs} dirs, cold", Kind.TIME, True),
        Metric("find_warm", f"find+stat {n} files/{opts.dirs} dirs, warm", Kind.TIME, True),
        Metric("smallread_cold", f"read all {n} small files, cold", Kind.TIME, True),
        Metric("smallread_warm", f"read all {n} small files, warm", Kind.TIME, True),
        Metric("exec", f"exec lower /bin/true x{opts.execs}", Kind.TIME, True),
        Metric("copyup", f"copy-up: append 1 B to {big} file, cold", Kind.TIME, False),
        Metric("copyup_grew", "copy-up: upper grew by", Kind.SIZE, False),
        Metric("rewrite4k", f"copy-up: rewrite 4 KiB mid-{big} file, cold", Kind.TIME, False),
        Metric("rewrite4k_grew", "rewrite 4 KiB: upper grew by", Kind.SIZE, False),
        Metric("seqread_partial_cold", f"seq read {big}, 1/16 rewritten, cold", Kind.RATE, False),
        Metric("seqread_partial_warm", f"seq read {big}, 1/16 rewritten, warm", Kind.RATE, False),
        Metric("create_empty", f"create {opts.creates} empty files", Kind.TIME, False),
        Metric("create_4k", f"create {opts.creates} 4 KiB files", Kind.TIME, False),
        Metric("rm_rf", f"rm -rf {opts.rm_dirs} lower dirs ({rm_files} files)", Kind.TIME, False),
        Metric("seqwrite", f"seq write new {w} MiB file (+fsync)", Kind.RATE, False),
        Metric("untar", f"untar {opts.tar_source.name} source tar", Kind.TIME, False),
        Metric("grep", "grep -r the unpacked tree", Kind.TIME, False),
    ]


@dataclass(frozen=True)
class Target:
    """One mounted system, ready for workloads."""

    system: str
    mnt: Path
    upper_fs: Path | None  # the tmpfs holding upper and work (None for raw)
    lower: Lower
    opts: Options


Sample = tuple[str, float]


def _sh(script: str, cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    run(["sh", "-c", script], cwd=cwd)
    return time.perf_counter() - t0


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _used_bytes(fs: Path) -> int:
    st = os.statvfs(fs)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _seq_read(path: Path, key: str) -> Iterator[Sample]:
    buf = bytearray(MIB)
    for label in ("cold", "warm"):
        if label == "cold":
            drop_caches()
        t0 = time.perf_counter()
        total = 0
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
        yield f"{key}_{label}", total / 1e6 / (time.perf_counter() - t0)


def seq_read(t: Target) -> Iterator[Sample]:
    yield from _seq_read(t.mnt / "big", "seqread")


def find_stat(t: Target) -> Iterator[Sample]:
    # -printf with %s and %m makes find lstat every entry
    script = "find tree -printf '%s %m\\n' > /dev/null"
    for label in ("cold", "warm"):
        if label == "cold":
            drop_caches()
        yield f"find_{label}", _ms(_sh(script, cwd=t.mnt))


def small_read(t: Target, listfile: Path) -> Iterator[Sample]:
    script = f"xargs -0 -a {shlex.quote(str(listfile))} cat > /dev/null"
    for label in ("cold", "warm"):
        if label == "cold":
            drop_caches()
        yield f"smallread_{label}", _ms(_sh(script, cwd=t.mnt))


def exec_true(t: Target) -> Iterator[Sample]:
    prog = shlex.quote(str(t.mnt / "bin/true"))
    _sh(prog)  # first run maps the binary in: not part of the figure
    loop = f'i=0; while [ "$i" -lt {t.opts.execs} ]; do {prog}; i=$((i+1)); done'
    yield "exec", _ms(_sh(loop))


def copy_up(t: Target) -> Iterator[Sample]:
    assert t.upper_fs is not None
    drop_caches()
    before = _used_bytes(t.upper_fs)
    t0 = time.perf_counter()
    fd = os.open(t.mnt / "big", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
    yield "copyup", _ms(time.perf_counter() - t0)
    yield "copyup_grew", (_used_bytes(t.upper_fs) - before) / MIB


def rewrite_4k(t: Target) -> Iterator[Sample]:
    """4 KiB rewritten in the middle of the untouched second large file."""
    assert t.upper_fs is not None
    drop_caches()
    before = _used_bytes(t.upper_fs)
    t0 = time.perf_counter()
    fd = os.open(t.mnt / "big2", os.O_WRONLY)
    try:
        os.pwrite(fd, b"\x5a" * 4096, t.opts.big_mib * MIB // 2)
    finally:
        os.close(fd)
    yield "rewrite4k", _ms(time.perf_counter() - t0)
    yield "rewrite4k_grew", (_used_bytes(t.upper_fs) - before) / MIB


def partial_read(t: Target) -> Iterator[Sample]:
    """Sequential read of the second large file once 4 KiB of every 1 MiB is rewritten
    (1/16 of its 64 KiB chunks in overlayboot's upper, the rest read from the lower)."""
    fd = os.open(t.mnt / "big2", os.O_WRONLY)
    try:
        for off in range(0, t.opts.big_mib * MIB, MIB):
            os.pwrite(fd, b"\xa5" * 4096, off + 8192)
    finally:
        os.close(fd)
    yield from _seq_read(t.mnt / "big2", "seqread_partial")


def creates(t: Target) -> Iterator[Sample]:
    data = b"\xa5" * 4096
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for key, payload in (("create_empty", b""), ("create_4k", data)):
        d = t.mnt / f"new-{key}"
        d.mkdir()
        names = [str(d / f"f{i:05d}") for i in range(t.opts.creates)]
        t0 = time.perf_counter()
        for name in names:
            fd = os.open(name, flags, 0o644)
            if payload:
                os.write(fd, payload)
            os.close(fd)
        yield key, _ms(time.perf_counter() - t0)


def rm_rf(t: Target) -> Iterator[Sample]:
    victims = " ".join(shlex.quote(d) for d in t.lower.dirs[: t.opts.rm_dirs])
    yield "rm_rf", _ms(_sh(f"rm -rf {victims}", cwd=t.mnt))


def seq_write(t: Target) -> Iterator[Sample]:
    buf = os.urandom(MIB)
    t0 = time.perf_counter()
    fd = os.open(t.mnt / "newbig", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for _ in range(t.opts.write_mib):
            os.write(fd, buf)
        os.fsync(fd)
    finally:
        os.close(fd)
    yield "seqwrite", t.opts.write_mib * MIB / 1e6 / (time.perf_counter() - t0)


def untar_grep(t: Target) -> Iterator[Sample]:
    (t.mnt / "untar").mkdir()
    yield "untar", _ms(_sh("tar -xf src.tar -C untar", cwd=t.mnt))
    # -c counts every line, so grep reads every byte of every file
    yield "grep", _ms(_sh("grep -rcF 'import ' untar > /dev/null", cwd=t.mnt))


Workload = Callable[[Target], Iterator[Sample]]


def for_system(system: str, listfile: Path) -> list[tuple[str, Workload]]:
    """The workloads of one freshly mounted system, in order: readers first, then writers."""
    readers: list[tuple[str, Workload]] = [
        ("seq read", seq_read),
        ("find+stat", find_stat),
        ("small reads", lambda t: small_read(t, listfile)),
        ("exec", exec_true),
    ]
    if system == "raw":
        return readers
    writers: list[tuple[str, Workload]] = [
        ("copy-up", copy_up),
        ("rewrite 4 KiB", rewrite_4k),
        ("partial read", partial_read),
        ("creates", creates),
        ("rm -rf", rm_rf),
        ("seq write", seq_write),
        ("untar+grep", untar_grep),
    ]
    return readers + writers
