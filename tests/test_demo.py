from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pixclust.demo import run_demo, write_digits


def test_digits_are_written_dark_on_white_one_folder_per_class(tmp_path: Path) -> None:
    root = write_digits(tmp_path / "digits", limit=40)
    files = sorted(root.rglob("*.png"))
    assert len(files) == 40
    assert {f.parent.name for f in files} == {str(d) for d in range(10)}
    first = np.asarray(Image.open(root / "0" / "digit_0000.png"))
    assert first.shape == (8, 8) and first[0, 0] == 255 and first.min() < 64

    stamps = {f: f.stat().st_mtime_ns for f in files}
    write_digits(tmp_path / "digits", limit=40)
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


def test_demo_run_scores_against_the_digit_classes(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo", k=4, quiet=True, limit=120)
    assert len(result.embeddings) == 120 and result.n_scored == 120
    assert result.clustering.n_clusters == 4
    assert set(result.scores) == {"acc", "nmi", "ari"} and 0.0 < result.scores["acc"] <= 1.0
    assert (tmp_path / "demo" / "run" / "clusters.csv").is_file()
