"""Outputs that never exist half-written: build under a temporary sibling name, then rename.

``atomic_output(dest)`` yields a fresh temporary path next to ``dest`` (same directory, so
the rename is atomic); when the block ends normally the temporary file or directory
replaces ``dest``, otherwise it is removed and ``dest`` is left as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from overlayboot.errors import OverlaybootError
from overlayboot.fs import sysio


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
        replace(tmp, dest)
    except OSError as exc:
        raise OutputError(f"cannot write {dest}: {exc.strerror}") from exc
    finally:
        remove(tmp)


def replace(new: Path, dest: Path) -> None:
    """Put ``new`` in place of ``dest`` so that ``dest`` is at every moment either the
    old or the new one. rename(2) cannot put a directory over a non-empty one, nor over
    a file or a file over a directory: then the two are exchanged (``RENAME_EXCHANGE``)
    and the old one, now at ``new``, is removed."""
    if not os.path.lexists(dest) or not (_is_dir(dest) or _is_dir(new)):
        new.rename(dest)
        return
    try:
        sysio.renameat2(os.fsencode(new), os.fsencode(dest), sysio.RENAME_EXCHANGE)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        _replace_in_two_steps(new, dest)
        return
    remove(new)


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _replace_in_two_steps(new: Path, dest: Path) -> None:
    """Where the filesystem cannot exchange: move ``dest`` aside, and back on failure."""
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    dest.rename(old)
    try:
        new.rename(dest)
    except BaseException:
        old.rename(dest)
        raise
    remove(old)
