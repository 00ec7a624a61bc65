"""The classifier file: a round trip that predicts the same, old pickles only on request, crafted files refused unrun."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from command_line import pixclust
from PIL import Image

from pixclust.errors import UsageError
from pixclust.labelling.classifier import TrainedClassifier, train_classifier
from pixclust.labelling.classifier_file import load_classifier, save_classifier
from pixclust.labelling.finetune import HEAD, FinetunedNetwork


def _vectors(n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """30 noisy vectors around each of ``n_classes`` random directions in 16-d, and their class names."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(n_classes), 30)
    vectors = rng.normal(size=(n_classes, 16))[truth] + 0.8 * rng.normal(size=(len(truth), 16))
    return vectors.astype(np.float32), np.array(["cat", "dog", "émeu"])[truth]


def _trained(head: str, n_classes: int = 3) -> tuple[TrainedClassifier, np.ndarray]:
    vectors, names = _vectors(n_classes)
    classifier = train_classifier(
        vectors, names, embedding_model={"model": "test", "model_id": "test:0"}, heads=(head,), cv=2
    )
    return classifier, vectors


def _finetuned() -> tuple[TrainedClassifier, np.ndarray]:
    """A logistic head dressed as a fine-tuned classifier: what the file keeps of one, without training a network."""
    classifier, vectors = _trained("logistic")
    rng = np.random.default_rng(1)
    network = FinetunedNetwork(
        base={"model": "efficientnet-lite0", "weights_sha256": "ab12", "preprocessing": {"mean": [0.5, 0.5, 0.5]}},
        trained={
            "blocks.6.0.conv_pw.weight": rng.normal(size=(4, 3, 1, 1)).astype(np.float32),
            "bn2.num_batches_tracked": np.array(7, dtype=np.int64),
        },
        history=[
            {"epoch": 0, "train_loss": None, "train_accuracy": None, "validation_loss": 0.35, "validation_f1": 0.9},
            {"epoch": 1, "train_loss": 0.41, "train_accuracy": 0.8, "validation_loss": 0.33, "validation_f1": 0.9},
        ],
        validation=["photos/a.png", "photos/b\udcff.png"],
    )
    return dataclasses.replace(classifier, head=HEAD, params={"epochs": 3}, finetuned=network), vectors


def _assert_same(loaded: TrainedClassifier, original: TrainedClassifier, vectors: np.ndarray) -> None:
    assert type(loaded.estimator) is type(original.estimator)
    assert np.array_equal(loaded.predict_proba(vectors), original.predict_proba(vectors))
    assert np.array_equal(loaded.estimator.predict(vectors), original.estimator.predict(vectors))
    for name in ("classes", "embedding_model", "head", "params", "cv_f1", "search", "class_counts"):
        assert getattr(loaded, name) == getattr(original, name), name
    if original.finetuned is None:
        assert loaded.finetuned is None
        return
    for name in ("base", "history", "validation"):
        assert getattr(loaded.finetuned, name) == getattr(original.finetuned, name), name
    assert loaded.finetuned.trained.keys() == original.finetuned.trained.keys()
    for key, value in original.finetuned.trained.items():
        assert loaded.finetuned.trained[key].dtype == value.dtype and np.array_equal(
            loaded.finetuned.trained[key], value
        )


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("head", ["logistic", "mlp"])
def test_a_saved_head_predicts_like_the_trained_one(head: str, n_classes: int, tmp_path: Path) -> None:
    classifier, vectors = _trained(head, n_classes)
    save_classifier(classifier, tmp_path / "model.zip")
    _assert_same(load_classifier(tmp_path / "model.zip"), classifier, vectors)
    with zipfile.ZipFile(tmp_path / "model.zip") as archive:
        assert sorted(archive.namelist()) == ["arrays.npz", "classifier.json"]
    # Written atomically: nothing else is left beside it.
    assert [path.name for path in tmp_path.iterdir()] == ["model.zip"]


def test_a_saved_finetuned_classifier_keeps_its_network(tmp_path: Path) -> None:
    classifier, vectors = _finetuned()
    save_classifier(classifier, tmp_path / "model.zip")
    _assert_same(load_classifier(tmp_path / "model.zip"), classifier, vectors)


def _old_pickle(classifier: TrainedClassifier) -> bytes:
    """The file an older pixclust wrote: a pickle naming the modules pixclust.classifier and pixclust.finetune."""
    stream = pickle.dumps({"format": "pixclust-classifier", "version": 1, "classifier": classifier}, protocol=2)
    # Protocol 2 names a class as "c<module>\n<name>\n", so a module can be renamed in place.
    for now, before in (("labelling.classifier", "classifier"), ("labelling.finetune", "finetune")):
        stream = stream.replace(f"cpixclust.{now}\n".encode(), f"cpixclust.{before}\n".encode())
    assert b"pixclust.labelling" not in stream and b"cpixclust.classifier\n" in stream
    return stream


def test_an_old_pickle_loads_only_when_allowed(tmp_path: Path) -> None:
    classifier, vectors = _finetuned()
    old = tmp_path / "model.pkl"
    old.write_bytes(_old_pickle(classifier))
    assert b"cpixclust.finetune\n" in old.read_bytes()
    with pytest.raises(UsageError, match=r"older pixclust as a pickle, which can run code.*--allow-pickle") as raised:
        load_classifier(old)
    assert str(old) in str(raised.value) and "\n" not in str(raised.value)
    _assert_same(load_classifier(old, allow_pickle=True), classifier, vectors)


class _Plant:
    """Pickles as a call that makes the folder ``marker``: if it appears, loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


# Changes a classifier file's JSON record and arrays in place.
Edit = Callable[[dict[str, Any], dict[str, Any]], None]


def _rewritten(path: Path, edit: Edit) -> Path:
    """A copy of a classifier file with ``edit`` applied to its JSON record and its arrays."""
    with zipfile.ZipFile(path) as archive:
        record = json.loads(archive.read("classifier.json"))
        with np.load(io.BytesIO(archive.read("arrays.npz"))) as npz:
            arrays = dict(npz)
    edit(record, arrays)
    npz = io.BytesIO()
    np.savez(npz, **arrays)
    altered = path.with_name("altered.zip")
    with zipfile.ZipFile(altered, "w") as archive:
        archive.writestr("classifier.json", json.dumps(record))
        archive.writestr("arrays.npz", npz.getvalue())
    return altered


def test_crafted_files_cannot_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    classifier, _ = _trained("logistic")
    save_classifier(classifier, tmp_path / "model.zip")
    planted_pickle = tmp_path / "planted.pkl"
    planted_pickle.write_bytes(pickle.dumps({"format": "pixclust-classifier", "classifier": _Plant(marker)}))
    with pytest.raises(UsageError, match="--allow-pickle"):
        load_classifier(planted_pickle)

    def object_array(record: dict[str, Any], arrays: dict[str, Any]) -> None:
        arrays["estimator/coef_"] = np.array([_Plant(marker)], dtype=object)

    with pytest.raises(UsageError, match=r"damaged or altered.*allow_pickle"):
        load_classifier(_rewritten(tmp_path / "model.zip", object_array))

    def callable_type(record: dict[str, Any], arrays: dict[str, Any]) -> None:
        record["estimator"]["type"] = "os.mkdir"
        record["estimator"]["params"] = {"path": str(marker)}

    with pytest.raises(UsageError, match=r"'os\.mkdir' is not one pixclust saves"):
        load_classifier(_rewritten(tmp_path / "model.zip", callable_type))
    assert not marker.exists()


def _in_record(*keys: str, value: Any) -> Edit:
    """Sets record[keys[0]][keys[1]]... to ``value``."""

    def edit(record: dict[str, Any], arrays: dict[str, Any]) -> None:
        for key in keys[:-1]:
            record = record[key]
        record[keys[-1]] = value

    return edit


def _in_arrays(name: str, value: np.ndarray) -> Edit:
    def edit(record: dict[str, Any], arrays: dict[str, Any]) -> None:
        arrays[name] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_in_arrays("estimator/coef_", np.zeros((3, 17))), "damaged or altered .*ValueError"),
        (_in_arrays("estimator/coef_", np.array(["a"])), "array estimator/coef_ holds <U1, not numbers"),
        (_in_record("classes", value=["cat", "dog"]), "3 probabilities for 2 classes"),
        (_in_record("classes", value="cat"), "classes is a str"),
        (_in_record("estimator", "fitted", "n_features_in_", value=10**12), "does not fit the saved weights"),
        (_in_record("estimator", "fitted", "coef_", value={"array": "nowhere"}), "KeyError"),
        (_in_record("version", value=3), "saved by a newer pixclust .*upgrade pixclust"),
        (_in_record("version", value=1), "format version 1 is not 2"),
        (_in_record("format", value="something else"), "not a classifier made by 'pixclust train'"),
    ],
)
def test_an_altered_file_is_refused_in_one_line(edit: Edit, expected: str, tmp_path: Path) -> None:
    classifier, _ = _trained("logistic")
    save_classifier(classifier, tmp_path / "model.zip")
    altered = _rewritten(tmp_path / "model.zip", edit)
    with pytest.raises(UsageError, match=expected) as raised:
        load_classifier(altered)
    assert str(altered) in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda data: data[: len(data) // 2], "damaged or altered .*BadZipFile"),
        (lambda data: b"", "not a classifier made by 'pixclust train'"),
        (lambda data: b"path,label\n", "not a classifier made by 'pixclust train'"),
        (lambda data: data.replace(b"arrays.npz", b"arrays.xyz"), "damaged or altered .*KeyError"),
        (lambda data: data.replace(b"classifier.json", b"classifier.jsox"), "damaged or altered .*KeyError"),
    ],
)
def test_a_damaged_file_is_refused_in_one_line(damage: Callable[[bytes], bytes], expected: str, tmp_path: Path) -> None:
    classifier, _ = _trained("logistic")
    save_classifier(classifier, tmp_path / "model.zip")
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(damage((tmp_path / "model.zip").read_bytes()))
    with pytest.raises(UsageError, match=expected) as raised:
        load_classifier(damaged)
    assert str(damaged) in str(raised.value) and "\n" not in str(raised.value)


def test_evaluate_and_predict_take_allow_pickle(tmp_path: Path) -> None:
    classifier, vectors = _trained("logistic")
    np.save(tmp_path / "embeddings.npy", vectors)
    test = tmp_path / "test.csv"
    # Its own predictions as the truth, so a classifier that loaded whole scores 1.
    labels = np.array(classifier.classes)[classifier.predict_proba(vectors).argmax(axis=1)]
    test.write_text("id,label\n" + "".join(f"{row},{label}\n" for row, label in enumerate(labels)))
    old = tmp_path / "model.pkl"
    old.write_bytes(_old_pickle(classifier))
    refused = pixclust("evaluate", old, "--test", test, "--in", tmp_path / "embeddings.npy")
    assert refused.returncode == 2 and "--allow-pickle" in refused.stderr and "Traceback" not in refused.stderr
    scored = pixclust("evaluate", old, "--test", test, "--in", tmp_path / "embeddings.npy", "--allow-pickle")
    assert scored.returncode == 0, scored.stderr
    assert "accuracy 1.000" in scored.stdout
    # predict embeds the images with the recorded model: here the hand-made pixel one (32 x 32 RGB).
    pixel_classifier = train_classifier(
        np.random.default_rng(0).normal(size=(20, 3072)),
        ["light", "dark"] * 10,
        embedding_model={"model": "pixels"},
        heads=("logistic",),
        cv=2,
    )
    old.write_bytes(_old_pickle(pixel_classifier))
    (tmp_path / "new").mkdir()
    for shade in (40, 220):
        Image.new("RGB", (48, 40), (shade, shade, shade)).save(tmp_path / "new" / f"{shade}.png")
    refused = pixclust("predict", old, tmp_path / "new")
    assert refused.returncode == 2 and "--allow-pickle" in refused.stderr and "Traceback" not in refused.stderr
    predicted = pixclust("predict", old, tmp_path / "new", "--allow-pickle")
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.count("light") + predicted.stdout.count("dark") == 2
