"""Running an image under QEMU: boot a kernel + initramfs or a disk/CD, read the serial console.

QEMU runs as a plain subprocess with the serial console on its stdio; a reader thread
collects every line with the time it arrived. ``wait_for`` waits for a line matching a
pattern, with a timeout; the full log is always available (``log``) for failure messages.
QEMU is always killed by its PID when the ``Vm`` context ends.

KVM is used only when asked for (``OVERLAYBOOT_QEMU_ACCEL=kvm``) and ``/dev/kvm`` opens:
on these machines it does not run Debian kernels, so TCG is the default: multi-threaded
for one vCPU, single-threaded for more (``-smp N`` in the config's ``extra``), because
multi-threaded TCG with 2+ vCPUs crashes guests early now and then (``Oops: int3`` in
``sched_clock_cpu``: the kernel patches its code while another vCPU runs stale
translations). ``OVERLAYBOOT_QEMU_TCG_THREAD=multi|single`` forces one mode.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from overlayboot.run import spawn

QEMU = "qemu-system-x86_64"
KVM = ("-accel", "kvm", "-cpu", "host")
TCG_THREADS = ("multi", "single")
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1bc")


class BootTimeout(AssertionError):
    """An expected line did not show up in time; the message carries the log's tail."""


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None


def tcg_args(cpus: int) -> tuple[str, ...]:
    """TCG, multi-threaded for one vCPU, single-threaded for more (see the module doc)."""
    thread = os.environ.get("OVERLAYBOOT_QEMU_TCG_THREAD", "")
    if thread not in TCG_THREADS:
        thread = "multi" if cpus <= 1 else "single"
    return ("-accel", f"tcg,thread={thread}", "-cpu", "max")


def accel_args(cpus: int = 1) -> tuple[str, ...]:
    """TCG unless KVM is asked for and usable."""
    if os.environ.get("OVERLAYBOOT_QEMU_ACCEL") == "kvm":
        try:
            fd = os.open("/dev/kvm", os.O_RDWR)
        except OSError:
            return tcg_args(cpus)
        os.close(fd)
        return KVM
    return tcg_args(cpus)


def smp_cpus(extra: Sequence[str]) -> int:
    """The vCPU count ``-smp`` in ``extra`` asks for (``N``, ``N,…``, ``…,cpus=N,…``), else 1."""
    cpus = 1
    for flag, value in itertools.pairwise(extra):
        if flag != "-smp":
            continue
        for i, part in enumerate(value.split(",")):
            count = part.removeprefix("cpus=") if part.startswith("cpus=") or i == 0 else ""
            if count.isdigit():
                cpus = int(count)
    return cpus


@dataclass(frozen=True)
class VmConfig:
    """What to boot and how."""

    kernel: Path
    initrd: Path | None = None
    append: Sequence[str] = ()  # kernel parameters beyond the console ones
    memory_mib: int = 1024
    extra: Sequence[str] = ()  # more QEMU arguments (drives, machine type)
    base_append: Sequence[str] = field(default=("console=ttyS0", "panic=-1"))

    def argv(self) -> list[str]:
        args = [QEMU, *accel_args(smp_cpus(self.extra)), "-m", str(self.memory_mib)]
        args += ["-nographic", "-no-reboot"]
        args += ["-kernel", str(self.kernel)]
        if self.initrd is not None:
            args += ["-initrd", str(self.initrd)]
        args += ["-append", " ".join([*self.base_append, *self.append]), *self.extra]
        return args


OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
# Secure Boot: OVMF built with SMM (its variable store is then writable only from SMM) and
# a variable store with Microsoft's keys enrolled and Secure Boot on (Debian's ovmf)
OVMF_CODE_SECBOOT = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS_MS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
SECBOOT_ARGS = ("-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on")


@dataclass(frozen=True)
class MediaVmConfig:
    """Boot from firmware: an ISO as a CD (``cdrom``) or a disk image (``disk``).

    ``uefi`` uses OVMF on q35 (pflash: the read-only code and ``vars``, a writable copy of
    OVMF_VARS.fd that the caller makes); ``secure_boot`` the SMM build of OVMF with Secure
    Boot enforced (``vars``: a copy of OVMF_VARS_MS); otherwise SeaBIOS on the default
    machine. Disks
    are opened with ``-snapshot``: the image is never written.
    """

    cdrom: Path | None = None
    disk: Path | None = None
    writable: bool = False  # write to the disk image (persistence) instead of -snapshot
    uefi: bool = False
    vars: Path | None = None
    memory_mib: int = 1024
    extra: Sequence[str] = ()
    secure_boot: bool = False  # implies uefi

    def argv(self) -> list[str]:
        args = [QEMU, *accel_args(smp_cpus(self.extra)), "-m", str(self.memory_mib)]
        args += ["-nographic", "-no-reboot"]
        if self.uefi or self.secure_boot:
            assert self.vars is not None, "UEFI needs a writable copy of OVMF's variables"
            code = OVMF_CODE_SECBOOT if self.secure_boot else OVMF_CODE
            args += list(SECBOOT_ARGS) if self.secure_boot else ["-machine", "q35"]
            args += ["-drive", f"if=pflash,format=raw,readonly=on,file={code}"]
            args += ["-drive", f"if=pflash,format=raw,file={self.vars}"]
        if self.cdrom is not None:
            args += ["-cdrom", str(self.cdrom)]
        if self.disk is not None:
            if not self.writable:
                args.append("-snapshot")
            args += ["-drive", f"file={self.disk},format=raw"]
        return [*args, *self.extra]


@dataclass(frozen=True)
class Line:
    """One console line and the seconds since QEMU started."""

    at: float
    text: str


class Vm:
    """A running QEMU; use as a context manager."""

    def __init__(self, config: VmConfig | MediaVmConfig, *, echo: bool = False) -> None:
        self.config = config
        self.echo = echo  # also copy every console line to our stdout (the demo)
        self.lines: list[Line] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._started = 0.0

    def __enter__(self) -> Vm:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    def start(self) -> None:
        self._started = time.monotonic()
        self._proc = spawn(
            self.config.argv(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            text = _ANSI.sub(b"", raw).decode(errors="replace").rstrip("\r\n")
            if self.echo:
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
            with self._cond:
                self.lines.append(Line(time.monotonic() - self._started, text))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        with self._cond:
            return "\n".join(f"{ln.at:7.2f} {ln.text}" for ln in self.lines)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def wait_for(self, pattern: str, timeout: float) -> Line:
        """The first line (from the start) matching ``pattern`` (a regex); wait for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if regex.search(line.text):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BootTimeout(
                        f"no line matching {pattern!r} in {timeout} s:\n{self.tail()}"
                    )
                if not self.running() and (self._reader is None or not self._reader.is_alive()):
                    raise BootTimeout(f"QEMU exited before {pattern!r} showed up:\n{self.tail()}")
                self._cond.wait(min(left, 0.5))

    def send(self, text: str) -> None:
        """Type ``text`` on the serial console."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(text.encode())
        self._proc.stdin.flush()

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit by itself (poweroff, -no-reboot); return its exit code."""
        assert self._proc is not None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise BootTimeout(f"QEMU still running after {timeout} s:\n{self.tail()}") from exc

    def kill(self) -> None:
        """Kill QEMU by its PID (never by name) and reap it."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)  # EOF once QEMU is gone
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
