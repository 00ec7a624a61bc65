"""How an image becomes a network's input (``Preprocessing``), and the per-image transforms decode workers run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pixclust.embedding.hog import HOG_SIDE, hog_descriptor
from pixclust.embedding.ink import INK_FORM, normalise_ink
from pixclust.embedding.outline import outline_mask

# JPEGs decode by DCT scaling (1/2, 1/4, 1/8) to the smallest size whose shorter side is at
# least this share of the resize side, so the crop may be upscaled by up to 1/0.9. A 640x480
# photo then decodes at 320x240, which made decode and transform 2.4x faster (4.1 -> 1.7 ms),
# with embeddings at mean cosine 0.998 (lowest 0.993) to full-size decoding, as close as
# bf16 inference is to fp32.
DRAFT_SHORTFALL = 0.9
# The share of the resized picture a network sees where its weights record no crop_pct (timm's default).
DEFAULT_CROP_FRACTION = 0.875


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input; recorded with every run."""

    input_size: int
    resize_to: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: str
    # Pictures of ink on plain paper are turned to grey ink on white (pixclust.embedding.ink).
    ink: bool = False

    def to_record(self) -> dict[str, Any]:
        """The preprocessing as records keep it; ``ink`` only where set, so records made before it keep their ids.

        ``ink`` is recorded as the form ink is turned into, so that a change of form changes the model id
        and vectors of the old form are never reused.
        """
        fields = asdict(self)
        if self.ink:
            fields["ink"] = INK_FORM
        else:
            del fields["ink"]
        return fields

    @property
    def centre_crop(self) -> CentreCrop:
        return CentreCrop(self.input_size, self.resize_to, self.interpolation)


@dataclass(frozen=True)
class CentreCrop:
    """The square of a picture a network sees, as ``input_size`` x ``input_size`` x 3 uint8 pixels."""

    input_size: int
    resize_to: int
    interpolation: str = "bicubic"

    def __call__(self, image: Any) -> np.ndarray:
        return self.resize(image, self.box(*image.size))

    def resize(self, image: Any, box: tuple[float, float, float, float]) -> np.ndarray:
        """``box`` of ``image`` (in its pixels) at the network's side."""
        from PIL import Image

        resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}.get(
            self.interpolation, Image.Resampling.BICUBIC
        )
        return np.asarray(image.resize((self.input_size, self.input_size), resample, box=box), dtype=np.uint8)

    def box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The central square that timm's resize-then-center-crop keeps, in the original's pixels.

        Cropping it from the original and resizing in one step equals timm's two steps,
        without a huge intermediate for 1x10000 images.
        """
        side = min(width, height) * self.input_size / self.resize_to
        return ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)

    @property
    def draft_size(self) -> int:
        """The shorter side a JPEG may be decoded down to (DCT scaling) before this crop is taken."""
        return math.floor(self.resize_to * DRAFT_SHORTFALL)


class ImageTransform:
    """Picklable PIL image to uint8 input_size x input_size x 3 pixels, run inside decode workers.

    Scaling to the weights' mean and std happens inside the network
    (``network_input.ImageNetwork``), so workers pass bytes, not floats.
    """

    def __init__(self, prep: Preprocessing) -> None:
        self.prep = prep
        self.crop = prep.centre_crop

    def __call__(self, image: Any) -> np.ndarray:
        pixels = self.crop.resize(image, self.crop_box(*image.size))
        return normalise_ink(pixels) if self.prep.ink else pixels

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of the picture the network sees (training's augmentation draws its own)."""
        return self.crop.box(width, height)


class HogTransform:
    """HOG descriptor of the 128x128 grey image (the seeds' hand-made feature).

    With ``ink``, a picture of ink on paper is first turned as the network's input is: the grey of a
    coloured picture can leave ink and paper a few levels apart, and HOG then sees noise. With
    ``outline``, the HOG of the picture's outline (``outline.outline_mask``) follows HOG's own numbers.
    """

    side = HOG_SIDE

    def __init__(self, ink: bool = False, outline: bool = False) -> None:
        self.ink = ink
        self.outline = outline

    def __call__(self, image: Any) -> np.ndarray:
        from PIL import Image

        small = None
        if self.ink or self.outline:
            small = np.asarray(image.convert("RGB").resize((self.side, self.side), Image.Resampling.BILINEAR))
        if self.ink:
            turned = normalise_ink(small)
            # normalise_ink hands back the very array where the picture is not ink on paper.
            grey = np.asarray(Image.fromarray(small).convert("L")) if turned is small else turned[..., 0]
            small = turned
        else:
            grey = np.asarray(image.convert("L").resize((self.side, self.side), Image.Resampling.BILINEAR))
        if not self.outline:
            return hog_descriptor(grey)
        return np.concatenate([hog_descriptor(grey), hog_descriptor(outline_mask(small))])


class PixelTransform:
    """The image itself, shrunk to 32x32 RGB and scaled to [0, 1]."""

    side = 32

    def __call__(self, image: Any) -> np.ndarray:
        from PIL import Image

        small = image.resize((self.side, self.side), Image.Resampling.BOX)
        return (np.asarray(small, dtype=np.float32) / 255.0).reshape(-1)


def network_preprocessing(
    network: Any, input_size: int | None = None, *, crop_fraction: float | None = None, ink: bool = False
) -> Preprocessing:
    """The eval preprocessing timm records for the network's weights.

    ``input_size`` overrides the side, keeping the crop ratio; ``crop_fraction`` overrides that ratio;
    ``ink`` turns pictures of ink on paper to grey ink on white.
    """
    import timm.data

    cfg = timm.data.resolve_model_data_config(network)
    size = int(input_size or cfg["input_size"][-1])
    kept = float(crop_fraction or cfg.get("crop_pct", DEFAULT_CROP_FRACTION))
    return Preprocessing(
        input_size=size,
        resize_to=int(size / kept),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        crop="center",
        ink=ink,
    )
