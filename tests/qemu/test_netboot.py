"""Network boot end to end: QEMU clients on a tap of the test's own namespace get their
address from dnsmasq (DHCP, and DNS for the server's name) and their lower from nginx
(HTTP, lazily or whole) or nfs-ganesha (NFS: a tree, an image file), all started here.
Nothing leaves the namespace (tests/net/netns.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from tests.net.clients import UNREAD, UNREAD_MIB, Served, client, make_served
from tests.net.netns import SERVER, SUBNET, Netns, netns
from tests.net.servers import Dnsmasq, Ganesha, Nginx, dnsmasq, ganesha, nginx
from tests.qemu.live import Guest

pytestmark = [pytest.mark.qemu, pytest.mark.fleet]

SERVER_NAME = "bootserver.test"


@dataclass
class Lab:
    """The namespace and its servers."""

    ns: Netns
    served: Served
    dhcp: Dnsmasq
    http: Nginx
    nfs: Ganesha


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("netboot")
    served = make_served(base)
    with (
        netns() as ns,
        dnsmasq(base / "dnsmasq", ns.name, SUBNET, SERVER, {SERVER_NAME: SERVER}) as dhcp,
        nginx(served.docroot, SERVER, 80, base / "nginx", ns.name) as http,
        ganesha(base, "/srv", SERVER, base / "ganesha", ns.name) as nfs,
    ):
        yield Lab(ns, served, dhcp, http, nfs)


def sent(lab: Lab, uri: str) -> int:
    return sum(s.body_bytes for s in lab.http.log() if s.uri == uri)


def check_root(guest: Guest) -> None:
    """The root is the network image's, writable, on the FUSE overlay."""
    assert guest.sh("cat /etc/release") == "from the network lower"
    guest.sh("echo mine > /etc/written")
    assert guest.sh("cat /etc/written") == "mine"
    assert "fuse" in guest.sh("grep ' / ' /proc/mounts")


def test_lazy_http_boot_by_name_reads_a_fraction(
    kernel: Kernel, initramfs: BuiltInitramfs, lab: Lab
) -> None:
    before = sent(lab, "/image.squashfs")
    url = f"http://{SERVER_NAME}/image.squashfs"
    with client(
        kernel, initramfs, lab.ns, 1, f"overlayboot.lower={url}", "overlayboot.lower.lazy"
    ) as guest:
        check_root(guest)
        state = guest.sh("cat /run/overlayboot/state | tr '\\n' ' '")
        assert "net_if=eth0" in state and f"net_server={SERVER}" in state, state
        booted = sent(lab, "/image.squashfs") - before
        size = lab.served.image.stat().st_size
        assert booted < size // 4, (booted, size)
        # a file never read at boot comes over when read, and whole
        assert guest.sh(f"wc -c < /{UNREAD}") == str(UNREAD_MIB << 20)
        assert sent(lab, "/image.squashfs") - before > UNREAD_MIB << 19
