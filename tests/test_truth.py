from __future__ import annotations

from pathlib import Path

import pytest

from pixclust.errors import UsageError
from pixclust.runs.truth import load_truth


def test_folders_give_the_parent_folder_name(tmp_path: Path) -> None:
    paths = [str(tmp_path / "cats" / "1.jpg"), str(tmp_path / "dogs" / "x" / "2.jpg"), str(tmp_path / "3.jpg")]
    assert load_truth("folders", paths, tmp_path) == ["cats", "x", None]


def test_csv_matches_relative_absolute_and_unique_bare_names(tmp_path: Path) -> None:
    table = tmp_path / "truth.csv"
    table.write_text(
        f"Path,Label\n{tmp_path / 'a' / '1.jpg'},cat\nb/2.jpg,dog\n3.jpg,bird\ndup.jpg,x\nother/dup.jpg,y\n",
        encoding="utf-8",
    )
    paths = [
        tmp_path / "a" / "1.jpg",
        tmp_path / "b" / "2.jpg",
        tmp_path / "deep" / "3.jpg",
        tmp_path / "z" / "dup.jpg",
    ]
    assert load_truth(str(table), [str(p) for p in paths], tmp_path) == ["cat", "dog", "bird", None]


def test_csv_without_usable_columns_says_what_it_needs(tmp_path: Path) -> None:
    table = tmp_path / "truth.csv"
    table.write_text("name,value\na,b\n")
    with pytest.raises(UsageError, match="path column"):
        load_truth(str(table), [], tmp_path)
    with pytest.raises(UsageError, match="cannot read"):
        load_truth(str(tmp_path / "missing.csv"), [], tmp_path)
