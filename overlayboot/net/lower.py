"""A network lower's URL -> a frozen description (``overlayboot.lower=URL``).

* ``nfs://SERVER[:PORT]/export/path``: an NFS export (NFSv4, read-only, hard). The path may
  name a directory holding the image (``overlayboot.image=``, default
  /live/filesystem.squashfs), an unpacked root tree, or an image file itself
  (``.squashfs``, ``.sfs``, ``.img``: loop-mounted).
* ``http://SERVER[:PORT]/path/image.squashfs`` (or ``https``): the image, fetched whole into
  RAM and its sha256 checked; with ``overlayboot.lower.lazy`` read with range requests as
  the kernel needs its blocks (https: the server's certificate checked against a CA).
* ``nbd://SERVER[:PORT]/EXPORT``: an NBD export (``/``: the default one) on the kernel's
  nbd device, read-only: the image itself, or a filesystem holding it (an ISO, say).

SERVER is an IPv4 address or a name (resolved with the DNS servers DHCP or ``ip=`` gave).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from overlayboot.errors import UsageError

SCHEMES = ("nfs", "http", "https", "nbd")
IMAGE_SUFFIXES = (".squashfs", ".sfs", ".img")
DEFAULT_PORTS = {"nfs": 2049, "http": 80, "https": 443, "nbd": 10809}
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")


class LowerUrlError(UsageError):
    """An ``overlayboot.lower=`` value that is not a usable URL."""


@dataclass(frozen=True)
class NetLower:
    """Where the lower comes from over the network."""

    scheme: str  # nfs, http, https, nbd
    host: str
    port: int
    path: str  # absolute, as in the URL

    @property
    def url(self) -> str:
        port = "" if self.port == DEFAULT_PORTS[self.scheme] else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}{self.path}"

    @property
    def is_image_file(self) -> bool:
        """An NFS path naming an image file (loop-mounted), not a directory."""
        return self.path.lower().endswith(IMAGE_SUFFIXES)


def _bad(value: str, why: str) -> LowerUrlError:
    return LowerUrlError(
        f"overlayboot.lower={value!r}: {why}",
        "use nfs://SERVER/export/path or http://SERVER/path/image.squashfs",
    )


def parse_lower(value: str) -> NetLower:
    """``overlayboot.lower=`` -> :class:`NetLower`; :class:`LowerUrlError` if unusable."""
    scheme, sep, rest = value.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise _bad(value, "not an nfs://, http://, https:// or nbd:// URL")
    hostport, slash, path = rest.partition("/")
    path = slash + path
    host, colon, port_text = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    if not _HOST.match(host):
        raise _bad(value, f"bad server {host!r}")
    port = DEFAULT_PORTS[scheme]
    if colon:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _bad(value, f"bad port {port_text!r}")
        port = int(port_text)
    if (len(path) < 2 and scheme != "nbd") or not _SAFE_PATH.match(path) or "/../" in path + "/":
        raise _bad(value, f"bad path {path!r}")
    if scheme in ("http", "https") and path.endswith("/"):
        raise _bad(value, "an http(s) lower is an image file, not a directory")
    return NetLower(scheme, host, port, path)
