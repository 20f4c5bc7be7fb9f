"""The NBD lower's handshake against a real qemu-nbd on loopback (the host kernel has no
nbd device: attaching it is tested in a guest, tests/qemu/test_netboot.py): the export's
size and read-only flag, and an unknown export or no server as one error line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from overlayboot.net.nbd import NbdError, connect, handshake
from tests.net.servers import free_port, qemu_nbd

pytestmark = pytest.mark.fleet

FLAG_READ_ONLY = 2


def test_handshake_gives_the_exports_size_and_flags(served: Path) -> None:
    image = served / "image.squashfs"
    port = free_port()
    with qemu_nbd(image, "live", "127.0.0.1", port):
        with connect("127.0.0.1", port, 5) as sock:
            export = handshake(sock, "live")
        assert export.size == image.stat().st_size
        assert export.flags & FLAG_READ_ONLY
        with connect("127.0.0.1", port, 5) as sock, pytest.raises(NbdError) as exc:
            handshake(sock, "nothing")
        assert "refuses the export 'nothing'" in exc.value.line()
        # the command: no such device here, one line
        res = subprocess.run(
            [sys.executable, "-m", "overlayboot.net.nbd", f"nbd://127.0.0.1:{port}/live",
             "/nonexistent/nbd0", "--foreground"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert res.returncode == 1 and res.stderr.startswith("ERROR: /nonexistent/nbd0")
    assert len(res.stderr.splitlines()) == 1
    with pytest.raises(NbdError) as exc:
        connect("127.0.0.1", port, 1)
    assert f"port {port}" in exc.value.line()
