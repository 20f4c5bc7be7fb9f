"""Network boot end to end: QEMU clients on a tap of the test's own namespace get their
address from dnsmasq (DHCP, and DNS for the server's name) and their lower from nginx
(HTTP, lazily or whole) or nfs-ganesha (NFS: a tree, an image file), all started here.
Nothing leaves the namespace (tests/net/netns.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkimage.initramfs import BuiltInitramfs
from mkimage.kernel import Kernel
from overlayboot.net.serverconf import Tls
from tests.net.clients import (
    UNREAD,
    UNREAD_MIB,
    NetnsPxeConfig,
    Served,
    client,
    client_config,
    fleet,
    make_served,
    power_off,
    pxe_files,
)
from tests.net.netns import SERVER, SUBNET, Netns, netns
from tests.net.servers import Dnsmasq, Ganesha, Nginx, dnsmasq, ganesha, nginx, qemu_nbd
from tests.net.tls import Pki, make_pki
from tests.qemu.harness import Vm
from tests.qemu.live import BOOT_ERROR, BOOT_TIMEOUT, ROOT_UP, Guest
from tests.qemu.media import plain_iso
from tests.qemu.test_shutdown import debugfs, upper_of

pytestmark = [pytest.mark.qemu, pytest.mark.fleet]

SERVER_NAME = "bootserver.test"
NBD_PORT = 10810  # the image itself; 10809 (NBD's own port) serves an archiso-like ISO
UPPER_PORT = 10811  # a client's persistence (test_persistence_on_the_server_per_mac)
NBD_PIDS = "/run/overlayboot/run/overlayboot"  # the NBD clients' pid files (their chroot's)


def archiso_cd(image: Path, base: Path) -> Path:
    """An ISO holding the image where archiso's is (what archiso_nbd_srv= exports)."""
    (base / "tree/arch/x86_64").mkdir(parents=True)
    os.link(image, base / "tree/arch/x86_64/airootfs.sfs")
    return plain_iso(base / "tree", base / "archiso.iso", label="ARCH_TEST")


@dataclass
class Lab:
    """The namespace and its servers."""

    ns: Netns
    served: Served
    dhcp: Dnsmasq
    http: Nginx
    nfs: Ganesha
    base: Path
    pki: Pki  # nginx serves https too, its certificate for SERVER_NAME and SERVER


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("netboot")
    served = make_served(base)
    pki = make_pki(base / "pki", (SERVER_NAME,), (SERVER,))
    archiso = archiso_cd(served.image, base / "archiso")
    with (
        netns() as ns,
        dnsmasq(
            base / "dnsmasq", ns.name, SUBNET, SERVER, {SERVER_NAME: SERVER}, base / "tftp"
        ) as dhcp,
        nginx(served.docroot, SERVER, 80, base / "nginx", ns.name, Tls(pki.cert, pki.key)) as http,
        ganesha(base, "/srv", SERVER, base / "ganesha", ns.name) as nfs,
        qemu_nbd(served.image, "image", SERVER, NBD_PORT, ns.name),
        qemu_nbd(archiso, "archiso", SERVER, 10809, ns.name),
    ):
        yield Lab(ns, served, dhcp, http, nfs, base, pki)


def sent(lab: Lab, uri: str) -> int:
    return sum(s.body_bytes for s in lab.http.log() if s.uri == uri)


def record(lab: Lab, what: str, guests: list[Guest], taps: list[str]) -> None:
    """A figure for the README: boot time to the root and bytes the servers sent each client
    (appended to $OVERLAYBOOT_NET_FIGURES, when set)."""
    path = os.environ.get("OVERLAYBOOT_NET_FIGURES")
    if not path:
        return
    with open(path, "a") as f:
        for guest, tap in zip(guests, taps, strict=True):
            f.write(f"{what} clients={len(guests)} boot_s={guest.first.at:.1f} "
                    f"sent_bytes={lab.ns.sent_to(tap)}\n")  # fmt: skip


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
        record(lab, "http-lazy", [guest], [lab.ns.taps[-1]])
        check_root(guest)
        state = guest.sh("cat /run/overlayboot/state | tr '\\n' ' '")
        assert "net_if=eth0" in state and f"net_server={SERVER}" in state, state
        booted = sent(lab, "/image.squashfs") - before
        size = lab.served.image.stat().st_size
        assert booted < size // 4, (booted, size)
        # a file never read at boot comes over when read, and whole
        assert guest.sh(f"wc -c < /{UNREAD}") == str(UNREAD_MIB << 20)
        assert sent(lab, "/image.squashfs") - before > UNREAD_MIB << 19


def tree_digest(root: Path) -> str:
    """Every path, mode and content of a tree: what the server must still hold after."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        h.update(f"{path.relative_to(root)} {st.st_mode:o}\n".encode())
        if path.is_file() and not path.is_symlink():
            h.update(path.read_bytes())
    return h.hexdigest()


def test_nfs_tree_boot_with_a_static_address(
    kernel: Kernel, initramfs: BuiltInitramfs, lab: Lab
) -> None:
    before = tree_digest(lab.served.tree)
    static = f"ip={SUBNET}.50::{SERVER}:255.255.255.0:client50:eth0:off"
    with client(
        kernel, initramfs, lab.ns, 2, f"overlayboot.lower=nfs://{SERVER}/srv/tree", static
    ) as guest:
        record(lab, "nfs-tree", [guest], [lab.ns.taps[-1]])
        check_root(guest)
        state = guest.sh("cat /run/overlayboot/state | tr '\\n' ' '")
        assert f"net_ip={SUBNET}.50" in state and "lower_url=nfs://" in state, state
        assert "nfs4" in guest.sh("grep /run/overlayboot/nfs /proc/mounts")
        # the daemon over a lower without xattrs: a lower file changed, one removed
        guest.sh("echo changed >> /etc/release && rm /bin/md5sum")
        # Guest.sh's output is word-split by the guest's echo: no trailing blank
        assert guest.sh("cat /etc/release | tr '\\n' ' '") == "from the network lower changed"
        assert "No such file or directory" in guest.sh("ls /bin/md5sum 2>&1")
    assert tree_digest(lab.served.tree) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "params",
    [
        ("root=live:http://{server}/image.squashfs",),  # dracut: whole, .sha256 beside it
        ("netboot=nfs", "nfsroot={server}:/srv/docroot"),  # live-boot: a dir with live/
        ("overlayboot.lower=nfs://{name}/srv/docroot/image.squashfs",),  # LTSP's way
        (f"overlayboot.lower=nbd://{{name}}:{NBD_PORT}/image",),  # the image on /dev/nbd0
        ("archiso_nbd_srv={server}",),  # an ISO on /dev/nbd0, the image in it
    ],
    ids=["http-whole", "nfs-image-dir", "nfs-image-file", "nbd-image", "nbd-archiso"],
)
def test_other_lowers(
    kernel: Kernel, initramfs: BuiltInitramfs, lab: Lab, params: tuple[str, ...]
) -> None:
    args = [p.format(server=SERVER, name=SERVER_NAME) for p in params]
    with client(kernel, initramfs, lab.ns, 3, *args) as guest:
        record(lab, "+".join(args), [guest], [lab.ns.taps[-1]])
        check_root(guest)
        if "whole" in str(params):
            assert guest.sh("grep -c '^toram=yes' /run/overlayboot/state") == "1"
        if "nbd" in str(params):  # read-only, served by the client spared at switch_root
            assert guest.sh("cat /sys/block/nbd0/ro") == "1"
            assert guest.sh("cat /sys/block/nbd0/size") != "0"
            assert guest.sh("grep -l '^@overlayboot-nbd' /proc/[0-9]*/cmdline | wc -l") == "1"
            assert guest.sh(f"cat /proc/$(cat {NBD_PIDS}/nbd.pid)/oom_score_adj") == "-1000"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "error"),
    [
        (("overlayboot.lower=http://{server}/missing.squashfs",), "HTTP 404"),
        (
            (
                "overlayboot.lower=http://{server}/image.squashfs",
                "overlayboot.lower.sha256=" + "0" * 64,
            ),
            "has sha256 ",
        ),
        (("overlayboot.lower=nfs://{server}/srv/not-there",), "cannot mount the NFS export"),
        (
            ("overlayboot.lower=http://{server}:8080/image.squashfs", "overlayboot.timeout=5"),
            "port 8080",
        ),
        (
            ("overlayboot.lower=nfs://{server}/srv/tree", "ip=eth1:dhcp", "overlayboot.timeout=5"),
            "no network interface (eth1)",
        ),
    ],
    ids=["http-404", "bad-sha256", "nfs-wrong-export", "server-down", "no-such-nic"],
)
def test_network_boot_errors(
    kernel: Kernel, initramfs: BuiltInitramfs, lab: Lab, params: tuple[str, ...], error: str
) -> None:
    args = [p.format(server=SERVER) for p in params]
    with client(kernel, initramfs, lab.ns, 4, *args, until=BOOT_ERROR) as guest:
        line = guest.first.text
        assert error in line, line
        assert len(line) < 400


@pytest.mark.slow
def test_four_clients_at_once_keep_their_own_changes(
    kernel: Kernel, initramfs: BuiltInitramfs, lab: Lab
) -> None:
    """Two clients over NFS (the tree), two over lazy HTTP, booted at the same time from one
    server: each writes its own file, none sees another's, the server's copies are intact."""
    tree_before = tree_digest(lab.served.tree)
    image_before = lab.served.sha256
    lowers = [
        f"overlayboot.lower=nfs://{SERVER}/srv/tree",
        f"overlayboot.lower=http://{SERVER}/image.squashfs overlayboot.lower.lazy",
    ]
    configs = [
        client_config(kernel, initramfs, lab.ns, 10 + i, *lowers[i % 2].split()) for i in range(4)
    ]
    with fleet(configs) as guests:
        record(lab, "fleet nfs-tree/http-lazy", guests, lab.ns.taps[-4:])
        for i, guest in enumerate(guests):
            guest.sh(f"echo client-{i} > /etc/mine-{i}")
        for i, guest in enumerate(guests):
            assert guest.sh("ls /etc | grep mine- | tr '\\n' ' '") == f"mine-{i}"
            assert guest.sh(f"cat /etc/mine-{i}") == f"client-{i}"
            assert guest.sh("cat /etc/release") == "from the network lower"
        print("boot to root (s):", [round(g.first.at, 1) for g in guests])
    assert tree_digest(lab.served.tree) == tree_before
    assert lab.served.sha256 == image_before


@pytest.mark.slow
def test_pxe_boot_through_ipxe(kernel: Kernel, initramfs: BuiltInitramfs, lab: Lab) -> None:
    """No kernel given to QEMU: its NIC's iPXE ROM gets DHCP from dnsmasq, boot.ipxe, the
    kernel, the initramfs and the CA's initrd from nginx; the client (an e1000 NIC) boots
    the lazy lower over https by the server's name, its certificate checked by that CA."""
    params = f"overlayboot.lower=https://{SERVER_NAME}/image.squashfs overlayboot.lower.lazy"
    pxe_files(
        lab.served.docroot,
        lab.base / "tftp",
        kernel,
        initramfs,
        SERVER,
        f"overlayboot.timeout=15 overlayboot.onerror=poweroff {params}",
        ca=lab.pki.ca,
    )
    cfg = NetnsPxeConfig(memory_mib=512, extra=tuple(lab.ns.nic(20, "e1000")), netns=lab.ns.name)
    with Vm(cfg) as vm:
        guest = Guest(vm, vm.wait_for(ROOT_UP, timeout=BOOT_TIMEOUT))
        check_root(guest)
        assert guest.sh("basename $(readlink /sys/class/net/eth0/device/driver)") == "e1000"
        assert guest.sh("grep -c 'mounted /http: https://' /run/overlayboot/httpfs.log") == "1"
        power_off(guest)
    uris = {s.uri for s in lab.http.log()}
    assert {"/boot.ipxe", "/vmlinuz", "/initrd.img", "/ca.cpio"} <= uris


@pytest.mark.slow
def test_nfs_server_restart_while_a_client_runs(
    kernel: Kernel, initramfs: BuiltInitramfs, lab: Lab
) -> None:
    """The NFS server goes away under a running client: its reads wait (hard mount), resume
    when the server is back, and the client's own changes are still there."""
    want = hashlib.md5((lab.served.tree / UNREAD).read_bytes()).hexdigest()
    with client(
        kernel, initramfs, lab.ns, 5, f"overlayboot.lower=nfs://{SERVER}/srv/tree"
    ) as guest:
        guest.sh("echo kept > /etc/before-restart")
        lab.nfs.stop()
        try:
            # never read before, so not cached: it can only come from the server
            guest.vm.send(f"md5sum /{UNREAD} > /tmp/sum 2>&1 &\n")
        finally:
            lab.nfs.start()
        got = guest.sh("while [ ! -s /tmp/sum ]; do sleep 1; done; cut -c1-32 /tmp/sum", 180)
        assert got == want
        assert guest.sh("cat /etc/before-restart") == "kept"
        assert guest.sh("ls / | wc -l") != "0"


def mmp_ext4(path: Path) -> Path:
    """An empty persistence partition image with ext4's multiple-mount protection (checked
    every second): a second machine mounting it while one has it mounted is refused."""
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "overlayboot-rw", "-O", "mmp",
         "-E", "mmp_update_interval=1", str(path), "64M"],
        check=True,
    )  # fmt: skip
    return path


@pytest.mark.slow
def test_persistence_on_the_server_per_mac(
    kernel: Kernel, initramfs: BuiltInitramfs, lab: Lab, tmp_path: Path
) -> None:
    """overlayboot.upper=nbd://SERVER/upper-{mac}: a diskless client keeps its changes in
    an ext4 image of its own on the server (qemu-nbd, read-write), chosen by its MAC: written
    in one boot, there in the next; another machine given the same export while it runs is
    refused (ext4 MMP); the server's file holds the change."""
    mac = "52-54-00-21-30-1e"  # client 30's (tests/net/netns.py)
    img = mmp_ext4(tmp_path / f"upper-{mac}.img")
    lower = f"overlayboot.lower=nfs://{SERVER}/srv/docroot/image.squashfs"
    upper = f"nbd://{SERVER_NAME}:{UPPER_PORT}/upper-"  # by name: DNS from DHCP
    with qemu_nbd(img, f"upper-{mac}", SERVER, UPPER_PORT, lab.ns.name, writable=True):
        with client(kernel, initramfs, lab.ns, 30, lower, f"overlayboot.upper={upper}{{mac}}") as g:
            state = g.sh("cat /run/overlayboot/state | tr '\\n' ' '")
            assert "persistent=yes" in state and f"upper_url={upper}{mac}" in state, state
            assert g.sh(f"cat /proc/$(cat {NBD_PIDS}/nbd-upper.pid)/oom_score_adj") == "-1000"
            g.sh("echo kept > /etc/kept; sync")
        with client(kernel, initramfs, lab.ns, 30, lower, f"overlayboot.upper={upper}{{mac}}") as g:
            assert g.sh("cat /etc/kept") == "kept"
            twin = (lower, f"overlayboot.upper={upper}{mac}")  # machine 31, the same export
            with client(kernel, initramfs, lab.ns, 31, *twin, until=BOOT_ERROR) as other:
                assert "in use by another machine" in other.first.text, other.first.text
            assert g.sh("cat /etc/kept") == "kept"
    assert debugfs(img, f"cat {upper_of(img)}/etc/kept") == b"kept\n"
