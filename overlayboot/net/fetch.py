"""An http(s) image fetched whole into a file (a tmpfs: the lower in RAM), its sha256 checked.

``python -m overlayboot.net.fetch URL DEST --address IP [--sha256 HEX|none] [--patience S]
[--ca PEM]``

The expected checksum is ``--sha256`` (``overlayboot.lower.sha256=``), else the first word of
``URL.sha256`` on the same server (plain http: it guards against corruption, not against a
forged server; https: only with ``--ca``, the CA the server's certificate is checked
against (``overlayboot.lower.ca=``); https without a CA demands ``--sha256``). The image
is read in ranges (a dropped connection resumes where it stopped) after a check that it
fits in the memory available. On any failure DEST is removed and one ``ERROR:`` line says
why (exit 1).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from overlayboot.errors import OverlaybootError
from overlayboot.net.httpio import HttpError, RangeClient, Target
from overlayboot.net.lower import parse_lower

CHUNK = 4 << 20
RESERVE = 64 << 20  # memory left free beside the image
_HEX64 = re.compile(rb"^[0-9a-fA-F]{64}$")


class FetchError(OverlaybootError):
    """The image cannot be fetched, does not fit, or is not the one expected."""

    exit_code = 8


@dataclass(frozen=True)
class Fetched:
    size: int
    sha256: str
    seconds: float
    checked_against: str  # where the expected sum came from


def target_of(url: str, address: str, ca: str = "") -> Target:
    """Where ``url`` is (at ``address``, if given); ``ca`` checks an https server."""
    low = parse_lower(url)
    if low.scheme == "nfs":
        raise FetchError(f"{url} is not an http(s) URL")
    return Target(low.scheme, address or low.host, low.port, low.host, low.path, ca)


def expected_sum(target: Target, given: str, patience: float) -> tuple[str, str]:
    """(expected sha256, where it came from); ("", "") if not checked."""
    if given.lower() == "none":
        return "", ""
    if given:
        return given.lower(), "overlayboot.lower.sha256"
    if target.scheme == "https" and not target.ca:
        raise FetchError(
            f"{target.url}: an https image needs its sha256 on the command line, or a CA",
            "give overlayboot.lower.sha256=HEX (or =none to boot it unchecked), or the CA "
            "that signed the server's certificate (overlayboot.lower.ca=)",
        )
    side = replace(target, path=target.path + ".sha256")
    client = RangeClient(side, patience=patience)
    try:
        size = client.head().size
        text = client.read(0, min(size, 4096))
    except HttpError as exc:
        raise FetchError(
            f"no checksum for the image: {exc.message}",
            "put IMAGE.sha256 beside it (sha256sum output), or give overlayboot.lower.sha256=",
        ) from None
    finally:
        client.close()
    word = (text.split() or [b""])[0]
    if not _HEX64.match(word):
        raise FetchError(f"{side.url} holds no sha256 (its first word is {word[:70]!r})")
    return word.decode().lower(), side.url


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62


def _copy(client: RangeClient, size: int, dest: Path) -> str:
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        offset = 0
        while offset < size:
            data = client.read(offset, CHUNK)
            if not data:
                raise FetchError(f"{client.target.url}: no data at byte {offset} of {size}")
            digest.update(data)
            out.write(data)
            offset += len(data)
    return digest.hexdigest()


def fetch(
    url: str, dest: Path, address: str, sha256: str = "", patience: float = 30, ca: str = ""
) -> Fetched:
    """Fetch ``url`` whole into ``dest`` and check it; :class:`FetchError` otherwise."""
    target = target_of(url, address, ca)
    want, source = expected_sum(target, sha256, patience)
    client = RangeClient(target, patience=patience)
    start = time.monotonic()
    try:
        size = client.head().size
        free = mem_available()
        if size + RESERVE > free:
            raise FetchError(
                f"the image {url} ({size >> 20} MiB) does not fit in the memory available "
                f"({free >> 20} MiB, {RESERVE >> 20} MiB kept free)",
                "give the machine more memory, or use overlayboot.lower.lazy or NFS",
            )
        got = _copy(client, size, dest)
    except HttpError as exc:
        dest.unlink(missing_ok=True)
        raise FetchError(exc.message, exc.hint) from None
    except OSError as exc:
        dest.unlink(missing_ok=True)
        raise FetchError(f"cannot write the image to {dest}: {exc.strerror}") from None
    finally:
        client.close()
    if want and got != want:
        dest.unlink(missing_ok=True)
        raise FetchError(
            f"the image {url} has sha256 {got}, expected {want} (from {source})",
            "the image is corrupt or not the one meant: rebuild or re-copy it and its .sha256",
        )
    return Fetched(size, got, time.monotonic() - start, source)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m overlayboot.net.fetch")
    ap.add_argument("url")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--address", default="")
    ap.add_argument("--sha256", default="")
    ap.add_argument("--patience", type=float, default=30)
    ap.add_argument("--ca", default="")
    args = ap.parse_args(argv)
    try:
        got = fetch(args.url, args.dest, args.address, args.sha256, args.patience, args.ca)
    except FetchError as exc:
        print(f"ERROR: {exc.line()}", file=sys.stderr)
        return 1
    rate = got.size / max(got.seconds, 1e-3) / (1 << 20)
    how = f"checked against {got.checked_against}" if got.checked_against else "not checked"
    print(f"fetched {got.size >> 20} MiB in {got.seconds:.1f} s ({rate:.1f} MiB/s), sha256 {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
