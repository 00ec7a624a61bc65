"""pixclust: organise unlabeled images by what they show.

    import pixclust
    embeddings = pixclust.embed("photos/")
    result = pixclust.cluster(embeddings, k="auto")
    result.labels            # one cluster per image, 0 = largest

Names are loaded on first use, so ``import pixclust`` stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "embed": "pixclust.embedding.extraction",
    "cluster": "pixclust.runs.pipeline",
    "run": "pixclust.runs.pipeline",
    "add": "pixclust.runs.add",
    "AddResult": "pixclust.runs.add",
    "apply": "pixclust.runs.apply",
    "ApplyResult": "pixclust.runs.apply",
    "embed_shards": "pixclust.runs.sharded_embed",
    "ShardedEmbedding": "pixclust.runs.sharded_embed",
    "cluster_shards": "pixclust.runs.sharded",
    "ShardedRun": "pixclust.runs.sharded",
    "duplicates_shards": "pixclust.runs.sharded_duplicates",
    "ShardedDuplicates": "pixclust.runs.sharded_duplicates",
    "ClusterModel": "pixclust.clustering.placement",
    "RunConfig": "pixclust.runs.config",
    "RunResult": "pixclust.runs.pipeline",
    "ClusterResult": "pixclust.clustering.clusterer",
    "ImageClusterer": "pixclust.clustering.clusterer",
    "AdaptiveClusterer": "pixclust.clustering.adaptive",
    "Embeddings": "pixclust.embeddings",
    "Embedder": "pixclust.embedding.embedder",
    "load_extractor": "pixclust.embedding.extractor",
    "open_embeddings": "pixclust.embedding.sources",
    "flag_images": "pixclust.curation.flags",
    "name_clusters": "pixclust.curation.naming",
    "ClusterName": "pixclust.curation.naming",
    "class_head": "pixclust.embedding.class_head",
    "QualityFlags": "pixclust.curation.flags",
    "PixclustError": "pixclust.errors",
    "find_similar": "pixclust.curation.lookalikes",
    "find_duplicate_images": "pixclust.curation.lookalikes",
    "label": "pixclust.labelling.workflows",
    "train": "pixclust.labelling.workflows",
    "evaluate": "pixclust.labelling.workflows",
    "predict_images": "pixclust.labelling.workflows",
    "build_report": "pixclust.report",
    "export_run": "pixclust.curation.interchange",
}
# The stage subpackages; none is named like an export (the run stage is ``runs``, since ``run`` is a function).
_SUBPACKAGES = {"embedding", "clustering", "curation", "labelling", "runs", "report", "distributed"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"pixclust.{name}")
    raise AttributeError(f"module 'pixclust' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*_EXPORTS, *_SUBPACKAGES, "__version__"])
