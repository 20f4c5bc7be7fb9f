"""The inode table's memory shape: a non-directory keeps no lower path of its own while it
is its parent's lower joined with its name, and shows the same lower through renames, hard
links and unlinks; forgotten nodes leave the table."""

from __future__ import annotations

import tracemalloc

import pytest

from overlayboot.fs import inodes
from overlayboot.fs.inodes import InodeTable, Node, make_ino


def _tree(table: InodeTable) -> Node:
    table.root.lowers = ((0, b""),)
    top = table.node_for(make_ino(2, 10), True, table.root, b"top")
    top.lowers = ((0, b"top"), (1, b"top"))
    top.nlookup = 1
    return top


def _file(table: InodeTable, parent: Node, name: bytes, ino: int, lower: bytes) -> Node:
    node = table.node_for(make_ino(2, ino), False, parent, name)
    node.lowers = ((1, lower),)
    node.nlookup += 1
    return node


def test_derived_lower_follows_renames_and_links() -> None:
    table = InodeTable()
    top = _tree(table)
    other = table.node_for(make_ino(2, 11), True, table.root, b"other")
    other.lowers = ((0, b"other"),)
    other.nlookup = 1
    f = _file(table, top, b"f", 100, b"top/f")
    assert f.lowers == ((1, b"top/f"),)
    assert f._lower_at == 1  # the parent's second layer: no path of its own
    # a name that is not the parent's lower joined with it keeps the path itself
    g = _file(table, top, b"g", 101, b"elsewhere/g")
    assert g._lower_at == -1 and g.lowers == ((1, b"elsewhere/g"),)
    # rename: the lower stays what it was
    table.move_name(f, (top, b"f"), (other, b"renamed"))
    assert f.lowers == ((1, b"top/f"),) and f.path() == b"other/renamed"
    # hard link, then the first name goes: the alias becomes the name, the lower stays
    h = _file(table, top, b"h", 102, b"top/h")
    table.add_name(h, other, b"link")
    table.remove_name(h, top, b"h")
    assert h.path() == b"other/link" and h.lowers == ((1, b"top/h"),)
    # unlinked and still open: its lower is still known
    k = _file(table, top, b"k", 103, b"top/k")
    k.handles = 1
    table.remove_name(k, top, b"k")
    assert k.path() is None and k.lowers == ((1, b"top/k"),)
    # the parent's stack changes later (made opaque): the child's lower does not
    m = _file(table, top, b"m", 104, b"top/m")
    top.lowers = ()
    assert m.lowers == ((1, b"top/m"),)


def test_forget_frees_and_nodes_stay_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inodes, "COMPACT_ABOVE", 1000)
    table = InodeTable()
    top = _tree(table)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        nodes = [_file(table, top, b"f%07d" % i, 1000 + i, b"top/f%07d" % i) for i in range(20000)]
        per_node = (tracemalloc.get_traced_memory()[0] - before) / len(nodes)
    finally:
        tracemalloc.stop()
    assert per_node < 330, per_node  # node, name, table entry: no list, no path, no tuples
    big = table.nodes
    shrunk: list[int] = []
    table.on_shrink = lambda: shrunk.append(len(table.nodes))
    for node in nodes:
        table.forget(node.ino, 1)
    assert set(table.nodes) == {1, top.ino}
    assert table.nodes is not big  # copied once most were gone: the big table is freed
    assert shrunk and shrunk[0] < 20000 // 4  # and the caches behind it were told
    assert top.nchildren == 0
