"""The other tools' network boot parameters, mapped onto ``overlayboot.lower=`` and friends.

=================================  ==========================================================
dracut ``root=live:URL``           ``overlayboot.lower=URL`` (http(s): fetched whole; nfs)
dracut ``root=nfs:S:/P[:OPTS]``,   ``overlayboot.lower=nfs://S/P`` (also ``nfs4:``, and
``netroot=nfs:S:/P``               ``netroot=``)
kernel ``root=/dev/nfs``           with ``nfsroot=S:/P[,OPTS]``: ``overlayboot.lower=nfs://S/P``
live-boot ``netboot=nfs``          with ``nfsroot=S:/P``: the same (P holds live/, found as
                                   an image directory)
live-boot ``fetch=URL``            ``overlayboot.lower=URL`` (fetched whole)
live-boot ``httpfs=URL``           ``overlayboot.lower=URL overlayboot.lower.lazy``
archiso ``archiso_http_srv=URL``   ``overlayboot.lower=URL/BASE/x86_64/airootfs.sfs`` (BASE:
                                   ``archisobasedir=``, default arch)
archiso ``archiso_nfs_srv=S:/P``   ``overlayboot.lower=nfs://S/P/BASE/x86_64/airootfs.sfs``
dracut ``root=nbd:S:P[/E][:...]``  ``overlayboot.lower=nbd://S:P/E`` (also ``netroot=``; no
                                   E: the server's default export)
archiso ``archiso_nbd_srv=S``      ``overlayboot.lower=nbd://S/archiso``, a filesystem (the
                                   ISO) holding ``/BASE/x86_64/airootfs.sfs``
=================================  ==========================================================

NFS options given in these forms are not used: the mount is always read-only, NFSv4, hard;
nor are dracut's NBD fstype, mount and nbd options.
The local-media parameters of these tools are mapped elsewhere (overlayboot.cmdline).
"""

from __future__ import annotations

from dataclasses import replace

from overlayboot.errors import UsageError
from overlayboot.net.config import NetConfig
from overlayboot.net.lower import parse_lower

ARCHISO_IMAGE = "x86_64/airootfs.sfs"


class ForeignParamError(UsageError):
    """Another tool's network parameter that overlayboot cannot honour."""


def _nfs_url(spec: str, key: str) -> str:
    """``SERVER:/path[:opts]`` or ``SERVER:/path[,opts]`` -> ``nfs://SERVER/path``."""
    server, sep, rest = spec.partition(":")
    path = rest.split(",", 1)[0].split(":", 1)[0]
    if not sep or not server or not path.startswith("/"):
        raise ForeignParamError(
            f"{key}={spec!r} is not SERVER:/path",
            "give the server: e.g. nfsroot=10.0.0.1:/srv/live (or overlayboot.lower=nfs://...)",
        )
    return f"nfs://{server}{path}"


def _nbd_url(spec: str, key: str) -> str:
    """dracut's ``SERVER:PORT[/EXPORT][:fstype[:opts[:nbdopts]]]`` -> ``nbd://SERVER:PORT/E``."""
    server, _, rest = spec.partition(":")
    where = rest.split(":", 1)[0]
    port, _, export = where.partition("/")
    if not server or not port.isdigit():
        raise ForeignParamError(
            f"{key}=nbd:{spec!r} is not nbd:SERVER:PORT[/EXPORT]",
            "e.g. root=nbd:10.0.0.1:10809/live (or overlayboot.lower=nbd://SERVER/EXPORT)",
        )
    return f"nbd://{server}:{port}/{export}"


def _root(net: NetConfig, key: str, value: str) -> NetConfig | None:
    """dracut's and the kernel's ``root=`` / ``netroot=`` network forms."""
    if value.startswith("live:") and "://" in value:
        return replace(net, lower=parse_lower(value[5:]))
    for prefix in ("nfs:", "nfs4:"):
        if value.startswith(prefix):
            return replace(net, lower=parse_lower(_nfs_url(value[len(prefix) :], key)))
    if value.startswith("nbd:"):
        return replace(net, lower=parse_lower(_nbd_url(value[4:], key)))
    return None


def foreign_param(net: NetConfig, key: str, value: str | None) -> NetConfig | None:
    """``net`` with one foreign parameter applied; None if ``key=value`` is not one."""
    v = value or ""
    if key in ("root", "netroot") and v:
        return _root(net, key, v)
    if key == "nfsroot" and v:
        return replace(net, lower=parse_lower(_nfs_url(v, key)))
    if key == "netboot":
        if v.lower() != "nfs":
            raise ForeignParamError(f"netboot={v!r} is not supported", "use netboot=nfs")
        return net
    if key in ("fetch", "httpfs") and v:
        return replace(net, lower=parse_lower(v), lazy=key == "httpfs")
    if key == "archiso_http_srv" and v:
        return replace(net, archiso_srv=v.rstrip("/"))
    if key == "archiso_nfs_srv" and v:
        return replace(net, archiso_srv=_nfs_url(v, key))
    if key == "archisobasedir" and v:
        return replace(net, archiso_base=v.strip("/"))
    if key == "archiso_nbd_srv" and v:
        return replace(net, archiso_srv=f"nbd://{v}/archiso")
    return None


def resolve_archiso(net: NetConfig) -> NetConfig:
    """The archiso server and base dir (known once every parameter is read) -> the lower."""
    if not net.archiso_srv:
        return net
    if net.archiso_srv.startswith("nbd://"):  # the export is the ISO: the image is in it
        image = f"/{net.archiso_base}/{ARCHISO_IMAGE}"
        return replace(net, lower=parse_lower(net.archiso_srv), image=image)
    url = f"{net.archiso_srv}/{net.archiso_base}/{ARCHISO_IMAGE}"
    return replace(net, lower=parse_lower(url))
