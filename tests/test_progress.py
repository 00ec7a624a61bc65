"""Progress and warnings reach a Python caller through a callback and the pixclust logger, not a flag."""

from __future__ import annotations

from pathlib import Path

import pytest

import pixclust


def test_progress_goes_to_a_callback_or_nowhere_and_repairs_to_the_pixclust_logger(
    digit_tree: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from pixclust.progress import reporting, warn

    seen: list[tuple[str, int, int]] = []
    with reporting(lambda task, done, total: seen.append((task, done, total))):
        pixclust.embed(digit_tree, out=tmp_path / "run", model="pixels")
    tasks = {task for task, _, _ in seen}
    assert tasks == {"hashing", "embedding"}
    assert all(done == total for task, done, total in seen[-1:]) and not capfd.readouterr().err
    with reporting(None):
        pixclust.embed(digit_tree, model="hog")
    assert not capfd.readouterr().err
    with caplog.at_level("WARNING", logger="pixclust"):
        warn("the cache was damaged")
    assert caplog.records[-1].name == "pixclust" and caplog.records[-1].getMessage() == "the cache was damaged"
