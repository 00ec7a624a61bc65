"""The public API: ``embed`` a folder (from :mod:`pixclust.extraction`), ``cluster`` embeddings, ``run`` the whole job.

These functions are what the CLI calls and what a Python user imports; they
return plain result objects (arrays and lists) and write files only in
``run``, only inside the run folder.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from pixclust.adaptive import EMBEDDING_VIEW, HOG_VIEW, AdaptiveClusterer
from pixclust.clustering import CLUSTER_METHODS, ClusterResult, ImageClusterer
from pixclust.embedder import DEFAULT_BATCH_SIZE
from pixclust.embeddings import Embeddings
from pixclust.engines import check_engine
from pixclust.errors import NoImagesError, OutputNotWritableError, UsageError
from pixclust.export import (
    CLUSTERS_CSV,
    ERRORS_CSV,
    RUN_JSON,
    ClusterRow,
    cluster_summary,
    export_cluster_folders,
    write_clusters_csv,
    write_errors_csv,
    write_run_json,
)
from pixclust.extraction import embed
from pixclust.images import DEFAULT_MAX_PIXELS
from pixclust.maps import DEFAULT_MAPS, check_map_methods
from pixclust.metrics import clustering_scores
from pixclust.models import DEFAULT_MODEL
from pixclust.move import MoveReport, check_no_moves, move_into_clusters
from pixclust.reduce import REDUCE_METHODS, project_2d, reduce_features
from pixclust.report import build_report
from pixclust.runtimes import check_runtime
from pixclust.truth import load_truth

PIPELINES = ("auto", "fixed")
VIEWS_DIR = "views"
HOG_MODEL = "hog"


def cluster(
    data: Embeddings | np.ndarray,
    *,
    k: int | str = "auto",
    pipeline: str = "auto",
    method: str | None = None,
    reduce: str | None = None,
    n_components: int | None = None,
    k_range: tuple[int, int] = (2, 20),
    hog: np.ndarray | None = None,
    refine: bool = True,
    random_state: int = 0,
) -> ClusterResult:
    """Cluster embeddings (one row per image).

    ``pipeline="auto"`` (the default) chooses between the embedding and the
    embedding joined with ``hog`` (HOG vectors of the same images, when given)
    by stability, picks k by kNN-graph modularity, runs k-means and refines it
    (``refine=False`` stops after k-means); see :mod:`pixclust.adaptive`.
    ``pipeline="fixed"`` reduces (L2 + PCA, or ``reduce``: UMAP/LLE/spectral)
    and runs ``method`` (default k-means), picking k by silhouette. Giving
    ``method`` or ``reduce`` means the fixed pipeline.
    """
    vectors = data.vectors if isinstance(data, Embeddings) else np.asarray(data)
    if len(vectors) == 0:
        raise NoImagesError("no embeddings to cluster; point pixclust at a folder with usable images")
    pipeline = resolve_pipeline(pipeline, method, reduce)
    if pipeline == "auto":
        views = {EMBEDDING_VIEW: vectors} | ({HOG_VIEW: np.asarray(hog)} if hog is not None else {})
        adaptive = AdaptiveClusterer(k=k, k_range=k_range, refine=refine, random_state=random_state).fit(views).result_
        return ClusterResult(
            labels=adaptive.labels,
            n_clusters=adaptive.n_clusters,
            distances=adaptive.distances,
            silhouettes=adaptive.silhouettes,
            coords_2d=project_2d(vectors, random_state=random_state),
            reduction=adaptive.reduction,
            k_scan=adaptive.k_scan,
            silhouette=adaptive.silhouette,
            method="kmeans+refine" if adaptive.refined_share is not None else "kmeans",
            choice=adaptive.record(),
        )
    method = method or "kmeans"
    reduction = reduce_features(vectors, reduce or "pca", n_components=n_components, random_state=random_state)
    clusterer = ImageClusterer(method=method, k=k, k_range=k_range, random_state=random_state).fit(reduction.coords)
    return ClusterResult(
        labels=clusterer.labels_,
        n_clusters=clusterer.n_clusters_,
        distances=clusterer.distances_,
        silhouettes=clusterer.silhouette_values_,
        coords_2d=project_2d(vectors, random_state=random_state),
        reduction=reduction,
        k_scan=clusterer.k_scan_,
        silhouette=clusterer.silhouette_,
        method=method,
    )


def resolve_pipeline(pipeline: str, method: str | None, reduce: str | None) -> str:
    """``"auto"`` or ``"fixed"``; an explicit ``method`` or ``reduce`` asks for the fixed pipeline."""
    if pipeline not in PIPELINES:
        raise UsageError(f"--pipeline {pipeline!r} is not known; choose one of {', '.join(PIPELINES)}")
    if method is not None and method not in CLUSTER_METHODS:
        raise UsageError(f"--method {method!r} is not known; choose one of {', '.join(CLUSTER_METHODS)}")
    if reduce is not None and reduce not in REDUCE_METHODS:
        raise UsageError(f"--reduce {reduce!r} is not known; choose one of {', '.join(REDUCE_METHODS)}")
    return "fixed" if method is not None or reduce is not None else pipeline


@dataclass
class RunConfig:
    """Every choice of a ``pixclust cluster`` run; saved in run.json so the run can be repeated."""

    source: str
    out: str
    model: str = DEFAULT_MODEL
    weights: str | None = None
    k: int | str = "auto"
    k_min: int = 2
    k_max: int = 20
    pipeline: str = "auto"
    method: str | None = None
    reduce: str | None = None
    n_components: int | None = None
    refine: bool = True
    seed: int = 0
    truth: str | None = None
    copy: bool = False
    move: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    include_hidden: bool = False
    runtime: str = "auto"
    precision: str = "auto"
    report: bool = True
    maps: list[str] = field(default_factory=lambda: list(DEFAULT_MAPS))
    engine: str = "local"
    address: str | None = None

    def __post_init__(self) -> None:
        self.maps = list(check_map_methods(self.maps))
        check_runtime(self.runtime, self.precision)
        check_engine(self.engine, self.address, self.workers)
        if self.copy and self.move:
            raise UsageError("--copy and --move both say what goes into clusters/; choose one")
        if isinstance(self.k, str) and self.k != "auto":
            if not self.k.isdigit():
                raise UsageError(f"--k {self.k!r} is not a number; give a whole number like 10, or 'auto'")
            self.k = int(self.k)
        self.pipeline = resolve_pipeline(self.pipeline, self.method, self.reduce)
        if not 2 <= self.k_min <= self.k_max:
            raise UsageError(f"k range {self.k_min}..{self.k_max} is empty; need 2 <= --k-min <= --k-max")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"run config has unknown settings {', '.join(unknown)}; was it written by pixclust?")
        return cls(**values)


@dataclass
class RunResult:
    config: RunConfig
    run_dir: Path
    embeddings: Embeddings
    clustering: ClusterResult
    summary: list[ClusterRow]
    scores: dict[str, float] | None
    n_scored: int
    timings: dict[str, float] = field(default_factory=dict)
    moves: MoveReport | None = None


def run(config: RunConfig, *, quiet: bool = False) -> RunResult:
    """Embed, cluster and export ``config.source`` into the run folder ``config.out``."""
    run_dir = _prepare_run_dir(config)
    check_no_moves(run_dir)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    embeddings = _embed_source(
        config, out=run_dir, model=config.model, weights=config.weights, runtime=config.runtime, precision=config.precision, quiet=quiet
    )
    timings["embed_s"] = time.perf_counter() - started
    write_errors_csv(run_dir / ERRORS_CSV, embeddings.skipped)
    if len(embeddings) == 0:
        raise NoImagesError(
            f"no usable images in {config.source}: {len(embeddings.skipped)} files skipped "
            f"(reasons in {run_dir / ERRORS_CSV}); point pixclust at a folder of JPEG/PNG/WebP/BMP/TIFF/GIF images"
        )

    started = time.perf_counter()
    hog = _hog_view(config, run_dir, embeddings, quiet=quiet) if config.pipeline == "auto" else None
    timings["hog_s"] = time.perf_counter() - started
    started = time.perf_counter()
    clustering = cluster(
        embeddings,
        k=config.k,
        pipeline=config.pipeline,
        method=config.method,
        reduce=config.reduce,
        n_components=config.n_components,
        k_range=(config.k_min, config.k_max),
        hog=hog,
        refine=config.refine,
        random_state=config.seed,
    )
    timings["cluster_s"] = time.perf_counter() - started
    # The HOG matrix (0.5 GB at 70,000 images) is not needed past clustering; the report holds its own arrays.
    del hog

    scores, n_scored = None, 0
    if config.truth:
        truth = load_truth(config.truth, embeddings.paths, config.source)
        scored = [i for i, label in enumerate(truth) if label is not None]
        n_scored = len(scored)
        if scored:
            scores = clustering_scores([truth[i] for i in scored], clustering.labels[scored])

    started = time.perf_counter()
    write_clusters_csv(run_dir / CLUSTERS_CSV, embeddings.paths, clustering)
    if not config.move:
        export_cluster_folders(run_dir, embeddings.paths, clustering.labels, copy=config.copy)
    timings["export_s"] = time.perf_counter() - started
    result = RunResult(config, run_dir, embeddings, clustering, cluster_summary(clustering.labels), scores, n_scored, timings)
    if config.report:
        started = time.perf_counter()
        build_report(
            run_dir, maps=config.maps, record=run_record(result), embeddings=embeddings, random_state=config.seed, quiet=quiet
        )
        timings["report_s"] = time.perf_counter() - started
    write_run_json(run_dir / RUN_JSON, run_record(result))
    if config.move:
        # Last, once the report has read every image where it was.
        result.moves = move_into_clusters(run_dir, embeddings.paths, clustering.labels)
    return result


def _embed_source(
    config: RunConfig,
    *,
    out: Path,
    model: str,
    quiet: bool,
    weights: str | None = None,
    runtime: str = "auto",
    precision: str = "auto",
) -> Embeddings:
    """``embed`` of the run's source into ``out`` with ``model``, reading files as the config says."""
    return embed(
        config.source,
        model=model,
        weights=weights,
        runtime=runtime,
        precision=precision,
        out=out,
        batch_size=config.batch_size,
        num_workers=config.workers,
        max_pixels=config.max_pixels,
        include_hidden=config.include_hidden,
        quiet=quiet,
        engine=config.engine,
        address=config.address,
    )


def _hog_view(config: RunConfig, run_dir: Path, embeddings: Embeddings, *, quiet: bool) -> np.ndarray | None:
    """HOG vectors in the order of ``embeddings``, stored (and reused) in the run's views/hog/ folder.

    None when the model is HOG already, or when some image gave an embedding
    but no HOG vector (then the adaptive pipeline uses the embedding alone).
    """
    if config.model == HOG_MODEL:
        return None
    hog = _embed_source(config, out=run_dir / VIEWS_DIR / HOG_VIEW, model=HOG_MODEL, quiet=quiet)
    if hog.paths == embeddings.paths:
        # The same folder read the same way: already in order, and a reordered copy would cost another matrix.
        return hog.vectors
    row_of = {path: row for row, path in enumerate(hog.paths)}
    rows = [row_of.get(path) for path in embeddings.paths]
    if any(row is None for row in rows):
        return None
    return hog.vectors[np.asarray(rows, dtype=np.int64)]


def _prepare_run_dir(config: RunConfig) -> Path:
    source = Path(config.source)
    if not source.exists():
        raise UsageError(f"{config.source} does not exist; give a folder (or file) of images")
    run_dir = Path(config.out).absolute()
    source_abs = source.absolute()
    if source_abs.is_dir() and (run_dir == source_abs or source_abs in run_dir.parents):
        raise UsageError(
            f"--out {config.out} is inside the image folder {config.source}; pixclust never writes into "
            "your image folders, so choose an --out outside it"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".pixclust-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputNotWritableError(
            f"cannot write to the run folder {run_dir} ({error.strerror or error}); choose another --out"
        ) from error
    return run_dir


def run_record(result: RunResult) -> dict[str, Any]:
    """Everything run.json keeps: parameters, model and weights, counts, choices, scores, timings, versions.

    Plain JSON types throughout, so the record in memory equals the one read back from disk.
    """
    embeddings, clustering = result.embeddings, result.clustering
    k_scan = clustering.k_scan
    return {
        "pixclust_version": _version("pixclust"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(result.config),
        "model": embeddings.model,
        "counts": {
            "images_used": len(embeddings),
            "files_skipped": len(embeddings.skipped),
            "extracted": embeddings.n_extracted,
            "reused": embeddings.n_reused,
        },
        "clustering": {
            "method": clustering.method,
            "reduce": clustering.reduction.method,
            "space_dims": int(clustering.reduction.coords.shape[1]),
            "n_clusters": clustering.n_clusters,
            "silhouette": _finite_or_none(clustering.silhouette),
            "pca_explained_variance_ratio": clustering.reduction.pca_explained_variance_ratio.tolist(),
            "k_scan": None
            if k_scan is None
            else {
                "k": k_scan.ks.tolist(),
                "inertia": k_scan.inertia.tolist(),
                "silhouette": [_finite_or_none(v) for v in k_scan.silhouette],
                "chosen_k": k_scan.chosen_k,
                "criterion": k_scan.criterion,
                "modularity": None if k_scan.modularity is None else [_finite_or_none(v) for v in k_scan.modularity],
                "elbow_k": k_scan.elbow_k,
            },
            "pipeline": clustering.choice,
            "sizes": {row.name: row.images for row in result.summary},
        },
        "scores": result.scores,
        "n_scored": result.n_scored,
        "timings_s": {name: round(value, 3) for name, value in result.timings.items()},
        "versions": {
            "python": platform.python_version(),
            **{name: _version(name) for name in ("torch", "timm", "scikit-learn", "numpy", "pillow", "pyarrow", "umap-learn")},
        },
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
