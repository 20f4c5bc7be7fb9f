"""``overlayboot serve`` lays out the files and configurations for a built image (the
servers themselves run in tests/qemu/test_netboot.py from the same configurations)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from click.testing import CliRunner

from mkimage.cpio import read_cpio
from overlayboot.cli import cli


def built(tmp_path: Path) -> tuple[Path, Path]:
    image = tmp_path / "image"
    image.mkdir()
    (image / "filesystem.squashfs").write_bytes(b"hsqs" + b"\0" * 4092)
    (image / "initramfs.img").write_bytes(b"initramfs")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    return image, kernel


def test_serve_lays_out_what_clients_fetch(tmp_path: Path) -> None:
    image, kernel = built(tmp_path)
    args = ["serve", str(image), "--kernel", str(kernel), "--address", "10.9.0.1",
            "--interface", "br9", "--lower", "http", "--params", "quiet"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    www = image / "serve" / "www"
    digest = hashlib.sha256((image / "filesystem.squashfs").read_bytes()).hexdigest()
    assert (www / "image.squashfs.sha256").read_text().split()[0] == digest
    script = (www / "boot.ipxe").read_text()
    assert script.startswith("#!ipxe\n")
    assert (
        f"overlayboot.lower=http://10.9.0.1/image.squashfs overlayboot.lower.sha256={digest} quiet"
        in script
    )
    assert "initrd http://10.9.0.1/initrd.img" in script
    assert "listen 10.9.0.1:80;" in (image / "serve" / "nginx.conf").read_text()
    dnsmasq = (image / "serve" / "dnsmasq.conf").read_text().splitlines()
    assert (
        "interface=br9" in dnsmasq
        and "dhcp-range=10.9.0.100,10.9.0.199,255.255.255.0,1h" in dnsmasq
    )
    assert "Bind_addr = 10.9.0.1;" in (image / "serve" / "ganesha.conf").read_text()
    assert "ganesha.nfsd -F" in res.output


def test_serve_proxy_dhcp_and_nfs(tmp_path: Path) -> None:
    image, kernel = built(tmp_path)
    out = tmp_path / "out"
    args = ["serve", str(image), "--kernel", str(kernel), "--address", "10.9.0.1",
            "--interface", "eth0", "--lower", "nfs", "--proxy-dhcp", "--out", str(out)]  # fmt: skip
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert "dhcp-range=10.9.0.0,proxy" in (out / "dnsmasq.conf").read_text().splitlines()
    assert (
        "overlayboot.lower=nfs://10.9.0.1/srv/image.squashfs" in (out / "www/boot.ipxe").read_text()
    )


def test_serve_without_a_build_is_one_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        cli, ["serve", str(tmp_path), "--kernel", str(tmp_path / "k"), "--address", "10.9.0.1",
              "--interface", "eth0"],
    )  # fmt: skip
    assert res.exit_code == 2
    assert "filesystem.squashfs not found" in res.output and "Traceback" not in res.output


def test_serve_over_https_sends_the_ca_as_a_second_initrd(tmp_path: Path) -> None:
    image, kernel = built(tmp_path)
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text(f"{name}\n")
    args = ["serve", str(image), "--kernel", str(kernel), "--address", "10.9.0.1",
            "--interface", "br9", "--tls-cert", str(tmp_path / "cert.pem"),
            "--tls-key", str(tmp_path / "key.pem"), "--ca", str(tmp_path / "ca.pem")]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    script = (image / "serve/www/boot.ipxe").read_text()
    assert "initrd=initrd.img initrd=ca.cpio" in script
    assert script.index("initrd http://10.9.0.1/initrd.img") < script.index(
        "initrd http://10.9.0.1/ca.cpio"
    )
    assert "overlayboot.lower=https://10.9.0.1/image.squashfs overlayboot.lower.lazy" in script
    members = {m.name: m for m in read_cpio(image / "serve/www/ca.cpio")}
    assert members["etc/overlayboot/ca.pem"].data == b"ca.pem\n"
    conf = (image / "serve/nginx.conf").read_text()
    assert "listen 10.9.0.1:443 ssl;" in conf and f"ssl_certificate {tmp_path}/cert.pem;" in conf
    # all three or none
    res = CliRunner().invoke(cli, args[:-2])
    assert res.exit_code == 2 and "needs all three" in res.output


def test_serve_nbd_runs_qemu_nbd_too(tmp_path: Path) -> None:
    image, kernel = built(tmp_path)
    args = ["serve", str(image), "--kernel", str(kernel), "--address", "10.9.0.1",
            "--interface", "br9", "--lower", "nbd"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "overlayboot.lower=nbd://10.9.0.1/image" in (image / "serve/www/boot.ipxe").read_text()
    assert "qemu-nbd --read-only --persistent --shared=0" in res.output
    assert f"{image}/serve/www/image.squashfs" in res.output
