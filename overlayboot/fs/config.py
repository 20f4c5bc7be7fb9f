"""What an overlay is made of (lower layers, upper, work dir) and the checks done before mounting.

Every check failure is a :class:`ConfigError` or :class:`MountError` with one
line saying what is wrong and what to do.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from overlayboot.errors import ConfigError, MountError, UsageError
from overlayboot.fs import sysio
from overlayboot.fs.chunkpolicy import FLAG_OPTIONS, VALUE_OPTIONS, CopyUpPolicy
from overlayboot.fs.whiteout import XattrNames, default_namespace

WORK_SUBDIR = "overlayboot"  # ours, beside the kernel's work/ and index/
NO_PASSTHROUGH = "nopassthrough"  # -o flag: no FUSE passthrough (every read through the daemon)


CACHE_FOREVER = 365 * 86400.0
"""The default entry/attribute timeout: the kernel never asks again on its own. Only the daemon
changes the layers, and the kernel updates its caches from the replies to the requests that
change them. Needed at shutdown too: systemd-shutdown SIGSTOPs every process, the daemon
included, and walks /proc; a revalidation of "/" or "/proc" then would hang the machine."""


@dataclass(frozen=True)
class OverlayConfig:
    """The layers of one overlay. ``lowers[0]`` is the top lower layer."""

    lowers: tuple[Path, ...]
    upper: Path
    work: Path
    xattrs: XattrNames = field(default_factory=default_namespace)
    timeout: float = CACHE_FOREVER
    fsname: str = "overlayboot"
    options: frozenset[str] = frozenset()
    copy_up: CopyUpPolicy = field(default_factory=CopyUpPolicy)
    seal_on_umount: bool = False  # make every partial copy-up whole at unmount
    passthrough: bool = True  # FUSE passthrough for whole files, where kernel and libfuse allow

    @property
    def scratch(self) -> Path:
        """overlayboot's own area in the work dir: temporary copy-ups, pid file, log."""
        return self.work / WORK_SUBDIR


def parse_mount_options(opts: Iterable[str]) -> tuple[dict[str, str], frozenset[str]]:
    """Split ``-o`` options: the overlay's own (lowerdir, upperdir, workdir, the copy-up
    policy's) and the rest (for FUSE). A flag of ours maps to ``""``."""
    ours: dict[str, str] = {}
    rest: set[str] = set()
    for chunk in opts:
        for opt in _split_options(chunk):
            key, sep, value = opt.partition("=")
            if key in ("lowerdir", "upperdir", "workdir", *VALUE_OPTIONS):
                if not sep or not value:
                    raise UsageError(f"option {key} needs a value: -o {key}=VALUE")
                ours[key] = value
            elif key in (*FLAG_OPTIONS, NO_PASSTHROUGH) and not sep:
                ours[key] = ""
            elif opt:
                rest.add(opt)
    return ours, frozenset(rest)


def _split_options(chunk: str) -> list[str]:
    """Split on commas not escaped with a backslash (as overlayfs does)."""
    out: list[str] = []
    cur: list[str] = []
    it = iter(chunk)
    for ch in it:
        if ch == "\\":
            nxt = next(it, "")
            cur.append(nxt if nxt == "," else ch + nxt)
        elif ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [o for o in out if o]


def split_lowerdir(value: str) -> tuple[Path, ...]:
    """``A:B:C`` (``\\:`` escapes a colon) -> paths, top layer first."""
    parts: list[str] = []
    cur: list[str] = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            cur.append(next(it, ""))
        elif ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    if any(not p for p in parts):
        raise UsageError(f"empty layer in lower dir list {value!r}")
    return tuple(Path(p) for p in parts)


def _is_within(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _require_dir(path: Path, what: str) -> Path:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist", "create it or fix the path") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {path} is not a directory")
    return path.resolve()


def check_config(cfg: OverlayConfig) -> OverlayConfig:
    """Validate the layers; return the config with absolute, resolved paths."""
    if not cfg.lowers:
        raise UsageError("no lower layer given: --lower DIR[:DIR...]")
    lowers = tuple(_require_dir(p, "lower dir") for p in cfg.lowers)
    upper = _require_dir(cfg.upper, "upper dir")
    work = _require_dir(cfg.work, "work dir")
    for low in lowers:
        if _is_within(upper, low) or _is_within(low, upper):
            raise ConfigError(
                f"upper dir {upper} and lower dir {low} overlap",
                "use separate directory trees",
            )
    if _is_within(work, upper) or _is_within(upper, work):
        raise ConfigError(
            f"work dir {work} and upper dir {upper} overlap",
            "use two sibling directories on the same filesystem",
        )
    if os.stat(work).st_dev != os.stat(upper).st_dev:
        raise ConfigError(
            f"work dir {work} is not on the same filesystem as upper dir {upper}",
            "put both on the upper filesystem",
        )
    if not os.access(upper, os.W_OK) or not os.access(work, os.W_OK):
        raise ConfigError(f"upper dir {upper} or work dir {work} is not writable")
    _probe_upper_fs(work, cfg.xattrs)
    return replace(cfg, lowers=lowers, upper=upper, work=work)


def _full(work: Path) -> ConfigError:
    return ConfigError(
        f"the upper filesystem at {work} is full (no free space or no free inodes)",
        "free some space on it or make it larger",
    )


def _probe_upper_fs(work: Path, names: XattrNames) -> None:
    """The upper filesystem must support xattrs in our namespace and d_type, and have room
    for the daemon's own dirs."""
    probe_dir = work / f".overlayboot-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe_dir.mkdir()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _full(work) from None
        raise ConfigError(f"cannot write in work dir {work}: {exc.strerror}") from None
    try:
        _probe_in(probe_dir, work, names)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _full(work) from None
        raise ConfigError(f"cannot write in work dir {work}: {exc.strerror}") from None
    finally:
        for child in probe_dir.iterdir():
            child.unlink()
        probe_dir.rmdir()


def _probe_in(probe_dir: Path, work: Path, names: XattrNames) -> None:
    try:
        os.setxattr(probe_dir, f"{names.prefix}.overlayboot.probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise ConfigError(
            f"the upper filesystem at {work} does not support {names.prefix}.* xattrs "
            f"({exc.strerror})",
            "use ext4, xfs, btrfs or tmpfs for the upper layer",
        ) from None
    (probe_dir / "f").touch()
    (probe_dir / "d").mkdir()  # the daemon needs two dirs of its own in work (scratch, index)
    (probe_dir / "d").rmdir()
    if not sysio.dir_has_dtype(os.fsencode(probe_dir)):
        raise ConfigError(
            f"the upper filesystem at {work} does not report d_type",
            "use ext4, xfs (ftype=1), btrfs or tmpfs for the upper layer",
        )


def check_mountpoint(mnt: Path) -> Path:
    """The mount point must be an existing directory that is not already a mount point."""
    mnt_abs = _require_dir(mnt, "mount point")
    if os.path.ismount(mnt_abs) and str(mnt_abs) != "/":
        raise MountError(
            f"mount point {mnt_abs} is busy: something is already mounted there",
            f"unmount it first: overlayboot umount {mnt_abs}",
        )
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse does not exist", "load the fuse module: modprobe fuse")
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
        os.close(fd)
    except OSError as exc:
        raise MountError(f"cannot open /dev/fuse: {exc.strerror}") from None
    return mnt_abs
