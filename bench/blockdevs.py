"""The block devices the block benchmark compares, each a loop device over the same base:

- ``overlayboot``: ``overlayboot block attach`` (a store, the Python FUSE daemon);
- ``qsd-qcow2``: a qcow2 overlay with the base as its backing file, exported through FUSE
  by ``qemu-storage-daemon`` (the same architecture, in C);
- ``loop-copy``: a loop device on a full copy of the base (the limit).

Each is made fresh over the base and torn down whole; ``growth()`` is what its writable
part takes on disk beyond what it took when it was made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from overlayboot import mounttable
from overlayboot.block import attach, loop, manage
from overlayboot.fuseserve import pid_file
from overlayboot.run import run, spawn

CHUNK = 64 << 10  # overlayboot's chunk = qcow2's default cluster


def disk_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def forget_cache(path: Path) -> None:
    """Drop one file's pages from the page cache (a cold read without drop_caches)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@dataclass
class Target:
    """One device under test."""

    name: str
    work: Path
    base: Path
    dev: str = ""
    start_bytes: int = 0
    files: list[Path] = field(default_factory=list)  # whose cache a cold read drops

    def setup(self) -> str:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError

    def writable(self) -> Path:
        raise NotImplementedError

    def growth(self) -> int:
        return disk_bytes(self.writable()) - self.start_bytes

    def cold(self) -> None:
        for f in [self.base, *self.files]:
            forget_cache(f)

    def daemon_cpu(self) -> float:
        """CPU seconds its daemon has used since it started (0: no daemon, the kernel's)."""
        return 0.0


class Overlayboot(Target):
    def writable(self) -> Path:
        return self.work / "ob.store"

    def setup(self) -> str:
        manage.create(self.writable(), self.base, chunk_size=CHUNK, force=True)
        self.start_bytes = disk_bytes(self.writable())
        self.files = [self.writable()]
        self.dev = attach.attach(self.writable(), self.base, self.work / "ob.mnt")
        return self.dev

    def teardown(self) -> None:
        attach.detach(Path(self.dev))

    def daemon_cpu(self) -> float:
        mnt = Path(loop.backing_file(self.dev) or "").parent
        return cpu_seconds(int(pid_file(mnt).read_text().strip()))


class QsdQcow2(Target):
    proc: subprocess.Popen[bytes] | None = None

    def writable(self) -> Path:
        return self.work / "ov.qcow2"

    def setup(self) -> str:
        ov, exp = self.writable(), self.work / "qsd.export"
        ov.unlink(missing_ok=True)
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.base), "-F", "raw", str(ov)])
        self.start_bytes = disk_bytes(ov)
        self.files = [ov]
        exp.touch()
        self.proc = spawn(
            [
                "qemu-storage-daemon",
                "--blockdev",
                f"driver=file,node-name=f,filename={ov}",
                "--blockdev",
                "driver=qcow2,node-name=q,file=f",
                "--export",
                f"type=fuse,id=e,node-name=q,mountpoint={exp},writable=on",
            ]
        )
        deadline = time.monotonic() + 30
        while not any(m.target == str(exp) for m in mounttable.mounts()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("qemu-storage-daemon did not export the overlay")
            time.sleep(0.05)
        self.dev = loop.attach(exp)
        return self.dev

    def daemon_cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def teardown(self) -> None:
        loop.detach(self.dev)
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


class LoopCopy(Target):
    def writable(self) -> Path:
        return self.work / "copy.img"

    def setup(self) -> str:
        shutil.copyfile(self.base, self.writable())
        os.sync()
        self.start_bytes = disk_bytes(self.writable())
        self.files = [self.writable()]
        self.dev = loop.attach(self.writable())
        return self.dev

    def teardown(self) -> None:
        loop.detach(self.dev)


TARGETS: dict[str, type[Target]] = {
    "overlayboot": Overlayboot,
    "qsd-qcow2": QsdQcow2,
    "loop-copy": LoopCopy,
}
