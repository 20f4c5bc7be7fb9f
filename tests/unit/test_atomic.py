"""Outputs replaced whole: ``dest`` is at every moment the old or the new output."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkimage.atomic import OutputError, _replace_in_two_steps, atomic_output


def _tree(path: Path, marker: str) -> None:
    path.mkdir()
    (path / "marker").write_text(marker)


@pytest.mark.parametrize(("old_dir", "new_dir"), [(True, True), (True, False), (False, True)])
def test_an_output_replaces_the_old_one(tmp_path: Path, old_dir: bool, new_dir: bool) -> None:
    dest = tmp_path / "out"
    _tree(dest, "old") if old_dir else dest.write_text("old")
    with atomic_output(dest) as tmp:
        _tree(tmp, "new") if new_dir else tmp.write_text("new")
    assert (dest / "marker" if new_dir else dest).read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it


@pytest.mark.parametrize("new_dir", [True, False])
def test_a_first_output(tmp_path: Path, new_dir: bool) -> None:
    dest = tmp_path / "out"
    with atomic_output(dest) as tmp:
        _tree(tmp, "new") if new_dir else tmp.write_text("new")
    assert (dest / "marker" if new_dir else dest).read_text() == "new"


def test_a_failed_build_leaves_the_old_output(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    _tree(dest, "old")
    with pytest.raises(RuntimeError), atomic_output(dest) as tmp:
        _tree(tmp, "half")
        raise RuntimeError("build failed")
    assert (dest / "marker").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_second_step_puts_the_old_directory_back(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    _tree(dest, "old")
    with pytest.raises(FileNotFoundError):
        _replace_in_two_steps(tmp_path / "never-built", dest)
    assert (dest / "marker").read_text() == "old"


def test_an_unwritable_place_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError), atomic_output(tmp_path / "file" / "out"):
        pass
