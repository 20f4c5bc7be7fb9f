"""``overlayboot serve``: one built image served to a room of diskless machines.

It lays out DIR (default ``IMAGE/serve``)::

    DIR/www/      vmlinuz, initrd.img, image.squashfs (+ .sha256), boot.ipxe   (nginx, NFS)
    DIR/tftp/     undionly.kpxe (iPXE for NIC ROMs that are not iPXE)          (dnsmasq)
    DIR/nginx.conf  DIR/ganesha.conf  DIR/dnsmasq.conf                         (the servers)

and, with ``--run``, runs nginx, nfs-ganesha and dnsmasq (and qemu-nbd) in the foreground on
ADDRESS until interrupted. The clients PXE-boot (their iPXE ROM, or undionly.kpxe
chainloaded) into boot.ipxe, which boots the kernel with ``overlayboot.lower=`` for
``--lower`` (lazy: http with range requests; http: fetched whole, its sha256 on the command
line; nfs: the image on the NFS export; nbd: the image exported by qemu-nbd). With
``--proxy-dhcp`` dnsmasq leaves the addresses to the existing DHCP server and only answers
PXE. With ``--tls-cert``, ``--tls-key`` and ``--ca`` nginx serves https too, the image's URL
is https, and boot.ipxe loads DIR/www/ca.cpio (the CA at /etc/overlayboot/ca.pem,
``overlayboot.lower.ca``'s default) after the initramfs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import click

from overlayboot.clierrors import domain_errors
from overlayboot.errors import UsageError
from overlayboot.net.config import DEFAULT_CA
from overlayboot.net.serverconf import (
    UNDIONLY,
    DhcpPlan,
    Tls,
    dnsmasq_options,
    ganesha_conf,
    ipxe_script,
    nginx_conf,
)
from overlayboot.run import spawn

LOWERS = ("lazy", "http", "nfs", "nbd")


@dataclass(frozen=True)
class ServePlan:
    image: Path  # a build output: filesystem.squashfs, initramfs.img
    kernel: Path
    address: str
    interface: str
    lower: str
    proxy: bool
    out: Path
    params: str  # more kernel parameters
    tls: Tls | None = None  # https beside http (the image's URL is then https)
    ca: Path | None = None  # the CA the clients trust, sent as a second initrd (ca.cpio)


def _place(src: Path, dest: Path) -> None:
    """``src`` at ``dest``: a hard link where it can be, else a copy."""
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def ca_initrd(ca: Path, dest: Path) -> Path:
    """A second initrd (newc cpio) putting ``ca`` at overlayboot.lower.ca's default path."""
    from mkimage.cpio import Entry, cpio_bytes

    parts = DEFAULT_CA.strip("/").split("/")
    dirs = [Entry.directory("/".join(parts[: i + 1])) for i in range(len(parts) - 1)]
    dest.write_bytes(cpio_bytes([*dirs, Entry.file("/".join(parts), ca.read_bytes())]))
    return dest


def lower_param(plan: ServePlan, sha256: str) -> str:
    base = f"https://{plan.address}" if plan.tls else f"http://{plan.address}"
    if plan.lower == "lazy":
        return f"overlayboot.lower={base}/image.squashfs overlayboot.lower.lazy"
    if plan.lower == "http":
        return f"overlayboot.lower={base}/image.squashfs overlayboot.lower.sha256={sha256}"
    if plan.lower == "nbd":
        return f"overlayboot.lower=nbd://{plan.address}/image"
    return f"overlayboot.lower=nfs://{plan.address}/srv/image.squashfs"


def lay_out(plan: ServePlan) -> None:
    """DIR/www, DIR/tftp and the three configurations (see the module doc)."""
    squashfs, initramfs = plan.image / "filesystem.squashfs", plan.image / "initramfs.img"
    for need in (squashfs, initramfs, plan.kernel):
        if not need.is_file():
            raise UsageError(f"{need} not found", "give a build output (overlayboot build all)")
    www, tftp = plan.out / "www", plan.out / "tftp"
    for d in (
        www,
        tftp,
        plan.out / "nginx",
        plan.out / "ganesha" / "recovery",
        plan.out / "dnsmasq",
    ):
        d.mkdir(parents=True, exist_ok=True)
    _place(squashfs, www / "image.squashfs")
    _place(initramfs, www / "initrd.img")
    _place(plan.kernel, www / "vmlinuz")
    if UNDIONLY.is_file():
        shutil.copyfile(UNDIONLY, tftp / "undionly.kpxe")
    digest = hashlib.sha256(squashfs.read_bytes()).hexdigest()
    (www / "image.squashfs.sha256").write_text(f"{digest}  image.squashfs\n")
    params = f"{lower_param(plan, digest)} {plan.params}".strip()
    initrds: tuple[str, ...] = ("initrd.img",)
    if plan.ca is not None:
        initrds += (ca_initrd(plan.ca, www / "ca.cpio").name,)
    (www / "boot.ipxe").write_text(ipxe_script(f"http://{plan.address}", params, initrds))
    (plan.out / "nginx.conf").write_text(
        nginx_conf(www, plan.address, 80, plan.out / "nginx", tls=plan.tls)
    )
    (plan.out / "ganesha.conf").write_text(
        ganesha_conf(www, "/srv", plan.address, plan.out / "ganesha")
    )
    subnet = plan.address.rsplit(".", 1)[0]
    dhcp = DhcpPlan(plan.interface, plan.address, subnet, proxy=plan.proxy)
    lines = dnsmasq_options(dhcp, plan.out / "dnsmasq", tftp)
    (plan.out / "dnsmasq.conf").write_text(
        "".join(f"{o}\n" for o in lines if o != "conf-file=/dev/null")
    )


def commands(plan: ServePlan) -> list[list[str]]:
    """The servers' command lines, each in the foreground (and qemu-nbd for ``--lower nbd``:
    the image read-only to any number of clients, as export ``image`` on port 10809)."""
    o = plan.out
    nbd = [["qemu-nbd", "--read-only", "--persistent", "--shared=0", "--format=raw",
            "--export-name=image", f"--bind={plan.address}",
            str(o / "www/image.squashfs")]]  # fmt: skip
    return [*(nbd if plan.lower == "nbd" else []),
        ["nginx", "-p", str(o / "nginx"), "-c", str(o / "nginx.conf"),
         "-e", str(o / "nginx/error.log")],
        ["ganesha.nfsd", "-F", "-f", str(o / "ganesha.conf"), "-L", str(o / "ganesha/ganesha.log"),
         "-p", str(o / "ganesha/ganesha.pid")],
        ["dnsmasq", f"--conf-file={o / 'dnsmasq.conf'}"],
    ]  # fmt: skip


def run_all(plan: ServePlan) -> None:
    """Run the servers until one ends or the user interrupts; then stop the others."""
    procs = [spawn(argv) for argv in commands(plan)]
    try:
        os.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


_FILE = click.Path(path_type=Path, dir_okay=False, exists=True)


def _tls(cert: Path | None, key: Path | None, ca: Path | None, lower: str) -> Tls | None:
    if cert is None and key is None and ca is None:
        return None
    if cert is None or key is None or ca is None:
        raise UsageError(
            "https needs all three of --tls-cert, --tls-key and --ca",
            "the CA must have signed the certificate, which must name --address",
        )
    if lower == "nfs":
        raise UsageError("--lower nfs does not use https", "drop --tls-cert/--tls-key/--ca")
    return Tls(cert.absolute(), key.absolute())


@click.command("serve")
@click.argument("image", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--kernel",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The kernel image the clients boot.",
)
@click.option(
    "--address", required=True, help="This server's IPv4 address on the clients' network."
)
@click.option("--interface", required=True, help="The interface on the clients' network.")
@click.option(
    "--lower",
    type=click.Choice(LOWERS),
    default="lazy",
    show_default=True,
    help="How clients read the image: lazy HTTP, whole HTTP, NFS, or NBD (qemu-nbd).",
)
@click.option("--proxy-dhcp", is_flag=True, help="Leave addresses to an existing DHCP server.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to lay out the files and configurations [IMAGE/serve].",
)
@click.option("--params", default="", help="More kernel parameters for the clients.")
@click.option("--tls-cert", type=_FILE, help="https: the server's certificate (PEM, for ADDRESS).")
@click.option("--tls-key", type=_FILE, help="https: its key.")
@click.option("--ca", type=_FILE, help="https: the CA the clients check it by (sent as ca.cpio).")
@click.option("--run", "run_", is_flag=True, help="Run the servers (as root) until Ctrl-C.")
@domain_errors
def serve(image: Path, kernel: Path, address: str, interface: str, lower: str,
          proxy_dhcp: bool, out: Path | None, params: str, tls_cert: Path | None,
          tls_key: Path | None, ca: Path | None, run_: bool) -> None:  # fmt: skip
    """Serve a built image to diskless clients: PXE (dnsmasq, iPXE), HTTP (nginx), NFS."""
    if address.count(".") != 3:
        raise UsageError(f"--address {address!r} is not an IPv4 address")
    plan = ServePlan(image, kernel, address, interface, lower, proxy_dhcp,
                     (out or image / "serve").absolute(), params,
                     _tls(tls_cert, tls_key, ca, lower), ca)  # fmt: skip
    lay_out(plan)
    click.echo(f"serve: {plan.out} laid out; the servers:")
    for argv in commands(plan):
        click.echo("  " + " ".join(argv))
    if run_:
        run_all(plan)
