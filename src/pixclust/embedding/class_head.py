"""The ImageNet classifier a network's weights came with, as numpy arrays, and the names of its classes.

The default network's packaged weights hold the classifier it was trained
with; cluster names are read from it (:mod:`pixclust.curation.naming`). It
is applied to the stored embedding, which pools the last feature map by GeM
where the classifier was trained on its average: measured on 30 crops of
five scikit-image photos, the top class agreed with average pooling's for
28 (0.93) and the top five classes overlapped by 0.91, and a cluster's name
sums over its members. Reading the head costs building the network once (two
seconds); it is cached under the pixclust cache as arrays, keyed by the
weights' hash, with the class names, so later runs need neither timm nor torch.

A model without such a classifier (HOG, pixels, precomputed vectors, a hub
network whose download dropped it, weights that hold none) has no head, and
its clusters no names.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixclust.atomic import atomic_path
from pixclust.embedding.models import resolve_model
from pixclust.embedding.record import ModelRecord
from pixclust.embedding.runtimes import cache_dir
from pixclust.errors import PixclustError

_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class ClassHead:
    """A linear classifier over the embedding (``weight`` C x d, ``bias`` C) and each class's name."""

    weight: np.ndarray
    bias: np.ndarray
    class_names: tuple[str, ...]

    def probabilities(self, vectors: np.ndarray) -> Iterator[np.ndarray]:
        """Softmax class probabilities of ``vectors`` (N x d), in chunks of rows, in order."""
        for start in range(0, len(vectors), _CHUNK_ROWS):
            logits = vectors[start : start + _CHUNK_ROWS].astype(np.float32) @ self.weight.T + self.bias
            logits -= logits.max(axis=1, keepdims=True)
            np.exp(logits, out=logits)
            logits /= logits.sum(axis=1, keepdims=True)
            yield logits


def class_head(record: ModelRecord | None) -> ClassHead | None:
    """The classifier of the model that made vectors (``Embeddings.model``), or None where it has none pixclust can read."""
    if record is None or not record.weights_sha256 or record.weights.kind not in ("package", "file"):
        return None
    cached = cache_dir() / "heads" / f"{record.model}-{record.weights_sha256[:24]}.npz"
    head = _cached_head(cached, record.dim)
    if head is not None:
        return head
    head = _read_head(record)
    if head is not None:
        with contextlib.suppress(OSError), atomic_path(cached) as tmp, open(tmp, "wb") as stream:
            np.savez(stream, weight=head.weight, bias=head.bias, class_names=np.array(head.class_names))
    return head


def _cached_head(path: Path, dim: int | None) -> ClassHead | None:
    """The head cached at ``path``; None when there is none, or it is damaged or not over ``dim`` inputs (read again)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            weight, bias, names = arrays["weight"], arrays["bias"], arrays["class_names"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    usable = (
        weight.dtype == np.float32
        and weight.ndim == 2
        and weight.shape[1] == dim
        and bias.dtype == np.float32
        and bias.shape == weight.shape[:1]
        and names.shape == weight.shape[:1]
        and bool(np.isfinite(weight).all())
        and bool(np.isfinite(bias).all())
    )
    return ClassHead(weight, bias, tuple(str(name) for name in names)) if usable else None


def _read_head(record: ModelRecord) -> ClassHead | None:
    """The classifier built from the weights the record names, if they hold an ImageNet one over the embedding."""
    import timm
    import torch

    from pixclust.embedding.weights import load_state_dict, packaged_weights_path, read_weights_file

    try:
        spec = resolve_model(str(record.model))
    except PixclustError:
        return None
    if spec.timm_name is None:
        return None
    network = timm.create_model(spec.timm_name, pretrained=False)
    try:
        if record.weights.kind == "package":
            path = packaged_weights_path(spec)
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            path = record.weights.location or ""
            state = read_weights_file(spec, Path(path))
        load_state_dict(network, state, spec, str(path))
    except PixclustError:
        # Weights without a classifier (or of another shape) do not load into the whole network.
        return None
    classifier = network.get_classifier()
    if not isinstance(classifier, torch.nn.Linear) or classifier.in_features != record.dim:
        return None
    if classifier.out_features != 1000:
        return None
    info = timm.data.ImageNetInfo()
    names = tuple(_readable(info.index_to_description(index)) for index in range(classifier.out_features))
    return ClassHead(
        classifier.weight.detach().numpy().astype(np.float32),
        classifier.bias.detach().numpy().astype(np.float32),
        names,
    )


def _readable(description: str) -> str:
    """A synset's first lemma ("tabby" of "tabby, tabby cat"): WordNet lists the most common first."""
    return description.split(",")[0].strip()
