"""The overlay's state and its read-side operations, with no FUSE in sight.

:class:`Overlay` holds the configuration, the lower layers, the node table and
the lock that serialises changes to the upper; it resolves names to nodes and
nodes to real paths. Changing operations live in ``copyup`` and ``dirops``.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass

import trio

from overlayboot.fs import longpath, sysio
from overlayboot.fs.config import OverlayConfig
from overlayboot.fs.inodes import (
    REAL_MASK,
    TAG_SHIFT,
    TAG_UPPER,
    InodeTable,
    Node,
    clone_ino,
    lower_tag,
    make_ino,
)
from overlayboot.fs.layers import LowerLayer
from overlayboot.fs.lookup import Resolved, lookup
from overlayboot.fs.partials import PartialCopyUps
from overlayboot.fs.readdir import merged_names
from overlayboot.fs.whiteout import decode_origin, get_clone_mark, get_pending, getxattr

HardlinkMap = dict[int, list[bytes]]
"""Lower inode number -> the paths (relative to the layer) of that multiply-linked file."""


class FastLock:
    """``trio.Lock`` without a scheduling round when it is free (nearly always: only a
    large copy-up in a worker thread holds it across an await). ``async with``."""

    def __init__(self) -> None:
        self._lock = trio.Lock()

    def locked(self) -> bool:
        return self._lock.locked()

    async def __aenter__(self) -> None:
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


@dataclass(frozen=True)
class Stat:
    """The attributes the kernel sees for a node (the real file's, with our inode number)."""

    ino: int
    st: os.stat_result
    nlink: int
    blocks: int | None = None  # of a partial copy-up: as a whole copy would have it


class Overlay:
    """One mounted overlay: layers, nodes, and the lock for upper-layer changes."""

    def __init__(self, cfg: OverlayConfig) -> None:
        self.cfg = cfg
        self.names = cfg.xattrs
        self.upper_root = os.fsencode(cfg.upper)
        self.scratch = os.fsencode(cfg.scratch)
        self.layers = [LowerLayer(i, os.fsencode(p), cfg.xattrs) for i, p in enumerate(cfg.lowers)]
        self.table = InodeTable()
        self.table.on_shrink = self._forget_caches
        self.lock = FastLock()
        self._tmp_seq = 0
        # set once a copy-up by path (copyup.ensure_upper_dirs) made upper dirs for nodes it
        # did not see: from then on a node without ``upper`` may have one
        self.dirs_copied_by_path = False
        root = self.table.root
        root.upper = True
        root.lowers = tuple((i, b"") for i in range(len(self.layers)))
        self._hardlink_maps: dict[int, HardlinkMap] = {}
        # set once the upper may hold files shared by a clone and its source (fs/clone.py):
        # only then does a change of an upper file look for the mark
        self.cow_links = os.path.exists(self.cow_flag())
        self.partials = PartialCopyUps(cfg.copy_up, cfg.xattrs, self.layers, self.upper_root)
        # Keep every layer's mount busy for the daemon's lifetime: at shutdown, systemd
        # unmounts what it can, and an idle lower or upper would go from under the root.
        self._pins = [
            longpath.open(path, os.O_PATH | os.O_DIRECTORY)
            for path in [
                *(layer.root for layer in self.layers),
                self.upper_root,
                os.fsencode(cfg.work),
            ]
        ]

    # ---------------------------------------------------------------- setup

    def prepare_scratch(self) -> None:
        """Create the scratch dir in the work dir; remove what a crash left there."""
        os.makedirs(self.scratch, exist_ok=True)
        os.makedirs(self.scratch + b"/index", exist_ok=True)
        for name in os.listdir(self.scratch):
            if name.startswith(b"tmp."):
                path = os.path.join(self.scratch, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    try:
                        longpath.unlink(path)
                    except OSError:
                        pass

    def note_dir_copied_by_path(self) -> None:
        self.dirs_copied_by_path = True

    def hardlink_map(self, layer: int) -> HardlinkMap | None:
        """The multiply-linked files of lower layer ``layer``, once ``copyup`` built it."""
        return self._hardlink_maps.get(layer)

    def remember_hardlink_map(self, layer: int, found: HardlinkMap) -> None:
        self._hardlink_maps[layer] = found

    def cow_flag(self) -> bytes:
        """A file in the work dir that says a clone shared upper files (see ``cow_links``)."""
        return self.scratch + b"/cow-links"

    def tmp_path(self) -> bytes:
        self._tmp_seq += 1
        return b"%s/tmp.%d.%d" % (self.scratch, os.getpid(), self._tmp_seq)

    # ---------------------------------------------------------------- paths

    def upper_path(self, node: Node) -> bytes:
        rel = node.path()
        if rel is None:
            raise OSError(errno.ENOENT, "unlinked")
        return self.upper_root + b"/" + rel if rel else self.upper_root

    def upper_child(self, parent: Node, name: bytes) -> bytes:
        return self.upper_path(parent) + b"/" + name

    def _forget_caches(self) -> None:
        """The kernel forgot most inodes (``drop_caches``, memory pressure): so do we, down
        to the lower layers' listings and lstat results, and the C heap gives it back."""
        for layer in self.layers:
            layer.forget_caches()
        sysio.malloc_trim()

    def lower_path(self, node: Node) -> bytes:
        if not node.lowers:
            raise OSError(errno.ENOENT, "no lower")
        idx, rel = node.lowers[0]
        return self.layers[idx].path(rel)

    def real_path(self, node: Node) -> bytes:
        """Where the node's data and attributes are read from: upper if copied up."""
        if node.upper:
            return self.upper_path(node)
        return self.lower_path(node)

    def has_upper(self, node: Node) -> bool:
        """``node.upper``, refreshed if a path-based copy-up may have created it."""
        if not node.upper and self.dirs_copied_by_path and node.is_dir:
            try:
                if stat.S_ISDIR(longpath.lstat(self.upper_path(node)).st_mode):
                    node.upper = True
            except OSError:
                pass
        return node.upper

    # ---------------------------------------------------------------- lookup

    def resolve(self, parent: Node, name: bytes) -> Resolved | None:
        if not parent.is_dir:
            raise OSError(errno.ENOTDIR, "not a directory")
        parent_upper = self.upper_path(parent) if self.has_upper(parent) else None
        return lookup(self.layers, self.names, parent_upper, parent.lowers, name)

    def ino_of(self, res: Resolved, upper_path: bytes) -> int:
        if res.upper is not None:
            origin = decode_origin(getxattr(upper_path, self.names.origin))
            if origin is not None and 0 <= origin[0] < len(self.layers):
                return make_ino(lower_tag(origin[0]), origin[1])
            if res.is_dir and res.lowers:
                idx, rel = res.lowers[0]
                return make_ino(lower_tag(idx), self.layers[idx].lstat(rel).st_ino)
            return make_ino(TAG_UPPER, res.upper.st_ino)
        idx, rel = res.lowers[0]
        return make_ino(lower_tag(idx), self.layers[idx].lstat(rel).st_ino)

    def node_from(self, parent: Node, name: bytes, res: Resolved) -> Node:
        """The node (created or refreshed) that ``parent/name``, resolved as ``res``, names."""
        upath = self.upper_child(parent, name) if res.upper is not None else b""
        clone = parent.clone
        if res.is_dir and res.upper is not None:
            mark = get_clone_mark(upath, self.names)
            clone = clone if mark is None else mark
        ino = self.ino_of(res, upath)
        if clone:
            ino = clone_ino(clone, ino)
        node = self.table.node_for(ino, res.is_dir, parent, name)
        node.clone = clone
        self.refresh_node(node, res)
        return node

    def adopt_new(self, parent: Node, name: bytes, st: os.stat_result) -> Node:
        """The node of an entry ``dirops.install`` just created in the upper: born there,
        so no origin, no lower stack, its number from the upper inode (as ``ino_of``)."""
        is_dir = stat.S_ISDIR(st.st_mode)
        node = self.table.node_for(self.new_ino(parent, st), is_dir, parent, name)
        node.clone = parent.clone
        self.refresh_node(node, Resolved(is_dir, st, ()))
        return node

    def new_ino(self, parent: Node, st: os.stat_result) -> int:
        """The number of a file born in the upper under ``parent`` (as ``node_from``)."""
        ino = make_ino(TAG_UPPER, st.st_ino)
        return clone_ino(parent.clone, ino) if parent.clone else ino

    def index_path(self, layer: int, ino: int) -> bytes:
        """Where the upper copy of a multiply-linked lower file is indexed (see copyup)."""
        return b"%s/index/%d-%d" % (self.scratch, layer, ino)

    def pending_link(self, res: Resolved) -> bytes | None:
        """The index entry of the upper copy that the lower file ``res`` shows already has
        (a name of a multiply-linked lower file not linked up yet), else None. Read only:
        ``copyup.link_pending`` links the name, under the lock."""
        if res.upper is not None or res.is_dir:
            return None
        idx, rel = res.lowers[0]
        st = self.layers[idx].lstat(rel)
        if st.st_nlink < 2 or not stat.S_ISREG(st.st_mode):
            return None
        index = self.index_path(idx, st.st_ino)
        return index if longpath.exists(index) else None

    def refresh_node(self, node: Node, res: Resolved) -> None:
        """Record in ``node`` where it lives now, as a fresh lookup found it."""
        node.upper = res.upper is not None
        if node.is_dir or not node.upper or not node.lowers:
            node.lowers = res.lowers
        node.opaque = res.opaque
        node.redirect = res.redirect

    def node(self, ino: int) -> Node:
        node = self.table.get(ino)
        if node is None:
            raise OSError(errno.ESTALE, "unknown inode")
        return node

    # ---------------------------------------------------------------- attributes

    def stat(self, node: Node, upper_st: os.stat_result | None = None) -> Stat:
        """The node's attributes; ``upper_st``: its upper lstat when the caller has it."""
        blocks = None
        if node.removed_stat is not None and node.path() is None:
            # removed or replaced, still open: a pure upper directory is gone (no link
            # left); one with a lower part counts one link, as kernel overlayfs says
            return Stat(node.ino, node.removed_stat, 1 if node.lowers else 0)
        if node.upper:
            path = self.upper_path(node)
            st = upper_st if upper_st is not None else longpath.lstat(path)
            blocks = self.partials.blocks(path, st)
        else:
            if not node.lowers:
                raise OSError(errno.ENOENT, "no lower")
            idx, rel = node.lowers[0]
            st = self.layers[idx].lstat(rel)
        nlink = st.st_nlink
        tag = node.ino >> TAG_SHIFT
        if nlink > 1 and node.upper and not node.is_dir and 2 <= tag < 2 + len(self.layers):
            try:
                index = self.index_path(tag - 2, node.ino & REAL_MASK)
                ist = longpath.lstat(index)
                if ist.st_ino == st.st_ino and ist.st_dev == st.st_dev:
                    # the index entry is not a name; lower names not linked up yet are
                    nlink += get_pending(index, self.names) - 1
            except OSError:
                pass
        if node.is_dir and node.upper and node.lowers and not node.opaque:
            nlink = 1  # a merged directory: overlayfs cannot count its links either
        elif nlink > 1 and self.cow_links and node.upper and self._shared(node):
            nlink = 1  # shared with a clone (fs/cow.py): its other names are copies
        return Stat(node.ino, st, nlink, blocks)

    def _shared(self, node: Node) -> bool:
        return not node.is_dir and getxattr(self.upper_path(node), self.names.cow) is not None

    def listing(self, node: Node) -> list[bytes]:
        upper = self.upper_path(node) if self.has_upper(node) else None
        lowers = () if node.opaque else node.lowers
        return merged_names(self.layers, upper, lowers)
