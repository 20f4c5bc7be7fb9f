"""File kinds and file I/O on a real mount: special files, special bits, xattrs, statfs,
fsync, mmap, exec, O_APPEND/O_TRUNC, fallocate, huge sparse files and locks.

Expected values are kernel overlayfs' (tests parametrized with BOTH run on both).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fuse.conftest import Ovl, OvlFactory
from tests.fuse.helpers import (
    BOTH,
    KINDS,
    OURS,
    as_user,
    blocks_bytes,
    errno_of,
    fallocate,
    is_whiteout,
    upper_bytes,
    xattrs,
)
from tests.mounts import have_fuse
from tests.waiting import poll_until

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not have_fuse(), reason="needs root and /dev/fuse"),
]

GiB = 1 << 30


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- special files --------------------------------------------------------------------


@BOTH
def test_symlinks(ovl: Ovl) -> None:
    assert os.readlink(ovl.m("link_to_top")) == "top.txt"
    assert read_bytes(ovl.m("link_to_top")) == b"top\n"
    os.symlink("dir/a2.txt", ovl.m("new_link"))
    assert os.readlink(ovl.m("new_link")) == "dir/a2.txt"
    assert os.readlink(ovl.u("new_link")) == "dir/a2.txt"
    assert read_bytes(ovl.m("new_link")) == b"a2\n"
    # copy-up of a symlink (lchown) keeps its target; it does not follow it
    os.chown(ovl.m("link_to_top"), 77, 88, follow_symlinks=False)
    st = os.lstat(ovl.u("link_to_top"))
    assert stat.S_ISLNK(st.st_mode) and (st.st_uid, st.st_gid) == (77, 88)
    assert os.readlink(ovl.u("link_to_top")) == "top.txt"
    assert not os.path.lexists(ovl.u("top.txt"))
    # a dangling one
    os.symlink("nowhere", ovl.m("dangling"))
    assert errno_of(lambda: os.stat(ovl.m("dangling"))) == errno.ENOENT
    assert os.readlink(ovl.m("dangling")) == "nowhere"


@BOTH
def test_fifos(ovl: Ovl) -> None:
    assert stat.S_ISFIFO(os.lstat(ovl.m("fifo")).st_mode)
    os.mkfifo(ovl.m("newfifo"), 0o640)
    assert stat.S_ISFIFO(os.lstat(ovl.u("newfifo")).st_mode)
    assert stat.S_IMODE(os.lstat(ovl.m("newfifo")).st_mode) == 0o640
    for rel in ("fifo", "newfifo"):
        fd = os.open(ovl.m(rel), os.O_RDWR | os.O_NONBLOCK)
        try:
            os.write(fd, b"through the pipe")
            assert os.read(fd, 100) == b"through the pipe"
        finally:
            os.close(fd)
    os.chmod(ovl.m("fifo"), 0o600)  # copy-up of a fifo
    st = os.lstat(ovl.u("fifo"))
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


@BOTH
def test_unix_sockets(ovl: Ovl) -> None:
    path = ovl.m("dir/sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        srv.bind(path)
        srv.listen(1)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert stat.S_ISSOCK(os.lstat(ovl.u("dir/sock")).st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as cli:
            cli.connect(path)
            conn, _ = srv.accept()
            with conn:
                cli.sendall(b"ping")
                assert conn.recv(4) == b"ping"
    finally:
        srv.close()
    os.unlink(path)
    assert not os.path.lexists(path)


@BOTH
def test_device_nodes(ovl: Ovl) -> None:
    os.mknod(ovl.m("null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(ovl.m("dir/loop"), stat.S_IFBLK | 0o600, os.makedev(7, 0))
    st = os.lstat(ovl.m("null"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    st = os.lstat(ovl.m("dir/loop"))
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 0)
    assert os.lstat(ovl.u("null")).st_rdev == os.makedev(1, 3)
    assert os.lstat(ovl.u("dir/loop")).st_rdev == os.makedev(7, 0)
    # the mount allows devices (dev): writing to /dev/null through it works
    with open(ovl.m("null"), "wb") as f:
        assert f.write(b"gone") == 4
    assert read_bytes(ovl.m("null")) == b""
    ovl.remount()
    assert os.lstat(ovl.m("null")).st_rdev == os.makedev(1, 3)


@BOTH
def test_setuid_and_setgid_bits_survive_copy_up(ovl: Ovl) -> None:
    os.setxattr(ovl.m("suid"), "user.x", b"1")
    with open(ovl.m("sgid"), "a") as f:
        f.write("# changed\n")
    assert stat.S_IMODE(os.lstat(ovl.u("suid")).st_mode) == 0o4755
    st = os.lstat(ovl.u("sgid"))
    assert stat.S_IMODE(st.st_mode) == 0o2755 and st.st_gid == 100
    assert stat.S_IMODE(os.lstat(ovl.m("suid")).st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(ovl.m("sgid")).st_mode) == 0o2755
    # the mount honours them (suid): not mounted nosuid
    assert not os.statvfs(ovl.m()).f_flag & os.ST_NOSUID
    assert subprocess.run([ovl.m("suid")]).returncode == 0


@BOTH
def test_setgid_directory_inheritance(ovl: Ovl) -> None:
    with open(ovl.m("sgiddir/file"), "w") as f:
        f.write("f")
    os.mkdir(ovl.m("sgiddir/sub"), 0o755)
    os.mknod(ovl.m("sgiddir/fifo"), stat.S_IFIFO | 0o644)
    st = os.lstat(ovl.m("sgiddir/file"))
    assert st.st_gid == 4242 and not st.st_mode & stat.S_ISGID
    st = os.lstat(ovl.m("sgiddir/sub"))
    assert st.st_gid == 4242 and st.st_mode & stat.S_ISGID
    assert os.lstat(ovl.m("sgiddir/fifo")).st_gid == 4242
    assert os.lstat(ovl.u("sgiddir/file")).st_gid == 4242
    assert os.lstat(ovl.u("sgiddir/sub")).st_gid == 4242
    # and in the new subdirectory, once more
    with open(ovl.m("sgiddir/sub/deeper"), "w") as f:
        f.write("f")
    assert os.lstat(ovl.m("sgiddir/sub/deeper")).st_gid == 4242
    # a plain directory gives the creator's group
    with open(ovl.m("dir/plain"), "w") as f:
        f.write("f")
    assert os.lstat(ovl.m("dir/plain")).st_gid == os.getegid()


@BOTH
def test_chown_clears_setuid(ovl: Ovl) -> None:
    os.chown(ovl.m("suid"), 1000, 1000)
    st = os.lstat(ovl.m("suid"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o755)
    assert stat.S_IMODE(os.lstat(ovl.u("suid")).st_mode) == 0o755


# every write path of the daemon (passthrough, the daemon's own, a partial copy-up's),
# against kernel overlayfs: a write by a user who is not the owner drops set-user-ID and
# (with group execute) set-group-ID, as on any local filesystem
@pytest.mark.parametrize(
    "ovl",
    ["kernel", "overlayboot", "overlayboot-chunked", "overlayboot-nopassthrough"],
    indirect=True,
)
def test_unprivileged_write_clears_setuid_and_setgid(ovl: Ovl) -> None:
    os.chmod(ovl.m("suid"), 0o6777)

    def append() -> int:
        with open(ovl.m("suid"), "ab") as f:
            return f.write(b"# more\n")

    assert as_user(1000, 1000, append) == 7
    for path in (ovl.m("suid"), ovl.u("suid")):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o777, path
    with open(ovl.m("suid"), "rb") as f:
        assert f.read().endswith(b"# more\n")


# -- open files across copy-up and unlink -------------------------------------------


# with FUSE passthrough an fd opened before the copy-up keeps the lower data:
# tests/fuse/test_passthrough.py
@pytest.mark.parametrize("ovl", ["overlayboot-nopassthrough", "kernel"], indirect=True)
def test_fd_opened_before_copy_up_sees_the_new_data(ovl: Ovl) -> None:
    with open(ovl.m("bottom.txt"), "rb") as early:
        assert early.read(3) == b"bot"
        with open(ovl.m("bottom.txt"), "r+b") as w:
            w.write(b"BOT")
        assert os.pread(early.fileno(), 100, 0) == b"BOTtom\n"
        assert os.fstat(early.fileno()).st_ino == os.lstat(ovl.m("bottom.txt")).st_ino


@BOTH
def test_unlinked_open_files_stay_usable(ovl: Ovl) -> None:
    ro = os.open(ovl.m("bottom.txt"), os.O_RDONLY)
    rw = os.open(ovl.m("top.txt"), os.O_RDWR)
    new = os.open(ovl.m("new"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(new, b"new data")
        for rel in ("bottom.txt", "top.txt", "new"):
            os.unlink(ovl.m(rel))
            assert not os.path.lexists(ovl.m(rel))
        assert os.pread(ro, 100, 0) == b"bottom\n"
        assert os.pwrite(rw, b"TOP", 0) == 3
        assert os.pread(rw, 100, 0) == b"TOP\n"
        assert os.pread(new, 100, 0) == b"new data"
        assert os.fstat(new).st_size == 8
        assert os.fstat(rw).st_nlink == 0
    finally:
        for fd in (ro, rw, new):
            os.close(fd)
    assert is_whiteout(ovl.u("bottom.txt")) and is_whiteout(ovl.u("top.txt"))
    assert not os.path.lexists(ovl.u("new"))
    # the names are free again
    with open(ovl.m("top.txt"), "w") as f:
        f.write("reborn\n")
    assert read_bytes(ovl.m("top.txt")) == b"reborn\n"


# -- xattrs ---------------------------------------------------------------------------


@BOTH
def test_user_xattrs(ovl: Ovl) -> None:
    path = ovl.m("meta/inner/f")
    assert xattrs(path) == {"user.color": b"blue"}
    os.setxattr(path, "user.size", b"big")
    os.setxattr(path, "user.empty", b"")
    assert xattrs(path) == {"user.color": b"blue", "user.size": b"big", "user.empty": b""}
    os.setxattr(path, "user.color", b"red", os.XATTR_REPLACE)
    assert errno_of(lambda: os.setxattr(path, "user.color", b"x", os.XATTR_CREATE)) == (
        errno.EEXIST
    )
    assert errno_of(lambda: os.setxattr(path, "user.nope", b"x", os.XATTR_REPLACE)) == (
        errno.ENODATA
    )
    os.removexattr(path, "user.size")
    assert errno_of(lambda: os.removexattr(path, "user.size")) == errno.ENODATA
    assert errno_of(lambda: os.getxattr(path, "user.size")) == errno.ENODATA
    assert xattrs(path) == {"user.color": b"red", "user.empty": b""}
    assert os.getxattr(ovl.u("meta/inner/f"), "user.color") == b"red"
    # on a directory, and removing the only one of a lower file
    os.setxattr(ovl.m("dir"), "user.d", b"dir")
    assert xattrs(ovl.m("dir")) == {"user.d": b"dir"}
    os.removexattr(ovl.m("meta/inner"), "user.dirattr")
    assert xattrs(ovl.m("meta/inner")) == {}
    ovl.remount()
    assert xattrs(path) == {"user.color": b"red", "user.empty": b""}
    assert xattrs(ovl.m("dir")) == {"user.d": b"dir"}


@BOTH
def test_overlay_private_xattrs_are_hidden_and_refused(ovl: Ovl) -> None:
    os.unlink(ovl.m("only1/x"))
    os.rmdir(ovl.m("only1"))
    os.mkdir(ovl.m("only1"))  # opaque
    os.rename(ovl.m("only2"), ovl.m("moved"))  # redirect
    os.chmod(ovl.m("top.txt"), 0o600)  # copied up: carries an origin record
    assert os.getxattr(ovl.u("only1"), "trusted.overlay.opaque") == b"y"
    assert os.getxattr(ovl.u("moved"), "trusted.overlay.redirect") == b"only2"
    for rel in ("only1", "moved", "top.txt", ""):
        names = os.listxattr(ovl.m(rel))
        assert not [n for n in names if n.startswith("trusted.overlay")], (rel, names)
    # reading them through the mount gives nothing: overlayboot refuses the whole
    # namespace (EOPNOTSUPP, as kernels before 6.7 did); Linux 6.7+ says ENODATA
    hidden = errno.EOPNOTSUPP if ovl.kind in OURS else errno.ENODATA
    assert errno_of(lambda: os.getxattr(ovl.m("only1"), "trusted.overlay.opaque")) == hidden
    assert errno_of(lambda: os.getxattr(ovl.m("moved"), "trusted.overlay.redirect")) == hidden
    assert errno_of(lambda: os.removexattr(ovl.m("only1"), "trusted.overlay.opaque")) == hidden
    set_err = errno_of(lambda: os.setxattr(ovl.m("dir"), "trusted.overlay.opaque", b"y"))
    if ovl.kind in OURS:
        assert set_err == errno.EOPNOTSUPP
    else:  # Linux 6.7+ stores it escaped (trusted.overlay.overlay.*) for nested overlays
        assert set_err == 0
        assert os.getxattr(ovl.u("dir"), "trusted.overlay.overlay.opaque") == b"y"
    # nothing changed: dir still merged, only1 still opaque, moved still redirected
    assert sorted(os.listdir(ovl.m("dir"))) == ["a1.txt", "a2.txt", "common", "hl_b", "sub"]
    assert os.listdir(ovl.m("only1")) == []
    assert os.listdir(ovl.m("moved")) == ["y"]
    # other trusted.* names are the user's (root's) own
    os.setxattr(ovl.m("top.txt"), "trusted.mine", b"1")
    assert os.getxattr(ovl.m("top.txt"), "trusted.mine") == b"1"
    assert os.getxattr(ovl.u("top.txt"), "trusted.mine") == b"1"


def test_overlayboot_bookkeeping_xattrs_are_hidden(ovl: Ovl) -> None:
    os.chmod(ovl.m("top.txt"), 0o600)
    assert "trusted.overlayboot.origin" in os.listxattr(ovl.u("top.txt"))
    assert os.listxattr(ovl.m("top.txt")) == []
    assert errno_of(lambda: os.getxattr(ovl.m("top.txt"), "trusted.overlayboot.origin")) == (
        errno.EOPNOTSUPP
    )
    assert errno_of(lambda: os.setxattr(ovl.m("top.txt"), "trusted.overlayboot.x", b"1")) == (
        errno.EOPNOTSUPP
    )


# -- statfs, sync, mmap, exec ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_statfs_reflects_the_upper(ovl_factory: OvlFactory, kind: str) -> None:
    o = ovl_factory(kind, upper_size="16m")
    sv, up = os.statvfs(o.m()), os.statvfs(o.upper)
    assert sv.f_blocks * sv.f_frsize == 16 << 20 == up.f_blocks * up.f_frsize
    assert (sv.f_bsize, sv.f_frsize, sv.f_files, sv.f_namemax) == (
        up.f_bsize,
        up.f_frsize,
        up.f_files,
        up.f_namemax,
    )
    with open(o.m("fill"), "wb") as f:
        f.write(b"x" * (4 << 20))
        f.flush()
        os.fsync(f.fileno())
    after = os.statvfs(o.m())
    used = sv.f_bfree - after.f_bfree
    assert (4 << 20) // sv.f_frsize <= used <= (4 << 20) // sv.f_frsize + 4
    assert after.f_bavail == os.statvfs(o.upper).f_bavail


@BOTH
def test_fsync_and_fdatasync(ovl: Ovl) -> None:
    for rel, flags in (("top.txt", os.O_WRONLY | os.O_APPEND), ("new", os.O_WRONLY | os.O_CREAT)):
        fd = os.open(ovl.m(rel), flags, 0o644)
        try:
            os.write(fd, b"synced\n")
            os.fsync(fd)
            os.write(fd, b"data\n")
            os.fdatasync(fd)
        finally:
            os.close(fd)
    assert upper_bytes(ovl.u("top.txt"), ovl.lowers) == b"top\nsynced\ndata\n"
    assert upper_bytes(ovl.u("new"), ovl.lowers) == b"synced\ndata\n"
    fd = os.open(ovl.m("dir"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    # fsync of a lower file open read-only: nothing to do, no copy-up
    fd = os.open(ovl.m("bottom.txt"), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    assert not os.path.lexists(ovl.u("bottom.txt"))


@BOTH
def test_shared_writable_mmap(ovl: Ovl) -> None:
    with open(ovl.lower1 / "top.txt", "rb") as f:
        assert f.read() == b"top\n"
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    with open(ovl.m("top.txt"), "r+b") as f, mmap.mmap(f.fileno(), 4, mmap.MAP_SHARED, prot) as mm:
        mm[:4] = b"TOP!"
        mm.flush()
    assert read_bytes(ovl.m("top.txt")) == b"TOP!"
    assert upper_bytes(ovl.u("top.txt"), ovl.lowers) == b"TOP!"
    # a multi-page file, written in its second page, read back without msync first
    with open(ovl.m("pages"), "wb") as f:
        f.write(b"." * 3 * mmap.PAGESIZE)
    with open(ovl.m("pages"), "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        mm[mmap.PAGESIZE : mmap.PAGESIZE + 5] = b"hello"
        mm.flush()
    data = read_bytes(ovl.m("pages"))
    assert data[mmap.PAGESIZE : mmap.PAGESIZE + 6] == b"hello."
    assert upper_bytes(ovl.u("pages"), ovl.lowers) == data
    ovl.remount()
    assert read_bytes(ovl.m("top.txt")) == b"TOP!"


def _binaries(o: Ovl) -> None:
    (o.lower1 / "bin").mkdir()
    shutil.copy2(shutil.which("true") or "/bin/true", o.lower1 / "bin/true")
    (o.lower2 / "bin").mkdir()
    (o.lower2 / "bin/script").write_text('#!/bin/sh\necho from-script "$@"\n')
    os.chmod(o.lower2 / "bin/script", 0o755)


@pytest.mark.parametrize("kind", KINDS)
def test_exec_of_lower_binaries(ovl_factory: OvlFactory, kind: str) -> None:
    o = ovl_factory(kind, prepare=_binaries)
    assert subprocess.run([o.m("bin/true")]).returncode == 0
    out = subprocess.run([o.m("bin/script"), "x"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "from-script x\n"
    assert not os.path.lexists(o.u("bin"))
    os.utime(o.m("bin/true"))  # copied up: still runs, now from the upper
    assert os.path.exists(o.u("bin/true"))
    assert subprocess.run([o.m("bin/true")]).returncode == 0
    assert stat.S_IMODE(os.lstat(o.u("bin/true")).st_mode) == 0o755


# -- open flags, fallocate, big files ---------------------------------------------------


@BOTH
def test_o_append(ovl: Ovl) -> None:
    fd = os.open(ovl.m("bottom.txt"), os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"one\n")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"two\n")  # appended all the same
    finally:
        os.close(fd)
    assert read_bytes(ovl.m("bottom.txt")) == b"bottom\none\ntwo\n"
    assert upper_bytes(ovl.u("bottom.txt"), ovl.lowers) == b"bottom\none\ntwo\n"
    with open(ovl.m("bottom.txt"), "a") as f:
        f.write("three\n")
    assert read_bytes(ovl.m("bottom.txt")) == b"bottom\none\ntwo\nthree\n"


@BOTH
def test_o_trunc_of_lower_file(ovl: Ovl) -> None:
    fd = os.open(ovl.m("meta/inner/f"), os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"short")
    finally:
        os.close(fd)
    assert read_bytes(ovl.m("meta/inner/f")) == b"short"
    st = os.lstat(ovl.u("meta/inner/f"))
    assert st.st_size == 5
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1234, 2345)
    assert os.getxattr(ovl.u("meta/inner/f"), "user.color") == b"blue"
    with open(ovl.m("bottom.txt"), "w") as f:
        f.write("rewritten\n")
    assert read_bytes(ovl.m("bottom.txt")) == b"rewritten\n"


@BOTH
def test_o_trunc_with_o_rdonly(ovl: Ovl) -> None:
    # Linux truncates on O_RDONLY|O_TRUNC too (unspecified by POSIX, but what it does)
    fd = os.open(ovl.m("bottom.txt"), os.O_RDONLY | os.O_TRUNC)
    os.close(fd)
    assert os.lstat(ovl.m("bottom.txt")).st_size == 0
    assert os.lstat(ovl.u("bottom.txt")).st_size == 0
    fd = os.open(ovl.m("triple.txt"), os.O_RDONLY | os.O_TRUNC)  # already in the upper
    os.close(fd)
    assert os.lstat(ovl.m("triple.txt")).st_size == 0


@BOTH
def test_posix_fallocate_and_fallocate(ovl: Ovl) -> None:
    with open(ovl.m("alloc"), "wb") as f:
        os.posix_fallocate(f.fileno(), 0, 1 << 20)
        assert os.fstat(f.fileno()).st_size == 1 << 20
    assert read_bytes(ovl.m("alloc")) == b"\0" * (1 << 20)
    with open(ovl.m("top.txt"), "r+b") as f:
        os.posix_fallocate(f.fileno(), 0, 8192)
    assert read_bytes(ovl.m("top.txt")) == b"top\n" + b"\0" * 8188
    # fallocate(2) itself: the kernel passes it to the upper; pyfuse3 has no fallocate
    # handler, so through overlayboot it fails EOPNOTSUPP (posix_fallocate then writes
    # zeros, as above): documented, not a bug
    fd = os.open(ovl.m("raw"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        err = errno_of(lambda: fallocate(fd, 0, 1 << 20))
    finally:
        os.close(fd)
    if ovl.kind in OURS:
        assert err == errno.EOPNOTSUPP
        assert os.lstat(ovl.m("raw")).st_size == 0
    else:
        assert err == 0
        assert os.lstat(ovl.m("raw")).st_size == 1 << 20


@BOTH
def test_sparse_file_beyond_4_gib(ovl: Ovl) -> None:
    with open(ovl.m("huge"), "w+b") as f:
        f.seek(5 * GiB)
        f.write(b"tail")
        f.flush()
        assert os.fstat(f.fileno()).st_size == 5 * GiB + 4
    with open(ovl.m("huge"), "rb") as f:
        f.seek(5 * GiB - 2)
        assert f.read() == b"\0\0tail"
        f.seek(4 * GiB + 123)
        assert f.read(10) == b"\0" * 10
    assert os.lstat(ovl.u("huge")).st_size == 5 * GiB + 4
    assert blocks_bytes(ovl.u("huge")) <= 1 << 20
    # a lower file written beyond 4 GiB after copy-up
    fd = os.open(ovl.m("top.txt"), os.O_RDWR)
    try:
        assert os.pwrite(fd, b"far", 6 * GiB) == 3
        assert os.pread(fd, 4, 0) == b"top\n"
        assert os.pread(fd, 10, 6 * GiB - 1) == b"\0far"
    finally:
        os.close(fd)
    assert os.lstat(ovl.m("top.txt")).st_size == 6 * GiB + 3


# -- locks between processes -----------------------------------------------------------


def _in_child(fn: Callable[[], int]) -> int:
    """Run ``fn`` in a forked child; its return value is the exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = fn()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _try_lock(path: str, how: str) -> Callable[[], int]:
    """0: got the lock; 1: it is held elsewhere."""

    def attempt() -> int:
        with open(path, "r+b") as f:
            try:
                if how == "flock":
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 2)
            except BlockingIOError:
                return 1
            return 0

    return attempt


@BOTH
@pytest.mark.parametrize("how", ["flock", "fcntl"])
def test_locks_between_processes(ovl: Ovl, how: str) -> None:
    path = ovl.m("bottom.txt")  # a lower file: the first open for writing copies it up
    with open(path, "r+b") as f:
        if how == "flock":
            fcntl.flock(f, fcntl.LOCK_EX)
        else:
            fcntl.lockf(f, fcntl.LOCK_EX, 1, 2)
        assert _in_child(_try_lock(path, how)) == 1
        if how == "fcntl":  # a byte range that does not overlap is free
            assert _in_child(_try_lock_range(path, 10)) == 0
        if how == "flock":
            fcntl.flock(f, fcntl.LOCK_UN)
        else:
            fcntl.lockf(f, fcntl.LOCK_UN, 1, 2)
        assert _in_child(_try_lock(path, how)) == 0
    assert _in_child(_try_lock(path, how)) == 0


def _try_lock_range(path: str, start: int) -> Callable[[], int]:
    def attempt() -> int:
        with open(path, "r+b") as f:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, start)
            except BlockingIOError:
                return 1
            return 0

    return attempt


def test_the_mount_reads_ahead_1_mib(ovl_factory: OvlFactory) -> None:
    # FUSE starts at 128 KiB; the daemon widens its mount's window so that a sequential
    # read reaches it in 1 MiB requests
    from overlayboot.fs.daemon import READ_AHEAD_KB, mount_device

    o = ovl_factory("overlayboot")
    dev = mount_device(Path(o.m()))
    st_dev = os.stat(o.m()).st_dev
    assert dev == f"{os.major(st_dev)}:{os.minor(st_dev)}"
    window = Path(f"/sys/class/bdi/{dev}/read_ahead_kb")
    # the daemon widens it once the kernel's INIT is answered, which may follow the mount
    poll_until(lambda: window.read_text().strip() == str(READ_AHEAD_KB), 60, "1 MiB readahead")
