"""What each command prints: Rich tables and one-line summaries of the library's results."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pixclust.names import printable
from pixclust.runs.folder import CLUSTERS_CSV, REPORT_FILE

if TYPE_CHECKING:
    from pixclust.curation.duplicates import DuplicateReport
    from pixclust.curation.interchange import ExportRun
    from pixclust.curation.lookalikes import DuplicatesResult, SimilarResult
    from pixclust.curation.move import MoveReport
    from pixclust.embedding.ink_choice import InkChoice
    from pixclust.embedding.weights import ModelStatus
    from pixclust.labelling.classifier import TrainedClassifier
    from pixclust.labelling.workflows import EvaluationRun, LabelRun, PredictionRun
    from pixclust.runs.add import AddResult
    from pixclust.runs.apply import ApplyResult
    from pixclust.runs.pipeline import RunResult
    from pixclust.runs.sharded import ShardedRun
    from pixclust.runs.sharded_duplicates import ShardedDuplicates
    from pixclust.runs.sharded_embed import ShardedEmbedding


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    # Messages stay one line however narrow the terminal: scripts and people grep them.
    # No emoji codes: a file named ":smile:.png" is printed as its name.
    return Console(stderr=stderr, highlight=False, soft_wrap=stderr, emoji=False)


def shown(value: object) -> str:
    """A user-controlled string (a path, a class name, an error naming them) ready for Rich to print as it is.

    Brackets would be read as Rich markup ("a[/b].png" raises MarkupError), control
    characters would reach the terminal ("\\x1b[2J" clears it), and bytes that are
    not UTF-8 cannot be written: each is shown as its escape instead.
    """
    from rich.markup import escape

    return escape(printable(str(value)))


def _table(columns: Sequence[str], right: Sequence[str] = (), **title: Any) -> Any:
    """A table with these columns, those in ``right`` (numbers) right-aligned."""
    from rich.table import Table

    table = Table(**title)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    return table


def render_run(result: RunResult) -> None:
    out = console()
    named = result.names is not None
    table = _table(
        ("cluster", *(("shows",) if named else ()), "images", "share", "duplication"),
        right=("images", "share", "duplication"),
        title=f"{result.clustering.n_clusters} clusters",
        title_justify="left",
    )
    for row in result.summary:
        shows = (shown(row.description),) if named else ()
        table.add_row(shown(row.name), *shows, f"{row.images:,}", f"{row.share:.1%}", f"{row.duplication:.1%}")
    total = len(result.embeddings)
    redundant = sum(row.duplication for row in result.summary)
    table.add_section()
    table.add_row("total", *(("",) if named else ()), f"{total:,}", "100.0%", f"{redundant:.1%}")
    out.print(table)
    if not named:
        out.print(f"cluster names: none (model {result.config.model} has no ImageNet classifier pixclust can read)")

    clustering = result.clustering
    scan = clustering.k_scan
    if scan is not None:
        elbow = "none" if scan.elbow_k is None else str(scan.elbow_k)
        out.print(
            f"k chosen by {scan.criterion}: {scan.chosen_k} (scanned {scan.ks[0]}..{scan.ks[-1]}; elbow at {elbow})"
        )
    _render_ink(result.ink)
    if clustering.choice is not None:
        out.print(f"features chosen by stability: {clustering.choice['representation']}")
    silhouette = "n/a" if math.isnan(clustering.silhouette) else f"{clustering.silhouette:.3f}"
    out.print(f"silhouette: {silhouette}")
    if result.scores is not None:
        scores = result.scores
        out.print(
            f"against truth ({result.n_scored:,} images): ACC {scores['acc']:.3f}  NMI {scores['nmi']:.3f}  ARI {scores['ari']:.3f}"
        )
    embeddings = result.embeddings
    out.print(
        f"{total:,} images used, {len(embeddings.skipped):,} skipped"
        + (" (see errors.csv)" if embeddings.skipped else "")
        + f"; {embeddings.n_extracted:,} embedded, {embeddings.n_reused:,} reused"
    )
    if result.flags is not None:
        render_flags(result.flags.counts(), result.flags.n_flagged, result.config.report)
    if result.config.report:
        render_report(result.run_dir / REPORT_FILE)
    if result.moves is not None:
        render_moves(result.moves)
    out.print(f"run folder: {shown(result.run_dir)}")


def render_flags(counts: dict[str, int], n_flagged: int, in_report: bool) -> None:
    """One line: how many images have quality flags, and how many of each."""
    if not n_flagged:
        console().print("quality flags: none")
        return
    each = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    where = "the report's Flags section and " if in_report else ""
    console().print(f"quality flags: {n_flagged:,} images ({each}); see {where}clusters.csv's flags column")


# Adding a folder the run already holds names every image once; a screenful says what happened.
SHOWN_ALREADY = 10


def render_add(result: AddResult) -> None:
    """Where the batch went: images per cluster, novel ones, copies and images the run held already."""
    from pixclust.curation.export import NOVEL_CLUSTER

    out = console()
    counts = Counter(result.clusters)
    if result.paths:
        table = _table(("cluster", "added"), right=("added",), title=f"{result.batch}", title_justify="left")
        for name in sorted(counts, key=lambda name: (name == NOVEL_CLUSTER, name)):
            table.add_row(name, f"{counts[name]:,}")
        out.print(table)
    out.print(
        f"{len(result.paths):,} images added ({result.n_extracted:,} embedded), {result.n_novel:,} fit no cluster "
        f"(in {NOVEL_CLUSTER}), {len(result.already):,} already in the run, {len(result.skipped):,} skipped"
        + (" (see errors.csv)" if result.skipped else "")
    )
    for path, existing in result.already[:SHOWN_ALREADY]:
        out.print(f"already in the run: {shown(path)} (as {shown(existing)})")
    if len(result.already) > SHOWN_ALREADY:
        out.print(f"... and {len(result.already) - SHOWN_ALREADY:,} more already in the run")
    if result.duplicates:
        out.print(f"{len(result.duplicates):,} added images copy others: see added_duplicates.csv")
    if result.suggest_reclustering:
        out.print(
            f"{result.n_novel:,} of the {len(result.paths):,} new images fit no cluster: clustering again may "
            "find new groups (pixclust cluster reuses every stored vector)"
        )
    out.print(f"run folder: {shown(result.run_dir)}")


def render_report(path: Path) -> None:
    console().print(f"report: {shown(path)}")


_MOVED_INTO = {"clusters": "into the cluster folders", "duplicate_copies": "aside into duplicate_copies/"}


def render_moves(report: MoveReport) -> None:
    """The moves made; exit code 1 when some images are not yet where they were going."""
    out = console()
    where = "back to where they were" if report.restored else _MOVED_INTO.get(report.into, f"into {report.into}/")
    out.print(f"{report.moved:,} images moved {where}; the journal is {shown(report.journal)}")
    for file, why in report.kept:
        out.print(f"not moved: {shown(file)}: {shown(why)}")
    for move, why in report.left:
        out.print(f"not moved: {shown(move.destination if report.restored else move.source)}: {shown(why)}")
    if report.left:
        out.print(
            f"{len(report.left):,} images are not yet {'back' if report.restored else 'moved'}; fix the cause, then: "
            f"pixclust resume-move {shown(report.journal.parent)}"
        )
        raise typer.Exit(1)


def render_models(statuses: Sequence[ModelStatus], default: str) -> None:
    table = _table(("model", "dim", "offline", "description", "weights"), right=("dim",))
    for status in statuses:
        name = status.spec.name + (" (default)" if status.spec.name == default else "")
        table.add_row(
            name, str(status.spec.dim), "yes" if status.offline else "no", status.spec.description, shown(status.note)
        )
    out = console()
    out.print(table)
    out.print("Any timm model also works as timm:NAME (weights download on first use).")


def render_similar(result: SimilarResult) -> None:
    out = console()
    for query, answer in zip(result.queries, result.answers, strict=True):
        title = shown(query) if answer else f"{shown(query)}: no match"
        table = _table(("rank", "similarity", "path"), right=("rank", "similarity"), title=title, title_justify="left")
        for match in answer:
            table.add_row(str(match.rank), f"{match.similarity:.3f}", shown(match.path))
        out.print(table)
    if result.csv_path:
        out.print(f"table: {shown(result.csv_path)}; {len(result.sheets)} contact sheets")


# Duplicate groups listed in the terminal, largest first; the rest are in duplicates.csv.
SHOWN_GROUPS = 50


def render_duplicates(result: DuplicatesResult) -> None:
    _render_duplicate_groups(result.report, result.embeddings.paths, result.csv_path, result.links)
    if result.moves is not None:
        render_moves(result.moves)


def render_sharded_embedding(run: ShardedEmbedding) -> None:
    out = console()
    out.print(
        f"{run.rows:,} images in {_count(run.parts, 'part')} of {run.dim}-number vectors: {run.n_extracted:,} "
        f"embedded, {run.n_reused:,} reused, {len(run.skipped):,} skipped"
        + (" (see errors.csv)" if run.skipped else "")
    )
    if run.parts_rewritten:
        out.print(f"{_count(run.parts_rewritten, 'part')} written again for files gone, changed or copied")
    _render_ink(run.ink)
    hog = f" and the HOG view in {shown(run.hog_dir)}" if run.hog_dir else ""
    out.print(f"wrote {shown(run.parts_dir)}{hog} in {run.seconds:.1f} s")
    out.print(f"next: pixclust cluster-shards {shown(run.run_dir)} --out CLUSTER_RUN")


def _render_ink(ink: InkChoice | None) -> None:
    """The sample's finding, where it had the network see ink on paper as grey."""
    if ink is not None and ink.wanted:
        console().print(
            f"ink on plain paper in {ink.ink} of {ink.read} pictures sampled, {ink.papers_apart} on papers apart: "
            f"the network saw them as grey ink on white (--ink off keeps their colours)"
        )


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def render_sharded_duplicates(found: ShardedDuplicates) -> None:
    _render_duplicate_groups(found.report, found.rows.paths, found.csv_path, None)
    layout = found.layout
    compared = "compared on their files" if found.verified_files else "not compared (no content hashes: no files known)"
    console().print(
        f"index: {layout['cells']:,} cells, {layout['code_bytes']} bytes a vector, trained on "
        f"{layout['sample_rows']:,} rows; pairs {compared}; {found.seconds:.1f} s"
    )


def _render_duplicate_groups(
    report: DuplicateReport, paths: Sequence[str], csv_path: Path | None, links: Path | None
) -> None:
    table = _table(
        ("group", "kind", "images", "keep", "copies"),
        right=("group", "images"),
        title=f"{len(report.groups)} duplicate groups",
        title_justify="left",
    )
    for number, group in enumerate(report.groups[:SHOWN_GROUPS], start=1):
        kinds = Counter(kind for kind in group.kinds if kind != "keeper")
        copies = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
        table.add_row(str(number), group.kind, str(len(group.rows)), shown(paths[group.keeper]), copies)
    out = console()
    out.print(table)
    if len(report.groups) > SHOWN_GROUPS:
        out.print(f"... and {len(report.groups) - SHOWN_GROUPS:,} more groups (see the table)")
    out.print(
        f"{report.n_redundant:,} of {report.n_images:,} images ({report.n_redundant / max(report.n_images, 1):.1%}) could be dropped; "
        f"{report.candidates:,} look-alike pairs, {report.verified:,} compared on their files "
        f"({report.recoloured:,} recoloured, {report.unreadable:,} unreadable)"
    )
    if csv_path:
        out.print(f"table: {shown(csv_path)}" + (f"; links: {shown(links)}" if links else ""))


def render_export(run: ExportRun) -> None:
    duplicates = (
        "no duplicate groups known (build the report once to find them)"
        if run.n_duplicates is None
        else f"{run.n_duplicates:,} images in duplicate groups"
    )
    console().print(f"exported {run.n_images:,} images in {run.n_clusters:,} clusters; {duplicates}")
    for path in run.files:
        console().print(f"wrote {shown(path)}")


def render_apply(result: ApplyResult) -> None:
    if result.already_applied:
        console().print(f"{shown(result.edits_file)} is already applied to {shown(result.run_dir)}; nothing changed")
        return
    console().print(
        f"applied {shown(result.edits_file)}: {result.images_moved:,} images moved, "
        f"{result.renamed:,} clusters renamed, {result.merged:,} merged away"
    )
    table = _table(("cluster", "images"), right=("images",))
    for name, size in sorted(result.clusters.items()):
        table.add_row(shown(name), f"{size:,}")
    console().print(table)
    console().print(
        f"the corrections are kept: 'pixclust cluster' and 'pixclust add' of {shown(result.run_dir)} keep them"
    )


# Clusters listed after a sharded run; a run of 1,000 clusters is read from its table, not the terminal.
SHOWN_CLUSTERS = 20


def render_sharded(run: ShardedRun) -> None:
    summary = run.summary
    console().print(
        f"{summary['rows']:,} embeddings in {run.n_clusters:,} clusters (fitted on {summary['sample_rows']:,}, "
        f"{summary['novel']:,} outside every cluster) in {summary['seconds']} s"
    )
    sizes = summary["sizes"]
    table = _table(("cluster_id", "images", "share"), right=("cluster_id", "images", "share"))
    largest = sorted(range(len(sizes)), key=lambda cluster_id: (-sizes[cluster_id], cluster_id))
    for cluster_id in largest[:SHOWN_CLUSTERS]:
        table.add_row(str(cluster_id), f"{sizes[cluster_id]:,}", f"{sizes[cluster_id] / summary['rows']:.1%}")
    console().print(table)
    if len(sizes) > SHOWN_CLUSTERS:
        console().print(f"... and {len(sizes) - SHOWN_CLUSTERS:,} smaller clusters")
    if summary.get("choice"):
        hog = "given" if summary.get("hog_inputs") else "none given"
        console().print(f"features chosen by stability: {summary['choice']['representation']} (HOG vectors {hog})")
    written = "clusters.csv and " if (run.run_dir / CLUSTERS_CSV).is_file() else ""
    console().print(f"wrote {written}cluster_table/ to {shown(run.run_dir)}")


def render_labels(run: LabelRun, out_dir: Path) -> None:
    from pixclust.report.figures import SHEETS_DIR

    result = run.result
    names = [*result.class_names, "none"]
    table = _table(
        ("threshold", *(shown(name) for name in names)),
        right=("threshold", *(shown(name) for name in names)),
        title="nearest-example rule: images per class at each threshold",
        title_justify="left",
    )
    for cut, counts in result.table.items():
        table.add_row(f"{cut:.2f}", *(f"{counts[name]:,}" for name in names))
    counts = result.counts()
    table.add_section()
    table.add_row(f"{result.method}", *(f"{counts[name]:,}" for name in names))
    out = console()
    out.print(table)
    out.print("examples: " + ", ".join(f"{shown(name)} {n}" for name, n in run.references.counts().items()))
    if result.none_found is False:
        out.print("every cluster holds examples as far as chance allows, so no image is 'none'")
    if result.estimates:
        estimates = _table(
            ("class", "images", "expected precision", "expected recall"),
            right=("images", "expected precision", "expected recall"),
            title="estimated from the data alone (no labels): how far to trust each class",
            title_justify="left",
        )
        for row in result.estimates:
            recall = "n/a" if math.isnan(row.recall) else f"{row.recall:.2f}"
            estimates.add_row(shown(row.name), f"{row.n_labelled:,}", f"{row.precision:.2f}", recall)
        out.print(estimates)
    if run.answers:
        changed = "" if run.changed is None else f"; {run.changed:,} images changed label since the last labels.csv"
        out.print(f"answers used: {run.answers:,} (kept in {shown(out_dir / 'answers.csv')}){changed}")
    for row in result.suggestions:
        out.print(
            f"label next: {shown(result.paths[row])} (now {shown(result.label_name(row))}, confidence {result.confidence[row]:.2f})"
        )
    if result.suggestions:
        out.print(
            f"answer them in {shown(out_dir / 'suggested.csv')} (yes, no, none or a class name), then run "
            "label again with --feedback on that file"
        )
    out.print(f"labels: {shown(run.labels_csv)}; {len(run.sheets)} contact sheets in {shown(out_dir / SHEETS_DIR)}")


def render_training_device(device: str) -> None:
    if device == "cpu":
        console().print("note: no CUDA GPU visible, so fine-tuning runs on the CPU (slower)")


def render_training(classifier: TrainedClassifier, path: Path) -> None:
    out = console()
    out.print("classes: " + ", ".join(f"{shown(name)} {n:,}" for name, n in classifier.class_counts.items()))
    if classifier.finetuned is None:
        out.print(f"best: {classifier.head} {classifier.params}, cross-validated macro F1 {classifier.cv_f1:.3f}")
    else:
        history = classifier.finetuned.history
        out.print(
            f"fine-tuned: best epoch {classifier.finetuned.best_epoch} of {len(history) - 1}, validation macro F1 {classifier.cv_f1:.3f} "
            f"(linear probe alone {history[0]['validation_f1']:.3f}, {len(classifier.finetuned.validation):,} held-out images)"
        )
    out.print(f"classifier: {shown(path)}")


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render_evaluation(run: EvaluationRun) -> None:
    evaluation = run.evaluation
    table = _table(
        ("class", "support", "precision", "recall", "F1", "AUC"),
        right=("support", "precision", "recall", "F1", "AUC"),
        title=f"{evaluation.n:,} test images, accuracy {evaluation.accuracy:.3f}, macro F1 {_score(evaluation.macro_f1)}",
        title_justify="left",
    )
    for row in evaluation.per_class:
        table.add_row(
            shown(row.name),
            f"{row.support:,}",
            _score(row.precision),
            _score(row.recall),
            _score(row.f1),
            _score(row.auc),
        )
    out = console()
    out.print(table)
    for row in evaluation.per_class:
        if row.note:
            out.print(f"{shown(row.name)}: {shown(row.note)}")
    classes = [shown(name) for name in evaluation.classes]
    confusion = _table(
        ("", *classes), right=classes, title="confusion (rows: truth, columns: predicted)", title_justify="left"
    )
    for name, counts in zip(classes, evaluation.confusion, strict=True):
        confusion.add_row(name, *(f"{int(n):,}" for n in counts))
    out.print(confusion)
    if run.roc_png:
        out.print(f"ROC curves: {shown(run.roc_png)}")


def render_predictions(run: PredictionRun) -> None:
    table = _table(("path", "label", "probability"), right=("probability",))
    for item in run.predictions:
        table.add_row(shown(item.path), shown(item.label), f"{item.probability:.3f}")
    out = console()
    out.print(table)
    for item in run.skipped:
        out.print(f"skipped {shown(item.path)}: {shown(item.reason)} ({shown(item.detail)})")
