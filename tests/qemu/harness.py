"""The QEMU harness of the tests is the package's own VM runner (mkimage.vm)."""

from mkimage.vm import (
    OVMF_CODE,
    OVMF_VARS,
    BootTimeout,
    Line,
    MediaVmConfig,
    Vm,
    VmConfig,
    qemu_available,
)

__all__ = [
    "OVMF_CODE",
    "OVMF_VARS",
    "BootTimeout",
    "Line",
    "MediaVmConfig",
    "Vm",
    "VmConfig",
    "qemu_available",
]
