"""``overlayboot upper check|seal`` on an upper made by hand (no mount, ``user.`` xattrs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from overlayboot.fs import chunked
from overlayboot.fs.chunkmap import LowerIdentity
from overlayboot.fs.whiteout import XattrNames

NAME = XattrNames("user").chunks
DATA = bytes(range(256)) * 1024  # 256 KiB


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overlayboot", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def layers(tmp_path: Path) -> tuple[Path, Path]:
    """A lower with ``d/f`` and an upper whose ``d/f`` is partial, 4 bytes written."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "d").mkdir(parents=True)
    (upper / "d").mkdir(parents=True)
    (lower / "d/f").write_bytes(DATA)
    st = os.stat(lower / "d/f")
    ident = LowerIdentity(0, b"d/f", os.fsencode(lower), st.st_size, st.st_ino, st.st_mtime_ns, b"")
    fd = os.open(upper / "d/f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            assert chunked.begin(fd, os.fsencode(lower / "d/f"), st, ident, 12, NAME)
        except OSError as exc:
            pytest.skip(f"no user xattrs here: {exc}")
        cmap = chunked.load_map(fd, NAME)
        assert cmap is not None
        lower_fd = chunked.open_lower(os.fsencode(lower / "d/f"), cmap.lower)
        p = chunked.ChunkedFile(fd, lower_fd, cmap, NAME)
        p.write(fd, 100_000, b"NEW!")
        p.persist()
        os.close(p.lower_fd)
    finally:
        os.close(fd)
    return lower, upper


def test_check_lists_partial_files(layers: tuple[Path, Path]) -> None:
    lower, upper = layers
    r = run_cli("upper", "check", "--lower", str(lower), str(upper))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"partial  d/f  1 of 64 chunks of 4 KiB in the upper; lower {lower}/d/f",
        f"1 partial copy-ups in {upper}, 0 with a problem",
    ]


def test_seal_makes_them_whole(layers: tuple[Path, Path]) -> None:
    _lower, upper = layers
    mtime = os.stat(upper / "d/f").st_mtime_ns
    r = run_cli("upper", "seal", str(upper))  # the lower from the map's record
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("sealed   d/f")
    assert (upper / "d/f").read_bytes() == DATA[:100_000] + b"NEW!" + DATA[100_004:]
    assert NAME not in os.listxattr(upper / "d/f")
    assert os.stat(upper / "d/f").st_mtime_ns == mtime
    r = run_cli("upper", "check", str(upper))
    assert (r.returncode, r.stdout) == (0, f"0 partial copy-ups in {upper}, 0 with a problem\n")


def test_changed_or_missing_lower_fails_with_one_line(layers: tuple[Path, Path]) -> None:
    lower, upper = layers
    with open(lower / "d/f", "ab") as f:
        f.write(b"more")
    for cmd in ("check", "seal"):
        r = run_cli("upper", cmd, "--lower", str(lower), str(upper))
        assert r.returncode == 6, r
        assert "d/f" in r.stdout and "size 262144 -> 262148" in r.stdout
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("overlayboot: error:")
    assert NAME in os.listxattr(upper / "d/f")  # left as it was
    r = run_cli("upper", "check", "--lower", str(upper / "nowhere"), str(upper))
    assert r.returncode == 3 and "nowhere" in r.stderr and "Traceback" not in r.stderr


def test_corrupt_map_is_reported(layers: tuple[Path, Path]) -> None:
    _lower, upper = layers
    os.setxattr(upper / "d/f", NAME, b"OBCM\x09garbage")
    r = run_cli("upper", "check", str(upper))
    assert r.returncode == 6 and "corrupt" in r.stdout, r


def test_missing_upper_is_one_line(tmp_path: Path) -> None:
    r = run_cli("upper", "seal", str(tmp_path / "absent"))
    assert r.returncode == 3
    absent = tmp_path / "absent"
    assert r.stderr.splitlines() == [
        f"overlayboot: error: upper dir {absent} is not a directory (give the right path)"
    ]


@pytest.mark.parametrize("command", ["check", "seal"])
def test_an_unreadable_directory_is_one_line(command: str) -> None:
    # under /tmp, mode 0755, so that an unprivileged user reaches it
    base = Path(tempfile.mkdtemp(prefix="upper-cli-", dir="/tmp"))
    os.chmod(base, 0o755)
    upper = base / "upper"
    (upper / "closed").mkdir(parents=True)
    (upper / "closed" / "f").write_text("x")
    os.chmod(upper / "closed", 0)
    # as an unprivileged user, for whom a mode 000 directory cannot be read
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    proc = subprocess.run(
        [*argv, "-m", "overlayboot", "upper", command, str(upper)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert proc.returncode == 6, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert f"cannot read {upper}/closed: Permission denied" in proc.stderr
    os.chmod(upper / "closed", 0o755)
    shutil.rmtree(base)
