"""The read-only lower layers, with a cache of their directory listings.

Lower layers never change while mounted (overlayfs makes the same demand), so
each lower directory is read once: its entries and their types, the names it
whites out (char 0/0, legacy ``.wh.NAME``, xattr whiteouts) and its own
opaque and redirect markers.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from overlayboot.fs import longpath
from overlayboot.fs.whiteout import (
    LEGACY_OPAQUE,
    LEGACY_PREFIX,
    XattrNames,
    get_redirect,
    is_whiteout_stat,
    is_xattr_whiteout,
    opaque_value,
)

STAT_CACHE_MAX = 20_000
"""lstat results kept per lower layer (about 700 bytes each, 14 MB at most): the daemon of
a root must not grow without bound while something walks the whole image. A lookup and the
GETATTR after it meet here; a walk of a million files gains nothing from more."""

LISTING_CACHE_MAX = 250_000
"""Directory entries kept in listings per lower layer (about 90 bytes each): beyond it the
listings are read again (a walk reads each directory's once, for all its names)."""


def join(parent: bytes, name: bytes) -> bytes:
    """Join relative paths (``b""`` is the layer root)."""
    return parent + b"/" + name if parent else name


def split(rel: bytes) -> tuple[bytes, bytes]:
    """``a/b/c`` -> (``a/b``, ``c``)."""
    head, _, tail = rel.rpartition(b"/")
    return head, tail


@dataclass(frozen=True)
class Listing:
    """One lower directory as read from disk."""

    entries: dict[bytes, bool]  # visible name -> is a directory
    whiteouts: frozenset[bytes]
    opaque: bool
    redirect: bytes | None


class LowerLayer:
    """One read-only lower layer: a root directory and a listing cache."""

    def __init__(self, index: int, root: bytes, names: XattrNames) -> None:
        self.index = index
        self.root = root.rstrip(b"/") or b"/"
        self.names = names
        self._cache: dict[bytes, Listing | None] = {}
        self._listed = 0  # entries in the listings of _cache
        self._stats: dict[bytes, os.stat_result] = {}

    def path(self, rel: bytes) -> bytes:
        if not rel:
            return self.root
        return self.root + b"/" + rel if self.root != b"/" else b"/" + rel

    def listing(self, rel: bytes) -> Listing | None:
        """The listing of directory ``rel``, or None if it is not a directory."""
        try:
            return self._cache[rel]
        except KeyError:
            pass
        result = self._read(rel)
        size = len(result.entries) + 1 if result is not None else 1
        if self._listed + size > LISTING_CACHE_MAX:
            self._cache.clear()
            self._listed = 0
        self._cache[rel] = result
        self._listed += size
        return result

    def _read(self, rel: bytes) -> Listing | None:
        path = self.path(rel)
        try:
            st = longpath.lstat(path)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
        opq = opaque_value(path, self.names)
        try:
            entries, whiteouts, legacy_opaque = self._scan(path, opq)
        except OSError:
            return Listing({}, frozenset(), opq == b"y", None)
        opaque = opq == b"y" or legacy_opaque
        for name in whiteouts:
            entries.pop(name, None)
        redirect = get_redirect(path, self.names) if rel else None
        return Listing(entries, frozenset(whiteouts), opaque, redirect)

    def _scan(self, path: bytes, opq: bytes | None) -> tuple[dict[bytes, bool], set[bytes], bool]:
        """(entries: name -> is a directory, whiteouts, a legacy opaque marker seen)."""
        entries: dict[bytes, bool] = {}
        whiteouts: set[bytes] = set()
        opaque = False
        with longpath.scandir(path) as it:
            for ent in it:
                name = os.fsencode(ent.name)
                if name.startswith(LEGACY_PREFIX):
                    if name == LEGACY_OPAQUE:
                        opaque = True
                    elif len(name) > len(LEGACY_PREFIX):
                        whiteouts.add(name[len(LEGACY_PREFIX) :])
                    continue
                try:
                    if ent.is_dir(follow_symlinks=False):
                        entries[name] = True
                        continue
                    if ent.is_file(follow_symlinks=False) and opq == b"x":
                        est = ent.stat(follow_symlinks=False)
                        if is_xattr_whiteout(path + b"/" + name, est, self.names):
                            whiteouts.add(name)
                            continue
                    elif not ent.is_file(follow_symlinks=False) and not ent.is_symlink():
                        est = ent.stat(follow_symlinks=False)
                        if is_whiteout_stat(est):
                            whiteouts.add(name)
                            continue
                except OSError:
                    continue
                entries[name] = False
        return entries, whiteouts, opaque

    def forget_caches(self) -> None:
        """Drop every listing and lstat result (the kernel forgot most of what it knew)."""
        self._cache = {}
        self._listed = 0
        self._stats = {}

    def lstat(self, rel: bytes) -> os.stat_result:
        """lstat of a lower object, read once: a lower layer does not change."""
        st = self._stats.get(rel)
        if st is None:
            st = longpath.lstat(self.path(rel))
            if len(self._stats) > STAT_CACHE_MAX:
                self._stats.clear()
            self._stats[rel] = st
        return st
