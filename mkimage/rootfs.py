"""The root filesystem tree of the image: the built-in busybox root, Debian, or the user's own.

``build_busybox_root`` makes the default root in about a second: a static busybox with its
applet links, a minimal /etc and an init script (``INIT``) that needs no init daemon: it
mounts the API filesystems, prints ``OVERLAYBOOT-ROOT: up``, the kernel release and the
/proc/mounts line of ``/``, runs a shell on the console and, when that shell exits (``exit``,
Ctrl-D, or the ``poweroff``/``reboot`` functions of its profile), syncs and hands over to
``/run/initramfs/shutdown`` as systemd-shutdown does (overlayboot's initramfs leaves one
there: it unmounts the root and the persistence partition), or else powers off (or reboots)
with ``-f``. busybox's own ``poweroff`` signals PID 1, which a script cannot take,
so the profile replaces ``poweroff``/``reboot``/``halt`` with functions that leave the shell.

``build_debian_root`` runs ``debootstrap --variant=minbase`` with systemd-sysv (slow: minutes,
needs root and the network). ``copy_root`` takes any directory or tarball. Every builder
checks the result with :func:`check_root` and writes under a temporary name first.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mkimage.atomic import atomic_output
from mkimage.elf import read_elf
from overlayboot.errors import OverlaybootError
from overlayboot.run import run, which

# where an init may live, in the order the kernel and the boot flow look
INIT_CANDIDATES = ("sbin/init", "lib/systemd/systemd", "usr/lib/systemd/systemd", "init")
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_INCLUDE = ("systemd-sysv",)
HOSTNAME = "overlayboot"
ROOT_MARKER = "OVERLAYBOOT-ROOT: up"

DIRS: dict[str, int] = {
    "bin": 0o755,
    "sbin": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "etc": 0o755,
    "dev": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "run": 0o755,
    "tmp": 0o1777,
    "root": 0o700,
    "home": 0o755,
    "mnt": 0o755,
    "var": 0o755,
    "var/tmp": 0o1777,
}

INIT = f"""#!/bin/sh
# /sbin/init of the overlayboot default root (busybox sh as PID 1, no init daemon).
# Mounts what is not mounted yet, says it is up, runs a shell on the console, and powers
# off when that shell ends (exit, Ctrl-D, or the poweroff/reboot functions of
# /etc/profile, which write the wanted action to /run/shutdown-action first).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mounted() {{ grep -q " $1 " /proc/mounts 2>/dev/null; }}
mounted /proc || mount -t proc -o nosuid,nodev,noexec proc /proc
mounted /sys || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mounted /dev || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
mounted /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
hostname -F /etc/hostname 2>/dev/null
echo "{ROOT_MARKER} $(uname -r)"
echo "OVERLAYBOOT-ROOT: / is $(grep -v '^rootfs ' /proc/mounts | grep ' / ' | tail -n 1)"
action=poweroff
while :; do
    rm -f /run/shutdown-action
    setsid cttyhack sh -l
    [ -f /run/shutdown-action ] && read -r action < /run/shutdown-action
    case $action in poweroff | reboot | halt) break ;; esac
done
echo "OVERLAYBOOT-ROOT: $action"
sync
# systemd's protocol: an initramfs that left /run/initramfs/shutdown takes the machine down
# (it unmounts the root); /dev /proc /sys bound in, the old root at /oldroot, the verb as $1
handover() {{
    d=/run/initramfs
    mount --make-rprivate / && mount --bind "$d" "$d" || return 1
    for api in dev proc sys; do
        [ -d "$d/$api" ] && mount --bind "/$api" "$d/$api"
    done
    mkdir -p "$d/oldroot" && cd "$d" && pivot_root . oldroot || return 1
    exec /shutdown "$action" < /dev/console > /dev/console 2>&1
}}
[ -x /run/initramfs/shutdown ] && handover
"$action" -f
"""

PROFILE = """# /etc/profile of the overlayboot default root
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
PS1='overlayboot:\\w# '
# PID 1 is a script: leave the shell and let it power off or reboot
poweroff() { echo poweroff > /run/shutdown-action; sync; exit 0; }
reboot() { echo reboot > /run/shutdown-action; sync; exit 0; }
halt() { echo halt > /run/shutdown-action; sync; exit 0; }
"""

ETC: dict[str, tuple[str, int]] = {
    "etc/passwd": (
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        0o644,
    ),
    "etc/group": ("root:x:0:\nnogroup:x:65534:\n", 0o644),
    "etc/shadow": ("root::19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n", 0o640),
    "etc/hostname": (HOSTNAME + "\n", 0o644),
    "etc/hosts": (f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n", 0o644),
    "etc/fstab": (
        "# the root and the API filesystems are mounted by the initramfs and init\n",
        0o644,
    ),
    "etc/profile": (PROFILE, 0o644),
    "etc/os-release": (
        'NAME="overlayboot"\nID=overlayboot\nPRETTY_NAME="overlayboot busybox root"\n',
        0o644,
    ),
    "sbin/init": (INIT, 0o755),
}


class RootfsError(OverlaybootError):
    """A root tree is missing, is not a root, or cannot be built."""


@dataclass(frozen=True)
class Root:
    """A built root tree and the init it boots."""

    path: Path
    init: PurePosixPath


def _inside(root: Path, rel: str, depth: int = 0) -> Path | None:
    """``rel`` resolved inside ``root``: absolute symlinks are taken relative to the root."""
    if depth > 40:
        return None
    cur = root
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    while parts:
        part = parts.pop(0)
        if part == "..":
            cur = cur.parent if cur != root else root
            continue
        nxt = cur / part
        if nxt.is_symlink():
            target = os.readlink(nxt)
            rest = "/".join(parts)
            if target.startswith("/"):
                return _inside(root, f"{target}/{rest}", depth + 1)
            base = str(cur.relative_to(root))
            return _inside(root, f"{base}/{target}/{rest}", depth + 1)
        cur = nxt
    return cur


def find_init(root: Path) -> PurePosixPath | None:
    """The first executable init of ``root`` (symlinks resolved inside the root)."""
    for rel in INIT_CANDIDATES:
        path = _inside(root, rel)
        if path is not None and path.is_file() and os.access(path, os.X_OK):
            return PurePosixPath("/" + rel)
    return None


def check_root(root: Path) -> Root:
    """``root`` as a :class:`Root`, or a :class:`RootfsError` saying why it is not one."""
    if not root.exists():
        raise RootfsError(f"root directory {root} does not exist")
    if not root.is_dir():
        raise RootfsError(f"{root} is not a directory")
    init = find_init(root)
    if init is None:
        wanted = ", ".join("/" + c for c in INIT_CANDIDATES)
        raise RootfsError(
            f"{root} is not a root filesystem: no executable init ({wanted})",
            "build one with: overlayboot build rootfs",
        )
    return Root(root, init)


# --- the built-in busybox root -------------------------------------------------------


def static_busybox(busybox: Path | None = None) -> Path:
    """The host's static busybox (Debian's busybox-static), checked to be static."""
    path = busybox if busybox is not None else Path(which("busybox"))
    if not path.is_file():
        raise RootfsError(f"{path} not found", "install the Debian package busybox-static")
    if read_elf(path).interpreter is not None:
        raise RootfsError(
            f"{path} is not statically linked", "install the Debian package busybox-static"
        )
    return path


def populate_busybox_root(root: Path, busybox: Path | None = None) -> None:
    """Write the default root's tree into the empty directory ``root``."""
    bb = static_busybox(busybox)
    for rel, mode in DIRS.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        (root / rel).chmod(mode)
    shutil.copyfile(bb, root / "bin/busybox")
    (root / "bin/busybox").chmod(0o755)
    applets = run([str(bb), "--list-full"]).stdout.decode().split()
    for applet in sorted(set(applets)):
        rel = applet.strip("/")
        if not rel or rel in ("bin/busybox", "sbin/init", "linuxrc", "init"):
            continue
        link = root / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    for rel, (text, mode) in ETC.items():
        (root / rel).write_text(text)
        (root / rel).chmod(mode)


def build_busybox_root(dest: Path, busybox: Path | None = None) -> Root:
    """The default root at ``dest`` (replacing what was there, never left half-built)."""
    static_busybox(busybox)
    with atomic_output(dest) as tmp:
        tmp.mkdir(mode=0o755)
        populate_busybox_root(tmp, busybox)
        check_root(tmp)
    return check_root(dest)


# --- a root from a directory or a tarball ---------------------------------------------


def copy_root(source: Path, dest: Path) -> Root:
    """A copy of the directory or tarball ``source`` at ``dest``, checked to be a root."""
    if not source.exists():
        raise RootfsError(f"root source {source} does not exist")
    with atomic_output(dest) as tmp:
        if source.is_dir():
            check_root(source)
            tmp.mkdir()
            run(["cp", "-a", "--", f"{source}/.", str(tmp)])
        elif tarfile.is_tarfile(source):
            tmp.mkdir()
            run(["tar", "-x", "--numeric-owner", "-f", str(source), "-C", str(tmp)])
        else:
            raise RootfsError(f"{source} is neither a directory nor a tar archive")
        check_root(tmp)
    return check_root(dest)


# --- Debian ----------------------------------------------------------------------------


def build_debian_root(
    dest: Path,
    *,
    suite: str = DEBIAN_SUITE,
    mirror: str = DEBIAN_MIRROR,
    include: tuple[str, ...] = DEBIAN_INCLUDE,
) -> Root:
    """``debootstrap --variant=minbase`` plus ``include`` at ``dest`` (slow; root; network)."""
    if os.geteuid() != 0:
        raise RootfsError("debootstrap needs root", "run as root, or use the busybox root")
    which("debootstrap")
    with atomic_output(dest) as tmp:
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(include)}",
                suite,
                str(tmp),
                mirror,
            ]
        )
        (tmp / "etc/hostname").write_text(HOSTNAME + "\n")
        shadow = tmp / "etc/shadow"
        if shadow.is_file():  # root logs in on the console without a password
            lines = shadow.read_text().splitlines()
            lines = [
                "root::" + ln.split(":", 2)[2] if ln.startswith("root:") else ln for ln in lines
            ]
            shadow.write_text("\n".join(lines) + "\n")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (tmp / cache).glob("*"):
                if f.is_file():
                    f.unlink()
        check_root(tmp)
    return check_root(dest)
