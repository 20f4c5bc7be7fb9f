"""Configuration of the standard servers of a network boot: nginx (HTTP with ranges),
nfs-ganesha (NFSv4 read-only export), dnsmasq (DHCP or proxy-DHCP, TFTP, iPXE), and the iPXE
script. ``overlayboot serve`` writes them; the network boot tests run them as written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LOG_FORMAT = "$remote_addr $status $request_method $uri $body_bytes_sent"
UNDIONLY = Path("/usr/lib/ipxe/undionly.kpxe")  # Debian package ipxe

IPXE_SCRIPT = """#!ipxe
kernel {base}/vmlinuz {names} {params}
{initrds}boot
"""


@dataclass(frozen=True)
class Tls:
    """https beside http: the server's certificate (PEM, the chain) and key, and its port."""

    cert: Path
    key: Path
    port: int = 443


def nginx_conf(
    root: Path, address: str, port: int, prefix: Path, user: str = "root", tls: Tls | None = None
) -> str:
    """nginx in the foreground serving ``root`` (ranges, keep-alive, ETag: its defaults),
    its pid, logs and temp dirs under ``prefix``; the access log says what each client got.
    With ``tls`` also over https on its port."""
    temps = "".join(
        f"    {kind}_temp_path {prefix}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    https = (
        f"""        listen {address}:{tls.port} ssl;
        ssl_certificate {tls.cert};
        ssl_certificate_key {tls.key};
"""
        if tls
        else ""
    )
    return f"""daemon off;
user {user};
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 1024; }}
http {{
    log_format sent '{LOG_FORMAT}';
    access_log {prefix}/access.log sent;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
{temps}    server {{
        listen {address}:{port};
{https}        root {root};
    }}
}}
"""


def ganesha_conf(export: Path, pseudo: str, address: str, prefix: Path) -> str:
    """nfs-ganesha exporting ``export`` read-only as ``pseudo`` (NFSv4.1/4.2 over TCP, no
    rpcbind needed), without a grace period: a restarted server serves at once."""
    return f"""NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = 2049;
    Bind_addr = {address};
    Enable_NLM = false;
    Enable_RQUOTA = false;
}}
NFSV4 {{
    Graceless = true;
    Lease_Lifetime = 15;
    Minor_Versions = 1, 2;
    RecoveryBackend = fs;
    RecoveryRoot = {prefix}/recovery;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
EXPORT {{
    Export_Id = 1;
    Path = {export};
    Pseudo = {pseudo};
    Access_Type = RO;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 4;
    Transports = TCP;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = EVENT; }}
"""


@dataclass(frozen=True)
class DhcpPlan:
    """What dnsmasq answers: a range to lease, or proxy-DHCP beside another DHCP server."""

    interface: str
    server: str  # this server's address on that network
    subnet: str  # the first three octets
    proxy: bool = False
    names: tuple[tuple[str, str], ...] = ()  # DNS: name -> address


def dnsmasq_options(plan: DhcpPlan, prefix: Path, tftp: Path | None) -> list[str]:
    """dnsmasq's options (``--name=value``, also the lines of a conf file without ``--``)."""
    if plan.proxy:
        lease = [f"dhcp-range={plan.subnet}.0,proxy"]
    else:
        lease = [
            f"dhcp-range={plan.subnet}.100,{plan.subnet}.199,255.255.255.0,1h",
            "dhcp-authoritative",
            f"dhcp-option=option:dns-server,{plan.server}",
        ]
    opts = [
        "keep-in-foreground", "conf-file=/dev/null", "user=root",
        f"interface={plan.interface}", "bind-interfaces", "no-resolv", "no-hosts",
        f"listen-address={plan.server}", *lease,
        f"dhcp-leasefile={prefix}/leases", f"pid-file={prefix}/dnsmasq.pid",
        f"log-facility={prefix}/dnsmasq.log", "log-dhcp",
    ]  # fmt: skip
    opts += [f"address=/{name}/{addr}" for name, addr in plan.names]
    if tftp is not None:
        # PXE: a NIC ROM that is iPXE gets the iPXE script over HTTP; any other gets iPXE
        # itself over TFTP first, which then asks again
        opts += [
            "enable-tftp", f"tftp-root={tftp}", "dhcp-match=set:ipxe,175",
            f"dhcp-boot=tag:ipxe,http://{plan.server}/boot.ipxe",
            "dhcp-boot=tag:!ipxe,undionly.kpxe",
        ]  # fmt: skip
        if plan.proxy:
            opts += ["pxe-service=tag:!ipxe,x86PC,overlayboot,undionly"]
    return opts


def ipxe_script(base: str, params: str, initrds: tuple[str, ...] = ("initrd.img",)) -> str:
    """The iPXE script: the kernel (with ``params``) and the initrds from ``base``, in order
    (a second one, e.g. ca.cpio, is unpacked over the initramfs)."""
    names = " ".join(f"initrd={name}" for name in initrds)
    loads = "".join(f"initrd {base}/{name}\n" for name in initrds)
    return IPXE_SCRIPT.format(base=base, names=names, initrds=loads, params=params)
