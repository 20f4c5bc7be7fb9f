"""A CA the test makes with openssl, a server certificate it signs (for the names and
addresses the test serves on), and the CA as a second initrd: a newc cpio holding
/etc/overlayboot/ca.pem, the default of ``overlayboot.lower.ca=``, which the kernel
unpacks over the initramfs (QEMU gets the two concatenated; iPXE takes two ``initrd``)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from mkimage.cpio import Entry, cpio_bytes
from overlayboot.net.config import DEFAULT_CA


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


def ca_initrd(ca: Path, dest: Path) -> Path:
    """A second initrd putting ``ca`` at /etc/overlayboot/ca.pem."""
    parts = DEFAULT_CA.strip("/").split("/")
    dirs = [Entry.directory("/".join(parts[: i + 1])) for i in range(len(parts) - 1)]
    dest.write_bytes(cpio_bytes([*dirs, Entry.file(DEFAULT_CA.strip("/"), ca.read_bytes())]))
    return dest


def with_ca(initramfs: Path, ca_cpio: Path, dest: Path) -> Path:
    """The initramfs and the CA's cpio concatenated: one file for QEMU's -initrd (the kernel
    finds the second archive's header only at a 4-byte boundary: zeros pad the first)."""
    first = initramfs.read_bytes()
    dest.write_bytes(first + b"\0" * (-len(first) % 512) + ca_cpio.read_bytes())
    return dest
