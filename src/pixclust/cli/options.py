"""Options more than one command takes, declared once; and the library's defaults that help shows.

A default that the library owns is not written into help text: help names it
as a ``{placeholder}`` that :class:`LibraryDefaultsCommand` fills from
:func:`library_defaults` when help is shown, and the option itself defaults to
None, so that a command passes on only what was typed (:func:`chosen`) and the
library's own default applies to the rest.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand


def out_option(text: str) -> Any:
    """``--out/-o``: every command that writes takes it; what it names differs."""
    return typer.Option("--out", "-o", help=text)


def in_option(text: str) -> Any:
    """``--in``: ``in`` is a Python keyword, so the option needs its name spelled out."""
    return typer.Option("--in", help=text)


Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Ids = Annotated[Path | None, typer.Option(help="CSV of ids, one per row of embeddings.npy (default: row numbers).")]
Seed = Annotated[int | None, typer.Option(help="Random seed; the same seed gives the same result [default: {seed}].")]
Maps = Annotated[
    list[str] | None,
    typer.Option("--map", help="Maps in the report: pca, tsne, umap; repeat or comma-separate [default: {maps}]."),
]
EMBEDDINGS_HELP = "Run folder, or an embeddings.npy (with --ids)."
EmbeddingsIn = Annotated[Path, in_option(EMBEDDINGS_HELP)]
# The sharded commands' Ray settings.
ShardAddress = Annotated[
    str | None, typer.Option(help="Ray cluster address (HEAD_IP:6379) [default: this machine's, or a local one].")
]
ShardRayWait = Annotated[
    float, typer.Option(help="Seconds to wait while the Ray cluster has no CPU (none joined, or all lost).")
]
ShardSeed = Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same result.")]
ShardInputs = Annotated[
    list[Path],
    typer.Argument(
        help="Parquet files of embeddings (path and vector columns), or folders of them: a run's "
        "embeddings.parquet (or the run folder), or shards written elsewhere."
    ),
]
# How images are embedded: 'cluster' and 'embed-shards' take these alike.
BatchSize = Annotated[int | None, typer.Option(help="Images per model call [default: {batch_size}].")]
MaxPixels = Annotated[
    int | None, typer.Option(help="Skip images with more pixels than this (bomb guard) [default: {max_pixels:,}].")
]
IncludeHidden = Annotated[bool | None, typer.Option("--include-hidden", help="Also read hidden files and folders.")]
Runtime = Annotated[
    str | None, typer.Option(help="Where the network runs: auto, openvino, onnxruntime, torch [default: {runtime}].")
]
Precision = Annotated[
    str | None,
    typer.Option(help="auto, fp32, bf16 or fp16 [default: {precision}: bf16 where the CPU has it, fp16 on a GPU]."),
]
Ink = Annotated[
    str | None,
    typer.Option(
        help="Pictures of ink on plain paper (glyphs, drawings) reach the network as grey ink on white, "
        "so their colours and light-or-dark do not group them: auto (where a sample of the collection "
        "is such), on, or off [default: {ink}]."
    ),
]
# 'evaluate' and 'predict' both load a classifier.
AllowPickle = Annotated[
    bool,
    typer.Option(
        "--allow-pickle",
        help="Also load a classifier an older pixclust saved as a pickle; loading one can run code, so only one you made.",
    ),
]


def chosen(**options: Any) -> dict[str, Any]:
    """The options typed, as keywords for the library: one left out is None, and takes the library's default."""
    return {name: value for name, value in options.items() if value is not None}


def split_maps(values: list[str] | None) -> list[str] | None:
    """``--map pca --map tsne`` and ``--map pca,tsne`` mean the same."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def library_defaults() -> dict[str, Any]:
    """Each ``{placeholder}`` of help text, by name: the library's defaults, as help shows them.

    Read only when a command's help is shown, so that ``pixclust --help`` and a
    mistyped option never wait for the library to load.
    """
    from pixclust.clustering.clusterer import DEFAULT_CLUSTER_METHOD
    from pixclust.clustering.placement import NOVELTY_FALSE_ALARMS
    from pixclust.clustering.reduce import DEFAULT_REDUCE, EMBEDDING_DEFAULT_COMPONENTS, PCA_DEFAULT_COMPONENTS
    from pixclust.curation.duplicates import DEFAULT_CANDIDATE_SIMILARITY, DEFAULT_KEEP, UNVERIFIED_SIMILARITY
    from pixclust.curation.search import DEFAULT_TOP
    from pixclust.demo import DEMO_K
    from pixclust.embedding.embedder import MAX_DEFAULT_WORKERS
    from pixclust.embedding.engines.ray import MAX_DEFAULT_ACTOR_CPUS
    from pixclust.labelling.classifier import DEFAULT_CV_FOLDS, HEADS
    from pixclust.labelling.finetune import FinetuneSettings
    from pixclust.labelling.label import DEFAULT_LABEL_METHOD, DEFAULT_THRESHOLDS
    from pixclust.runs.config import RunConfig

    run = {
        spec.name: spec.default if spec.default_factory is MISSING else spec.default_factory()
        for spec in fields(RunConfig)
        if spec.default is not MISSING or spec.default_factory is not MISSING
    }
    return {
        **run,
        "maps": ",".join(run["maps"]),
        "refine": _flag("refine", run["refine"]),
        "report": _flag("report", run["report"]),
        "cluster_method": DEFAULT_CLUSTER_METHOD,
        "reduce_method": DEFAULT_REDUCE,
        "pca_components": PCA_DEFAULT_COMPONENTS,
        "other_components": EMBEDDING_DEFAULT_COMPONENTS,
        "max_workers": MAX_DEFAULT_WORKERS,
        "max_actor_cpus": MAX_DEFAULT_ACTOR_CPUS,
        "demo_k": DEMO_K,
        "top": DEFAULT_TOP,
        "duplicate_threshold": DEFAULT_CANDIDATE_SIMILARITY,
        "unverified_threshold": UNVERIFIED_SIMILARITY,
        "duplicate_keep": DEFAULT_KEEP,
        "label_method": DEFAULT_LABEL_METHOD,
        "label_thresholds": " ".join(f"{cut:.2f}" for cut in DEFAULT_THRESHOLDS),
        "heads": " and ".join(HEADS),
        "cv_folds": DEFAULT_CV_FOLDS,
        "epochs": FinetuneSettings.epochs,
        "novelty_false_alarms": NOVELTY_FALSE_ALARMS,
    }


def _flag(name: str, on: bool) -> str:
    """A --NAME/--no-NAME option's default, as the flag that asks for it."""
    return f"--{name}" if on else f"--no-{name}"


class LibraryDefaultsCommand(TyperCommand):
    """A command whose help fills each ``{placeholder}`` from :func:`library_defaults` (so a literal brace is ``{{``)."""

    def format_help(self, ctx: typer.Context, formatter: Any) -> None:
        helps = [param for param in self.params if "{" in (getattr(param, "help", None) or "")]
        if helps:
            defaults = library_defaults()
            for param in helps:
                param.help = param.help.format_map(defaults)
        super().format_help(ctx, formatter)
