"""The media check at boot: every file the medium's SHA256SUMS lists, read and compared.

hooks/25-check.sh runs ``python -m overlayboot.mediacheck ROOT IMAGE`` with
``overlayboot.check`` (or dracut's ``rd.live.check``, live-boot's ``verify-checksums``,
archiso's ``checksum``): ROOT is where the medium (or the ISO file found with ``findiso``)
is mounted, IMAGE the squashfs the boot will mount, relative to it. ``ROOT/SHA256SUMS``
holds ``sha256sum(1)`` lines (``HASH  PATH`` or ``HASH *PATH``, paths relative to ROOT).

Progress goes to stdout, one line per file and one at most every
:data:`PROGRESS_EVERY` seconds in between (``overlayboot: checking the medium: 37% …``),
then a summary line. Exit status: 0 every file matches; 1 a file does not match, is
missing or unreadable, or SHA256SUMS is malformed (one line on stderr saying which and
what to do); 3 there is no SHA256SUMS (a WARNING line on stdout: nothing to check
against, the boot goes on).
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from overlayboot.errors import OverlaybootError

SUMS = "SHA256SUMS"
PROGRESS_EVERY = 2.0  # seconds between progress lines within a file
CHUNK = 1 << 20
NO_SUMS = 3
_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
_FIX = "the medium is damaged or was changed: write it again, or boot without overlayboot.check"


class MediaCheckError(OverlaybootError):
    """The medium does not match its SHA256SUMS, or the list cannot be read."""


@dataclass(frozen=True)
class Listed:
    """One line of SHA256SUMS: a path relative to the medium's root and its sha256."""

    path: str
    digest: str


@dataclass(frozen=True)
class Checked:
    """What a check read: how many files, how many bytes, in how many seconds."""

    files: int
    size: int
    seconds: float
    image_listed: bool


def parse_sums(text: str) -> tuple[Listed, ...]:
    """SHA256SUMS -> its lines; a line that is not ``HASH  PATH`` is an error."""
    out: list[Listed] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        m = _LINE.match(raw)
        if m is None:
            raise MediaCheckError(f"{SUMS} line {number} is not 'SHA256  PATH': {raw[:60]!r}", _FIX)
        path = PurePosixPath(m.group(2).removeprefix("./"))
        if path.is_absolute() or ".." in path.parts:
            raise MediaCheckError(f"{SUMS} line {number} names a path outside the medium: {path}")
        out.append(Listed(str(path), m.group(1).lower()))
    return tuple(out)


def _sizes(root: Path, listed: tuple[Listed, ...]) -> list[int]:
    sizes = []
    for item in listed:
        try:
            sizes.append((root / item.path).stat().st_size)
        except OSError as exc:
            why = "is missing" if isinstance(exc, FileNotFoundError) else f"unreadable: {exc}"
            raise MediaCheckError(
                f"the medium does not match its {SUMS}: {item.path} {why}", _FIX
            ) from None
    return sizes


def _mib(n: int) -> str:
    return f"{n / 1048576:.0f} MiB"


def _digest(path: Path, name: str, read: Callable[[int], None]) -> str:
    """The sha256 of a file; ``read`` is told of every chunk's length."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                read(len(chunk))
    except OSError as exc:
        why = f"{name} cannot be read ({exc.strerror})"
        raise MediaCheckError(f"the medium does not match its {SUMS}: {why}", _FIX) from None
    return h.hexdigest()


@dataclass
class _Progress:
    """Bytes read so far, and a line through ``say`` at most every PROGRESS_EVERY s."""

    total: int
    say: Callable[[str], None]
    clock: Callable[[], float]
    done: int = 0
    last: float = 0.0

    def read(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= PROGRESS_EVERY:
            self.last = now
            percent = 100 * self.done // max(self.total, 1)
            self.say(f"checking the medium: {percent}% ({_mib(self.done)} of {_mib(self.total)})")


def check(
    root: Path,
    image: str,
    say: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
) -> Checked:
    """Read every listed file under ``root`` and compare; progress lines through ``say``."""
    try:
        text = (root / SUMS).read_text(errors="replace")
    except OSError as exc:
        raise MediaCheckError(f"cannot read {SUMS} on the medium: {exc.strerror}", _FIX) from None
    listed = parse_sums(text)
    sizes = _sizes(root, listed)
    start = clock()
    progress = _Progress(sum(sizes), say, clock, last=start)
    for n, (item, size) in enumerate(zip(listed, sizes, strict=True), 1):
        say(f"checking the medium: {n}/{len(listed)} {item.path} ({_mib(size)})")
        digest = _digest(root / item.path, item.path, progress.read)
        if digest != item.digest:
            raise MediaCheckError(
                f"the medium does not match its {SUMS}: {item.path} has sha256 "
                f"{digest[:16]}..., {SUMS} says {item.digest[:16]}...",
                _FIX,
            )
    image_listed = image.strip("/") in {item.path for item in listed}
    return Checked(len(listed), sum(sizes), clock() - start, image_listed)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m overlayboot.mediacheck ROOT IMAGE", file=sys.stderr)
        return 2
    root, image = Path(args[0]), args[1]

    def say(line: str) -> None:
        print(f"overlayboot: {line}", flush=True)

    if not (root / SUMS).exists():
        say(f"WARNING: overlayboot.check: no {SUMS} on the medium: nothing to check it against")
        return NO_SUMS
    try:
        done = check(root, image, say)
    except MediaCheckError as exc:
        print(exc.line(), file=sys.stderr, flush=True)
        return 1
    say(f"medium check: {done.files} files, {_mib(done.size)}, match {SUMS} ({done.seconds:.1f} s)")
    if not done.image_listed:
        say(f"WARNING: the image {image} is not listed in {SUMS}: it was not checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
