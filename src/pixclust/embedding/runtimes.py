"""Where a network runs: OpenVINO or ONNX Runtime on CPUs, PyTorch on GPUs or as the last resort.

The network is exported once to ONNX and the file cached (keyed by the
model id, so new weights or preprocessing export again). Every runtime takes
the same uint8 N x H x W x 3 batch of pixels (``network_input.ImageNetwork``
scales them inside the network) and returns float32 features; they agree with
PyTorch fp32 to a cosine similarity above 0.99 (tests check), so stored
embeddings are shared across runtimes. ``bench/embed.py`` measures them.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pixclust.atomic import atomic_path
from pixclust.errors import UsageError
from pixclust.progress import warn

RUNTIMES = ("auto", "openvino", "onnxruntime", "torch")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_OPSET = 18
# The exported graph's input, in the file name so that exports taking another input are never reused.
_INPUT = "u8hwc"
_NVIDIA_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/dxg")


@dataclass
class Runner:
    """A callable batch -> features, and what it is (recorded in run.json)."""

    runtime: str
    precision: str
    device: str
    run: Callable[[np.ndarray], np.ndarray]

    @property
    def description(self) -> str:
        return f"{self.runtime} {self.precision} on {self.device}"


def cache_dir() -> Path:
    """Where exported networks live: $PIXCLUST_CACHE, else $XDG_CACHE_HOME/pixclust, else ~/.cache/pixclust."""
    if os.environ.get("PIXCLUST_CACHE"):
        return Path(os.environ["PIXCLUST_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pixclust"


def check_runtime(runtime: str, precision: str) -> None:
    """Refuse a runtime or precision pixclust does not know, in a Python caller's words (RunConfig speaks the CLI's)."""
    if runtime not in RUNTIMES:
        raise UsageError(f"runtime={runtime!r} is not known; choose one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise UsageError(f"precision={precision!r} is not known; choose one of {', '.join(PRECISIONS)}")


def make_runner(
    network: Any,
    model_id: str,
    input_size: int,
    *,
    runtime: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
) -> Runner:
    """The fastest available runner for ``network``, or exactly the one asked for.

    ``auto``: PyTorch with half precision on a CUDA GPU; otherwise OpenVINO,
    then ONNX Runtime, then PyTorch, each skipped when it is not installed.
    ``runtime`` and ``precision`` were checked where they came in (``load_extractor``).
    ``threads`` caps the CPU threads the network uses (None: the runtime's own
    choice, every core); a Ray actor given 2 of a node's 16 CPUs passes 2.
    """
    if runtime == "auto":
        if _cuda_available():
            return _torch_runner(network, precision, threads)
        for candidate in (_openvino_runner, _onnxruntime_runner):
            try:
                return candidate(network, model_id, input_size, precision, threads)
            except ImportError:
                continue
        return _torch_runner(network, precision, threads)
    if runtime == "torch":
        return _torch_runner(network, precision, threads)
    maker = _openvino_runner if runtime == "openvino" else _onnxruntime_runner
    try:
        return maker(network, model_id, input_size, precision, threads)
    except ImportError as error:
        raise UsageError(
            f"--runtime {runtime} is not installed; run: pip install {runtime}, or use --runtime auto"
        ) from error


def runner_from_export(
    model_id: str, input_size: int, *, runtime: str = "auto", precision: str = "auto", threads: int | None = None
) -> Runner | None:
    """The runner ``make_runner`` would choose, built from the cached ONNX export alone; None when it needs the network.

    It needs the network when nothing is exported yet, or when the choice is
    PyTorch: asked for, on a CUDA GPU, or with neither ONNX runtime installed.
    """
    if runtime == "torch" or not onnx_path(model_id, input_size).is_file():
        return None
    if runtime == "auto" and _cuda_available():
        return None
    makers = {"openvino": (_openvino_runner,), "onnxruntime": (_onnxruntime_runner,)}.get(
        runtime, (_openvino_runner, _onnxruntime_runner)
    )
    for maker in makers:
        try:
            return maker(None, model_id, input_size, precision, threads)
        except ImportError:
            continue
        except _DamagedExport:
            return None
    return None


def _cuda_available() -> bool:
    # Importing torch costs a second of every run's start; on Linux without NVIDIA's driver
    # (its /proc entry, or WSL's GPU device) and on macOS there is no CUDA for it to find.
    if sys.platform == "darwin" or (
        sys.platform.startswith("linux") and not any(os.path.exists(p) for p in _NVIDIA_DRIVER_FILES)
    ):
        return False
    import torch

    return torch.cuda.is_available()


def _torch_runner(network: Any, precision: str, threads: int | None) -> Runner:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = precision if precision != "auto" else ("fp16" if device == "cuda" else "fp32")
    if device == "cpu" and chosen == "fp16":
        raise UsageError("--precision fp16 with --runtime torch needs a GPU; use fp32 or bf16 on a CPU")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(chosen)
    network.to(device)

    def run(batch: np.ndarray) -> np.ndarray:
        # torch wants writable memory; a batch of one image can be a read-only view of a PIL image.
        tensor = torch.from_numpy(np.require(batch, requirements="W")).to(device)
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            return network(tensor).float().cpu().numpy()

    return Runner("torch", chosen, device, run)


def onnx_path(model_id: str, input_size: int) -> Path:
    """Where the ONNX export of a model id lives in the cache."""
    return cache_dir() / "onnx" / f"{model_id.replace(':', '-')}-{input_size}-{_INPUT}-opset{_OPSET}.onnx"


def exported_onnx(network: Any, model_id: str, input_size: int) -> Path:
    """The network as an ONNX file with a dynamic batch axis, exported on first use and cached."""
    target = onnx_path(model_id, input_size)
    if target.is_file():
        return target
    import torch

    example = torch.zeros(2, input_size, input_size, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    network.to("cpu")
    with atomic_path(target) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network,
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=["features"],
            dynamic_shapes=({0: batch},),
            opset_version=_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return target


_Loaded = TypeVar("_Loaded")


class _DamagedExport(Exception):
    """The cached export would not load and is removed; there is no network here to export it again from."""


def _load_export(
    load: Callable[[Path], _Loaded],
    network: Any,
    model_id: str,
    input_size: int,
    *,
    damaged: tuple[type[Exception], ...],
) -> _Loaded:
    """``load`` of the network's export (made first if need be); a cached one that raises ``damaged`` is exported again.

    A file cut short or overwritten in the cache would otherwise fail every run, since a
    cached export is never replaced. Without ``network`` (:func:`runner_from_export`) the
    file is removed and :class:`_DamagedExport` raised, so that the caller builds the network.
    """
    target = onnx_path(model_id, input_size)
    was_cached = target.is_file()
    try:
        return load(exported_onnx(network, model_id, input_size))
    except damaged as error:
        if not was_cached:
            raise
        target.unlink(missing_ok=True)
        warn(f"the cached network {target} would not load ({type(error).__name__}); it is exported again")
        if network is None:
            raise _DamagedExport from error
    return load(exported_onnx(network, model_id, input_size))


def _openvino_runner(network: Any, model_id: str, input_size: int, precision: str, threads: int | None) -> Runner:
    import openvino

    core = openvino.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    chosen = precision if precision != "auto" else ("bf16" if "BF16" in capabilities else "fp32")
    if chosen == "bf16" and "BF16" not in capabilities:
        raise UsageError("--precision bf16: this CPU has no bf16 support; use fp32 or --precision auto")
    hint = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}[chosen]
    properties = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        properties["INFERENCE_NUM_THREADS"] = threads
    # LATENCY: one stream over every core. pixclust runs one batch at a time, and under the
    # THROUGHPUT hint such a call gets one of several streams, i.e. a share of the cores: on this
    # project's 2-core machine Lite0 bf16 ran 349 images/s that way against 668 (same run).
    compiled = _load_export(
        lambda path: core.compile_model(core.read_model(path), "CPU", properties),
        network,
        model_id,
        input_size,
        damaged=(RuntimeError,),
    )

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(compiled(batch)[0], dtype=np.float32)

    return Runner("openvino", chosen, "cpu", run)


def _onnxruntime_runner(network: Any, model_id: str, input_size: int, precision: str, threads: int | None) -> Runner:
    import onnxruntime

    if precision not in ("auto", "fp32"):
        raise UsageError(
            f"--precision {precision} is not offered by onnxruntime on a CPU; use fp32 or --runtime openvino"
        )
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = _load_export(
        lambda path: onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]),
        network,
        model_id,
        input_size,
        damaged=(Fail, InvalidArgument, InvalidGraph, InvalidProtobuf),
    )

    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {"images": batch})[0], dtype=np.float32)

    return Runner("onnxruntime", "fp32", "cpu", run)
