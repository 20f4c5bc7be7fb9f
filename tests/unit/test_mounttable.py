"""The one mountinfo reader: field positions, the kernel's octal escapes, the live table."""

from __future__ import annotations

from overlayboot.mounttable import Mount, mounts, parse

FUSE = (
    b"36 25 0:41 / /mnt/with\\040space rw,nosuid,relatime shared:1 - fuse.overlayboot "
    b"overlayboot rw,user_id=0,group_id=0,allow_other\n"
)
OVERLAY = (
    b"40 25 0:50 / /merged rw,relatime - overlay overlay "
    b"rw,lowerdir=/l,upperdir=/u\\054v,workdir=/w\n"
)


def test_fields_and_escapes() -> None:
    assert parse(FUSE) == Mount(
        dev="0:41",
        target="/mnt/with space",
        fstype="fuse.overlayboot",
        source="overlayboot",
        super_options="rw,user_id=0,group_id=0,allow_other",
    )
    m = parse(OVERLAY)
    assert m is not None and "upperdir=/u,v" in m.super_options


def test_not_a_mountinfo_line() -> None:
    assert parse(b"") is None
    assert parse(b"36 25 0:41 / /mnt rw\n") is None


def test_this_process_sees_its_root() -> None:
    assert any(m.target == "/" for m in mounts())
