"""Labelling as the CLI's ``label``, ``train``, ``evaluate`` and ``predict`` give it: load, compute, write.

The computing is done by ``label`` and ``classifier`` (which write nothing); the
files (CSV tables, contact sheets, ROC plot, the classifier) are written here,
into the folder the caller names, atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pixclust.curation.export import safe_file_name
from pixclust.embedding.files import SkippedFile
from pixclust.embedding.record import ModelRecord, WeightsSource
from pixclust.embedding.sources import embed_images, extractor_for, open_embeddings
from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError
from pixclust.labelling.classifier import DEFAULT_CV_FOLDS, HEADS, Evaluation, Prediction, TrainedClassifier
from pixclust.labelling.label import DEFAULT_LABEL_METHOD, DEFAULT_THRESHOLDS, NONE, LabelResult, References
from pixclust.names import write_csv
from pixclust.progress import quietly
from pixclust.report.figures import SHEETS_DIR, write_contact_sheet, write_roc_plot
from pixclust.runs.output_folder import OutputFolder, writing_into

if TYPE_CHECKING:
    from pixclust.embedding.extractor import FeatureExtractor
    from pixclust.labelling.finetune import FinetuneSettings

LABELS_CSV = "labels.csv"
SUGGEST_CSV = "suggested.csv"
CLASSES_CSV = "classes.csv"
ANSWERS_CSV = "answers.csv"
ROC_PNG = "roc.png"
SHEET_LIMIT = 64


def load_references(refs: str | Path, embeddings: Embeddings) -> References:
    """Examples from a folder of class folders, or from a CSV of class,id."""
    from pixclust.labelling.label import references_from_csv, references_from_folder

    if Path(refs).is_dir():
        return references_from_folder(refs, embeddings)
    if Path(refs).is_file():
        return references_from_csv(refs, embeddings)
    raise UsageError(
        f"--refs {refs} does not exist; give a folder with one subfolder of examples per class, or a CSV of class,id"
    )


@dataclass
class LabelRun:
    """What ``label`` wrote; ``changed`` counts images whose label differs from the labels.csv it replaced (None: none there)."""

    result: LabelResult
    references: References
    labels_csv: Path
    sheets: list[Path]
    answers: int = 0
    changed: int | None = None


def label(
    source: str | Path | Embeddings,
    refs: str | Path,
    *,
    out: str | Path,
    method: str = DEFAULT_LABEL_METHOD,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    suggest: int = 0,
    estimate_none: bool = True,
    feedback: Sequence[str | Path] = (),
    ids: str | Path | None = None,
    random_state: int = 0,
) -> LabelRun:
    """Label every image in ``source`` from the examples in ``refs``; writes labels.csv, classes.csv and contact sheets into ``out``.

    ``feedback`` names suggestions CSVs with their ``answer`` column filled in (``feedback.py``): the
    answered images join the examples as positives, or count against a class as negatives.
    """
    from pixclust.labelling.label import check_label_options

    check_label_options(method, thresholds, suggest, with_feedback=bool(feedback))
    folder = Path(out)
    embeddings = open_embeddings(source, ids=ids)
    references = load_references(refs, embeddings)
    with writing_into(folder, "label") as owned:
        return _label_into(
            owned, source, embeddings, references, method, thresholds, suggest, estimate_none, feedback, random_state
        )


def _label_into(
    owned: OutputFolder,
    source: str | Path | Embeddings,
    embeddings: Embeddings,
    references: References,
    method: str,
    thresholds: Sequence[float],
    suggest: int,
    estimate_none: bool,
    feedback: Sequence[str | Path],
    random_state: int,
) -> LabelRun:
    """``label``'s work once its inputs are read, under the folder's lock (answers.csv is read, then rewritten)."""
    from pixclust.labelling.feedback import feedback_from, read_answers, write_answers
    from pixclust.labelling.label import label_images
    from pixclust.labelling.structure import run_structure

    folder = owned.root
    _refuse_unread_answers(folder, feedback, suggest)
    owned.check_replaceable(_files_to_write(folder, references.class_names, suggest, feedback))
    earlier = read_answers(folder / ANSWERS_CSV) if (folder / ANSWERS_CSV).is_file() else []
    given = [answer for path in feedback for answer in read_answers(path)]
    answers = feedback_from(
        [*earlier, *given], embeddings, references.class_names, source=", ".join(map(str, feedback)) or ANSWERS_CSV
    )
    structure = None
    if method == "clusters" and not isinstance(source, Embeddings) and Path(source).is_dir():
        structure = run_structure(Path(source), embeddings)
    result = label_images(
        embeddings,
        references,
        method=method,
        thresholds=thresholds,
        suggest=suggest,
        estimate_none=estimate_none,
        structure=structure,
        feedback=answers,
        random_state=random_state,
    )
    written = []
    changed = _changed_labels(folder / LABELS_CSV, result)
    if given:
        write_answers(folder / ANSWERS_CSV, [*earlier, *given])
        written.append(folder / ANSWERS_CSV)
    rows = (
        (path, result.label_name(row), f"{result.confidence[row]:.4f}", f"{result.similarity[row]:.4f}")
        for row, path in enumerate(result.paths)
    )
    labels_csv = write_csv(
        folder / LABELS_CSV, ("path", "label", "confidence", "similarity"), rows, text=("path", "label")
    )
    if result.estimates:
        estimated = (
            (row.name, row.n_labelled, f"{row.precision:.3f}", "" if np.isnan(row.recall) else f"{row.recall:.3f}")
            for row in result.estimates
        )
        written.append(
            write_csv(
                folder / CLASSES_CSV,
                ("class", "images", "expected_precision", "expected_recall"),
                estimated,
                text=("class",),
            )
        )
    sheets = []
    if embeddings.names_files:
        for name in [*result.class_names, NONE]:
            members = [row for row in range(len(result.paths)) if result.label_name(row) == name]
            # The least confident first: those are the ones worth a look.
            members = sorted(members, key=lambda row: result.confidence[row])[:SHEET_LIMIT]
            if members:
                captions = [f"{result.confidence[row]:.2f}" for row in members]
                sheets.append(
                    write_contact_sheet(
                        folder / SHEETS_DIR / f"label_{safe_file_name(name)}.png",
                        [result.paths[r] for r in members],
                        captions,
                    )
                )
    if result.suggestions:
        suggested = [
            (result.paths[row], result.label_name(row), f"{result.confidence[row]:.4f}", "")
            for row in result.suggestions
        ]
        written.append(
            write_csv(
                folder / SUGGEST_CSV,
                ("path", "current_label", "confidence", "answer"),
                suggested,
                text=("path", "current_label", "answer"),
            )
        )
        if embeddings.names_files:
            sheets.append(
                write_contact_sheet(
                    folder / SHEETS_DIR / "suggested.png",
                    [row[0] for row in suggested],
                    [row[1] for row in suggested],
                )
            )
    owned.record([*written, labels_csv, *sheets])
    return LabelRun(result, references, labels_csv, sheets, answers=len(answers), changed=changed)


def _files_to_write(
    folder: Path, class_names: Sequence[str], suggest: int, feedback: Sequence[str | Path]
) -> list[Path]:
    """What a label run may write into ``folder``. A suggested.csv read back as feedback is the user's answers,
    kept in answers.csv, so new suggestions may replace it although the answers changed its bytes."""
    sheets = folder / SHEETS_DIR
    files = [
        folder / LABELS_CSV,
        folder / CLASSES_CSV,
        *(sheets / f"label_{safe_file_name(name)}.png" for name in [*class_names, NONE]),
    ]
    if feedback:
        files.append(folder / ANSWERS_CSV)
    if suggest:
        read_back = {Path(path).resolve() for path in feedback}
        files += [path for path in (folder / SUGGEST_CSV, sheets / "suggested.png") if path.resolve() not in read_back]
    return files


def _refuse_unread_answers(folder: Path, feedback: Sequence[str | Path], suggest: int) -> None:
    """New suggestions must not overwrite a suggested.csv whose answers were never read."""
    from pixclust.labelling.feedback import read_answers

    previous = folder / SUGGEST_CSV
    if not suggest or not previous.is_file():
        return
    if any(Path(path).resolve() == previous.resolve() for path in feedback):
        return
    try:
        unread = read_answers(previous)
    except UsageError:
        return
    if unread:
        raise UsageError(
            f"{previous} holds {len(unread)} answers not read yet and --suggest would overwrite it; "
            f"add --feedback {previous} (or move the file away)"
        )


def _changed_labels(previous_csv: Path, result: LabelResult) -> int | None:
    """Images whose label differs from the labels.csv about to be replaced (a new one counts); None if there is none."""
    from pixclust.labelling.label import read_labelled_list

    if not previous_csv.is_file():
        return None
    try:
        before = dict(read_labelled_list(previous_csv))
    except UsageError:
        return None
    return sum(before.get(path) != result.label_name(row) for row, path in enumerate(result.paths))


def train(
    labels_csv: str | Path,
    source: str | Path | Embeddings,
    *,
    out: str | Path,
    heads: Sequence[str] = HEADS,
    cv: int = DEFAULT_CV_FOLDS,
    finetune: bool = False,
    finetune_settings: FinetuneSettings | None = None,
    ids: str | Path | None = None,
    random_state: int = 0,
    quiet: bool = False,
) -> TrainedClassifier:
    """Train a classifier on the images listed in ``labels_csv`` and save it to ``out``.

    By default a head (``heads``, searched by ``cv``-fold cross-validation) on their
    stored embeddings; with ``finetune``, the network's last blocks and a linear head
    on the images themselves (``finetune.py``; a GPU when torch sees one, else the CPU).
    """
    with quietly(quiet):
        from pixclust.labelling.classifier import train_classifier
        from pixclust.labelling.classifier_file import check_replaceable, save_classifier
        from pixclust.labelling.label import read_labelled_list, rows_with_labels

        check_replaceable(out)
        embeddings = open_embeddings(source, ids=ids)
        rows, labels = rows_with_labels(embeddings, read_labelled_list(labels_csv), what=str(labels_csv))
        # Vectors whose run.json is gone still train a classifier; it cannot embed new images.
        known = embeddings.model or ModelRecord(model=None, weights=WeightsSource("none"))
        model = replace(known, model_id=embeddings.model_id)
        if finetune:
            from pixclust.labelling.finetune import FinetuneSettings, finetune_classifier

            paths = [embeddings.paths[row] for row in rows]
            settings = finetune_settings or FinetuneSettings()
            classifier = finetune_classifier(paths, labels, base=model, settings=settings, random_state=random_state)
        else:
            classifier = train_classifier(
                embeddings.vectors[rows],
                labels,
                embedding_model=model.to_dict(),
                heads=heads,
                cv=cv,
                random_state=random_state,
            )
        save_classifier(classifier, out)
        return classifier


def _extractor_of(classifier: TrainedClassifier) -> FeatureExtractor:
    """The network whose embeddings the classifier reads: the recorded model, or its fine-tuned network rebuilt."""
    if classifier.finetuned is None:
        return extractor_for(ModelRecord.from_dict(classifier.embedding_model))
    from pixclust.labelling.finetune import finetuned_extractor

    return finetuned_extractor(classifier)


def _embed_listed(paths: Sequence[str], extractor: FeatureExtractor) -> np.ndarray:
    """Vectors of listed test images, in order; every one must be usable."""
    _, vectors, skipped = embed_images(paths, extractor)
    if skipped:
        raise UsageError(f"test image {skipped[0].path} cannot be used ({skipped[0].reason}); fix or drop it")
    return vectors


@dataclass
class EvaluationRun:
    evaluation: Evaluation
    roc_png: Path | None


def evaluate(
    model: str | Path,
    test: str | Path,
    *,
    source: str | Path | None = None,
    ids: str | Path | None = None,
    out: str | Path | None = None,
    allow_pickle: bool = False,
) -> EvaluationRun:
    """Score a saved classifier on a labelled test list (ids in ``source``, or image paths embedded with the recorded model).

    A fine-tuned classifier's network embeds the images again, ids in ``source`` included. ``allow_pickle``
    also loads a classifier an older pixclust saved as a pickle (``classifier_file.load_classifier``).
    """
    from pixclust.labelling.classifier import evaluate as evaluate_classifier
    from pixclust.labelling.classifier_file import load_classifier
    from pixclust.labelling.label import read_labelled_list, rows_with_labels

    classifier = load_classifier(model, allow_pickle=allow_pickle)
    pairs = read_labelled_list(test)
    if source is None:
        vectors = _embed_listed([item for item, _ in pairs], _extractor_of(classifier))
        truth = [label for _, label in pairs]
    else:
        embeddings = open_embeddings(source, ids=ids)
        rows, truth = rows_with_labels(embeddings, pairs, what=str(test))
        if classifier.finetuned is None:
            vectors = embeddings.vectors[rows]
        else:
            # The run holds the base network's vectors; the fine-tuned network must embed the images again.
            vectors = _embed_listed([embeddings.paths[row] for row in rows], _extractor_of(classifier))
    evaluation = evaluate_classifier(classifier, vectors, truth)
    roc_png = None
    if out is not None:
        aucs = {row.name: row.auc for row in evaluation.per_class}
        with writing_into(out, "evaluate") as owned:
            owned.check_replaceable([owned.root / ROC_PNG])
            roc_png = write_roc_plot(owned.root / ROC_PNG, evaluation.roc, aucs)
            owned.record([roc_png])
    return EvaluationRun(evaluation, roc_png)


@dataclass
class PredictionRun:
    predictions: list[Prediction]
    skipped: list[SkippedFile]


def predict_images(model: str | Path, images: Sequence[str | Path], *, allow_pickle: bool = False) -> PredictionRun:
    """Labels and probabilities for new images, embedded with the (possibly fine-tuned) model the classifier records; unusable files are listed.

    ``allow_pickle`` as in :func:`evaluate`.
    """
    from pixclust.labelling.classifier import predict
    from pixclust.labelling.classifier_file import load_classifier

    classifier = load_classifier(model, allow_pickle=allow_pickle)
    paths, vectors, skipped = embed_images(images, _extractor_of(classifier))
    if not paths:
        raise UsageError(f"no usable images in {', '.join(map(str, images))}; give image files or folders")
    return PredictionRun(predict(classifier, paths, vectors), skipped)
