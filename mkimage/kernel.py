"""Getting a kernel for the guest: a Debian kernel package fetched and unpacked into a cache.

``fetch_kernel`` runs ``apt-get download`` for a ``linux-image-*`` package (the
newest of a series, by default bookworm-security's 6.12), by default the signed one
(``linux-image-X-amd64`` from linux-signed-amd64: its vmlinuz carries Debian's Secure
Boot signature; the modules of both packages are the same, signed by the build's own
key), ``signed=False`` the ``-unsigned`` one; unpacks it with
``dpkg -x`` without touching the host's /boot, and runs ``depmod -b`` since the
.deb ships no modules.dep. ``kernel_from_dirs`` takes any kernel image and
modules directory instead.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from mkimage.cachelock import cache_lock
from mkimage.debs import download_and_extract
from overlayboot.errors import OverlaybootError
from overlayboot.run import run

DEFAULT_SERIES = "6.12"
DEFAULT_CACHE = Path(os.environ.get("OVERLAYBOOT_CACHE", "build/cache"))


class KernelError(OverlaybootError):
    """No such kernel package, or a kernel tree that lacks what the boot needs."""

    exit_code = 6


@dataclass(frozen=True)
class Kernel:
    """A kernel image with its modules tree (``modules/<version>/``) and config."""

    version: str
    image: Path
    modules: Path  # the lib/modules/<version> directory
    config: Path | None

    def module_dep(self) -> Path:
        return self.modules / "modules.dep"


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", name))


def package_pattern(series: str, flavour: str = "amd64", *, signed: bool = True) -> str:
    """The regex of the package names of ``series`` (``6.12`` or an exact ``6.12.118+deb12``):
    ``linux-image-6.12.118+deb12-amd64`` (signed) or ``…-amd64-unsigned``; never the
    cloud or rt flavours, nor -dbg."""
    suffix = "" if signed else "-unsigned"
    if re.fullmatch(r"\d+\.\d+\.\d+.*", series):
        return rf"^linux-image-{re.escape(series)}-{flavour}{suffix}$"
    abi = r"[.][0-9][.0-9]*(\+deb[0-9]+|-[0-9]+)"
    return rf"^linux-image-{re.escape(series)}{abi}-{flavour}{suffix}$"


def find_package(
    series: str = DEFAULT_SERIES, flavour: str = "amd64", *, signed: bool = True
) -> str:
    """The newest package of ``series`` apt knows (see :func:`package_pattern`)."""
    pattern = package_pattern(series, flavour, signed=signed)
    out = run(["apt-cache", "search", "--names-only", pattern]).stdout.decode()
    names = [line.split(" - ")[0].strip() for line in out.splitlines() if line.strip()]
    names = [n for n in names if re.search(pattern, n)]
    if not names:
        raise KernelError(
            f"no Debian kernel package for series {series} ({flavour})",
            "run apt-get update, or give --series 6.1 / an exact version",
        )
    return max(names, key=_version_key)


def kernel_from_dirs(image: Path, modules: Path) -> Kernel:
    """A kernel given as an image file and its ``lib/modules/<version>`` directory."""
    if not image.is_file():
        raise KernelError(f"kernel image {image} does not exist")
    if not (modules / "modules.dep").is_file() and not (modules / "kernel").is_dir():
        raise KernelError(f"{modules} is not a kernel modules directory (no modules.dep)")
    config = None
    for cand in (image.parent / f"config-{modules.name}", modules / "config"):
        if cand.is_file():
            config = cand
    return Kernel(modules.name, image, modules, config)


def _unpack(pkg: str, root: Path, debs: Path) -> None:
    """``apt-get download`` the package into ``debs`` and unpack it at ``root``."""
    if root.exists():
        shutil.rmtree(root)
    tmp = download_and_extract(pkg, debs, root)
    versions = sorted(p.name for p in (tmp / "lib/modules").iterdir())
    if not versions:
        raise KernelError(f"{pkg} holds no modules directory")
    run(["depmod", "-b", tmp, versions[-1]])
    tmp.rename(root)


def fetch_kernel(
    cache: Path = DEFAULT_CACHE, series: str = DEFAULT_SERIES, *, signed: bool = True
) -> Kernel:
    """Download and unpack a Debian kernel into ``cache``; reuse it if already there."""
    pkg = find_package(series, signed=signed)
    root = cache / "kernels" / pkg
    stamp = root / ".complete"
    with cache_lock(cache, f"kernel-{pkg}"):
        if not stamp.exists():
            _unpack(pkg, root, cache / "debs")
            stamp.write_text(pkg + "\n")
    versions = sorted(p.name for p in (root / "lib/modules").iterdir())
    version = versions[-1]
    image = root / "boot" / f"vmlinuz-{version}"
    config = root / "boot" / f"config-{version}"
    return Kernel(
        version, image, root / "lib/modules" / version, config if config.exists() else None
    )
