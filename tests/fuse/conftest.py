"""Fixtures for the mounted tests: a small two-layer lower tree, mounted as an overlay.

``ovl`` is a mounted :class:`Ovl` over the standard tree (see :func:`build_standard`),
overlayboot unless the test parametrizes it indirectly::

    @pytest.mark.parametrize("ovl", ["overlayboot", "kernel"], indirect=True)

so that one test body states a semantic and checks kernel overlayfs agrees (helpers.BOTH
also runs it on ``overlayboot-chunked``, where every copy-up is partial: tests/mounts.py).
``ovl_factory`` builds one with other options (layers on tmpfs, extra lower
content, not mounted yet). Every overlay checks at teardown that its lower
layers were not modified in any way (content, metadata, xattrs, ctime).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from overlayboot.fs.daemon import pid_file
from tests.fuse.helpers import fingerprint, set_times, tmpfs
from tests.mounts import have_kernel_overlay, overlay_mount, overlayboot_argv
from tests.waiting import wait_exit

T0 = 1_600_000_000_123_456_789  # a fixed mtime (ns) for every lower entry


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    os.chmod(path, mode)
    return path


def build_standard(l1: Path, l2: Path, upper: Path) -> None:
    """The standard tree. lower1 is the top lower layer, lower2 the bottom one.

    lower1: top.txt shared.txt triple.txt fod(file) dir/{a1.txt,common,sub/deep.txt,hl_b}
            only1/x meta/inner/f (odd owner, mode, times, user xattr) suid sgid sgiddir/
            hl_a (= dir/hl_b) link_to_top -> top.txt secret (0600) pub/ (0777) fifo
    lower2: bottom.txt shared.txt triple.txt fod/inner dir/{a2.txt,common} only2/y
    upper:  triple.txt upper_only.txt
    """
    _write(l1 / "top.txt", "top\n")
    _write(l1 / "shared.txt", "shared from lower1\n")
    _write(l1 / "triple.txt", "triple from lower1\n")
    _write(l1 / "fod", "file over dir\n")
    _write(l1 / "dir/a1.txt", "a1\n")
    _write(l1 / "dir/common", "common from lower1\n")
    _write(l1 / "dir/sub/deep.txt", "deep\n")
    _write(l1 / "only1/x", "x\n")
    f = _write(l1 / "meta/inner/f", b"meta file\n" * 100, 0o640)
    os.setxattr(f, "user.color", b"blue")
    os.chown(f, 1234, 2345)
    os.setxattr(l1 / "meta/inner", "user.dirattr", b"inner")
    os.chown(l1 / "meta/inner", 3333, 4444)
    os.chmod(l1 / "meta/inner", 0o711)
    os.chown(l1 / "meta", 1111, 2222)
    os.chmod(l1 / "meta", 0o750)
    _write(l1 / "suid", "#!/bin/sh\nexit 0\n", 0o755)
    os.chmod(l1 / "suid", 0o4755)
    _write(l1 / "sgid", "#!/bin/sh\nexit 0\n", 0o755)
    os.chown(l1 / "sgid", 0, 100)
    os.chmod(l1 / "sgid", 0o2755)
    (l1 / "sgiddir").mkdir()
    os.chown(l1 / "sgiddir", 0, 4242)
    os.chmod(l1 / "sgiddir", 0o2775)
    _write(l1 / "hl_a", "hardlinked\n")
    os.link(l1 / "hl_a", l1 / "dir/hl_b")
    os.symlink("top.txt", l1 / "link_to_top")
    _write(l1 / "secret", "secret\n", 0o600)
    (l1 / "pub").mkdir()
    os.chmod(l1 / "pub", 0o777)
    os.mkfifo(l1 / "fifo", 0o644)

    _write(l2 / "bottom.txt", "bottom\n")
    _write(l2 / "shared.txt", "shared from lower2\n")
    _write(l2 / "triple.txt", "triple from lower2\n")
    _write(l2 / "fod/inner", "inner\n")
    _write(l2 / "dir/a2.txt", "a2\n")
    _write(l2 / "dir/common", "common from lower2\n")
    _write(l2 / "only2/y", "y\n")

    _write(upper / "triple.txt", "triple from upper\n")
    _write(upper / "upper_only.txt", "upper only\n")
    for layer in (l1, l2):
        fix_times(layer)
        os.chmod(layer, 0o755)


def fix_times(root: Path) -> None:
    """Give every entry under ``root`` a fixed, distinct mtime (children before parents)."""
    entries: list[str] = []
    for dirpath, dirs, files in os.walk(root):
        entries.extend(os.path.join(dirpath, n) for n in sorted([*dirs, *files]))
    for i, path in enumerate(sorted(entries, key=lambda p: -p.count("/"))):
        set_times(path, T0 + i * 1_000_000_007)
    set_times(root, T0)


class Ovl:
    """One overlay under test: its layers, its mount point and how to (re)mount it."""

    def __init__(self, kind: str, base: Path, upper_fs: Path | None = None) -> None:
        self.kind = kind
        self.base = base
        self.lower1 = base / "lower1"
        self.lower2 = base / "lower2"
        ufs = upper_fs or base
        self.upper = ufs / "upper"
        self.work = ufs / "work"
        self.mnt = base / "mnt"
        for d in (self.lower1, self.lower2, self.upper, self.work, self.mnt):
            d.mkdir(parents=True, exist_ok=True)
        self._mount: contextlib.ExitStack | None = None
        self.extra_args: tuple[str, ...] = ()

    @property
    def lowers(self) -> list[Path]:
        return [self.lower1, self.lower2]

    @property
    def scratch(self) -> Path:
        """overlayboot's own area in the work dir."""
        return self.work / "overlayboot"

    @property
    def log(self) -> Path:
        return self.work.parent / f"{self.work.name}.daemon.log"

    def m(self, rel: str = "") -> str:
        """A path in the merged view."""
        return str(self.mnt / rel) if rel else str(self.mnt)

    def u(self, rel: str) -> str:
        """A path in the upper layer."""
        return str(self.upper / rel)

    def mount(self) -> None:
        assert self._mount is None
        stack = contextlib.ExitStack()
        stack.enter_context(
            overlay_mount(self.kind, self.lowers, self.upper, self.work, self.mnt, self.extra_args)
        )
        self._mount = stack

    def umount(self) -> None:
        if self._mount is not None:
            stack, self._mount = self._mount, None
            stack.close()

    def remount(self) -> None:
        self.umount()
        self.mount()

    def mount_detached(self) -> int:
        """Mount overlayboot with its daemon detached (no ``-f``); return the daemon's pid.

        Unmounted by :meth:`kill_daemon`, not by ``umount``."""
        argv = overlayboot_argv(self.lowers, self.upper, self.work, self.mnt)
        argv = [a for a in argv if a != "-f"] + ["--log", str(self.log), *self.extra_args]
        subprocess.run(argv, check=True, timeout=60)
        return int(pid_file(self.mnt).read_text())

    def kill_daemon(self, pid: int) -> None:
        """kill -9 the daemon, wait until it is gone, then lazily unmount its dead mount."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_exit(pid, timeout=60)
        subprocess.run(["umount", "-l", str(self.mnt)], check=True)

    @property
    def mounted(self) -> bool:
        return self._mount is not None


OvlFactory = Callable[..., Ovl]


@pytest.fixture(autouse=True)
def _fixed_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def ovl_factory() -> Iterator[OvlFactory]:
    """``make(kind="overlayboot", *, standard=True, prepare=None, upper_size=None,
    layer_size=None, mount=True)`` -> a new :class:`Ovl`.

    ``prepare(ovl)`` adds to the layers before mounting; ``upper_size`` puts the
    upper and work dirs on a tmpfs of that size; ``layer_size`` puts each lower
    layer and the upper on tmpfs of their own (distinct filesystems).
    """
    made: list[tuple[Ovl, dict[str, Any]]] = []
    stack = contextlib.ExitStack()
    bases: list[Path] = []

    def make(
        kind: str = "overlayboot",
        *,
        standard: bool = True,
        prepare: Callable[[Ovl], None] | None = None,
        upper_size: str | None = None,
        layer_size: str | None = None,
        mount: bool = True,
    ) -> Ovl:
        if kind == "kernel" and not have_kernel_overlay():
            pytest.skip("kernel overlayfs is not available")
        # under /tmp with mode 0755 so that an unprivileged uid can reach the mount
        base = Path(tempfile.mkdtemp(prefix="ovlsem-", dir="/tmp"))
        os.chmod(base, 0o755)
        bases.append(base)
        upper_fs = None
        if upper_size is not None:
            upper_fs = stack.enter_context(tmpfs(base / "upperfs", upper_size))
        if layer_size is not None:
            upper_fs = stack.enter_context(tmpfs(base / "upperfs", layer_size))
            stack.enter_context(tmpfs(base / "lower1", layer_size))
            stack.enter_context(tmpfs(base / "lower2", layer_size))
        o = Ovl(kind, base, upper_fs)
        if standard:
            build_standard(o.lower1, o.lower2, o.upper)
        if prepare is not None:
            prepare(o)
        prints = {str(p): fingerprint(p) for p in o.lowers}
        made.append((o, prints))
        if mount:
            o.mount()
        return o

    try:
        yield make
    finally:
        try:
            for o, prints in reversed(made):
                o.umount()
                for p, before in prints.items():
                    after = fingerprint(Path(p))
                    assert after == before, f"lower layer {p} was modified"
        finally:
            stack.close()
            for base in bases:
                if not any(os.path.ismount(os.path.join(base, d)) for d in os.listdir(base)):
                    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def ovl(request: pytest.FixtureRequest, ovl_factory: OvlFactory) -> Ovl:
    """The standard tree mounted; ``request.param`` (indirect) picks the kind."""
    kind = getattr(request, "param", "overlayboot")
    return ovl_factory(kind)
