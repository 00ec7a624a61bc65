"""The public API: ``embed`` a folder (from :mod:`pixclust.embedding.extraction`), ``cluster`` embeddings, ``run`` the whole job.

These functions are what the CLI calls and what a Python user imports; they
return plain result objects (arrays and lists) and write files only in
``run``, only inside the run folder.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pixclust.clustering.adaptive import AdaptiveClusterer
from pixclust.clustering.clusterer import DEFAULT_CLUSTER_METHOD, ClusterResult, ImageClusterer
from pixclust.clustering.metrics import clustering_scores
from pixclust.clustering.placement import ClusterModel, FeatureSpace
from pixclust.clustering.reduce import DEFAULT_REDUCE, Reduction, is_whole_number, project_2d, reduce_features
from pixclust.clustering.views import EMBEDDING_VIEW, HOG_VIEW, handmade_views
from pixclust.curation.corrections import Corrections
from pixclust.curation.edits import EXCLUDED_LABEL, new_run_id
from pixclust.curation.export import (
    ClusterRow,
    cluster_names,
    cluster_summary,
    export_cluster_folders,
    write_clusters_csv,
    write_errors_csv,
)
from pixclust.curation.flags import QualityFlags, flag_images
from pixclust.curation.move import MoveReport, check_no_moves, move_into_clusters
from pixclust.curation.naming import ClusterName, name_clusters
from pixclust.embedding.class_head import ClassHead, class_head
from pixclust.embedding.discover import walk_candidates
from pixclust.embedding.extraction import embed
from pixclust.embedding.files import READABLE_FORMATS
from pixclust.embedding.ink_choice import InkChoice, network_model, outline_wanted
from pixclust.embedding.models import hog_model_for, resolve_model
from pixclust.embeddings import Embeddings
from pixclust.errors import NoImagesError, UsageError
from pixclust.progress import quietly, warn
from pixclust.report import build_report
from pixclust.runs.apply import keep_corrections
from pixclust.runs.config import RunConfig, resolve_pipeline
from pixclust.runs.folder import (
    CLUSTER_MODEL_FILE,
    CLUSTERS_CSV,
    CLUSTERS_DIR,
    CORRECTIONS_FILE,
    ERRORS_CSV,
    RUN_JSON,
    VIEWS_DIR,
    RunFolder,
)
from pixclust.runs.record import RunRecord
from pixclust.runs.truth import load_truth

__all__ = ["RunConfig", "RunResult", "cluster", "embed", "run"]


def cluster(
    data: Embeddings | np.ndarray,
    *,
    k: int | str = "auto",
    pipeline: str = "auto",
    method: str | None = None,
    reduce: str | None = None,
    n_components: int | None = None,
    k_range: tuple[int, int] = (2, 20),
    hog: Embeddings | np.ndarray | None = None,
    refine: bool = True,
    random_state: int = 0,
) -> ClusterResult:
    """Cluster embeddings (one row per image).

    ``pipeline="auto"`` (the default) chooses between the embedding and the
    embedding joined with ``hog`` (``pixclust.embed(..., model="hog")`` of the
    same images, paired with ``data`` row by row by path) by stability, picks k by kNN-graph modularity, runs k-means and refines it
    (``refine=False`` stops after k-means); see :mod:`pixclust.clustering.adaptive`.
    ``pipeline="fixed"`` reduces (L2 + PCA, or ``reduce``: UMAP/LLE/spectral)
    and runs ``method`` (default k-means), picking k by silhouette. Giving
    ``method`` or ``reduce`` means the fixed pipeline.
    """
    vectors = data.vectors if isinstance(data, Embeddings) else np.asarray(data)
    if len(vectors) == 0:
        raise NoImagesError("no embeddings to cluster; point pixclust at a folder with usable images")
    if k != "auto" and is_whole_number(k) and k > len(vectors):
        # Both pipelines refuse, rather than one making fewer clusters than asked without a word.
        raise UsageError(
            f"k {k} is more than the {len(vectors)} images; ask for at most {len(vectors)} clusters, or for 'auto'"
        )
    handmade = _handmade_views(data, hog) if resolve_pipeline(pipeline, method, reduce) == "auto" else {}
    views = {EMBEDDING_VIEW: vectors} | handmade
    return cluster_views(
        views,
        k=k,
        pipeline=pipeline,
        method=method,
        reduce=reduce,
        n_components=n_components,
        k_range=k_range,
        refine=refine,
        random_state=random_state,
    )


def cluster_views(
    views: dict[str, np.ndarray],
    *,
    k: int | str = "auto",
    pipeline: str = "auto",
    method: str | None = None,
    reduce: str | None = None,
    n_components: int | None = None,
    k_range: tuple[int, int] = (2, 20),
    refine: bool = True,
    random_state: int = 0,
) -> ClusterResult:
    """:func:`cluster` on views already paired row by row: the embedding, and HOG where there is one
    (the default pipeline decides whether to use it; the fixed pipeline clusters the embedding alone)."""
    vectors = views[EMBEDDING_VIEW]
    pipeline = resolve_pipeline(pipeline, method, reduce)
    if pipeline == "auto":
        clusterer: AdaptiveClusterer | ImageClusterer = AdaptiveClusterer(
            k=k, k_range=k_range, refine=refine, random_state=random_state
        ).fit(views)
        reduction = clusterer.reduction_
        method = "kmeans+refine" if clusterer.refined_share_ is not None else "kmeans"
        model = clusterer.model_
    else:
        method = method or DEFAULT_CLUSTER_METHOD
        reduction = reduce_features(
            vectors, reduce or DEFAULT_REDUCE, n_components=n_components, random_state=random_state
        )
        clusterer = ImageClusterer(method=method, k=k, k_range=k_range, random_state=random_state).fit(reduction.coords)
        model = _nearest_centre_model(vectors, reduction, clusterer.labels_, random_state)
    return ClusterResult(
        labels=clusterer.labels_,
        n_clusters=clusterer.n_clusters_,
        distances=clusterer.distances_,
        silhouettes=clusterer.silhouette_values_,
        coords_2d=_map_2d(vectors, reduction, random_state),
        reduction=reduction,
        k_scan=clusterer.k_scan_,
        silhouette=clusterer.silhouette_,
        method=method,
        choice=clusterer.choice_,
        model=model,
    )


def _nearest_centre_model(
    vectors: np.ndarray, reduction: Reduction, labels: np.ndarray, random_state: int
) -> ClusterModel | None:
    """The fixed pipeline's clusters as a nearest-centre model: in its PCA space, or, after a reduction that
    cannot place new points (UMAP, LLE, spectral, none), in an L2 + PCA space of the embeddings made for it."""
    if labels.max() < 0:
        return None
    if reduction.pca_mean is None or reduction.method != "pca":
        reduction = reduce_features(vectors, "pca", random_state=random_state)
    space = FeatureSpace((EMBEDDING_VIEW,), reduction.pca_mean, reduction.pca_components)
    return ClusterModel.from_clustering(space, reduction.coords, labels, random_state=random_state)


def _map_2d(vectors: np.ndarray, reduction: Reduction, random_state: int) -> np.ndarray:
    """clusters.csv's x and y: the first two principal components of the features clustered, when those are PCA's.

    Both pipelines reduce by PCA by default, so the map costs no second PCA; another
    reduction (UMAP, LLE, spectral, none) gets a PCA map of the embeddings.
    """
    if reduction.method == "pca" and reduction.coords.shape[1] >= 2:
        return np.ascontiguousarray(reduction.coords[:, :2], dtype=np.float32)
    return project_2d(vectors, random_state=random_state)


def _handmade_views(data: Embeddings | np.ndarray, hog: Embeddings | np.ndarray | None) -> dict[str, np.ndarray]:
    """The hand-made views in the rows of ``data`` (HOG, and the outline where ``hog``'s model made it); none when
    ``hog`` is None or some image has no HOG vector (``_paired_rows``)."""
    rows = _paired_rows(data, hog)
    if rows is None:
        return {}
    return handmade_views(rows)


def _paired_rows(data: Embeddings | np.ndarray, hog: Embeddings | np.ndarray | None) -> np.ndarray | None:
    """HOG vectors in the rows of ``data``, paired by path; None when there are none, or some image has none.

    An image without a HOG vector (it decoded once but not twice) leaves the
    pipeline to the embedding alone rather than to rows that do not match.
    """
    if hog is None:
        return None
    if not isinstance(hog, Embeddings):
        warnings.warn(
            "cluster(hog=array) is deprecated and goes in the next release: pass the Embeddings that "
            "pixclust.embed(..., model='hog') returns, and pixclust pairs their rows with the images by path",
            DeprecationWarning,
            stacklevel=3,
        )
        return np.asarray(hog)
    if not isinstance(data, Embeddings):
        raise UsageError("hog= names images by path, so pass the embeddings as Embeddings too (pixclust.embed)")
    if hog.paths == data.paths:
        # The same folder read the same way: already in order, and a reordered copy would cost another matrix.
        return hog.vectors
    row_of = {path: row for row, path in enumerate(hog.paths)}
    rows = [row_of.get(path) for path in data.paths]
    if any(row is None for row in rows):
        return None
    return hog.vectors[np.asarray(rows, dtype=np.int64)]


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
    # The batches `pixclust add` put in the run folder before; their images are clustered with the source's.
    batches: list[dict[str, object]] = field(default_factory=list)
    # Each image's quality flags, judged against the collection and its cluster.
    flags: QualityFlags | None = None
    # What each cluster shows, by cluster id (None: the model has no classifier to read names from).
    names: dict[int, ClusterName] | None = None
    # Which run this is (kept when its folder is clustered again), and the edits applied to it (pixclust apply).
    run_id: str | None = None
    edits: list[dict[str, object]] = field(default_factory=list)
    # The sample of the source that decided whether the network got ink on paper as grey (None: not sampled).
    ink: InkChoice | None = None
    # The model of the HOG view beside the embedding (models.hog_model_for), None where there is none.
    hog_model: str | None = None


def run(config: RunConfig, *, quiet: bool = False) -> RunResult:
    """Embed, cluster and export ``config.source`` into the run folder ``config.out``, holding its lock throughout."""
    with quietly(quiet):
        folder = _open_run_folder(config)
        with folder.writing():
            check_no_moves(folder)
            # Before the minutes of embedding, not after: clusters/ will be replaced, and it must all be pixclust's.
            folder.check_replaceable(CLUSTERS_DIR)
            return _run_in(folder, config)


def _run_in(folder: RunFolder, config: RunConfig) -> RunResult:
    run_dir = folder.root
    timings: dict[str, float] = {}
    started = time.perf_counter()
    previous = _previous_record(run_dir, config)
    batches = previous.batches if previous is not None else []
    # Read before the minutes of embedding: a damaged file is one line now, not after them.
    corrections = Corrections.read(run_dir / CORRECTIONS_FILE) if previous is not None else Corrections()
    sources = [config.source, *_batch_sources(batches)]
    model, ink = network_model(
        config.model,
        config.ink,
        lambda: walk_candidates(config.source, include_hidden=config.include_hidden),
        max_pixels=config.max_pixels,
        random_state=config.seed,
    )
    embeddings = _embed_source(
        config,
        sources,
        out=run_dir,
        model=model,
        weights=config.weights,
        runtime=config.runtime,
        precision=config.precision,
    )
    timings["embed_s"] = time.perf_counter() - started
    write_errors_csv(run_dir / ERRORS_CSV, embeddings.skipped)
    if len(embeddings) == 0:
        raise NoImagesError(
            f"no usable images in {config.source}: {len(embeddings.skipped)} files skipped "
            f"(reasons in {run_dir / ERRORS_CSV}); point pixclust at a folder of {READABLE_FORMATS} images"
        )

    started = time.perf_counter()
    hog_model = _hog_model(config, model, ink)
    hog = (
        None
        if hog_model is None
        else _embed_source(config, sources, out=run_dir / VIEWS_DIR / HOG_VIEW, model=hog_model)
    )
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
    head = class_head(embeddings.model)
    corrected_names = None
    if not corrections.is_empty:
        # What a person corrected in this run before (pixclust apply) holds in the new clustering too.
        started = time.perf_counter()
        automatic = cluster_names(clustering.labels, _descriptions(head, embeddings, clustering.labels, config))
        views = {EMBEDDING_VIEW: embeddings.vectors} | _handmade_views(embeddings, hog)
        clustering, corrected_names = keep_corrections(
            clustering, corrections, embeddings.paths, views, automatic, random_state=config.seed
        )
        timings["corrections_s"] = time.perf_counter() - started
    # The HOG view (0.99 GB at 70,000 images with the outline) is not needed past clustering; the report holds its own
    # arrays.
    del hog

    scores, n_scored = None, 0
    if config.truth:
        truth = load_truth(config.truth, embeddings.paths, config.source)
        scored = [i for i, label in enumerate(truth) if label is not None]
        n_scored = len(scored)
        if scored:
            scores = clustering_scores([truth[i] for i in scored], clustering.labels[scored])

    started = time.perf_counter()
    flags = flag_images(
        embeddings.image_stats,
        embeddings.image_sizes,
        clustering.labels,
        clustering.distances,
        threshold=config.flag_threshold,
    )
    timings["flags_s"] = time.perf_counter() - started
    started = time.perf_counter()
    names = name_clusters(head, embeddings.vectors, clustering.labels) if head is not None else None
    descriptions = {label: name.name for label, name in (names or {}).items()}
    if config.name_folders and names is None:
        warn(f"model {config.model} has no ImageNet classifier to name clusters by; folders keep their numbers")
    folders = corrected_names or cluster_names(clustering.labels, descriptions if config.name_folders else None)
    timings["names_s"] = time.perf_counter() - started
    started = time.perf_counter()
    write_clusters_csv(run_dir / CLUSTERS_CSV, embeddings.paths, clustering, flags.cells(), folders, descriptions)
    if clustering.model is not None:
        clustering.model.save(run_dir / CLUSTER_MODEL_FILE)
    else:
        # An earlier clustering's model would place new images in clusters this one does not have.
        folder.remove_managed_file(CLUSTER_MODEL_FILE)
    if not config.move:
        export_cluster_folders(folder, embeddings.paths, clustering.labels, copy=config.copy, names=folders)
    timings["export_s"] = time.perf_counter() - started
    result = RunResult(
        config,
        run_dir,
        embeddings,
        clustering,
        cluster_summary(clustering.labels, folders, descriptions),
        scores,
        n_scored,
        timings,
        batches=batches,
        flags=flags,
        names=names,
        run_id=previous.run_id if previous is not None and previous.run_id else new_run_id(),
        edits=previous.edits if previous is not None else [],
        ink=ink,
        hog_model=hog_model,
    )
    if config.report:
        started = time.perf_counter()
        build_report(
            run_dir,
            maps=config.maps,
            record=RunRecord.of_run(result),
            embeddings=embeddings,
            random_state=config.seed,
        )
        timings["report_s"] = time.perf_counter() - started
    RunRecord.of_run(result).write(run_dir / RUN_JSON)
    if config.move:
        # Last, once the report has read every image where it was.
        # An image a person excluded stays where it is.
        kept = clustering.labels != EXCLUDED_LABEL
        paths = [path for path, keep in zip(embeddings.paths, kept, strict=True) if keep]
        result.moves = move_into_clusters(folder, config.source, paths, clustering.labels[kept], folders)
    return result


def _previous_record(run_dir: Path, config: RunConfig) -> RunRecord | None:
    """The record of this run folder's earlier clustering of the same source (None for a new run)."""
    if not (run_dir / RUN_JSON).is_file():
        return None
    try:
        record = RunRecord.read(run_dir / RUN_JSON)
    except UsageError:
        return None
    same_source = record.source is not None and os.path.realpath(record.source) == os.path.realpath(config.source)
    return record if same_source else None


def _descriptions(
    head: ClassHead | None, embeddings: Embeddings, labels: np.ndarray, config: RunConfig
) -> dict[int, str] | None:
    """What each cluster shows, where the folders are to be named by it (--name-folders) and the model can say."""
    if head is None or not config.name_folders:
        return None
    return {label: name.name for label, name in name_clusters(head, embeddings.vectors, labels).items()}


def _batch_sources(batches: list[dict[str, object]]) -> list[str]:
    """The files and folders the batches came from that are still there, each once."""
    sources = [str(source) for batch in batches for source in batch.get("sources") or []]
    gone = [source for source in sources if not os.path.exists(source)]
    for source in dict.fromkeys(gone):
        warn(f"{source}, added to this run by 'pixclust add', is gone; its images are left out")
    return [source for source in dict.fromkeys(sources) if source not in gone]


def _embed_source(
    config: RunConfig,
    sources: list[str | Path],
    *,
    out: Path,
    model: str,
    weights: str | None = None,
    runtime: str = "auto",
    precision: str = "auto",
) -> Embeddings:
    """``embed`` of the run's sources into ``out`` with ``model``, reading files as the config says."""
    return embed(
        sources,
        model=model,
        weights=weights,
        runtime=runtime,
        precision=precision,
        out=out,
        batch_size=config.batch_size,
        num_workers=config.workers,
        max_pixels=config.max_pixels,
        include_hidden=config.include_hidden,
        engine=config.engine,
        **(
            {"address": config.address, "actor_cpus": config.actor_cpus, "ray_wait": config.ray_wait}
            if config.engine == "ray"
            else {}
        ),
    )


def _hog_model(config: RunConfig, model: str, ink: InkChoice | None) -> str | None:
    """The model of the HOG view the run keeps in views/hog/ beside vectors of ``model``; None where it keeps none
    (a run embedded with HOG itself, or a pipeline that does not join it).

    Beside a network fed ink as grey, HOG reads the same grey; where the collection
    is ink on paper, each vector holds the outline's HOG after HOG's own.
    """
    if config.pipeline != "auto" or resolve_model(model).family == "hog":
        return None
    return hog_model_for(model, outline=outline_wanted(model, ink))


def _open_run_folder(config: RunConfig) -> RunFolder:
    """The run folder, once it is clear that neither it nor the image folder lies inside the other."""
    return RunFolder.open_apart_from(config.source, config.out)
