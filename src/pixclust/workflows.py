"""The public API of look-alikes, duplicates and labelling: load inputs, compute, write outputs.

Each function is the twin of one CLI command. The computing is done by
``search``, ``label`` and ``classifier`` (which write nothing); the files
(CSV tables, contact sheets, ROC plot, the classifier) are written here, into
the output folder the caller names, atomically.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pixclust.atomic import atomic_path
from pixclust.classifier import Evaluation, Prediction, TrainedClassifier
from pixclust.embedding_sources import embed_images, extractor_for, open_embeddings
from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError
from pixclust.export import safe_file_name
from pixclust.images import SkippedFile
from pixclust.figures import write_contact_sheet, write_roc_plot
from pixclust.label import DEFAULT_THRESHOLDS, NONE, LabelResult, References
from pixclust.names import text_cells
from pixclust.search import DEFAULT_DUPLICATE_THRESHOLD, DuplicateReport, Match

if TYPE_CHECKING:
    from pixclust.finetune import FinetuneSettings
    from pixclust.models import FeatureExtractor

LABELS_CSV = "labels.csv"
SUGGEST_CSV = "suggested.csv"
DUPLICATES_CSV = "duplicates.csv"
SIMILAR_CSV = "similar.csv"
ROC_PNG = "roc.png"
SHEETS_DIR = "sheets"
DUPLICATE_LINKS_DIR = "duplicate_links"
SHEET_LIMIT = 64


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]], *, text: Collection[str]) -> Path:
    """Write the table; cells of the ``text`` columns go through :func:`pixclust.names.to_cell` (any name, never a formula)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(text_cells(header, rows, text))
    return path


def _queries(embeddings: Embeddings, queries: Sequence[str]) -> tuple[list[str], np.ndarray, list[int | None]]:
    """Query vectors: rows already in the embeddings by id/path, other paths embedded with the run's model."""
    from pixclust.search import rows_of

    rows = rows_of(embeddings, queries)
    outside = [query for query, row in zip(queries, rows, strict=True) if row is None]
    embedded: dict[str, np.ndarray] = {}
    if outside:
        paths, vectors, skipped = embed_images(outside, extractor_for(embeddings.model))
        if skipped:
            raise UsageError(f"query {skipped[0].path} cannot be used ({skipped[0].reason}); give images or ids in --in")
        embedded = dict(zip(paths, vectors, strict=True))
    names, vectors, excluded = [], [], []
    for query, row in zip(queries, rows, strict=True):
        if row is not None:
            names.append(query)
            vectors.append(embeddings.vectors[row])
            excluded.append(row)
        else:
            found = [(path, vector) for path, vector in embedded.items() if path == query or Path(path).is_relative_to(Path(query))]
            names.extend(path for path, _ in found)
            vectors.extend(vector for _, vector in found)
            excluded.extend(None for _ in found)
    return names, np.array(vectors, np.float32).reshape(len(names), embeddings.dim), excluded


@dataclass
class SimilarResult:
    queries: list[str]
    answers: list[list[Match]]
    csv_path: Path | None
    sheets: list[Path]


def find_similar(
    source: str | Path,
    queries: Sequence[str],
    *,
    top: int = 10,
    min_similarity: float | None = None,
    ids: str | Path | None = None,
    out: str | Path | None = None,
) -> SimilarResult:
    """The ``top`` look-alikes of each query (an image file, a folder, or an id in ``source``); with ``out``, a CSV and a sheet per query."""
    from pixclust.search import similar

    embeddings = open_embeddings(source, ids=ids)
    names, vectors, excluded = _queries(embeddings, queries)
    answers = similar(embeddings, vectors, query_names=names, top=top, min_similarity=min_similarity, exclude_rows=excluded)
    if out is None:
        return SimilarResult(names, answers, None, [])
    folder = Path(out)
    rows = ((m.query, m.rank, m.path, f"{m.similarity:.4f}") for answer in answers for m in answer)
    csv_path = _write_csv(folder / SIMILAR_CSV, ("query", "rank", "path", "similarity"), rows, text=("query", "path"))
    sheets = []
    if _are_files(embeddings):
        for number, (name, answer) in enumerate(zip(names, answers, strict=True)):
            sheet = folder / SHEETS_DIR / f"similar_{number:03d}_{safe_file_name(Path(name).stem)}.png"
            paths = ([name] if os.path.isfile(name) else []) + [m.path for m in answer]
            captions = (["query"] if os.path.isfile(name) else []) + [f"{m.rank}: {m.similarity:.3f}" for m in answer]
            sheets.append(write_contact_sheet(sheet, paths, captions))
    return SimilarResult(names, answers, csv_path, sheets)


def _are_files(embeddings: Embeddings) -> bool:
    return bool(embeddings.paths) and all(embeddings.content_hashes)


@dataclass
class DuplicatesResult:
    report: DuplicateReport
    embeddings: Embeddings
    csv_path: Path | None
    links: Path | None


def find_duplicate_images(
    source: str | Path,
    *,
    threshold: float = DEFAULT_DUPLICATE_THRESHOLD,
    colour: bool = True,
    ids: str | Path | None = None,
    out: str | Path | None = None,
    export: bool = False,
) -> DuplicatesResult:
    """Exact and near-duplicate groups; with ``out``, ``duplicates.csv`` and (``export``) a folder of links per group."""
    from pixclust.search import DEFAULT_COLOUR_TOLERANCE, find_duplicates

    embeddings = open_embeddings(source, ids=ids)
    # Precomputed vectors name no image files, so there are no colours to compare.
    tolerance = DEFAULT_COLOUR_TOLERANCE if colour and _are_files(embeddings) else None
    report = find_duplicates(embeddings, threshold=threshold, colour_tolerance=tolerance)
    if out is None:
        if export:
            raise UsageError("--export needs an output folder; give --out")
        return DuplicatesResult(report, embeddings, None, None)
    folder = Path(out)
    rows = (
        (number, group.kind, embeddings.paths[row], "yes" if row == group.keeper else "", *embeddings.image_sizes[row], f"{group.min_similarity:.4f}")
        for number, group in enumerate(report.groups, start=1)
        for row in group.rows
    )
    header = ("group", "kind", "path", "keep", "width", "height", "min_similarity")
    csv_path = _write_csv(folder / DUPLICATES_CSV, header, rows, text=("kind", "path", "keep"))
    links = None
    if export:
        from pixclust.export import export_cluster_folders
        from pixclust.run_folder import RunFolder

        if not _are_files(embeddings):
            raise UsageError("--export links image files, and these embeddings name no files; drop --export")
        members = [row for group in report.groups for row in group.rows]
        # Numbered from 1 like the CSV, so group 3 is in clusters/cluster_03/.
        labels = np.array([number for number, group in enumerate(report.groups, start=1) for _ in group.rows], dtype=np.int64)
        # The links get a run folder of their own, so a second --export replaces only what the first one made.
        with RunFolder.open(folder / DUPLICATE_LINKS_DIR).writing() as links_folder:
            links = export_cluster_folders(links_folder, [embeddings.paths[row] for row in members], labels)
    return DuplicatesResult(report, embeddings, csv_path, links)


def load_references(refs: str | Path, embeddings: Embeddings) -> References:
    """Examples from a folder of class folders, or from a CSV of class,id."""
    from pixclust.label import references_from_csv, references_from_folder

    if Path(refs).is_dir():
        return references_from_folder(refs, embeddings)
    if Path(refs).is_file():
        return references_from_csv(refs, embeddings)
    raise UsageError(f"--refs {refs} does not exist; give a folder with one subfolder of examples per class, or a CSV of class,id")


@dataclass
class LabelRun:
    result: LabelResult
    references: References
    labels_csv: Path
    sheets: list[Path]


def label(
    source: str | Path,
    refs: str | Path,
    *,
    out: str | Path,
    method: str = "propagate",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    suggest: int = 0,
    estimate_none: bool = True,
    ids: str | Path | None = None,
    random_state: int = 0,
) -> LabelRun:
    """Label every image in ``source`` from the examples in ``refs``; writes labels.csv and contact sheets into ``out``."""
    from pixclust.label import label_images

    embeddings = open_embeddings(source, ids=ids)
    references = load_references(refs, embeddings)
    result = label_images(
        embeddings, references, method=method, thresholds=thresholds, suggest=suggest, estimate_none=estimate_none, random_state=random_state
    )
    folder = Path(out)
    rows = (
        (path, result.label_name(row), f"{result.confidence[row]:.4f}", f"{result.similarity[row]:.4f}")
        for row, path in enumerate(result.paths)
    )
    labels_csv = _write_csv(folder / LABELS_CSV, ("path", "label", "confidence", "similarity"), rows, text=("path", "label"))
    sheets = []
    if _are_files(embeddings):
        for name in [*result.class_names, NONE]:
            members = [row for row in range(len(result.paths)) if result.label_name(row) == name]
            # The least confident first: those are the ones worth a look.
            members = sorted(members, key=lambda row: result.confidence[row])[:SHEET_LIMIT]
            if members:
                captions = [f"{result.confidence[row]:.2f}" for row in members]
                sheets.append(write_contact_sheet(folder / SHEETS_DIR / f"label_{safe_file_name(name)}.png", [result.paths[r] for r in members], captions))
    if result.suggestions:
        suggested = [(result.paths[row], result.label_name(row), f"{result.confidence[row]:.4f}") for row in result.suggestions]
        _write_csv(folder / SUGGEST_CSV, ("path", "current_label", "confidence"), suggested, text=("path", "current_label"))
        if _are_files(embeddings):
            sheets.append(write_contact_sheet(folder / SHEETS_DIR / "suggested.png", [p for p, _, _ in suggested], [lab for _, lab, _ in suggested]))
    return LabelRun(result, references, labels_csv, sheets)


def train(
    labels_csv: str | Path,
    source: str | Path,
    *,
    out: str | Path,
    heads: Sequence[str] = ("logistic", "mlp"),
    cv: int = 3,
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
    from pixclust.classifier import save_classifier, train_classifier
    from pixclust.label import read_labelled_list, rows_with_labels

    embeddings = open_embeddings(source, ids=ids)
    rows, labels = rows_with_labels(embeddings, read_labelled_list(labels_csv), what=str(labels_csv))
    model = embeddings.model | {"model_id": embeddings.model_id}
    if finetune:
        from pixclust.finetune import FinetuneSettings, finetune_classifier

        paths = [embeddings.paths[row] for row in rows]
        settings = finetune_settings or FinetuneSettings()
        classifier = finetune_classifier(paths, labels, base=model, settings=settings, random_state=random_state, quiet=quiet)
    else:
        classifier = train_classifier(embeddings.vectors[rows], labels, embedding_model=model, heads=heads, cv=cv, random_state=random_state)
    save_classifier(classifier, out)
    return classifier


def _extractor_of(classifier: TrainedClassifier) -> FeatureExtractor:
    """The network whose embeddings the classifier reads: the recorded model, or its fine-tuned network rebuilt."""
    if classifier.finetuned is None:
        return extractor_for(classifier.embedding_model)
    from pixclust.finetune import finetuned_extractor

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
) -> EvaluationRun:
    """Score a saved classifier on a labelled test list (ids in ``source``, or image paths embedded with the recorded model).

    A fine-tuned classifier's network embeds the images again, ids in ``source`` included.
    """
    from pixclust.classifier import evaluate as evaluate_classifier
    from pixclust.classifier import load_classifier
    from pixclust.label import read_labelled_list, rows_with_labels

    classifier = load_classifier(model)
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


def predict_images(model: str | Path, images: Sequence[str | Path]) -> PredictionRun:
    """Labels and probabilities for new images, embedded with the (possibly fine-tuned) model the classifier records; unusable files are listed."""
    from pixclust.classifier import load_classifier, predict

    classifier = load_classifier(model)
    paths, vectors, skipped = embed_images(images, _extractor_of(classifier))
    if not paths:
        raise UsageError(f"no usable images in {', '.join(map(str, images))}; give image files or folders")
    return PredictionRun(predict(classifier, paths, vectors), skipped)
