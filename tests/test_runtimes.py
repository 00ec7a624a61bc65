"""Every installed runtime gives the PyTorch fp32 answer; a missing one falls back cleanly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_digit_tree

from pixclust.embedding.embedder import Embedder
from pixclust.embedding.extractor import load_extractor
from pixclust.embedding.models import DEFAULT_MODEL, MODELS
from pixclust.embedding.runtimes import cache_dir
from pixclust.embedding.weights import packaged_weights_path
from pixclust.errors import UsageError


@pytest.fixture(scope="module")
def real_images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from PIL import Image
    from skimage import data

    root = write_digit_tree(tmp_path_factory.mktemp("runtime-images"), per_class=4)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(data, name)()).convert("RGB").save(root / f"{name}.jpg", quality=92)
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def _embed(extractor, paths: list[str]) -> np.ndarray:
    rows = [batch.vectors for batch in Embedder(extractor, batch_size=8, num_workers=0).iter_batches(paths)]
    return np.concatenate(rows)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def torch_fp32(real_images: list[str]) -> np.ndarray:
    return _embed(load_extractor(runtime="torch", precision="fp32"), real_images)


@pytest.mark.parametrize(
    ("runtime", "precision"),
    [("openvino", "fp32"), ("openvino", "auto"), ("onnxruntime", "fp32"), ("torch", "bf16")],
)
def test_runtimes_agree_with_pytorch_fp32(real_images, torch_fp32, runtime: str, precision: str) -> None:
    pytest.importorskip(runtime if runtime != "torch" else "torch")
    extractor = load_extractor(runtime=runtime, precision=precision)
    assert extractor.record.runtime.startswith(runtime)
    cosines = _cosines(_embed(extractor, real_images), torch_fp32)
    assert cosines.mean() >= 0.99 and cosines.min() >= 0.98


def test_runtime_does_not_change_the_model_id() -> None:
    assert load_extractor(runtime="torch").model_id == load_extractor(runtime="onnxruntime").model_id


def test_the_onnx_export_is_cached(real_images) -> None:
    model_id = load_extractor(runtime="onnxruntime").model_id
    exported = list((cache_dir() / "onnx").glob(f"{model_id.replace(':', '-')}-*.onnx"))
    assert len(exported) == 1
    stamp = exported[0].stat().st_mtime_ns
    load_extractor(runtime="openvino")
    assert exported[0].stat().st_mtime_ns == stamp


def test_auto_falls_back_when_openvino_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert load_extractor(runtime="auto").record.runtime.startswith("onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert load_extractor(runtime="auto").record.runtime.startswith("torch")
    with pytest.raises(UsageError, match="--runtime openvino is not installed"):
        load_extractor(runtime="openvino")


def test_bad_runtime_settings_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="runtime='tpu'"):
        load_extractor(runtime="tpu")
    with pytest.raises(UsageError, match="needs a GPU"):
        load_extractor(runtime="torch", precision="fp16")


def test_a_cached_record_and_export_start_the_network_without_building_it(tmp_path) -> None:
    """The second start reads the weights' record and the ONNX export from the cache: no timm, same model and answer."""
    script = (
        "import sys, numpy as np\n"
        "from pixclust.embedding.extractor import load_extractor\n"
        "extractor = load_extractor(runtime='onnxruntime')\n"
        "batch = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)\n"
        "print('timm' in sys.modules, extractor.model_id, extractor.draft_size, extractor.embed_batch(batch).sum())\n"
    )
    # The session's ONNX exports, when earlier tests made them, save the first start its export (a quarter of a
    # minute); the weights' record, which this test is about, starts absent either way.
    exports = Path(os.environ["PIXCLUST_CACHE"]) / "onnx"
    if exports.is_dir():
        shutil.copytree(exports, tmp_path / "onnx")
    env = {**os.environ, "PIXCLUST_CACHE": str(tmp_path)}
    runs = [
        subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    first, second = (run.stdout.split() for run in runs)
    assert first[0] == "True" and second[0] == "False"
    assert first[1:] == second[1:]
    assert len(list((tmp_path / "records").glob("*.json"))) == 1


def test_a_changed_weights_file_is_not_served_from_the_cached_record(tmp_path) -> None:
    # PyTorch runs the network: the record is cached whatever the runtime, and the changed weights need no export.
    weights = tmp_path / "lite0.pth"
    shutil.copyfile(packaged_weights_path(MODELS[DEFAULT_MODEL]), weights)
    first = load_extractor(weights=weights, runtime="torch")
    assert first.model_id == load_extractor(runtime="torch").model_id
    state = torch.load(weights, weights_only=True)
    name = next(iter(state))
    state[name] = state[name] + 1.0
    torch.save(state, weights)
    assert load_extractor(weights=weights, runtime="torch").model_id != first.model_id


def test_a_run_whose_every_vector_is_stored_never_starts_the_network(tmp_path) -> None:
    root = write_digit_tree(tmp_path / "images", per_class=2)
    script = (
        "import sys, pixclust\n"
        f"embeddings = pixclust.embed({str(root)!r}, out={str(tmp_path / 'run')!r}, quiet=True)\n"
        "print(len(embeddings), embeddings.model.runtime is not None, 'openvino' in sys.modules or 'onnxruntime' in sys.modules)\n"
    )
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True) for _ in range(2)
    ]
    first, second = (run.stdout.split() for run in runs)
    assert first[0] == second[0] == str(sum(1 for path in root.rglob("*") if path.is_file()))
    assert first[1:] == ["True", "True"]
    assert second[1:] == ["False", "False"]


def test_a_damaged_cached_record_is_rebuilt_not_fatal(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXCLUST_CACHE", str(tmp_path))
    # PyTorch runs the network, so that this empty cache's first start costs no ONNX export.
    model_id = load_extractor(runtime="torch").model_id
    (record,) = (tmp_path / "records").glob("*.json")
    for damage in ("{not json", '{"preprocessing": {}}', json.dumps({**json.loads(record.read_text()), "dim": None})):
        record.write_text(damage)
        assert load_extractor(runtime="torch").model_id == model_id


def test_an_unwritable_cache_does_not_stop_the_torch_runtime(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("PIXCLUST_CACHE", str(blocked))
    extractor = load_extractor(runtime="torch")
    assert extractor.embed_batch(np.zeros((1, 224, 224, 3), np.uint8)).shape == (1, 1280)
