"""A name becomes a :class:`FeatureExtractor`: the network, its exact preprocessing, and its record.

The record (where the weights came from, their hash, the preprocessing, the
pooling) names the stored vectors through ``model_id``. It is cached per weights
file, so a warm start needs neither timm nor the network: the runtime starts from
the cached ONNX export, on the first batch when asked to be lazy.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pixclust.atomic import atomic_path
from pixclust.embedding.ink import INK_FORM
from pixclust.embedding.models import (
    DEFAULT_MODEL,
    INK_SUFFIX,
    ModelSpec,
    resolve_model,
)
from pixclust.embedding.record import ModelRecord, WeightsSource
from pixclust.embedding.runtimes import Runner, cache_dir, check_runtime, make_runner, runner_from_export
from pixclust.embedding.transforms import (
    HogTransform,
    ImageTransform,
    PixelTransform,
    Preprocessing,
    network_preprocessing,
)
from pixclust.embedding.weights import (
    RANDOM_WEIGHTS,
    load_network,
    packaged_weights_path,
    state_dict_sha256,
)
from pixclust.errors import UsageError

# Bump when what a network's record holds changes, so cached records are rebuilt.
RECORD_CACHE_VERSION = 2


@dataclass
class FeatureExtractor:
    """A loaded model: ``transform`` runs per image (in workers), ``embed_batch`` per batch.

    ``model_id`` changes whenever the weights or the preprocessing change, so
    it is the cache key for stored embeddings.
    """

    spec: ModelSpec
    dim: int
    transform: Callable[[Any], np.ndarray]
    draft_size: int
    record: ModelRecord
    runner: Runner | None = field(default=None, repr=False)
    # Set when the runtime waits for the first batch (see load_extractor's ``lazy``).
    start_runner: Callable[[], Runner] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the runtime now if it is waiting for the first batch, and record which it is."""
        if self.runner is None and self.start_runner is not None:
            self.runner = self.start_runner()
            self.start_runner = None
            self.record = replace(self.record, runtime=self.runner.description)

    @property
    def model_id(self) -> str:
        return f"{self.spec.name}:{self.record.identity_digest()}"

    @property
    def graph_id(self) -> str:
        """What names the network's exported graph: the model id, less the ink turning that happens before it."""
        if not self.spec.ink:
            return self.model_id
        prep = {name: value for name, value in self.record.preprocessing.items() if name != "ink"}
        plain = replace(self.record, model=self.spec.name.removesuffix(INK_SUFFIX), preprocessing=prep)
        return f"{plain.model}:{plain.identity_digest()}"

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """Features for a stacked batch of ``transform`` outputs, float32, one row per image."""
        self.start()
        if self.runner is None:
            return np.asarray(batch, dtype=np.float32)
        return self.runner.run(np.ascontiguousarray(batch, dtype=np.uint8))


def load_extractor(
    name: str = DEFAULT_MODEL,
    *,
    weights: str | Path | None = None,
    runtime: str = "auto",
    precision: str = "auto",
    lazy: bool = False,
    threads: int | None = None,
) -> FeatureExtractor:
    """Build the feature extractor for a registry name.

    ``weights`` is ``None`` (the model's own pretrained weights: packaged, or
    from the hub when online), a file path (a state dict, ``.pth``/``.pt``/
    ``.bin``/``.safetensors``), or ``"random"`` for plumbing tests.
    ``runtime``/``precision`` choose where a network runs, ``threads`` caps its
    CPU threads (see ``runtimes.make_runner``).
    ``lazy``: when the network's record is cached (every start after the
    first), the runtime starts on the first batch instead of now, so decode
    workers fork from a smaller process and decode while it starts, and a run
    whose every vector is stored never loads it (0.8 GB and 1.5 s saved).
    Raises :class:`ModelUnavailableError` when weights cannot be had.
    """
    check_runtime(runtime, precision)
    spec = resolve_model(name)
    if spec.family == "hog":
        _reject_weights(spec, weights)
        described = f"128x128 grey, ink on paper as {INK_FORM}" if spec.ink else "128x128 grey"
        if spec.outline:
            described += ", then the outline's HOG (ink off the border's paper, holes filled)"
        return FeatureExtractor(
            spec, spec.dim, HogTransform(spec.ink, spec.outline), HogTransform.side, _handmade_record(spec, described)
        )
    if spec.family == "pixels":
        _reject_weights(spec, weights)
        return FeatureExtractor(
            spec, spec.dim, PixelTransform(), PixelTransform.side, _handmade_record(spec, "32x32 RGB")
        )
    return _load_timm_extractor(spec, weights, runtime, precision, lazy, threads)


def _reject_weights(spec: ModelSpec, weights: str | Path | None) -> None:
    if weights is not None:
        raise UsageError(f"model '{spec.name}' has no weights; drop --weights or choose a network model")


def _handmade_record(spec: ModelSpec, preprocessing: str) -> ModelRecord:
    return ModelRecord(model=spec.name, weights=WeightsSource("none"), preprocessing=preprocessing)


def _load_timm_extractor(
    spec: ModelSpec, weights: str | Path | None, runtime: str, precision: str, lazy: bool, threads: int | None
) -> FeatureExtractor:
    record_file = _record_cache_file(spec, weights)
    known = _extractor_from_cached_record(spec, record_file) if record_file else None
    if known is not None:
        known.start_runner = functools.partial(_start_cached, known, weights, runtime, precision, threads)
        if not lazy:
            known.start()
        return known
    network, source = load_network(spec, weights)
    extractor = network_extractor(
        spec, network, source, network_preprocessing(network, crop_fraction=spec.crop_fraction, ink=spec.ink)
    )
    if record_file is not None:
        _remember_record(record_file, extractor.record.to_dict())
    return attach_runner(extractor, network, runtime=runtime, precision=precision, threads=threads)


def _record_cache_file(spec: ModelSpec, weights: str | Path | None) -> Path | None:
    """Where the record of a network built from a weights file is cached, keyed by that file's path, size and mtime.

    Building the network only to learn its record (the weights' hash, the
    preprocessing) costs importing timm, 1.5 of the 3 seconds a run spends
    starting; with the record and the ONNX export cached, neither is needed.
    None for weights that are not one file on disk (random, or the hub's).
    """
    if weights == RANDOM_WEIGHTS or (weights is None and not spec.weights_package):
        return None
    path = (packaged_weights_path(spec) if weights is None else Path(weights)).resolve()
    try:
        stat = path.stat()
    except OSError:
        return None
    # The same file named by --weights or found in its package is recorded with a different source.
    origin = "package" if weights is None else "file"
    key = json.dumps([RECORD_CACHE_VERSION, asdict(spec), origin, str(path), stat.st_size, stat.st_mtime_ns])
    return cache_dir() / "records" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _remember_record(record_file: Path, record: dict[str, Any]) -> None:
    """Cache the record for the next start; a cache that cannot be written only costs that start its speed."""
    try:
        with atomic_path(record_file) as tmp:
            tmp.write_text(json.dumps(record))
    except OSError:
        pass


def _extractor_from_cached_record(spec: ModelSpec, record_file: Path) -> FeatureExtractor | None:
    """The extractor, not yet started, rebuilt from a cached record; None when there is none or it is unreadable."""
    try:
        stored = json.loads(record_file.read_text())
        fields = stored["preprocessing"]
        # JSON turned the tuples into lists; ink is recorded as the form it is turned into.
        values = {**fields, "mean": tuple(fields["mean"]), "std": tuple(fields["std"]), "ink": "ink" in fields}
        prep = Preprocessing(**values)
        dim = int(stored["dim"])
        record = replace(ModelRecord.from_dict(stored), preprocessing=prep.to_record(), dim=dim)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return FeatureExtractor(spec, dim, ImageTransform(prep), prep.centre_crop.draft_size, record)


def _start_cached(
    extractor: FeatureExtractor, weights: str | Path | None, runtime: str, precision: str, threads: int | None
) -> Runner:
    """The runner from the cached ONNX export alone, else (no export yet, or PyTorch chosen) from the network built anew."""
    input_size = extractor.record.preprocessing["input_size"]
    choice = {"runtime": runtime, "precision": precision, "threads": threads}
    runner = runner_from_export(extractor.graph_id, input_size, **choice)
    if runner is not None:
        return runner
    network, _ = load_network(extractor.spec, weights)
    return make_runner(_pixels_in(network, extractor.record), extractor.graph_id, input_size, **choice)


def network_extractor(spec: ModelSpec, network: Any, source: WeightsSource, prep: Preprocessing) -> FeatureExtractor:
    """A feature extractor around a loaded network, runnable once ``attach_runner`` gives it a runner.

    Its record, and so its model id, hashes the network's weights as they are now.
    """
    dim = int(network.num_features if spec.dim is None else spec.dim)
    record = ModelRecord(
        model=spec.name,
        architecture=spec.timm_name,
        weights=source,
        weights_sha256=state_dict_sha256(network),
        dim=dim,
        pooling=spec.pooling,
        preprocessing=prep.to_record(),
    )
    return FeatureExtractor(spec, dim, ImageTransform(prep), prep.centre_crop.draft_size, record)


def attach_runner(
    extractor: FeatureExtractor,
    network: Any,
    *,
    runtime: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
) -> FeatureExtractor:
    """Give the extractor the runner for ``network`` (see ``runtimes.make_runner``) and record which it is."""
    input_size = extractor.record.preprocessing["input_size"]
    pixels_in = _pixels_in(network, extractor.record)
    extractor.runner = make_runner(
        pixels_in, extractor.graph_id, input_size, runtime=runtime, precision=precision, threads=threads
    )
    extractor.record = replace(extractor.record, runtime=extractor.runner.description)
    return extractor


def _pixels_in(network: Any, record: ModelRecord) -> Any:
    """The network behind the layer that scales uint8 pixels to its weights' mean and std (``network_input``)."""
    from pixclust.embedding.network_input import ImageNetwork

    prep = record.preprocessing
    return ImageNetwork(network, prep["mean"], prep["std"]).eval()
