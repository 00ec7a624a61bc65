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
    "embed": "pixclust.extraction",
    "cluster": "pixclust.pipeline",
    "run": "pixclust.pipeline",
    "RunConfig": "pixclust.pipeline",
    "RunResult": "pixclust.pipeline",
    "ClusterResult": "pixclust.clustering",
    "Embeddings": "pixclust.embeddings",
    "Embedder": "pixclust.embedder",
    "ImageClusterer": "pixclust.clustering",
    "load_extractor": "pixclust.models",
    "PixclustError": "pixclust.errors",
    "find_similar": "pixclust.workflows",
    "find_duplicate_images": "pixclust.workflows",
    "predict_images": "pixclust.workflows",
    "build_report": "pixclust.report",
}
# label/train/evaluate live in pixclust.workflows: a package-level ``label`` would be
# shadowed by the submodule pixclust.label as soon as anything imported it.
_SUBMODULES = {
    "images", "models", "embedder", "runtimes", "store", "reduce", "clustering", "metrics", "maps",
    "export", "truth", "demo", "search", "label", "classifier", "workflows", "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"pixclust.{name}")
    raise AttributeError(f"module 'pixclust' has no attribute {name!r}")
