"""``make demo`` / ``overlayboot demo``: overlayboot shown at work.

``run_live_demo`` (the default) builds the default image (``build all``) and boots
its USB image under QEMU on this terminal: a first boot writes a file on the live
root, powers off; a second boot shows the file survived on the persistence
partition; then, on an interactive terminal, a third boot hands the console over.
It prints the boot times.

``run_demo`` (``--overlay``) shows the overlay alone: a squashfs image loop-mounted,
overlayboot over it, changes, the upper in kernel-overlayfs format, a remount, and
the same upper mounted by kernel overlayfs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click

from overlayboot.errors import OverlaybootError
from overlayboot.run import run


def _say(text: str) -> None:
    click.secho(f"\n==> {text}", fg="cyan", bold=True)


def _sh(cmd: str, cwd: Path) -> None:
    """Show a shell command line, run it and show its output; a failure ends the demo."""
    click.secho(f"$ {cmd}", fg="yellow")
    out = run(["sh", "-c", cmd], cwd=cwd)
    sys.stdout.write((out.stdout + out.stderr).decode(errors="replace"))


def _build_lower(src: Path) -> None:
    (src / "etc").mkdir(parents=True)
    (src / "etc/hostname").write_text("overlayboot-demo\n")
    (src / "etc/motd").write_text("Welcome to a read-only root made writable.\n")
    (src / "usr/bin").mkdir(parents=True)
    shutil.copy2("/bin/true", src / "usr/bin/true")
    (src / "var/log").mkdir(parents=True)
    (src / "var/log/old.log").write_text("an old log line\n" * 100)
    (src / "home/user").mkdir(parents=True)
    (src / "home/user/notes.txt").write_text("original notes\n")


@contextlib.contextmanager
def _overlayboot(lower: Path, upper: Path, work: Path, mnt: Path) -> Iterator[None]:
    run([sys.executable, "-m", "overlayboot", "mount", "--lower", lower, "--upper", upper,
         "--work", work, mnt])  # fmt: skip
    try:
        yield
    finally:
        run([sys.executable, "-m", "overlayboot", "umount", mnt])


def run_demo(base: Path) -> None:
    if os.geteuid() != 0:
        raise OverlaybootError("the demo mounts filesystems: run it as root (sudo make demo)")
    base = base.resolve()
    for name in ("merged", "kernel", "lower"):
        if os.path.ismount(base / name):
            run(["umount", "-l", base / name], check=False)
    if base.exists():
        shutil.rmtree(base)
    src, img = base / "rootfs", base / "root.squashfs"
    lower, upper, work, mnt = base / "lower", base / "upper", base / "work", base / "merged"
    for directory in (src, lower, upper, work, mnt):
        directory.mkdir(parents=True)
    _say("building a read-only root: a squashfs image, loop-mounted as the lower layer")
    _build_lower(src)
    run(["mksquashfs", src, img, "-noappend", "-comp", "zstd", "-quiet"])
    run(["mount", "-o", "loop,ro", "-t", "squashfs", img, lower])
    try:
        _say("mounting overlayboot over it (upper and work dirs are empty)")
        t0 = time.monotonic()
        with _overlayboot(lower, upper, work, mnt):
            click.echo(f"mounted in {time.monotonic() - t0:.2f} s")
            _sh(f"findmnt -n {mnt}", base)
            _sh("ls -l merged merged/etc && cat merged/etc/motd", base)
            _say("changing it: a new file, an edit of a lower file, a deletion")
            _sh("echo 'written on the live system' > merged/home/user/new.txt", base)
            _sh("echo 'edited notes' >> merged/home/user/notes.txt", base)
            _sh("rm merged/var/log/old.log", base)
            _sh("mv merged/etc merged/etc.renamed && ls merged", base)
            _sh("merged/usr/bin/true && echo 'a lower binary runs: exit 0'", base)
            _say("only the changes are stored, in kernel-overlayfs format")
            _sh("find upper -printf '%M %p\\n' | sort -k2", base)
            _sh("getfattr -d -m 'trusted.overlay' -R upper 2>/dev/null", base)
        _say("remounting: the changes are still there")
        with _overlayboot(lower, upper, work, mnt):
            _sh("cat merged/home/user/notes.txt merged/home/user/new.txt; ls merged/var/log", base)
        _say("the same upper mounted by kernel overlayfs shows the same tree")
        kmnt, kwork = base / "kernel", base / "kwork"
        kmnt.mkdir()
        kwork.mkdir()
        opts = f"lowerdir={lower},upperdir={upper},workdir={kwork},redirect_dir=on"
        run(["mount", "-t", "overlay", "overlay", "-o", opts, kmnt])
        try:
            _sh("cat kernel/home/user/notes.txt; ls kernel kernel/var/log", base)
        finally:
            run(["umount", kmnt])
        _say("done: the lower image was never written")
    finally:
        run(["umount", lower], check=False)


def run_live_demo(out: Path) -> None:
    """Build the default image and boot it twice under QEMU, showing persistence."""
    if os.geteuid() != 0:
        raise OverlaybootError("the demo builds images and boots them: run it as root")
    from mkimage.config import ImageSpec
    from mkimage.initramfs import DEFAULT_SOURCE_DATE_EPOCH
    from mkimage.pipeline import STEPS, build_all
    from mkimage.progress import Steps
    from mkimage.rootfs import ROOT_MARKER
    from mkimage.vm import MediaVmConfig, Vm

    _say("building the default image (overlayboot build all)")
    spec = ImageSpec(
        output=out.resolve(),
        boot_params=("overlayboot.upper=LABEL=overlayboot-rw",),
        timeout=1,
    )
    steps = Steps(len(STEPS))
    built = build_all(spec, DEFAULT_SOURCE_DATE_EPOCH, steps=steps)
    click.echo(steps.summary())
    config = MediaVmConfig(disk=built.usb, writable=True)

    _say("boot 1: the USB image, with its persistence partition; write a file")
    with Vm(config, echo=True) as vm:
        up = vm.wait_for(ROOT_MARKER, timeout=300)
        first = up.at
        vm.send("mkdir -p /root; echo 'written on the first boot' > /root/hello.txt\n")
        vm.send(
            "overlayboot_status=/run/overlayboot/runtime/overlayboot; $overlayboot_status status\n"
        )
        vm.wait_for(r"^changes: ", timeout=60)
        vm.send("poweroff\n")
        vm.wait_exit(timeout=120)

    _say("boot 2: the same image; the file is still there")
    with Vm(config, echo=True) as vm:
        up = vm.wait_for(ROOT_MARKER, timeout=300)
        second = up.at
        vm.send("echo FOUND:$(cat /root/hello.txt)\n")
        found = vm.wait_for(r"^FOUND:(?!\$)", timeout=60)
        vm.send("poweroff\n")
        vm.wait_exit(timeout=120)
    ok = "written on the first boot" in found.text
    _say(
        f"boot to a shell in the live root: {first:.1f} s and {second:.1f} s under QEMU; "
        + ("the change survived the reboot" if ok else "the change did NOT survive")
    )
    if not ok:
        raise OverlaybootError("the file written on the first boot is missing after the reboot")
    if sys.stdin.isatty():
        _say("boot 3 is yours: the console is handed over (type 'poweroff' to leave)")
        run(config.argv(), capture=False)
