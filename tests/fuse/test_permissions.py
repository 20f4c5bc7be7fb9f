"""Permission checks on a real mount, as an unprivileged user (uid/gid 1000, no groups).

The kernel checks permissions on the merged attributes (overlayboot mounts with
default_permissions, allow_other), so the outcomes are those of any local
filesystem; kernel overlayfs is the reference.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import pytest

from tests.fuse.conftest import Ovl
from tests.fuse.helpers import BOTH, as_user
from tests.mounts import have_fuse

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not have_fuse(), reason="needs root and /dev/fuse"),
]

UID = GID = 1000
EACCES = ("errno", errno.EACCES)
EPERM = ("errno", errno.EPERM)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _create(path: str) -> tuple[int, int]:
    with open(path, "w") as f:
        f.write("mine\n")
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def _user(fn: Callable[[], object]) -> object:
    return as_user(UID, GID, fn)


@BOTH
def test_other_users_can_use_the_mount(ovl: Ovl) -> None:
    assert _user(lambda: _read(ovl.m("top.txt"))) == b"top\n"
    assert _user(lambda: sorted(os.listdir(ovl.m("dir")))) == sorted(os.listdir(ovl.m("dir")))
    assert _user(lambda: os.readlink(ovl.m("link_to_top"))) == "top.txt"


@BOTH
def test_unprivileged_reads_and_writes_are_checked(ovl: Ovl) -> None:
    assert _user(lambda: _read(ovl.m("secret"))) == EACCES
    assert _user(lambda: _create(ovl.m("dir/new"))) == EACCES
    assert _user(lambda: os.mkdir(ovl.m("newdir"))) == EACCES
    assert _user(lambda: os.unlink(ovl.m("top.txt"))) == EACCES
    assert _user(lambda: os.rename(ovl.m("top.txt"), ovl.m("pub/t"))) == EACCES
    assert _user(lambda: os.open(ovl.m("top.txt"), os.O_WRONLY)) == EACCES
    assert _user(lambda: os.chmod(ovl.m("top.txt"), 0o777)) == EPERM
    assert _user(lambda: os.setxattr(ovl.m("top.txt"), "user.x", b"1")) == EACCES
    assert _user(lambda: os.utime(ovl.m("top.txt"), (1, 1))) == EPERM
    assert _user(lambda: os.listdir(ovl.m("meta/inner"))) == EACCES  # 0711: no read
    assert _user(lambda: os.lstat(ovl.m("meta/inner/f")).st_size) == EACCES  # meta is 0750
    # none of the refused changes copied anything up
    assert sorted(os.listdir(ovl.upper)) == ["triple.txt", "upper_only.txt"]


@BOTH
def test_files_created_by_a_user_belong_to_that_user(ovl: Ovl) -> None:
    assert _user(lambda: _create(ovl.m("pub/mine"))) == (UID, GID)
    st = os.lstat(ovl.u("pub/mine"))
    assert (st.st_uid, st.st_gid) == (UID, GID)
    assert _user(lambda: os.mkdir(ovl.m("pub/d"), 0o700)) is None
    st = os.lstat(ovl.u("pub/d"))
    assert (st.st_uid, st.st_gid) == (UID, GID)
    # the owner may chmod, write and remove it; the lower parent dir keeps root's
    assert _user(lambda: os.chmod(ovl.m("pub/mine"), 0o600)) is None
    assert _user(lambda: _read(ovl.m("pub/mine"))) == b"mine\n"
    assert os.lstat(ovl.u("pub")).st_uid == 0
    # the setgid dir gives its group, not the user's
    os.chmod(ovl.m("sgiddir"), 0o2777)
    assert _user(lambda: _create(ovl.m("sgiddir/mine"))) == (UID, 4242)
    # a user may not give a file away, root may
    assert _user(lambda: os.chown(ovl.m("pub/mine"), 0, 0)) == EPERM
    os.chown(ovl.m("pub/mine"), 2000, 2000)
    assert _user(lambda: _read(ovl.m("pub/mine"))) == EACCES
    assert _user(lambda: os.unlink(ovl.m("pub/d"))) == ("errno", errno.EISDIR)
    assert _user(lambda: os.rmdir(ovl.m("pub/d"))) is None
