"""The one gate for subprocesses: every external command goes through :func:`run`
(or :func:`spawn`, for a process that keeps running beside ours).

It resolves the tool first (a missing tool is a :class:`ToolError` naming the
Debian package that provides it), runs it without a shell, and on failure raises
a :class:`ToolError` whose one-line message carries the command line and the last
line of its stderr; the whole stderr is on the error (``stderr``) and in the log at
debug level (``overlayboot --debug``, or the daemon's log with ``mount --debug``).
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from overlayboot.errors import ToolError

log = logging.getLogger(__name__)

# tool -> Debian package, for the "install X" hint
PACKAGES: dict[str, str] = {
    "mount": "mount",
    "umount": "mount",
    "fusermount3": "fuse3",
    "fuse-overlayfs": "fuse-overlayfs",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "xorriso": "xorriso",
    "grub-mkrescue": "grub-common",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "busybox": "busybox-static",
    "qemu-system-x86_64": "qemu-system-x86",
    "depmod": "kmod",
    "dpkg": "dpkg",
    "apt-get": "apt",
    "zstd": "zstd",
    "xz": "xz-utils",
    "gzip": "gzip",
    "cpio": "cpio",
    "debootstrap": "debootstrap",
    "mkfs.vfat": "dosfstools",
    "mformat": "mtools",
    "findmnt": "util-linux",
    "nginx": "nginx-light",
    "ganesha.nfsd": "nfs-ganesha",
    "dnsmasq": "dnsmasq-base",
    "getfattr": "attr",
    "strip": "binutils",
    "cp": "coreutils",
    "tar": "tar",
    "grub-mkimage": "grub-common",
    "mcopy": "mtools",
    "mmd": "mtools",
    "sfdisk": "fdisk",
    "blkid": "util-linux",
    "isoinfo": "genisoimage",
    "losetup": "mount",
    "qemu-img": "qemu-utils",
    "qemu-storage-daemon": "qemu-system-common",
}


def which(tool: str) -> str:
    """Return the full path of ``tool`` or raise :class:`ToolError` with the package hint."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        pkg = PACKAGES.get(tool)
        hint = f"install the Debian package {pkg}: apt-get install {pkg}" if pkg else None
        raise ToolError(f"{tool} not found", hint)
    return path


def _resolve(argv: Sequence[str | Path]) -> list[str]:
    args = [str(a) for a in argv]
    args[0] = which(args[0]) if "/" not in args[0] else args[0]
    return args


def last_line(text: str) -> str:
    """The last line of ``text`` that is not blank, stripped ("" if there is none)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` (no shell); raise :class:`ToolError` if it fails and ``check`` is set."""
    args = _resolve(argv)
    log.debug("run: %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{shlex.join(args)} timed out after {timeout} s") from exc
    except OSError as exc:
        raise ToolError(f"cannot run {args[0]}: {exc.strerror}") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace")
        log.debug(
            "%s failed with exit code %d; its stderr:\n%s",
            shlex.join(args),
            proc.returncode,
            err.rstrip() or "(nothing)",
        )
        tail = last_line(err) or f"exit code {proc.returncode}"
        raise ToolError(f"{shlex.join(args)} failed: {tail}", stderr=err)
    return proc


def spawn(
    argv: Sequence[str | Path],
    *,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (no shell) and return at once: for a process that runs beside ours
    (a VM). ``stdin``/``stdout``/``stderr`` as for :class:`subprocess.Popen`
    (``subprocess.PIPE``, ``subprocess.STDOUT``, a file descriptor, None: inherited)."""
    args = _resolve(argv)
    log.debug("start: %s", shlex.join(args))
    try:
        return subprocess.Popen(
            args, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=new_session
        )
    except OSError as exc:
        raise ToolError(f"cannot run {args[0]}: {exc.strerror}") from exc
