"""The image description: a TOML file (``image.toml``) read into a frozen :class:`ImageSpec`.

Every key is optional; unknown keys are errors (a typo must not be silently ignored).
Relative paths are taken from the directory of the file::

    label = "OVERLAYBOOT"            # ISO volume label = medium label baked in the initramfs
    output = "build"                 # where everything is written
    source_date_epoch = 1700000000   # default: $SOURCE_DATE_EPOCH or a fixed constant

    [kernel]
    series = "6.12"                  # Debian kernel series or exact version, or:
    # image = "/boot/vmlinuz-6.1.0-28-amd64"
    # modules = "/lib/modules/6.1.0-28-amd64"

    [rootfs]
    source = "busybox"               # "busybox", "debian" (slow), or a directory or tarball
    extra_files = { "/etc/motd" = "files/motd" }   # path in the root = file on the host
    suite = "bookworm"               # source = "debian": the Debian suite debootstrap installs
    packages = ["less", "vim-tiny"]  # source = "debian": more packages (debootstrap --include)
    script = "files/setup.sh"        # run in the root (chroot, /bin/sh, as root) after the
                                     # extra files, with SOURCE_DATE_EPOCH set; then removed

    [initramfs]
    compression = "zstd"             # zstd, gzip, xz, none
    params = []                      # default boot parameters baked into the initramfs

    [squashfs]
    compression = "zstd"
    level = 15                       # optional

    [boot]
    params = []                      # added to every GRUB entry
    timeout = 5                      # seconds the GRUB menu waits
    serial = true                    # GRUB and the kernel also on ttyS0 at 115200
    secure_boot = "auto"             # Debian's signed shim + GRUB in the EFI image: "on",
                                     # "off", or "auto" (on when the kernel is signed)

    [usb]
    persistence_size = "256M"
    persistence_label = "overlayboot-rw"
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mkimage.kernel import DEFAULT_SERIES
from mkimage.secureboot import MODES as SECURE_BOOT_MODES
from overlayboot.errors import UsageError

DEFAULT_LABEL = "OVERLAYBOOT"
ROOT_SOURCES = ("busybox", "debian")
INITRAMFS_COMPRESSIONS = ("zstd", "gzip", "xz", "none")
SQUASHFS_COMPRESSIONS = ("zstd", "xz", "gzip", "lz4", "lzo")


@dataclass(frozen=True)
class KernelSpec:
    series: str = DEFAULT_SERIES
    image: Path | None = None
    modules: Path | None = None


@dataclass(frozen=True)
class RootfsSpec:
    source: str = "busybox"  # busybox, debian, or a path (then ``path`` is set)
    path: Path | None = None
    extra_files: tuple[tuple[PurePosixPath, Path], ...] = ()
    suite: str = "bookworm"  # the Debian suite (source = debian)
    packages: tuple[str, ...] = ()  # more Debian packages (source = debian)
    script: Path | None = None  # run in the root after the extra files


@dataclass(frozen=True)
class ImageSpec:
    """What ``overlayboot build all`` builds."""

    label: str = DEFAULT_LABEL
    output: Path = Path("build")
    source_date_epoch: int | None = None
    kernel: KernelSpec = field(default_factory=KernelSpec)
    rootfs: RootfsSpec = field(default_factory=RootfsSpec)
    initramfs_compression: str = "zstd"
    initramfs_params: tuple[str, ...] = ()
    squashfs_compression: str = "zstd"
    squashfs_level: int | None = None
    boot_params: tuple[str, ...] = ()
    timeout: int = 5
    serial: bool = True
    secure_boot: str = "auto"  # a mkimage.secureboot.Mode value
    persistence_size: str = "256M"
    persistence_label: str = "overlayboot-rw"


SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "": {"label": str, "output": str, "source_date_epoch": int},
    "kernel": {"series": str, "image": str, "modules": str},
    "rootfs": {"source": str, "extra_files": dict, "suite": str, "packages": list, "script": str},
    "initramfs": {"compression": str, "params": list},
    "squashfs": {"compression": str, "level": int},
    "boot": {"params": list, "timeout": int, "serial": bool, "secure_boot": str},
    "usb": {"persistence_size": str, "persistence_label": str},
}


def _check(data: dict[str, Any], where: str) -> None:
    for key, value in data.items():
        if where == "" and key in SCHEMA and key != "":
            if not isinstance(value, dict):
                raise UsageError(f"[{key}] must be a table")
            _check(value, key)
            continue
        allowed = SCHEMA[where]
        name = f"{where}.{key}" if where else key
        if key not in allowed:
            raise UsageError(f"unknown setting {name}", f"known: {', '.join(sorted(allowed))}")
        want = allowed[key]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            kind = want.__name__ if isinstance(want, type) else "value"
            raise UsageError(f"{name} must be a {kind}, not {value!r}")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise UsageError(f"{name} must be a list of strings")


_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]*")


def _rootfs(
    r: dict[str, Any],
    source: str,
    extra: tuple[tuple[PurePosixPath, Path], ...],
    path: Callable[[str], Path],
) -> RootfsSpec:
    """[rootfs]: suite and packages only for a Debian root; names as Debian spells them."""
    packages = tuple(r.get("packages", ()))
    if source != "debian" and ("suite" in r or packages):
        raise UsageError('rootfs.suite and rootfs.packages need rootfs.source = "debian"')
    for name in (*packages, r.get("suite", "bookworm")):
        if not _NAME.fullmatch(name):
            raise UsageError(f"{name!r} is not a Debian package or suite name")
    return RootfsSpec(
        source=source if source in ROOT_SOURCES else "path",
        path=None if source in ROOT_SOURCES else path(source),
        extra_files=extra,
        suite=r.get("suite", "bookworm"),
        packages=packages,
        script=path(r["script"]) if "script" in r else None,
    )


def spec_from_dict(data: dict[str, Any], base: Path = Path()) -> ImageSpec:
    """An :class:`ImageSpec` from parsed TOML; relative paths are taken from ``base``."""
    _check(data, "")

    def path(text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else base / p

    k = data.get("kernel", {})
    r = data.get("rootfs", {})
    i = data.get("initramfs", {})
    s = data.get("squashfs", {})
    b = data.get("boot", {})
    u = data.get("usb", {})
    source = r.get("source", "busybox")
    if any(not isinstance(src, str) for src in r.get("extra_files", {}).values()):
        raise UsageError("rootfs.extra_files values must be paths (strings)")
    extra = tuple(
        (PurePosixPath("/") / PurePosixPath(str(dest)), path(str(src)))
        for dest, src in sorted(r.get("extra_files", {}).items())
    )
    for what, value, known in (
        ("initramfs.compression", i.get("compression", "zstd"), INITRAMFS_COMPRESSIONS),
        ("squashfs.compression", s.get("compression", "zstd"), SQUASHFS_COMPRESSIONS),
        ("boot.secure_boot", b.get("secure_boot", "auto"), SECURE_BOOT_MODES),
    ):
        if value not in known:
            raise UsageError(f"{what} = {value!r} is not one of {', '.join(known)}")
    return ImageSpec(
        label=data.get("label", DEFAULT_LABEL),
        output=path(data.get("output", "build")),
        source_date_epoch=data.get("source_date_epoch"),
        kernel=KernelSpec(
            series=k.get("series", DEFAULT_SERIES),
            image=path(k["image"]) if "image" in k else None,
            modules=path(k["modules"]) if "modules" in k else None,
        ),
        rootfs=_rootfs(r, source, extra, path),
        initramfs_compression=i.get("compression", "zstd"),
        initramfs_params=tuple(i.get("params", ())),
        squashfs_compression=s.get("compression", "zstd"),
        squashfs_level=s.get("level"),
        boot_params=tuple(b.get("params", ())),
        timeout=b.get("timeout", 5),
        serial=b.get("serial", True),
        secure_boot=b.get("secure_boot", "auto"),
        persistence_size=u.get("persistence_size", "256M"),
        persistence_label=u.get("persistence_label", "overlayboot-rw"),
    )


def load_spec(file: Path) -> ImageSpec:
    """Read an image.toml."""
    try:
        with open(file, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{file}: {exc}") from exc
    return spec_from_dict(data, file.parent)
