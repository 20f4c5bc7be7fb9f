"""Stable inode numbers and the table of nodes the kernel knows about.

An inode number is ``(layer tag << 56) | real inode``: tag 1 for a file born in
the upper, ``2 + i`` for one that comes from lower layer ``i``. A copied-up file
keeps its lower number (its origin is recorded in ``overlayboot.origin``), so a
number survives copy-up and remount and never collides between layers (what
overlayfs calls ``xino``). The root is always 1 (the FUSE root). A real number too big
for 56 bits (NFS file ids are 64-bit; XFS and btrfs numbers can be large) gets what kernel
overlayfs gives when xino bits run out: a number of its own, tag ``TAG_OVERFLOW``, the same
for that (tag, real inode) for the daemon's life but not across remounts (logged once).

A :class:`Node` is one inode the kernel holds (lookup count > 0) or one that
is the parent of such an inode. It knows its merged names (a primary name plus
aliases for hard links), whether the upper has it, and its lower merge stack.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Iterator

from overlayboot.fs.lookup import LowerRef

ROOT_INO = 1
TAG_SHIFT = 56
REAL_MASK = (1 << TAG_SHIFT) - 1
TAG_UPPER = 1
TAG_DYNAMIC = 0xFF
TAG_OVERFLOW = 0xFE
TAG_CLONE = 0xFD

COMPACT_ABOVE = 50_000  # nodes: a smaller table is not worth copying

log = logging.getLogger("overlayboot.fs")
_overflow: dict[tuple[int, int], int] = {}
_overflow_next = itertools.count(1)


def make_ino(tag: int, real_ino: int) -> int:
    if 0 <= real_ino <= REAL_MASK:
        return (tag << TAG_SHIFT) | real_ino
    return _overflow_ino(tag, real_ino)


def _overflow_ino(tag: int, real_ino: int) -> int:
    """A stable number of its own for a real inode number too big to tag (see above)."""
    key = (tag, real_ino)
    ino = _overflow.get(key)
    if ino is None:
        if not _overflow:
            log.warning(
                "inode number %#x (layer tag %d) is too big for %d bits: such inodes get "
                "numbers that are not kept across remounts (as kernel overlayfs' xino)",
                real_ino,
                tag,
                TAG_SHIFT,
            )
        ino = (TAG_OVERFLOW << TAG_SHIFT) | next(_overflow_next)
        _overflow[key] = ino
    return ino


def clone_ino(clone: int, ino: int) -> int:
    """The number ``ino`` shows inside clone ``clone`` (see ``fs/clone.py``): a clone shows
    the same lower (or shared upper) files as its source, and each copy must be a file of
    its own. A 56-bit digest of both, stable across remounts."""
    digest = hashlib.blake2b(b"%d:%d" % (clone, ino), digest_size=7).digest()
    return (TAG_CLONE << TAG_SHIFT) | int.from_bytes(digest, "little")


def lower_tag(layer: int) -> int:
    return 2 + layer


class Node:
    """One merged inode. Mutable: copy-up, rename and unlink change it in place."""

    __slots__ = (
        "_lower_at",
        "_lowers",
        "aliases",
        "clone",
        "dead",
        "handles",
        "ino",
        "is_dir",
        "name",
        "nchildren",
        "nlookup",
        "opaque",
        "parent",
        "redirect",
        "removed_stat",
        "upper",
    )

    def __init__(self, ino: int, is_dir: bool) -> None:
        self.ino = ino
        self.is_dir = is_dir
        self.parent: Node | None = None
        self.name = b""
        self.aliases: tuple[tuple[Node, bytes], ...] = ()  # shared empty tuple: no list each
        self.clone = 0  # the clone this node is seen in (0: none; see fs/clone.py)
        self.upper = False
        self._lowers: tuple[LowerRef, ...] = ()
        self._lower_at = -1  # >= 0: the lower is ``join(parent's _lowers[at], name)``
        self.opaque = False
        self.redirect: bytes | None = None
        self.nlookup = 0
        self.nchildren = 0
        self.handles = 0
        self.dead = False  # its upper object is gone: the number may be recycled
        # a removed directory's last attributes (an open fd's fstat shows them, nlink 0)
        self.removed_stat: os.stat_result | None = None

    def __repr__(self) -> str:
        return f"<Node {self.ino:#x} {self.path()!r} upper={self.upper} lowers={self.lowers}>"

    def path(self) -> bytes | None:
        """The merged path relative to the root (b"" for the root); None once unlinked."""
        if self.ino == ROOT_INO:
            return b""
        if self.parent is None:
            return None
        parts = [self.name]
        node = self.parent
        while node.ino != ROOT_INO:
            if node.parent is None:
                return None
            parts.append(node.name)
            node = node.parent
        parts.reverse()
        return b"/".join(parts)

    @property
    def lowers(self) -> tuple[LowerRef, ...]:
        """The merge stack of a directory, or the one lower file a non-directory shows
        (empty when the upper has it or there is none)."""
        at = self._lower_at
        if at < 0:
            return self._lowers
        idx, parent_rel = self._lowers[at]
        return ((idx, parent_rel + b"/" + self.name if parent_rel else self.name),)

    @lowers.setter
    def lowers(self, value: tuple[LowerRef, ...]) -> None:
        # A non-directory's one lower usually is its parent's lower joined with its name:
        # then only a reference to the parent's stack is kept (no path, no tuples; a
        # million cached inodes spare ~200 MB). Pinned before the name or parent changes.
        self._lowers, self._lower_at = value, -1
        parent = self.parent
        if len(value) != 1 or self.is_dir or parent is None or not parent.is_dir:
            return
        idx, rel = value[0]
        stack = parent._lowers if parent._lower_at < 0 else ()
        for at, (pidx, prel) in enumerate(stack):
            if pidx == idx and rel == (prel + b"/" + self.name if prel else self.name):
                self._lowers, self._lower_at = stack, at
                return

    def pin_lowers(self) -> None:
        """Keep the lower path itself: the name or the parent is about to change."""
        if self._lower_at >= 0:
            self._lowers, self._lower_at = self.lowers, -1

    def names(self) -> Iterator[tuple[Node, bytes]]:
        if self.parent is not None:
            yield self.parent, self.name
        yield from self.aliases

    def lower_path(self) -> bytes | None:
        """The path this node has in its top lower layer, if any."""
        return self.lowers[0][1] if self.lowers else None


class InodeTable:
    """ino -> Node, with lookup counts and parent links kept consistent."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self._peak = 0  # the most nodes since the table was last compacted
        self.on_shrink: Callable[[], None] | None = None  # called after a compaction
        self._dynamic = itertools.count(1)
        self.overrides: dict[int, int] = {}
        root = Node(ROOT_INO, True)
        root.nlookup = 1
        self.nodes[ROOT_INO] = root

    @property
    def root(self) -> Node:
        return self.nodes[ROOT_INO]

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def dynamic_ino(self) -> int:
        return make_ino(TAG_DYNAMIC, next(self._dynamic))

    def node_for(self, ino: int, is_dir: bool, parent: Node, name: bytes) -> Node:
        """The node with ``ino``, created if needed, known under ``parent/name``."""
        node = self._node(ino, is_dir)
        self.add_name(node, parent, name)
        return node

    def unnamed(self, ino: int) -> Node:
        """A new regular file with no name yet (``open(2)`` with ``O_TMPFILE``)."""
        return self._node(ino, False)

    def _node(self, ino: int, is_dir: bool) -> Node:
        ino = self.overrides.get(ino, ino)
        node = self.nodes.get(ino)
        if node is not None and (node.dead or node.is_dir != is_dir):
            # The number now names another object (a recycled upper inode while the old
            # one is still open, unlinked): give the new object a number of its own.
            new_ino = self.dynamic_ino()
            self.overrides[ino] = new_ino
            ino = new_ino
            node = None
        if node is None:
            node = Node(ino, is_dir)
            self.nodes[ino] = node
            self._peak = max(self._peak, len(self.nodes))
        return node

    def add_name(self, node: Node, parent: Node, name: bytes) -> None:
        if node.parent is parent and node.name == name:
            return
        if any(p is parent and n == name for p, n in node.aliases):
            return
        if node.parent is None:
            node.pin_lowers()
            node.parent, node.name = parent, name
        elif node.is_dir:
            # a directory has one name: the kernel has moved it
            self._unref_parent(node.parent)
            node.parent, node.name = parent, name
        else:
            node.aliases += ((parent, name),)
        parent.nchildren += 1

    def remove_name(self, node: Node, parent: Node, name: bytes) -> None:
        """``parent/name`` no longer names ``node`` (unlink, rename away)."""
        if node.parent is parent and node.name == name:
            node.pin_lowers()
            if node.aliases:
                (node.parent, node.name), node.aliases = node.aliases[0], node.aliases[1:]
            else:
                node.parent, node.name = None, b""
        else:
            before = len(node.aliases)
            node.aliases = tuple((p, n) for p, n in node.aliases if not (p is parent and n == name))
            if len(node.aliases) == before:
                return
        self._unref_parent(parent)
        self._maybe_free(node)

    def move_name(self, node: Node, old: tuple[Node, bytes], new: tuple[Node, bytes]) -> None:
        """A rename: the name ``old`` of ``node`` becomes ``new``."""
        new_parent, new_name = new
        old_parent, old_name = old
        if node.parent is old_parent and node.name == old_name:
            node.pin_lowers()
            node.parent, node.name = new_parent, new_name
        else:
            node.aliases = tuple(
                (new_parent, new_name) if (p is old_parent and n == old_name) else (p, n)
                for p, n in node.aliases
            )
        new_parent.nchildren += 1
        self._unref_parent(old_parent)

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.nlookup = max(0, node.nlookup - count)
        self._maybe_free(node)

    def _unref_parent(self, parent: Node) -> None:
        parent.nchildren = max(0, parent.nchildren - 1)
        self._maybe_free(parent)

    def _maybe_free(self, node: Node) -> None:
        if node.ino == ROOT_INO or node.nlookup > 0 or node.nchildren > 0 or node.handles > 0:
            return
        if self.nodes.get(node.ino) is not node:
            return
        del self.nodes[node.ino]
        if len(self.nodes) < self._peak // 4 and self._peak > COMPACT_ABOVE:
            # a dict never shrinks by deletion: after the kernel forgot most of a big walk
            # (drop_caches, memory pressure) a copy gives the memory back
            self.nodes = dict(self.nodes)
            self._peak = len(self.nodes)
            if self.on_shrink is not None:
                self.on_shrink()
        for parent, _ in list(node.names()):
            self._unref_parent(parent)
        node.pin_lowers()
        node.parent, node.aliases = None, ()
