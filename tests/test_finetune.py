"""Fine-tuning the default network's last blocks on real digit images, and the saved model's round trip."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixclust.embedding.models import DEFAULT_MODEL, MODELS
from pixclust.embedding.runtimes import onnx_path
from pixclust.embedding.sources import embed_images
from pixclust.embedding.transforms import Preprocessing
from pixclust.embedding.weights import load_network, state_dict_sha256
from pixclust.errors import UsageError
from pixclust.labelling.classifier import TrainedClassifier, predict
from pixclust.labelling.classifier_file import load_classifier
from pixclust.labelling.finetune import FinetuneSettings, finetuned_extractor
from pixclust.labelling.finetune_training import AugmentingTransform, softmax_weights, write_softmax_weights
from pixclust.labelling.workflows import evaluate, predict_images, train
from pixclust.runs.pipeline import embed
from pixclust.runs.record import RunRecord

# 96 px instead of 224 keeps three epochs on 72 images to seconds on a CPU.
SETTINGS = FinetuneSettings(epochs=3, input_size=96)


def _labels_csv(path: Path, images: list[Path]) -> Path:
    """path,label rows; the class is the digit folder, <digit>/<batch>/<file>."""
    path.write_text("path,label\n" + "".join(f"{image},{image.parts[-3]}\n" for image in images))
    return path


def _batch(digit_tree: Path, batch: str) -> list[Path]:
    return sorted(image for image in digit_tree.glob(f"*/{batch}/*") if image.is_file())


def test_head_weights_convert_to_softmax_and_back() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 8))
    for n_classes in (2, 3):
        logistic = LogisticRegression().fit(features, np.arange(60) % n_classes)
        weight, bias = softmax_weights(logistic)
        head = torch.nn.Linear(8, n_classes)
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(weight))
            head.bias.copy_(torch.from_numpy(bias))
            softmax = torch.softmax(head(torch.from_numpy(features).float()), dim=1).numpy()
        assert np.allclose(softmax, logistic.predict_proba(features), atol=1e-5)
        with torch.no_grad():
            head.weight.mul_(3.0)
            moved = torch.softmax(head(torch.from_numpy(features).float()), dim=1).numpy()
        write_softmax_weights(logistic, head)
        assert np.allclose(logistic.predict_proba(features), moved, atol=1e-5)


def test_augmenting_transform_takes_random_parts_of_the_image() -> None:
    prep = Preprocessing(64, 73, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "center")
    augment = AugmentingTransform(prep)
    boxes = [augment.crop_box(300, 200) for _ in range(200)]
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
        assert (right - left) * (bottom - top) >= AugmentingTransform.min_area * 200**2 - 1e-6
    assert len({round(box[0]) for box in boxes}) > 20
    # Left half black, right half white: a mirrored picture has its mean brightness on the other side.
    image = Image.fromarray(np.repeat(np.repeat(np.array([[0, 255]], np.uint8), 100, axis=1), 100, axis=0)).convert(
        "RGB"
    )
    left_means = [augment(image)[:, :32].mean() for _ in range(40)]
    assert min(left_means) < 64 and max(left_means) > 192
    assert augment(image).shape == (64, 64, 3)


@dataclass
class Finetuned:
    classifier: TrainedClassifier
    model: Path
    run: Path


@pytest.fixture(scope="module")
def finetuned(digit_tree: Path, digit_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Finetuned:
    """Batch 0 of the digits (90 images, 3 classes) fine-tuned and saved; batch 1 stays unseen."""
    folder = tmp_path_factory.mktemp("finetuned")
    labels = _labels_csv(folder / "train.csv", _batch(digit_tree, "batch0"))
    classifier = train(
        labels, digit_run, out=folder / "model.pkl", finetune=True, finetune_settings=SETTINGS, quiet=True
    )
    return Finetuned(classifier, folder / "model.pkl", digit_run)


@pytest.mark.slow
def test_only_the_last_block_learns(finetuned: Finetuned) -> None:
    base, _ = load_network(MODELS[DEFAULT_MODEL])
    base_state = base.state_dict()
    trained = finetuned.classifier.finetuned.trained
    assert {key.split(".")[0] for key in trained} == {"blocks", "conv_head", "bn2"}
    assert all(key.startswith("blocks.6.") for key in trained if key.startswith("blocks"))
    # Every trained parameter moved; BatchNorm statistics did not, since every BatchNorm stays in eval mode.
    for key, value in trained.items():
        unchanged = np.array_equal(value, base_state[key].numpy())
        assert unchanged == (key.rpartition(".")[2] in ("running_mean", "running_var", "num_batches_tracked")), key
    # The base network plus the trained tensors hash to what the trained network hashed to, so nothing else moved.
    base.load_state_dict({key: torch.from_numpy(value) for key, value in trained.items()}, strict=False)
    assert state_dict_sha256(base) == finetuned.classifier.embedding_model["weights_sha256"]
    # The file keeps the trained part only: 4.1 MB of the network's 13.7 MB.
    assert finetuned.model.stat().st_size < 0.35 * sum(tensor.nbytes for tensor in base_state.values())
    assert finetuned.classifier.finetuned.base["model_id"] != finetuned.classifier.embedding_model["model_id"]


@pytest.mark.slow
def test_training_improves_on_the_training_images(finetuned: Finetuned) -> None:
    history = finetuned.classifier.finetuned.history
    assert history[0]["epoch"] == 0 and history[0]["train_loss"] is None
    epochs = history[1:]
    assert len(epochs) == SETTINGS.epochs
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["train_accuracy"] > epochs[0]["train_accuracy"]
    kept = min(history, key=lambda row: row["validation_loss"])
    assert finetuned.classifier.finetuned.best_epoch == kept["epoch"]
    assert finetuned.classifier.cv_f1 == kept["validation_f1"]
    assert len(finetuned.classifier.finetuned.validation) == 18
    assert finetuned.classifier.class_counts == {"0": 30, "1": 30, "6": 30}


@pytest.mark.slow
def test_saved_model_predicts_unseen_images_like_the_trained_one(finetuned: Finetuned, digit_tree: Path) -> None:
    unseen = [str(image) for image in _batch(digit_tree, "batch1")]
    loaded = load_classifier(finetuned.model)
    assert loaded.embedding_model == finetuned.classifier.embedding_model
    assert np.array_equal(loaded.estimator.coef_, finetuned.classifier.estimator.coef_)
    assert all(
        np.array_equal(value, finetuned.classifier.finetuned.trained[key])
        for key, value in loaded.finetuned.trained.items()
    )

    # The trained network in PyTorch fp32, as training ran it.
    paths, vectors, _ = embed_images(
        unseen, finetuned_extractor(finetuned.classifier, runtime="torch", precision="fp32")
    )
    expected = {p.path: p.label for p in predict(finetuned.classifier, paths, vectors)}
    assert len(expected) == 90
    # The command's path: rebuilt from the file, on the default runtime (OpenVINO here, maybe bf16) and its own export.
    run = predict_images(finetuned.model, unseen)
    assert np.mean([p.label == expected[p.path] for p in run.predictions]) >= 0.95
    assert onnx_path(loaded.embedding_model["model_id"], SETTINGS.input_size).is_file()
    accuracy = np.mean([p.label == Path(p.path).parts[-3] for p in run.predictions])
    print(f"fine-tuned accuracy on 90 unseen digits: {accuracy:.3f}")
    assert accuracy > 0.8


@pytest.mark.slow
def test_evaluate_embeds_again_with_the_finetuned_network(
    finetuned: Finetuned, digit_tree: Path, tmp_path: Path
) -> None:
    test = _labels_csv(tmp_path / "test.csv", _batch(digit_tree, "batch1"))
    by_id = evaluate(finetuned.model, test, source=finetuned.run, out=tmp_path / "eval").evaluation
    by_file = evaluate(finetuned.model, test).evaluation
    # Ids in the run and the image files give the same scores: both went through the fine-tuned network.
    assert by_id.n == by_file.n == 90
    assert by_id.accuracy == by_file.accuracy and np.array_equal(by_id.confusion, by_file.confusion)
    assert by_id.macro_f1 is not None and by_id.macro_f1 > 0.8
    assert (tmp_path / "eval" / "roc.png").is_file()


@pytest.mark.parametrize("model", ["hog", "pixels"])
def test_handmade_features_cannot_be_finetuned(model: str, digit_tree: Path, tmp_path: Path) -> None:
    images = _batch(digit_tree, "batch0")[::10]
    run = tmp_path / "run"
    embeddings = embed(digit_tree, out=run, model=model, quiet=True)
    RunRecord(model=embeddings.model.to_dict()).write(run / "run.json")
    with pytest.raises(UsageError, match=f"model '{model}' .* has no network to fine-tune") as raised:
        train(_labels_csv(tmp_path / "labels.csv", images), run, out=tmp_path / "m.pkl", finetune=True)
    assert "\n" not in str(raised.value) and not (tmp_path / "m.pkl").exists()


def test_missing_images_are_named(digit_tree: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for image in _batch(digit_tree, "batch0")[::10]:
        target = photos / image.relative_to(digit_tree)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    run = tmp_path / "run"
    embeddings = embed(photos, out=run, quiet=True)
    RunRecord(model=embeddings.model.to_dict()).write(run / "run.json")
    gone = min(photos.rglob("*.png"))
    gone.unlink()
    labels = _labels_csv(tmp_path / "labels.csv", sorted(Path(path) for path in embeddings.paths))
    with pytest.raises(UsageError, match="1 are not at the paths the run stored") as raised:
        train(labels, run, out=tmp_path / "m.pkl", finetune=True)
    assert str(gone) in str(raised.value) and "\n" not in str(raised.value)
