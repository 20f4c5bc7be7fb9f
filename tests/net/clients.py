"""QEMU clients of the network boot tests: the test's kernel and initramfs, booted with a NIC
on a tap of the test's namespace (QEMU runs inside it), and a tiny busybox root to serve."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from overlayboot.net.serve import ca_initrd
from overlayboot.net.serverconf import UNDIONLY, ipxe_script
from tests.net.netns import Netns
from tests.qemu.harness import MediaVmConfig, Vm, VmConfig
from tests.qemu.live import BOOT_ERROR, BOOT_TIMEOUT, POWEROFF_TIMEOUT, ROOT_UP, Guest
from tests.qemu.media import busybox_tree

ROOT_INIT = """#!/bin/sh
export PATH=/bin:/sbin
echo "OVERLAYBOOT-ROOT: up $(uname -r)"
setsid cttyhack sh
sync
poweroff -f
"""
APPLETS = "sh cat echo ls mount grep sync poweroff setsid cttyhack md5sum head wc sed tr cut find"
UNREAD = "opt/unread.bin"  # big, incompressible, never read at boot: lazy reads skip it
UNREAD_MIB = 24


@dataclass(frozen=True)
class NetnsVmConfig(VmConfig):
    """A VM whose QEMU runs inside the test's network namespace (where its taps are)."""

    netns: str = ""

    def argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *super().argv()]


@dataclass(frozen=True)
class NetnsPxeConfig(MediaVmConfig):
    """A VM with no disk that boots from its NIC (QEMU's iPXE ROM), inside the namespace."""

    netns: str = ""

    def argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *super().argv(), "-boot", "n"]


def pxe_files(
    docroot: Path,
    tftp: Path,
    kernel: Kernel,
    initramfs: BuiltInitramfs,
    server: str,
    params: str,
    ca: Path | None = None,
) -> None:
    """What a PXE client fetches: iPXE's own loader over TFTP (for a NIC ROM that is not
    iPXE), then boot.ipxe, the kernel and the initramfs over HTTP (and ``ca`` as a second
    initrd, ca.cpio, as ``overlayboot serve --ca`` sends it)."""
    tftp.mkdir(parents=True, exist_ok=True)
    shutil.copy(UNDIONLY, tftp / "undionly.kpxe")
    shutil.copy(kernel.image, docroot / "vmlinuz")
    shutil.copy(initramfs.path, docroot / "initrd.img")
    initrds: tuple[str, ...] = ("initrd.img",)
    if ca is not None:
        initrds += (ca_initrd(ca, docroot / "ca.cpio").name,)
    script = ipxe_script(f"http://{server}", f"console=ttyS0 panic=-1 {params}", initrds)
    (docroot / "boot.ipxe").write_text(script)


def tiny_root(root: Path) -> Path:
    busybox_tree(root, APPLETS.split(), ROOT_INIT, "from the network lower\n", dirs=("opt",))
    (root / UNREAD).write_bytes(os.urandom(UNREAD_MIB << 20))
    return root


@dataclass(frozen=True)
class Served:
    """What the servers serve: the tree, its image (+ .sha256), a live/ dir holding it."""

    tree: Path  # an unpacked root (NFS tree)
    image: Path  # docroot/image.squashfs, with image.squashfs.sha256 beside it
    docroot: Path  # also docroot/live/filesystem.squashfs (an image dir, live-boot's form)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.image.read_bytes()).hexdigest()


def make_served(base: Path, fill: Callable[[Path], object] | None = None) -> Served:
    """The tiny root (with more in it from ``fill``), its image, a docroot serving both."""
    tree = tiny_root(base / "tree")
    if fill is not None:
        fill(tree)
    docroot = base / "docroot"
    (docroot / "live").mkdir(parents=True)
    image = docroot / "image.squashfs"
    subprocess.run(
        ["mksquashfs", str(tree), str(image), "-noappend", "-quiet", "-comp", "zstd"],
        check=True,
    )
    os.link(image, docroot / "live" / "filesystem.squashfs")
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    (docroot / "image.squashfs.sha256").write_text(f"{digest}  image.squashfs\n")
    return Served(tree, image, docroot)


def client_config(
    kernel: Kernel,
    initramfs: BuiltInitramfs,
    ns: Netns,
    index: int,
    *params: str,
    memory_mib: int = 512,
    nic: str = "virtio-net-pci",
) -> NetnsVmConfig:
    """Client ``index``: a NIC on a new tap, the boot parameters; errors power it off."""
    return NetnsVmConfig(
        kernel=kernel.image,
        initrd=initramfs.path,
        append=("overlayboot.timeout=15", "overlayboot.onerror=poweroff", *params),
        memory_mib=memory_mib,
        extra=tuple(ns.nic(index, nic)),
        netns=ns.name,
    )


def power_off(guest: Guest) -> None:
    """Leave the root's shell (its init powers off) and wait for QEMU to end."""
    guest.vm.send("exit\n")
    guest.vm.wait_exit(timeout=POWEROFF_TIMEOUT)


@contextmanager
def client(
    kernel: Kernel,
    initramfs: BuiltInitramfs,
    ns: Netns,
    index: int,
    *params: str,
    until: str = ROOT_UP,
) -> Iterator[Guest]:
    """A client booted with ``params``, handed over once a line matches ``until``; then
    powered off (its shell left) unless it stopped at its error (``until=BOOT_ERROR``)."""
    with Vm(client_config(kernel, initramfs, ns, index, *params)) as vm:
        guest = Guest(vm, vm.wait_for(until, timeout=BOOT_TIMEOUT))
        yield guest
        if until == BOOT_ERROR:
            vm.wait_exit(timeout=POWEROFF_TIMEOUT)
        else:
            power_off(guest)


@contextmanager
def fleet(configs: Sequence[VmConfig], timeout: float = 3 * BOOT_TIMEOUT) -> Iterator[list[Guest]]:
    """Every client started at once, handed over once each root is up; powered off after."""
    with ExitStack() as stack:
        vms = [stack.enter_context(Vm(cfg)) for cfg in configs]
        guests = [Guest(vm, vm.wait_for(ROOT_UP, timeout=timeout)) for vm in vms]
        yield guests
        for guest in guests:
            power_off(guest)
