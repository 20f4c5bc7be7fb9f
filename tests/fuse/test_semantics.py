"""Overlay semantics on a real mount: merged view, whiteouts, opaque dirs, rename, hard links.

Tests parametrized with ``BOTH`` run the same body against overlayboot and
kernel overlayfs (redirect_dir=on, index=on): the expected values are the
kernel's, so each test both states the semantics and checks the kernel agrees.
The standard tree is described in tests/fuse/conftest.py.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests.fuse.conftest import Ovl, OvlFactory
from tests.fuse.helpers import (
    BOTH,
    KINDS,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Dir,
    errno_of,
    getdents,
    is_whiteout,
    renameat2,
)
from tests.mounts import have_fuse

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not have_fuse(), reason="needs root and /dev/fuse"),
]

TOP_NAMES = {
    "top.txt",
    "shared.txt",
    "triple.txt",
    "fod",
    "dir",
    "only1",
    "meta",
    "suid",
    "sgid",
    "sgiddir",
    "hl_a",
    "link_to_top",
    "secret",
    "pub",
    "fifo",
    "bottom.txt",
    "only2",
    "upper_only.txt",
}


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


# -- merged lookup and readdir -------------------------------------------------------


@BOTH
def test_merged_root_lists_upper_and_both_lowers(ovl: Ovl) -> None:
    assert set(os.listdir(ovl.m())) == TOP_NAMES
    assert len(os.listdir(ovl.m())) == len(TOP_NAMES)


@BOTH
def test_leftmost_layer_wins_and_upper_wins_over_all(ovl: Ovl) -> None:
    assert read(ovl.m("shared.txt")) == "shared from lower1\n"
    assert read(ovl.m("triple.txt")) == "triple from upper\n"
    assert read(ovl.m("dir/common")) == "common from lower1\n"
    assert read(ovl.m("bottom.txt")) == "bottom\n"
    assert read(ovl.m("upper_only.txt")) == "upper only\n"
    # a file in the top lower hides a directory of the same name below it
    assert stat.S_ISREG(os.lstat(ovl.m("fod")).st_mode)
    assert read(ovl.m("fod")) == "file over dir\n"
    assert errno_of(lambda: os.lstat(ovl.m("fod/inner"))) == errno.ENOTDIR


@BOTH
def test_merged_subdirectory(ovl: Ovl) -> None:
    assert sorted(os.listdir(ovl.m("dir"))) == ["a1.txt", "a2.txt", "common", "hl_b", "sub"]
    assert read(ovl.m("dir/a2.txt")) == "a2\n"
    assert read(ovl.m("dir/sub/deep.txt")) == "deep\n"
    assert os.listdir(ovl.m("only2")) == ["y"]
    # a new entry shows up beside the lower ones
    with open(ovl.m("dir/new"), "w") as f:
        f.write("new\n")
    assert sorted(os.listdir(ovl.m("dir"))) == ["a1.txt", "a2.txt", "common", "hl_b", "new", "sub"]
    assert read(ovl.u("dir/new")) == "new\n"


@BOTH
def test_listing_follows_every_change_made_through_the_mount(ovl: Ovl) -> None:
    # overlayboot lets the kernel keep listings cached across opens (FOPEN_CACHE_DIR):
    # each change made through the mount must show in the next listing of both parents
    d, root = ovl.m("dir"), ovl.m()
    expect_d = set(os.listdir(d))
    expect_root = set(os.listdir(root))

    def check(step: str) -> None:
        assert set(os.listdir(d)) == expect_d, step
        assert set(os.listdir(root)) == expect_root, step
        assert {e[0].decode() for e in getdents(d, 280)} - {".", ".."} == expect_d, step

    check("start")
    open(os.path.join(d, "new"), "w").close()
    expect_d.add("new")
    check("create")
    os.unlink(os.path.join(d, "a1.txt"))
    expect_d.discard("a1.txt")
    check("unlink of a lower file")
    os.rename(os.path.join(d, "a2.txt"), os.path.join(d, "renamed"))
    expect_d ^= {"a2.txt", "renamed"}
    check("rename within")
    os.rename(os.path.join(d, "renamed"), ovl.m("moved_out"))
    expect_d.discard("renamed")
    expect_root.add("moved_out")
    check("rename out")
    os.rename(ovl.m("top.txt"), os.path.join(d, "moved_in"))
    expect_root.discard("top.txt")
    expect_d.add("moved_in")
    check("rename in")
    os.mkdir(os.path.join(d, "nd"))
    expect_d.add("nd")
    check("mkdir")
    os.rmdir(os.path.join(d, "nd"))
    expect_d.discard("nd")
    check("rmdir")
    os.link(os.path.join(d, "common"), os.path.join(d, "common2"))
    expect_d.add("common2")
    check("link")
    os.symlink("common", os.path.join(d, "sl"))
    os.mkfifo(os.path.join(d, "ff"))
    expect_d |= {"sl", "ff"}
    check("symlink, mkfifo")
    os.unlink(os.path.join(d, "sub", "deep.txt"))
    os.rmdir(os.path.join(d, "sub"))
    expect_d.discard("sub")
    check("rmdir of a merged lower dir")
    os.mkdir(os.path.join(d, "sub"))
    expect_d.add("sub")
    check("mkdir over it (opaque)")
    assert os.listdir(os.path.join(d, "sub")) == []


@BOTH
def test_listing_has_dot_and_dotdot_once_and_matching_inodes(ovl: Ovl) -> None:
    for rel in ("", "dir", "only1", "meta/inner"):
        ents = getdents(ovl.m(rel), 4096)
        names = [e[0] for e in ents]
        assert names.count(b".") == 1 and names.count(b"..") == 1, (rel, names)
        assert len(names) == len(set(names))
        assert {n.decode() for n in names} - {".", ".."} == set(os.listdir(ovl.m(rel)))
        for name, d_ino, _off, d_type in ents:
            if name in (b".", b".."):
                continue
            st = os.lstat(os.path.join(ovl.m(rel), name.decode()))
            assert d_ino == st.st_ino, (rel, name)
            assert d_type == stat.S_IFMT(st.st_mode) >> 12, (rel, name)
    assert os.lstat(ovl.m("dir/.")).st_ino == os.lstat(ovl.m("dir")).st_ino
    assert os.lstat(ovl.m("dir/sub/..")).st_ino == os.lstat(ovl.m("dir")).st_ino


def _big_tree(o: Ovl) -> None:
    (o.lower1 / "big").mkdir()
    (o.lower2 / "big").mkdir()
    for i in range(3000):
        (o.lower1 / "big" / f"f{i:04d}").touch()
    for i in range(2000, 5000):
        (o.lower2 / "big" / f"f{i:04d}").touch()


@pytest.mark.parametrize("kind", ["overlayboot", "kernel"])
def test_large_directory_listed_completely_and_seekable(ovl_factory: OvlFactory, kind: str) -> None:
    o = ovl_factory(kind, prepare=_big_tree)
    big = o.m("big")
    for i in range(100):
        os.unlink(os.path.join(big, f"f{i:04d}"))
        open(os.path.join(big, f"u{i:04d}"), "w").close()
    expected = {f"f{i:04d}" for i in range(100, 5000)} | {f"u{i:04d}" for i in range(100)}
    assert len(expected) == 5000

    listed = os.listdir(big)
    assert len(listed) == 5000 and set(listed) == expected
    # small getdents buffers: many calls, each resuming at the previous offset
    for bufsize in (280, 4096):
        names = [e[0].decode() for e in getdents(big, bufsize)]
        assert len(names) == 5002, bufsize
        assert set(names) == expected | {".", ".."}

    with Dir(big) as d:
        order: list[tuple[int, str]] = []
        while True:
            pos = d.tell()
            name = d.read()
            if name is None:
                break
            order.append((pos, name.decode()))
        assert len(order) == 5002 and {n for _, n in order} == expected | {".", ".."}
        for k in (4999, 0, 1, 2, 77, 2500, 5001, 3333):
            pos, name = order[k]
            d.seek(pos)
            assert d.read() == name.encode(), k
            assert d.read() == (order[k + 1][1].encode() if k + 1 < len(order) else None)
        d.rewind()
        assert [d.read() for _ in range(10)] == [n.encode() for _, n in order[:10]]


DEEP = "d" * 200
DEPTH = 25  # 25 * 201 bytes: deeper than PATH_MAX (4096)


def _deep_tree(o: Ovl) -> None:
    fd = os.open(o.lower1, os.O_RDONLY)
    try:
        for _ in range(DEPTH):
            os.mkdir(DEEP, dir_fd=fd)
            fd, old = os.open(DEEP, os.O_RDONLY, dir_fd=fd), fd
            os.close(old)
        leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"leaf\n")
        os.close(leaf)
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", KINDS)
def test_paths_deeper_than_path_max(ovl_factory: OvlFactory, kind: str) -> None:
    """A merged path longer than PATH_MAX: the daemon's layer paths are longer still, so
    every operation there takes overlayboot.fs.longpath's walk (the kernel works by
    dentries and has no such limit)."""
    o = ovl_factory(kind, prepare=_deep_tree)
    fd = os.open(o.m(), os.O_RDONLY)
    try:
        for _ in range(DEPTH):
            fd, old = os.open(DEEP, os.O_RDONLY, dir_fd=fd), fd
            os.close(old)
        leaf = os.open("leaf", os.O_RDWR | os.O_APPEND, dir_fd=fd)  # a deep copy-up
        os.write(leaf, b"more\n")
        assert os.pread(leaf, 100, 0) == b"leaf\nmore\n"
        os.close(leaf)
        os.close(os.open("new", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        assert sorted(os.listdir(fd)) == ["leaf", "new"]
        _deep_changes(fd)
        assert sorted(os.listdir(fd)) == ["dir", "link", "moved"]
    finally:
        os.close(fd)
    o.remount()
    deep = "/".join([DEEP] * DEPTH)
    fd = os.open(o.m(), os.O_RDONLY)
    try:
        for part in deep.split("/"):
            fd, old = os.open(part, os.O_RDONLY, dir_fd=fd), fd
            os.close(old)
        assert sorted(os.listdir(fd)) == ["dir", "link", "moved"]
        with open(os.open("moved", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"leaf\nmore\n"
        assert os.readlink("link", dir_fd=fd) == "moved"
        dirfd = os.open("dir", os.O_RDONLY, dir_fd=fd)
        try:
            assert os.getxattr(dirfd, "user.deep") == b"yes"
            assert stat.S_IMODE(os.fstat(dirfd).st_mode) == 0o750
        finally:
            os.close(dirfd)
    finally:
        os.close(fd)


def _deep_changes(fd: int) -> None:
    """A rename over the deep lower file's name (a whiteout), an unlink, a directory with
    an xattr and a mode, a symlink: each a different system call at a long path."""
    os.rename("leaf", "moved", src_dir_fd=fd, dst_dir_fd=fd)
    os.unlink("new", dir_fd=fd)
    os.mkdir("dir", 0o700, dir_fd=fd)
    os.chmod("dir", 0o750, dir_fd=fd)
    dirfd = os.open("dir", os.O_RDONLY, dir_fd=fd)
    try:
        os.setxattr(dirfd, "user.deep", b"yes")
    finally:
        os.close(dirfd)
    os.symlink("moved", "link", dir_fd=fd)


LEAF = 2  # the length of every name made at the bottom of the near-limit directory


def _near_limit_dir(mnt: str) -> str:
    """A relative directory path that makes ``MNT/REL/xx`` exactly 4095 bytes, the most
    a path may hold; the same names under the upper dir (3 bytes longer) go past it."""
    want = 4095 - len(mnt) - 2 - LEAF
    parts: list[str] = []
    while len("/".join(parts)) < want - 201:
        parts.append("d" * 200)
    parts.append("e" * (want - len("/".join(parts)) - (1 if parts else 0)))
    return "/".join(parts)


def _lower_chain(o: Ovl, rel: str) -> None:
    fd = os.open(o.lower1, os.O_RDONLY)
    try:
        for part in rel.split("/"):
            os.mkdir(part, dir_fd=fd)
            fd, old = os.open(part, os.O_RDONLY, dir_fd=fd), fd
            os.close(old)
        leaf = os.open("lf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"lower\n")
        os.close(leaf)
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", KINDS)
def test_every_operation_at_the_path_limit(ovl_factory: OvlFactory, kind: str) -> None:
    """Paths of 4095 bytes through the mount (the kernel's limit), whose upper paths are
    longer: each system call the issue listed, as kernel overlayfs takes them."""
    o = ovl_factory(kind, prepare=lambda o: _lower_chain(o, _near_limit_dir(o.m())))
    d = o.m(_near_limit_dir(o.m()))
    assert len(f"{d}/xx") == 4095

    def p(name: str) -> str:
        return f"{d}/{name}"

    with open(p("f1"), "w") as f:
        f.write("one")
    os.chown(p("f1"), 12, 34)
    os.chmod(p("f1"), 0o600)
    os.truncate(p("f1"), 2)
    os.link(p("f1"), p("f2"))
    os.mkfifo(p("fi"))
    os.mknod(p("nd"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkdir(p("dd"))
    os.rmdir(p("dd"))
    os.symlink("f1", p("sl"))
    os.unlink(p("f2"))
    os.rename(p("lf"), p("mv"))  # the lower file: a whiteout at the old name
    os.chmod(p("mv"), 0o640)
    for remounted in (False, True):
        if remounted:
            o.remount()
        assert sorted(os.listdir(d)) == ["f1", "fi", "mv", "nd", "sl"], remounted
        st = os.lstat(p("f1"))
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (12, 34, 0o600)
        assert (st.st_size, st.st_nlink) == (2, 1)
        assert stat.S_ISFIFO(os.lstat(p("fi")).st_mode)
        assert os.lstat(p("nd")).st_rdev == os.makedev(1, 3)
        assert os.readlink(p("sl")) == "f1"
        with open(p("mv")) as f:
            assert f.read() == "lower\n"
        assert stat.S_IMODE(os.lstat(p("mv")).st_mode) == 0o640


# -- whiteouts and opaque directories -----------------------------------------------


@BOTH
def test_unlink_of_lower_file_leaves_a_whiteout(ovl: Ovl) -> None:
    os.unlink(ovl.m("top.txt"))
    os.unlink(ovl.m("shared.txt"))  # in both lowers: neither may show through
    os.unlink(ovl.m("dir/a2.txt"))  # bottom lower only
    for rel in ("top.txt", "shared.txt", "dir/a2.txt"):
        assert is_whiteout(ovl.u(rel)), rel
        assert errno_of(lambda rel=rel: os.lstat(ovl.m(rel))) == errno.ENOENT
    assert "top.txt" not in os.listdir(ovl.m())
    assert "shared.txt" not in os.listdir(ovl.m())
    assert sorted(os.listdir(ovl.m("dir"))) == ["a1.txt", "common", "hl_b", "sub"]
    # a pure-upper file goes without a trace
    os.unlink(ovl.m("upper_only.txt"))
    assert not os.path.lexists(ovl.u("upper_only.txt"))
    # an upper file over lower ones is replaced by a whiteout
    os.unlink(ovl.m("triple.txt"))
    assert is_whiteout(ovl.u("triple.txt"))
    # a new file over a whiteout replaces it
    with open(ovl.m("top.txt"), "w") as f:
        f.write("again\n")
    assert read(ovl.m("top.txt")) == "again\n"
    assert stat.S_ISREG(os.lstat(ovl.u("top.txt")).st_mode)
    ovl.remount()
    assert read(ovl.m("top.txt")) == "again\n"
    assert not os.path.lexists(ovl.m("shared.txt"))


@BOTH
def test_rmdir_then_mkdir_of_lower_dir_is_opaque(ovl: Ovl) -> None:
    os.unlink(ovl.m("only1/x"))
    os.rmdir(ovl.m("only1"))
    assert is_whiteout(ovl.u("only1"))
    assert not os.path.lexists(ovl.m("only1"))
    os.mkdir(ovl.m("only1"))
    assert os.listdir(ovl.m("only1")) == []
    assert os.getxattr(ovl.u("only1"), "trusted.overlay.opaque") == b"y"
    ovl.remount()
    assert os.listdir(ovl.m("only1")) == []
    assert not os.path.lexists(ovl.m("only1/x"))


@BOTH
def test_mkdir_over_a_merged_dir_removed_entry_by_entry(ovl: Ovl) -> None:
    with pytest.raises(OSError) as exc:
        os.rmdir(ovl.m("dir"))
    assert exc.value.errno == errno.ENOTEMPTY
    for rel in ("dir/a1.txt", "dir/a2.txt", "dir/common", "dir/hl_b", "dir/sub/deep.txt"):
        os.unlink(ovl.m(rel))
    assert errno_of(lambda: os.rmdir(ovl.m("dir"))) == errno.ENOTEMPTY  # sub is left
    os.rmdir(ovl.m("dir/sub"))
    assert os.listdir(ovl.m("dir")) == []
    os.rmdir(ovl.m("dir"))
    assert not os.path.lexists(ovl.m("dir"))
    assert is_whiteout(ovl.u("dir"))
    os.mkdir(ovl.m("dir"))
    assert os.listdir(ovl.m("dir")) == []
    assert os.getxattr(ovl.u("dir"), "trusted.overlay.opaque") == b"y"


@BOTH
def test_rmdir_fails_enotempty_when_only_a_lower_shows_entries(ovl: Ovl) -> None:
    os.unlink(ovl.m("dir/a1.txt"))  # now dir is in the upper, holding a whiteout
    assert errno_of(lambda: os.rmdir(ovl.m("dir"))) == errno.ENOTEMPTY
    assert errno_of(lambda: os.rmdir(ovl.m("only2"))) == errno.ENOTEMPTY
    assert sorted(os.listdir(ovl.m("dir"))) == ["a2.txt", "common", "hl_b", "sub"]
    assert os.listdir(ovl.m("only2")) == ["y"]
    os.mkdir(ovl.m("empty"))
    os.rmdir(ovl.m("empty"))
    assert not os.path.lexists(ovl.u("empty"))


def _legacy(o: Ovl) -> None:
    (o.lower1 / ".wh.bottom.txt").touch()
    (o.lower1 / "dir" / ".wh.a2.txt").touch()
    (o.lower1 / "only2").mkdir()
    (o.lower1 / "only2" / ".wh..wh..opq").touch()
    (o.lower1 / "only2" / "mine").write_text("mine\n")


def test_legacy_whiteouts_in_a_lower_layer_hide_entries(ovl_factory: OvlFactory) -> None:
    # aufs-style markers are not kernel overlayfs format (it shows them as plain files);
    # overlayboot honours them in lower layers, as fuse-overlayfs does
    o = ovl_factory(prepare=_legacy)
    root = os.listdir(o.m())
    assert "bottom.txt" not in root and not os.path.lexists(o.m("bottom.txt"))
    assert not any(n.startswith(".wh.") for n in root)
    assert sorted(os.listdir(o.m("dir"))) == ["a1.txt", "common", "hl_b", "sub"]
    assert not os.path.lexists(o.m("dir/a2.txt"))
    assert os.listdir(o.m("only2")) == ["mine"]
    assert not os.path.lexists(o.m("only2/y"))
    assert not os.path.lexists(o.m("only2/.wh..wh..opq"))
    # a name hidden by a legacy whiteout can be created again
    with open(o.m("bottom.txt"), "w") as f:
        f.write("new bottom\n")
    assert read(o.m("bottom.txt")) == "new bottom\n"


# -- rename ---------------------------------------------------------------------------


@BOTH
def test_rename_lower_file(ovl: Ovl) -> None:
    ino = os.lstat(ovl.m("top.txt")).st_ino
    os.rename(ovl.m("top.txt"), ovl.m("dir/moved.txt"))
    assert not os.path.lexists(ovl.m("top.txt"))
    assert is_whiteout(ovl.u("top.txt"))
    assert read(ovl.m("dir/moved.txt")) == "top\n"
    assert os.lstat(ovl.m("dir/moved.txt")).st_ino == ino
    os.rename(ovl.m("bottom.txt"), ovl.m("bottom2.txt"))
    assert read(ovl.m("bottom2.txt")) == "bottom\n"
    assert "bottom.txt" not in os.listdir(ovl.m())
    ovl.remount()
    assert read(ovl.m("dir/moved.txt")) == "top\n"
    assert not os.path.lexists(ovl.m("top.txt"))


@BOTH
def test_rename_lower_dir_in_place_sets_redirect(ovl: Ovl) -> None:
    ino = os.lstat(ovl.m("only1")).st_ino
    os.rename(ovl.m("only1"), ovl.m("renamed"))
    assert not os.path.lexists(ovl.m("only1"))
    assert os.listdir(ovl.m("renamed")) == ["x"]
    assert read(ovl.m("renamed/x")) == "x\n"
    assert os.lstat(ovl.m("renamed")).st_ino == ino
    assert os.getxattr(ovl.u("renamed"), "trusted.overlay.redirect") in (b"only1", b"/only1")
    assert is_whiteout(ovl.u("only1"))
    ovl.remount()
    assert os.listdir(ovl.m("renamed")) == ["x"]
    assert "only1" not in os.listdir(ovl.m())


@BOTH
def test_rename_merged_dir_elsewhere_keeps_children_of_both_lowers(ovl: Ovl) -> None:
    os.rename(ovl.m("dir"), ovl.m("only2/moved"))
    assert not os.path.lexists(ovl.m("dir"))
    children = ["a1.txt", "a2.txt", "common", "hl_b", "sub"]
    assert sorted(os.listdir(ovl.m("only2/moved"))) == children
    assert read(ovl.m("only2/moved/common")) == "common from lower1\n"
    assert read(ovl.m("only2/moved/sub/deep.txt")) == "deep\n"
    assert os.getxattr(ovl.u("only2/moved"), "trusted.overlay.redirect") == b"/dir"
    # the moved dir still works as a merged dir: delete and add entries in it
    os.unlink(ovl.m("only2/moved/a2.txt"))
    with open(ovl.m("only2/moved/new"), "w") as f:
        f.write("n\n")
    ovl.remount()
    assert sorted(os.listdir(ovl.m("only2/moved"))) == ["a1.txt", "common", "hl_b", "new", "sub"]
    assert not os.path.lexists(ovl.m("dir"))
    # and it can move again
    os.rename(ovl.m("only2/moved"), ovl.m("back"))
    assert sorted(os.listdir(ovl.m("back"))) == ["a1.txt", "common", "hl_b", "new", "sub"]


@BOTH
def test_rename_over_existing_targets(ovl: Ovl) -> None:
    os.rename(ovl.m("top.txt"), ovl.m("bottom.txt"))
    assert read(ovl.m("bottom.txt")) == "top\n"
    assert not os.path.lexists(ovl.m("top.txt"))
    os.rename(ovl.m("upper_only.txt"), ovl.m("shared.txt"))
    assert read(ovl.m("shared.txt")) == "upper only\n"
    assert not os.path.lexists(ovl.m("upper_only.txt"))
    # a dir over an empty dir works; over a non-empty one fails
    os.mkdir(ovl.m("empty"))
    os.rename(ovl.m("only1"), ovl.m("empty"))
    assert os.listdir(ovl.m("empty")) == ["x"]
    assert errno_of(lambda: os.rename(ovl.m("empty"), ovl.m("only2"))) == errno.ENOTEMPTY
    assert errno_of(lambda: os.rename(ovl.m("hl_a"), ovl.m("only2"))) == errno.EISDIR
    assert errno_of(lambda: os.rename(ovl.m("only2"), ovl.m("hl_a"))) == errno.ENOTDIR
    ovl.remount()
    assert sorted(os.listdir(ovl.m())) == sorted(
        (TOP_NAMES - {"top.txt", "upper_only.txt", "only1"}) | {"empty"}
    )
    assert read(ovl.m("bottom.txt")) == "top\n"
    assert os.listdir(ovl.m("empty")) == ["x"]


@BOTH
def test_rename_noreplace(ovl: Ovl) -> None:
    with pytest.raises(OSError) as exc:
        renameat2(ovl.m("top.txt"), ovl.m("bottom.txt"), RENAME_NOREPLACE)
    assert exc.value.errno == errno.EEXIST
    assert read(ovl.m("top.txt")) == "top\n" and read(ovl.m("bottom.txt")) == "bottom\n"
    assert (
        errno_of(lambda: renameat2(ovl.m("only1"), ovl.m("only2"), RENAME_NOREPLACE))
        == errno.EEXIST
    )
    renameat2(ovl.m("top.txt"), ovl.m("fresh.txt"), RENAME_NOREPLACE)
    assert read(ovl.m("fresh.txt")) == "top\n" and not os.path.lexists(ovl.m("top.txt"))
    # a whited-out name is free
    renameat2(ovl.m("fresh.txt"), ovl.m("top.txt"), RENAME_NOREPLACE)
    assert read(ovl.m("top.txt")) == "top\n"


@BOTH
def test_rename_exchange(ovl: Ovl) -> None:
    renameat2(ovl.m("top.txt"), ovl.m("bottom.txt"), RENAME_EXCHANGE)
    assert read(ovl.m("top.txt")) == "bottom\n"
    assert read(ovl.m("bottom.txt")) == "top\n"
    # a file and a lower dir trade places
    renameat2(ovl.m("shared.txt"), ovl.m("only1"), RENAME_EXCHANGE)
    assert stat.S_ISDIR(os.lstat(ovl.m("shared.txt")).st_mode)
    assert os.listdir(ovl.m("shared.txt")) == ["x"]
    assert read(ovl.m("only1")) == "shared from lower1\n"
    # two merged dirs
    renameat2(ovl.m("dir"), ovl.m("only2"), RENAME_EXCHANGE)
    assert os.listdir(ovl.m("dir")) == ["y"]
    assert sorted(os.listdir(ovl.m("only2"))) == ["a1.txt", "a2.txt", "common", "hl_b", "sub"]
    assert (
        errno_of(lambda: renameat2(ovl.m("top.txt"), ovl.m("nothing"), RENAME_EXCHANGE))
        == errno.ENOENT
    )
    ovl.remount()
    assert read(ovl.m("top.txt")) == "bottom\n"
    assert os.listdir(ovl.m("shared.txt")) == ["x"]
    assert read(ovl.m("only1")) == "shared from lower1\n"
    assert os.listdir(ovl.m("dir")) == ["y"]
    assert sorted(os.listdir(ovl.m("only2"))) == ["a1.txt", "a2.txt", "common", "hl_b", "sub"]


# -- hard links -----------------------------------------------------------------------


@BOTH
def test_link_to_a_lower_file(ovl: Ovl) -> None:
    ino = os.lstat(ovl.m("top.txt")).st_ino
    os.link(ovl.m("top.txt"), ovl.m("dir/top.link"))
    a, b = os.lstat(ovl.m("top.txt")), os.lstat(ovl.m("dir/top.link"))
    assert a.st_ino == b.st_ino == ino
    assert a.st_nlink == b.st_nlink == 2
    with open(ovl.m("dir/top.link"), "a") as f:
        f.write("more\n")
    assert read(ovl.m("top.txt")) == "top\nmore\n"
    assert os.lstat(ovl.u("top.txt")).st_ino == os.lstat(ovl.u("dir/top.link")).st_ino
    ovl.remount()
    a, b = os.lstat(ovl.m("top.txt")), os.lstat(ovl.m("dir/top.link"))
    assert a.st_ino == b.st_ino == ino and a.st_nlink == 2
    os.unlink(ovl.m("top.txt"))
    assert os.lstat(ovl.m("dir/top.link")).st_nlink == 1
    assert read(ovl.m("dir/top.link")) == "top\nmore\n"


@BOTH
def test_lower_hard_links_stay_one_inode_after_copy_up(ovl: Ovl) -> None:
    a0, b0 = os.lstat(ovl.m("hl_a")), os.lstat(ovl.m("dir/hl_b"))
    assert a0.st_ino == b0.st_ino
    assert a0.st_nlink == b0.st_nlink == 2
    with open(ovl.m("hl_a"), "a") as f:
        f.write("changed\n")
    assert read(ovl.m("dir/hl_b")) == "hardlinked\nchanged\n"
    a1, b1 = os.lstat(ovl.m("hl_a")), os.lstat(ovl.m("dir/hl_b"))
    assert a1.st_ino == b1.st_ino == a0.st_ino
    assert a1.st_nlink == b1.st_nlink == 2
    with open(ovl.m("dir/hl_b"), "a") as f:
        f.write("again\n")
    assert read(ovl.m("hl_a")) == "hardlinked\nchanged\nagain\n"
    ovl.remount()
    assert read(ovl.m("dir/hl_b")) == "hardlinked\nchanged\nagain\n"
    assert os.lstat(ovl.m("hl_a")).st_ino == os.lstat(ovl.m("dir/hl_b")).st_ino == a0.st_ino


@BOTH
def test_lower_hard_link_under_a_renamed_dir(ovl: Ovl) -> None:
    os.rename(ovl.m("dir"), ovl.m("dir2"))
    with open(ovl.m("hl_a"), "a") as f:
        f.write("changed\n")
    ovl.remount()
    assert read(ovl.m("dir2/hl_b")) == "hardlinked\nchanged\n"
    assert read(ovl.m("hl_a")) == "hardlinked\nchanged\n"
    a, b = os.lstat(ovl.m("hl_a")), os.lstat(ovl.m("dir2/hl_b"))
    assert a.st_ino == b.st_ino and a.st_nlink == b.st_nlink == 2


# -- O_TMPFILE -----------------------------------------------------------------------


def _link_open_file(fd: int, path: str) -> None:
    """linkat(2) of /proc/self/fd/FD with AT_SYMLINK_FOLLOW, as ``man 2 open`` shows for
    O_TMPFILE (os.link takes linkat only when given a directory fd)."""
    procfd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(str(fd), path, src_dir_fd=procfd, follow_symlinks=True)
    finally:
        os.close(procfd)


@BOTH
def test_o_tmpfile_has_no_name_until_linked(ovl: Ovl) -> None:
    """``open(dir, O_TMPFILE)`` in a lower directory: no name, nlink 0, readable and
    writable; ``linkat`` names it (through the mount and after a remount); with
    ``O_EXCL`` it can never be linked. Kernel overlayfs does all of this."""
    fd = os.open(ovl.m("dir"), os.O_TMPFILE | os.O_RDWR, 0o640)
    try:
        os.write(fd, b"anonymous\n")
        st = os.fstat(fd)
        assert (st.st_nlink, stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)) == (
            0,
            stat.S_IFREG,
            0o640,
        )
        assert sorted(os.listdir(ovl.m("dir"))) == ["a1.txt", "a2.txt", "common", "hl_b", "sub"]
        _link_open_file(fd, ovl.m("dir/named"))
        assert os.fstat(fd).st_nlink == 1
        assert os.pread(fd, 100, 0) == b"anonymous\n"
    finally:
        os.close(fd)
    with open(ovl.m("dir/named"), "rb") as f:
        assert f.read() == b"anonymous\n"
    fd = os.open(ovl.m("dir"), os.O_TMPFILE | os.O_RDWR | os.O_EXCL, 0o600)
    try:
        assert errno_of(lambda: _link_open_file(fd, ovl.m("dir/never"))) == errno.ENOENT
    finally:
        os.close(fd)
    ovl.remount()
    with open(ovl.m("dir/named"), "rb") as f:
        assert f.read() == b"anonymous\n"
    assert "never" not in os.listdir(ovl.m("dir"))
