"""Mount-option parsing and the pre-mount checks of the layers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from overlayboot.errors import ConfigError, MountError, UsageError
from overlayboot.fs.config import (
    OverlayConfig,
    check_config,
    check_mountpoint,
    parse_mount_options,
    split_lowerdir,
)


def test_parse_kernel_option_syntax() -> None:
    ours, rest = parse_mount_options(["lowerdir=/a:/b,upperdir=/u,workdir=/w,allow_other", "ro"])
    assert ours == {"lowerdir": "/a:/b", "upperdir": "/u", "workdir": "/w"}
    assert rest == frozenset({"allow_other", "ro"})


def test_escaped_comma_and_colon() -> None:
    ours, _ = parse_mount_options([r"lowerdir=/a\,b:/c\:d,upperdir=/u,workdir=/w"])
    assert split_lowerdir(ours["lowerdir"]) == (Path("/a,b"), Path("/c:d"))


def test_option_without_value() -> None:
    with pytest.raises(UsageError, match="lowerdir"):
        parse_mount_options(["lowerdir="])


def test_empty_layer() -> None:
    with pytest.raises(UsageError):
        split_lowerdir("/a::/b")


def _cfg(tmp: Path, **kw: Path) -> OverlayConfig:
    base = {"lower": tmp / "l", "upper": tmp / "u", "work": tmp / "w"}
    base.update(kw)
    for p in base.values():
        if p.parent == tmp and p.name in ("l", "u", "w"):
            p.mkdir(exist_ok=True)
    return OverlayConfig(lowers=(base["lower"],), upper=base["upper"], work=base["work"])


def test_good_config(tmp_path: Path) -> None:
    cfg = check_config(_cfg(tmp_path))
    assert cfg.lowers == ((tmp_path / "l").resolve(),)
    assert list((tmp_path / "w").iterdir()) == []  # the probe cleaned up after itself


def test_missing_lower(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"lower dir .* does not exist"):
        check_config(_cfg(tmp_path, lower=tmp_path / "missing"))


def test_missing_upper(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"upper dir .* does not exist"):
        check_config(_cfg(tmp_path, upper=tmp_path / "nope"))


def test_upper_equals_lower(tmp_path: Path) -> None:
    (tmp_path / "l").mkdir()
    with pytest.raises(ConfigError, match="overlap"):
        check_config(_cfg(tmp_path, upper=tmp_path / "l"))


def test_work_inside_upper(tmp_path: Path) -> None:
    (tmp_path / "u" / "w").mkdir(parents=True)
    with pytest.raises(ConfigError, match="overlap"):
        check_config(_cfg(tmp_path, work=tmp_path / "u" / "w"))


def test_lower_not_a_dir(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        check_config(_cfg(tmp_path, lower=tmp_path / "f"))


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs another filesystem")
def test_work_on_other_filesystem(tmp_path: Path) -> None:
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is on the same filesystem")
    other = Path(os.environ.get("TMPDIR_OTHER", "/dev/shm")) / f"ob-work-{os.getpid()}"
    other.mkdir()
    try:
        with pytest.raises(ConfigError, match="not on the same filesystem"):
            check_config(_cfg(tmp_path, work=other))
    finally:
        other.rmdir()


def test_mountpoint_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        check_mountpoint(tmp_path / "nope")


def test_mountpoint_busy() -> None:
    with pytest.raises(MountError, match="busy"):
        check_mountpoint(Path("/proc"))
