"""Secure Boot: Debian's signed boot chain (shim → GRUB → kernel) for the ISO's EFI image.

A PC with Secure Boot on starts only EFI binaries signed by a key in its ``db``: on stock
PCs, Microsoft's third-party UEFI CA, which signs ``shim``. Debian's chain is:

- ``shimx64.efi.signed`` (package shim-signed, signed by Microsoft) as
  ``/EFI/BOOT/BOOTX64.EFI``; shim carries Debian's CA and starts ``grubx64.efi`` from its
  own directory after checking its signature;
- ``gcdx64.efi.signed`` (package grub-efi-amd64-signed, signed by Debian: the removable-
  media GRUB, every module it needs built in) as ``/EFI/BOOT/grubx64.efi``. Its built-in
  config sources ``$prefix/grub.cfg`` with the prefix ``/boot/grub`` on the device it was
  started from (else it searches for ``/.disk/info``): booted from a CD that is the ISO's
  menu itself; from the stick it is the ESP, where :func:`efi_files` puts a
  ``/boot/grub/grub.cfg`` that finds the ISO by its volume UUID and sources its menu;
- the kernel, verified by GRUB through shim: Debian's signed ``vmlinuz``
  (mkimage.kernel fetches it by default); its modules are signed by the kernel build's
  own key, which the kernel trusts, and the kernel locks itself down under Secure Boot.

No fallback (``fbx64.efi``) and no MokManager (``mmx64.efi``): the chain needs no MOK.
The packages are fetched with ``apt-get download`` into the cache and unpacked with
``dpkg -x`` (apt checks them against the signed archive index); the binaries are checked
to carry an Authenticode signature (:func:`pe_signed`). Without the chain (``off``, or
``auto`` with an unsigned kernel) the EFI image is GRUB's plain ``grub-mkimage`` build,
as before.
"""

from __future__ import annotations

import enum
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from mkimage.cachelock import cache_lock
from mkimage.debs import download_and_extract
from overlayboot.errors import OverlaybootError, UsageError
from overlayboot.run import run

SHIM_PACKAGE = "shim-signed"
GRUB_PACKAGE = "grub-efi-amd64-signed"
SHIM_FILE = Path("usr/lib/shim/shimx64.efi.signed")
GRUB_FILE = Path("usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed")
PE_SECURITY_DIRECTORY = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY: the Authenticode certificates


class SecureBootError(OverlaybootError):
    """The signed boot chain cannot be fetched or does not fit the kernel."""

    exit_code = 6


class Mode(enum.Enum):
    """``on``: the signed chain (the kernel must be signed); ``off``: plain GRUB; ``auto``:
    the signed chain when the kernel is signed."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


MODES = tuple(m.value for m in Mode)


@dataclass(frozen=True)
class SignedBoot:
    """The signed EFI binaries of the chain, unpacked in the cache."""

    shim: Path
    grub: Path
    versions: tuple[str, str]  # of shim-signed and grub-efi-amd64-signed


@dataclass(frozen=True)
class CertTable:
    """Where a PE image's Authenticode certificates are: the security directory entry (its
    offset in the file) and the table it points to (offset and size; 0, 0 if unsigned)."""

    entry: int
    offset: int
    size: int


def cert_table(path: Path) -> CertTable | None:
    """The certificate table of the PE image ``path``, or None if it is not a PE image."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if len(head) < 0x40 or head[:2] != b"MZ":
        return None
    (pe,) = struct.unpack_from("<I", head, 0x3C)
    if pe + 24 + 2 > len(head) or head[pe : pe + 4] != b"PE\0\0":
        return None
    opt = pe + 24
    (magic,) = struct.unpack_from("<H", head, opt)
    dirs = {0x10B: 96, 0x20B: 112}.get(magic)  # PE32, PE32+: where the data directories begin
    if dirs is None:
        return None
    entry = opt + dirs + 8 * PE_SECURITY_DIRECTORY
    if entry + 8 > len(head):
        return None
    offset, size = struct.unpack_from("<II", head, entry)
    return CertTable(entry, offset, size)


def pe_signed(path: Path) -> bool:
    """``path`` is a PE image with an Authenticode signature (a non-empty certificate
    table; what ``sbverify --list`` lists). False for anything that is not PE."""
    table = cert_table(path)
    return table is not None and table.offset != 0 and table.size > 0


def _candidate(pkg: str) -> str:
    """The version ``apt-get download`` would fetch."""
    out = run(["apt-cache", "policy", pkg]).stdout.decode()
    m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    if m is None or m.group(1) == "(none)":
        raise SecureBootError(
            f"apt knows no package {pkg}", "run apt-get update (Debian's main archive)"
        )
    return m.group(1)


def _unpack(pkg: str, version: str, cache: Path) -> Path:
    """``pkg`` at ``version`` unpacked under ``cache/secureboot`` (once; reused)."""
    root = cache / "secureboot" / f"{pkg}_{version.replace(':', '%')}"
    with cache_lock(cache, f"secureboot-{pkg}"):
        if (root / ".complete").exists():
            return root
        tmp = download_and_extract(f"{pkg}={version}", cache / "debs", root)
        (tmp / ".complete").write_text(f"{pkg} {version}\n")
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    return root


def fetch_signed_boot(cache: Path) -> SignedBoot:
    """shim and GRUB, signed, from Debian's packages (fetched into ``cache`` once)."""
    versions = (_candidate(SHIM_PACKAGE), _candidate(GRUB_PACKAGE))
    shim = _unpack(SHIM_PACKAGE, versions[0], cache) / SHIM_FILE
    grub = _unpack(GRUB_PACKAGE, versions[1], cache) / GRUB_FILE
    for path in (shim, grub):
        if not path.is_file() or not pe_signed(path):
            raise SecureBootError(f"{path} is missing or not a signed EFI binary")
    return SignedBoot(shim, grub, versions)


def resolve(mode: Mode, kernel_image: Path, cache: Path) -> SignedBoot | None:
    """The chain to put on the image for ``mode`` and this kernel, or None (plain GRUB)."""
    if mode is Mode.OFF:
        return None
    signed = pe_signed(kernel_image)
    if not signed and mode is Mode.ON:
        raise UsageError(
            f"the kernel {kernel_image} is not signed: under Secure Boot GRUB would refuse it",
            "use Debian's signed kernel (overlayboot kernel fetch), or --secure-boot off",
        )
    return fetch_signed_boot(cache) if signed else None


def redirect_config(uuid: str) -> str:
    """The ESP's /boot/grub/grub.cfg: find the ISO by its volume UUID, source its menu."""
    return (
        f"search --no-floppy --fs-uuid --set=root {uuid}\n"
        "set prefix=($root)/boot/grub\n"
        "source $prefix/grub.cfg\n"
    )


def efi_files(chain: SignedBoot, redirect: Path) -> dict[str, Path]:
    """What the EFI image holds with the signed chain: path in the FAT → file."""
    return {
        "EFI/BOOT/BOOTX64.EFI": chain.shim,
        "EFI/BOOT/grubx64.efi": chain.grub,
        "boot/grub/grub.cfg": redirect,
    }
