"""Boot and build figures: QEMU boot to the live root's shell, ``build all``, initramfs sizes.

Boot: the default image (``build all`` into the scratch dir), booted with ``-kernel``/
``-initrd`` and the ISO as a CD, from QEMU's start to the root's
``OVERLAYBOOT-ROOT: up`` line, once with ``overlayboot.overlay=kernel`` and once with
``fuse``, interleaved run by run (TCG unless ``OVERLAYBOOT_QEMU_ACCEL=kvm``), with one
vCPU (multi-threaded TCG) and with two (single-threaded TCG, as mkimage.vm picks it for
more than one vCPU: multi-threaded TCG crashes such guests now and then; with two, the
boot's phase standby imports the daemon while the modules load; with one it does not
start). Build: the wall time of ``build all`` (kernel cached, everything else rebuilt) and
the initramfs size and build time for every compression.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.options import Options
from bench.workloads import Kind, Metric

if TYPE_CHECKING:
    from mkimage.kernel import Kernel

Samples = dict[str, dict[str, list[float]]]

BOOT_SYSTEMS = ("kernel", "overlayboot")
BOOT_CPUS = {"boot": 1, "boot_smp2": 2}
MB = 1_000_000


def metrics() -> list[Metric]:
    from mkimage.config import INITRAMFS_COMPRESSIONS

    out = [
        Metric("boot", "boot to the live root's shell, 1 vCPU (QEMU, CD)", Kind.TIME, False),
        Metric("boot_smp2", "boot to the live root's shell, 2 vCPUs", Kind.TIME, False),
        Metric("build_all", "build all (default image, kernel cached)", Kind.TIME, False),
    ]
    for c in INITRAMFS_COMPRESSIONS:
        out.append(Metric(f"initramfs_{c}", f"initramfs {c}: size", Kind.SIZE, False))
        out.append(Metric(f"initramfs_{c}_time", f"initramfs {c}: build", Kind.TIME, False))
    return out


def _kernel() -> Kernel:
    from mkimage.config import ImageSpec
    from mkimage.kernel import DEFAULT_CACHE
    from mkimage.pipeline import get_kernel

    return get_kernel(ImageSpec(), DEFAULT_CACHE)


def _build_all(out: Path) -> tuple[float, Path, Path]:
    """Time one ``build all`` of the default image into ``out``: (seconds, initramfs, iso)."""
    from mkimage.config import ImageSpec
    from mkimage.initramfs import DEFAULT_SOURCE_DATE_EPOCH
    from mkimage.pipeline import STEPS, build_all
    from mkimage.progress import Steps

    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    built = build_all(
        ImageSpec(output=out), DEFAULT_SOURCE_DATE_EPOCH, steps=Steps(len(STEPS), out=sys.stderr)
    )
    return time.perf_counter() - t0, built.initramfs, built.iso


def _initramfs_sizes(kernel: Kernel, out: Path, samples: Samples) -> None:
    from mkimage.config import INITRAMFS_COMPRESSIONS
    from mkimage.cpio import Compression
    from mkimage.initramfs import InitramfsSpec, build_initramfs

    for c in INITRAMFS_COMPRESSIONS:
        t0 = time.perf_counter()
        built = build_initramfs(
            InitramfsSpec(kernel=kernel, compression=Compression(c)), out / f"initramfs-{c}.img"
        )
        took = time.perf_counter() - t0
        samples[f"initramfs_{c}"].setdefault("overlayboot", []).append(built.size / MB)
        samples[f"initramfs_{c}_time"].setdefault("overlayboot", []).append(took * 1000)


def _boot_once(kernel: Path, initrd: Path, iso: Path, overlay: str, cpus: int) -> float:
    from mkimage.rootfs import ROOT_MARKER
    from mkimage.vm import Vm, VmConfig

    config = VmConfig(
        kernel=kernel,
        initrd=initrd,
        append=(f"overlayboot.overlay={overlay}", "overlayboot.onerror=poweroff"),
        extra=("-smp", str(cpus), "-drive", f"file={iso},media=cdrom,readonly=on,if=ide"),
    )
    with Vm(config) as vm:
        return vm.wait_for(ROOT_MARKER, timeout=300).at * 1000


def run_boot_build(opts: Options, base: Path, notes: list[str]) -> tuple[list[Metric], Samples]:
    """Every boot and build figure: the metrics and their samples by system."""
    from mkimage.vm import qemu_available

    ms = metrics()
    samples: Samples = {m.key: {} for m in ms}
    kernel = _kernel()
    initrd = iso = None
    for rep in range(opts.build_reps):
        took, initrd, iso = _build_all(base / "image")
        samples["build_all"].setdefault("overlayboot", []).append(took * 1000)
        print(f"build all {rep + 1}/{opts.build_reps}: {took:.1f} s", file=sys.stderr)
    _initramfs_sizes(kernel, base / "initramfs", samples)
    if initrd is None or iso is None or not qemu_available():
        notes.append("boot skipped: no image built or qemu-system-x86_64 missing")
        return ms, samples
    pinned = os.sched_getaffinity(0)
    # QEMU is not pinned: a guest's second vCPU needs a host CPU of its own
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    try:
        _boots(opts, kernel.image, initrd, iso, samples, notes)
    finally:
        os.sched_setaffinity(0, pinned)
    return ms, samples


def _boots(
    opts: Options, kernel: Path, initrd: Path, iso: Path, samples: Samples, notes: list[str]
) -> None:
    from mkimage.vm import BootTimeout

    for n in range(opts.boot_runs):
        for key, cpus in BOOT_CPUS.items():
            for system in BOOT_SYSTEMS if n % 2 == 0 else BOOT_SYSTEMS[::-1]:
                overlay = "kernel" if system == "kernel" else "fuse"
                try:
                    took_ms = _boot_once(kernel, initrd, iso, overlay, cpus)
                except BootTimeout as exc:
                    notes.append(f"boot ({cpus} vCPU) with overlayboot.overlay={overlay}: {exc}")
                    continue
                samples[key].setdefault(system, []).append(took_ms)
                print(
                    f"boot {n + 1}/{opts.boot_runs} {system}, {cpus} vCPU: {took_ms / 1000:.1f} s",
                    file=sys.stderr,
                )
