"""A CA the test makes with openssl, a server certificate it signs (for the names and
addresses the test serves on). The clients get the CA as overlayboot serve sends it: a
second initrd, ca.cpio (overlayboot.net.serve.ca_initrd)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate (PEM): what a client trusts
    cert: Path  # the server's certificate, signed by the CA
    key: Path  # its key


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(base: Path, names: tuple[str, ...], addresses: tuple[str, ...]) -> Pki:
    """A CA in ``base`` and a server certificate for ``names`` and ``addresses``."""
    base.mkdir(parents=True, exist_ok=True)
    ca, ca_key = base / "ca.pem", base / "ca.key"
    key, csr, cert = base / "server.key", base / "server.csr", base / "server.pem"
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
             "-subj", f"/CN=overlayboot test CA {base.name}")  # fmt: skip
    _openssl("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}")
    san = ",".join([*(f"DNS:{n}" for n in names), *(f"IP:{a}" for a in addresses)])
    ext = base / "server.ext"
    ext.write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext))  # fmt: skip
    return Pki(ca, cert, key)
