"""The network part of the boot configuration (frozen): what ``overlayboot.net.params``
and ``overlayboot.net.compat`` build from the kernel command line."""

from __future__ import annotations

from dataclasses import dataclass

from overlayboot.net.ipconf import IpConfig
from overlayboot.net.lower import NetLower

DEFAULT_CA = "/etc/overlayboot/ca.pem"  # https: used when there (a second initrd adds it)


@dataclass(frozen=True)
class NetConfig:
    """The network part of the boot configuration."""

    lower: NetLower | None = None
    lazy: bool = False
    sha256: str = ""  # "": from URL.sha256; "none": not checked
    cache_bytes: int = 64 << 20
    ca: str = DEFAULT_CA  # https: the CA certificate the server's must chain to, if present
    ip: IpConfig | None = None  # None: DHCP if a network lower needs the network
    archiso_srv: str = ""  # archiso_http_srv= / archiso_nfs_srv=, resolved by params.check
    archiso_base: str = "arch"  # archisobasedir=
    image: str = ""  # the image's path in an NBD export's filesystem (archiso's), if set
    upper: str = ""  # overlayboot.upper=nbd://...: the persistence on the server ({mac} in it)

    @property
    def wants_network(self) -> bool:
        if self.lower is not None or self.upper:
            return True
        return self.ip is not None and self.ip.mode != "off"
