"""HTTP for the network lower: a client of one image URL that reads ranges of it, with
retries while the server is away, and notices an image changed under it.

Stdlib only (``http.client``): it runs in the initramfs' Python. One keep-alive connection
per :class:`RangeClient`; a failed request closes it and the next one reconnects. What is
permanent (404, 403, a server without range support, an image that changed size or ETag
while in use) raises :class:`HttpError`; what is transient (refused, reset, timeout, 5xx)
is retried with a growing pause, for ``patience`` seconds, or (the lazy lower: ``None``)
until it succeeds: a lower whose server is restarted must block and resume, never return
garbage.
"""

from __future__ import annotations

import http.client
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from overlayboot.errors import OverlaybootError

log = logging.getLogger("overlayboot.net.http")
_T = TypeVar("_T")

TIMEOUT = 15.0  # seconds for one connect or read
PAUSES = (0.2, 0.5, 1.0, 2.0, 5.0)  # between retries; the last repeats
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class HttpError(OverlaybootError):
    """A permanent HTTP failure for the image (the message names the URL and the status)."""

    exit_code = 8


class Transient(Exception):
    """A failure worth retrying (the server is away, or overloaded)."""


@dataclass(frozen=True)
class Remote:
    """What the server says of the image: its size, and what identifies its version."""

    size: int
    etag: str
    last_modified: str


@dataclass(frozen=True)
class Target:
    """Where the image is: a host to connect to (an address), the Host header, a path."""

    scheme: str  # http or https
    address: str
    port: int
    host: str
    path: str
    ca: str = ""  # https: a PEM file of the CA the server's certificate must chain to

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"


class _CheckedHttps(http.client.HTTPSConnection):
    """https to ``address``, the certificate checked against the CA for the URL's host name
    (the server may be reached by an address the name resolved to, or given beside it)."""

    def __init__(self, t: Target, ctx: ssl.SSLContext) -> None:
        super().__init__(t.host, t.port, timeout=TIMEOUT, context=ctx)
        self._address = t.address
        self._ctx = ctx

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


def tls_context(ca: str) -> ssl.SSLContext:
    """A client context trusting only the CA certificates in the file ``ca``."""
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise HttpError(
            f"cannot use the CA certificate {ca}: {exc}",
            "give a PEM file of the CA that signed the server's certificate",
        ) from None


def _connection(t: Target) -> http.client.HTTPConnection:
    if t.scheme == "https" and t.ca:
        return _CheckedHttps(t, tls_context(t.ca))
    if t.scheme == "https":
        # no CA: authenticity comes from the sha256 on the command line (overlayboot.net.fetch
        # demands one for https without a CA; the lazy reader refuses https without one)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(t.address, t.port, timeout=TIMEOUT, context=ctx)
    return http.client.HTTPConnection(t.address, t.port, timeout=TIMEOUT)


class RangeClient:
    """Ranges of one image over one keep-alive connection."""

    def __init__(
        self,
        target: Target,
        on_outage: Callable[[str], None] | None = None,
        patience: float | None = None,
    ) -> None:
        self.target = target
        self.patience = patience  # seconds of transient failures before giving up; None: never
        self.remote: Remote | None = None
        self.bytes_received = 0
        self.requests = 0
        self._conn: http.client.HTTPConnection | None = None
        self._on_outage = on_outage or (lambda why: log.warning("%s", why))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(
        self, method: str, headers: dict[str, str], path: str | None = None
    ) -> http.client.HTTPResponse:
        if self._conn is None:
            self._conn = _connection(self.target)
        self.requests += 1
        try:
            self._conn.request(
                method, path or self.target.path, headers={"Host": self.target.host, **headers}
            )
            return self._conn.getresponse()
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise HttpError(
                f"{self.target.url}: the server's certificate does not check against the CA "
                f"{self.target.ca}: {exc.verify_message}",
                "give the CA that signed it (overlayboot.lower.ca=), and a URL with the name "
                "the certificate is for",
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise Transient(f"{self.target.url}: {exc}") from None

    def _status(self, resp: http.client.HTTPResponse, ok: tuple[int, ...], what: str) -> None:
        if resp.status in ok:
            return
        resp.read()
        if resp.status >= 500 or resp.status == 429:
            raise Transient(f"{what}: HTTP {resp.status} {resp.reason}")
        raise HttpError(f"{what}: HTTP {resp.status} {resp.reason}")

    def head(self) -> Remote:
        """The image's size and version (HEAD), once; retried while transient."""
        resp = self._retry(lambda: self._head_once())
        self.remote = resp
        return resp

    def _head_once(self) -> Remote:
        resp = self._request("HEAD", {})
        self._status(resp, (200,), self.target.url)
        resp.read()
        length = resp.getheader("Content-Length")
        if length is None or not length.isdigit():
            raise HttpError(f"{self.target.url}: the server gives no Content-Length")
        if resp.getheader("Accept-Ranges", "").lower() != "bytes":
            log.info("%s: no Accept-Ranges: bytes (ranges are tried anyway)", self.target.url)
        return Remote(int(length), resp.getheader("ETag", ""), resp.getheader("Last-Modified", ""))

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end); blocks while the server is away."""
        if self.remote is None:
            self.head()
        assert self.remote is not None
        end = min(offset + length, self.remote.size)
        if offset >= end:
            return b""
        return self._retry(lambda: self._range_once(offset, end))

    def _range_once(self, offset: int, end: int) -> bytes:
        assert self.remote is not None
        resp = self._request("GET", {"Range": f"bytes={offset}-{end - 1}"})
        self._status(resp, (206,), f"{self.target.url} bytes {offset}-{end - 1}")
        self._check_same(resp, offset, end)
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise Transient(f"{self.target.url}: {exc}") from None
        if len(data) != end - offset:
            self.close()
            raise Transient(f"{self.target.url}: short read ({len(data)} of {end - offset})")
        self.bytes_received += len(data)
        return data

    def _check_same(self, resp: http.client.HTTPResponse, offset: int, end: int) -> None:
        """The answer is the range asked for, of the same image version as at first."""
        assert self.remote is not None
        m = _CONTENT_RANGE.match(resp.getheader("Content-Range", ""))
        etag = resp.getheader("ETag", "")
        same_size = m is not None and m.group(3) in ("*", str(self.remote.size))
        if not same_size or (self.remote.etag and etag and etag != self.remote.etag):
            resp.read()
            raise HttpError(
                f"{self.target.url} changed on the server while in use "
                f"(was {self.remote.size} bytes, ETag {self.remote.etag or '-'})",
                "serve a new image under a new name; reboot the clients to use it",
            )
        if m is None or (int(m.group(1)), int(m.group(2)) + 1) != (offset, end):
            resp.read()
            raise HttpError(f"{self.target.url}: the server answered another range")

    def _retry(self, once: Callable[[], _T]) -> _T:
        failures = 0
        start = time.monotonic()
        while True:
            try:
                result = once()
            except Transient as exc:
                if self.patience is not None and time.monotonic() - start >= self.patience:
                    raise HttpError(f"{exc} (for {self.patience:.0f} s)") from None
                if failures == 0:
                    self._on_outage(f"{exc}: retrying until the server answers")
                time.sleep(PAUSES[min(failures, len(PAUSES) - 1)])
                failures += 1
                continue
            if failures:
                self._on_outage(f"{self.target.url}: answering again after {failures} retries")
            return result
