"""The daemon serving / under memory pressure and stray signals (the test image, tmpfs upper).

A process that allocates more than the RAM must be the one the OOM killer takes, and
the root must stay: what was written before reads back, the daemon's pid lives on, the
root still writes. ``kill -TERM``, ``-INT`` and ``-HUP`` of the daemon change nothing.
The allocation is busybox ``tail`` reading /dev/zero through a pipe: with no newline
ever it keeps every byte. The hog runs from a copy of busybox in /run (tmpfs): its own
code pages then cannot be reclaimed and faulted back in through the FUSE root over and
over, a thrashing that can hold the OOM killer off for minutes under TCG.
"""

from __future__ import annotations

import pytest

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from tests.qemu.harness import Vm
from tests.qemu.powercut import Medium, boot, build_medium

# the first test of a session also waits for the initramfs build
pytestmark = [pytest.mark.qemu, pytest.mark.oom, pytest.mark.slow, pytest.mark.timeout(900)]

# the pid file the daemon writes in its chroot ($OB_RUN, /run/overlayboot in the live root)
DAEMON_PID = "cat /run/overlayboot/run/overlayboot/mounts/*.pid"


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Medium:
    return build_medium(tmp_path_factory.mktemp("oom-medium"))


def run(vm: Vm, tag: str, command: str, timeout: float = 30) -> str:
    """Run a shell command in the guest; return what it printed on its marked line."""
    vm.send(f"echo {tag}:$({command})\n")
    line = vm.wait_for(rf"^{tag}:(?!\$\()", timeout)
    return line.text.split(":", 1)[1]


def live_root(vm: Vm) -> str:
    """Wait for the live root's shell; the daemon's pid."""
    root = vm.wait_for(r"^ROOT-MOUNT:", timeout=240)
    assert " / fuse.overlayboot " in root.text, vm.tail()
    pid = run(vm, "PID", DAEMON_PID)
    assert pid.isdigit(), vm.tail()
    return pid


def test_the_oom_killer_takes_the_hog_and_the_root_stays(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Medium
) -> None:
    with boot(kernel, initramfs, medium, memory_mib=512) as vm:
        pid = live_root(vm)
        assert run(vm, "O1", "echo before > /oom-note && sync /oom-note && cat /oom-note") == (
            "before"
        )
        hog = "mkdir /run/hog && cp /bin/busybox /run/hog/ && ln -s busybox /run/hog/cat"
        assert run(vm, "O0", f"{hog} && ln -s busybox /run/hog/tail && echo ready") == "ready"
        vm.send("/run/hog/cat /dev/zero | /run/hog/tail; echo HOG-END:$?\n")
        killed = vm.wait_for(r"Out of memory: Killed process \d+ \((\w+)\)", timeout=300)
        assert "(tail)" in killed.text, vm.tail()
        assert vm.wait_for(r"^HOG-END:\d+", timeout=120).text == "HOG-END:137"
        assert run(vm, "O2", "cat /oom-note") == "before"
        assert run(vm, "O3", f"kill -0 {pid} && echo alive") == "alive"
        assert run(vm, "O4", "echo after > /oom-after && cat /oom-after") == "after"
        assert run(vm, "O5", "cat /etc/release") == "from the lower layer"
        # what keeps it so when the daemon is not the biggest: the boot flow's --root
        assert run(vm, "O6", f"cat /proc/{pid}/oom_score_adj") == "-1000"
        vm.send("exit\n")
        vm.wait_exit(timeout=60)
    print(f"OOM: the hog (busybox tail) was killed at {killed.at:.1f} s; daemon pid {pid} alive")


@pytest.mark.parametrize("signal", ["TERM", "INT", "HUP"])
def test_stray_signals_to_the_daemon_change_nothing(
    kernel: Kernel, initramfs: BuiltInitramfs, medium: Medium, signal: str
) -> None:
    with boot(kernel, initramfs, medium) as vm:
        pid = live_root(vm)
        assert run(vm, "S1", f"kill -{signal} {pid} && echo sent") == "sent"
        # a round trip through the daemon: it has run its signal handler by then
        assert run(vm, "S2", "echo written > /sig-note && cat /sig-note") == "written"
        assert run(vm, "S3", f"kill -0 {pid} && echo alive") == "alive"
        assert run(vm, "S4", f"kill -{signal} {pid}; kill -{signal} {pid}; echo twice") == ("twice")
        assert run(vm, "S5", "cat /sig-note /etc/release | wc -l") == "2"
        assert run(vm, "S6", f"kill -0 {pid} && echo alive") == "alive"
        vm.send("exit\n")
        vm.wait_exit(timeout=60)
    print(f"SIG{signal} x3 to the daemon (pid {pid}): the root reads and writes")
