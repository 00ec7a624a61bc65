"""PNG files for a person to check results by eye: contact sheets (Pillow) and ROC curves (matplotlib).

These functions only write; what they show is computed elsewhere. Images
that cannot be read become grey tiles, so a sheet is always complete.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pixclust.atomic import atomic_path

if TYPE_CHECKING:
    from PIL import Image

# The folder, inside a command's output folder, that holds its contact sheets.
SHEETS_DIR = "sheets"
TILE = 128
CAPTION = 16
COLUMNS = 8
_GREY = (200, 200, 200)


def contact_sheet(
    images: Sequence[Image.Image | None],
    captions: Sequence[str] | None = None,
    *,
    tile: int = TILE,
    columns: int = COLUMNS,
) -> Image.Image:
    """A grid of images (aspect kept, centred on white; a grey tile for None), captions under them if given."""
    from PIL import Image, ImageDraw

    caption_height = CAPTION if captions is not None else 0
    labels = list(captions) if captions is not None else [""] * len(images)
    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption_height)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (image, caption) in enumerate(zip(images, labels, strict=True)):
        x, y = (n % columns) * tile, (n // columns) * (tile + caption_height)
        if image is None:
            draw.rectangle([x + 2, y + 2, x + tile - 3, y + tile - 3], fill=_GREY)
        else:
            shown = image.convert("RGB")
            shown.thumbnail((tile - 4, tile - 4))
            sheet.paste(shown, (x + (tile - shown.width) // 2, y + (tile - shown.height) // 2))
        if caption:
            draw.text((x + 3, y + tile + 2), caption[: tile // 7], fill="black")
    return sheet


def write_contact_sheet(
    target: str | Path,
    paths: Sequence[str],
    captions: Sequence[str] | None = None,
    *,
    tile: int = TILE,
    columns: int = COLUMNS,
) -> Path:
    """The images at ``paths`` as a :func:`contact_sheet` PNG; files that cannot be read become grey tiles."""
    sheet = contact_sheet([_decoded_or_none(path, tile) for path in paths], captions, tile=tile, columns=columns)
    target = Path(target)
    with atomic_path(target) as tmp:
        sheet.save(tmp, format="PNG")
    return target


def _decoded_or_none(path: str, tile: int) -> Image.Image | None:
    from pixclust.embedding.decode import load_rgb
    from pixclust.errors import DecodeError

    try:
        return load_rgb(path, draft_size=tile)
    except DecodeError:
        return None


def write_roc_plot(
    target: str | Path, curves: dict[str, tuple[Sequence[float], Sequence[float]]], aucs: dict[str, float | None]
) -> Path:
    """One-vs-rest ROC curves, one line per class with its AUC in the legend; classes without a curve say n/a."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 5))
    axes = figure.subplots()
    for name, (fpr, tpr) in curves.items():
        axes.plot(fpr, tpr, label=f"{name} (AUC {aucs[name]:.3f})")
    for name, auc in aucs.items():
        if auc is None:
            axes.plot([], [], " ", label=f"{name} (AUC n/a)")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set(
        xlabel="false positive rate", ylabel="true positive rate", title="one-vs-rest ROC", xlim=(0, 1), ylim=(0, 1.01)
    )
    axes.legend(loc="lower right", fontsize="small")
    target = Path(target)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return target
