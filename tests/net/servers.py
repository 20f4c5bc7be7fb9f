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

from tests.waiting import poll_until, wait_exit

NGINX = "/usr/sbin/nginx"
LOG_FORMAT = "$remote_addr $status $request_method $uri $body_bytes_sent"


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on ``address`` now (bound and released)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def port_open(address: str, port: int, netns: str | None = None) -> bool:
    if netns is not None:
        probe = ["ip", "netns", "exec", netns, "nc", "-z", address, str(port)]
        return subprocess.run(probe, capture_output=True).returncode == 0
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


def nginx_conf(root: Path, address: str, port: int, prefix: Path) -> str:
    temps = "".join(
        f"    {kind}_temp_path {prefix}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
user root root;  # the docroot is the test's (mode 0700 dirs)
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 512; }}
http {{
    log_format sent '{LOG_FORMAT}';
    access_log {prefix}/access.log sent;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
{temps}    server {{
        listen {address}:{port};
        root {root};
    }}
}}
"""


@contextmanager
def nginx(
    root: Path, address: str, port: int, prefix: Path, netns: str | None = None
) -> Iterator[Nginx]:
    """nginx serving ``root`` (ranges, keep-alive, ETag: its defaults) until the end."""
    if shutil.which(NGINX) is None:
        raise FileNotFoundError("nginx is not installed (Debian package nginx-light)")
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(root, address, port, prefix))
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
