"""The image id: a digest of the root tree, carried inside the image at ``/.overlayboot/image-id``.

The boot keeps each image's changes on a persistence partition under its id, so the id
must change whenever any byte of the root changes and stay the same for a byte-identical
rebuild. mksquashfs' time and size do neither (``SOURCE_DATE_EPOCH`` fixes the time and
the size is padded to 4 KiB). So the builder hashes the tree itself, as mksquashfs will
store it: for every entry, in sorted order (names compared as bytes), its path, type,
permission bits, owner and group (0:0 under ``-all-root``), the extended attributes
squashfs keeps (``user.``, ``trusted.``, ``security.``), and then the sha256 of a file's
contents, a symbolic link's target, a device's numbers, or the first path of a hard link
seen before. Times are left out: the image gives every inode ``SOURCE_DATE_EPOCH``. The id
file itself is not part of the digest (a tree unpacked from an image may carry one).

The id is :data:`ID_LEN` hex digits of that sha256. Images not built by overlayboot have
no id file; the boot then uses as many hex digits of the sha256 of the whole image file.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

from overlayboot.errors import OverlaybootError

ID_DIR = ".overlayboot"
ID_FILE = f"{ID_DIR}/image-id"  # relative to the root of the image
ID_LEN = 32  # hex digits: 128 bits of the sha256
VERSION = b"overlayboot-image-id-1"
XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")  # what squashfs can store
_CHUNK = 1 << 20


class ImageIdError(OverlaybootError):
    """The root tree cannot be read to compute its id."""


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _xattrs(path: bytes) -> list[tuple[bytes, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # a filesystem without xattrs
        return []
    out = []
    for name in names:
        raw = os.fsencode(name)
        if raw.startswith(XATTR_PREFIXES):
            out.append((raw, os.getxattr(path, name, follow_symlinks=False)))
    return sorted(out)


def _contents(path: bytes) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.digest()


def _walk(root: bytes, rel: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
    """``(relative path, full path)`` of every entry under ``root``, sorted, parents first."""
    full = os.path.join(root, rel) if rel else root
    yield rel, full
    if not os.path.isdir(full) or os.path.islink(full):
        return
    for name in sorted(os.listdir(full)):
        child = os.path.join(rel, name) if rel else name
        if child == ID_FILE.encode():
            continue
        yield from _walk(root, child)


def _record(
    rel: bytes, full: bytes, st: os.stat_result, all_root: bool, link: bytes | None
) -> bytes:
    """The bytes one entry adds to the digest."""
    uid, gid = (0, 0) if all_root else (st.st_uid, st.st_gid)
    kind = stat.S_IFMT(st.st_mode)
    parts = [rel, b"%o" % kind, b"%o" % stat.S_IMODE(st.st_mode), b"%d:%d" % (uid, gid)]
    for name, value in _xattrs(full):
        parts += [b"x", name, value]
    if link is not None:
        parts += [b"hardlink", link]
    elif stat.S_ISREG(kind):
        parts += [b"data", _contents(full)]
    elif stat.S_ISLNK(kind):
        parts += [b"target", os.readlink(full)]
    elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
        parts += [b"dev", b"%d,%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))]
    return b"".join(_field(p) for p in parts)


def tree_digest(root: Path, *, all_root: bool = False) -> str:
    """The sha256 (hex) of the tree at ``root`` as an image will hold it (see above)."""
    h = hashlib.sha256(_field(VERSION))
    first_paths: dict[tuple[int, int], bytes] = {}
    try:
        for rel, full in _walk(os.fsencode(root)):
            st = os.lstat(full)
            link = None
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                link = first_paths.setdefault((st.st_dev, st.st_ino), rel)
                link = None if link == rel else link
            h.update(_field(_record(rel, full, st, all_root, link)))
    except OSError as exc:
        where = os.fsdecode(exc.filename) if exc.filename else str(root)
        raise ImageIdError(f"cannot read {where} to compute the image id: {exc.strerror}") from exc
    return h.hexdigest()


def image_id(root: Path, *, all_root: bool = False) -> str:
    """The id of the image built from ``root``: :data:`ID_LEN` hex digits of its digest."""
    return tree_digest(root, all_root=all_root)[:ID_LEN]
