"""Is the server there? ``python -m overlayboot.net.reach HOST PORT SECONDS`` resolves HOST
(DNS servers of /etc/resolv.conf) and connects to PORT until it answers or SECONDS pass;
prints the server's address, or one ``ERROR:`` line (exit 1) saying what was tried.
Phase fetch (hooks/25-fetch.sh) runs it before mounting or fetching the lower."""

from __future__ import annotations

import errno
import os
import socket
import sys
import time

from overlayboot.errors import OverlaybootError

PAUSE = 0.5


class Unreachable(OverlaybootError):
    """The server's name does not resolve, or its port does not answer."""


def resolve(host: str) -> str | None:
    """HOST's first IPv4 address; None if it does not resolve (yet)."""
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return str(infos[0][4][0]) if infos else None


def _dns_servers(path: str = "/etc/resolv.conf") -> str:
    try:
        with open(path) as f:
            found = [w.split()[1] for w in f if w.startswith("nameserver ") and len(w.split()) > 1]
    except OSError:
        found = []
    return ", ".join(found) or "none (no DNS server from DHCP or ip=)"


def _try_connect(address: str, port: int) -> int:
    """0 if ``address:port`` accepts a connection, else the errno."""
    try:
        with socket.create_connection((address, port), timeout=3):
            return 0
    except TimeoutError:
        return errno.ETIMEDOUT
    except OSError as exc:
        return exc.errno or errno.EIO


def reach(host: str, port: int, seconds: float) -> str:
    """The address of ``host`` once ``port`` answers there; :class:`Unreachable` after
    ``seconds``."""
    deadline = time.monotonic() + seconds
    address = None
    err = 0
    while True:
        address = address or resolve(host)
        if address is not None:
            err = _try_connect(address, port)
            if err == 0:
                return address
        if time.monotonic() >= deadline:
            break
        time.sleep(PAUSE)
    if address is None:
        raise Unreachable(
            f"cannot resolve the server name {host} (tried for {seconds:.0f} s; DNS servers: "
            f"{_dns_servers()})",
            "give its address in the URL, or fix the DNS server the DHCP server names",
        )
    raise Unreachable(
        f"the server {host} ({address}) port {port}: {errno.errorcode.get(err, err)} "
        f"({os.strerror(err)}) for {seconds:.0f} s",
        "is the server running, and reachable from this network?",
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or not args[1].isdigit():
        print("usage: python -m overlayboot.net.reach HOST PORT SECONDS", file=sys.stderr)
        return 2
    try:
        print(reach(args[0], int(args[1]), float(args[2])))
    except Unreachable as exc:
        print(f"ERROR: {exc.line()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
