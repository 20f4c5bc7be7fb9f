"""Debian packages fetched with ``apt-get download`` and unpacked with ``dpkg -x``."""

from __future__ import annotations

import shutil
from pathlib import Path

from overlayboot.run import run


def download_and_extract(spec: str, debs: Path, root: Path) -> Path:
    """``apt-get download SPEC`` (``PKG`` or ``PKG=VERSION``) into ``debs``, unpacked into
    a fresh ``ROOT.tmp`` beside ``root``; returns that directory for the caller to finish
    and rename to ``root`` (so ``root`` appears whole or not at all)."""
    pkg = spec.partition("=")[0]
    debs.mkdir(parents=True, exist_ok=True)
    run(["apt-get", "download", spec], cwd=debs)
    deb = max(debs.glob(f"{pkg}_*.deb"), key=lambda p: p.stat().st_mtime)
    tmp = root.with_name(root.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    run(["dpkg", "-x", deb, tmp])
    return tmp
