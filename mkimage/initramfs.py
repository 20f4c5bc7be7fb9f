"""The initramfs: busybox, the boot modules, the frozen Python runtime, the hooks and /init.

Layout (paths inside the archive; the boot flow relies on them)::

    /init                                 mkimage/init.sh (POSIX sh, busybox)
    /bin/busybox + applet symlinks        at the paths ``busybox --list-full`` gives
    /lib/modules/VERSION/kernel/...       the modules, uncompressed (.ko), with a
    /lib/modules/VERSION/modules.dep      modules.dep of just those, and modules.builtin
    /usr/lib/overlayboot/modules.load     absolute paths of the modules, in load order
    /usr/lib/overlayboot/net-modules.load the network boot's (NIC, NFS), in load order
    /usr/lib/overlayboot/runtime/         the Python runtime (see mkimage.runtime)
    /usr/lib/overlayboot/hooks/           hooks/ of the repo
    /etc/overlayboot/image.conf           the image's settings, ``KEY='value'`` (sh)
    /dev/console, /dev/null               device nodes (archive-only: no root needed)
    /proc /sys /dev /run /tmp /mnt /root  mount points

No ``/etc/mtab`` (libfuse must not try to update it). The build is deterministic: every
entry's mtime is ``SOURCE_DATE_EPOCH``, owners are 0:0, order is sorted, and the archive
is written under a temporary name and renamed.
"""

from __future__ import annotations

import gzip
import lzma
import re
import shlex
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from mkimage import runtime as rt
from mkimage.cpio import (
    Compression,
    Entry,
    Kind,
    check_kernel_support,
    entries_from_tree,
    write_archive,
)
from mkimage.elf import read_elf
from mkimage.kernel import Kernel
from mkimage.modules import (
    BOOT_MODULES,
    NET_MODULES,
    ModuleSet,
    module_name,
    parse_dep,
    resolve,
    resolve_extra,
)
from overlayboot.errors import OverlaybootError, UsageError
from overlayboot.run import run, which

DEFAULT_SOURCE_DATE_EPOCH = 1700000000  # 2023-11-14, when SOURCE_DATE_EPOCH is not set
DEFAULT_LABEL = "OVERLAYBOOT"

RUNTIME_DIR = PurePosixPath("/usr/lib/overlayboot/runtime")
HOOKS_DIR = PurePosixPath("/usr/lib/overlayboot/hooks")
MODULES_LOAD = PurePosixPath("/usr/lib/overlayboot/modules.load")
NET_MODULES_LOAD = PurePosixPath("/usr/lib/overlayboot/net-modules.load")
IMAGE_CONF = PurePosixPath("/etc/overlayboot/image.conf")
INIT_SCRIPT = Path(__file__).with_name("init.sh")

# mount points and scratch dirs, with their modes
DIRECTORIES: dict[str, int] = {
    "dev": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "run": 0o755,
    "tmp": 0o1777,
    "mnt": 0o755,
    "root": 0o700,
    "etc": 0o755,
}
# (path, major, minor, mode): what the kernel opens before /init mounts devtmpfs
DEVICES: tuple[tuple[str, int, int, int], ...] = (
    ("dev/console", 5, 1, 0o600),
    ("dev/null", 1, 3, 0o666),
)
_LABEL_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


class InitramfsError(OverlaybootError):
    """The initramfs cannot be built from the inputs given."""


@dataclass(frozen=True)
class ImageConfig:
    """Settings baked into ``/etc/overlayboot/image.conf``."""

    label: str = DEFAULT_LABEL  # volume label of the boot medium
    params: tuple[str, ...] = ()  # default boot parameters (kernel command-line syntax)

    def __post_init__(self) -> None:
        if not _LABEL_RE.fullmatch(self.label):
            raise UsageError(
                f"bad medium label {self.label!r}", "use 1-32 characters of A-Z a-z 0-9 _ -"
            )


@dataclass(frozen=True)
class InitramfsSpec:
    """Everything an initramfs is built from."""

    kernel: Kernel
    compression: Compression = Compression.ZSTD
    source_date_epoch: int = DEFAULT_SOURCE_DATE_EPOCH
    image: ImageConfig = field(default_factory=ImageConfig)
    modules: tuple[str, ...] = BOOT_MODULES
    net_modules: tuple[str, ...] = NET_MODULES  # loaded by phase network only
    busybox: Path = Path("/bin/busybox")
    hooks: Path | None = None  # default: hooks/ of the repo
    runtime: rt.RuntimeSpec = field(default_factory=rt.RuntimeSpec)


@dataclass(frozen=True)
class BuiltInitramfs:
    """What a build produced."""

    path: Path
    size: int
    entries: int
    modules: ModuleSet
    runtime_sizes: rt.RuntimeSizes


def image_conf(spec: InitramfsSpec, modules: ModuleSet) -> str:
    """The text of ``/etc/overlayboot/image.conf``: sh assignments, values quoted."""
    values = {
        "OVERLAYBOOT_LABEL": spec.image.label,
        "OVERLAYBOOT_PARAMS": " ".join(spec.image.params),
        "OVERLAYBOOT_KERNEL": spec.kernel.version,
        "OVERLAYBOOT_RUNTIME": str(RUNTIME_DIR),
        "OVERLAYBOOT_RUNTIME_RUN": str(rt.RUN_COPY),
        "OVERLAYBOOT_DAEMON_ARGV0": rt.DAEMON_ARGV0,
        "OVERLAYBOOT_HOOKS": str(HOOKS_DIR),
        "OVERLAYBOOT_MODULES_LOAD": str(MODULES_LOAD),
        "OVERLAYBOOT_NET_MODULES_LOAD": str(NET_MODULES_LOAD),
        "OVERLAYBOOT_BUILTIN_MODULES": " ".join(modules.builtin),
    }
    head = "# overlayboot image settings, written by mkimage (sourced by /init and the hooks)\n"
    return head + "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


# --- parts ---------------------------------------------------------------------------


def busybox_entries(busybox: Path) -> list[Entry]:
    """The static busybox and a symlink per applet, where ``--list-full`` puts it."""
    if not busybox.is_file():
        raise InitramfsError(f"{busybox} not found", "install the Debian package busybox-static")
    if read_elf(busybox).interpreter is not None:
        raise InitramfsError(
            f"{busybox} is not statically linked", "install the Debian package busybox-static"
        )
    listing = run([str(busybox), "--list-full"]).stdout.decode().split()
    entries = [Entry.file("bin/busybox", busybox, 0o755)]
    for applet in sorted(set(listing)):
        path = applet.strip("/")
        if not path or path in ("bin/busybox", "linuxrc", "init"):
            continue
        entries.append(Entry.symlink(path, "/bin/busybox"))
    return entries


MODULE_COMPRESSIONS = (".xz", ".zst", ".gz")


def plain_name(rel: str) -> str:
    """A module's path in the initramfs: ``.ko``, whatever compression it was packaged with."""
    for ext in MODULE_COMPRESSIONS:
        if rel.endswith(".ko" + ext):
            return rel[: -len(ext)]
    return rel


def plain_module(src: Path) -> bytes | Path:
    """The module file as the kernel takes it (its signature is on the plain ELF): the
    initramfs is compressed as a whole, and busybox's insmod hands a compressed module
    to the kernel first, which refuses it with a line on the console, before unpacking it."""
    if src.name.endswith(".ko.xz"):
        return lzma.decompress(src.read_bytes())
    if src.name.endswith(".ko.gz"):
        return gzip.decompress(src.read_bytes())
    if src.name.endswith(".ko.zst"):
        return run(["zstd", "-dc", str(src)]).stdout
    return src


def module_entries(kernel: Kernel, modules: ModuleSet, net: ModuleSet | None = None) -> list[Entry]:
    """The module files, a modules.dep restricted to them, modules.builtin, the load orders
    (the boot's, and the network boot's extra ones)."""
    base = f"lib/modules/{kernel.version}"
    entries: list[Entry] = []
    net_files = net.files if net is not None else ()
    for rel in (*modules.files, *net_files):
        src = kernel.modules / rel
        if not src.is_file():
            raise InitramfsError(f"module file {src} is missing")
        entries.append(Entry.file(f"{base}/{plain_name(rel)}", plain_module(src)))
    included = set(modules.files) | set(net_files)
    table = parse_dep(kernel.module_dep().read_text())
    dep_lines = []
    for path, deps in sorted(table.values()):
        if path in included:
            kept = " ".join(plain_name(d) for d in deps if d in included)
            dep_lines.append(f"{plain_name(path)}: {kept}".rstrip())
    entries.append(Entry.file(f"{base}/modules.dep", "".join(f"{x}\n" for x in dep_lines).encode()))
    builtin = kernel.modules / "modules.builtin"
    if builtin.is_file():
        entries.append(Entry.file(f"{base}/modules.builtin", builtin))
    load = "".join(f"/{base}/{plain_name(rel)}\n" for rel in modules.files)
    entries.append(Entry.file(str(MODULES_LOAD), load.encode()))
    net_load = "".join(f"/{base}/{plain_name(rel)}\n" for rel in net_files)
    entries.append(Entry.file(str(NET_MODULES_LOAD), net_load.encode()))
    return entries


def tree_entries(tree: Path | None, prefix: PurePosixPath) -> list[Entry]:
    """A directory of the host under ``prefix`` (the directory alone if there is no tree)."""
    entries = [Entry.directory(str(prefix))]
    if tree is not None and tree.is_dir():
        entries += entries_from_tree(tree, prefix=str(prefix))
    return entries


def base_entries() -> list[Entry]:
    """/init, the mount points and the device nodes."""
    try:
        init = INIT_SCRIPT.read_bytes()
    except OSError as exc:
        raise InitramfsError(f"cannot read {INIT_SCRIPT}: {exc.strerror}") from exc
    entries = [Entry.file("init", init, 0o755)]
    entries += [Entry.directory(d, mode) for d, mode in DIRECTORIES.items()]
    entries += [Entry.device(p, Kind.CHAR, ma, mi, mode) for p, ma, mi, mode in DEVICES]
    return entries


def _restamp(entries: Iterable[Entry], mtime: int) -> list[Entry]:
    return [replace(e, mtime=mtime, uid=0, gid=0) for e in entries]


# --- the build -----------------------------------------------------------------------


def initramfs_entries(spec: InitramfsSpec, runtime_root: Path) -> tuple[list[Entry], ModuleSet]:
    """Every entry of the initramfs, with the runtime staged at ``runtime_root``."""
    modules = resolve(spec.kernel, spec.modules)
    hooks = spec.hooks if spec.hooks is not None else rt.repo_root() / "hooks"
    entries = base_entries()
    entries += busybox_entries(spec.busybox)
    net = resolve_extra(spec.kernel, spec.net_modules, modules)
    entries += module_entries(spec.kernel, modules, net)
    entries += tree_entries(runtime_root, RUNTIME_DIR)
    entries += tree_entries(hooks, HOOKS_DIR)
    entries.append(Entry.file(str(IMAGE_CONF), image_conf(spec, modules).encode()))
    return _restamp(entries, spec.source_date_epoch), modules


def build_initramfs(spec: InitramfsSpec, dest: Path) -> BuiltInitramfs:
    """Build the initramfs into ``dest`` (written aside and renamed: never half-written)."""
    check_kernel_support(spec.compression, spec.kernel.config)
    if spec.compression is Compression.ZSTD:
        which("zstd")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="overlayboot-initramfs-") as tmp:
        runtime_root = Path(tmp) / "runtime"
        rt.stage_runtime(runtime_root, spec.runtime, mtime=spec.source_date_epoch)
        sizes = rt.runtime_sizes(runtime_root)
        entries, modules = initramfs_entries(spec, runtime_root)
        write_archive(
            entries,
            dest,
            compression=spec.compression,
            source_date_epoch=spec.source_date_epoch,
        )
    return BuiltInitramfs(dest, dest.stat().st_size, len(entries), modules, sizes)


def runtime_sizes_in(members: Iterable[tuple[str, int]]) -> rt.RuntimeSizes:
    """The runtime's size by part from ``(archive path, size)`` pairs of an initramfs."""
    prefix = str(RUNTIME_DIR).strip("/") + "/"
    return rt.sizes_of(
        (name[len(prefix) :], size) for name, size in members if name.startswith(prefix)
    )


def module_names(modules: ModuleSet) -> list[str]:
    """The module names of a set, in load order."""
    return [module_name(p) for p in modules.files]
