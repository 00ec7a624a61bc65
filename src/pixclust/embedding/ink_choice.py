"""Whether a collection is ink on paper (``choose_ink``): a sample of its pictures read before it is embedded.

The decision belongs to the collection, not to each picture (see
:mod:`pixclust.embedding.ink`), and it has to be taken before the network sees
any picture, so a seeded sample of the files is decoded and read as the network
would get them. A file that does not decode is passed over: embedding reports it.
``network_model`` turns the ``ink`` setting ('pixclust cluster' and 'pixclust
embed-shards' take it alike) into the model a run embeds with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from pixclust.embedding.decode import load_rgb
from pixclust.embedding.ink import READ_SIDE, collection_is_ink, collection_wants_ink
from pixclust.embedding.models import INK_SUFFIX, ModelSpec, resolve_model
from pixclust.embedding.transforms import DEFAULT_CROP_FRACTION, CentreCrop
from pixclust.errors import DecodeError, UsageError

# auto: where a sample of the collection is ink on paper; on: every picture that is; off: none.
INK_CHOICES = ("auto", "on", "off")

SAMPLE_SIZE = 256
# Files tried before the sample is taken as it stands (most of a folder that is not images).
MOST_TRIED = 4 * SAMPLE_SIZE
# The registry's crop decides what of a picture is kept; read_ink reads about READ_SIDE pixels a side of
# the network's input, so the sample is read at that size directly (a quarter of the time at 224).
READ_SIZE = READ_SIDE


@dataclass(frozen=True)
class InkChoice:
    """The decision, and the counts it rests on: pictures read, ink on paper, and of those on a paper apart."""

    wanted: bool
    read: int
    ink: int
    papers_apart: int

    def to_dict(self) -> dict[str, int | bool]:
        return {"wanted": self.wanted, "read": self.read, "ink_on_paper": self.ink, "papers_apart": self.papers_apart}

    @property
    def collection_is_ink(self) -> bool:
        """Whether the collection is ink on paper, on one paper or many (``wanted`` asks for many)."""
        return collection_is_ink(self.read, self.ink)


def choose_ink(files: Sequence[str], spec: ModelSpec, *, max_pixels: int, random_state: int = 0) -> InkChoice:
    """Read a seeded sample of ``files`` (the collection's, walked) as ``spec``'s network would get them, and decide."""
    kept = spec.crop_fraction or DEFAULT_CROP_FRACTION
    crop = CentreCrop(READ_SIZE, int(READ_SIZE / kept))
    order = np.random.default_rng(random_state).permutation(len(files))[:MOST_TRIED]
    pictures = _pictures((files[i] for i in order), crop, max_pixels)
    return InkChoice(*collection_wants_ink(pictures))


def check_ink(model: str, ink: str) -> None:
    """Refuse an ``ink`` setting that is not known, ``"off"`` beside a model that turns ink by its name, or
    ``"on"`` beside a model that is not a network."""
    if ink not in INK_CHOICES:
        raise UsageError(f"ink={ink!r} is not known; choose one of {', '.join(INK_CHOICES)}")
    if model.endswith(INK_SUFFIX) and ink == "off":
        raise UsageError(f"model={model!r} turns ink on paper to grey, and ink='off' asks not to; drop one")
    if ink == "on" and resolve_model(model).family != "timm":
        raise UsageError(f"model={model!r} is not a network, so ink='on' has no input to turn; drop ink")


def network_model(
    model: str, ink: str, files: Callable[[], Sequence[str]], *, max_pixels: int, random_state: int = 0
) -> tuple[str, InkChoice | None]:
    """The model a run embeds with, and the sample that chose it where one did (``ink`` is "auto").

    ``model``, or where the collection is ink on paper (``ink="on"``, or a
    sample of ``files()`` says so), the same network fed it as grey ink on white.
    ``files`` is called only when a sample is wanted: walking a folder has a cost.
    """
    spec = resolve_model(model)
    if spec.family != "timm" or spec.ink or ink == "off":
        return model, None
    if ink == "on":
        return spec.name + INK_SUFFIX, None
    choice = choose_ink(files(), spec, max_pixels=max_pixels, random_state=random_state)
    return (spec.name + INK_SUFFIX if choice.wanted else model), choice


def _pictures(files: Iterator[str], crop: CentreCrop, max_pixels: int) -> Iterator[np.ndarray]:
    """The first ``SAMPLE_SIZE`` of ``files`` that decode, cropped as the network's inputs are."""
    taken = 0
    for path in files:
        if taken == SAMPLE_SIZE:
            return
        try:
            image = load_rgb(path, max_pixels=max_pixels, draft_size=crop.draft_size)
        except (DecodeError, OSError):
            continue
        taken += 1
        yield crop(image)


def outline_wanted(model: str, choice: InkChoice | None) -> bool:
    """Whether the HOG view beside vectors of ``model`` holds each picture's outline too (``embedding.outline``).

    Where the collection is ink on paper: as the sample that chose ``model`` read it (``choice``), or as the
    run was told (a network fed ink as grey). Without a sample (``ink`` "off", or a network not chosen by one),
    HOG stays alone.
    """
    return model.endswith(INK_SUFFIX) or (choice is not None and choice.collection_is_ink)
