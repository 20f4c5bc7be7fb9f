"""Deterministic cpio "newc" archives as the kernel's initramfs unpacker reads them.

Writing: a list of :class:`Entry` records (from a directory tree with
:func:`entries_from_tree`, plus entries that exist only in the archive, such as device
nodes) becomes an archive whose bytes depend only on the entries and the
``SOURCE_DATE_EPOCH`` given: mtimes later than it are lowered to it (earlier ones kept),
entries sorted by path components (parents first; missing parents added as 0755
directories), owner 0:0 unless set, inode numbers counted from 1 in that order, hard
links stored the newc way (one inode, ``nlink`` > 1, the data on the last entry of the
group and size 0 on the others), 4-byte padding, ``TRAILER!!!`` and zero padding to 512
bytes. Compression is deterministic too (gzip with mtime 0 and no name, xz with a CRC32
check as the kernel requires, zstd single-threaded through the ``zstd`` tool).

Reading: :func:`read_cpio` decompresses by magic and parses newc (several archives
concatenated, as the kernel accepts, included).
"""

from __future__ import annotations

import bz2
import enum
import gzip
import io
import lzma
import os
import stat
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from overlayboot.errors import OverlaybootError
from overlayboot.run import run

NEWC_MAGIC = b"070701"
NEWC_CRC_MAGIC = b"070702"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
BLOCK = 512
_MAX_FIELD = 0xFFFFFFFF
_CHUNK = 1 << 20


class CpioError(OverlaybootError):
    """An archive cannot be written or read as asked."""


class UnsupportedCompressionError(CpioError):
    """The target kernel cannot unpack an initramfs compressed this way."""


class Kind(enum.Enum):
    """The type of an archive entry; values are the ``S_IFMT`` bits."""

    FILE = stat.S_IFREG
    DIR = stat.S_IFDIR
    SYMLINK = stat.S_IFLNK
    CHAR = stat.S_IFCHR
    BLOCK = stat.S_IFBLK
    FIFO = stat.S_IFIFO
    SOCKET = stat.S_IFSOCK


class Compression(enum.Enum):
    """How the archive is compressed."""

    NONE = "none"
    GZIP = "gzip"
    XZ = "xz"
    ZSTD = "zstd"


# compression -> the kernel option that lets the initramfs unpacker read it
KERNEL_OPTIONS: dict[Compression, str | None] = {
    Compression.NONE: None,
    Compression.GZIP: "CONFIG_RD_GZIP",
    Compression.XZ: "CONFIG_RD_XZ",
    Compression.ZSTD: "CONFIG_RD_ZSTD",
}


def _normalize(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        raise CpioError(f"invalid archive path {path!r}: empty")
    if ".." in parts:
        raise CpioError(f"invalid archive path {path!r}: contains '..'")
    return "/".join(parts)


@dataclass(frozen=True)
class Entry:
    """One file to put in the archive; ``path`` is relative to the archive root."""

    path: str
    kind: Kind
    mode: int = 0o644  # permission bits, setuid/setgid/sticky included
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    data: bytes | Path | None = None  # FILE: the content, or a host file read when writing
    target: str | None = None  # SYMLINK: where it points
    rdev: tuple[int, int] = (0, 0)  # CHAR/BLOCK: (major, minor)
    link_group: str | None = None  # FILEs with the same group are hard links to one inode

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _normalize(self.path))
        if self.mode & ~0o7777:
            raise CpioError(f"{self.path}: mode {self.mode:o} has bits beyond 07777")
        if (self.kind is Kind.SYMLINK) != (self.target is not None):
            raise CpioError(f"{self.path}: a link target is for symlinks, and they need one")
        if self.data is not None and self.kind is not Kind.FILE:
            raise CpioError(f"{self.path}: only regular files carry data")
        if self.link_group is not None and self.kind is not Kind.FILE:
            raise CpioError(f"{self.path}: only regular files can be hard links here")
        if self.rdev != (0, 0) and self.kind not in (Kind.CHAR, Kind.BLOCK):
            raise CpioError(f"{self.path}: only device nodes have a device number")

    @classmethod
    def file(
        cls,
        path: str,
        data: bytes | Path,
        mode: int = 0o644,
        *,
        uid: int = 0,
        gid: int = 0,
        mtime: int = 0,
        link_group: str | None = None,
    ) -> Entry:
        """A regular file with ``data`` (bytes, or a host file to read when writing)."""
        return cls(path, Kind.FILE, mode, uid, gid, mtime, data=data, link_group=link_group)

    @classmethod
    def directory(
        cls, path: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0, mtime: int = 0
    ) -> Entry:
        """A directory."""
        return cls(path, Kind.DIR, mode, uid, gid, mtime)

    @classmethod
    def symlink(
        cls, path: str, target: str, *, uid: int = 0, gid: int = 0, mtime: int = 0
    ) -> Entry:
        """A symbolic link to ``target``."""
        return cls(path, Kind.SYMLINK, 0o777, uid, gid, mtime, target=target)

    @classmethod
    def device(
        cls,
        path: str,
        kind: Kind,
        major: int,
        minor: int,
        mode: int = 0o600,
        *,
        uid: int = 0,
        gid: int = 0,
        mtime: int = 0,
    ) -> Entry:
        """A character or block device node (no root needed: it exists only in the archive)."""
        if kind not in (Kind.CHAR, Kind.BLOCK):
            raise CpioError(f"{path}: {kind.name} is not a device kind")
        return cls(path, kind, mode, uid, gid, mtime, rdev=(major, minor))

    @classmethod
    def fifo(
        cls, path: str, mode: int = 0o644, *, uid: int = 0, gid: int = 0, mtime: int = 0
    ) -> Entry:
        """A named pipe."""
        return cls(path, Kind.FIFO, mode, uid, gid, mtime)


def entries_from_tree(tree: Path, *, prefix: str = "", keep_owner: bool = False) -> list[Entry]:
    """Entries for everything below ``tree`` (not ``tree`` itself), under ``prefix``.

    Files sharing an inode become one hard-link group; owners become 0:0 unless
    ``keep_owner``. Device nodes, fifos and sockets found on disk are kept.
    """
    entries: list[Entry] = []
    groups: dict[tuple[int, int], tuple[str, Path]] = {}
    base = prefix.strip("/")

    def walk(directory: Path, rel: str) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            raise CpioError(f"cannot list {directory}: {exc.strerror}") from exc
        for name in names:
            host = directory / name
            path = f"{rel}/{name}" if rel else name
            st = os.lstat(host)
            uid, gid = (st.st_uid, st.st_gid) if keep_owner else (0, 0)
            mtime = max(0, int(st.st_mtime))
            perms = stat.S_IMODE(st.st_mode)
            fmt = stat.S_IFMT(st.st_mode)
            if fmt == stat.S_IFDIR:
                entries.append(Entry.directory(path, perms, uid=uid, gid=gid, mtime=mtime))
                walk(host, path)
            elif fmt == stat.S_IFREG:
                data: Path = host
                group = None
                if st.st_nlink > 1:
                    group, data = groups.setdefault((st.st_dev, st.st_ino), (path, host))
                entries.append(
                    Entry.file(path, data, perms, uid=uid, gid=gid, mtime=mtime, link_group=group)
                )
            elif fmt == stat.S_IFLNK:
                target = os.readlink(host)
                entries.append(Entry.symlink(path, target, uid=uid, gid=gid, mtime=mtime))
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
                entries.append(
                    Entry.device(
                        path, Kind(fmt), major, minor, perms, uid=uid, gid=gid, mtime=mtime
                    )
                )
            else:
                entries.append(Entry(path, Kind(fmt), perms, uid, gid, mtime))

    walk(tree, base)
    return entries


# --- writing -------------------------------------------------------------------------


def _sort_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


@dataclass(frozen=True)
class _Planned:
    entry: Entry
    ino: int
    nlink: int
    mtime: int
    with_data: bool  # False for all but the last entry of a hard-link group


def _plan(entries: Iterable[Entry], source_date_epoch: int | None) -> list[_Planned]:
    by_path: dict[str, Entry] = {}
    for entry in entries:
        if entry.path in by_path:
            raise CpioError(f"{entry.path} is in the archive twice")
        by_path[entry.path] = entry
    implicit_mtime = source_date_epoch if source_date_epoch is not None else 0
    for path in list(by_path):
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            found = by_path.get(parent)
            if found is None:
                by_path[parent] = Entry.directory(parent, mtime=implicit_mtime)
            elif found.kind is not Kind.DIR:
                raise CpioError(f"{path}: its parent {parent} is not a directory")
    ordered = sorted(by_path.values(), key=lambda e: _sort_key(e.path))

    subdirs: dict[str, int] = {}
    groups: dict[str, list[Entry]] = {}
    for entry in ordered:
        if entry.kind is Kind.DIR and "/" in entry.path:
            parent = entry.path.rsplit("/", 1)[0]
            subdirs[parent] = subdirs.get(parent, 0) + 1
        if entry.link_group is not None:
            groups.setdefault(entry.link_group, []).append(entry)
    for name, members in groups.items():
        first = members[0]
        for other in members[1:]:
            if replace(other, path=first.path) != first:
                raise CpioError(
                    f"hard links {first.path} and {other.path} (group {name}) differ "
                    "in mode, owner, mtime or data"
                )

    planned: list[_Planned] = []
    group_ino: dict[str, int] = {}
    next_ino = 1
    for entry in ordered:
        mtime = entry.mtime
        if source_date_epoch is not None:
            mtime = min(mtime, source_date_epoch)
        if entry.link_group is not None:
            members = groups[entry.link_group]
            if entry.link_group not in group_ino:
                group_ino[entry.link_group] = next_ino
                next_ino += 1
            ino, nlink, with_data = group_ino[entry.link_group], len(members), entry is members[-1]
        else:
            ino, nlink, with_data = next_ino, 1, True
            next_ino += 1
            if entry.kind is Kind.DIR:
                nlink = 2 + subdirs.get(entry.path, 0)
        planned.append(_Planned(entry, ino, nlink, mtime, with_data))
    return planned


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(name: bytes, fields: Sequence[int], where: str) -> bytes:
    for value in fields:
        if not 0 <= value <= _MAX_FIELD:
            raise CpioError(f"{where}: value {value} does not fit a newc header field")
    text = NEWC_MAGIC + b"".join(b"%08X" % v for v in fields) + b"%08X" % (len(name) + 1) + b"0" * 8
    head = text + name + b"\0"
    return head + _pad(len(head))


def _write_member(out: BinaryIO, p: _Planned) -> int:
    e = p.entry
    name = e.path.encode("utf-8", "surrogateescape")
    mode = e.kind.value | e.mode
    payload: bytes | None = None
    source: Path | None = None
    size = 0
    if e.kind is Kind.SYMLINK and e.target is not None:
        payload = e.target.encode("utf-8", "surrogateescape")
    elif e.kind is Kind.FILE and p.with_data:
        if isinstance(e.data, Path):
            source = e.data
        else:
            payload = e.data or b""
    file: BinaryIO | None = None
    try:
        if source is not None:
            try:
                file = open(source, "rb")  # noqa: SIM115 - closed below
                size = os.fstat(file.fileno()).st_size
            except OSError as exc:
                raise CpioError(f"cannot read {source}: {exc.strerror}") from exc
        elif payload is not None:
            size = len(payload)
        rmajor, rminor = e.rdev
        fields = (p.ino, mode, e.uid, e.gid, p.nlink, p.mtime, size, 0, 0, rmajor, rminor)
        head = _header(name, fields, e.path)
        out.write(head)
        written = len(head)
        if file is not None:
            copied = 0
            while chunk := file.read(_CHUNK):
                out.write(chunk)
                copied += len(chunk)
            if copied != size:
                raise CpioError(f"{source} changed size while being archived")
        elif payload:
            out.write(payload)
        out.write(_pad(size))
        return written + size + len(_pad(size))
    finally:
        if file is not None:
            file.close()


def write_cpio(
    entries: Iterable[Entry], out: BinaryIO, *, source_date_epoch: int | None = None
) -> int:
    """Write an uncompressed newc archive of ``entries`` to ``out``; return its length.

    With ``source_date_epoch``, no mtime in the archive is later than it.
    """
    total = 0
    for planned in _plan(entries, source_date_epoch):
        total += _write_member(out, planned)
    trailer = _header(TRAILER.encode(), (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0), TRAILER)
    out.write(trailer)
    total += len(trailer)
    tail = b"\0" * (-total % BLOCK)
    out.write(tail)
    return total + len(tail)


def cpio_bytes(entries: Iterable[Entry], *, source_date_epoch: int | None = None) -> bytes:
    """The uncompressed newc archive of ``entries`` as bytes."""
    buf = io.BytesIO()
    write_cpio(entries, buf, source_date_epoch=source_date_epoch)
    return buf.getvalue()


# --- compression ---------------------------------------------------------------------

XZ_DICT_SIZE = 1 << 20  # kernel xz.rst: "probably the maximum reasonable" for in-kernel use

_DEFAULT_LEVEL = {Compression.GZIP: 9, Compression.XZ: 6, Compression.ZSTD: 19}


def compress(data: bytes, compression: Compression, *, level: int | None = None) -> bytes:
    """Compress ``data`` deterministically in a format the kernel unpacks."""
    if compression is Compression.NONE:
        return data
    lvl = level if level is not None else _DEFAULT_LEVEL[compression]
    if compression is Compression.GZIP:
        return gzip.compress(data, compresslevel=lvl, mtime=0)
    if compression is Compression.XZ:
        filters = [{"id": lzma.FILTER_LZMA2, "preset": lvl, "dict_size": XZ_DICT_SIZE}]
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=filters)
    ultra = ["--ultra"] if lvl > 19 else []
    return run(["zstd", "-q", "-c", "-T1", *ultra, f"-{lvl}"], input=data).stdout


def write_archive(
    entries: Iterable[Entry],
    dest: Path,
    *,
    compression: Compression = Compression.ZSTD,
    source_date_epoch: int | None = None,
    level: int | None = None,
) -> None:
    """Write the archive of ``entries`` to ``dest``, compressed (an initramfs image)."""
    raw = cpio_bytes(entries, source_date_epoch=source_date_epoch)
    data = compress(raw, compression, level=level)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(dest)
    except OSError as exc:
        raise CpioError(f"cannot write {dest}: {exc.strerror}") from exc


def kernel_config(config: Path) -> dict[str, str]:
    """The ``CONFIG_*`` options of a kernel .config set to a value (``y``, ``m``, ...)."""
    try:
        text = config.read_text(errors="replace")
    except OSError as exc:
        raise CpioError(f"cannot read kernel config {config}: {exc.strerror}") from exc
    options: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            key, value = line.split("=", 1)
            options[key] = value.strip('"')
    return options


def check_kernel_support(compression: Compression, config: Path | None) -> None:
    """Raise :class:`UnsupportedCompressionError` if the kernel cannot read this initramfs.

    Without a config there is nothing to check.
    """
    if config is None:
        return
    options = kernel_config(config)
    if options.get("CONFIG_BLK_DEV_INITRD") != "y":
        raise UnsupportedCompressionError(f"kernel {config} has no initramfs support")
    option = KERNEL_OPTIONS[compression]
    if option is not None and options.get(option) != "y":
        usable = [c.value for c, o in KERNEL_OPTIONS.items() if o is None or options.get(o) == "y"]
        raise UnsupportedCompressionError(
            f"kernel {config} cannot unpack a {compression.value} initramfs ({option} is not set)",
            f"use one of: {', '.join(usable)}",
        )


# --- reading -------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One header of a newc archive as read, fields as stored."""

    name: str
    ino: int
    mode: int  # file type and permission bits
    uid: int
    gid: int
    nlink: int
    mtime: int
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    data: bytes

    @property
    def kind(self) -> Kind:
        """The entry type."""
        try:
            return Kind(stat.S_IFMT(self.mode))
        except ValueError as exc:
            raise CpioError(f"{self.name}: unknown file type in mode {self.mode:o}") from exc

    @property
    def perms(self) -> int:
        """Permission bits, setuid/setgid/sticky included."""
        return stat.S_IMODE(self.mode)

    @property
    def target(self) -> str | None:
        """A symlink's target."""
        if self.kind is not Kind.SYMLINK:
            return None
        return self.data.decode("utf-8", "surrogateescape")


_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_BZIP2_MAGIC = b"BZh"


def detect_compression(data: bytes) -> Compression | None:
    """The compression of an initramfs by its magic; None if not recognised."""
    if data.startswith((NEWC_MAGIC, NEWC_CRC_MAGIC)):
        return Compression.NONE
    for magic, comp in (
        (_GZIP_MAGIC, Compression.GZIP),
        (_XZ_MAGIC, Compression.XZ),
        (_ZSTD_MAGIC, Compression.ZSTD),
    ):
        if data.startswith(magic):
            return comp
    return None


def _decompress_one(data: bytes) -> tuple[bytes, int]:
    """Decompress the stream at the start of ``data``; return it and the bytes consumed."""
    try:
        if data.startswith(_GZIP_MAGIC):
            d = zlib.decompressobj(wbits=31)
            out = d.decompress(data)
            if not d.eof:
                raise CpioError("truncated gzip stream")
            return out, len(data) - len(d.unused_data)
        if data.startswith(_XZ_MAGIC):
            x = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            out = x.decompress(data)
            if not x.eof:
                raise CpioError("truncated xz stream")
            return out, len(data) - len(x.unused_data)
        if data.startswith(_BZIP2_MAGIC):
            b = bz2.BZ2Decompressor()
            out = b.decompress(data)
            return out, len(data) - len(b.unused_data)
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
        raise CpioError(f"corrupt compressed data: {exc}") from exc
    if data.startswith(_ZSTD_MAGIC):
        return run(["zstd", "-q", "-d", "-c"], input=data).stdout, len(data)
    raise CpioError(f"unknown data (magic {data[:6].hex()}): not a newc archive")


def _hex(data: bytes, pos: int) -> int:
    field = data[pos : pos + 8]
    try:
        if len(field) != 8:
            raise ValueError
        return int(field, 16)
    except ValueError as exc:
        raise CpioError(f"bad newc header field at offset {pos}") from exc


def _parse_archive(data: bytes, pos: int) -> tuple[list[Member], int]:
    """Parse one newc archive starting at ``pos`` up to its trailer; return the end."""
    members: list[Member] = []
    while True:
        magic = data[pos : pos + 6]
        if magic not in (NEWC_MAGIC, NEWC_CRC_MAGIC):
            raise CpioError(f"no newc header at offset {pos}")
        f = [_hex(data, pos + 6 + 8 * i) for i in range(13)]
        namesize, size = f[11], f[6]
        if namesize == 0:
            raise CpioError(f"empty name at offset {pos}")
        name_at = pos + HEADER_SIZE
        raw_name = data[name_at : name_at + namesize]
        if len(raw_name) != namesize or raw_name[-1] != 0:
            raise CpioError(f"bad name at offset {pos}")
        name = raw_name[:-1].decode("utf-8", "surrogateescape")
        data_at = name_at + namesize + (-(HEADER_SIZE + namesize) % 4)
        body = data[data_at : data_at + size]
        if len(body) != size:
            raise CpioError(f"{name}: archive truncated")
        pos = data_at + size + (-size % 4)
        if name == TRAILER:
            return members, pos
        ino, mode, uid, gid, nlink, mtime, _, major, minor, rmajor, rminor = f[:11]
        members.append(
            Member(name, ino, mode, uid, gid, nlink, mtime, major, minor, rmajor, rminor, body)
        )


def _parse_stream(data: bytes) -> Iterator[Member]:
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1
            continue
        if data.startswith((NEWC_MAGIC, NEWC_CRC_MAGIC), pos):
            members, pos = _parse_archive(data, pos)
            yield from members
        else:
            inner, used = _decompress_one(data[pos:])
            yield from _parse_stream(inner)
            pos += used


def parse_cpio(data: bytes) -> list[Member]:
    """Parse (possibly compressed, possibly concatenated) newc archives from bytes."""
    return list(_parse_stream(data))


def read_cpio(path: Path) -> list[Member]:
    """Read an initramfs file: decompress by magic and parse every archive in it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CpioError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_cpio(data)
