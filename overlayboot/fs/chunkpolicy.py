"""Which copy-ups are partial (chunked) and with which chunk size: the policy and its options.

``--copy-up=chunked`` (the default) copies a regular lower file of at least
``--chunk-threshold`` bytes (default 1 MiB) up chunk by chunk, as its chunks are
written; ``--copy-up=whole`` copies every file whole, as kernel overlayfs does.
The chunk size defaults to 64 KiB or the upper's block size, whichever is larger.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from enum import Enum

from overlayboot.errors import UsageError

DEFAULT_THRESHOLD = 1 << 20
DEFAULT_CHUNK = 64 << 10
MIN_CHUNK = 4 << 10
MAX_CHUNK = 1 << 30

# mount -o options that belong to the policy (not passed to FUSE)
VALUE_OPTIONS = ("copy_up", "chunk_size", "chunk_threshold")
FLAG_OPTIONS = ("seal_on_umount",)

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class CopyUpMode(Enum):
    WHOLE = "whole"
    CHUNKED = "chunked"


@dataclass(frozen=True)
class CopyUpPolicy:
    """How lower files are copied up. ``chunk_size`` None: max(64 KiB, upper block size)."""

    mode: CopyUpMode = CopyUpMode.CHUNKED
    threshold: int = DEFAULT_THRESHOLD
    chunk_size: int | None = None

    def chunk_for(self, block_size: int) -> int:
        """The chunk size on an upper filesystem with this block size."""
        if self.chunk_size is not None:
            return self.chunk_size
        size = DEFAULT_CHUNK
        while size < block_size and size < MAX_CHUNK:
            size <<= 1
        return size

    def wants_chunks(self, st: os.stat_result) -> bool:
        """Is this lower file copied up partially? (A file with several names never is.)"""
        return (
            self.mode is CopyUpMode.CHUNKED
            and stat.S_ISREG(st.st_mode)
            and st.st_nlink == 1
            and st.st_size > 0
            and st.st_size >= self.threshold
        )


def parse_size(text: str, what: str) -> int:
    """``4096``, ``64K``, ``64KiB``, ``1M``, ``2G`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", text)
    if m is None:
        raise UsageError(f"{what}: {text!r} is not a size", "use e.g. 4096, 64K, 1M")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def make_policy(
    mode: str | None = None, threshold: str | None = None, chunk_size: str | None = None
) -> CopyUpPolicy:
    """The policy from option strings (each None: its default)."""
    try:
        m = CopyUpMode(mode) if mode is not None else CopyUpMode.CHUNKED
    except ValueError:
        raise UsageError(f"--copy-up={mode}: unknown mode", "use chunked or whole") from None
    th = parse_size(threshold, "chunk threshold") if threshold is not None else DEFAULT_THRESHOLD
    cs: int | None = None
    if chunk_size is not None:
        cs = parse_size(chunk_size, "chunk size")
        if cs < MIN_CHUNK or cs > MAX_CHUNK or cs & (cs - 1):
            raise UsageError(
                f"chunk size {chunk_size}: not a power of two from 4K to 1G", "e.g. 64K"
            )
    return CopyUpPolicy(m, th, cs)
