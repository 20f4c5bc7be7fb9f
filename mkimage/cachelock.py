"""One builder at a time per cache entry: an flock held while an entry is made.

Test runs on several workers (pytest-xdist) and parallel ``make`` runs share
``build/cache``; without it two of them unpacking the same kernel would remove each
other's half-made tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def cache_lock(cache: Path, name: str) -> Iterator[None]:
    """Hold ``cache/.NAME.lock`` exclusively (waits for another holder)."""
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / f".{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
