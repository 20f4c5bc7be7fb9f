"""image.toml -> ImageSpec: defaults, paths relative to the file, unknown keys refused."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from mkimage.config import ImageSpec, load_spec, spec_from_dict
from overlayboot.errors import UsageError

EXAMPLE = """
label = "MYLIVE"
output = "out"
source_date_epoch = 1690000000

[kernel]
series = "6.1"

[rootfs]
source = "myroot.tar.gz"
extra_files = { "/etc/motd" = "files/motd" }

[initramfs]
compression = "gzip"
params = ["overlayboot.timeout=10"]

[squashfs]
level = 3

[boot]
params = ["quiet"]
timeout = 0
serial = false

[usb]
persistence_size = "1G"
"""


def test_defaults() -> None:
    spec = spec_from_dict({})
    assert spec == ImageSpec()
    assert spec.label == "OVERLAYBOOT" and spec.rootfs.source == "busybox"


def test_example(tmp_path: Path) -> None:
    (tmp_path / "image.toml").write_text(EXAMPLE)
    spec = load_spec(tmp_path / "image.toml")
    assert spec.label == "MYLIVE"
    assert spec.output == tmp_path / "out"
    assert spec.kernel.series == "6.1"
    assert spec.rootfs.source == "path" and spec.rootfs.path == tmp_path / "myroot.tar.gz"
    assert spec.rootfs.extra_files == ((PurePosixPath("/etc/motd"), tmp_path / "files/motd"),)
    assert spec.initramfs_compression == "gzip"
    assert spec.initramfs_params == ("overlayboot.timeout=10",)
    assert spec.squashfs_level == 3
    assert (spec.boot_params, spec.timeout, spec.serial) == (("quiet",), 0, False)
    assert spec.persistence_size == "1G"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"lable": "X"}, "unknown setting lable"),
        ({"boot": {"timout": 1}}, "unknown setting boot.timout"),
        ({"boot": {"timeout": "1"}}, "boot.timeout must be a int"),
        ({"boot": {"serial": 1}}, "boot.serial must be a bool"),
        ({"boot": {"params": [1]}}, "must be a list of strings"),
        ({"kernel": "6.1"}, r"\[kernel\] must be a table"),
        ({"initramfs": {"compression": "lz4"}}, "initramfs.compression = 'lz4' is not one of"),
    ],
)
def test_bad_settings(data: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        spec_from_dict(data)


def test_bad_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        load_spec(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("label = \n")
    with pytest.raises(UsageError, match=r"bad\.toml"):
        load_spec(tmp_path / "bad.toml")
