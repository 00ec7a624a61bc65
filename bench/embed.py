"""Embedding speed: the seeds' way, plain PyTorch, pixclust, clustimage, and each runtime model-only;
and the whole `pixclust cluster` command beside them, with its stages' times from run.json.

    .venv/bin/python bench/embed.py [--n 2000] [--work /tmp/pixclust-bench-embed] [--fastdup-python PYTHON]

All on one folder of Fashion-MNIST test images written as 640x480 JPEG photos
(apt-get install dataset-fashion-mnist), with EfficientNet-Lite0 (the offline
default) at 224x224. Each method runs in its own process so its peak memory is its
own. clustimage is measured only when it is installed (pip install clustimage); fastdup
only with --fastdup-python, the interpreter of a separate environment that has it
(python3 -m venv /tmp/fd && /tmp/fd/bin/pip install fastdup: its pins clash with
pixclust's), running its default job, `fastdup.create(work_dir, input_dir).run()`
(embeddings with its bundled model, similarity, components, outliers, statistics).
The machine's load changes figures from hour to hour: compare within one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fashion_mnist, write_image_tree

MODEL_ONLY = {
    "torch fp32 NCHW": ("torch", "fp32", False),
    "torch fp32 channels_last": ("torch", "fp32", True),
    "torch bf16 channels_last": ("torch", "bf16", True),
    "onnxruntime fp32": ("onnxruntime", "fp32", True),
    "openvino fp32": ("openvino", "fp32", True),
    "openvino bf16": ("openvino", "bf16", True),
}
END_TO_END = ("seed-style loop", "plain PyTorch batched", "pixclust end to end", "clustimage")
# The command a user types, from a fresh run folder (nothing stored), without the report.
WHOLE_COMMAND = {
    "pixclust cluster --k 10 (whole command)": ["--k", "10"],
    "pixclust cluster --k auto (whole command)": [],
}
FASTDUP = "fastdup default job"
# Timed from before the import, as the whole command is timed from starting Python.
_FASTDUP_JOB = """
import sys, time
started = time.perf_counter()
import fastdup
fastdup.create(work_dir=sys.argv[2], input_dir=sys.argv[1]).run(overwrite=True)
print(time.perf_counter() - started)
"""
BATCH = 32


def _files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*.jpg"))


def model_only(name: str) -> dict[str, float]:
    import torch

    from pixclust.embedding.extractor import load_extractor

    runtime, precision, channels_last = MODEL_ONLY[name]
    extractor = load_extractor(runtime=runtime, precision=precision)
    # The runtimes take uint8 pixels, N x H x W x 3, and scale them inside the network.
    batch = np.random.default_rng(0).integers(0, 256, (BATCH, 224, 224, 3), dtype=np.uint8)
    if channels_last:
        run = extractor.embed_batch
    else:
        import timm

        network = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                pixels = torch.from_numpy(x).permute(0, 3, 1, 2).float().contiguous() / 127.5 - 1.0
                return network(pixels).numpy()

    run(batch)
    rounds, started = 0, time.perf_counter()
    while time.perf_counter() - started < 20 or rounds < 3:
        run(batch)
        rounds += 1
    return {"images": rounds * BATCH, "seconds": time.perf_counter() - started}


def seed_style(folder: Path) -> dict[str, float]:
    """One image at a time: decode, resize to 224, one forward pass each (the seeds' loop)."""
    import torch
    from PIL import Image

    from pixclust.embedding.extractor import load_extractor

    extractor = load_extractor(runtime="torch", precision="fp32")
    network = extractor.runner
    files = _files(folder)
    started = time.perf_counter()
    for path in files:
        image = Image.open(path).convert("RGB").resize((224, 224))
        with torch.inference_mode():
            network.run(np.asarray(image)[None])
    return {"images": len(files), "seconds": time.perf_counter() - started}


def plain_batched(folder: Path) -> dict[str, float]:
    """Decode in the main process, batches of 32 through PyTorch fp32: what a careful script does."""
    from pixclust.embedding.decode import load_rgb
    from pixclust.embedding.extractor import load_extractor

    extractor = load_extractor(runtime="torch", precision="fp32")
    files = _files(folder)
    started = time.perf_counter()
    for start in range(0, len(files), BATCH):
        batch = np.stack([extractor.transform(load_rgb(path)) for path in files[start : start + BATCH]])
        extractor.embed_batch(batch)
    return {"images": len(files), "seconds": time.perf_counter() - started}


def pixclust_end_to_end(folder: Path) -> dict[str, float]:
    import pixclust

    # Loading the model (and exporting it to ONNX the first time) is part of what a user waits for.
    started = time.perf_counter()
    embeddings = pixclust.embed(folder, quiet=True)
    return {"images": len(embeddings), "seconds": time.perf_counter() - started, "runtime": embeddings.model.runtime}


def clustimage(folder: Path) -> dict[str, float]:
    from clustimage import Clustimage

    files = _files(folder)
    started = time.perf_counter()
    Clustimage(verbose=0).fit_transform(files)
    return {"images": len(files), "seconds": time.perf_counter() - started}


def whole_command(method: str, folder: Path) -> dict[str, float]:
    # A new run folder in a scratch folder of this script's own, so that nothing else is ever deleted.
    with tempfile.TemporaryDirectory(prefix="run-", dir=folder.parent) as scratch:
        out = Path(scratch) / "run"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pixclust", "cluster", str(folder), "--out", str(out), "--no-report", "--quiet"]
            + WHOLE_COMMAND[method],
            check=True,
        )
        seconds = time.perf_counter() - started
        record = json.loads((out / "run.json").read_text())
    return {"images": record["counts"]["images_used"], "seconds": seconds, "stages": record["timings_s"]}


def fastdup_job(python: str, folder: Path) -> dict[str, float] | None:
    """fastdup's default job on the folder, in its own environment; None when it fails."""
    with tempfile.TemporaryDirectory(prefix="fastdup-", dir=folder.parent) as work:
        # fastdup reports usage to Sentry unless told not to.
        done = subprocess.run(
            [python, "-c", _FASTDUP_JOB, str(folder), work],
            capture_output=True,
            text=True,
            env={**os.environ, "SENTRY_OPT_OUT": "1"},
        )
    if done.returncode != 0:
        print(f"(fastdup failed: {done.stderr.strip().splitlines()[-1:]})")
        return None
    return {"images": len(_files(folder)), "seconds": float(done.stdout.strip().splitlines()[-1])}


def run_one(method: str, folder: Path) -> dict[str, float]:
    if method in MODEL_ONLY:
        return model_only(method)
    if method in WHOLE_COMMAND:
        return whole_command(method, folder)
    return {
        "seed-style loop": seed_style,
        "plain PyTorch batched": plain_batched,
        "pixclust end to end": pixclust_end_to_end,
        "clustimage": clustimage,
    }[method](folder)


def measure(method: str, folder: Path) -> dict[str, float] | None:
    """Run one method in a child process; its result plus its own peak memory, or None if unavailable."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--one", method, "--folder", str(folder)], stdout=subprocess.PIPE, text=True
    )
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0 or not output.strip():
        return None
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_gb"] = usage.ru_maxrss / 1024**2
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/pixclust-bench-embed"))
    parser.add_argument("--fastdup-python", help="python of an environment with fastdup installed")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.folder)))
        return

    images, labels = fashion_mnist("test")
    folder = write_image_tree(args.work / "photos", images[: args.n], labels[: args.n], size=(640, 480), fmt="jpg")
    if importlib.util.find_spec("clustimage") is None:
        print("(clustimage is not installed: pip install clustimage to include it)")
    rows = {}
    for method in (*MODEL_ONLY, *END_TO_END, *WHOLE_COMMAND):
        result = measure(method, folder)
        if result is not None:
            rows[method] = result
    fastdup = fastdup_job(args.fastdup_python, folder) if args.fastdup_python else None
    pixclust_rate = rows["pixclust end to end"]["images"] / rows["pixclust end to end"]["seconds"]
    best_model_only = max(r["images"] / r["seconds"] for m, r in rows.items() if m in MODEL_ONLY)
    print(f"{args.n} Fashion-MNIST images as 640x480 JPEG, EfficientNet-Lite0 at 224, {os.cpu_count()} cores")
    print(f"{'method':<40}{'images/s':>10}{'peak GB':>9}{'pixclust ÷ it':>15}")
    for method, result in rows.items():
        rate = result["images"] / result["seconds"]
        kind = " (model only)" if method in MODEL_ONLY else ""
        print(f"{method + kind:<40}{rate:>10.1f}{result['peak_gb']:>9.2f}{pixclust_rate / rate:>15.2f}")
    print(f"pixclust end to end runs on: {rows['pixclust end to end'].get('runtime')}")
    print(f"pixclust end to end / best model-only: {pixclust_rate / best_model_only:.0%}")
    seeds = rows["seed-style loop"]["images"] / rows["seed-style loop"]["seconds"]
    for method in WHOLE_COMMAND:
        if method in rows:
            row = rows[method]
            rate = row["images"] / row["seconds"]
            stages = ", ".join(f"{name.removesuffix('_s')} {seconds:.1f} s" for name, seconds in row["stages"].items())
            against_fastdup = f", {fastdup['seconds'] / row['seconds']:.1f}x fastdup's speed" if fastdup else ""
            print(
                f"{method}: {rate / best_model_only:.0%} of the best model-only rate, {rate / seeds:.1f}x the seeds' "
                f"loop{against_fastdup}; {row['seconds']:.1f} s in all, of which {stages}"
            )
    if fastdup:
        rate = fastdup["images"] / fastdup["seconds"]
        print(f"{FASTDUP}: {rate:.1f} images/s, {fastdup['seconds']:.1f} s in all")


if __name__ == "__main__":
    main()
