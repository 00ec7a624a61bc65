"""Commands on a run folder: cluster (and its demo), report, resume-move; and the models a run can use."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pixclust.cli.options import (
    BatchSize,
    IncludeHidden,
    Ink,
    Maps,
    MaxPixels,
    Precision,
    Quiet,
    Runtime,
    Seed,
    ShardAddress,
    ShardInputs,
    ShardRayWait,
    ShardSeed,
    chosen,
    out_option,
    split_maps,
)
from pixclust.cli.render import (
    console,
    render_add,
    render_apply,
    render_export,
    render_models,
    render_moves,
    render_report,
    render_run,
    render_sharded,
    render_sharded_embedding,
    shown,
)
from pixclust.errors import UsageError

if TYPE_CHECKING:
    from pixclust.runs.pipeline import RunConfig

RUNS_FOLDER = "pixclust-out"


def cluster_command(
    source: Annotated[Path | None, typer.Argument(help="Folder (searched recursively) or file of images.")] = None,
    out: Annotated[Path | None, out_option(f"Run folder [default: {RUNS_FOLDER}/<folder name>].")] = None,
    k: Annotated[
        str | None,
        typer.Option(
            help="Number of clusters, or 'auto' to choose it (modularity, or silhouette with --pipeline fixed) [default: {k}]."
        ),
    ] = None,
    k_min: Annotated[int | None, typer.Option(help="Smallest k scanned by --k auto [default: {k_min}].")] = None,
    k_max: Annotated[int | None, typer.Option(help="Largest k scanned by --k auto [default: {k_max}].")] = None,
    pipeline: Annotated[
        str | None,
        typer.Option(
            help="auto: choose features (embedding, or embedding+HOG) and k without labels, k-means, refine; "
            "fixed: --reduce then --method [default: {pipeline}]."
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="kmeans, agglomerative, gmm or hdbscan; implies --pipeline fixed [default: {cluster_method}]."
        ),
    ] = None,
    reduce: Annotated[
        str | None,
        typer.Option(
            help="Space to cluster in: pca, umap, lle, spectral, none; implies --pipeline fixed [default: {reduce_method}]."
        ),
    ] = None,
    refine: Annotated[
        bool | None,
        typer.Option(
            "--refine/--no-refine", help="Let nearest neighbours correct k-means (--pipeline auto) [default: {refine}]."
        ),
    ] = None,
    n_components: Annotated[
        int | None,
        typer.Option(
            help="Dimensions kept by --reduce [default: {pca_components} for pca, {other_components} otherwise]."
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Feature model; see 'pixclust models' [default: {model}].")] = None,
    weights: Annotated[
        str | None, typer.Option(help="Weights file for the model, or 'random' for plumbing tests.")
    ] = None,
    seed: Seed = None,
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
    batch_size: BatchSize = None,
    workers: Annotated[
        int | None, typer.Option(help="Decode worker processes [default: one per core, at most {max_workers}].")
    ] = None,
    max_pixels: MaxPixels = None,
    include_hidden: IncludeHidden = None,
    runtime: Runtime = None,
    precision: Precision = None,
    maps: Maps = None,
    report: Annotated[
        bool | None, typer.Option("--report/--no-report", help="Write plots/ and report.html [default: {report}].")
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="Where images are embedded: local, or ray (a Ray cluster; needs the ray extra, see docs/SCALE.md) [default: {engine}]."
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster for --engine ray: host:6379 or ray://host:10001 [default: the one 'ray start' made here, else a new local one]."
        ),
    ] = None,
    actor_cpus: Annotated[
        int | None,
        typer.Option(
            help="CPUs each Ray actor asks for with --engine ray [default: up to {max_actor_cpus}, no more than the smallest node has]."
        ),
    ] = None,
    ray_wait: Annotated[
        int | None,
        typer.Option(
            help="Seconds --engine ray waits with no actor on a node (none placed yet, or all lost) before it stops [default: {ray_wait}]."
        ),
    ] = None,
    flag_threshold: Annotated[
        float | None,
        typer.Option(
            help="How unusual an image must be, against its cluster and the collection (robust z), to get a "
            "quality flag (blurry, dark, ...): higher raises fewer [default: {flag_threshold}]."
        ),
    ] = None,
    name_folders: Annotated[
        bool | None,
        typer.Option(
            "--name-folders",
            help="Name each cluster's folder (and its clusters.csv cluster) by what it shows, e.g. 03_tabby, "
            "where the model has an ImageNet classifier.",
        ),
    ] = None,
    ink: Ink = None,
    config: Annotated[
        Path | None, typer.Option(help="Repeat a run from its run.json; other options override it.")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Group the images in SOURCE; writes clusters.csv, errors.csv, run.json and clusters/ to the run folder."""
    # Every parameter but config and quiet is the RunConfig setting of its name.
    options = dict(locals())
    from pixclust.runs.pipeline import run

    render_run(run(_run_config(options, replay=config), quiet=quiet))


def _run_config(options: dict[str, Any], replay: Path | None) -> RunConfig:
    """The options typed over the settings of the run.json ``replay``.

    Only the options typed are the user's choices now (``given``): a replayed
    setting that clashes with one of them gives way instead of being refused.
    """
    from pixclust.runs.pipeline import RunConfig

    # Paths as text, as run.json holds them.
    values = {name: str(value) if isinstance(value, Path) else value for name, value in options.items()}
    values["maps"] = split_maps(values["maps"])
    typed = chosen(**{spec.name: values.get(spec.name) for spec in fields(RunConfig)})
    settings = (_read_config(replay) if replay else {}) | typed
    source = settings.get("source")
    if not source:
        raise UsageError("no image folder given; run: pixclust cluster FOLDER (or --config RUN/run.json)")
    if isinstance(source, str):
        # abspath, not resolve(): a source that is not a usable path is for RunConfig to refuse in one line.
        settings.setdefault("out", str(Path(RUNS_FOLDER) / (os.path.basename(os.path.abspath(source)) or "run")))
    return RunConfig.from_dict(settings, given=set(typed), from_cli=True)


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


def demo_command(
    out: Annotated[Path, out_option("Where the digit images and the run folder go.")] = Path("demo-out"),
    k: Annotated[
        str | None, typer.Option(help="Number of clusters (the digits have 10), or 'auto' [default: {demo_k}].")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Use only the first N digits, for a quicker look [default: all 1,797].")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Cluster scikit-learn's 1,797 handwritten digits (written as PNGs) and score against their classes."""
    from pixclust.demo import run_demo

    console().print(f"Writing scikit-learn's digits as PNG files under {shown(out)} and clustering them...")
    render_run(run_demo(out, **chosen(k=k, limit=limit), quiet=quiet))


def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by 'pixclust cluster'.")],
    maps: Maps = None,
    quiet: Quiet = False,
) -> None:
    """Rebuild plots/ and report.html of a run folder (maps and thumbnails are reused)."""
    from pixclust.report import build_report

    render_report(build_report(run_dir, **chosen(maps=split_maps(maps)), quiet=quiet))


def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by 'pixclust cluster'.")],
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="fiftyone (labels.json + data.json, FiftyOne's image classification dataset), "
            "coco (annotations.json) or csv (export.csv).",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the export into (not a run folder).")],
) -> None:
    """Write a run's clusters, names, quality flags and duplicate groups in a format annotation tools import."""
    from pixclust.curation.interchange import export_run

    render_export(export_run(run_dir, format=format, out=out))


def add_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by 'pixclust cluster'.")],
    images: Annotated[list[Path], typer.Argument(help="New image files, or folders of them.")],
    report: Annotated[
        bool | None, typer.Option("--report/--no-report", help="Rebuild report.html (default: if the run has one).")
    ] = None,
    false_alarms: Annotated[
        float | None,
        typer.Option(
            "--false-alarms",
            help="Share of images like a cluster's own to call novel anyway: higher catches more of what is new "
            "[default: {novelty_false_alarms}].",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Decode processes (default: one per core).")] = None,
    quiet: Quiet = False,
) -> None:
    """Place new images in a run's clusters without clustering again; those that fit none go to clusters/_new."""
    from pixclust.runs.add import add

    render_add(
        add(run_dir, images, **chosen(report=report, false_alarms=false_alarms), num_workers=workers, quiet=quiet)
    )


def apply_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by 'pixclust cluster'.")],
    edits: Annotated[
        Path, typer.Argument(help="An edits.json: saved from the run's report.html, or written by a script.")
    ],
    report: Annotated[
        bool | None, typer.Option("--report/--no-report", help="Rebuild report.html (default: if the run has one).")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Carry out corrections (renames, merges, moves, outliers, exclusions, pins) on a run, and keep them."""
    from pixclust.runs.apply import apply

    render_apply(apply(run_dir, edits, report=report, quiet=quiet))


def cluster_shards_command(
    vectors: ShardInputs,
    out: Annotated[Path, out_option("Run folder for the cluster table.")],
    k: Annotated[str, typer.Option(help="Number of clusters, or 'auto' to choose it on the sample.")] = "auto",
    k_min: Annotated[int, typer.Option(help="Smallest k scanned by --k auto.")] = 2,
    k_max: Annotated[int, typer.Option(help="Largest k scanned by --k auto.")] = 20,
    pipeline: Annotated[
        str,
        typer.Option(
            help="auto: the default pipeline (joining --hog where it helps, as 'pixclust cluster' does); fixed: L2, PCA-50, k-means."
        ),
    ] = "auto",
    sample_size: Annotated[
        int | None, typer.Option(help="Rows the clustering is fitted on [default: max(100 k, 100,000)].")
    ] = None,
    hog: Annotated[
        list[Path] | None,
        typer.Option(
            help="HOG vectors of the same images in the same order (a run's views/hog/), for --pipeline auto; repeatable."
        ),
    ] = None,
    address: ShardAddress = None,
    ray_wait: ShardRayWait = 120,
    seed: ShardSeed = 0,
    quiet: Quiet = False,
) -> None:
    """Cluster embeddings too many for one machine's memory on Ray: fitted on a sample, every row placed in parallel.

    A run folder given stands for its embeddings.parquet and its HOG vectors.
    """
    from pixclust.runs.sharded import cluster_shards

    k_value: int | str = int(k) if k.isascii() and k.isdigit() and len(k) <= 18 else k
    run = cluster_shards(
        vectors,
        out,
        k=k_value,
        pipeline=pipeline,
        k_range=(k_min, k_max),
        sample_size=sample_size,
        random_state=seed,
        hog=hog or None,
        address=address,
        ray_wait=ray_wait,
        quiet=quiet,
    )
    render_sharded(run)


def embed_shards_command(
    sources: Annotated[list[Path], typer.Argument(help="Folders (searched recursively) or files of images.")],
    out: Annotated[Path, out_option("Run folder for the embedding parts (not a run of 'pixclust cluster').")],
    model: Annotated[str | None, typer.Option(help="Feature model; see 'pixclust models' [default: {model}].")] = None,
    weights: Annotated[str | None, typer.Option(help="Weights file for the model.")] = None,
    batch_size: BatchSize = None,
    max_pixels: MaxPixels = None,
    include_hidden: IncludeHidden = None,
    runtime: Runtime = None,
    precision: Precision = None,
    address: ShardAddress = None,
    actor_cpus: Annotated[
        int | None,
        typer.Option(
            help="CPUs each Ray actor asks for [default: up to {max_actor_cpus}, no more than the smallest node has]."
        ),
    ] = None,
    ray_wait: ShardRayWait = 120,
    hog: Annotated[
        bool,
        typer.Option(
            help="Keep the images' HOG vectors beside the parts, which cluster-shards joins where it helps "
            "(as 'pixclust cluster' does); --no-hog saves decoding every image twice."
        ),
    ] = True,
    ink: Ink = None,
    quiet: Quiet = False,
) -> None:
    """Embed images on Ray into a folder of Parquet parts that no process holds whole, for cluster-shards and
    duplicates-shards; a second run embeds only what is new."""
    from pixclust.runs.sharded_embed import embed_shards

    run = embed_shards(
        sources,
        out,
        **chosen(
            model=model,
            weights=weights,
            batch_size=batch_size,
            max_pixels=max_pixels,
            runtime=runtime,
            precision=precision,
            actor_cpus=actor_cpus,
            include_hidden=include_hidden,
            ink=ink,
        ),
        address=address,
        ray_wait=ray_wait,
        hog=hog,
        quiet=quiet,
    )
    render_sharded_embedding(run)


TrustJournal = Annotated[
    bool,
    typer.Option(
        "--trust-journal",
        help="Carry out a journal without your seal: one you wrote on another machine or with an older pixclust.",
    ),
]


def resume_move_command(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="The run folder of an interrupted 'cluster --move', 'duplicates --move-copies' or 'restore'."
        ),
    ],
    trust_journal: TrustJournal = False,
) -> None:
    """Finish an interrupted move (or restore) from its journal; safe to run any number of times."""
    from pixclust.curation.move import resume_moves

    render_moves(resume_moves(run_dir, trust_journal=trust_journal))


def restore_command(
    run_dir: Annotated[
        Path, typer.Argument(help="A folder that 'cluster --move' or 'duplicates --move-copies' moved images into.")
    ],
    trust_journal: TrustJournal = False,
) -> None:
    """Put every image a move took into RUN_DIR back where it was; safe to run again after an interruption."""
    from pixclust.curation.move import restore_moves

    render_moves(restore_moves(run_dir, trust_journal=trust_journal))


def models_command() -> None:
    """List the feature models, their dimensions, and whether each runs offline right now."""
    from pixclust.embedding.models import DEFAULT_MODEL
    from pixclust.embedding.weights import model_statuses

    render_models(model_statuses(), default=DEFAULT_MODEL)
