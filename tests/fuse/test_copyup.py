"""Copy-up on a real mount: what the upper gets when a lower file first changes.

Each changing operation copies the file up with its mode, owner, times, user
xattrs and holes, after copying its parent directories up with theirs; the
lower layers are never modified (the ``ovl_factory`` teardown checks that for
every test). Inode numbers are stable across copy-up and remount and unique
across layers. Expected values are kernel overlayfs' (tests run on both).
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable

import pytest

from tests.fuse.conftest import T0, Ovl, OvlFactory
from tests.fuse.helpers import (
    BOTH,
    KINDS,
    OURS,
    blocks_bytes,
    upper_bytes,
    wait_for_queued_release,
    xattrs,
)
from tests.mounts import have_fuse

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not have_fuse(), reason="needs root and /dev/fuse"),
]

F = "meta/inner/f"
F_DATA = b"meta file\n" * 100
T5 = 1_700_000_000_987_654_321


def _write(o: Ovl) -> None:
    with open(o.m(F), "ab") as f:
        f.write(b"more\n")


def _truncate(o: Ovl) -> None:
    os.truncate(o.m(F), 5)


def _chmod(o: Ovl) -> None:
    os.chmod(o.m(F), 0o604)


def _chown(o: Ovl) -> None:
    os.chown(o.m(F), 4321, 5432)


def _utime(o: Ovl) -> None:
    os.utime(o.m(F), ns=(T5, T5))


def _setxattr(o: Ovl) -> None:
    os.setxattr(o.m(F), "user.new", b"value")


def _link(o: Ovl) -> None:
    os.link(o.m(F), o.m("f.link"))


# operation -> (the change, what differs from the lower file afterwards)
OPS: dict[str, tuple[Callable[[Ovl], None], dict[str, object]]] = {
    "write": (_write, {"data": F_DATA + b"more\n", "mtime": None}),
    "truncate": (_truncate, {"data": F_DATA[:5], "mtime": None}),
    "chmod": (_chmod, {"mode": 0o604}),
    "chown": (_chown, {"uid": 4321, "gid": 5432}),
    "utime": (_utime, {"mtime": T5}),
    "setxattr": (_setxattr, {"xattrs": {"user.color": b"blue", "user.new": b"value"}}),
    "link": (_link, {"nlink": 2}),
}


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _user_xattrs(path: str) -> dict[str, bytes]:
    return {k: v for k, v in xattrs(path).items() if k.startswith("user.")}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("kind", KINDS)
def test_copy_up_preserves_metadata(ovl_factory: OvlFactory, kind: str, op: str) -> None:
    o = ovl_factory(kind)
    low = os.lstat(o.lower1 / F)
    parents = {rel: os.lstat(o.lower1 / rel) for rel in ("meta", "meta/inner")}
    assert not os.path.lexists(o.u("meta"))
    change, diff = OPS[op]
    change(o)
    wait_for_queued_release(o.m("."))

    up = os.lstat(o.u(F))
    assert stat.S_ISREG(up.st_mode)
    expect = {
        "mode": stat.S_IMODE(low.st_mode),
        "uid": low.st_uid,
        "gid": low.st_gid,
        "mtime": low.st_mtime_ns,
        "data": F_DATA,
        "xattrs": {"user.color": b"blue"},
        "nlink": 1,
    }
    expect.update(diff)
    got = {
        "mode": stat.S_IMODE(up.st_mode),
        "uid": up.st_uid,
        "gid": up.st_gid,
        "mtime": up.st_mtime_ns,
        "data": upper_bytes(o.u(F), o.lowers),
        "xattrs": _user_xattrs(o.u(F)),
        "nlink": up.st_nlink,
    }
    if expect["mtime"] is None:  # changed by the write: now, not the lower's
        assert got["mtime"] != low.st_mtime_ns
        got["mtime"] = None
    assert got == expect

    # the merged view shows the upper file
    merged = os.lstat(o.m(F))
    assert (merged.st_mode, merged.st_uid, merged.st_gid, merged.st_size) == (
        up.st_mode,
        up.st_uid,
        up.st_gid,
        up.st_size,
    )
    assert merged.st_mtime_ns == up.st_mtime_ns
    assert read_bytes(o.m(F)) == expect["data"]
    assert _user_xattrs(o.m(F)) == expect["xattrs"]

    # the parent dirs were copied up with their own metadata (mtime: see the next test)
    for rel, pst in parents.items():
        ust = os.lstat(o.u(rel))
        assert stat.S_ISDIR(ust.st_mode)
        assert (ust.st_mode, ust.st_uid, ust.st_gid) == (pst.st_mode, pst.st_uid, pst.st_gid), rel
    assert _user_xattrs(o.u("meta/inner")) == {"user.dirattr": b"inner"}
    # nothing else was copied up
    assert sorted(os.listdir(o.u("meta"))) == ["inner"]
    assert os.listdir(o.u("meta/inner")) == ["f"]

    o.remount()
    assert read_bytes(o.m(F)) == expect["data"]
    assert stat.S_IMODE(os.lstat(o.m(F)).st_mode) == expect["mode"]


@BOTH
@pytest.mark.parametrize("op", ["chmod", "write"])
def test_copy_up_keeps_parent_dir_mtimes(ovl: Ovl, op: str) -> None:
    parents = ("meta", "meta/inner")
    lower = {rel: os.lstat(ovl.lower1 / rel).st_mtime_ns for rel in parents}
    assert {rel: os.lstat(ovl.m(rel)).st_mtime_ns for rel in parents} == lower
    OPS[op][0](ovl)
    assert {rel: os.lstat(ovl.u(rel)).st_mtime_ns for rel in parents} == lower
    assert {rel: os.lstat(ovl.m(rel)).st_mtime_ns for rel in parents} == lower


def _capabilities(o: Ovl) -> None:
    for name, owner in (("ping", 0), ("tool", 1000)):
        f = o.lower1 / name
        f.write_bytes(b"#!/bin/sh\n")
        os.chown(f, owner, owner)
        os.chmod(f, 0o755)
        os.setxattr(f, "security.capability", CAP_NET_RAW)
        os.setxattr(f, "trusted.other", b"root's own")


# vfs_cap_data revision 2, effective, permitted = CAP_NET_RAW (13)
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_copy_up_keeps_file_capabilities_and_trusted_xattrs(
    ovl_factory: OvlFactory, kind: str
) -> None:
    o = ovl_factory(kind, prepare=_capabilities)
    os.utime(o.m("ping"), ns=(T5, T5))
    os.setxattr(o.m("tool"), "user.x", b"1")
    for name in ("ping", "tool"):
        assert os.path.exists(o.u(name))
        assert os.getxattr(o.u(name), "trusted.other") == b"root's own"
        assert os.getxattr(o.m(name), "trusted.other") == b"root's own"
        assert os.getxattr(o.u(name), "security.capability") == CAP_NET_RAW, name
        assert os.getxattr(o.m(name), "security.capability") == CAP_NET_RAW, name
    assert os.lstat(o.u("tool")).st_uid == 1000


@BOTH
def test_reads_and_failed_changes_do_not_copy_up(ovl: Ovl) -> None:
    assert read_bytes(ovl.m(F)) == F_DATA
    os.listdir(ovl.m("meta/inner"))
    os.lstat(ovl.m(F))
    assert os.getxattr(ovl.m(F), "user.color") == b"blue"
    os.access(ovl.m(F), os.W_OK)
    with pytest.raises(OSError):
        os.removexattr(ovl.m(F), "user.absent")
    with open(ovl.m(F), "rb") as f:
        f.read()
    assert not os.path.lexists(ovl.u("meta"))


def _sparse(o: Ovl) -> None:
    with open(o.lower1 / "sparse", "wb") as f:
        f.truncate(100 << 20)
        f.seek(0)
        f.write(b"A" * 4096)
        f.seek(50 << 20)
        f.write(b"B" * 4096)


@pytest.mark.parametrize("kind", KINDS)
def test_copy_up_keeps_holes(ovl_factory: OvlFactory, kind: str) -> None:
    o = ovl_factory(kind, prepare=_sparse)
    assert blocks_bytes(o.lower1 / "sparse") <= 64 << 10
    with open(o.m("sparse"), "ab") as f:
        f.write(b"C")
    st = os.lstat(o.u("sparse"))
    assert st.st_size == (100 << 20) + 1
    # not 100 MiB of zeros (the kernel copies whole 1 MiB chunks around each extent)
    assert blocks_bytes(o.u("sparse")) <= 4 << 20
    with open(o.m("sparse"), "rb") as f:
        assert f.read(4097) == b"A" * 4096 + b"\0"
        f.seek((50 << 20) - 1)
        assert f.read(4098) == b"\0" + b"B" * 4096 + b"\0"
        f.seek(75 << 20)
        assert f.read(4096) == b"\0" * 4096
        f.seek(100 << 20)
        assert f.read() == b"C"


@BOTH
def test_inode_numbers_stable_over_copy_up_and_remount(ovl: Ovl) -> None:
    rels = ["top.txt", "bottom.txt", "dir", "dir/a1.txt", "dir/a2.txt", "meta", F, "fifo"]
    rels += ["link_to_top", "triple.txt", "upper_only.txt", "only2/y"]
    before = {rel: os.lstat(ovl.m(rel)).st_ino for rel in rels}
    for rel in ("top.txt", "bottom.txt", "dir/a2.txt", "only2/y"):
        os.chmod(ovl.m(rel), 0o600)
    os.chmod(ovl.m("fifo"), 0o600)
    os.chown(ovl.m("link_to_top"), 5, 5, follow_symlinks=False)
    os.utime(ovl.m(F), ns=(T0, T0))
    assert os.path.lexists(ovl.u("link_to_top")) and os.path.lexists(ovl.u("fifo"))
    assert {rel: os.lstat(ovl.m(rel)).st_ino for rel in rels} == before
    ovl.remount()
    assert {rel: os.lstat(ovl.m(rel)).st_ino for rel in rels} == before


def _many_files(o: Ovl) -> None:
    for i in range(150):
        (o.lower1 / f"l1_{i}").write_text("1")
        (o.lower2 / f"l2_{i}").write_text("2")
        (o.upper / f"up_{i}").write_text("u")
    for d in (o.lower1, o.lower2, o.upper):
        (d / "sub").mkdir()
        for i in range(30):
            (d / "sub" / f"{d.name}_{i}").write_text("s")


@pytest.mark.parametrize("kind", KINDS)
def test_inode_numbers_unique_across_layers_on_distinct_filesystems(
    ovl_factory: OvlFactory, kind: str
) -> None:
    # each layer on its own tmpfs: their real inode numbers overlap heavily
    o = ovl_factory(kind, standard=False, prepare=_many_files, layer_size="16m")
    real = [os.lstat(o.lower1 / "l1_0").st_ino, os.lstat(o.lower2 / "l2_0").st_ino]
    assert abs(real[0] - real[1]) < 1000  # the raw numbers would collide
    for i in range(20):
        (o.mnt / f"new_{i}").write_text("n")
    for i in range(0, 150, 7):
        os.chmod(o.m(f"l1_{i}"), 0o600)  # copied up: keeps its number
        os.chmod(o.m(f"l2_{i}"), 0o600)

    def walk() -> dict[str, os.stat_result]:
        out = {}
        for dirpath, dirs, files in os.walk(o.mnt):
            for name in [*dirs, *files]:
                path = os.path.join(dirpath, name)
                out[os.path.relpath(path, o.mnt)] = os.lstat(path)
        return out

    first = walk()
    assert len(first) == 150 * 3 + 20 + 1 + 90
    ids = [(st.st_dev, st.st_ino) for st in first.values()]
    assert len(set(ids)) == len(ids)
    if kind in OURS:  # one st_dev for the whole mount: st_ino alone is unique
        assert len({st.st_ino for st in first.values()}) == len(first)
        assert {st.st_dev for st in first.values()} == {os.lstat(o.mnt).st_dev}
    o.remount()
    again = walk()
    assert {k: st.st_ino for k, st in again.items()} == {k: st.st_ino for k, st in first.items()}
