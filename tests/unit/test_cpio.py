"""cpio newc writer and reader: checked against GNU cpio, byte for byte and for reproducibility."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mkimage.cpio import (
    TRAILER,
    Compression,
    CpioError,
    Entry,
    Kind,
    Member,
    UnsupportedCompressionError,
    check_kernel_support,
    cpio_bytes,
    detect_compression,
    entries_from_tree,
    parse_cpio,
    read_cpio,
    write_archive,
)
from overlayboot.run import run

SDE = 1_600_000_000  # SOURCE_DATE_EPOCH used throughout
LATER = SDE + 86_400
BINARY = bytes(range(256)) * 9 + b"tail"  # size not a multiple of 4

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio not installed")


def make_tree(top: Path, mtime: int, reverse: bool = False) -> Path:
    """A tree with every kind a user can make without root; ``reverse`` creates it in
    the opposite order (other inode numbers and directory order on disk)."""
    links = ["usr/bin/busybox", "usr/bin/ls", "usr/bin/sh"]
    if reverse:
        links.reverse()
    steps: list[Callable[[], object]] = [
        lambda: (top / "etc/init.d").mkdir(parents=True),
        lambda: (top / "usr/bin").mkdir(parents=True),
        lambda: (top / "tmp").mkdir(),
        lambda: (top / "empty").mkdir(),
        lambda: (top / "etc/hostname").write_text("live\n"),
        lambda: (top / "etc/empty-file").write_bytes(b""),
        lambda: (top / links[0]).write_bytes(BINARY),
        lambda: (top / "etc/init.d/rcS").write_text("#!/bin/sh\necho hi\n"),
        lambda: (top / "unicode-ünï.txt").write_text("ü\n"),
        lambda: os.link(top / links[0], top / links[1]),
        lambda: os.link(top / links[0], top / links[2]),
        lambda: (top / "bin").symlink_to("usr/bin"),
        lambda: (top / "etc/mtab").symlink_to("/proc/self/mounts"),
        lambda: (top / "dangling").symlink_to("nowhere/" + "x" * 200),
        lambda: os.mkfifo(top / "etc/fifo"),
    ]
    top.mkdir()
    if reverse:  # other creation order: other inode numbers and directory order on disk
        (top / "usr/bin").mkdir(parents=True)
        (top / "etc/init.d").mkdir(parents=True)
        steps = [steps[6], *steps[7:][::-1], *steps[2:6][::-1]]
    for step in steps:
        step()
    os.chmod(top / "usr/bin/busybox", 0o4755)
    os.chmod(top / "etc/init.d/rcS", 0o750)
    os.chmod(top / "tmp", 0o1777)
    os.chmod(top / "empty", 0o700)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (mtime, mtime), follow_symlinks=False)
    return top


EXTRA = [
    Entry.device("dev/console", Kind.CHAR, 5, 1),
    Entry.device("dev/null", Kind.CHAR, 1, 3, 0o666),
    Entry.device("dev/sda", Kind.BLOCK, 8, 0, 0o660),
    Entry.file("init", b"#!/bin/sh\nexec /sbin/init\n", 0o755, mtime=LATER),
]

EXPECTED_NAMES = [
    "bin",
    "dangling",
    "dev",
    "dev/console",
    "dev/null",
    "dev/sda",
    "empty",
    "etc",
    "etc/empty-file",
    "etc/fifo",
    "etc/hostname",
    "etc/init.d",
    "etc/init.d/rcS",
    "etc/mtab",
    "init",
    "tmp",
    "unicode-ünï.txt",
    "usr",
    "usr/bin",
    "usr/bin/busybox",
    "usr/bin/ls",
    "usr/bin/sh",
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree", LATER)


@pytest.fixture
def archive(tmp_path: Path, tree: Path) -> Path:
    out = tmp_path / "initramfs.cpio"
    write_archive(
        entries_from_tree(tree) + EXTRA,
        out,
        compression=Compression.NONE,
        source_date_epoch=SDE,
    )
    return out


def by_name(members: list[Member]) -> dict[str, Member]:
    return {m.name: m for m in members}


def test_reader_sees_exact_entries(archive: Path) -> None:
    members = read_cpio(archive)
    assert [m.name for m in members] == EXPECTED_NAMES
    m = by_name(members)
    assert all(x.uid == 0 and x.gid == 0 for x in members)
    devices = {"dev/console", "dev/null", "dev/sda"}  # made with mtime 0: never raised
    assert {x.name: x.mtime for x in members} == {n: 0 if n in devices else SDE for n in m}
    assert all(x.devmajor == 0 and x.devminor == 0 for x in members)
    assert [x.ino for x in members if x.name not in ("usr/bin/ls", "usr/bin/sh")] == list(
        range(1, 21)
    )
    assert (m["bin"].kind, m["bin"].target) == (Kind.SYMLINK, "usr/bin")
    assert m["etc/mtab"].target == "/proc/self/mounts"
    assert m["dangling"].target == "nowhere/" + "x" * 200
    assert (m["dev"].kind, m["dev"].perms, m["dev"].nlink) == (Kind.DIR, 0o755, 2)
    assert (m["etc"].nlink, m["usr"].nlink, m["tmp"].perms, m["empty"].perms) == (
        3,
        3,
        0o1777,
        0o700,
    )
    console = m["dev/console"]
    assert (console.kind, console.perms, console.rdevmajor, console.rdevminor) == (
        Kind.CHAR,
        0o600,
        5,
        1,
    )
    assert (m["dev/sda"].kind, m["dev/sda"].rdevmajor, m["dev/sda"].perms) == (Kind.BLOCK, 8, 0o660)
    assert (m["etc/fifo"].kind, m["etc/fifo"].data) == (Kind.FIFO, b"")
    assert (m["etc/init.d/rcS"].perms, m["etc/init.d/rcS"].data) == (0o750, b"#!/bin/sh\necho hi\n")
    assert m["etc/empty-file"].data == b""
    assert m["init"].data == b"#!/bin/sh\nexec /sbin/init\n"
    assert m["unicode-ünï.txt"].data == "ü\n".encode()


def test_hard_links_one_inode_data_on_last(archive: Path) -> None:
    m = by_name(read_cpio(archive))
    group = [m["usr/bin/busybox"], m["usr/bin/ls"], m["usr/bin/sh"]]
    assert {x.ino for x in group} == {m["usr/bin/busybox"].ino}
    assert [x.nlink for x in group] == [3, 3, 3]
    assert [x.data for x in group] == [b"", b"", BINARY]
    assert all(x.perms == 0o4755 and x.kind is Kind.FILE for x in group)


def test_exact_bytes_of_a_tiny_archive() -> None:
    data = cpio_bytes([Entry.file("a", b"x", mtime=5)])

    def header(fields: list[int], name: bytes) -> bytes:
        return b"070701" + b"".join(b"%08X" % f for f in fields) + name

    expected = (
        header([1, 0o100644, 0, 0, 1, 5, 1, 0, 0, 0, 0, 2, 0], b"a\0")
        + b"x\0\0\0"
        + header([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0], TRAILER.encode() + b"\0\0\0\0")
    )
    assert len(expected) == 240
    assert data == expected + b"\0" * (512 - 240)


@needs_cpio
def test_gnu_cpio_lists_the_same(archive: Path) -> None:
    names = run(["cpio", "-t", "--quiet", "-F", archive]).stdout.decode().splitlines()
    assert names == EXPECTED_NAMES
    listing = run(["cpio", "-tv", "--quiet", "-F", archive]).stdout.decode().splitlines()
    lines = dict(zip(EXPECTED_NAMES, listing, strict=True))
    assert lines["dev/console"].startswith("crw-------")
    assert "5,   1" in lines["dev/console"]
    assert lines["dev/sda"].startswith("brw-rw----")
    assert lines["etc/fifo"].startswith("prw-r--r--")
    assert lines["usr/bin/busybox"].startswith("-rwsr-xr-x   3 root     root")
    assert lines["bin"].endswith("bin -> usr/bin")


@needs_cpio
def test_gnu_cpio_extracts_the_same(tmp_path: Path, tree: Path) -> None:
    archive = tmp_path / "nodev.cpio"
    write_archive(
        entries_from_tree(tree), archive, compression=Compression.NONE, source_date_epoch=SDE
    )
    out = tmp_path / "out"
    out.mkdir()
    flags = ["-i", "-d", "-m", "--quiet", "--no-absolute-filenames", "--no-preserve-owner"]
    run(["cpio", *flags, "-F", archive], cwd=out)
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            src = Path(dirpath, name)
            dst = out / src.relative_to(tree)
            s, d = os.lstat(src), os.lstat(dst)
            assert stat.S_IFMT(d.st_mode) == stat.S_IFMT(s.st_mode), dst
            if stat.S_ISLNK(s.st_mode):
                assert os.readlink(dst) == os.readlink(src)
                continue
            assert stat.S_IMODE(d.st_mode) == stat.S_IMODE(s.st_mode), dst
            if stat.S_ISREG(s.st_mode):
                assert dst.read_bytes() == src.read_bytes()
                assert d.st_mtime == SDE
    busybox = os.lstat(out / "usr/bin/busybox")
    assert os.lstat(out / "usr/bin/sh").st_ino == busybox.st_ino
    assert os.lstat(out / "usr/bin/ls").st_ino == busybox.st_ino
    assert busybox.st_nlink == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tree.iterdir())


def decompress_with_tool(path: Path, compression: Compression) -> bytes:
    tool = {Compression.GZIP: "gzip", Compression.XZ: "xz", Compression.ZSTD: "zstd"}
    if compression is Compression.NONE:
        return path.read_bytes()
    return run([tool[compression], "-d", "-c", path]).stdout


@pytest.mark.parametrize("compression", list(Compression))
def test_reproducible_across_mtimes_and_disk_order(
    tmp_path: Path, compression: Compression
) -> None:
    first = make_tree(tmp_path / "a", LATER)
    second = make_tree(tmp_path / "b", LATER + 12_345, reverse=True)
    outs = []
    for i, top in enumerate((first, second)):
        out = tmp_path / f"out{i}"
        entries = entries_from_tree(top) + EXTRA
        write_archive(entries, out, compression=compression, source_date_epoch=SDE)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    raw = cpio_bytes(entries_from_tree(first) + EXTRA, source_date_epoch=SDE)
    assert decompress_with_tool(tmp_path / "out0", compression) == raw
    assert detect_compression(outs[0]) is compression
    assert [m.name for m in parse_cpio(outs[0])] == EXPECTED_NAMES
    # without the clamp the two trees differ: the comparison above can fail
    assert cpio_bytes(entries_from_tree(first)) != cpio_bytes(entries_from_tree(second))


def test_compressed_headers_are_kernel_friendly(tmp_path: Path) -> None:
    entries = [Entry.file("a", b"a" * 1000)]
    gz, xz = tmp_path / "gz", tmp_path / "xz"
    write_archive(entries, gz, compression=Compression.GZIP, source_date_epoch=SDE)
    write_archive(entries, xz, compression=Compression.XZ, source_date_epoch=SDE)
    head = gz.read_bytes()[:10]
    assert head[:3] == b"\x1f\x8b\x08" and head[3] == 0  # deflate, no FNAME or other flags
    assert head[4:8] == b"\0\0\0\0"  # mtime 0
    stream = xz.read_bytes()
    assert stream[:6] == b"\xfd7zXZ\x00" and stream[6:8] == b"\x00\x01"  # check = CRC32
    if shutil.which("xz"):
        robot = run(["xz", "--robot", "--list", xz]).stdout.decode()
        assert "\tCRC32\t" in robot


def test_concatenated_archives_like_early_microcode(tmp_path: Path) -> None:
    early = cpio_bytes([Entry.file("kernel/x86/microcode/GenuineIntel.bin", b"ucode")])
    main = tmp_path / "main"
    write_archive([Entry.file("init", b"#!/bin/sh\n", 0o755)], main, compression=Compression.XZ)
    combined = tmp_path / "combined"
    combined.write_bytes(early + main.read_bytes())
    names = [m.name for m in read_cpio(combined)]
    ucode = "kernel/x86/microcode"
    assert names == ["kernel", "kernel/x86", ucode, f"{ucode}/GenuineIntel.bin", "init"]


def test_kernel_config_check(tmp_path: Path) -> None:
    config = tmp_path / ".config"
    config.write_text(
        "CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\n# CONFIG_RD_XZ is not set\n"
        "CONFIG_RD_ZSTD=m\nCONFIG_RD_BZIP2=y\n"
    )
    check_kernel_support(Compression.GZIP, config)
    check_kernel_support(Compression.NONE, config)
    for comp, option in ((Compression.XZ, "CONFIG_RD_XZ"), (Compression.ZSTD, "CONFIG_RD_ZSTD")):
        with pytest.raises(UnsupportedCompressionError) as err:
            check_kernel_support(comp, config)
        assert option in err.value.message
        assert err.value.hint == "use one of: none, gzip"
    for comp in Compression:
        check_kernel_support(comp, None)
    config.write_text("CONFIG_RD_GZIP=y\n# CONFIG_BLK_DEV_INITRD is not set\n")
    with pytest.raises(UnsupportedCompressionError, match="no initramfs support"):
        check_kernel_support(Compression.NONE, config)
    with pytest.raises(CpioError, match="cannot read kernel config"):
        check_kernel_support(Compression.GZIP, tmp_path / "absent")


def test_parents_are_added_and_checked() -> None:
    names = [m.name for m in parse_cpio(cpio_bytes([Entry.file("/a/b/c", b"")]))]
    assert names == ["a", "a/b", "a/b/c"]
    mixed = [Entry.file(n, b"") for n in ("a-b", "a.b/x", "a/b", "a.b/-")]
    names = [m.name for m in parse_cpio(cpio_bytes(mixed))]
    assert names == ["a", "a/b", "a-b", "a.b", "a.b/-", "a.b/x"]  # component-wise order
    with pytest.raises(CpioError, match="parent a is not a directory"):
        cpio_bytes([Entry.file("a", b""), Entry.file("a/b", b"")])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: cpio_bytes([Entry.file("a", b""), Entry.file("./a", b"")]), "twice"),
        (lambda: Entry.file("a/../b", b""), "contains '..'"),
        (lambda: Entry.file("/", b""), "empty"),
        (lambda: Entry("l", Kind.SYMLINK), "need one"),
        (lambda: Entry("d", Kind.DIR, data=b"x"), "only regular files carry data"),
        (lambda: Entry.file("f", b"", 0o100644), "beyond 07777"),
        (lambda: Entry.device("d", Kind.FIFO, 1, 1), "not a device kind"),
        (lambda: cpio_bytes([Entry.file("f", b"", mtime=2**32)]), "does not fit"),
        (
            lambda: cpio_bytes(
                [Entry.file("a", b"1", link_group="g"), Entry.file("b", b"2", link_group="g")]
            ),
            "hard links a and b",
        ),
    ],
)
def test_invalid_entries_raise(make: Callable[[], object], message: str) -> None:
    with pytest.raises(CpioError, match=message):
        make()


def test_reader_rejects_garbage(tmp_path: Path) -> None:
    good = cpio_bytes([Entry.file("file", b"0123456789")])
    for bad, message in (
        (b"not an archive at all", "unknown data"),
        (good[:120], "archive truncated"),
        (b"070701" + b"zz" * 60, "bad newc header"),
        (good[: good.index(b"0707", 100)], "no newc header"),
    ):
        path = tmp_path / "bad"
        path.write_bytes(bad)
        with pytest.raises(CpioError, match=message):
            read_cpio(path)


names = st.lists(
    st.text(alphabet="abcXYZ-_.é", min_size=1, max_size=8).filter(lambda s: s not in (".", "..")),
    min_size=1,
    max_size=3,
).map("/".join)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(names, st.tuples(st.binary(max_size=70), st.integers(0, 0o7777)), max_size=12)
)
def test_roundtrip_property(files: dict[str, tuple[bytes, int]]) -> None:
    entries = {}
    for name, (data, mode) in files.items():
        parents = {"/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1)}
        if parents & files.keys() or any(n.startswith(name + "/") for n in files):
            continue  # a file cannot also be a directory
        entries[name] = Entry.file(name, data, mode)
    raw = cpio_bytes(entries.values())
    assert len(raw) % 512 == 0
    members = by_name(parse_cpio(raw))
    for name, entry in entries.items():
        m = members[name]
        assert (m.kind, m.perms, m.data, m.nlink) == (Kind.FILE, entry.mode, entry.data, 1)
    assert all(m.kind is Kind.DIR for n, m in members.items() if n not in entries)
