"""The power-cut harness: the test image, its boots, and the host's checks after each cut.

The image is a busybox root like test_boot's, plus what the workload needs: the
patterns every write copies from (/pat), large lower files (/big, copied up chunk by
chunk), small lower files (/data), lower directories to rename (/tree) and the guest
workload (/bin/ob-workload, from workload.sh). The host hands each round's operations
to the guest on a second virtio disk (/dev/vdb, the text and zeros after it).

A power cut is SIGKILL of QEMU (``Vm.kill``): what the guest had written to its disk is
in the image file, what was still in its page cache is lost. After a cut the host
checks the partition image itself: ``e2fsck -fp`` (the journal replay, or a repair)
then ``e2fsck -fn`` clean, a read-only loop mount, ``overlayboot upper check`` against
the loop-mounted squashfs, and the merged tree read through an overlayboot FUSE mount
of a copy of the upper (the daemon tidies its work dir at mount: the image stays as the
cut left it for the next boot).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from overlayboot.run import run
from tests.qemu.harness import Vm, VmConfig
from tests.qemu.media import busybox_tree, plain_iso
from tests.qemu.powercut_model import Observed, lower_files, observe, pattern_files
from tests.qemu.test_boot import APPLETS as BOOT_APPLETS
from tests.qemu.test_boot import ROOT_INIT

# test_boot's init (a shell on the console) and applets, and what the workload needs
APPLETS = sorted(
    set(BOOT_APPLETS.split()) | set(["mv", "sort", "xargs", "sed", "find", "dirname", "kill"])
)
WORKLOAD = Path(__file__).with_name("workload.sh")
LABEL = "overlayboot-rw"
UPPER_PARAM = f"overlayboot.upper=LABEL={LABEL}"
UPPER_BASE = "overlayboot/OVERLAYBOOT"  # the images' directory on the partition


def build_root(root: Path) -> None:
    """The test image's tree: busybox, an init that gives a shell, the workload's files."""
    busybox_tree(root, APPLETS, ROOT_INIT, "from the lower layer\n", dirs=("new",))
    shutil.copy(WORKLOAD, root / "bin" / "ob-workload")
    for path, data in (lower_files() | pattern_files()).items():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)


@dataclass(frozen=True)
class Medium:
    """The test image: its tree on the host, its squashfs, the CD holding it."""

    root: Path
    squashfs: Path
    iso: Path


def build_medium(base: Path) -> Medium:
    build_root(base / "root")
    squashfs = base / "iso" / "live" / "filesystem.squashfs"
    squashfs.parent.mkdir(parents=True)
    run(["mksquashfs", base / "root", squashfs, "-noappend", "-quiet", "-comp", "zstd"])
    return Medium(base / "root", squashfs, plain_iso(base / "iso", base / "live.iso"))


def ops_disk(path: Path, script: bytes) -> Path:
    """A raw disk holding ``script`` (zeros after it, to a whole 64 KiB)."""
    path.write_bytes(script + b"\0" * (-len(script) % 65536 or 65536))
    return path


def boot(
    kernel: Kernel,
    initramfs: BuiltInitramfs,
    medium: Medium,
    *params: str,
    rw: Path | None = None,
    ops: Path | None = None,
    memory_mib: int = 1024,
) -> Vm:
    """The test image from a CD; ``rw`` as /dev/vda and ``ops`` as /dev/vdb."""
    drives = ["-drive", f"file={medium.iso},media=cdrom,readonly=on,if=ide"]
    for img in (rw, ops):
        if img is not None:
            drives += ["-drive", f"file={img},format=raw,if=virtio"]
    config = VmConfig(
        kernel=kernel.image,
        initrd=initramfs.path,
        append=("overlayboot.timeout=15", "overlayboot.onerror=poweroff", *params),
        memory_mib=memory_mib,
        extra=("-smp", "1", *drives),
    )
    return Vm(config)


def overlayboot(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """The overlayboot CLI of this tree, on the host."""
    return run([sys.executable, "-m", "overlayboot", *args], check=check)


@contextmanager
def loop_mount(image: Path, mnt: Path) -> Iterator[Path]:
    """``image`` (ext4 or squashfs) mounted read-only through a loop device."""
    mnt.mkdir(parents=True, exist_ok=True)
    run(["mount", "-o", "loop,ro", image, mnt])
    try:
        yield mnt
    finally:
        run(["umount", mnt])


@contextmanager
def merged(lower: Path, upper_base: Path, mnt: Path) -> Iterator[Path]:
    """An overlayboot FUSE mount of ``lower`` and the upper and work dirs in ``upper_base``."""
    mnt.mkdir(parents=True, exist_ok=True)
    base = upper_base
    overlayboot("mount", "--lower", lower, "--upper", base / "upper", "--work", base / "work", mnt)
    try:
        yield mnt
    finally:
        overlayboot("umount", mnt)


@dataclass(frozen=True)
class PartitionCheck:
    """The host's look at the persistence partition after a cut."""

    fsck: str  # "clean", or what e2fsck -p did
    problems: tuple[str, ...]
    seen: Observed | None  # the merged tree (None: it could not be read)


def _tail(proc: subprocess.CompletedProcess[bytes]) -> str:
    out = (proc.stdout or b"") + (proc.stderr or b"")
    return " | ".join(out.decode(errors="replace").strip().splitlines()[-4:])


def fsck(rw: Path) -> tuple[str, list[str]]:
    """``e2fsck -fp`` (exit 0 or 1: clean, or repaired) then ``e2fsck -fn`` must be clean.

    Says "clean", "journal replayed" (the normal state after a cut), or what was repaired."""
    preen = run(["e2fsck", "-fp", rw], check=False)
    problems = [] if preen.returncode in (0, 1) else [f"e2fsck -fp: exit {preen.returncode}"]
    strict = run(["e2fsck", "-fn", rw], check=False)
    if strict.returncode != 0:
        problems.append(f"e2fsck -fn after -fp: exit {strict.returncode}: {_tail(strict)}")
    said = (preen.stdout + preen.stderr).decode(errors="replace").splitlines()
    other = [ln for ln in said if "recovering journal" not in ln and "non-contiguous" not in ln]
    if preen.returncode == 0:
        return "clean", problems
    return ("journal replayed" if not other else f"repaired: {_tail(preen)}"), problems


def image_changes(part: Path) -> Path:
    """The directory of the one image booted on the mounted partition: images/ID (upper,
    work), as the boot flow keeps each image's changes."""
    found = sorted((part / UPPER_BASE / "images").iterdir())
    assert len(found) == 1, found
    return found[0]


def check_partition(rw: Path, lower: Path, scratch: Path) -> PartitionCheck:
    """fsck, ``upper check`` and the merged tree of the partition image ``rw``."""
    done, problems = fsck(rw)
    if problems:
        return PartitionCheck(done, tuple(problems), None)
    copy = scratch / "upper-copy"
    shutil.rmtree(copy, ignore_errors=True)
    with loop_mount(rw, scratch / "rw") as part:
        changes = image_changes(part)
        check = overlayboot("upper", "check", "--lower", lower, changes / "upper", check=False)
        run(["cp", "-a", changes, copy])
    if check.returncode != 0:
        problems.append(f"upper check: exit {check.returncode}: {_tail(check)}")
    with merged(lower, copy, scratch / "merged") as tree:
        seen = observe(tree)
    return PartitionCheck(done, tuple(problems), seen)


@dataclass(frozen=True)
class Console:
    """What the guest workload said in one boot."""

    state: dict[str, str]  # md5 by path, as the guest read it at the start
    fsynced: dict[int, str]  # op -> what the guest saw once it was fsynced
    failed: tuple[str, ...]  # operations that failed in the guest
    last_op: int  # the last @IDX seen (-1: none)
    up_at: float  # seconds from QEMU's start to the live root's shell
    ran_for: float  # seconds from the workload's start to its last @IDX


def read_console(vm: Vm) -> Console:
    state: dict[str, str] = {}
    fsynced: dict[int, str] = {}
    failed: list[str] = []
    last_op, up_at, started, last_at, before = -1, 0.0, 0.0, 0.0, ""
    for line in list(vm.lines):
        verb, _, rest = line.text.partition(" ")
        if verb == "STATE":
            digest, _, path = rest.partition("  ")
            state[path] = digest
        elif verb == "FSYNCED":
            idx, _, got = rest.partition(" ")
            fsynced[int(idx)] = got
        elif verb == "FAILED":
            failed.append(f"{rest} (after: {before})")  # the line before: the error
        elif verb.startswith("@") and verb[1:].isdigit():
            last_op, last_at = int(verb[1:]), line.at
        elif verb == "WORKLOAD-START":
            started = line.at
        elif line.text.startswith("OVERLAYBOOT-ROOT: up") and not up_at:
            up_at = line.at
        before = line.text
    ran_for = last_at - started if last_at else 0.0
    return Console(state, fsynced, tuple(failed), last_op, up_at, ran_for)


def run_workload(vm: Vm, cut_after: int | None, delay: float = 0.0) -> Console:
    """Boot to the live root, start the workload; cut the power ``delay`` s after operation
    ``cut_after`` started (or at its end), or with None let it finish and power off."""
    root = vm.wait_for(r"^ROOT-MOUNT:", timeout=240)
    assert " / fuse.overlayboot " in root.text, vm.tail()
    vm.send("sh /bin/ob-workload /dev/vdb\n")
    vm.wait_for(r"^WORKLOAD-START", timeout=120)
    if cut_after is None:
        vm.wait_for(r"^WORKLOAD-END", timeout=120)
        vm.send("exit\n")
        vm.wait_exit(timeout=60)
    else:
        vm.wait_for(rf"^@{cut_after}$|^WORKLOAD-END", timeout=300)
        # the cut's moment inside the operation: a seeded delay, not a wait for anything
        threading.Event().wait(delay)
        vm.kill()
    return read_console(vm)
