"""``overlayboot upper check|seal``: report an upper layer's partial copy-ups, or make them whole.

A partial copy-up (README, "Partial copy-up") is not kernel overlayfs format:
``seal`` turns each into a whole copy, so the upper can be mounted by kernel
overlayfs again; ``check`` lists them and validates their maps and lower files.
Both find each file's lower file under ``--lower`` (the layers in mount order)
or, without it, under the layer root the daemon recorded in the map.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from overlayboot import mounttable
from overlayboot.errors import ConfigError, UpperError
from overlayboot.fs import cloneseal, cowseal, seal, upperlock
from overlayboot.fs.config import split_lowerdir

Echo = Callable[[str], None]


def _dir(path: Path, what: str) -> bytes:
    try:
        if not path.is_dir():
            raise ConfigError(f"{what} {path} is not a directory", "give the right path")
        return os.fsencode(path.resolve())
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}", "check its permissions") from None


def _lowers(lower: str | None) -> list[bytes] | None:
    if lower is None:
        return None
    return [_dir(p, "lower dir") for p in split_lowerdir(lower)]


def users(upper: bytes) -> list[str]:
    """What has ``upper`` in use: kernel overlay mounts, processes holding it (a daemon).

    Best effort: without /proc nothing is found."""
    found: list[str] = []
    try:
        pids = os.listdir("/proc")
    except OSError:
        return found
    upper_opt = "upperdir=" + os.fsdecode(upper)
    for m in mounttable.mounts():
        if m.fstype == "overlay" and upper_opt in m.super_options:
            found.append(f"a kernel overlay mount ({m.target})")
    me = str(os.getpid())
    for pid in pids:
        if not pid.isdigit() or pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.fsencode(os.readlink(f"/proc/{pid}/fd/{fd}")) == upper:
                    found.append(f"process {pid}")
                    break
            except OSError:
                continue
    return found


def _describe(f: seal.Finding) -> str:
    if f.cmap is None:
        return ""
    cs = f.cmap.chunk_size
    total = f.cmap.chunks_of(f.size)
    return (
        f"{f.cmap.mapped_count()} of {total} chunks of {cs // 1024} KiB in the upper; "
        f"lower {os.fsdecode(f.lower or f.cmap.lower.path)}"
    )


def _report(findings: Iterable[seal.Finding], done: str, failed: str, echo: Echo) -> int:
    """One line per partial file (``done`` or ``failed`` first); returns how many failed."""
    bad = 0
    for f in findings:
        rel = os.fsdecode(f.rel)
        if f.problem is None:
            echo(f"{done:<8} {rel}  {_describe(f)}")
        else:
            bad += 1
            echo(f"{failed:<8} {rel}  {f.problem}")
    return bad


def _fail_if(bad: int, what: str) -> None:
    if bad:
        raise UpperError(
            f"{bad} partial copy-ups {what}",
            "their lower file changed or is missing, or their map is corrupt: see above",
        )


def _walk(root: bytes, lowers: list[bytes] | None, *, seal_them: bool) -> list[seal.Finding]:
    """Every partial copy-up of the upper at ``root``; a directory that cannot be read is
    an UpperError naming it (nothing is sealed past it)."""
    try:
        return list(seal.walk(root, lowers, seal=seal_them))
    except OSError as exc:
        where = os.fsdecode(exc.filename) if exc.filename is not None else os.fsdecode(root)
        raise UpperError(
            f"cannot read {where}: {exc.strerror}",
            "check the upper filesystem (fsck) and its permissions",
        ) from None


def _unshare(root: bytes, lowers: list[bytes] | None) -> int:
    """Clones made what kernel overlayfs can show: clones of lower directories
    materialized (fs/cloneseal.py), files shared with clones copied (fs/cowseal.py)."""
    try:
        for names in seal.namespaces():
            cloneseal.materialize_all(root, lowers, names)
        return cowseal.unshare_all(root, seal.namespaces())
    except OSError as exc:
        where = os.fsdecode(exc.filename) if exc.filename is not None else os.fsdecode(root)
        raise UpperError(
            f"cannot read {where}: {exc.strerror}",
            "check the upper filesystem (fsck), its free space and its permissions",
        ) from None


def check(upper: Path, lower: str | None, echo: Echo) -> None:
    """List the partial copy-ups; UpperError if any of them cannot be read."""
    findings = _walk(_dir(upper, "upper dir"), _lowers(lower), seal_them=False)
    bad = _report(findings, "partial", "PROBLEM", echo)
    echo(f"{len(findings)} partial copy-ups in {upper}, {bad} with a problem")
    _fail_if(bad, "cannot be read as they were written")


def seal_upper(upper: Path, lower: str | None, echo: Echo) -> None:
    """Make every partial copy-up whole; UpperError if some could not be."""
    root = _dir(upper, "upper dir")
    lowers = _lowers(lower)
    try:
        lock = upperlock.lock_upper(Path(os.fsdecode(root)))  # no daemon starts meanwhile
    except upperlock.UpperInUse:
        raise ConfigError(
            f"upper dir {upper} is in use by a running overlayboot daemon",
            "unmount the overlay first, or mount it with --seal-on-umount",
        ) from None
    try:
        busy = users(root)
        if busy:
            raise ConfigError(
                f"upper dir {upper} is in use by {', '.join(busy)}",
                "unmount the overlay first, or mount it with --seal-on-umount",
            )
        unshared = _unshare(root, lowers)
        findings = _walk(root, lowers, seal_them=True)
    finally:
        os.close(lock)
    if unshared:
        echo(f"{unshared} files shared with clones in {upper} copied")
    bad = _report(findings, "sealed", "FAILED", echo)
    echo(f"{len(findings) - bad} partial copy-ups in {upper} made whole, {bad} left partial")
    _fail_if(bad, "could not be sealed")
