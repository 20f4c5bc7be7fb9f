"""Outputs that never exist half-written: build under a temporary sibling name, then rename.

``atomic_output(dest)`` yields a fresh temporary path next to ``dest`` (same directory, so
the rename is atomic); when the block ends normally the temporary file or directory
replaces ``dest``, otherwise it is removed and ``dest`` is left as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from overlayboot.errors import OverlaybootError


class OutputError(OverlaybootError):
    """The output cannot be written where asked."""


def remove(path: Path) -> None:
    """Remove a file, symlink or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_output(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; it becomes ``dest`` if the block succeeds."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {dest.parent}: {exc.strerror}") from exc
    if dest.is_dir() and not dest.is_symlink() and not dest.name:
        raise OutputError(f"bad output path {dest}")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    remove(tmp)
    try:
        yield tmp
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if dest.is_dir() and not dest.is_symlink():
            dest.rename(old)  # a directory cannot be renamed over a non-empty one
        tmp.rename(dest)
        remove(old)
    except OSError as exc:
        raise OutputError(f"cannot write {dest}: {exc.strerror}") from exc
    finally:
        remove(tmp)
