"""Merged directory listings: the upper's entries, then each lower layer's, minus whiteouts.

A listing is taken once per open directory (as overlayfs caches it per open
file), so offsets stay stable for seekdir/telldir while the directory changes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from overlayboot.fs import longpath
from overlayboot.fs.layers import LowerLayer
from overlayboot.fs.lookup import LowerRef
from overlayboot.fs.whiteout import is_whiteout_stat


def upper_listing(path: bytes) -> tuple[list[bytes], set[bytes]]:
    """(visible names, whited-out names) of one upper directory."""
    visible: list[bytes] = []
    hidden: set[bytes] = set()
    with longpath.scandir(path) as it:
        for ent in it:
            name = os.fsencode(ent.name)
            try:
                if (
                    not ent.is_dir(follow_symlinks=False)
                    and not ent.is_file(follow_symlinks=False)
                    and not ent.is_symlink()
                    and is_whiteout_stat(ent.stat(follow_symlinks=False))
                ):
                    hidden.add(name)
                    continue
            except OSError:
                continue
            visible.append(name)
    return visible, hidden


def merged_names(
    layers: Sequence[LowerLayer],
    upper: bytes | None,
    lowers: Sequence[LowerRef],
) -> list[bytes]:
    """The names a merged directory shows, upper first, each once."""
    names: list[bytes] = []
    seen: set[bytes] = set()
    if upper is not None:
        visible, hidden = upper_listing(upper)
        names.extend(visible)
        seen.update(visible)
        seen.update(hidden)
    for idx, rel in lowers:
        listing = layers[idx].listing(rel)
        if listing is None:
            continue
        for name in listing.entries:
            if name not in seen:
                names.append(name)
                seen.add(name)
        seen.update(listing.whiteouts)
    return names


def is_empty_merged(
    layers: Sequence[LowerLayer], upper: bytes | None, lowers: Sequence[LowerRef]
) -> bool:
    return not merged_names(layers, upper, lowers)


def upper_whiteouts(path: bytes) -> list[bytes]:
    """Names of the whiteouts inside an upper directory."""
    _, hidden = upper_listing(path)
    return sorted(hidden)
