"""An export of an NBD server (nbd-server, qemu-nbd, nbdkit) on the kernel's nbd device: the
NBD lower (read-only; phase fetch mounts the device as the image), or a persistence on the
server (``overlayboot.upper=nbd://``: read-write, the server says which).

``python -m overlayboot.net.nbd URL DEVICE [--address IP] [--patience S] [--log FILE]
[--pid-file FILE] [--foreground]``

URL is ``nbd://SERVER[:PORT]/EXPORT`` (``/``: the server's default export). What nbd-client
does, in the initramfs' Python: the fixed-newstyle handshake with ``NBD_OPT_GO`` (the size
and flags of the export), then the device's ioctls (block size, size, flags, the socket)
and ``NBD_DO_IT``, in which the process stays while the device serves: the kernel sends
the requests over that socket itself. It detaches once the device is set up (exit 0), or
says why not in one ``ERROR:`` line (exit 1); it ignores SIGTERM/SIGINT/SIGHUP and locks
its memory, as the overlay daemon. The kernel's ioctl interface has no reconnection: a
server that goes away ends the device (reads fail); NFS and HTTP lowers wait instead.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass

from overlayboot.errors import OverlaybootError
from overlayboot.fs import survive
from overlayboot.net.detach import detach, helper_parser, log_to, ready
from overlayboot.net.lower import parse_lower

log = logging.getLogger("overlayboot.net.nbd")

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
OPT_ABORT, OPT_GO = 2, 7
REP_ACK, REP_INFO = 1, 3
INFO_EXPORT = 0
REP_ERRORS = {1: "unsupported", 2: "refused by policy", 3: "invalid", 4: "unsupported here",
              5: "TLS required", 6: "unknown export", 7: "shutting down",
              8: "block size required", 9: "too big"}  # fmt: skip
# <linux/nbd.h>: _IO(0xab, n)
SET_SOCK, SET_BLKSIZE, SET_SIZE, DO_IT, CLEAR_SOCK, CLEAR_QUE = (0xAB00 + n for n in range(6))
SET_FLAGS = 0xAB0A
TIMEOUT = 15.0


class NbdError(OverlaybootError):
    """The export cannot be attached: no server, an unknown export, a device refusing."""

    exit_code = 8


@dataclass(frozen=True)
class Export:
    """What the server said of the export in the handshake."""

    name: str
    size: int
    flags: int  # transmission flags, handed to the kernel as they are


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        got = sock.recv(n - len(data))
        if not got:
            raise NbdError("the NBD server closed the connection in the handshake")
        data += got
    return data


def _option(sock: socket.socket, option: int, data: bytes) -> None:
    sock.sendall(struct.pack(">QII", IHAVEOPT, option, len(data)) + data)


def _replies(sock: socket.socket, name: str) -> Export:
    """The server's replies to NBD_OPT_GO, up to its ACK."""
    size = flags = -1
    while True:
        magic, _opt, kind, length = struct.unpack(">QIII", _recv(sock, 20))
        body = _recv(sock, length)
        if magic != REPLY_MAGIC:
            raise NbdError("the NBD server's reply is garbled (bad magic)")
        if kind & 0x80000000:
            why = REP_ERRORS.get(kind & 0x7FFFFFFF, f"error {kind & 0x7FFFFFFF}")
            text = body.decode(errors="replace").strip()
            raise NbdError(
                f"the NBD server refuses the export {name!r}: {why}{': ' + text if text else ''}",
                "is that export served? (overlayboot.lower=nbd://SERVER[:PORT]/EXPORT)",
            )
        if kind == REP_INFO and len(body) >= 12 and struct.unpack(">H", body[:2])[0] == 0:
            size, flags = struct.unpack(">QH", body[2:12])
        elif kind == REP_ACK:
            if size < 0:
                raise NbdError("the NBD server gave no size for the export")
            return Export(name, size, flags)


def handshake(sock: socket.socket, name: str) -> Export:
    """Fixed newstyle, NBD_OPT_GO: the export's size and flags; then transmission."""
    head = _recv(sock, 18)
    if head[:8] != NBDMAGIC or struct.unpack(">Q", head[8:16])[0] != IHAVEOPT:
        raise NbdError("not a newstyle NBD server (an oldstyle one, or another service)")
    server_flags = struct.unpack(">H", head[16:18])[0]
    if not server_flags & FLAG_FIXED_NEWSTYLE:
        raise NbdError("the NBD server does not speak fixed newstyle")
    sock.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES)))
    raw = name.encode()
    _option(sock, OPT_GO, struct.pack(">I", len(raw)) + raw + struct.pack(">H", 0))
    return _replies(sock, name)


def connect(address: str, port: int, patience: float) -> socket.socket:
    """A TCP connection to the server, retried for ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            sock = socket.create_connection((address, port), timeout=TIMEOUT)
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise NbdError(
                    f"the NBD server {address} port {port}: {exc.strerror or exc}",
                    "is nbd-server (or qemu-nbd) running there?",
                ) from None
            time.sleep(0.5)
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def attach(dev: int, sock: socket.socket, export: Export) -> None:
    """The device's size, flags and socket (``NBD_DO_IT`` comes after, in the child)."""
    # 512: what every filesystem's own block size is a multiple of (e2fsck reads ext4's MMP
    # block with O_DIRECT in the filesystem's block size, 1 KiB on a small one)
    block = 512
    try:
        fcntl.ioctl(dev, CLEAR_SOCK)
        fcntl.ioctl(dev, SET_BLKSIZE, block)
        fcntl.ioctl(dev, SET_SIZE, export.size - export.size % block)
        fcntl.ioctl(dev, SET_FLAGS, export.flags)
        fcntl.ioctl(dev, SET_SOCK, sock.fileno())
    except OSError as exc:
        raise NbdError(
            f"the nbd device refuses the export: {exc.strerror} (is it in use already?)"
        ) from None


def serve(args: argparse.Namespace) -> int:
    low = parse_lower(args.url)
    name = low.path.lstrip("/")
    try:
        sock = connect(args.address or low.host, low.port, args.patience)
        sock.settimeout(TIMEOUT)
        try:
            export = handshake(sock, name)
        except TimeoutError:
            raise NbdError(
                f"the NBD server {low.host} does not answer the handshake for {TIMEOUT:.0f} s",
                "is the export in use by another client? (one client per export)",
            ) from None
        sock.settimeout(None)
        dev = os.open(args.device, os.O_RDWR)
    except NbdError as exc:
        print(f"ERROR: {exc.line()}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"ERROR: {args.device} or the NBD server: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        attach(dev, sock, export)
    except NbdError as exc:
        print(f"ERROR: {exc.line()}", file=sys.stderr)
        return 1
    survive.ignore_termination()
    wfd = None if args.foreground else detach()
    survive.serve_as_root()
    log.info("%s: %s, %d bytes, flags 0x%x", args.device, args.url, export.size, export.flags)
    if args.pid_file is not None:
        with contextlib.suppress(OSError):
            args.pid_file.parent.mkdir(parents=True, exist_ok=True)
            args.pid_file.write_text(f"{os.getpid()}\n")
    ready(wfd)
    return do_it(dev, args.device)


def do_it(dev: int, device: str) -> int:
    """Serve: the kernel's requests go over the socket until the connection ends."""
    try:
        fcntl.ioctl(dev, DO_IT)
    except OSError as exc:
        log.error("%s: the connection ended: %s", device, exc.strerror)
    with contextlib.suppress(OSError):
        fcntl.ioctl(dev, CLEAR_QUE)
        fcntl.ioctl(dev, CLEAR_SOCK)
    log.error("%s: detached from its server: reads of it fail from now on", device)
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = helper_parser("python -m overlayboot.net.nbd", "device")
    args = ap.parse_args(argv)
    log_to(args.log)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
