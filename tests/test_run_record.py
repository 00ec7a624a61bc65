"""run.json is read only through RunRecord: older files open, newer or damaged ones are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixclust.errors import UsageError
from pixclust.runs.record import RUN_RECORD_VERSION, RunRecord

MODEL = {"model": "efficientnet-lite0", "model_id": "abc123"}


def test_a_record_reads_back_equal_to_the_one_written(tmp_path: Path) -> None:
    record = RunRecord(
        model=MODEL,
        config={"source": "/photos", "k": "auto"},
        counts={"images_used": 3},
        scores={"acc": 0.5},
        n_scored=3,
    )
    record.write(tmp_path / "run.json")
    assert RunRecord.read(tmp_path / "run.json") == record
    assert json.loads((tmp_path / "run.json").read_text())["record_version"] == RUN_RECORD_VERSION
    assert record.model_id == "abc123" and record.source == "/photos"


def test_a_record_from_before_versions_reads_with_its_sections_empty(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({"model": MODEL, "config": {"source": "/photos"}}))
    record = RunRecord.read(tmp_path / "run.json")
    assert record.record_version == 0 and record.model_id == "abc123"
    assert record.clustering == {} and record.scores is None and record.timings_s == {}


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "cannot be read"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"model": MODEL, "record_version": RUN_RECORD_VERSION + 1}), "newer pixclust"),
        (json.dumps({"model": MODEL, "record_version": True}), "does not know"),
        (json.dumps({"model": MODEL, "counts": [1]}), '"counts" is not what pixclust writes'),
        (json.dumps({"config": {}}), "names no model"),
    ],
)
def test_a_record_pixclust_cannot_read_is_one_line(tmp_path: Path, content: str, says: str) -> None:
    (tmp_path / "run.json").write_text(content)
    with pytest.raises(UsageError, match=says) as raised:
        RunRecord.read(tmp_path / "run.json")
    assert "\n" not in str(raised.value) and str(tmp_path / "run.json") in str(raised.value)
