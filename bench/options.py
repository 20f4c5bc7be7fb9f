"""What one run of the suite measures: sizes, repetitions, systems (a frozen record)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

SYSTEMS = ("raw", "kernel", "fuse-overlayfs", "overlayboot")


@dataclass(frozen=True)
class Options:
    """Sizes and counts of every workload; the defaults make the full suite."""

    reps: int = 5
    big_mib: int = 1024  # the large lower file: sequential read and copy-up
    files: int = 20_000  # small lower files: find+stat and read-all
    dirs: int = 200  # ... spread over this many directories
    creates: int = 10_000  # new files, once empty and once 4 KiB
    rm_dirs: int = 50  # lower directories removed with rm -rf
    write_mib: int = 1024  # sequential write of a new file
    execs: int = 1_000  # runs of a lower copy of /bin/true
    tar_source: Path = Path("/usr/lib/python3.11")  # tarred into the lower, unpacked, grepped
    comp: str = "lz4"  # mksquashfs compressor of the lower image
    systems: tuple[str, ...] = SYSTEMS
    cpus: tuple[int, ...] | None = None  # pin the suite (and the daemons) to these CPUs
    overlayboot_args: tuple[str, ...] = ()  # extra `overlayboot mount` arguments
    boot_runs: int = 5  # QEMU boots per overlay (kernel, fuse); 0: no boot figures
    build_reps: int = 3  # `build all` runs; 0: no build figures (and no boot)
    quick: bool = False

    def lower_key(self) -> str:
        """A short hash of what the lower image holds (to reuse a built image)."""
        spec = {
            "v": 2,
            "big": self.big_mib,
            "files": self.files,
            "dirs": self.dirs,
            "tar": str(self.tar_source),
            "comp": self.comp,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    def as_json(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["tar_source"] = str(self.tar_source)
        d["systems"] = list(self.systems)
        d["cpus"] = list(self.cpus) if self.cpus is not None else None
        d["overlayboot_args"] = list(self.overlayboot_args)
        return d


# --quick: a smoke run of one to two minutes, every workload at a tenth of its size or less
QUICK = Options(
    reps=5,
    big_mib=128,
    files=2_000,
    dirs=20,
    creates=1_000,
    rm_dirs=5,
    write_mib=128,
    execs=100,
    boot_runs=2,
    build_reps=1,
    quick=True,
)
