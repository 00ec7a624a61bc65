"""The ``pixclust`` command: parse arguments, call the library, render the result.

Nothing else lives here. The library raises :class:`PixclustError` for
anything a user can cause; :func:`main` prints its one-line message and
exits with its code, so a user never sees a traceback for their own mistake.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from pixclust.errors import PixclustError, UsageError
from pixclust.names import printable

if TYPE_CHECKING:
    from pixclust.curation.move import MoveReport
    from pixclust.runs.pipeline import RunResult

app = typer.Typer(
    help="Organise unlabeled images: embed them with a pretrained network, cluster, and export the groups.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help text: with Rich markup on, every "[default: ...]" in an option's help vanished as an unknown tag.
    rich_markup_mode=None,
)

EXIT_INTERRUPTED = 130


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    # Messages stay one line however narrow the terminal: scripts and people grep them.
    # No emoji codes: a file named ":smile:.png" is printed as its name.
    return Console(stderr=stderr, highlight=False, soft_wrap=stderr, emoji=False)


def _shown(value: object) -> str:
    """A user-controlled string (a path, a class name, an error naming them) ready for Rich to print as it is.

    Brackets would be read as Rich markup ("a[/b].png" raises MarkupError), control
    characters would reach the terminal ("\\x1b[2J" clears it), and bytes that are
    not UTF-8 cannot be written: each is shown as its escape instead.
    """
    from rich.markup import escape

    return escape(printable(str(value)))


@app.command("cluster")
def cluster_command(
    source: Annotated[Path | None, typer.Argument(help="Folder (searched recursively) or file of images.")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder [default: pixclust-out/<folder name>].")
    ] = None,
    k: Annotated[
        str | None,
        typer.Option(
            help="Number of clusters, or 'auto' to choose it (modularity, or silhouette with --pipeline fixed) [default: auto]."
        ),
    ] = None,
    k_min: Annotated[int | None, typer.Option(help="Smallest k scanned by --k auto [default: 2].")] = None,
    k_max: Annotated[int | None, typer.Option(help="Largest k scanned by --k auto [default: 20].")] = None,
    pipeline: Annotated[
        str | None,
        typer.Option(
            help="auto: choose features (embedding, or embedding+HOG) and k without labels, k-means, refine; "
            "fixed: --reduce then --method [default: auto]."
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="kmeans, agglomerative, gmm or hdbscan; implies --pipeline fixed [default: kmeans]."),
    ] = None,
    reduce: Annotated[
        str | None,
        typer.Option(
            help="Space to cluster in: pca, umap, lle, spectral, none; implies --pipeline fixed [default: pca]."
        ),
    ] = None,
    refine: Annotated[
        bool | None,
        typer.Option(
            "--refine/--no-refine", help="Let nearest neighbours correct k-means (--pipeline auto) [default: --refine]."
        ),
    ] = None,
    n_components: Annotated[
        int | None, typer.Option(help="Dimensions kept by --reduce [default: 50 for pca, 10 otherwise].")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Feature model; see 'pixclust models' [default: efficientnet-lite0].")
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="Weights file for the model, or 'random' for plumbing tests.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed; the same seed gives the same clusters [default: 0].")
    ] = None,
    truth: Annotated[
        str | None, typer.Option(help="Score against known classes: 'folders' or a CSV of path,label.")
    ] = None,
    copy: Annotated[
        bool | None, typer.Option("--copy/--link", help="Copy images into cluster folders instead of linking.")
    ] = None,
    move: Annotated[
        bool | None,
        typer.Option(
            "--move", help="Move the images into the cluster folders (journalled; see 'pixclust resume-move')."
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per model call [default: 32].")] = None,
    workers: Annotated[int | None, typer.Option(help="Decode worker processes [default: one per core].")] = None,
    max_pixels: Annotated[int | None, typer.Option(help="Skip images with more pixels than this (bomb guard).")] = None,
    include_hidden: Annotated[
        bool | None, typer.Option("--include-hidden", help="Also read hidden files and folders.")
    ] = None,
    runtime: Annotated[
        str | None, typer.Option(help="Where the network runs: auto, openvino, onnxruntime, torch [default: auto].")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto, fp32, bf16 or fp16 [default: auto: bf16 where the CPU has it, fp16 on a GPU]."),
    ] = None,
    maps: Annotated[
        list[str] | None,
        typer.Option(
            "--map", help="Maps in the report: pca, tsne, umap; repeat or comma-separate [default: pca,tsne]."
        ),
    ] = None,
    report: Annotated[
        bool | None, typer.Option("--report/--no-report", help="Write plots/ and report.html [default: --report].")
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="Where images are embedded: local, or ray (a Ray cluster; needs the ray extra, see docs/SCALE.md) [default: local]."
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster for --engine ray: host:6379 or ray://host:10001 [default: the one 'ray start' made here, else a new local one]."
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Repeat a run from its run.json; other options override it.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Group the images in SOURCE; writes clusters.csv, errors.csv, run.json and clusters/ to the run folder."""
    from pixclust.runs.pipeline import RunConfig, run

    given = {
        "source": None if source is None else str(source),
        "out": None if out is None else str(out),
        "k": k,
        "k_min": k_min,
        "k_max": k_max,
        "pipeline": pipeline,
        "method": method,
        "reduce": reduce,
        "refine": refine,
        "n_components": n_components,
        "model": model,
        "weights": weights,
        "seed": seed,
        "truth": truth,
        "copy": copy,
        "move": move,
        "batch_size": batch_size,
        "workers": workers,
        "max_pixels": max_pixels,
        "include_hidden": include_hidden,
        "runtime": runtime,
        "precision": precision,
        "maps": _split_maps(maps),
        "report": report,
        "engine": engine,
        "address": address,
    }
    chosen = {name: value for name, value in given.items() if value is not None}
    settings = _read_config(config) if config else {}
    settings.update(chosen)
    source = settings.get("source")
    if not source:
        raise UsageError("no image folder given; run: pixclust cluster FOLDER (or --config RUN/run.json)")
    if isinstance(source, str):
        # abspath, not resolve(): a source that is not a usable path is for RunConfig to refuse in one line.
        settings.setdefault("out", str(Path("pixclust-out") / (os.path.basename(os.path.abspath(source)) or "run")))
    # Settings replayed from --config are not the user's choices now: only the options typed are checked as such.
    _render_run(run(RunConfig.from_dict(settings, given=set(chosen), from_cli=True), quiet=quiet))


def _split_maps(values: list[str] | None) -> list[str] | None:
    """``--map pca --map tsne`` and ``--map pca,tsne`` mean the same."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _read_config(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise UsageError(f"--config {path}: cannot read it ({error.strerror}); pass a run folder's run.json") from error
    except UnicodeDecodeError as error:
        raise UsageError(
            f"--config {path}: not UTF-8 text (byte {error.start}); pass a run.json written by pixclust cluster"
        ) from error
    except json.JSONDecodeError as error:
        raise UsageError(f"--config {path}: not valid JSON ({error.msg}, line {error.lineno})") from error
    except RecursionError as error:
        raise UsageError(f"--config {path}: nested too deeply to be a run.json written by pixclust cluster") from error
    settings = record.get("config") if isinstance(record, dict) else None
    if not isinstance(settings, dict):
        raise UsageError(f"--config {path}: has no 'config' section; pass a run.json written by pixclust cluster")
    return dict(settings)


def _render_run(result: RunResult) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title=f"{result.clustering.n_clusters} clusters", title_justify="left")
    table.add_column("cluster")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    table.add_column("duplication", justify="right")
    for row in result.summary:
        table.add_row(row.name, f"{row.images:,}", f"{row.share:.1%}", f"{row.duplication:.1%}")
    total = len(result.embeddings)
    redundant = sum(row.duplication for row in result.summary)
    table.add_section()
    table.add_row("total", f"{total:,}", "100.0%", f"{redundant:.1%}")
    console.print(table)

    clustering = result.clustering
    scan = clustering.k_scan
    if scan is not None:
        elbow = "none" if scan.elbow_k is None else str(scan.elbow_k)
        console.print(
            f"k chosen by {scan.criterion}: {scan.chosen_k} (scanned {scan.ks[0]}..{scan.ks[-1]}; elbow at {elbow})"
        )
    if clustering.choice is not None:
        console.print(f"features chosen by stability: {clustering.choice['representation']}")
    silhouette = "n/a" if math.isnan(clustering.silhouette) else f"{clustering.silhouette:.3f}"
    console.print(f"silhouette: {silhouette}")
    if result.scores is not None:
        scores = result.scores
        console.print(
            f"against truth ({result.n_scored:,} images): ACC {scores['acc']:.3f}  NMI {scores['nmi']:.3f}  ARI {scores['ari']:.3f}"
        )
    embeddings = result.embeddings
    console.print(
        f"{total:,} images used, {len(embeddings.skipped):,} skipped"
        + (" (see errors.csv)" if embeddings.skipped else "")
        + f"; {embeddings.n_extracted:,} embedded, {embeddings.n_reused:,} reused from the store"
    )
    if result.config.report:
        console.print(f"report: {_shown(result.run_dir / 'report.html')}")
    if result.moves is not None:
        _render_moves(result.moves)
    console.print(f"run folder: {_shown(result.run_dir)}")


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by 'pixclust cluster'.")],
    maps: Annotated[
        list[str] | None,
        typer.Option("--map", help="Maps: pca, tsne, umap; repeat or comma-separate [default: pca,tsne]."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Rebuild plots/ and report.html of a run folder (maps and thumbnails are reused)."""
    from pixclust.clustering.maps import DEFAULT_MAPS
    from pixclust.report import build_report

    path = build_report(run_dir, maps=_split_maps(maps) or list(DEFAULT_MAPS), quiet=quiet)
    _console().print(f"report: {_shown(path)}")


@app.command("models")
def models_command() -> None:
    """List the feature models, their dimensions, and whether each runs offline right now."""
    from rich.table import Table

    from pixclust.embedding.models import DEFAULT_MODEL
    from pixclust.embedding.weights import model_statuses

    table = Table()
    for column in ("model", "dim", "offline", "description", "weights"):
        table.add_column(column, justify="right" if column == "dim" else "left")
    for status in model_statuses():
        name = status.spec.name + (" (default)" if status.spec.name == DEFAULT_MODEL else "")
        table.add_row(
            name, str(status.spec.dim), "yes" if status.offline else "no", status.spec.description, _shown(status.note)
        )
    console = _console()
    console.print(table)
    console.print("Any timm model also works as timm:NAME (weights download on first use).")


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the digit images and the run folder go.")] = Path(
        "demo-out"
    ),
    k: Annotated[str, typer.Option(help="Number of clusters (the digits have 10), or 'auto'.")] = "10",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Cluster scikit-learn's 1,797 handwritten digits (written as PNGs) and score against their classes."""
    from pixclust.demo import run_demo

    _console().print(f"Writing scikit-learn's digits as PNG files under {_shown(out)} and clustering them...")
    _render_run(run_demo(out, k=k, quiet=quiet))


@app.command("similar")
def similar_command(
    queries: Annotated[list[str], typer.Argument(help="Image files, folders of images, or ids already in --in.")],
    source: Annotated[Path, typer.Option("--in", help="Run folder, or an embeddings.npy (with --ids).")],
    top: Annotated[int, typer.Option(help="Look-alikes per query.")] = 10,
    min_sim: Annotated[
        float | None, typer.Option("--min-sim", help="Leave out matches below this cosine similarity.")
    ] = None,
    ids: Annotated[
        Path | None, typer.Option(help="CSV of ids, one per row of embeddings.npy (default: row numbers).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write similar.csv and a contact sheet per query here.")
    ] = None,
) -> None:
    """Find the images most like each query, by cosine similarity of embeddings."""
    from rich.table import Table

    from pixclust.curation.lookalikes import find_similar

    result = find_similar(source, queries, top=top, min_similarity=min_sim, ids=ids, out=out)
    console = _console()
    for query, answer in zip(result.queries, result.answers, strict=True):
        table = Table(title=_shown(query) if answer else f"{_shown(query)}: no match", title_justify="left")
        for column in ("rank", "similarity", "path"):
            table.add_column(column, justify="left" if column == "path" else "right")
        for match in answer:
            table.add_row(str(match.rank), f"{match.similarity:.3f}", _shown(match.path))
        console.print(table)
    if result.csv_path:
        console.print(f"table: {_shown(result.csv_path)}; {len(result.sheets)} contact sheets")


@app.command("duplicates")
def duplicates_command(
    source: Annotated[Path, typer.Argument(help="Run folder, or an embeddings.npy (with --ids).")],
    threshold: Annotated[
        float, typer.Option(help="Cosine similarity at or above which two images are near-duplicates.")
    ] = 0.90,
    colour: Annotated[
        bool,
        typer.Option(
            "--colour/--no-colour", help="Also require matching 16x16 colour thumbnails (reads the image files)."
        ),
    ] = True,
    ids: Annotated[
        Path | None, typer.Option(help="CSV of ids, one per row of embeddings.npy (default: row numbers).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write duplicates.csv here.")] = None,
    export: Annotated[
        bool, typer.Option("--export", help="Also link group N's images into OUT/duplicate_links/clusters/cluster_N/.")
    ] = False,
) -> None:
    """Group exact and near-duplicate images and suggest which one of each group to keep (the largest)."""
    from rich.table import Table

    from pixclust.curation.lookalikes import find_duplicate_images

    result = find_duplicate_images(source, threshold=threshold, colour=colour, ids=ids, out=out, export=export)
    report, paths = result.report, result.embeddings.paths
    table = Table(title=f"{len(report.groups)} duplicate groups", title_justify="left")
    for column in ("group", "kind", "images", "keep", "min sim"):
        table.add_column(column, justify="right" if column in ("group", "images", "min sim") else "left")
    for number, group in enumerate(report.groups, start=1):
        table.add_row(
            str(number), group.kind, str(len(group.rows)), _shown(paths[group.keeper]), f"{group.min_similarity:.3f}"
        )
    console = _console()
    console.print(table)
    console.print(
        f"{report.n_redundant:,} of {report.n_images:,} images ({report.n_redundant / max(report.n_images, 1):.1%}) could be dropped; "
        f"colour compared for {report.colour_checked:,} pairs ({report.colour_rejected:,} rejected, {report.colour_unchecked:,} unreadable)"
    )
    if result.csv_path:
        console.print(
            f"table: {_shown(result.csv_path)}" + (f"; links: {_shown(result.links)}" if result.links else "")
        )


@app.command("label")
def label_command(
    refs: Annotated[
        Path, typer.Option(help="Folder with one subfolder of example images per class, or a CSV of class,id.")
    ],
    source: Annotated[Path, typer.Option("--in", help="Run folder, or an embeddings.npy (with --ids).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for labels.csv and contact sheets.")],
    threshold: Annotated[
        list[float] | None,
        typer.Option(help="Cosine cut(s) for the nearest-example rule; repeat for a table (default: 0.70 0.75 0.80)."),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="propagate (prototypes, label propagation, estimated none) or nearest (the nearest-example rule at the first --threshold)."
        ),
    ] = "propagate",
    suggest: Annotated[int, typer.Option(help="Also list N images worth labelling next.")] = 0,
    none: Annotated[
        bool,
        typer.Option(
            "--none/--no-none",
            help="Estimate a 'none' class; --no-none when every image belongs to one of the classes.",
        ),
    ] = True,
    ids: Annotated[
        Path | None, typer.Option(help="CSV of ids, one per row of embeddings.npy (default: row numbers).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Label every image with a class of the examples in REFS, or 'none'; writes labels.csv and contact sheets."""
    from rich.table import Table

    from pixclust.labelling.label import DEFAULT_THRESHOLDS
    from pixclust.labelling.workflows import label

    run = label(
        source,
        refs,
        out=out,
        method=method,
        thresholds=threshold or DEFAULT_THRESHOLDS,
        suggest=suggest,
        estimate_none=none,
        ids=ids,
        random_state=seed,
    )
    result = run.result
    console = _console()
    table = Table(title="nearest-example rule: images per class at each threshold", title_justify="left")
    names = [*result.class_names, "none"]
    table.add_column("threshold", justify="right")
    for name in names:
        table.add_column(_shown(name), justify="right")
    for cut, counts in result.table.items():
        table.add_row(f"{cut:.2f}", *(f"{counts[name]:,}" for name in names))
    counts = result.counts()
    table.add_section()
    table.add_row(f"{result.method}", *(f"{counts[name]:,}" for name in names))
    console.print(table)
    console.print("examples: " + ", ".join(f"{_shown(name)} {n}" for name, n in run.references.counts().items()))
    for row in result.suggestions:
        console.print(
            f"label next: {_shown(result.paths[row])} (now {_shown(result.label_name(row))}, confidence {result.confidence[row]:.2f})"
        )
    console.print(f"labels: {_shown(run.labels_csv)}; {len(run.sheets)} contact sheets in {_shown(out / 'sheets')}")


@app.command("train")
def train_command(
    labels: Annotated[Path, typer.Argument(help="CSV of path,label (e.g. labels.csv from 'pixclust label').")],
    source: Annotated[
        Path, typer.Option("--in", help="Run folder, or an embeddings.npy (with --ids), holding those images.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to save the classifier to.")],
    head: Annotated[
        list[str] | None,
        typer.Option(help="logistic and/or mlp; repeat (default: both, the better by cross-validation)."),
    ] = None,
    cv: Annotated[int, typer.Option(help="Cross-validation folds of the hyperparameter search.")] = 3,
    finetune: Annotated[
        bool,
        typer.Option(
            "--finetune",
            help="Also train the network's last blocks and a linear head on the images themselves "
            "(needs --in RUN with the images at their paths). Uses a CUDA GPU when there is one, "
            "else the CPU: minutes for a few hundred images.",
        ),
    ] = False,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Most epochs of --finetune; it stops earlier when the held-out images stop improving [default: 10]."
        ),
    ] = None,
    ids: Annotated[
        Path | None, typer.Option(help="CSV of ids, one per row of embeddings.npy (default: row numbers).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train a classifier on the embeddings of labelled images, with class weights and a cross-validated search.

    --finetune also trains the network's last blocks.
    """
    from pixclust.labelling.workflows import train

    if finetune and head:
        raise UsageError(
            "--head chooses a head for frozen embeddings; --finetune always trains a linear head with the network, so drop --head"
        )
    if epochs is not None and not finetune:
        raise UsageError("--epochs is for --finetune; add --finetune or drop --epochs")
    console = _console()
    settings = None
    if finetune:
        from pixclust.labelling.finetune import FinetuneSettings, training_device

        settings = FinetuneSettings() if epochs is None else FinetuneSettings(epochs=epochs)
        if training_device() == "cpu":
            console.print("note: no CUDA GPU visible, so fine-tuning runs on the CPU (slower)")
    classifier = train(
        labels,
        source,
        out=out,
        heads=head or ("logistic", "mlp"),
        cv=cv,
        finetune=finetune,
        finetune_settings=settings,
        ids=ids,
        random_state=seed,
        quiet=quiet,
    )
    console.print("classes: " + ", ".join(f"{_shown(name)} {n:,}" for name, n in classifier.class_counts.items()))
    if classifier.finetuned is None:
        console.print(f"best: {classifier.head} {classifier.params}, cross-validated macro F1 {classifier.cv_f1:.3f}")
    else:
        history = classifier.finetuned.history
        console.print(
            f"fine-tuned: best epoch {classifier.finetuned.best_epoch} of {len(history) - 1}, validation macro F1 {classifier.cv_f1:.3f} "
            f"(linear probe alone {history[0]['validation_f1']:.3f}, {len(classifier.finetuned.validation):,} held-out images)"
        )
    console.print(f"classifier: {_shown(out)}")


# 'evaluate' and 'predict' both load a classifier.
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Also load a classifier an older pixclust saved as a pickle; loading one can run code, so only one you made.",
    ),
]


@app.command("evaluate")
def evaluate_command(
    model: Annotated[Path, typer.Argument(help="A classifier saved by 'pixclust train'.")],
    test: Annotated[Path, typer.Option(help="CSV of id,label: images with known classes.")],
    source: Annotated[
        Path | None,
        typer.Option(
            "--in", help="Run folder or embeddings.npy holding the test ids (default: embed the listed image files)."
        ),
    ] = None,
    ids: Annotated[
        Path | None, typer.Option(help="CSV of ids, one per row of embeddings.npy (default: row numbers).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for roc.png.")] = None,
    allow_pickle: AllowPickle = False,
) -> None:
    """Per-class precision, recall, F1 and one-vs-rest AUC on a labelled test list, and the confusion matrix."""
    from rich.table import Table

    from pixclust.labelling.workflows import evaluate

    run = evaluate(model, test, source=source, ids=ids, out=out, allow_pickle=allow_pickle)
    evaluation = run.evaluation

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    table = Table(
        title=f"{evaluation.n:,} test images, accuracy {evaluation.accuracy:.3f}, macro F1 {cell(evaluation.macro_f1)}",
        title_justify="left",
    )
    for column in ("class", "support", "precision", "recall", "F1", "AUC"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in evaluation.per_class:
        table.add_row(
            _shown(row.name), f"{row.support:,}", cell(row.precision), cell(row.recall), cell(row.f1), cell(row.auc)
        )
    console = _console()
    console.print(table)
    for row in evaluation.per_class:
        if row.note:
            console.print(f"{_shown(row.name)}: {_shown(row.note)}")
    confusion = Table(title="confusion (rows: truth, columns: predicted)", title_justify="left")
    confusion.add_column("")
    for name in evaluation.classes:
        confusion.add_column(_shown(name), justify="right")
    for name, counts in zip(evaluation.classes, evaluation.confusion, strict=True):
        confusion.add_row(_shown(name), *(f"{int(n):,}" for n in counts))
    console.print(confusion)
    if run.roc_png:
        console.print(f"ROC curves: {_shown(run.roc_png)}")


@app.command("predict")
def predict_command(
    model: Annotated[Path, typer.Argument(help="A classifier saved by 'pixclust train'.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    allow_pickle: AllowPickle = False,
) -> None:
    """Label new images, embedding them with the model the classifier was trained on."""
    from rich.table import Table

    from pixclust.labelling.workflows import predict_images

    run = predict_images(model, images, allow_pickle=allow_pickle)
    table = Table()
    for column in ("path", "label", "probability"):
        table.add_column(column, justify="right" if column == "probability" else "left")
    for item in run.predictions:
        table.add_row(_shown(item.path), _shown(item.label), f"{item.probability:.3f}")
    console = _console()
    console.print(table)
    for item in run.skipped:
        console.print(f"skipped {_shown(item.path)}: {_shown(item.reason)} ({_shown(item.detail)})")


@app.command("resume-move")
def resume_move_command(
    run_dir: Annotated[
        Path, typer.Argument(help="The run folder of a 'pixclust cluster --move' that was interrupted.")
    ],
) -> None:
    """Finish moving images into RUN_DIR/clusters/ after an interrupted --move; safe to run any number of times."""
    from pixclust.curation.move import resume_moves

    _render_moves(resume_moves(run_dir))


def _render_moves(report: MoveReport) -> None:
    console = _console()
    console.print(f"{report.moved:,} images moved into the cluster folders; the journal is {_shown(report.journal)}")
    for move, why in report.left:
        console.print(f"not moved: {_shown(move.source)}: {_shown(why)}")
    if report.left:
        console.print(
            f"{len(report.left):,} images are still at their source; fix the cause, then: pixclust resume-move {_shown(report.journal.parent)}"
        )
        raise typer.Exit(1)


def main() -> None:
    """Entry point: run the Typer app, turning library errors and Ctrl-C into messages and exit codes."""
    try:
        code = app(standalone_mode=False)
    except PixclustError as error:
        # A message such as "pip install 'pixclust[ray]'" holds brackets, and one naming a file may hold anything.
        _console(stderr=True).print(f"[red]error:[/red] {_shown(error)}")
        sys.exit(error.exit_code)
    except OSError as error:
        from pixclust.atomic import DISK_FULL_ERRNOS

        if error.errno not in DISK_FULL_ERRNOS:
            raise
        # Every file is written beside its target and renamed into place, and a move copies before it unlinks,
        # so a full disk leaves what was there before whole. A copy names its source first, its destination second.
        written = error.filename2 or error.filename
        _console(stderr=True).print(
            "[red]error:[/red] no space left on the disk"
            + (f" while writing {_shown(written)}" if written else "")
            + "; free some space and run the same command again (work done so far is kept)"
        )
        sys.exit(1)
    except (KeyboardInterrupt, typer.Abort):
        _exit_interrupted()
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.TyperException as error:
        # Typer's own (vendored click) usage errors: an unknown option, a missing argument.
        error.show()
        sys.exit(error.exit_code)
    # Typer returns, rather than raises, the exit code of a command that ended in typer.Exit or Ctrl-C.
    if code == EXIT_INTERRUPTED:
        _exit_interrupted()
    sys.exit(code)


def _exit_interrupted() -> NoReturn:
    _console(stderr=True).print("interrupted; embeddings made so far are saved, run the same command to resume")
    sys.exit(EXIT_INTERRUPTED)
