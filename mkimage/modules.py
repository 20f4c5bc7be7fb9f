"""Kernel modules for the initramfs: the closure of the wanted modules from modules.dep.

Module names treat ``-`` and ``_`` alike, as modprobe does. A module that the
kernel has built in (modules.builtin) needs no file; one that is neither is an
error naming it. The result lists modules dependencies first: the load order.
"""

from __future__ import annotations

from dataclasses import dataclass

from mkimage.kernel import Kernel, KernelError

# Real hardware beyond the virtual machine's: an internal NVMe disk, SD/MMC card readers
# (PCI and ACPI hosts), sticks formatted exFAT or NTFS (the ISO of findiso on a data
# partition), and vfat's codepages for the names on them (cp437 is its default,
# iso8859-1/utf8/ascii its iocharsets). The ~0.5 MB they add is measured in the README.
HARDWARE_MODULES: tuple[str, ...] = (
    "nvme", "mmc_block", "sdhci_pci", "sdhci_acpi", "exfat", "ntfs3", "nls_ascii", "nls_cp850",
)  # fmt: skip
# A LUKS-encrypted persistence (cryptsetup's default aes-xts-plain64; aes and cbc are built
# in, AES-NI is used when the CPU has it).
LUKS_MODULES: tuple[str, ...] = ("dm_mod", "dm_crypt", "xts", "aesni_intel")
# The EFI variables as a filesystem (systemd mounts it at /sys/firmware/efi/efivars;
# efibootmgr, mokutil and the Secure Boot state read it). Debian builds it as a module.
EFI_MODULES: tuple[str, ...] = ("efivarfs",)
# What a live boot needs: FUSE, the media filesystems, loop, disks, CD, USB, virtio.
BOOT_MODULES: tuple[str, ...] = (
    "fuse", "squashfs", "isofs", "overlay", "loop", "ext4", "vfat", "nls_cp437",
    "nls_iso8859_1", "nls_utf8", "sr_mod", "sd_mod", "cdrom", "ata_piix", "ahci",
    "virtio_pci", "virtio_blk", "virtio_scsi", "usb_storage", "uas", "xhci_pci",
    "ehci_pci", "ohci_pci", "uhci_hcd", "usbhid", "hid_generic", "crc32c_generic",
    *HARDWARE_MODULES, *LUKS_MODULES, *EFI_MODULES,
)  # fmt: skip
# Wanted when present, not an error when missing from a given kernel.
OPTIONAL_MODULES = frozenset(
    {"ohci_pci", "uhci_hcd", "ehci_pci", "usbhid", "hid_generic", "crc32c_generic", "nls_cp437",
     "sdhci_acpi", "nls_ascii", "nls_cp850", "aesni_intel", "efivarfs"}
)  # fmt: skip
# The network boot's (hooks/15-network.sh loads them, only when the boot needs the
# network): the NICs of PCs and VMs (r8169's PHY driver realtek), the NFS client, the
# NBD client (nbd). All optional: a kernel without them builds an image that boots from
# local media only.
NET_MODULES: tuple[str, ...] = (
    "virtio_net", "e1000", "e1000e", "igb", "r8169", "realtek", "nfs", "nfsv4", "nfsv3",
    "nbd",
)  # fmt: skip


def norm(name: str) -> str:
    return name.replace("-", "_")


def module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    return norm(base)


@dataclass(frozen=True)
class ModuleSet:
    """The modules to put in the initramfs, in load order, and those built in."""

    files: tuple[str, ...]  # paths relative to lib/modules/<version>, load order
    builtin: tuple[str, ...]


def parse_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """modules.dep -> {name: (path, [dependency paths])}."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        table[module_name(path.strip())] = (path.strip(), deps.split())
    return table


def parse_builtin(text: str) -> set[str]:
    return {module_name(line.strip()) for line in text.splitlines() if line.strip()}


def resolve(
    kernel: Kernel,
    wanted: tuple[str, ...] = BOOT_MODULES,
    optional: frozenset[str] = OPTIONAL_MODULES,
) -> ModuleSet:
    dep_file = kernel.module_dep()
    if not dep_file.is_file():
        raise KernelError(f"{dep_file} is missing", f"run depmod -b ROOT {kernel.version}")
    table = parse_dep(dep_file.read_text())
    builtin_file = kernel.modules / "modules.builtin"
    builtin = parse_builtin(builtin_file.read_text()) if builtin_file.is_file() else set()
    path_to_name = {path: name for name, (path, _) in table.items()}
    order: list[str] = []
    done: set[str] = set()
    missing: list[str] = []
    built_in: list[str] = []

    def visit(path: str, stack: tuple[str, ...]) -> None:
        if path in done or path in stack:
            return
        name = path_to_name.get(path, module_name(path))
        for dep in table.get(name, (path, []))[1]:
            visit(dep, (*stack, path))
        done.add(path)
        order.append(path)

    for want in wanted:
        name = norm(want)
        if name in table:
            visit(table[name][0], ())
        elif name in builtin:
            built_in.append(name)
        elif name not in optional:
            missing.append(name)
    if missing:
        raise KernelError(
            f"kernel {kernel.version} lacks modules the boot needs: {', '.join(missing)}",
            "use a kernel that has them as modules or built in",
        )
    return ModuleSet(tuple(order), tuple(sorted(built_in)))


def resolve_extra(kernel: Kernel, wanted: tuple[str, ...], base: ModuleSet) -> ModuleSet:
    """The closure of ``wanted`` (each optional) less what ``base`` has: a second load list."""
    extra = resolve(kernel, wanted, optional=frozenset(norm(w) for w in wanted))
    have = set(base.files)
    return ModuleSet(
        tuple(f for f in extra.files if f not in have),
        tuple(b for b in extra.builtin if b not in base.builtin),
    )
