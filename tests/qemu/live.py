"""One booted guest for the boot tests: boot, wait for the line that matters, run shell
commands on the serial console, power off (or cut the power).

Every test of tests/qemu/test_boot.py is ``with booted(...) as guest:`` around its own
steps, instead of repeating the boot and the power-off.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from tests.qemu.harness import Line, Vm, VmConfig

ROOT_UP = r"OVERLAYBOOT-ROOT: up"
"""The first line of the tiny root's /sbin/init: the live root is up, a shell follows."""
BOOT_ERROR = r"^ERROR: "
"""The boot's one-line error (``die`` in hooks/lib.sh)."""
BOOT_TIMEOUT = 240.0
POWEROFF_TIMEOUT = 60.0


@dataclass
class Guest:
    """A running guest: its VM, the line waited for at boot, and a shell on its console."""

    vm: Vm
    first: Line  # the line ``booted`` waited for
    powered_off: bool = False  # by the test (a power cut), not by ``booted``
    _tags: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def sh(self, command: str, timeout: float = 30) -> str:
        """Run a shell command in the guest; return what it printed, on one line."""
        tag = f"OUT{next(self._tags)}"
        self.vm.send(f"echo {tag}:$({command})\n")
        line = self.vm.wait_for(rf"^{tag}:(?!\$\()", timeout)
        return line.text.split(":", 1)[1]

    def root_mount(self) -> str:
        """The line of /proc/mounts for / as the root's init printed it."""
        return self.vm.wait_for(r"^ROOT-MOUNT:", timeout=5).text

    def power_cut(self) -> None:
        """SIGKILL to QEMU: the power goes, whatever the guest was doing."""
        self.vm.kill()
        self.powered_off = True


def vm_config(
    kernel: Kernel, initramfs: BuiltInitramfs, drives: list[str], params: tuple[str, ...], cpus: int
) -> VmConfig:
    """The kernel and initramfs given to QEMU directly; a boot error powers the guest off."""
    return VmConfig(
        kernel=kernel.image,
        initrd=initramfs.path,
        append=("overlayboot.timeout=15", "overlayboot.onerror=poweroff", *params),
        extra=("-smp", str(cpus), *drives),
    )


@contextmanager
def booted(
    kernel: Kernel,
    initramfs: BuiltInitramfs,
    drives: list[str],
    *params: str,
    cpus: int = 1,
    until: str = ROOT_UP,
    exit_shell: bool = True,
) -> Iterator[Guest]:
    """Boot, wait for a line matching ``until``, hand over the guest; then power it off:
    leave the root's shell (``exit_shell``; the root's init powers off) and wait for QEMU to
    end. A failing test skips the power-off: the VM is killed."""
    with Vm(vm_config(kernel, initramfs, drives, params, cpus)) as vm:
        guest = Guest(vm, vm.wait_for(until, timeout=BOOT_TIMEOUT))
        yield guest
        if not guest.powered_off:
            if exit_shell:
                vm.send("exit\n")
            vm.wait_exit(timeout=POWEROFF_TIMEOUT)


def failed_boot(
    kernel: Kernel, initramfs: BuiltInitramfs, drives: list[str], *params: str
) -> AbstractContextManager[Guest]:
    """A boot expected to stop at its ``ERROR:`` line and power off by itself."""
    return booted(kernel, initramfs, drives, *params, until=BOOT_ERROR, exit_shell=False)
