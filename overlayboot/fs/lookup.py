"""Resolving one name in a merged directory across the upper and the lower layers.

This follows overlayfs' ``ovl_lookup``: the upper entry first (a whiteout ends
the search; a non-directory or an opaque directory stops it), then each lower
layer of the parent top-down, following ``overlay.redirect`` (relative: another
name in the same parent; absolute: a path from the layer roots), stopping at a
whiteout, a non-directory, an opaque directory or a change of type.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import NamedTuple

from overlayboot.fs import longpath
from overlayboot.fs.layers import LowerLayer, join, split
from overlayboot.fs.whiteout import XattrNames, get_redirect, is_opaque_dir, is_whiteout_stat

LowerRef = tuple[int, bytes]  # (lower layer index, path relative to that layer's root)


class Resolved(NamedTuple):
    """Where a merged entry lives (immutable; a tuple: made for every entry of every
    listing, where a frozen dataclass costs a third of the lookup).

    ``lowers`` is the merge stack for a directory, or the one lower file a
    non-directory shows (empty when the upper has it).
    """

    is_dir: bool
    upper: os.stat_result | None
    lowers: tuple[LowerRef, ...]
    opaque: bool = False
    redirect: bytes | None = None


def upper_entry(path: bytes) -> os.stat_result | None:
    """lstat of an upper path, None if absent."""
    try:
        return longpath.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def lookup(
    layers: Sequence[LowerLayer],
    names: XattrNames,
    parent_upper: bytes | None,
    parent_lowers: Sequence[LowerRef],
    name: bytes,
) -> Resolved | None:
    """Resolve ``name`` in a merged directory; None if it does not exist there.

    ``parent_upper`` is the parent's absolute upper path (None if the parent has
    no upper directory); ``parent_lowers`` its merge stack.
    """
    is_dir: bool | None = None
    upper_st: os.stat_result | None = None
    opaque = False
    redirect: bytes | None = None
    if parent_upper is not None:
        upath = parent_upper + b"/" + name
        upper_st = upper_entry(upath)
        if upper_st is not None:
            if is_whiteout_stat(upper_st):
                return None
            is_dir = stat.S_ISDIR(upper_st.st_mode)
            if not is_dir:
                return Resolved(False, upper_st, ())
            opaque = is_opaque_dir(upath, names)
            redirect = get_redirect(upath, names)
            if opaque:
                return Resolved(True, upper_st, (), True, redirect)
    lowers = _lookup_lowers(layers, parent_lowers, name, redirect, is_dir)
    if lowers is None:
        if upper_st is None:
            return None
        return Resolved(True, upper_st, (), opaque, redirect)
    found, found_dir = lowers
    if upper_st is None:
        if not found:
            return None
        return Resolved(found_dir, None, tuple(found))
    return Resolved(True, upper_st, tuple(found), opaque, redirect)


def _lookup_lowers(
    layers: Sequence[LowerLayer],
    parent_lowers: Sequence[LowerRef],
    name: bytes,
    redirect: bytes | None,
    is_dir: bool | None,
) -> tuple[list[LowerRef], bool] | None:
    """Walk the lower layers; returns (merge stack, is_dir) or None if nothing."""
    found: list[LowerRef] = []
    by_layer = dict(parent_lowers)
    abs_path: bytes | None = None
    rel_name = name
    if redirect is not None:
        if redirect.startswith(b"/"):
            abs_path = redirect.strip(b"/")
        else:
            rel_name = redirect
    first_layer = min(by_layer) if by_layer else len(layers)
    if abs_path is not None:
        first_layer = 0
    for idx in range(first_layer, len(layers)):
        if abs_path is not None:
            parent_rel, leaf = split(abs_path)
        elif idx in by_layer:
            parent_rel, leaf = by_layer[idx], rel_name
        else:
            continue
        layer = layers[idx]
        listing = layer.listing(parent_rel)
        if listing is None:
            continue
        if leaf in listing.whiteouts:
            break
        child_is_dir = listing.entries.get(leaf)
        if child_is_dir is None:
            continue
        if is_dir is None:
            is_dir = child_is_dir
        elif is_dir != child_is_dir:
            break
        rel = join(parent_rel, leaf)
        found.append((idx, rel))
        if not child_is_dir:
            break
        child = layer.listing(rel)
        if child is None:
            break
        if child.opaque:
            break
        if child.redirect is not None:
            if child.redirect.startswith(b"/"):
                abs_path = child.redirect.strip(b"/")
            elif abs_path is not None:
                abs_path = join(parent_rel, child.redirect)
            else:
                rel_name = child.redirect
    if not found:
        return None
    return found, bool(is_dir)


def lower_positive(
    layers: Sequence[LowerLayer], parent_lowers: Sequence[LowerRef], name: bytes
) -> bool:
    """Does any lower layer of the parent show ``name`` (before a whiteout hides it)?"""
    for idx, parent_rel in parent_lowers:
        listing = layers[idx].listing(parent_rel)
        if listing is None:
            continue
        if name in listing.whiteouts:
            return False
        if name in listing.entries:
            return True
    return False
