"""The network boot's own parameters, and their export to the shell hooks.

``overlayboot.lower=URL`` (see :mod:`overlayboot.net.lower`), ``overlayboot.lower.lazy``
(read an http image with range requests instead of fetching it whole),
``overlayboot.lower.sha256=HEX`` (the image's checksum; default: the first word of
``URL.sha256``; ``none``: not checked), ``overlayboot.lower.cache=SIZE`` (the lazy reader's
RAM cache, default 64M), ``overlayboot.lower.ca=PATH`` (https: the CA certificate, in the
initramfs, that the server's certificate must chain to; default /etc/overlayboot/ca.pem,
used when it is there, e.g. from a second initrd), and the kernel's ``ip=``. The other
tools' forms are mapped in :mod:`overlayboot.net.compat`. ``overlayboot.upper=nbd://...``
(a persistence on the server, :func:`parse_upper`) is read by overlayboot.cmdline.
"""

from __future__ import annotations

import re
from dataclasses import replace

from overlayboot.errors import UsageError
from overlayboot.net.compat import foreign_param, resolve_archiso
from overlayboot.net.config import DEFAULT_CA, NetConfig
from overlayboot.net.ipconf import IpConfig, parse_ip
from overlayboot.net.lower import parse_lower

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_CACHE = re.compile(r"^(\d+)([kKmMgG]?)$")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


class NetParamError(UsageError):
    """A network boot parameter that cannot be used."""


def _flag(value: str | None, key: str) -> bool:
    if value is None or value.lower() in ("1", "y", "yes", "on", "true"):
        return True
    if value.lower() in ("0", "n", "no", "off", "false"):
        return False
    raise NetParamError(f"{key}={value!r} is not a yes/no value")


def _cache(value: str) -> int:
    m = _CACHE.match(value)
    size = int(m.group(1)) * _UNITS[m.group(2).lower()] if m else 0
    if not 1 << 20 <= size <= 16 << 30:
        raise NetParamError(
            f"overlayboot.lower.cache={value!r} is not a size from 1M to 16G", "e.g. 64M"
        )
    return size


def _own_param(net: NetConfig, key: str, value: str | None) -> NetConfig | None:
    if key == "overlayboot.lower":
        if not value:
            raise NetParamError("overlayboot.lower needs a URL: overlayboot.lower=nfs://...")
        return replace(net, lower=parse_lower(value))
    if key == "overlayboot.lower.lazy":
        return replace(net, lazy=_flag(value, key))
    if key == "overlayboot.lower.sha256":
        v = (value or "").strip()
        if v.lower() != "none" and not _SHA256.match(v):
            raise NetParamError(
                f"overlayboot.lower.sha256={v!r} is not a sha256", "64 hex digits, or none"
            )
        return replace(net, sha256=v.lower())
    if key == "overlayboot.lower.cache":
        return replace(net, cache_bytes=_cache(value or ""))
    if key == "overlayboot.lower.ca":
        if not value or not value.startswith("/"):
            raise NetParamError(
                f"overlayboot.lower.ca={value!r} is not a path",
                "the CA certificate's absolute path in the initramfs, e.g. " + DEFAULT_CA,
            )
        return replace(net, ca=value)
    if key == "ip":
        return replace(net, ip=parse_ip(value or ""))
    return None


MAC = "{mac}"  # in overlayboot.upper=nbd://...: the boot interface's MAC, as 52-54-00-12-34-56


def parse_upper(value: str) -> str:
    """``overlayboot.upper=nbd://SERVER[:PORT]/EXPORT`` (``{mac}`` anywhere in EXPORT): the
    persistence partition is that export of the server, attached read-write."""
    low = parse_lower(value.replace(MAC, "52-54-00-12-34-56"))
    if low.scheme != "nbd" or low.path == "/":
        raise NetParamError(
            f"overlayboot.upper={value!r}: a persistence on the server is an NBD export",
            "overlayboot.upper=nbd://SERVER/EXPORT, e.g. nbd://10.0.0.1/upper-{mac}",
        )
    return value


def apply_param(net: NetConfig, key: str, value: str | None) -> NetConfig | None:
    """``net`` with one command-line parameter applied; None if it is not a network one."""
    own = _own_param(net, key, value)
    if own is not None:
        return own
    return foreign_param(net, key, value)


def check(net: NetConfig) -> NetConfig:
    """The whole network configuration is usable (after every parameter is read)."""
    net = resolve_archiso(net)
    if net.lazy and net.lower is not None and net.lower.scheme not in ("http", "https"):
        raise NetParamError(
            f"overlayboot.lower.lazy works with http:// and https:// only, not "
            f"{net.lower.scheme}://",
            "drop overlayboot.lower.lazy (NFS and NBD read only what is read anyway)",
        )
    if net.lower is not None and net.ip is not None and net.ip.mode == "off":
        raise NetParamError(
            f"ip=off, but the lower {net.lower.url} is on the network", "drop ip=off"
        )
    return net


def shell_values(net: NetConfig) -> dict[str, str]:
    """``OB_NET_*``/``OB_LOWER_*`` values for the hooks (phases network and fetch)."""
    ip = net.ip if net.ip is not None else IpConfig("dhcp")
    low = net.lower
    up = parse_lower(net.upper.replace(MAC, "0")) if net.upper else None
    return {
        "OB_NET": "1" if net.wants_network else "",
        "OB_NET_MODE": ip.mode,
        "OB_NET_DEV": ip.device,
        "OB_NET_ADDR": ip.address,
        "OB_NET_PREFIX": str(ip.prefix) if ip.prefix else "",
        "OB_NET_GW": ip.gateway,
        "OB_NET_HOSTNAME": ip.hostname,
        "OB_NET_DNS": " ".join(ip.dns),
        "OB_NET_LOWER": low.url if low else "",
        "OB_NET_SCHEME": low.scheme if low else "",
        "OB_NET_HOST": low.host if low else "",
        "OB_NET_PORT": str(low.port) if low else "",
        "OB_NET_PATH": low.path if low else "",
        "OB_NET_IMAGE_FILE": "1" if low and low.is_image_file else "",
        "OB_NET_LAZY": "1" if net.lazy else "",
        "OB_NET_SHA256": net.sha256,
        "OB_NET_CACHE": str(net.cache_bytes),
        "OB_NET_CA": net.ca,
        "OB_NET_IMAGE": net.image,
        "OB_NET_UPPER": net.upper,
        "OB_NET_UPPER_HOST": up.host if up else "",
        "OB_NET_UPPER_PORT": str(up.port) if up else "",
    }
