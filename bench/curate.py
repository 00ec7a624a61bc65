"""Image-quality flags against cleanvision, cluster names on real photos, and what flags cost.

Run: .venv/bin/python bench/curate.py [WORK_DIR] [--cleanvision-python PYTHON] [--only flags|names|cost]

flags  Three collections of real pictures: 400 crops of scikit-image's colour photos (128 px),
       400 Fashion-MNIST test images (28 px) and 400 of scikit-learn's digits (8 px). Into each,
       eight degraded copies of random originals are planted per kind: Gaussian blur (sigma 2-4),
       brightness x0.15 and x3, a 5% crop scaled back up, a uniform fill, a 16x16 thumbnail, a 1:5
       strip, and (photos only) a grey copy. `pixclust cluster` (defaults) flags the folder;
       cleanvision (`Imagelab.find_issues`, its defaults) checks the same files in the same run.
       Printed per collection and flag: precision, recall and F1 of each tool, where the answers
       are the planted kinds (blurry: blur and the scaled-up crop; low information: uniform
       fills, read from pixclust's `uniform` and `low-information`), and the share of originals
       each tool flags at all.
names  30 crops (40-80% of the shorter side, anywhere) of each of six scikit-image photos whose
       subject ImageNet has classes for, each with the classes a person accepts written down
       below (e.g. the cat: tabby, tiger cat, Egyptian cat...). `pixclust cluster` (defaults,
       k chosen by itself) names the clusters; printed per cluster: the photo most of its
       crops come from, that share, the name, and whether the name holds an accepted class.
cost   Seconds of `pixel_stats.measure` on 1,000 decoded 640x480 JPEG photos (Fashion-MNIST
       upsampled), and of naming their 10 classes' clusters, against the embedding of the same
       files in one process (`--workers 0`): what flags and names add to the embedding stage.
cleanvision is not a pixclust dependency: install it into any Python (`python -m venv cv &&
cv/bin/pip install cleanvision`) and pass that Python; without it only pixclust's rows print.
The machine is shared: compare times within one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from real_data import fashion_mnist, write_image_tree, write_photo_crops

from pixclust.curation.naming import name_clusters
from pixclust.demo import write_digits
from pixclust.embedding.class_head import class_head
from pixclust.embedding.decode import load_rgb
from pixclust.embedding.pixel_stats import measure
from pixclust.runs.pipeline import RunConfig, run

SEED = 0
ORIGINALS = 400
PLANTED_PER_KIND = 8


def _blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(2, 4)))


def _scaled(factor: float) -> Callable[[Image.Image, np.random.Generator], Image.Image]:
    return lambda image, rng: image.point(lambda value: min(255, round(value * factor)))


def _crop_scaled_up(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    side_w, side_h = (max(2, round(side * 0.05**0.5)) for side in image.size)
    left, top = rng.integers(0, image.width - side_w + 1), rng.integers(0, image.height - side_h + 1)
    return image.crop((left, top, left + side_w, top + side_h)).resize(image.size, Image.Resampling.BICUBIC)


def _uniform(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    # Mid-tones, so a fill is not also dark or bright.
    return Image.new("RGB", image.size, tuple(int(v) for v in rng.integers(60, 200, 3)))


def _thumbnail(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.resize((16, 16), Image.Resampling.LANCZOS)


def _strip(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    height = max(1, image.height // 5)
    top = rng.integers(0, image.height - height + 1)
    return image.crop((0, top, image.width, top + height))


def _grey(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.convert("L").convert("RGB")


PLANTS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "blur": _blur,
    "dark": _scaled(0.15),
    "bright": _scaled(3.0),
    "crop": _crop_scaled_up,
    "uniform": _uniform,
    "thumbnail": _thumbnail,
    "strip": _strip,
    "grey": _grey,
}

# flag: (the planted kinds it should catch, pixclust's flags that say it, cleanvision's issue types that say it)
FLAGS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "blurry": (("blur", "crop"), ("blurry",), ("blurry",)),
    "dark": (("dark",), ("dark",), ("dark",)),
    "overexposed": (("bright",), ("overexposed",), ("light",)),
    "low information": (("uniform",), ("uniform", "low-information"), ("low_information",)),
    "tiny": (("thumbnail",), ("tiny",), ("odd_size",)),
    "odd aspect": (("strip",), ("odd-aspect",), ("odd_aspect_ratio",)),
    "grayscale": (("grey",), ("grayscale",), ("grayscale",)),
}

# The ImageNet classes a person accepts for each photo's subject (grey photos are read as RGB).
ACCEPTED: dict[str, set[str]] = {
    "chelsea": {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"},
    "coffee": {"espresso", "cup", "coffee mug", "coffeepot", "eggnog"},
    "stereo_motorcycle": {"moped", "motor scooter", "disk brake", "crash helmet"},
    "rocket": {"missile", "projectile", "space shuttle"},
    "camera": {"tripod", "reflex camera", "Polaroid camera"},
    "clock": {"wall clock", "analog clock"},
}
NAMED_CROPS = 30

CLEANVISION_SCRIPT = """
import json, sys
from cleanvision import Imagelab
issue_types = {name: {} for name in json.loads(sys.argv[2])}
lab = Imagelab(data_path=sys.argv[1])
lab.find_issues(issue_types, verbose=False)
found = {}
for path, row in lab.issues.iterrows():
    found[str(path)] = [name for name in issue_types if bool(row.get(f"is_{name}_issue", False))]
json.dump(found, open(sys.argv[3], "w"))
"""


def build_collection(name: str, root: Path) -> tuple[Path, dict[str, str]]:
    """The folder of originals and planted copies, and the planted kind of each planted file."""
    folder = root / name
    originals = folder / "originals"
    if not originals.is_dir():
        if name == "photos":
            write_photo_crops(originals, per_photo=ORIGINALS // 10, random_state=SEED)
        elif name == "fashion":
            images, labels = fashion_mnist("test")
            write_image_tree(originals, images[:ORIGINALS], labels[:ORIGINALS])
        else:
            write_digits(originals, limit=ORIGINALS)
    files = sorted(str(path) for path in originals.rglob("*.png"))
    planted = {}
    # Only where the originals are larger than a thumbnail, and in colour, is a thumbnail tiny and a grey copy odd.
    kinds = [
        kind for kind in PLANTS if (kind != "thumbnail" or name != "digits") and (kind != "grey" or name == "photos")
    ]
    for number, kind in enumerate(kinds):
        rng = np.random.default_rng([SEED, number])
        for index in rng.choice(len(files), PLANTED_PER_KIND, replace=False):
            target = folder / "planted" / f"{kind}_{index:04d}.png"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                PLANTS[kind](Image.open(files[index]).convert("RGB"), rng).save(target)
            planted[str(target)] = kind
    return folder, planted


def pixclust_flags(folder: Path, run_dir: Path) -> dict[str, set[str]]:
    result = run(RunConfig(source=str(folder), out=str(run_dir), report=False), quiet=True)
    assert result.flags is not None
    return {path: set(flags) for path, flags in zip(result.embeddings.paths, result.flags.flags, strict=True)}


def cleanvision_flags(python: str, folder: Path) -> dict[str, set[str]]:
    kinds = sorted({name for _, _, theirs in FLAGS.values() for name in theirs})
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "found.json"
        subprocess.run([python, "-c", CLEANVISION_SCRIPT, str(folder), json.dumps(kinds), str(out)], check=True)
        found = json.loads(out.read_text())
    return {str(Path(path).resolve()): set(names) for path, names in found.items()}


def scores(predicted: dict[str, set[str]], planted: dict[str, str], kinds: tuple[str, ...], says: tuple[str, ...]):
    hits = {path for path, names in predicted.items() if names & set(says)}
    truth = {path for path, kind in planted.items() if kind in kinds}
    tp = len(hits & truth)
    precision = tp / len(hits) if hits else float("nan")
    recall = tp / len(truth) if truth else float("nan")
    f1 = 2 * tp / (len(hits) + len(truth)) if hits or truth else float("nan")
    return precision, recall, f1


def flags_bench(work: Path, python: str | None) -> None:
    print(f"{'collection':<10} {'flag':<16} {'pixclust P / R / F1':>22} {'cleanvision P / R / F1':>25}")
    for name in ("photos", "fashion", "digits"):
        folder, planted = build_collection(name, work)
        ours = pixclust_flags(folder, work / f"{name}-run")
        theirs = cleanvision_flags(python, folder) if python else None
        for flag, (kinds, our_words, their_words) in FLAGS.items():
            if not any(kind in planted.values() for kind in kinds):
                continue
            row = f"{name:<10} {flag:<16} {_triple(scores(ours, planted, kinds, our_words)):>22}"
            if theirs is not None:
                row += f" {_triple(scores(theirs, planted, kinds, their_words)):>25}"
            print(row, flush=True)
        originals = [path for path in ours if path not in planted]
        line = f"{name:<10} {'originals flagged':<16} {_share(ours, originals):>22}"
        if theirs is not None:
            line += f" {_share(theirs, originals):>25}"
        print(line, flush=True)


def _triple(values: tuple[float, float, float]) -> str:
    return " / ".join("  - " if np.isnan(value) else f"{value:.2f}" for value in values)


def _share(predicted: dict[str, set[str]], originals: list[str]) -> str:
    flagged = sum(1 for path in originals if predicted.get(path))
    return f"{flagged / len(originals):.3f} ({flagged}/{len(originals)})"


def build_named_photos(root: Path) -> Path:
    import skimage.data

    rng = np.random.default_rng(SEED)
    for name in ACCEPTED:
        pixels = getattr(skimage.data, name)()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels
        picture = Image.fromarray(pixels).convert("RGB")
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(NAMED_CROPS):
            side = int(min(picture.size) * rng.uniform(0.4, 0.8))
            left, top = rng.integers(0, picture.width - side + 1), rng.integers(0, picture.height - side + 1)
            target = folder / f"{index:02d}.png"
            if not target.exists():
                picture.crop((left, top, left + side, top + side)).resize((224, 224)).save(target)
    return root


def names_bench(work: Path) -> None:
    from collections import Counter

    folder = build_named_photos(work / "named-photos")
    result = run(RunConfig(source=str(folder), out=str(work / "named-run"), report=False), quiet=True)
    if result.names is None:
        print("the model has no classifier: no names")
        return
    photos = [Path(path).parent.name for path in result.embeddings.paths]
    hits = 0
    print(f"{'cluster':<8} {'photo (share)':<28} {'name':<36} accepted")
    for label, name in sorted(result.names.items()):
        members = Counter(
            photo for photo, row_label in zip(photos, result.clustering.labels, strict=True) if row_label == label
        )
        photo, count = members.most_common(1)[0]
        hit = bool(set(name.classes) & ACCEPTED[photo])
        hits += hit
        share = f"{photo} ({count / sum(members.values()):.2f})"
        print(f"{label:<8} {share:<28} {name.name:<36} {'yes' if hit else 'no'}", flush=True)
    print(f"names holding an accepted class: {hits}/{len(result.names)} ({hits / len(result.names):.0%})")


def cost_bench(work: Path) -> None:
    from pixclust.embedding.extraction import embed

    images, labels = fashion_mnist("test")
    folder = write_image_tree(work / "cost-photos", images[:1000], labels[:1000], size=(640, 480), fmt="jpg")
    files = sorted(folder.rglob("*.jpg"))
    embed(folder, num_workers=0, quiet=True)  # warm: the network exported and loaded once
    started = time.perf_counter()
    embeddings = embed(folder, num_workers=0, quiet=True)
    embedding_s = time.perf_counter() - started
    head = class_head(embeddings.model)
    assert head is not None
    started = time.perf_counter()
    name_clusters(head, embeddings.vectors, labels[:1000])
    naming_s = time.perf_counter() - started
    decoded = [load_rgb(path, draft_size=201) for path in files]
    started = time.perf_counter()
    for image in decoded:
        measure(image)
    measuring_s = time.perf_counter() - started
    print(f"embedding 1,000 640x480 JPEGs in one process: {embedding_s:.1f} s")
    print(f"pixel stats of the same decoded pictures:      {measuring_s:.2f} s ({measuring_s / embedding_s:.1%})")
    print(f"naming 10 clusters of them (cached head):      {naming_s:.2f} s ({naming_s / embedding_s:.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", nargs="?", default=str(Path(tempfile.gettempdir()) / "pixclust-bench-curate"))
    parser.add_argument("--cleanvision-python", default=None, help="a Python with cleanvision installed")
    parser.add_argument("--only", choices=("flags", "names", "cost"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    python = args.cleanvision_python
    if python is None and shutil.which("python") and _has_cleanvision(sys.executable):
        python = sys.executable
    if args.only in (None, "flags"):
        flags_bench(work, python)
    if args.only in (None, "names"):
        names_bench(work)
    if args.only in (None, "cost"):
        cost_bench(work)


def _has_cleanvision(python: str) -> bool:
    return subprocess.run([python, "-c", "import cleanvision"], capture_output=True, check=False).returncode == 0


if __name__ == "__main__":
    main()
