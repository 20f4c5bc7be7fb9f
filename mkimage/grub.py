"""GRUB for the hybrid ISO: the boot menu (grub.cfg) and the BIOS and UEFI boot images.

What grub-mkrescue does, done here so that the result is reproducible and simple:
grub-mkrescue stamps the build time into the volume UUID that its core images search
for, gives the EFI FAT image a random serial, and adds an HFS+/APM/GPT layout for Macs.
Here the volume UUID comes from ``SOURCE_DATE_EPOCH`` (:func:`volume_uuid`), the FAT
serial too, and the ISO gets a plain MBR (see mkimage.iso).

- ``boot/grub/i386-pc/eltorito.img``: ``grub-mkimage -O i386-pc-eltorito``, the BIOS El
  Torito image (also started by the isohybrid MBR ``boot_hybrid.img`` from a USB stick);
- ``efi.img``: a FAT image holding ``/EFI/BOOT/BOOTX64.EFI`` (``grub-mkimage -O x86_64-efi``),
  the UEFI El Torito image and the ESP partition of the USB layout;
- both embed a config that finds the ISO by its volume UUID and sets the prefix to
  ``/boot/grub``, whose ``grub.cfg`` (:func:`grub_cfg`) is the menu, and whose
  ``i386-pc/`` and ``x86_64-efi/`` hold the modules GRUB loads at run time.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mkimage.secureboot import SignedBoot, efi_files, redirect_config
from overlayboot.errors import OverlaybootError, ToolError
from overlayboot.run import run, which

GRUB_LIB = Path("/usr/lib/grub")
BIOS_PLATFORM = "i386-pc"
EFI_PLATFORM = "x86_64-efi"
PLATFORM_PACKAGES = {BIOS_PLATFORM: "grub-pc-bin", EFI_PLATFORM: "grub-efi-amd64-bin"}
# in the core images; the rest are loaded from the ISO's /boot/grub/PLATFORM/
BIOS_CORE_MODULES = ("biosdisk", "iso9660", "part_msdos", "search", "search_fs_uuid")
EFI_CORE_MODULES = ("part_msdos", "part_gpt", "fat", "iso9660", "search", "search_fs_uuid")
MODULE_SUFFIXES = (".mod", ".lst")
EFI_IMAGE_KIB = 4096  # room for BOOTX64.EFI (~3 MiB with its modules)

KERNEL_PATH = "/boot/vmlinuz"
INITRD_PATH = "/boot/initramfs.img"
SERIAL_PARAMS = ("console=tty0", "console=ttyS0,115200")


class GrubError(OverlaybootError):
    """GRUB's boot images cannot be made."""


@dataclass(frozen=True)
class MenuEntry:
    """One GRUB menu entry: a title and the boot parameters it adds."""

    title: str
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class Menu:
    """The boot menu of the image."""

    label: str = "OVERLAYBOOT"
    timeout: int = 5
    params: tuple[str, ...] = ()  # on every entry, after the console ones
    persistence_label: str = "overlayboot-rw"
    serial: bool = True
    extra: tuple[MenuEntry, ...] = ()  # appended after the standard entries

    def entries(self) -> tuple[MenuEntry, ...]:
        """The standard entries, then the extra ones; the first is the default."""
        return (
            MenuEntry("overlayboot"),
            MenuEntry("overlayboot (copy to RAM)", ("overlayboot.toram",)),
            MenuEntry(
                "overlayboot (with persistence)",
                (f"overlayboot.upper=LABEL={self.persistence_label}",),
            ),
            MenuEntry("overlayboot (debug)", ("overlayboot.debug",)),
            MenuEntry("overlayboot (rescue shell)", ("overlayboot.break",)),
            *self.extra,
        )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def grub_cfg(menu: Menu) -> str:
    """The text of /boot/grub/grub.cfg."""
    lines = [
        "# overlayboot boot menu (written by mkimage)",
        "insmod all_video",
        "insmod iso9660",
        "insmod linux",
    ]
    if menu.serial:
        lines += [
            "insmod serial",
            "serial --unit=0 --speed=115200",
            "terminal_input serial console",
            "terminal_output serial console",
        ]
    lines += [f"set timeout={menu.timeout}", "set default=0", ""]
    console = SERIAL_PARAMS if menu.serial else ()
    for entry in menu.entries():
        params = " ".join((*console, *menu.params, *entry.params))
        lines += [
            f"menuentry {_quote(entry.title)} {{",
            f"    linux {KERNEL_PATH} {params}".rstrip(),
            f"    initrd {INITRD_PATH}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def volume_uuid(epoch: int) -> str:
    """GRUB's UUID of an ISO whose modification date is ``epoch`` (``YYYY-MM-DD-hh-mm-ss-00``)."""
    return time.strftime("%Y-%m-%d-%H-%M-%S-00", time.gmtime(epoch))


def modification_date(epoch: int) -> str:
    """xorriso's ``--modification-date`` for ``epoch``: ``YYYYMMDDhhmmss00``."""
    return time.strftime("%Y%m%d%H%M%S00", time.gmtime(epoch))


def platform_dir(platform: str) -> Path:
    """``/usr/lib/grub/PLATFORM``, or a :class:`ToolError` naming its Debian package."""
    path = GRUB_LIB / platform
    if not (path / "kernel.img").is_file():
        pkg = PLATFORM_PACKAGES[platform]
        raise ToolError(
            f"GRUB for {platform} not found in {path}",
            f"install the Debian package {pkg}: apt-get install {pkg}",
        )
    return path


def check_tools() -> None:
    """Every tool and GRUB platform the ISO needs, or a :class:`ToolError`."""
    for tool in ("grub-mkimage", "mformat", "mcopy", "xorriso"):
        which(tool)
    platform_dir(BIOS_PLATFORM)
    platform_dir(EFI_PLATFORM)


def embedded_config(uuid: str) -> str:
    """The config inside both core images: find this ISO, use its /boot/grub."""
    return f"search --no-floppy --fs-uuid --set=root {uuid}\nset prefix=($root)/boot/grub\n"


def copy_modules(platform: str, dest: Path) -> None:
    """GRUB's run-time modules of ``platform`` into ``dest`` (boot/grub/PLATFORM)."""
    src = platform_dir(platform)
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.suffix in MODULE_SUFFIXES and f.is_file():
            shutil.copyfile(f, dest / f.name)


def mkimage(platform: str, fmt: str, config: Path, out: Path, modules: Sequence[str]) -> None:
    """One ``grub-mkimage`` run."""
    run(
        [
            "grub-mkimage",
            "--directory",
            str(platform_dir(platform)),
            "--prefix",
            "/boot/grub",
            "--format",
            fmt,
            "--config",
            str(config),
            "--output",
            str(out),
            *modules,
        ]
    )


def fat_kib(files: Mapping[str, Path]) -> int:
    """The EFI image's size: EFI_IMAGE_KIB, or more when the files need it (+512 KiB slack)."""
    need = sum(p.stat().st_size for p in files.values()) + (512 << 10)
    return max(EFI_IMAGE_KIB, -(-need // (1 << 20)) * 1024)


def efi_image(files: Mapping[str, Path], out: Path, epoch: int) -> None:
    """A FAT image holding ``files`` (path in the FAT → file), serial and times from ``epoch``."""
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), MTOOLS_SKIP_CHECK="1")
    serial = f"{epoch & 0xFFFFFFFF:08x}"
    run(["mformat", "-i", str(out), "-C", "-N", serial, "-v", "EFIBOOT",
         "-T", str(fat_kib(files) * 2), "-h", "2", "-s", "32", "::"], env=env)  # fmt: skip
    made: set[str] = set()
    for name, src in sorted(files.items()):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in made:
                run(["mmd", "-i", str(out), f"::/{d}"], env=env)
                made.add(d)
        os.utime(src, (epoch, epoch))
        run(["mcopy", "-m", "-i", str(out), str(src), f"::/{name}"], env=env)


def stage_grub(
    tree: Path, work: Path, menu: Menu, epoch: int, chain: SignedBoot | None = None
) -> Path:
    """GRUB's files into the ISO ``tree``; returns the EFI image (made in ``work``): GRUB's
    own ``grub-mkimage`` build, or with ``chain`` Debian's signed shim and GRUB
    (mkimage.secureboot)."""
    check_tools()
    grub = tree / "boot" / "grub"
    grub.mkdir(parents=True, exist_ok=True)
    (grub / "grub.cfg").write_text(grub_cfg(menu))
    config = work / "embedded.cfg"
    config.write_text(embedded_config(volume_uuid(epoch)))
    copy_modules(BIOS_PLATFORM, grub / BIOS_PLATFORM)
    copy_modules(EFI_PLATFORM, grub / EFI_PLATFORM)
    mkimage(
        BIOS_PLATFORM,
        "i386-pc-eltorito",
        config,
        grub / BIOS_PLATFORM / "eltorito.img",
        BIOS_CORE_MODULES,
    )
    efi = work / "efi.img"
    if chain is None:
        bootx64 = work / "BOOTX64.EFI"
        mkimage(EFI_PLATFORM, "x86_64-efi", config, bootx64, EFI_CORE_MODULES)
        efi_image({"EFI/BOOT/BOOTX64.EFI": bootx64}, efi, epoch)
        return efi
    redirect = work / "redirect.cfg"
    redirect.write_text(redirect_config(volume_uuid(epoch)))
    files: dict[str, Path] = {}
    for name, src in efi_files(chain, redirect).items():
        files[name] = work / f"efi-{len(files)}"
        shutil.copyfile(src, files[name])
    efi_image(files, efi, epoch)
    return efi


def hybrid_mbr() -> Path:
    """GRUB's isohybrid MBR boot code (``boot_hybrid.img``)."""
    return platform_dir(BIOS_PLATFORM) / "boot_hybrid.img"
