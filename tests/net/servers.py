"""The standard servers a network boot test starts itself: nginx (HTTP with ranges), and the
bookkeeping to read what each client was sent from its access log.

Every server listens only on the address the test gives (loopback, or the test's own
bridge in its own network namespace), writes everything under the test's directory and is
stopped by its pid at the end of the ``with``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from overlayboot.net.serverconf import (
    DhcpPlan,
    Tls,
    dnsmasq_options,
    ganesha_conf,
    nginx_conf,
)
from tests.waiting import poll_until, wait_exit

NGINX = "/usr/sbin/nginx"


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on ``address`` now (bound and released)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def port_open(address: str, port: int, netns: str | None = None) -> bool:
    if netns is not None:
        probe = ["ip", "netns", "exec", netns, "ss", "-Hltn", f"src {address}:{port}"]
        res = subprocess.run(probe, capture_output=True, text=True)
        return res.returncode == 0 and "LISTEN" in res.stdout
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def in_netns(argv: Sequence[str], netns: str | None) -> list[str]:
    return [*(["ip", "netns", "exec", netns] if netns else []), *argv]


@dataclass(frozen=True)
class Sent:
    """One line of the access log."""

    client: str
    status: int
    method: str
    uri: str
    body_bytes: int


@dataclass
class Nginx:
    """A running nginx serving ``root`` at ``address:port``."""

    root: Path
    address: str
    port: int
    prefix: Path
    proc: subprocess.Popen[bytes]

    @property
    def base(self) -> str:
        return f"http://{self.address}:{self.port}"

    def log(self) -> list[Sent]:
        out = []
        path = self.prefix / "access.log"
        for line in path.read_text().splitlines() if path.exists() else []:
            client, status, method, uri, sent = line.split()
            out.append(Sent(client, int(status), method, uri, int(sent)))
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: open connections finish
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def nginx(
    root: Path,
    address: str,
    port: int,
    prefix: Path,
    netns: str | None = None,
    tls: Tls | None = None,
) -> Iterator[Nginx]:
    """nginx serving ``root`` (ranges, keep-alive, ETag: its defaults; https too with
    ``tls``) until the end."""
    if shutil.which(NGINX) is None:
        raise FileNotFoundError("nginx is not installed (Debian package nginx-light)")
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(root, address, port, prefix, tls=tls))
    argv = in_netns(
        [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")], netns
    )
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = Nginx(root, address, port, prefix, proc)
    try:
        poll_until(
            lambda: proc.poll() is not None or port_open(address, port, netns),
            10,
            "nginx listening",
        )
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"nginx did not start: {err.strip()}")
        yield server
    finally:
        server.stop()
        wait_exit(proc.pid, 5)


@dataclass
class Dnsmasq:
    """A running dnsmasq: DHCP (and DNS for ``names``, TFTP when given a root)."""

    prefix: Path
    proc: subprocess.Popen[bytes]

    def leases(self) -> list[str]:
        path = self.prefix / "leases"
        return path.read_text().splitlines() if path.exists() else []

    def log(self) -> str:
        path = self.prefix / "dnsmasq.log"
        return path.read_text() if path.exists() else ""


@contextmanager
def dnsmasq(
    prefix: Path,
    netns: str,
    subnet: str,
    server: str,
    names: dict[str, str] | None = None,
    tftp: Path | None = None,
    extra: Sequence[str] = (),
) -> Iterator[Dnsmasq]:
    """dnsmasq in ``netns`` on br0 only: DHCP for ``subnet``.100-199, DNS for ``names``."""
    prefix.mkdir(parents=True, exist_ok=True)
    if tftp is not None:
        tftp.mkdir(parents=True, exist_ok=True)
    plan = DhcpPlan("br0", server, subnet, names=tuple((names or {}).items()))
    opts = [f"--{o}" for o in dnsmasq_options(plan, prefix, tftp)]
    argv = in_netns(["dnsmasq", *opts, *extra], netns)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        poll_until(
            lambda: proc.poll() is not None or (prefix / "dnsmasq.pid").exists(),
            10,
            "dnsmasq started",
        )
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"dnsmasq did not start: {err.strip()}")
        yield Dnsmasq(prefix, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


GANESHA = "/usr/bin/ganesha.nfsd"


@dataclass
class Ganesha:
    """A running nfs-ganesha exporting one directory read-only (NFSv4.1/4.2, TCP)."""

    export: Path
    pseudo: str
    address: str
    prefix: Path
    netns: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        (self.prefix / "recovery").mkdir(exist_ok=True)
        conf = self.prefix / "ganesha.conf"
        conf.write_text(ganesha_conf(self.export, self.pseudo, self.address, self.prefix))
        argv = [GANESHA, "-F", "-f", str(conf), "-L", str(self.prefix / "ganesha.log"),
                "-p", str(self.prefix / "ganesha.pid")]  # fmt: skip
        self.proc = subprocess.Popen(
            in_netns(argv, self.netns), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        proc = self.proc
        poll_until(
            lambda: proc.poll() is not None or port_open(self.address, 2049, self.netns),
            30,
            "ganesha listening",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"ganesha did not start: {self.log()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        path = self.prefix / "ganesha.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextmanager
def ganesha(export: Path, pseudo: str, address: str, prefix: Path, netns: str) -> Iterator[Ganesha]:
    """nfs-ganesha in ``netns`` exporting ``export`` as ``pseudo``, stopped at the end."""
    if shutil.which(GANESHA) is None:
        raise FileNotFoundError("nfs-ganesha is not installed (nfs-ganesha, nfs-ganesha-vfs)")
    server = Ganesha(export, pseudo, address, prefix, netns)
    server.start()
    try:
        yield server
    finally:
        server.stop()


QEMU_NBD = "/usr/bin/qemu-nbd"


@contextmanager
def qemu_nbd(
    image: Path,
    export: str,
    address: str,
    port: int,
    netns: str | None = None,
    writable: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """qemu-nbd serving ``image`` (read-only unless ``writable``) as ``export`` on
    ``address:port`` to any number of clients, one after another too (--persistent),
    stopped at the end."""
    if shutil.which(QEMU_NBD) is None:
        raise FileNotFoundError("qemu-nbd is not installed (Debian package qemu-utils)")
    mode = [] if writable else ["--read-only"]
    argv = [QEMU_NBD, *mode, "--persistent", "--shared=0", "--format=raw",
            f"--export-name={export}", f"--bind={address}", f"--port={port}",
            str(image)]  # fmt: skip
    proc = subprocess.Popen(
        in_netns(argv, netns), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        poll_until(
            lambda: proc.poll() is not None or port_open(address, port, netns),
            10,
            "qemu-nbd listening",
        )
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"qemu-nbd did not start: {err.strip()}")
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)
