"""PNG files for a person to check results by eye: contact sheets (Pillow) and ROC curves (matplotlib).

These functions only write; what they show is computed elsewhere. Images
that cannot be read become grey tiles, so a sheet is always complete.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from pixclust.atomic import atomic_path

TILE = 128
CAPTION = 16
COLUMNS = 8
_GREY = (200, 200, 200)


def write_contact_sheet(
    target: str | Path,
    paths: Sequence[str],
    captions: Sequence[str] | None = None,
    *,
    tile: int = TILE,
    columns: int = COLUMNS,
) -> Path:
    """A grid of thumbnails (aspect kept, centred on white), each with an optional caption under it."""
    from PIL import Image, ImageDraw

    from pixclust.errors import DecodeError
    from pixclust.images import load_rgb

    labels = list(captions) if captions is not None else [""] * len(paths)
    columns = max(1, min(columns, len(paths)))
    rows = max(1, math.ceil(len(paths) / columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + CAPTION)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (path, caption) in enumerate(zip(paths, labels, strict=True)):
        x, y = (n % columns) * tile, (n // columns) * (tile + CAPTION)
        try:
            image = load_rgb(path, draft_size=tile)
            image.thumbnail((tile - 4, tile - 4))
            sheet.paste(image, (x + (tile - image.width) // 2, y + (tile - image.height) // 2))
        except DecodeError:
            draw.rectangle([x + 2, y + 2, x + tile - 3, y + tile - 3], fill=_GREY)
        draw.text((x + 3, y + tile + 2), caption[: tile // 7], fill="black")
    target = Path(target)
    with atomic_path(target) as tmp:
        sheet.save(tmp, format="PNG")
    return target


def write_roc_plot(target: str | Path, curves: dict[str, tuple[Sequence[float], Sequence[float]]], aucs: dict[str, float | None]) -> Path:
    """One-vs-rest ROC curves, one line per class with its AUC in the legend; classes without a curve say n/a."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 5))
    for name, (fpr, tpr) in curves.items():
        axes.plot(fpr, tpr, label=f"{name} (AUC {aucs[name]:.3f})")
    for name, auc in aucs.items():
        if auc is None:
            axes.plot([], [], " ", label=f"{name} (AUC n/a)")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title="one-vs-rest ROC", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right", fontsize="small")
    target = Path(target)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return target
