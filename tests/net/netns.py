"""A network namespace the test makes and removes: a bridge with the server's address and
one tap device per QEMU client. Nothing in it reaches any other network: the namespace
has no link to the host's (no veth, no route out), so the guests and the servers the test
starts there talk only to each other."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

SUBNET = "10.213.0"
SERVER = f"{SUBNET}.1"
PREFIX = 24
_names = itertools.count(1)


def ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()}")


@dataclass
class Netns:
    """The namespace, its bridge ``br0`` (the server's address) and the taps made so far."""

    name: str
    taps: list[str] = field(default_factory=list)

    def exec(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def tap(self) -> str:
        """A new tap device on the bridge, for one QEMU client."""
        name = f"tap{len(self.taps)}"
        ip("tuntap", "add", "dev", name, "mode", "tap", netns=self.name)
        ip("link", "set", name, "master", "br0", "up", netns=self.name)
        self.taps.append(name)
        return name

    def sent_to(self, tap: str) -> int:
        """Bytes the namespace (its servers) has sent to the client on ``tap`` so far."""
        argv = self.exec(["cat", f"/sys/class/net/{tap}/statistics/tx_bytes"])
        return int(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)

    def nic(self, index: int, model: str = "virtio-net-pci") -> list[str]:
        """QEMU arguments for a NIC of client ``index`` on a new tap (QEMU runs in here)."""
        tap = self.tap()
        mac = f"52:54:00:21:30:{index:02x}"
        return [
            "-netdev", f"tap,id=n{index},ifname={tap},script=no,downscript=no",
            "-device", f"{model},netdev=n{index},mac={mac}",
        ]  # fmt: skip


@contextmanager
def netns() -> Iterator[Netns]:
    """A fresh namespace with ``br0`` at SERVER/24, removed (with its taps) at the end."""
    name = f"obnet{os.getpid()}x{next(_names)}"
    ip("netns", "add", name)
    try:
        ip("link", "set", "lo", "up", netns=name)
        ip("link", "add", "br0", "type", "bridge", netns=name)
        ip("link", "set", "br0", "type", "bridge", "forward_delay", "0", netns=name)
        ip("addr", "add", f"{SERVER}/{PREFIX}", "dev", "br0", netns=name)
        ip("link", "set", "br0", "up", netns=name)
        yield Netns(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
