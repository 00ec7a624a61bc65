"""Whether a collection is ink on paper (``choose_ink``): a sample of its pictures read before it is embedded.

The decision belongs to the collection, not to each picture (see
:mod:`pixclust.embedding.ink`), and it has to be taken before the network sees
any picture, so a seeded sample of the files is decoded and read as the network
would get them. A file that does not decode is passed over: embedding reports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixclust.embedding.decode import load_rgb
from pixclust.embedding.discover import walk_candidates
from pixclust.embedding.ink import READ_SIDE, collection_wants_ink
from pixclust.embedding.models import ModelSpec
from pixclust.embedding.transforms import DEFAULT_CROP_FRACTION, CentreCrop
from pixclust.errors import DecodeError

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


def choose_ink(
    source: str | Path,
    spec: ModelSpec,
    *,
    include_hidden: bool = False,
    max_pixels: int,
    random_state: int = 0,
) -> InkChoice:
    """Read a sample of the pictures under ``source`` as ``spec``'s network would get them, and decide."""
    kept = spec.crop_fraction or DEFAULT_CROP_FRACTION
    crop = CentreCrop(READ_SIZE, int(READ_SIZE / kept))
    files = walk_candidates(source, include_hidden=include_hidden)
    order = np.random.default_rng(random_state).permutation(len(files))[:MOST_TRIED]
    pictures = _pictures((files[i] for i in order), crop, max_pixels)
    return InkChoice(*collection_wants_ink(pictures))


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
