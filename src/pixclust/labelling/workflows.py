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

if TYPE_CHECKING:
    from pixclust.embedding.extractor import FeatureExtractor
    from pixclust.labelling.finetune import FinetuneSettings

LABELS_CSV = "labels.csv"
SUGGEST_CSV = "suggested.csv"
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
    result: LabelResult
    references: References
    labels_csv: Path
    sheets: list[Path]


def label(
    source: str | Path | Embeddings,
    refs: str | Path,
    *,
    out: str | Path,
    method: str = DEFAULT_LABEL_METHOD,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    suggest: int = 0,
    estimate_none: bool = True,
    ids: str | Path | None = None,
    random_state: int = 0,
) -> LabelRun:
    """Label every image in ``source`` from the examples in ``refs``; writes labels.csv and contact sheets into ``out``."""
    from pixclust.labelling.label import label_images

    embeddings = open_embeddings(source, ids=ids)
    references = load_references(refs, embeddings)
    result = label_images(
        embeddings,
        references,
        method=method,
        thresholds=thresholds,
        suggest=suggest,
        estimate_none=estimate_none,
        random_state=random_state,
    )
    folder = Path(out)
    rows = (
        (path, result.label_name(row), f"{result.confidence[row]:.4f}", f"{result.similarity[row]:.4f}")
        for row, path in enumerate(result.paths)
    )
    labels_csv = write_csv(
        folder / LABELS_CSV, ("path", "label", "confidence", "similarity"), rows, text=("path", "label")
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
            (result.paths[row], result.label_name(row), f"{result.confidence[row]:.4f}") for row in result.suggestions
        ]
        write_csv(
            folder / SUGGEST_CSV, ("path", "current_label", "confidence"), suggested, text=("path", "current_label")
        )
        if embeddings.names_files:
            sheets.append(
                write_contact_sheet(
                    folder / SHEETS_DIR / "suggested.png",
                    [p for p, _, _ in suggested],
                    [lab for _, lab, _ in suggested],
                )
            )
    return LabelRun(result, references, labels_csv, sheets)


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
        from pixclust.labelling.classifier_file import save_classifier
        from pixclust.labelling.label import read_labelled_list, rows_with_labels

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
        roc_png = write_roc_plot(Path(out) / ROC_PNG, evaluation.roc, aucs)
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
