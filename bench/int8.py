"""Would an int8 network pay? OpenVINO + NNCF post-training quantisation of the default model, measured.

Run: .venv/bin/pip install nncf && .venv/bin/python bench/int8.py
The default network (EfficientNet-Lite0, ONNX export cached by pixclust) is
quantised with NNCF on 300 Fashion-MNIST test images, the way a user's own
images would calibrate it. Printed, all in one run: model-only images/s in
bf16 and int8 (batch 32, random input), mean cosine of int8 and bf16 vectors
to fp32 on 2,000 other test images, and the clustering ACC each gives
(pixclust's default pipeline, k = 10). pixclust offers int8 only if it is at
least 1.5x bf16 with ACC within 0.01 of fp32 (issue 5).
"""

from __future__ import annotations

import time

import numpy as np
from PIL import Image
from real_data import fashion_mnist

from pixclust.clustering.metrics import cluster_accuracy
from pixclust.embedding.extractor import load_extractor
from pixclust.embedding.models import DEFAULT_MODEL
from pixclust.embedding.runtimes import onnx_path
from pixclust.runs.pipeline import cluster

CALIBRATION = slice(5000, 5300)
SCORED = slice(0, 2000)
SECONDS = 10.0


def images_per_second(compiled, batch: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    compiled(batch)
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < SECONDS:
        compiled(batch)
        done += len(batch)
    return done / (time.perf_counter() - started)


def main() -> None:
    import nncf
    import openvino

    # Loading it for OpenVINO exports the network to the ONNX cache, which is what gets quantised.
    extractor = load_extractor(DEFAULT_MODEL, runtime="openvino")
    images, labels = fashion_mnist("test")

    def prepared(part: slice) -> np.ndarray:
        return np.stack([extractor.transform(Image.fromarray(pixels).convert("RGB")) for pixels in images[part]])

    core = openvino.Core()
    network = core.read_model(onnx_path(extractor.model_id, extractor.record.preprocessing["input_size"]))
    calibration = prepared(CALIBRATION)
    started = time.perf_counter()
    quantised = nncf.quantize(network, nncf.Dataset([row[None] for row in calibration]), subset_size=len(calibration))
    print(f"quantisation on {len(calibration)} images: {time.perf_counter() - started:.1f} s")

    scored, truth = prepared(SCORED), labels[SCORED]
    batch = np.random.default_rng(0).integers(0, 256, size=(32, *scored.shape[1:]), dtype=np.uint8)
    vectors = {}
    print(f"{'variant':<8} {'images/s':>9} {'cosine to fp32':>15} {'ACC':>6}")
    for name, model, hint in (("fp32", network, "f32"), ("bf16", network, "bf16"), ("int8", quantised, "bf16")):
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
        rate = images_per_second(compiled, batch)
        vectors[name] = np.concatenate([np.asarray(compiled(scored[i : i + 64])[0]) for i in range(0, len(scored), 64)])
        unit = vectors[name] / np.linalg.norm(vectors[name], axis=1, keepdims=True)
        reference = vectors["fp32"] / np.linalg.norm(vectors["fp32"], axis=1, keepdims=True)
        accuracy = cluster_accuracy(truth, cluster(vectors[name], k=10).labels)
        print(f"{name:<8} {rate:>9.1f} {np.mean(np.sum(unit * reference, axis=1)):>15.4f} {accuracy:>6.3f}", flush=True)


if __name__ == "__main__":
    main()
