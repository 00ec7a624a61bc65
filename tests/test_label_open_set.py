"""Labelling by example when most images belong to no class: real digits and Fashion-MNIST, clustered as a user would."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from command_line import pixclust
from sklearn.metrics import precision_recall_fscore_support

from pixclust.embedding.sources import open_embeddings
from pixclust.errors import UsageError
from pixclust.labelling.feedback import Answer, feedback_from
from pixclust.labelling.label import NONE_LABEL, References, label_images, nearest_example_scores, threshold_labels
from pixclust.labelling.structure import run_structure
from pixclust.labelling.workflows import ANSWERS_CSV, CLASSES_CSV, LABELS_CSV, SUGGEST_CSV, train
from pixclust.labelling.workflows import evaluate as evaluate_saved
from pixclust.runs.pipeline import RunResult

LABEL_DRAWS = 40


@pytest.fixture(scope="module")
def digits_run(digits_default_run: RunResult) -> Path:
    """All 1,797 scikit-learn digits, dark on white, clustered with the default command (the quality guard's run)."""
    return digits_default_run.run_dir


@pytest.fixture(scope="module")
def fashion_run(fashion_default_run: RunResult) -> Path:
    """3,000 Fashion-MNIST test images (300 a class), clustered with the default command (the quality guard's run)."""
    return fashion_default_run.run_dir


def _truth(run: Path):
    """The run's embeddings, and each image's class: the folder it is in, as a number."""
    embeddings = open_embeddings(run)
    _, classes = np.unique([Path(path).parent.name for path in embeddings.paths], return_inverse=True)
    return embeddings, classes


def _known_f1(expected: np.ndarray, predicted: np.ndarray, n_known: int, mask: np.ndarray) -> tuple[float, float]:
    precision, _, f1, _ = precision_recall_fscore_support(
        expected[mask], predicted[mask], labels=list(range(n_known)), average="micro", zero_division=0
    )
    return float(f1), float(precision)


def _majority_none(run: Path) -> dict[str, float]:
    """Two known classes, five examples each, forty draws: known-class F1 and precision of each rule, averaged.

    Forty, not three: one example that falls into a neighbouring cluster brings all of it along, so one draw's
    F1 swings by 0.3 with the examples drawn, and the mean of three moved by more than a better clustering changes
    it (Fashion-MNIST with the neighbours' vote against without: F1 0.647 against 0.690 over draws 0-2, 0.737
    against 0.726 over draws 0-39). The forty take about 7 s.
    """
    embeddings, truth = _truth(run)
    structure = run_structure(run, embeddings)
    assert structure is not None and structure.source == "run"
    scores: dict[str, list[tuple[float, float]]] = {}
    for draw in range(LABEL_DRAWS):
        rng = np.random.default_rng(draw)
        kept = tuple(sorted(int(c) for c in rng.choice(10, 2, replace=False)))
        expected = np.array([kept.index(t) if t in kept else NONE_LABEL for t in truth])
        examples = np.concatenate([rng.choice(np.flatnonzero(truth == c), 5, replace=False) for c in kept])
        refs = References(["a", "b"], embeddings.vectors[examples], expected[examples], list(examples))
        mask = np.ones(len(truth), bool)
        mask[examples] = False
        nearest = nearest_example_scores(embeddings.vectors, refs)
        best_fixed = max(
            (_known_f1(expected, threshold_labels(nearest, t), 2, mask) for t in (0.70, 0.75, 0.80)),
            key=lambda pair: pair[0],
        )
        scores.setdefault("seed", []).append(best_fixed)
        result = label_images(embeddings, refs, structure=structure, random_state=draw)
        scores.setdefault("default", []).append(_known_f1(expected, result.labels, 2, mask))
        assert result.none_found is True
    return {
        f"{rule} {what}": float(np.mean([pair[i] for pair in values]))
        for rule, values in scores.items()
        for i, what in enumerate(("f1", "precision"))
    }


@pytest.mark.slow
def test_digits_mostly_none_beat_the_seed_rule(digits_run: Path) -> None:
    found = _majority_none(digits_run)
    print(found)
    # Measured over the forty draws (2026-12-05): default F1 0.95, precision 0.94; the seed's rule at its best
    # fixed threshold 0.49.
    assert found["default f1"] >= found["seed f1"] + 0.3
    assert found["default precision"] >= 0.85


@pytest.mark.slow
def test_fashion_mostly_none_beat_the_seed_rule(fashion_run: Path) -> None:
    found = _majority_none(fashion_run)
    print(found)
    # Measured over the forty draws (2026-12-05): default F1 0.737, precision 0.678 (0.726 and 0.700 with the
    # clusters before the neighbours' vote); the seed's rule at its best fixed threshold 0.572.
    assert found["default f1"] >= found["seed f1"] + 0.1
    assert found["default precision"] >= 0.65


@pytest.mark.slow
def test_nothing_is_none_when_every_class_has_examples(digits_run: Path) -> None:
    embeddings, truth = _truth(digits_run)
    structure = run_structure(digits_run, embeddings)
    rng = np.random.default_rng(0)
    examples = np.concatenate([rng.choice(np.flatnonzero(truth == c), 5, replace=False) for c in range(10)])
    refs = References([str(c) for c in range(10)], embeddings.vectors[examples], truth[examples], list(examples))
    result = label_images(embeddings, refs, structure=structure)
    assert result.none_found is False and not (result.labels == NONE_LABEL).any()
    forced = label_images(embeddings, refs, structure=structure, estimate_none=False)
    assert np.array_equal(result.labels, forced.labels)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def _answer(suggested: Path, truth_of) -> int:
    """Fill the answer column from the truth, as a user looking at each image would; returns rows answered."""
    with open(suggested, newline="") as stream:
        rows = list(csv.DictReader(stream))
    for row in rows:
        truth, now = truth_of(row["path"]), row["current_label"]
        row["answer"] = "yes" if truth == now else (truth if truth != "none" else "no" if now != "none" else "yes")
    with open(suggested, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


@pytest.mark.slow
def test_feedback_round_trip_from_the_command_line(digits_run: Path, tmp_path: Path) -> None:
    embeddings, truth = _truth(digits_run)
    names = {3: "three", 7: "seven"}
    rng = np.random.default_rng(0)
    refs = tmp_path / "refs.csv"
    refs.write_text(
        "class,id\n"
        + "".join(
            f"{names[c]},{embeddings.paths[row]}\n"
            for c in names
            for row in rng.choice(np.flatnonzero(truth == c), 4, replace=False)
        )
    )

    def truth_of(path: str) -> str:
        return names.get(int(Path(path).parent.name), "none")

    out = tmp_path / "labels"
    first = pixclust("label", "--refs", refs, "--in", digits_run, "--out", out, "--suggest", "12")
    assert first.returncode == 0, first.stderr
    assert "expected precision" in first.stdout and (out / CLASSES_CSV).is_file()
    with open(out / CLASSES_CSV, newline="") as stream:
        estimates = {row["class"]: row for row in csv.DictReader(stream)}
    assert set(estimates) == {"three", "seven"}
    assert all(0 <= float(row["expected_precision"]) <= 1 for row in estimates.values())
    assert (out / SUGGEST_CSV).read_text().splitlines()[0] == "path,current_label,confidence,answer"
    answered = _answer(out / SUGGEST_CSV, truth_of)
    assert answered == 12

    # Asking for new suggestions over answered ones that were never read is refused; nothing is overwritten.
    before = (out / SUGGEST_CSV).read_text()
    refused = pixclust("label", "--refs", refs, "--in", digits_run, "--out", out, "--suggest", "12")
    assert refused.returncode == 2 and "--feedback" in refused.stderr and "Traceback" not in refused.stderr
    assert (out / SUGGEST_CSV).read_text() == before

    second = pixclust(
        "label", "--refs", refs, "--in", digits_run, "--out", out, "--suggest", "12", "--feedback", out / SUGGEST_CSV
    )
    assert second.returncode == 0, second.stderr
    assert "answers used" in second.stdout and "changed label" in second.stdout
    with open(out / LABELS_CSV, newline="") as stream:
        labels = {row["path"]: row["label"] for row in csv.DictReader(stream)}
    with open(out / ANSWERS_CSV, newline="") as stream:
        kept = list(csv.DictReader(stream))
    assert len(kept) == answered
    for row in kept:
        if row["answer"] not in ("yes", "no"):
            assert labels[row["path"]] == row["answer"]
    new_suggestions = [row["path"] for row in _rows(out / SUGGEST_CSV)]
    assert not {row["path"] for row in kept} & set(new_suggestions)

    # A third round reads the kept answers again without being told, and adds the new ones.
    _answer(out / SUGGEST_CSV, truth_of)
    third = pixclust("label", "--refs", refs, "--in", digits_run, "--out", out, "--feedback", out / SUGGEST_CSV)
    assert third.returncode == 0, third.stderr
    assert len(_rows(out / ANSWERS_CSV)) == answered + len(new_suggestions)

    bad = tmp_path / "bad.csv"
    bad.write_text(f"path,current_label,answer\n{embeddings.paths[0]},none,maybe\n")
    wrong = pixclust("label", "--refs", refs, "--in", digits_run, "--out", tmp_path / "other", "--feedback", bad)
    assert wrong.returncode == 2 and "maybe" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not (tmp_path / "other" / LABELS_CSV).exists()


def test_answers_become_positives_and_negatives(digit_run: Path) -> None:
    embeddings = open_embeddings(digit_run)
    paths = embeddings.paths
    answers = [
        Answer(paths[0], "zero", "yes"),
        Answer(paths[1], "zero", "no"),
        Answer(paths[2], "none", "one"),
        Answer(paths[3], "one", "none"),
        Answer(paths[4], "none", "yes"),
        Answer(paths[5], "none", "no"),
        Answer(paths[6], "zero", "no"),
        Answer(paths[6], "zero", "One"),
    ]
    feedback = feedback_from(answers, embeddings, ["one", "zero"], source="answers.csv")
    assert sorted(feedback.positive) == [(0, 1), (2, 0), (6, 0)]
    assert sorted(feedback.negative) == [(1, 1), (3, NONE_LABEL), (4, NONE_LABEL)]
    with pytest.raises(UsageError, match="not in the run"):
        feedback_from([Answer("/nowhere.png", "one", "yes")], embeddings, ["one"], source="x.csv")


@pytest.mark.slow
def test_none_trains_and_evaluates_as_a_class(digits_run: Path, tmp_path: Path) -> None:
    embeddings, truth = _truth(digits_run)
    names = {0: "zero", 1: "one", 2: "two"}
    rows = np.arange(len(truth))
    train_rows, test_rows = rows[rows % 2 == 0], rows[rows % 2 == 1]

    def listing(path: Path, chosen: np.ndarray) -> Path:
        path.write_text(
            "path,label\n" + "".join(f"{embeddings.paths[r]},{names.get(int(truth[r]), 'none')}\n" for r in chosen)
        )
        return path

    classifier = train(
        listing(tmp_path / "train.csv", train_rows), digits_run, out=tmp_path / "m.zip", heads=("logistic",), cv=2
    )
    assert sorted(classifier.classes) == ["none", "one", "two", "zero"]
    evaluation = evaluate_saved(
        tmp_path / "m.zip", listing(tmp_path / "test.csv", test_rows), source=digits_run
    ).evaluation
    scores = {row.name: row for row in evaluation.per_class}
    print({name: (row.precision, row.recall) for name, row in scores.items()})
    assert scores["none"].support == int(np.sum(truth[test_rows] > 2))
    assert scores["none"].f1 is not None and scores["none"].f1 > 0.9 and scores["none"].auc is not None


def _three_examples(run_dir: Path, folder: Path) -> Path:
    """refs.csv naming the run's first three images as examples of one class."""
    refs = folder / "refs.csv"
    refs.write_text("class,id\n" + "".join(f"first,{path}\n" for path in open_embeddings(run_dir).paths[:3]))
    return refs


def test_a_second_label_into_the_same_folder_waits_its_turn(digit_run: Path, tmp_path: Path) -> None:
    from pixclust.errors import RunFolderBusyError
    from pixclust.labelling.workflows import label
    from pixclust.runs.folder import LOCK_FILE
    from pixclust.runs.lock import hold_lock

    refs = _three_examples(digit_run, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    held = hold_lock(out / LOCK_FILE)
    try:
        with pytest.raises(RunFolderBusyError, match="being written"):
            label(digit_run, refs, out=out)
    finally:
        os.close(held)
    assert not (out / LABELS_CSV).exists()
    assert label(digit_run, refs, out=out).labels_csv.is_file()


def test_label_leaves_a_labels_csv_it_did_not_write(digit_run: Path, tmp_path: Path) -> None:
    """The folder may hold the user's own labelled list by the same name: it is refused, untouched, before any work."""
    from pixclust.labelling.workflows import label

    refs = _three_examples(digit_run, tmp_path)
    out = tmp_path / "project"
    out.mkdir()
    typed = "path,label\nsome/photo.jpg,cat\n"
    (out / LABELS_CSV).write_text(typed)
    with pytest.raises(UsageError, match=r"labels\.csv is not a file pixclust label wrote"):
        label(digit_run, refs, out=out)
    assert (out / LABELS_CSV).read_text() == typed and not (out / "sheets").exists()

    (out / LABELS_CSV).unlink()
    (out / "sheets").symlink_to(tmp_path)
    with pytest.raises(UsageError, match="is a link"):
        label(digit_run, refs, out=out)
    (out / "sheets").unlink()
    first = label(digit_run, refs, out=out)
    assert label(digit_run, refs, out=out).labels_csv == first.labels_csv
