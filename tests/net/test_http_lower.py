"""The HTTP lower on this host, against a real nginx on loopback: the lazy FUSE file
(loop-mounted as squashfs, as phase fetch does), the whole fetch with its checksum, and
the failures: 404, a wrong checksum, the server away and back, an image changed under it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from overlayboot.net.serverconf import Tls
from tests.net.conftest import SMALL
from tests.net.servers import Nginx, free_port, nginx
from tests.net.tls import make_pki
from tests.waiting import poll_until

pytestmark = pytest.mark.fuse

if os.geteuid() != 0:
    pytest.skip("needs root (FUSE with allow_other, loop mounts)", allow_module_level=True)


def py(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


@contextmanager
def server(root: Path, tmp: Path) -> Iterator[Nginx]:
    with nginx(root, "127.0.0.1", free_port(), tmp / "nginx") as srv:
        yield srv


@contextmanager
def lazy_lower(url: str, tmp: Path, *extra: str) -> Iterator[tuple[Path, Path]]:
    """httpfs at tmp/http, its image loop-mounted at tmp/lower: (lower, httpfs log)."""
    mnt, lower, log = tmp / "http", tmp / "lower", tmp / "httpfs.log"
    mnt.mkdir()
    lower.mkdir()
    argv = py("overlayboot.net.httpfs", url, str(mnt), "--log", str(log), "--cache", str(4 << 20))
    subprocess.run([*argv, *extra], check=True, timeout=60)
    try:
        subprocess.run(
            ["mount", "-t", "squashfs", "-o", "ro,loop", str(mnt / "image.squashfs"), str(lower)],
            check=True,
        )
        try:
            yield lower, log
        finally:
            subprocess.run(["umount", str(lower)], check=True)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def body_bytes(srv: Nginx, uri: str) -> int:
    return sum(s.body_bytes for s in srv.log() if s.uri == uri)


def test_lazy_lower_reads_only_what_is_read_and_survives_a_restart(
    served: Path, image_tree: Path, tmp_path: Path
) -> None:
    image_size = (served / "image.squashfs").stat().st_size
    with (
        server(served, tmp_path) as srv,
        lazy_lower(f"{srv.base}/image.squashfs", tmp_path) as (
            lower,
            log,
        ),
    ):
        assert (lower / SMALL).read_text() == "served lazily\n"
        first = body_bytes(srv, "/image.squashfs")
        assert 0 < first < image_size // 8, (first, image_size)

        # the server goes away: a read of blocks not yet fetched waits, then resumes
        srv.stop()
        got: dict[str, bytes] = {}
        reader = threading.Thread(
            target=lambda: got.setdefault("blob", (lower / "big/blob3").read_bytes())
        )
        reader.start()
        poll_until(lambda: "retrying" in log.read_text(), 30, "httpfs notices the outage")
        assert reader.is_alive() and "blob" not in got
        with nginx(served, srv.address, srv.port, tmp_path / "nginx2"):
            reader.join(timeout=60)
            assert not reader.is_alive()
            assert got["blob"] == (image_tree / "big/blob3").read_bytes()
            assert "answering again" in log.read_text()
            for path in sorted((image_tree / "big").iterdir()):
                assert (lower / "big" / path.name).read_bytes() == path.read_bytes()


def test_lazy_lower_image_changed_on_the_server_is_eio(served: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(served / "image.squashfs", root / "image.squashfs")
    with (
        server(root, tmp_path) as srv,
        lazy_lower(f"{srv.base}/image.squashfs", tmp_path) as (
            lower,
            log,
        ),
    ):
        (lower / SMALL).read_text()
        # a new image under the same name (another size): never served as the old one
        with open(root / "image.squashfs", "ab") as f:
            f.write(b"\0" * 4096)
        with pytest.raises(OSError):
            (lower / "big/blob5").read_bytes()
        assert "changed on the server while in use" in log.read_text()


def test_lazy_lower_404_is_one_error_line(served: Path, tmp_path: Path) -> None:
    (tmp_path / "http").mkdir()
    with server(served, tmp_path) as srv:
        res = subprocess.run(
            py("overlayboot.net.httpfs", f"{srv.base}/nothing.squashfs", str(tmp_path / "http")),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert res.returncode == 1
    assert res.stderr.startswith("ERROR: ") and "404" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def fetch(url: str, dest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = py("overlayboot.net.fetch", url, str(dest), "--patience", "5", *extra)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_whole_fetch_checks_the_sha256(served: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    image = root / "image.squashfs"
    shutil.copy(served / "image.squashfs", image)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    dest = tmp_path / "got.squashfs"
    with server(root, tmp_path) as srv:
        url = f"{srv.base}/image.squashfs"
        # no .sha256 beside it, none given: refused
        res = fetch(url, dest)
        assert res.returncode == 1 and "no checksum" in res.stderr and not dest.exists()
        # the right one beside it
        (root / "image.squashfs.sha256").write_text(f"{digest}  image.squashfs\n")
        res = fetch(url, dest)
        assert res.returncode == 0, res.stderr
        assert dest.read_bytes() == image.read_bytes()
        assert f"checked against {url}.sha256" in res.stdout
        sent = body_bytes(srv, "/image.squashfs")
        assert sent == image.stat().st_size
        # a wrong one on the command line: refused, nothing left
        wrong = "0" * 64
        res = fetch(url, dest, "--sha256", wrong)
        assert res.returncode == 1 and not dest.exists()
        assert (
            res.stderr.startswith("ERROR: ")
            and f"has sha256 {digest}, expected {wrong}" in res.stderr
        )
        # 404
        res = fetch(f"{srv.base}/missing.squashfs", dest, "--sha256", digest)
        assert res.returncode == 1 and "HTTP 404" in res.stderr
    # https needs the sum on the command line, or a CA to trust the .sha256 file by
    res = fetch("https://127.0.0.1:1/image.squashfs", dest)
    assert res.returncode == 1 and "needs its sha256 on the command line" in res.stderr


def test_https_lower_checks_the_server_against_the_ca(
    served: Path, image_tree: Path, tmp_path: Path
) -> None:
    """Lazy reads and the whole fetch over https, the server's certificate checked against
    the CA given (a CA the test makes; the certificate names the server by name and by
    address): a client without the CA, with another CA, or asking another name is refused
    with one line."""
    pki = make_pki(tmp_path / "pki", ("bootserver.test",), ("127.0.0.1",))
    other = make_pki(tmp_path / "other", ("bootserver.test",), ("127.0.0.1",))
    tls = Tls(pki.cert, pki.key, free_port())
    with nginx(served, "127.0.0.1", free_port(), tmp_path / "nginx", tls=tls) as srv:
        url = f"https://127.0.0.1:{tls.port}/image.squashfs"
        with lazy_lower(url, tmp_path, "--ca", str(pki.ca)) as (lower, _log):
            assert (lower / SMALL).read_text() == "served lazily\n"
            assert (lower / "big/blob6").read_bytes() == (image_tree / "big/blob6").read_bytes()
        assert body_bytes(srv, "/image.squashfs") > 0
        (tmp_path / "mnt").mkdir()
        by_name = f"https://bootserver.test:{tls.port}/image.squashfs"
        for args, words in [
            ((url,), "needs the CA"),
            ((url, "--ca", str(other.ca)), "does not check against the CA"),
            ((f"https://localhost:{tls.port}/image.squashfs", "--ca", str(pki.ca)), "localhost"),
        ]:
            argv = py("overlayboot.net.httpfs", args[0], str(tmp_path / "mnt"), *args[1:])
            res = subprocess.run([*argv, "--address", "127.0.0.1", "--patience", "5"],
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
            assert res.returncode == 1 and words in res.stderr, (args, res.stderr)
            assert res.stderr.startswith("ERROR: ") and len(res.stderr.splitlines()) == 1
        # the whole fetch: by the certificate's name, the .sha256 beside it trusted
        dest = tmp_path / "got.squashfs"
        res = fetch(by_name, dest, "--address", "127.0.0.1", "--ca", str(pki.ca))
        assert res.returncode == 0, res.stderr
        assert dest.read_bytes() == (served / "image.squashfs").read_bytes()
        assert f"checked against {by_name}.sha256" in res.stdout
