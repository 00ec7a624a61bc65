"""run.json: what a run did, written and read only through :class:`RunRecord`.

The record is the run's memory for later commands (``report``, ``similar``,
``label``, ``--config``) and for people: the settings, the model and its
weights, counts, the clustering's choices, scores, timings and versions.
``record_version`` numbers the layout; files from before it existed read as
version 0, which has the same keys. Sections an older pixclust did not write
read as empty, so every run folder it made still opens.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pixclust.atomic import write_text_atomic
from pixclust.errors import UsageError

if TYPE_CHECKING:
    from pixclust.runs.pipeline import RunResult

RUN_RECORD_VERSION = 1
_LIBRARIES = ("torch", "timm", "scikit-learn", "numpy", "pillow", "pyarrow", "umap-learn")
# The JSON type each section must have when present; None is allowed where a run may have nothing to say.
_SECTION_TYPES: dict[str, tuple[type, ...]] = {
    "record_version": (int,),
    "pixclust_version": (str, type(None)),
    "created": (str, type(None)),
    "config": (dict,),
    "model": (dict,),
    "counts": (dict,),
    "clustering": (dict,),
    "scores": (dict, type(None)),
    "n_scored": (int,),
    "timings_s": (dict,),
    "versions": (dict,),
    "batches": (list,),
    "run_id": (str, type(None)),
    "edits": (list,),
}


@dataclass(frozen=True)
class RunRecord:
    """The contents of run.json. Plain JSON types throughout, so a record in memory equals the one read back."""

    model: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    clustering: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] | None = None
    n_scored: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    # What `pixclust add` put in the run since it was clustered, one entry per batch, oldest first.
    batches: list[dict[str, Any]] = field(default_factory=list)
    # Which run this is, kept when the folder is clustered again: an edits file names it (pixclust apply).
    run_id: str | None = None
    # Every edits file `pixclust apply` carried out on the run, oldest first.
    edits: list[dict[str, Any]] = field(default_factory=list)
    pixclust_version: str | None = None
    created: str | None = None
    record_version: int = RUN_RECORD_VERSION

    @property
    def model_id(self) -> str:
        return str(self.model.get("model_id", ""))

    @property
    def source(self) -> str | None:
        """The image folder the run read, as it was given."""
        return self.config.get("source")

    @classmethod
    def of_run(cls, result: RunResult) -> RunRecord:
        embeddings, clustering = result.embeddings, result.clustering
        k_scan = clustering.k_scan
        return cls(
            pixclust_version=_version("pixclust"),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            config=json_plain(result.config.settings()),
            model=({} if embeddings.model is None else embeddings.model.to_dict())
            | ({} if result.ink is None else {"ink_sample": result.ink.to_dict()})
            | ({} if result.hog_model is None else {"hog_model": result.hog_model}),
            counts={
                "images_used": len(embeddings),
                "files_skipped": len(embeddings.skipped),
                "extracted": embeddings.n_extracted,
                "reused": embeddings.n_reused,
            },
            clustering={
                "method": clustering.method,
                "reduce": clustering.reduction.method,
                "space_dims": int(clustering.reduction.coords.shape[1]),
                "n_clusters": clustering.n_clusters,
                "silhouette": float(clustering.silhouette) if np.isfinite(clustering.silhouette) else None,
                "pca_explained_variance_ratio": clustering.reduction.pca_explained_variance_ratio.tolist(),
                "k_scan": None if k_scan is None else k_scan.record(),
                "pipeline": json_plain(clustering.choice),
                "sizes": {row.name: row.images for row in result.summary},
                # What each cluster shows, and the share of its images with that class in their top five.
                "names": None if result.names is None else _names_by_cluster(result),
                "quality_flags": None if result.flags is None else result.flags.counts(),
            },
            scores=json_plain(result.scores),
            n_scored=result.n_scored,
            timings_s={name: round(value, 3) for name, value in result.timings.items()},
            versions={"python": platform.python_version(), **{name: _version(name) for name in _LIBRARIES}},
            batches=json_plain(result.batches),
            run_id=result.run_id,
            edits=json_plain(result.edits),
        )

    def with_batch(self, batch: dict[str, Any]) -> RunRecord:
        """This record with one more added batch."""
        return replace(self, batches=[*self.batches, json_plain(batch)])

    def with_edit(self, edit: dict[str, Any]) -> RunRecord:
        """This record with one more applied edits file in its history."""
        return replace(self, edits=[*self.edits, json_plain(edit)])

    def to_dict(self) -> dict[str, Any]:
        # run.json opens with what identifies it, then the settings, as people read it.
        order = ("record_version", "pixclust_version", "run_id", "created", "config", "model", "counts", "clustering")
        values = {spec.name: getattr(self, spec.name) for spec in fields(self)}
        return {name: values.pop(name) for name in order} | values

    @classmethod
    def from_dict(cls, data: object, *, where: str = "run.json") -> RunRecord:
        """The record in ``data`` (a parsed run.json); a file this pixclust cannot read is one ``UsageError``."""
        if not isinstance(data, Mapping):
            raise UsageError(f"{where} is not a run record (not a JSON object); re-run 'pixclust cluster' for it")
        version = data.get("record_version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version > RUN_RECORD_VERSION:
            raise UsageError(
                f"{where} has record_version {version!r}, which this pixclust does not know; "
                "it was written by a newer pixclust, so upgrade pixclust to read it"
            )
        values: dict[str, Any] = {"record_version": version}
        for name, types in _SECTION_TYPES.items():
            if name not in data:
                continue
            value = data[name]
            if not isinstance(value, types) or isinstance(value, bool):
                raise UsageError(f"{where}: \"{name}\" is not what pixclust writes there; re-run 'pixclust cluster'")
            values[name] = value
        if "model" not in values:
            raise UsageError(f"{where} names no model; re-run 'pixclust cluster' for this folder")
        return cls(**values)

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(f"{path} cannot be read ({error}); re-run 'pixclust cluster' for this folder") from None
        return cls.from_dict(data, where=str(path))

    def write(self, path: str | Path) -> None:
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")


def json_plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays, paths and tuples made JSON's own types."""
    if isinstance(value, Mapping):
        return {str(key): json_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _names_by_cluster(result: RunResult) -> dict[str, dict[str, Any]]:
    """Each named cluster's name and confidence, keyed as the summary names the cluster (its rows are in id order)."""
    assert result.names is not None
    ids = sorted({int(label) for label in result.clustering.labels})
    return {
        row.name: {"name": result.names[label].name, "confidence": round(result.names[label].confidence, 3)}
        for row, label in zip(result.summary, ids, strict=True)
        if label in result.names
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
