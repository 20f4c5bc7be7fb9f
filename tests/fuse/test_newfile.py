"""Files created in a directory with no lower part go straight into the upper
(``overlayboot.fs.newfile``, as kernel overlayfs' ``ovl_create_upper``); elsewhere, or
for another owner, through the work dir. Either way the result is the same file."""

from __future__ import annotations

import os
import stat

from tests.fuse.conftest import Ovl
from tests.fuse.helpers import BOTH, as_user


def _create(path: str, mode: int, data: bytes) -> tuple[int, int, int]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


@BOTH
def test_creates_in_new_opaque_and_merged_dirs(ovl: Ovl) -> None:
    os.mkdir(ovl.m("new"))  # only in the upper
    os.chmod(ovl.m("new"), 0o777)
    os.mkdir(ovl.m("new/setgid"))
    os.chown(ovl.m("new/setgid"), 0, 4321)
    os.chmod(ovl.m("new/setgid"), 0o2777)
    os.rmdir(ovl.m("pub"))  # an empty lower dir
    os.mkdir(ovl.m("pub"), 0o755)  # over its whiteout: opaque, in the upper only
    cases = {
        "new/f": (0o644, (0, 0, 0o644)),
        "new/suid": (0o4755, (0, 0, 0o4755)),
        "new/setgid/f": (0o640, (0, 4321, 0o640)),
        "pub/f": (0o600, (0, 0, 0o600)),
        "dir/f": (0o644, (0, 0, 0o644)),  # a merged dir: the work dir
    }
    for rel, (mode, want) in cases.items():
        assert _create(ovl.m(rel), mode, rel.encode()) == want, rel
    assert as_user(1234, 1234, lambda: _create(ovl.m("new/theirs"), 0o600, b"x")) == (
        1234,
        1234,
        0o600,
    )
    for rel in [*cases, "new/theirs"]:
        with open(ovl.m(rel), "rb") as f:
            assert f.read() in (rel.encode(), b"x")
    if ovl.kind != "kernel":
        for rel in [*cases, "new/theirs"]:
            assert os.path.isfile(ovl.u(rel)), rel
        assert not [n for n in os.listdir(ovl.scratch) if n.startswith("tmp.")]
    assert _errno_of_create(ovl.m("new/f")) == 17  # EEXIST, O_EXCL


def _errno_of_create(path: str) -> int:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError as exc:
        return exc.errno or -1
    return 0
