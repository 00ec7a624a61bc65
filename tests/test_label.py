"""Labelling from examples, training, evaluation and prediction: planted vectors, then real digits end to end."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from command_line import pixclust
from PIL import Image

from pixclust.curation.lookalikes import find_similar
from pixclust.errors import UsageError
from pixclust.labelling.classifier import evaluate, train_classifier
from pixclust.labelling.label import (
    NONE_LABEL,
    ExampleLabeller,
    References,
    count_table,
    nearest_example_scores,
    read_labelled_list,
    suggest_examples,
    threshold_labels,
)
from pixclust.labelling.workflows import LABELS_CSV, ROC_PNG, SUGGEST_CSV, label, predict_images, train
from pixclust.labelling.workflows import evaluate as evaluate_saved


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Five tight groups around random directions in 64-d; classes 0..4, all sharing a common offset like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 64))
    shared = 3 * rng.normal(size=64)
    truth = np.repeat(np.arange(5), 200)
    vectors = shared + centres[truth] + 0.6 * rng.normal(size=(1000, 64))
    return vectors.astype(np.float32), truth


def _macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, predicted, average="macro"))


def test_labeller_estimates_none_and_beats_the_nearest_example_rule() -> None:
    vectors, truth = _blobs()
    kept = [0, 1, 2]
    rng = np.random.default_rng(1)
    examples = np.concatenate([rng.choice(np.flatnonzero(truth == c), 3, replace=False) for c in kept])
    refs = References(["a", "b", "c"], vectors[examples], truth[examples], list(examples))
    expected = np.where(truth < 3, truth, NONE_LABEL)
    labeller = ExampleLabeller(random_state=0).fit(vectors, refs)
    ours = _macro_f1(expected, labeller.labels_)
    naive = max(
        _macro_f1(expected, threshold_labels(nearest_example_scores(vectors, refs), t)) for t in (0.7, 0.75, 0.8)
    )
    assert ours > 0.9 and ours > naive + 0.1
    assert labeller.scores_.shape == (1000, 3) and labeller.scores_.min() >= 0 and labeller.scores_.max() <= 1
    assert np.isfinite(labeller.cuts_).any()
    everything = ExampleLabeller(estimate_none=False).fit(vectors, refs)
    assert (everything.labels_ != NONE_LABEL).all()


def test_threshold_table_counts_every_image_once() -> None:
    scores = np.array([[0.9, 0.1], [0.72, 0.71], [0.5, 0.6], [0.1, 0.78]], np.float32)
    assert threshold_labels(scores, 0.75).tolist() == [0, NONE_LABEL, NONE_LABEL, 1]
    assert threshold_labels(scores, np.array([0.95, 0.7])).tolist() == [NONE_LABEL, NONE_LABEL, NONE_LABEL, 1]
    table = count_table(scores, [0.7, 0.8], ["x", "y"])
    assert table[0.7] == {"x": 2, "y": 1, "none": 1}
    assert table[0.8] == {"x": 1, "y": 0, "none": 3}
    assert all(sum(counts.values()) == 4 for counts in table.values())


def test_suggestions_are_distinct_unlabelled_and_cover_regions() -> None:
    vectors, truth = _blobs(2)
    refs = References(["a"], vectors[:3], np.zeros(3, np.int64), [0, 1, 2])
    labeller = ExampleLabeller().fit(vectors, refs)
    picks = suggest_examples(vectors, labeller.scores_, 5, exclude=[0, 1, 2])
    assert len(picks) == len(set(picks)) == 5 and not {0, 1, 2} & set(picks)
    assert len(set(truth[picks])) >= 4
    with pytest.raises(UsageError, match="--suggest"):
        suggest_examples(vectors, labeller.scores_, 0)


def test_evaluation_reports_na_for_a_class_without_positives() -> None:
    vectors, truth = _blobs(3)
    names = np.array(["a", "b", "c", "d", "e"])[truth]
    classifier = train_classifier(vectors, names, embedding_model={"model": "test"}, heads=("logistic",), cv=2)
    test = truth != 4
    evaluation = evaluate(classifier, vectors[test], names[test])
    missing = next(row for row in evaluation.per_class if row.name == "e")
    assert missing.auc is None and missing.recall is None and "no image" in missing.note
    present = [row for row in evaluation.per_class if row.name != "e"]
    assert all(row.auc is not None and row.auc > 0.95 for row in present)
    assert evaluation.macro_f1 is not None and evaluation.macro_f1 > 0.9
    assert evaluation.confusion.shape == (5, 5) and evaluation.confusion.sum() == int(test.sum())
    with pytest.raises(UsageError, match="two classes"):
        train_classifier(vectors[:10], ["a"] * 10, embedding_model={})
    with pytest.raises(UsageError, match="never saw"):
        evaluate(classifier, vectors[:2], ["a", "zzz"])


def test_labelled_lists_with_and_without_a_header(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("path,label\nx.png,cat\ny.png,dog\n")
    (tmp_path / "b.csv").write_text("3048,Character1\n6775,Character2\n")
    assert read_labelled_list(tmp_path / "a.csv") == [("x.png", "cat"), ("y.png", "dog")]
    assert read_labelled_list(tmp_path / "b.csv") == [("3048", "Character1"), ("6775", "Character2")]


NAMES = {"0": "zero", "1": "one"}


@pytest.fixture(scope="module")
def clustered_digit_run(digit_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 180 digits clustered with the default command, as a user labels them: its clusters are what examples claim."""
    run_dir = tmp_path_factory.mktemp("clustered") / "run"
    done = pixclust("cluster", digit_tree, "--out", run_dir, "--no-report")
    assert done.returncode == 0, done.stderr
    return run_dir


@pytest.mark.slow
def test_examples_to_labels_to_classifier_to_predictions(
    digit_tree: Path, clustered_digit_run: Path, tmp_path: Path
) -> None:
    from sklearn.datasets import load_digits

    refs = tmp_path / "refs"
    for digit, name in NAMES.items():
        (refs / name).mkdir(parents=True)
        for image in sorted((digit_tree / digit / "batch0").glob("*.png"))[:4]:
            shutil.copy(image, refs / name / image.name)
    out = tmp_path / "labelled"
    run = label(clustered_digit_run, refs, out=out, suggest=5)
    assert run.references.counts() == {"one": 4, "zero": 4}
    truth = {str(path): NAMES.get(path.parts[-3], "none") for path in digit_tree.rglob("*") if path.is_file()}
    with open(out / LABELS_CSV, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 180 and {row["label"] for row in rows} <= {"zero", "one", "none"}
    label_accuracy = np.mean([row["label"] == truth[row["path"]] for row in rows])
    print(f"pseudo-label accuracy {label_accuracy:.3f}")
    assert label_accuracy > 0.8 and run.result.none_found
    assert (out / "sheets" / "label_zero.png").is_file() and (out / "sheets" / "suggested.png").is_file()
    assert len(run.result.suggestions) == 5

    # One round of answers, as a user looking at the suggested images would give them.
    with open(out / SUGGEST_CSV, newline="") as stream:
        suggested = list(csv.DictReader(stream))
    for row in suggested:
        row["answer"] = truth[row["path"]]
    with open(out / SUGGEST_CSV, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(suggested[0]))
        writer.writeheader()
        writer.writerows(suggested)
    answered = label(clustered_digit_run, refs, out=out, feedback=[out / SUGGEST_CSV])
    with open(out / LABELS_CSV, newline="") as stream:
        rows = list(csv.DictReader(stream))
    improved = np.mean([row["label"] == truth[row["path"]] for row in rows])
    print(f"after {answered.answers} answers: {improved:.3f}, {answered.changed} labels changed")
    assert improved >= label_accuracy and answered.changed is not None

    # Train on the pseudo-labels of batch0, test on batch1 with the true classes.
    train_csv, test_csv = tmp_path / "train.csv", tmp_path / "test.csv"
    train_csv.write_text(
        "path,label\n" + "".join(f"{r['path']},{r['label']}\n" for r in rows if "/batch0/" in r["path"])
    )
    test_csv.write_text("path,label\n" + "".join(f"{p},{t}\n" for p, t in truth.items() if "/batch1/" in p))
    classifier = train(train_csv, clustered_digit_run, out=tmp_path / "model.pkl", cv=2)
    assert classifier.head in ("logistic", "mlp") and classifier.embedding_model["model"] == "efficientnet-lite0"
    result = evaluate_saved(tmp_path / "model.pkl", test_csv, source=clustered_digit_run, out=tmp_path / "eval")
    evaluation = result.evaluation
    aucs = {row.name: row.auc for row in evaluation.per_class}
    print(f"test macro F1 {evaluation.macro_f1:.3f}, AUC {aucs}")
    assert evaluation.macro_f1 is not None and evaluation.macro_f1 > 0.6
    assert all(auc is not None and auc > 0.75 for auc in aucs.values())
    assert (tmp_path / "eval" / ROC_PNG).stat().st_size > 1000

    new = tmp_path / "new"
    new.mkdir()
    digits = load_digits()
    expected = {}
    for digit in (0, 1):
        for index in np.flatnonzero(digits.target == digit)[100:105]:
            grey = np.clip(digits.images[index] * 16, 0, 255).astype(np.uint8)
            Image.fromarray(grey).resize((64, 64), Image.Resampling.NEAREST).convert("RGB").save(new / f"{index}.png")
            expected[str(new / f"{index}.png")] = NAMES[str(digit)]
    (new / "broken.png").write_bytes(b"not a png")
    run = predict_images(tmp_path / "model.pkl", [new])
    predictions = run.predictions
    assert [Path(item.path).name for item in run.skipped] == ["broken.png"]
    assert len(predictions) == 10
    assert sum(p.label == expected[p.path] for p in predictions) >= 7
    assert all(0 < p.probability <= 1 and abs(sum(p.probabilities.values()) - 1) < 1e-6 for p in predictions)


@pytest.mark.slow
def test_commands_run_and_fail_cleanly(digit_tree: Path, digit_run: Path, tmp_path: Path) -> None:
    some = sorted((digit_tree / "0" / "batch0").glob("*.png"))[0]
    found = pixclust("similar", some, "--in", digit_run, "--top", "3", "--out", tmp_path / "sim")
    assert found.returncode == 0, found.stderr
    assert (tmp_path / "sim" / "similar.csv").read_text().count("\n") == 4
    assert (
        find_similar(digit_run, [str(some)], top=3, out=tmp_path / "sim").csv_path == tmp_path / "sim" / "similar.csv"
    )
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "similar.csv").write_text("my own table")
    kept = pixclust("similar", some, "--in", digit_run, "--top", "3", "--out", tmp_path / "notes")
    assert kept.returncode == 2 and "not a file pixclust similar wrote" in kept.stderr
    assert (tmp_path / "notes" / "similar.csv").read_text() == "my own table"
    dupes = pixclust("duplicates", digit_run, "--out", tmp_path / "dup")
    assert dupes.returncode == 0, dupes.stderr
    assert "duplicate groups" in dupes.stdout and (tmp_path / "dup" / "duplicates.csv").is_file()
    refs_csv = tmp_path / "refs.csv"
    refs_csv.write_text(
        "class,id\n" + "".join(f"zero,{p}\n" for p in sorted((digit_tree / "0" / "batch0").glob("*"))[:3])
    )
    labelled = pixclust(
        "label",
        "--refs",
        refs_csv,
        "--in",
        digit_run,
        "--out",
        tmp_path / "lab",
        "--threshold",
        "0.7",
        "--threshold",
        "0.8",
    )
    assert labelled.returncode == 0, labelled.stderr
    assert "0.70" in labelled.stdout and "0.80" in labelled.stdout
    bad = pixclust("label", "--refs", tmp_path / "missing", "--in", digit_run, "--out", tmp_path / "lab2")
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
    labels_csv = (tmp_path / "lab" / "labels.csv").read_bytes()
    slip = pixclust(
        "train", tmp_path / "lab" / "labels.csv", "--in", digit_run, "--out", tmp_path / "lab" / "labels.csv"
    )
    assert slip.returncode == 2 and "not a classifier made by 'pixclust train'" in " ".join(slip.stderr.split())
    assert (tmp_path / "lab" / "labels.csv").read_bytes() == labels_csv
    both = pixclust(
        "train",
        tmp_path / "lab" / "labels.csv",
        "--in",
        digit_run,
        "--out",
        tmp_path / "m.pkl",
        "--finetune",
        "--head",
        "mlp",
    )
    assert both.returncode == 2 and "drop --head" in both.stderr and not (tmp_path / "m.pkl").exists()
    epochs = pixclust(
        "train", tmp_path / "lab" / "labels.csv", "--in", digit_run, "--out", tmp_path / "m.pkl", "--epochs", "3"
    )
    assert epochs.returncode == 2 and "add --finetune" in epochs.stderr
    trained = pixclust(
        "train", tmp_path / "lab" / "labels.csv", "--in", digit_run, "--out", tmp_path / "m.pkl", "--head", "logistic"
    )
    assert trained.returncode == 0, trained.stderr
    # A classifier pixclust saved is what --out may replace.
    train(tmp_path / "lab" / "labels.csv", digit_run, out=tmp_path / "m.pkl", heads=("logistic",), quiet=True)
    only_zeros = tmp_path / "zeros.csv"
    only_zeros.write_text(
        "path,label\n" + "".join(f"{p},zero\n" for p in sorted((digit_tree / "0" / "batch1").glob("*")))
    )
    scored = pixclust(
        "evaluate", tmp_path / "m.pkl", "--test", only_zeros, "--in", digit_run, "--out", tmp_path / "eval"
    )
    assert scored.returncode == 0, scored.stderr
    assert "n/a" in scored.stdout and "no image of this class" in " ".join(scored.stdout.split())
    assert "nan" not in scored.stdout.lower() and (tmp_path / "eval" / "roc.png").is_file()


@pytest.mark.slow
def test_finetune_from_the_command_line(digit_tree: Path, digit_run: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    images = sorted(image for image in digit_tree.glob("*/batch0/*") if image.is_file())
    labels.write_text("path,label\n" + "".join(f"{image},{image.parts[-3]}\n" for image in images))
    model = tmp_path / "finetuned.pkl"
    trained = pixclust("train", labels, "--in", digit_run, "--out", model, "--finetune", "--epochs", "1", "--quiet")
    assert trained.returncode == 0, trained.stderr
    assert "fine-tuned: best epoch" in trained.stdout and "of 1" in trained.stdout
    assert model.is_file()
    predicted = pixclust("predict", model, digit_tree / "6" / "batch1")
    assert predicted.returncode == 0, predicted.stderr
    assert "probability" in predicted.stdout and "skipped" not in predicted.stdout
