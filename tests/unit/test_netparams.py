"""The network boot's parameters without a VM: overlayboot.lower=, ip=, the other tools'
forms, the shell export, and the lazy reader's chunk cache."""

from __future__ import annotations

import pytest

from overlayboot.cmdline import CmdlineError, parse_cmdline, to_shell
from overlayboot.errors import UsageError
from overlayboot.fs.inodes import REAL_MASK, TAG_OVERFLOW, TAG_SHIFT, make_ino
from overlayboot.net.chunkcache import MAX_RUN, ChunkCache
from overlayboot.net.ipconf import IpConfig, parse_ip
from overlayboot.net.lower import NetLower, parse_lower


def test_lower_urls() -> None:
    assert parse_lower("nfs://10.0.0.1/srv/live") == NetLower("nfs", "10.0.0.1", 2049, "/srv/live")
    low = parse_lower("http://boot.example:8080/img/root.squashfs")
    assert (low.host, low.port, low.is_image_file) == ("boot.example", 8080, True)
    assert low.url == "http://boot.example:8080/img/root.squashfs"
    assert parse_lower("nfs://s/export/ltsp.img").is_image_file


@pytest.mark.parametrize(
    "bad",
    ["ftp://s/x", "nfs://", "http://s", "http://s/dir/", "http://s:99999/x", "nfs://s/a/../b",
     "http://s/x?y=1", "http://bad_host/x", "nfs:/s/x"],
)  # fmt: skip
def test_bad_lower_urls_are_one_line_errors(bad: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_lower(bad)
    assert "overlayboot.lower=" in exc.value.line() and "\n" not in exc.value.line()


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("dhcp", IpConfig("dhcp")),
        ("off", IpConfig("off")),
        ("eth1:dhcp", IpConfig("dhcp", device="eth1")),
        (
            "10.0.0.5::10.0.0.1:255.255.255.0:c5:eth0:off:10.0.0.53",
            IpConfig("static", "eth0", "10.0.0.5", 24, "10.0.0.1", "c5", ("10.0.0.53",)),
        ),
        ("10.0.0.5:::255.255.0.0::::", IpConfig("static", "", "10.0.0.5", 16)),
        (":::::eth2:dhcp", IpConfig("dhcp", device="eth2")),
    ],
)
def test_ip_forms(value: str, want: IpConfig) -> None:
    assert parse_ip(value) == want


@pytest.mark.parametrize("bad", ["garbage", "10.0.0.300::::::off", "10.0.0.5:::255.0.255.0::::"])
def test_bad_ip(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_ip(bad)


@pytest.mark.parametrize(
    ("cmdline", "url", "lazy"),
    [
        ("root=live:http://s/LiveOS/squashfs.img", "http://s/LiveOS/squashfs.img", False),
        ("root=nfs:10.0.0.1:/srv/root:vers=3", "nfs://10.0.0.1/srv/root", False),
        ("netroot=nfs4:srv:/exports/live", "nfs://srv/exports/live", False),
        ("root=/dev/nfs nfsroot=10.0.0.1:/srv/tree,vers=3", "nfs://10.0.0.1/srv/tree", False),
        ("boot=live netboot=nfs nfsroot=10.0.0.1:/srv/live", "nfs://10.0.0.1/srv/live", False),
        ("fetch=http://s/live/filesystem.squashfs", "http://s/live/filesystem.squashfs", False),
        ("httpfs=http://s/live/filesystem.squashfs", "http://s/live/filesystem.squashfs", True),
        ("archisobasedir=f archiso_http_srv=http://s/", "http://s/f/x86_64/airootfs.sfs", False),
        ("archiso_nfs_srv=10.0.0.1:/a", "nfs://10.0.0.1/a/arch/x86_64/airootfs.sfs", False),
        ("root=nbd:10.0.0.1:10809/live:squashfs:ro", "nbd://10.0.0.1/live", False),
        ("netroot=nbd:srv:2000", "nbd://srv:2000/", False),
        ("overlayboot.lower=nbd://srv/", "nbd://srv/", False),
    ],
)  # fmt: skip
def test_other_tools_forms(cmdline: str, url: str, lazy: bool) -> None:
    cfg = parse_cmdline(cmdline)
    assert cfg.net.lower is not None and cfg.net.lower.url == url
    assert cfg.net.lazy == lazy and cfg.net.wants_network


def test_archiso_nbd_is_an_iso_holding_the_image() -> None:
    cfg = parse_cmdline("archiso_nbd_srv=10.0.0.1 archisobasedir=x")
    assert cfg.net.lower is not None and cfg.net.lower.url == "nbd://10.0.0.1/archiso"
    assert "OB_NET_IMAGE=/x/x86_64/airootfs.sfs" in to_shell(cfg).splitlines()


def test_local_forms_stay_local() -> None:
    cfg = parse_cmdline("root=live:CDLABEL=MYLIVE")
    assert cfg.net.lower is None and not cfg.net.wants_network
    assert cfg.medium is not None and cfg.medium.value == "MYLIVE"
    assert "OB_NET=''" in to_shell(cfg)


@pytest.mark.parametrize(
    ("cmdline", "words"),
    [
        ("root=nbd:10.0.0.1", "is not nbd:SERVER:PORT"),
        ("overlayboot.lower=nbd://s/x overlayboot.lower.lazy", "not nbd://"),
        ("nfsroot=/srv/tree", "is not SERVER:/path"),
        ("netboot=cifs", "netboot='cifs' is not supported"),
        ("overlayboot.lower=nfs://s/x.squashfs overlayboot.lower.lazy", "https:// only"),
        ("overlayboot.lower.ca=ca.pem", "is not a path"),
        ("overlayboot.lower=nfs://s/x ip=off", "ip=off"),
        ("overlayboot.lower.sha256=abc", "is not a sha256"),
        ("overlayboot.lower.cache=10", "not a size"),
    ],
)
def test_unusable_network_parameters(cmdline: str, words: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_cmdline(cmdline)
    assert words in exc.value.line()


def test_shell_export() -> None:
    text = to_shell(
        parse_cmdline(
            "overlayboot.lower=http://b.test/i.squashfs overlayboot.lower.lazy "
            "overlayboot.lower.cache=16M ip=10.1.1.9::10.1.1.1:24::eth0:off:10.1.1.1 "
            "overlayboot.break=network,fetch"
        )
    )
    for line in (
        "OB_NET=1", "OB_NET_MODE=static", "OB_NET_DEV=eth0", "OB_NET_ADDR=10.1.1.9",
        "OB_NET_PREFIX=24", "OB_NET_GW=10.1.1.1", "OB_NET_DNS=10.1.1.1",
        "OB_NET_LOWER=http://b.test/i.squashfs", "OB_NET_HOST=b.test", "OB_NET_PORT=80",
        "OB_NET_LAZY=1", f"OB_NET_CACHE={16 << 20}", "OB_BREAK='network fetch'",
        "OB_NET_CA=/etc/overlayboot/ca.pem",
    ):  # fmt: skip
        assert line in text.splitlines(), line


def test_break_numbers_keep_their_phases() -> None:
    assert parse_cmdline("overlayboot.break=2").breaks == {"medium"}
    with pytest.raises(CmdlineError):
        parse_cmdline("overlayboot.break=nowhere")


def test_inode_numbers_too_big_get_numbers_of_their_own() -> None:
    big = (1 << 60) + 5
    a, b, c = make_ino(2, big), make_ino(2, big + 1), make_ino(3, big)
    assert len({a, b, c}) == 3
    assert make_ino(2, big) == a  # stable
    assert {x >> TAG_SHIFT for x in (a, b, c)} == {TAG_OVERFLOW}
    assert make_ino(2, REAL_MASK) == (2 << TAG_SHIFT) | REAL_MASK  # the last that fits
    assert all(x < 1 << 64 for x in (a, b, c))


def test_chunk_cache_runs_and_slices() -> None:
    data = bytes(range(256)) * 4000 + b"tail" * 25  # 250 chunks and 100 bytes
    cache = ChunkCache(len(data), limit=1 << 20, chunk=4096)
    assert cache.slice(5000, 100) is None
    runs = cache.missing(5000, 10000)
    assert runs == [(1, 3)]
    start, length = cache.byte_range(1, 3)
    cache.put_run(1, data[start : start + length])
    assert cache.slice(5000, 10000) == data[5000:15000]
    assert cache.missing(0, 20000) == [(0, 1), (4, 1)]
    # the end of the image: a short last chunk, reads past it cut
    last = (len(data) - 1) // 4096
    start, length = cache.byte_range(last, 1)
    assert start + length == len(data)
    cache.put_run(last, data[start:])
    assert cache.slice(len(data) - 10, 100) == data[-10:]
    assert cache.covering(len(data), 10) == range(0)
    # long reads become runs of at most MAX_RUN chunks
    big = cache.missing(0, 4096 * (MAX_RUN * 2 + 3))
    assert all(count <= MAX_RUN for _, count in big)


def test_chunk_cache_evicts_least_recent() -> None:
    cache = ChunkCache(1 << 30, limit=0, chunk=1)  # capacity: 2 * MAX_RUN chunks
    for n in range(cache.capacity + 5):
        cache.put_run(n, b"x")
    assert cache.slice(0, 1) is None and cache.slice(cache.capacity + 4, 1) == b"x"
    assert cache.cached_bytes == cache.capacity


def test_persistence_on_the_server_is_an_nbd_export() -> None:
    cfg = parse_cmdline("overlayboot.upper=nbd://10.0.0.1/upper-{mac}")
    lines = to_shell(cfg).splitlines()
    assert "OB_UPPER_KIND=nbd" in lines and "OB_NET=1" in lines
    assert "OB_NET_UPPER='nbd://10.0.0.1/upper-{mac}'" in lines
    assert "OB_NET_UPPER_HOST=10.0.0.1" in lines and "OB_NET_UPPER_PORT=10809" in lines
    with pytest.raises(UsageError) as exc:
        parse_cmdline("overlayboot.upper=nbd://10.0.0.1/")
    assert "a persistence on the server is an NBD export" in exc.value.line()
