"""The kernel's ``ip=`` parameter (and dracut's per-interface form) -> a frozen address plan.

Forms understood (Documentation/admin-guide/nfs/nfsroot.rst and dracut.cmdline(7))::

    ip=dhcp | on | any | bootp            DHCP on the first interface with a link
    ip=off | none                         no network configuration
    ip=IFACE:dhcp                         dracut: DHCP on IFACE
    ip=CLIENT:SERVER:GW:NETMASK:HOST:IFACE:AUTOCONF[:DNS0[:DNS1]]
                                          static when AUTOCONF is off/none (or empty and
                                          CLIENT is given), else DHCP on IFACE

Only IPv4 is configured.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from overlayboot.errors import UsageError

DHCP_WORDS = frozenset({"dhcp", "on", "any", "bootp", "both"})
OFF_WORDS = frozenset({"off", "none"})


class IpError(UsageError):
    """An ``ip=`` value that cannot be used."""


@dataclass(frozen=True)
class IpConfig:
    """How to bring the network up: DHCP (on one interface, or the first with a link),
    a static address, or not at all."""

    mode: str  # "dhcp", "static" or "off"
    device: str = ""  # "": the first interface with a link
    address: str = ""
    prefix: int = 0
    gateway: str = ""
    hostname: str = ""
    dns: tuple[str, ...] = ()


def _ipv4(text: str, what: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise IpError(
            f"ip={value!r}: {what} {text!r} is not an IPv4 address",
            "ip=CLIENT:SERVER:GATEWAY:NETMASK:HOSTNAME:DEVICE:off, or ip=dhcp",
        ) from None


def _prefix(mask: str, value: str) -> int:
    if mask.isdigit() and 0 < int(mask) <= 32:
        return int(mask)
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError:
        raise IpError(
            f"ip={value!r}: netmask {mask!r} is not a netmask", "e.g. 255.255.255.0 or 24"
        ) from None


def parse_ip(value: str) -> IpConfig:
    """One ``ip=`` value -> its plan; :class:`IpError` for anything that is not one."""
    word = value.strip().lower()
    if word in DHCP_WORDS:
        return IpConfig("dhcp")
    if word in OFF_WORDS:
        return IpConfig("off")
    fields = value.split(":")
    if len(fields) in (2, 3) and fields[1].lower() in DHCP_WORDS | OFF_WORDS:
        mode = "off" if fields[1].lower() in OFF_WORDS else "dhcp"
        return IpConfig(mode, device=fields[0])
    if len(fields) < 2:
        raise IpError(
            f"ip={value!r} is not an ip= value",
            "use ip=dhcp or ip=CLIENT::GATEWAY:NETMASK::DEVICE:off",
        )
    fields += [""] * (9 - len(fields))
    client, _server, gateway, mask, host, device, autoconf, dns0, dns1 = fields[:9]
    autoconf = autoconf.lower()
    if autoconf in DHCP_WORDS or (not client and autoconf in ("", *DHCP_WORDS)):
        return IpConfig("dhcp", device=device, hostname=host)
    if autoconf not in ("", *OFF_WORDS):
        raise IpError(f"ip={value!r}: unknown autoconf {autoconf!r}", "use off, none or dhcp")
    address = _ipv4(client, "client address", value)
    prefix = _prefix(mask, value) if mask else 24
    gw = _ipv4(gateway, "gateway", value) if gateway else ""
    dns = tuple(_ipv4(d, "DNS server", value) for d in (dns0, dns1) if d)
    return IpConfig("static", device, address, prefix, gw, host, dns)
