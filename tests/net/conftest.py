"""Fixtures of the network boot tests: a small squashfs image with a known tree, and its
sha256 file beside it, in a directory a server can serve."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest

SMALL = "etc/motd"
BIG_FILES = 8  # of 1 MiB each, incompressible


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("lowertree")
    rng = random.Random(13)
    (tree / "etc").mkdir()
    (tree / SMALL).write_text("served lazily\n")
    (tree / "big").mkdir()
    for i in range(BIG_FILES):
        (tree / "big" / f"blob{i}").write_bytes(rng.randbytes(1 << 20))
    return tree


@pytest.fixture(scope="session")
def served(image_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A docroot with image.squashfs (of ``image_tree``) and image.squashfs.sha256."""
    root = tmp_path_factory.mktemp("docroot")
    image = root / "image.squashfs"
    subprocess.run(
        ["mksquashfs", str(image_tree), str(image), "-noappend", "-quiet", "-no-progress"],
        check=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"},
    )
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    (root / "image.squashfs.sha256").write_text(f"{digest}  image.squashfs\n")
    return root
