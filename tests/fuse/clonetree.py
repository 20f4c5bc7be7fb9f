"""Helpers of the clone tests: what a tree shows (as ``cp -a`` would keep it), clone calls.

``view`` is what a clone must reproduce: every entry's type, mode, owner, size, mtime,
content, symlink target and user xattrs (not inode numbers, link counts or ctimes, which a
copy has of its own).
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from overlayboot.clonecmd import clone as clone_cmd
from tests.fuse.helpers import xattrs

Entry = tuple[Any, ...]


def entry(path: str) -> Entry:
    st = os.lstat(path)
    content: str | None = None
    if stat.S_ISREG(st.st_mode):
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        content = h.hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        content = os.readlink(path)
    mtime = None if stat.S_ISDIR(st.st_mode) else st.st_mtime_ns
    attrs = {} if stat.S_ISLNK(st.st_mode) else xattrs(path)
    # kernel overlayfs (after seal) shows overlayboot's own records, which it ignores
    attrs = {k: v for k, v in attrs.items() if ".overlayboot." not in k}
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, mtime, content, sorted(attrs.items()))


def view(root: str | Path, *, dir_times: bool = False) -> dict[str, Entry]:
    """rel -> entry for everything under ``root`` (``"."`` itself included)."""
    out = {".": entry(str(root))}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = entry(path)
    if dir_times:
        for rel in out:
            st = os.lstat(os.path.join(root, rel))
            if stat.S_ISDIR(st.st_mode):
                out[rel] = (*out[rel], st.st_mtime_ns)
    return out


def inos(root: str | Path) -> dict[str, int]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = os.lstat(path).st_ino
    return out


def clone(src: str | Path, dst: str | Path) -> None:
    """``overlayboot clone SRC DST`` in this process (the command's own code)."""
    clone_cmd(Path(src), Path(dst))


def clone_cli(src: str | Path, dst: str | Path) -> subprocess.CompletedProcess[str]:
    """``overlayboot clone SRC DST`` as a command."""
    return subprocess.run(
        [sys.executable, "-m", "overlayboot", "clone", str(src), str(dst)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def upper_bytes(upper: str | Path) -> int:
    """Bytes allocated under the upper (blocks, so sparse files count what they hold)."""
    seen: dict[int, int] = {}
    for dirpath, dirs, files in os.walk(upper):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(dirpath, name))
            seen[st.st_ino] = st.st_blocks * 512  # a hard link counts once
    return sum(seen.values())
