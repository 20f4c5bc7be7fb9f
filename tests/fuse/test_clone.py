"""Lazy copy-on-write clones (``overlayboot clone``) on real mounts.

- a clone of lower content costs no data and little upper space, whatever its size, and
  shows what its source showed; a first 4 KiB write into a cloned large file costs one
  chunk;
- changes on either side never show on the other (lower, upper and merged sources,
  clones of clones), across a remount, and after ``upper seal`` kernel overlayfs shows
  the same trees;
- files of a clone have inode numbers of their own;
- another uid cannot clone into a directory it cannot write, nor a source it cannot
  reach or read, nor read through a clone what it could not read at the source;
- the command's errors: one line, exit code 9 (2 for bad arguments).
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import time

import pytest

from overlayboot.fs.clonereq import REQUEST_XATTR
from tests.fuse.clonetree import clone, clone_cli, inos, upper_bytes, view
from tests.fuse.conftest import Ovl, OvlFactory
from tests.fuse.helpers import as_user, seal_upper, xattrs
from tests.mounts import have_fuse, have_kernel_overlay

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.clone,
    pytest.mark.skipif(not have_fuse(), reason="needs root and /dev/fuse"),
]

BIG = 256 << 20  # a "large" file in the tests (the bench clones 1 GiB)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _seal_and_compare(o: Ovl, expected: dict[str, dict[str, object]]) -> None:
    """Unmount, seal, and check kernel overlayfs shows ``expected`` (rel -> view)."""
    o.umount()
    seal_upper(o.upper)
    for dirpath, _dirs, files in os.walk(o.upper):
        for name in files:
            p = os.path.join(dirpath, name)
            assert not any(k.endswith((".chunks", ".cow")) for k in xattrs(p)), p
    if not have_kernel_overlay():
        return
    kmnt = o.base / "kmnt"
    (o.base / "kwork").mkdir()
    kmnt.mkdir()
    lowers = ":".join(str(p) for p in o.lowers)
    # index=off (Debian's default, and the boot flow's): with index=on kernel overlayfs
    # refuses (ESTALE) a lower directory merged into two upper ones, a source and its clone
    work = o.base / "kwork"
    opts = f"lowerdir={lowers},upperdir={o.upper},workdir={work},redirect_dir=on,index=off"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(kmnt)], check=True)
    try:
        for rel, want in expected.items():
            assert view(kmnt / rel) == want, rel
    finally:
        subprocess.run(["umount", str(kmnt)], check=True)


def test_clone_of_a_lower_tree_is_lazy_and_apart(ovl: Ovl) -> None:
    src_view = view(ovl.m("dir"))
    before = upper_bytes(ovl.upper)
    t0 = time.monotonic()
    clone(ovl.m("dir"), ovl.m("copy"))
    took = time.monotonic() - t0
    assert view(ovl.m("copy")) == src_view
    assert upper_bytes(ovl.upper) - before <= 64 << 10
    assert took < 2.0
    # files of their own: no number shared with the source
    assert not set(inos(ovl.m("copy")).values()) & set(inos(ovl.m("dir")).values())
    assert os.stat(ovl.m("copy")).st_ino != os.stat(ovl.m("dir")).st_ino
    # changes in the clone stay there
    with open(ovl.m("copy/a1.txt"), "a") as f:
        f.write("more\n")
    os.unlink(ovl.m("copy/common"))
    os.mkdir(ovl.m("copy/sub/new"))
    os.chmod(ovl.m("copy/sub/deep.txt"), 0o600)
    assert view(ovl.m("dir")) == src_view
    # and changes in the source stay there
    with open(ovl.m("dir/a2.txt"), "w") as f:
        f.write("changed\n")
    copy_view = view(ovl.m("copy"))
    assert _read(ovl.m("copy/a1.txt")) == "a1\nmore\n"
    assert _read(ovl.m("copy/a2.txt")) == "a2\n"
    assert not os.path.exists(ovl.m("copy/common"))
    dir_view = view(ovl.m("dir"))
    ovl.remount()
    assert view(ovl.m("copy")) == copy_view
    assert view(ovl.m("dir")) == dir_view
    _seal_and_compare(ovl, {"copy": copy_view, "dir": dir_view})


def test_clone_of_a_large_lower_file_costs_a_chunk_per_write(ovl_factory: OvlFactory) -> None:
    def prepare(o: Ovl) -> None:
        with open(o.lower1 / "big", "wb") as f:
            f.truncate(BIG)  # sparse in the lower: no disk, 1 GiB seen
            f.seek(BIG // 2)
            f.write(b"middle")
            f.seek(BIG - 5)
            f.write(b"tail!")

    o = ovl_factory(prepare=prepare)
    before = upper_bytes(o.upper)
    t0 = time.monotonic()
    clone(o.m("big"), o.m("big2"))
    took = time.monotonic() - t0
    grown = upper_bytes(o.upper) - before
    assert grown <= 64 << 10, grown
    assert took < 2.0, took
    assert os.stat(o.m("big2")).st_size == BIG
    with open(o.m("big2"), "r+b") as f:
        f.seek(BIG // 2)
        assert f.read(6) == b"middle"
        f.seek(BIG // 4)
        f.write(b"x" * 4096)
    chunk = 64 << 10
    assert upper_bytes(o.upper) - before <= grown + chunk
    with open(o.m("big2"), "rb") as f:
        f.seek(BIG // 4 - 1)
        assert f.read(4098) == b"\0" + b"x" * 4096 + b"\0"
        f.seek(BIG - 5)
        assert f.read() == b"tail!"
    with open(o.m("big"), "rb") as f:
        f.seek(BIG // 4)
        assert f.read(4096) == bytes(4096)
    o.remount()
    with open(o.m("big2"), "rb") as f:
        f.seek(BIG // 4)
        assert f.read(4096) == b"x" * 4096


def _make_upper_changes(o: Ovl) -> None:
    """The source `dir` becomes merged: new, changed, deleted and renamed entries, and
    two names of one upper file."""
    with open(o.m("dir/new.txt"), "w") as f:
        f.write("new in upper\n")
    with open(o.m("dir/a1.txt"), "a") as f:
        f.write("copied up\n")
    os.unlink(o.m("dir/common"))
    os.rename(o.m("dir/sub"), o.m("dir/sub2"))
    os.makedirs(o.m("dir/fresh/deeper"))
    with open(o.m("dir/fresh/deeper/f"), "wb") as f:
        f.write(os.urandom(200_000))
    os.symlink("new.txt", o.m("dir/ln"))
    os.setxattr(o.m("dir/new.txt"), "user.k", b"v")
    os.link(o.m("dir/new.txt"), o.m("dir/fresh/hl"))  # hard links inside the source


def _check_hard_links(o: Ovl) -> None:
    """Each clone keeps the source's two names of one file as two names of one file of
    its own (``cp -a`` keeps hard links among what it copies)."""
    inos = {}
    for name in ("dir", "c1", "c2"):
        a, b = os.stat(o.m(f"{name}/new.txt")), os.stat(o.m(f"{name}/fresh/hl"))
        assert a.st_ino == b.st_ino and a.st_nlink == 2, name
        inos[name] = a.st_ino
    assert len(set(inos.values())) == 3, inos


def test_clone_of_merged_and_upper_sources_shares_until_written(ovl: Ovl) -> None:
    _make_upper_changes(ovl)
    src_view = view(ovl.m("dir"))
    before = upper_bytes(ovl.upper)
    clone(ovl.m("dir"), ovl.m("c1"))
    assert view(ovl.m("c1")) == src_view
    assert upper_bytes(ovl.upper) - before <= 64 << 10  # the 200 kB file is shared
    assert os.stat(ovl.u("c1/fresh/deeper/f")).st_ino == os.stat(ovl.u("dir/fresh/deeper/f")).st_ino
    assert os.stat(ovl.m("c1/fresh/deeper/f")).st_ino != os.stat(ovl.m("dir/fresh/deeper/f")).st_ino
    assert os.stat(ovl.m("c1/fresh/deeper/f")).st_nlink == 1  # a copy, not a hard link
    # a clone of the clone, then changes everywhere
    clone(ovl.m("c1"), ovl.m("c2"))
    _check_hard_links(ovl)
    with open(ovl.m("dir/fresh/deeper/f"), "r+b") as f:
        f.write(b"SOURCE")
    with open(ovl.m("c1/new.txt"), "a") as f:
        f.write("c1\n")
    assert _read(ovl.m("c1/fresh/hl")) == "new in upper\nc1\n"
    assert _read(ovl.m("c2/fresh/hl")) == _read(ovl.m("dir/fresh/hl")) == "new in upper\n"
    os.chmod(ovl.m("c2/fresh/deeper/f"), 0o600)
    os.setxattr(ovl.m("c2/new.txt"), "user.k", b"c2")
    os.unlink(ovl.m("c2/a1.txt"))
    assert view(ovl.m("c2/fresh/deeper/f"))["."][0] & 0o777 == 0o600
    assert view(ovl.m("c1/fresh/deeper/f")) == {".": src_view["fresh/deeper/f"]}
    assert _read(ovl.m("c2/new.txt")) == "new in upper\n"
    assert xattrs(ovl.m("c1/new.txt"))["user.k"] == b"v"
    assert _read(ovl.m("c1/a1.txt")) == "a1\ncopied up\n"
    assert _read_bytes(ovl.m("dir/fresh/deeper/f"))[:6] == b"SOURCE"
    assert _read_bytes(ovl.m("c2/fresh/deeper/f"))[:6] != b"SOURCE"
    views = {name: view(ovl.m(name)) for name in ("dir", "c1", "c2")}
    ovl.remount()
    for name, want in views.items():
        assert view(ovl.m(name)) == want, name
    _check_hard_links(ovl)
    # after the remount the shared files still change apart
    with open(ovl.m("c1/ln"), "a") as f:  # through the symlink: c1/new.txt
        f.write("again\n")
    assert _read(ovl.m("c2/new.txt")) == "new in upper\n"
    views["c1"] = view(ovl.m("c1"))
    _seal_and_compare(ovl, views)


def test_hard_links_to_unshared_files_are_one_file(ovl: Ovl) -> None:
    """A name of a shared file gets a new upper inode at its first change; a hard link
    made to it then (here in another directory) is the same file, one inode number, in
    listings too, before and after a remount."""
    os.makedirs(ovl.m("hl/sub"))
    with open(ovl.m("hl/f"), "w") as f:
        f.write("f\n")
    clone(ovl.m("hl"), ovl.m("hl2"))
    clone(ovl.m("hl"), ovl.m("hl3"))
    with open(ovl.m("hl2/f"), "a") as f:  # the clone's name first: a change, then a link
        f.write("hl2\n")
    os.link(ovl.m("hl2/f"), ovl.m("hl2/sub/g"))
    os.link(ovl.m("hl/f"), ovl.m("hl/sub/g"))  # the source's: the link is the change
    for remounted in (False, True):
        if remounted:
            ovl.remount()
        for d, text in (("hl", "f\n"), ("hl2", "f\nhl2\n")):
            listed = {e.name: e.stat().st_ino for e in os.scandir(ovl.m(f"{d}/sub"))}
            a, b = os.stat(ovl.m(f"{d}/f")), os.stat(ovl.m(f"{d}/sub/g"))
            assert a.st_ino == b.st_ino and a.st_nlink == 2, (d, remounted)
            assert listed == {"g": a.st_ino}, (d, remounted)
            assert _read(ovl.m(f"{d}/sub/g")) == text
        numbers = {os.stat(ovl.m(f"{d}/f")).st_ino for d in ("hl", "hl2", "hl3")}
        assert len(numbers) == 3
        assert _read(ovl.m("hl3/f")) == "f\n"


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL in its xattr form (version 2; tag, permissions, id)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ANY = 0xFFFFFFFF
# user::rw-, user:1000:r--, group::r--, mask::r--, other::---
ACL = _acl((1, 6, ANY), (2, 4, 1000), (4, 4, ANY), (0x10, 4, ANY), (0x20, 0, ANY))


def test_clones_keep_acls(ovl_factory: OvlFactory) -> None:
    """POSIX ACLs (access and default) come along, as with ``cp -a``: lower and upper
    sources, and after ``upper seal`` under kernel overlayfs."""

    def prepare(o: Ovl) -> None:
        (o.lower1 / "acl").mkdir()
        (o.lower1 / "acl/f").write_bytes(b"acl\n")
        os.setxattr(o.lower1 / "acl/f", "system.posix_acl_access", ACL)
        os.setxattr(o.lower1 / "acl", "system.posix_acl_default", ACL)

    o = ovl_factory(standard=False, prepare=prepare)
    with open(o.m("acl/up"), "w") as f:
        f.write("upper\n")
    os.setxattr(o.m("acl/up"), "system.posix_acl_access", ACL)
    clone(o.m("acl"), o.m("c"))
    clone(o.m("acl/f"), o.m("f2"))
    clone(o.m("acl/up"), o.m("up2"))
    src = view(o.m("acl"))
    assert src["f"][6] == [("system.posix_acl_access", ACL)]
    assert src["up"][6] == [("system.posix_acl_access", ACL)]
    assert src["."][6] == [("system.posix_acl_default", ACL)]
    assert view(o.m("c")) == src
    assert view(o.m("f2"))["."] == src["f"]
    assert view(o.m("up2"))["."] == src["up"]
    views = {name: view(o.m(name)) for name in ("acl", "c", "f2", "up2")}
    _seal_and_compare(o, views)


def test_clones_of_files_and_errors(ovl: Ovl) -> None:
    clone(ovl.m("top.txt"), ovl.m("pub/top"))  # a lower file
    with open(ovl.m("upper_only.txt"), "a") as f:
        f.write("x\n")
    clone(ovl.m("upper_only.txt"), ovl.m("pub/uo"))  # an upper file: copied
    clone(ovl.m("link_to_top"), ovl.m("pub/link"))  # a symlink stays one
    clone(ovl.m("fifo"), ovl.m("pub/fifo"))
    assert view(ovl.m("pub/top")) == view(ovl.m("top.txt"))
    assert view(ovl.m("pub/uo")) == view(ovl.m("upper_only.txt"))
    assert os.readlink(ovl.m("pub/link")) == "top.txt"
    with open(ovl.m("pub/uo"), "a") as f:
        f.write("y\n")
    assert _read(ovl.m("upper_only.txt")).endswith("x\n")
    # a name the kernel had cached as missing shows up at once
    assert not os.path.exists(ovl.m("pub/later"))
    clone(ovl.m("dir"), ovl.m("pub/later"))
    assert os.path.isdir(ovl.m("pub/later")) and "a1.txt" in os.listdir(ovl.m("pub/later"))
    # over a deleted lower name (a whiteout): the clone is what shows, not the old dir
    os.rename(ovl.m("only1"), ovl.m("only1_moved"))
    clone(ovl.m("only2"), ovl.m("only1"))
    assert sorted(os.listdir(ovl.m("only1"))) == ["y"]
    # errors: one line, exit code 9; bad arguments 2
    r = clone_cli(ovl.m("dir"), ovl.m("pub"))
    assert r.returncode == 9 and r.stderr.count("\n") == 1 and "exists" in r.stderr, r
    r = clone_cli(ovl.m("nothing"), ovl.m("pub/n"))
    assert r.returncode == 9 and "does not exist" in r.stderr, r
    r = clone_cli(ovl.m("dir"), "/tmp/elsewhere")
    assert r.returncode == 2 and "one overlayboot mount" in r.stderr, r
    r = clone_cli(ovl.m("dir"), ovl.m("nodir/x"))
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr
    bad = [b"dir", b"dir\0", b"\0x", b"../etc\0x", b"dir\0a/b"]
    for value in bad:
        with pytest.raises(OSError) as exc:
            os.setxattr(ovl.m("pub"), REQUEST_XATTR, value)
        assert exc.value.errno == errno.EINVAL, value


def test_another_uid_clones_only_what_it_may(ovl: Ovl) -> None:
    os.makedirs(ovl.m("pub/mine"))
    os.chown(ovl.m("pub/mine"), 1000, 1000)
    os.makedirs(ovl.m("closed/inner"))
    os.chmod(ovl.m("closed"), 0o700)

    def request(parent: str, value: bytes) -> object:
        os.setxattr(parent, REQUEST_XATTR, value)
        os.getxattr(parent, REQUEST_XATTR)  # the command's barrier (see fs/clonereq.py)
        return "done"

    def as_1000(parent: str, value: bytes) -> object:
        return as_user(1000, 1000, lambda: request(ovl.m(parent), value))

    assert as_1000("", b"dir\0x") == ("errno", errno.EACCES)  # the root: not writable
    assert as_1000("pub/mine", b"closed/inner\0x") == ("errno", errno.EACCES)  # unreachable
    assert as_1000("pub/mine", b"secret\0x") == ("errno", errno.EACCES)  # unreadable
    assert not os.path.exists(ovl.m("pub/mine/x"))
    assert as_1000("pub/mine", b"dir\0x") == "done"
    assert sorted(os.listdir(ovl.m("pub/mine/x"))) == sorted(os.listdir(ovl.m("dir")))
    # a clone root made keeps the source's owner and modes: reads as at the source
    clone(ovl.m("secret"), ovl.m("pub/secret2"))
    clone(ovl.m("meta"), ovl.m("pub/meta2"))

    def read(path: str) -> object:
        with open(path) as f:
            return f.read()

    assert as_user(1000, 1000, lambda: read(ovl.m("pub/secret2"))) == ("errno", errno.EACCES)
    assert as_user(1000, 1000, lambda: os.listdir(ovl.m("pub/meta2"))) == (
        "errno",
        errno.EACCES,
    )
    assert os.stat(ovl.m("pub/meta2/inner/f")).st_uid == 1234


def test_seal_on_umount_makes_clones_kernel_format(ovl_factory: OvlFactory) -> None:
    o = ovl_factory(mount=False)
    o.extra_args = ("--seal-on-umount",)
    o.mount()
    with open(o.m("dir/new.txt"), "w") as f:
        f.write("shared\n")
    clone(o.m("dir"), o.m("copy"))
    clone(o.m("meta"), o.m("dir/meta2"))
    views = {"dir": view(o.m("dir")), "copy": view(o.m("copy"))}
    o.umount()
    assert "seal at unmount" in o.log.read_text()
    assert os.stat(o.u("copy/new.txt")).st_nlink == 1  # no longer shared
    assert os.path.exists(o.u("copy/a2.txt"))  # materialized from the lower
    _seal_and_compare(o, views)  # sealing again finds nothing to do
