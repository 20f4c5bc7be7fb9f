"""Layer lookup, whiteout detection and readdir merge on real directory trees, without FUSE."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from overlayboot.fs.layers import LowerLayer
from overlayboot.fs.lookup import lookup, lower_positive
from overlayboot.fs.readdir import merged_names
from overlayboot.fs.whiteout import (
    XattrNames,
    decode_origin,
    encode_origin,
    is_whiteout_stat,
    make_whiteout,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="whiteouts (mknod) and trusted.* need root")
NAMES = XattrNames("trusted" if ROOT else "user")


def b(p: Path) -> bytes:
    return os.fsencode(p)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    top, bottom, upper = tmp_path / "top", tmp_path / "bottom", tmp_path / "upper"
    for d in (top, bottom, upper):
        d.mkdir()
    (top / "shared").mkdir()
    (bottom / "shared").mkdir()
    (top / "shared/from_top").write_text("t")
    (bottom / "shared/from_bottom").write_text("b")
    (bottom / "shared/both").write_text("bottom")
    (top / "shared/both").write_text("top")
    (top / "file_over_dir").write_text("file")
    (bottom / "file_over_dir").mkdir()
    (bottom / "file_over_dir/hidden").write_text("x")
    (bottom / "only_bottom").write_text("ob")
    return {"top": top, "bottom": bottom, "upper": upper}


def layers_of(t: dict[str, Path]) -> list[LowerLayer]:
    return [LowerLayer(0, b(t["top"]), NAMES), LowerLayer(1, b(t["bottom"]), NAMES)]


ROOT_LOWERS = ((0, b""), (1, b""))


def test_top_layer_wins_and_dirs_merge(tree: dict[str, Path]) -> None:
    layers = layers_of(tree)
    res = lookup(layers, NAMES, b(tree["upper"]), ROOT_LOWERS, b"shared")
    assert res is not None and res.is_dir and res.upper is None
    assert res.lowers == ((0, b"shared"), (1, b"shared"))
    names = sorted(merged_names(layers, None, res.lowers))
    assert names == [b"both", b"from_bottom", b"from_top"]
    both = lookup(layers, NAMES, None, res.lowers, b"both")
    assert both is not None and both.lowers == ((0, b"shared/both"),)


def test_file_stops_lookup_of_lower_dir(tree: dict[str, Path]) -> None:
    res = lookup(layers_of(tree), NAMES, None, ROOT_LOWERS, b"file_over_dir")
    assert res is not None and not res.is_dir and res.lowers == ((0, b"file_over_dir"),)


def test_missing_name(tree: dict[str, Path]) -> None:
    assert lookup(layers_of(tree), NAMES, b(tree["upper"]), ROOT_LOWERS, b"nope") is None


def test_upper_file_hides_lower(tree: dict[str, Path]) -> None:
    (tree["upper"] / "only_bottom").write_text("new")
    res = lookup(layers_of(tree), NAMES, b(tree["upper"]), ROOT_LOWERS, b"only_bottom")
    assert res is not None and res.upper is not None and res.lowers == ()


@needs_root
def test_upper_whiteout_hides_lower(tree: dict[str, Path]) -> None:
    make_whiteout(b(tree["upper"] / "only_bottom"))
    st = os.lstat(tree["upper"] / "only_bottom")
    assert is_whiteout_stat(st) and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    layers = layers_of(tree)
    assert lookup(layers, NAMES, b(tree["upper"]), ROOT_LOWERS, b"only_bottom") is None
    assert b"only_bottom" not in merged_names(layers, b(tree["upper"]), ROOT_LOWERS)


@needs_root
def test_char_device_that_is_not_a_whiteout(tree: dict[str, Path]) -> None:
    os.mknod(tree["upper"] / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert not is_whiteout_stat(os.lstat(tree["upper"] / "null"))
    res = lookup(layers_of(tree), NAMES, b(tree["upper"]), ROOT_LOWERS, b"null")
    assert res is not None and res.upper is not None


@needs_root
def test_whiteout_in_top_lower_hides_bottom(tree: dict[str, Path]) -> None:
    make_whiteout(b(tree["top"] / "only_bottom"))
    layers = layers_of(tree)
    assert lookup(layers, NAMES, None, ROOT_LOWERS, b"only_bottom") is None
    assert not lower_positive(layers, ROOT_LOWERS, b"only_bottom")
    assert b"only_bottom" not in merged_names(layers, None, ROOT_LOWERS)


def test_legacy_whiteout_and_opaque(tree: dict[str, Path]) -> None:
    (tree["top"] / ".wh.only_bottom").write_text("")
    (tree["top"] / "shared/.wh..wh..opq").write_text("")
    layers = layers_of(tree)
    assert lookup(layers, NAMES, None, ROOT_LOWERS, b"only_bottom") is None
    names = merged_names(layers, None, ROOT_LOWERS)
    assert b".wh.only_bottom" not in names and b"only_bottom" not in names
    res = lookup(layers, NAMES, None, ROOT_LOWERS, b"shared")
    assert res is not None and res.lowers == ((0, b"shared"),)
    assert sorted(merged_names(layers, None, res.lowers)) == [b"both", b"from_top"]


def test_opaque_upper_dir_hides_lowers(tree: dict[str, Path]) -> None:
    (tree["upper"] / "shared").mkdir()
    os.setxattr(tree["upper"] / "shared", NAMES.opaque, b"y")
    (tree["upper"] / "shared/mine").write_text("m")
    res = lookup(layers_of(tree), NAMES, b(tree["upper"]), ROOT_LOWERS, b"shared")
    assert res is not None and res.opaque and res.lowers == ()


def test_opaque_x_is_not_opaque(tree: dict[str, Path]) -> None:
    (tree["upper"] / "shared").mkdir()
    os.setxattr(tree["upper"] / "shared", NAMES.opaque, b"x")
    res = lookup(layers_of(tree), NAMES, b(tree["upper"]), ROOT_LOWERS, b"shared")
    assert res is not None and not res.opaque and len(res.lowers) == 2


def test_relative_and_absolute_redirect(tree: dict[str, Path]) -> None:
    layers = layers_of(tree)
    (tree["upper"] / "renamed").mkdir()
    os.setxattr(tree["upper"] / "renamed", NAMES.redirect, b"shared")
    res = lookup(layers, NAMES, b(tree["upper"]), ROOT_LOWERS, b"renamed")
    assert res is not None and res.lowers == ((0, b"shared"), (1, b"shared"))
    (tree["upper"] / "sub").mkdir()
    (tree["upper"] / "sub/moved").mkdir()
    os.setxattr(tree["upper"] / "sub/moved", NAMES.redirect, b"/shared")
    res2 = lookup(layers, NAMES, b(tree["upper"] / "sub"), (), b"moved")
    assert res2 is not None and res2.lowers == ((0, b"shared"), (1, b"shared"))
    names = sorted(merged_names(layers, b(tree["upper"] / "sub/moved"), res2.lowers))
    assert names == [b"both", b"from_bottom", b"from_top"]


def test_lower_positive(tree: dict[str, Path]) -> None:
    layers = layers_of(tree)
    assert lower_positive(layers, ROOT_LOWERS, b"only_bottom")
    assert not lower_positive(layers, ROOT_LOWERS, b"nothing")
    assert not lower_positive(layers, (), b"only_bottom")


def test_origin_roundtrip() -> None:
    assert decode_origin(encode_origin(3, 123456)) == (3, 123456)
    assert decode_origin(b"garbage") is None
    assert decode_origin(None) is None


def test_private_xattrs() -> None:
    names = XattrNames("trusted")
    assert names.is_private("trusted.overlay.opaque")
    assert names.is_private("user.overlay.redirect")
    assert names.is_private("trusted.overlayboot.origin")
    assert not names.is_private("user.comment")
    assert not names.is_private("security.capability")
