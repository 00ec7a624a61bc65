"""Whether two images that look alike to the network are one picture: checks on the image files themselves.

The embedding finds candidates; it cannot be the judge. An ImageNet network
puts a photo and its greyscale or rotated copy further apart (cosine 0.68-0.71
at worst on bench/duplicates.py's photos) than two different tiles of the
Hubble deep field, so a cosine cut either misses copies or joins look-alikes.
Each candidate pair is therefore verified, in two steps (measured there):

1. **Structure**: a 64 x 64 grey thumbnail of each, blurred and standardised,
   at ten alignments: as they are, one cropped by 5-15% of each side (so a
   crop of a picture matches it: a *partial* copy), or both so cropped (a
   rotated copy's black corners fall away). The best-correlated alignment of
   each kind is compared by structural similarity (SSIM). Standardising makes
   brightness, contrast and gamma changes and greyscale copies no obstacle;
   the blur makes noise and JPEG blocks none. Images under 64 pixels a side
   need a closer match: enlarged for the comparison, they all look smooth.
2. **Local features**, for the pairs whose structure is not clear either way:
   ORB keypoints matched and fitted with a similarity transform by RANSAC
   (OpenCV); enough inliers mean the same scene, moved or scaled. Smooth images
   have too few keypoints for this, textured ones too many small changes for
   the first step, so each step covers the other's weakness.

**Colour** decides last: both thumbnails' chroma (the colour without its
brightness) must point the same way. A recoloured copy (hue turned) points the
other way and is a different picture; a brighter or greyscale one is not (an
image with no colour to speak of is never compared by colour).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pixclust.errors import DecodeError

# Side of the grey thumbnail kept for every candidate image; the alignments are cut from it.
SIGNATURE_SIDE = 96
# Side the alignments are compared at, after cropping.
COMPARE_SIDE = 64
# Share of each side cut off in the alignments tried: a crop of 10% of each side is found at 0.10.
CROP_STEPS = (0.05, 0.10, 0.15)
# Standardised thumbnails are kept as int16 in steps of 1/1024 of a standard deviation (within +-32):
# as small as float16, and turned into float32 several times faster. int8 in steps of 1/32 cut the
# stars of the Hubble tiles at 4 standard deviations and lost 2.4% of bench/duplicates.py's copies.
ALIGNMENT_STEPS = 1024
# Side of the colour thumbnail the chroma is compared on.
CHROMA_SIDE = 16
# Structural similarity at or above which two images are the same picture. On bench/duplicates.py's
# photos, pairs of different pictures (neighbouring tiles of one photo, the Hubble field's stars, 300
# Fashion-MNIST garments) reached 0.90 at the 99.9th percentile; copies had a median of 0.98.
SAME_STRUCTURE = 0.93
# ... unless either image is smaller than COMPARE_SIDE: drawn larger for the comparison, its blur makes
# different pictures alike. Of 20,000 candidate pairs of Fashion-MNIST's 28 x 28 garments (different
# pictures but for a rare true copy), 28 reached 0.93 and chained 47 plain trousers into one group; 1
# reached 0.98.
SAME_STRUCTURE_SMALL = 0.98
# ... and so does an image whose thumbnail a DETAIL_SIDE x DETAIL_SIDE copy holds but for LOW_DETAIL of
# its contrast: an enlarged small picture. Fashion-MNIST's garments drawn at 84 x 84 lose 0.07 (median)
# to 0.21, and at 0.93 and 40 keypoints 5,596 of 99,220 were put in groups (bench/duplicates_scale.py).
# Smooth photo tiles lose as little: at 0.12 the bench's recall fell from 0.931 to 0.892 (rotated
# copies of smooth tiles); at 0.08 to 0.922, with 3 pairs of 2,222 garments joined instead of 17 groups.
DETAIL_SIDE = 32
LOW_DETAIL = 0.08
# Below this the pair is different without looking at keypoints. On bench/duplicates.py's photos
# 0.70 found the same copies as 0.50 (recall 0.929 both; a copy under it was found through another
# copy of its picture) with fewer pairs sent to the slower keypoints (24% of candidates at 0.50);
# 0.80 found 62% of the rotated copies instead of 86%.
DIFFERENT_STRUCTURE = 0.70
# RANSAC inliers of matched ORB keypoints at or above which two images show one scene. Different
# photos reached 12 at the 99th percentile, copies had a median of 96; two different blocky 8 x 8
# digits drawn at 64 x 64 reached 34 (30 joined them; 40 finds the same copies on the photos).
SAME_GEOMETRY_INLIERS = 40
# A partial copy: the best alignment crops one image only, and beats every other by this much.
PARTIAL_MARGIN = 0.02
# ... or, by keypoints, the other image shows less than this share of one, and this much of the other:
PARTIAL_COVERAGE = 0.85
CONTAINED = 0.95
MAX_SCALE = 4.0
ORB_SIDE = 256
# An image's shorter side must have this many pixels for keypoints: ORB's 31-pixel patches and its
# pyramid need room (a 1 x 400 strip made OpenCV fail), and a 28 x 28 picture drawn at 256 x 256
# has corners of its blur, not of its content. Smaller images are judged by structure alone.
ORB_MIN_SIDE = 64
ORB_FEATURES = 500
ORB_RATIO = 0.8
ORB_REPROJECTION_PX = 4.0
# Root mean square chroma (0-1 scale) below which an image has no colour to compare (greyscale,
# or nearly so: the moon, a night sky).
GREY_CHROMA = 0.004
# Cosine between two images' chroma fields below which they are different pictures. Recoloured
# copies (hue turned half way) scored -0.72 at most; copies 0.14 at the 1st percentile.
SAME_COLOUR = 0.0
# SSIM's constants for standardised images (values mostly within +-4), and its window, as in Wang et al. 2004.
_SSIM_RANGE = 8.0
_SSIM_WINDOW = 7
# Pairs whose SSIM is computed together: their arrays stay in the processor's cache (measured 1.5 times
# faster than 256 at once, and than one at a time).
_SSIM_BLOCK = 16


@dataclass(frozen=True)
class Signature:
    """What verification keeps of one image: its grey alignments, ready to compare, and its chroma.

    ``alignments`` is (1 + len(CROP_STEPS)) x COMPARE_SIDE x COMPARE_SIDE int16: the
    whole image, then each crop of ``CROP_STEPS``, blurred and standardised, in steps of
    1 / ALIGNMENT_STEPS (32 KB an image: a search holds every candidate's).
    ``chroma`` is CHROMA_SIDE x CHROMA_SIDE x 2 float32 (B - Y, R - Y) on a 0-1 scale;
    ``shorter_side`` the decoded image's shorter side in pixels; ``detail`` what of the grey
    thumbnail a 32 x 32 copy of it cannot hold (root mean square, relative to its contrast).
    """

    alignments: np.ndarray
    chroma: np.ndarray
    shorter_side: int
    detail: float

    @property
    def is_small(self) -> bool:
        """Smaller than the comparison, or as plain as an image that was: enlarged for it, it looks smooth."""
        return self.shorter_side < COMPARE_SIDE or self.detail < LOW_DETAIL

    @property
    def has_colour(self) -> bool:
        return float(np.sqrt(np.mean(self.chroma**2))) >= GREY_CHROMA


@dataclass(frozen=True)
class Verdict:
    """The verification of one pair: same picture or not, and why.

    ``part`` says which image shows only part of the other: 0 (neither: a near
    copy), 1 (the first) or 2 (the second); ``structure`` the best structural similarity; ``inliers`` the
    keypoint inliers (None when keypoints were not needed); ``colour`` the chroma
    cosine (None when either image has no colour); ``recoloured`` is True when
    the structure matched but the colours did not; ``mirrored`` when the match
    is with the second image flipped left to right (looked for only on request).
    """

    same: bool
    part: int
    structure: float
    inliers: int | None
    colour: float | None
    recoloured: bool
    mirrored: bool = False

    @property
    def evidence(self) -> str:
        """The deciding figure in words, as duplicates.csv and the report show it."""
        if self.inliers is not None and self.inliers >= SAME_GEOMETRY_INLIERS and self.structure < SAME_STRUCTURE:
            words = f"{self.inliers} matching keypoints"
        else:
            words = f"structure {self.structure:.3f}"
        words += f", colour {self.colour:+.2f}" if self.colour is not None else ""
        return words + (", mirrored" if self.mirrored else "")

    @property
    def score(self) -> float:
        """One number to rank verified pairs by: the structural similarity, or the keypoints' share of 100."""
        return max(self.structure, min(1.0, (self.inliers or 0) / 100))


def signature(path: str | Path) -> Signature:
    """The image's verification signature; raises ``DecodeError`` when it cannot be read."""
    import cv2

    from pixclust.embedding.decode import load_rgb

    rgb = np.asarray(load_rgb(path, draft_size=2 * SIGNATURE_SIDE))
    grey = cv2.resize(
        cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (SIGNATURE_SIDE, SIGNATURE_SIDE), interpolation=cv2.INTER_AREA
    )
    small = cv2.resize(rgb, (CHROMA_SIDE, CHROMA_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    luma = small @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    chroma = np.stack([small[..., 2] - luma, small[..., 0] - luma], axis=-1)
    standardised = np.stack([_standardised(grey, crop) for crop in (0.0, *CROP_STEPS)])
    alignments = np.clip(np.rint(standardised * ALIGNMENT_STEPS), -32767, 32767).astype(np.int16)
    return Signature(alignments, chroma, int(min(rgb.shape[:2])), _detail(grey))


def _detail(grey: np.ndarray) -> float:
    """What of a grey thumbnail a 32 x 32 copy of it loses: root mean square, relative to its contrast."""
    import cv2

    side = len(grey)
    plain = cv2.resize(grey, (DETAIL_SIDE, DETAIL_SIDE), interpolation=cv2.INTER_AREA)
    back = cv2.resize(plain, (side, side), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    return float(np.sqrt(np.mean((grey.astype(np.float32) - back) ** 2)) / (grey.std() + 1e-6))


def _standardised(grey: np.ndarray, crop: float) -> np.ndarray:
    """The centre of a square grey thumbnail with ``crop`` of each side cut off, at COMPARE_SIDE, blurred, standardised."""
    import cv2

    margin = round(crop * len(grey))
    part = grey[margin : len(grey) - margin, margin : len(grey) - margin]
    small = cv2.resize(part, (COMPARE_SIDE, COMPARE_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    return (small - small.mean()) / (small.std() + 1e-6)


def structural_similarities(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean SSIM (Wang et al. 2004) of each pair of equal-sized float32 images (``x[i]``, ``y[i]``, stacks of
    P x H x W) over the 7 x 7 windows inside them."""
    return np.concatenate(
        [
            _block_ssim(x[start : start + _SSIM_BLOCK], y[start : start + _SSIM_BLOCK])
            for start in range(0, len(x), _SSIM_BLOCK)
        ]
    )


def _block_ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`structural_similarities` of a few pairs, their images filtered as one tall image each.

    A window centred inside one image reaches no row of its neighbour, and only such windows are
    averaged, so this is exactly the SSIM of each pair on its own.
    """
    import cv2

    count, height, width = x.shape
    window = (_SSIM_WINDOW, _SSIM_WINDOW)
    windows = _SSIM_WINDOW * _SSIM_WINDOW
    # Sample (co)variances, as scikit-image computes them by default.
    unbiased = windows / (windows - 1)
    tall_x, tall_y = x.reshape(count * height, width), y.reshape(count * height, width)
    # Windows centred nearer the edge than half their width reach outside the image: only the others count.
    inside = _SSIM_WINDOW // 2

    def local_mean(tall: np.ndarray) -> np.ndarray:
        return cv2.blur(tall, window).reshape(count, height, width)[:, inside:-inside, inside:-inside]

    mean_x, mean_y = local_mean(tall_x), local_mean(tall_y)
    var_x = unbiased * (local_mean(tall_x * tall_x) - mean_x * mean_x)
    var_y = unbiased * (local_mean(tall_y * tall_y) - mean_y * mean_y)
    cov = unbiased * (local_mean(tall_x * tall_y) - mean_x * mean_y)
    c1, c2 = (0.01 * _SSIM_RANGE) ** 2, (0.03 * _SSIM_RANGE) ** 2
    ssim = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2))
    return ssim.mean(axis=(1, 2))


# The alignments compared, as (crop of a, crop of b) positions in Signature.alignments: both whole or
# equally cropped; a whole against b's centre (a is the part); a's centre against b whole (b is the part).
_SAME_CROP = [(c, c) for c in range(1 + len(CROP_STEPS))]
_A_IS_PART = [(0, c) for c in range(1, 1 + len(CROP_STEPS))]
_B_IS_PART = [(c, 0) for c in range(1, 1 + len(CROP_STEPS))]
_ALIGNMENTS = np.array(_SAME_CROP + _A_IS_PART + _B_IS_PART)


def compare_structure(a: Sequence[Signature], b: Sequence[Signature]) -> tuple[np.ndarray, np.ndarray]:
    """For pairs of signatures: the best structural similarity over the alignments tried, and which image it
    shows to be part of the other (0: neither, 1: the one in ``a``, 2: the one in ``b``).

    Every alignment is ranked by plain correlation (for each pair, one small matrix product of its
    standardised images); SSIM, 20 times dearer, is computed only for the best-correlated alignment of
    each family: equal cuts, and one image whole against the other's centre.
    """
    stack_a = np.stack([signature.alignments for signature in a]).astype(np.float32) / ALIGNMENT_STEPS
    stack_b = np.stack([signature.alignments for signature in b]).astype(np.float32) / ALIGNMENT_STEPS
    count, crops, height, width = stack_a.shape
    flat_a, flat_b = stack_a.reshape(count, crops, -1), stack_b.reshape(count, crops, -1)
    # products[p, i, j]: the correlation of a's crop i with b's crop j.
    products = np.matmul(flat_a, flat_b.transpose(0, 2, 1)) / (height * width)
    correlation = products[:, _ALIGNMENTS[:, 0], _ALIGNMENTS[:, 1]]
    same_crop = correlation[:, : len(_SAME_CROP)].argmax(axis=1)
    one_cropped = len(_SAME_CROP) + correlation[:, len(_SAME_CROP) :].argmax(axis=1)
    pairs = np.arange(count)
    best = np.stack(
        [
            structural_similarities(stack_a[pairs, _ALIGNMENTS[chosen, 0]], stack_b[pairs, _ALIGNMENTS[chosen, 1]])
            for chosen in (same_crop, one_cropped)
        ],
        axis=1,
    )
    is_part = best[:, 1] > best[:, 0] + PARTIAL_MARGIN
    part = np.where(is_part, np.where(one_cropped < len(_SAME_CROP) + len(_A_IS_PART), 1, 2), 0)
    return best.max(axis=1), part


def _same_structure(a: Signature, b: Signature, structure: float) -> bool:
    """Whether a structural similarity makes two images one picture (a closer match for small images)."""
    small = a.is_small or b.is_small
    return structure >= (SAME_STRUCTURE_SMALL if small else SAME_STRUCTURE)


def mirrored(signature: Signature) -> Signature:
    """The signature of the same image flipped left to right (its centred crops flip onto themselves)."""
    return replace(signature, alignments=signature.alignments[..., ::-1], chroma=signature.chroma[:, ::-1])


def chroma_agreement(a: Signature, b: Signature) -> float | None:
    """Cosine between the two chroma fields (1: same colours, -1: opposite hues); None when either has no colour."""
    if not (a.has_colour and b.has_colour):
        return None
    dot = float(np.sum(a.chroma * b.chroma))
    return dot / float(np.linalg.norm(a.chroma) * np.linalg.norm(b.chroma))


def keypoints(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """ORB keypoint positions, descriptors (None when there are none) and the (width, height) they were found at."""
    import cv2

    from pixclust.embedding.decode import load_rgb

    image = load_rgb(path, draft_size=2 * ORB_SIDE)
    scale = ORB_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # The scaled size too: a panorama 64 pixels high and thousands wide would be a few pixels high at ORB_SIDE.
    if min(*image.size, *size) < ORB_MIN_SIDE:
        return np.zeros((0, 2), dtype=np.float32), None, size
    grey = cv2.resize(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY), size, interpolation=cv2.INTER_AREA)
    found, descriptors = cv2.ORB_create(nfeatures=ORB_FEATURES).detectAndCompute(grey, None)
    return np.array([point.pt for point in found], dtype=np.float32).reshape(-1, 2), descriptors, size


def match_keypoints(
    a: tuple[np.ndarray, np.ndarray | None, tuple[int, int]], b: tuple[np.ndarray, np.ndarray | None, tuple[int, int]]
) -> tuple[int, float, float]:
    """RANSAC inliers of a similarity transform between two images' keypoints, and the share of each image's
    area that the transform maps inside the other (1 and 1 when no transform was found)."""
    import cv2

    (points_a, descriptors_a, size_a), (points_b, descriptors_b, size_b) = a, b
    if descriptors_a is None or descriptors_b is None or len(descriptors_a) < 2 or len(descriptors_b) < 2:
        return 0, 1.0, 1.0
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(descriptors_a, descriptors_b, k=2)
    good = [pair[0] for pair in pairs if len(pair) == 2 and pair[0].distance < ORB_RATIO * pair[1].distance]
    if len(good) < 3:
        return 0, 1.0, 1.0
    source = points_a[[match.queryIdx for match in good]]
    target = points_b[[match.trainIdx for match in good]]
    transform, mask = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=ORB_REPROJECTION_PX
    )
    # A transform that shrinks or grows one image more than MAX_SCALE times matched noise, not a copy.
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2])))) if transform is not None else 0.0
    if mask is None or not 1 / MAX_SCALE <= scale <= MAX_SCALE:
        return 0, 1.0, 1.0
    return int(mask.sum()), _coverage(transform, size_a, size_b), _coverage(_inverse(transform), size_b, size_a)


# Keypoints of the images a worker process saw last, keyed by path, size and modification time (a file
# changed since is read again). A worker verifies many chunks of pairs, and an image is in many of them.
_KEYPOINTS_KEPT = 4096


@functools.lru_cache(maxsize=_KEYPOINTS_KEPT)
def _keypoints_of(path: str, size: int, mtime_ns: int) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    return keypoints(path)


def _cached_keypoints(path: str | Path) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    try:
        status = os.stat(path)
    except OSError as error:
        raise DecodeError("unreadable", f"{path}: {error.strerror or error}") from error
    return _keypoints_of(str(path), status.st_size, status.st_mtime_ns)


def _inverse(transform: np.ndarray) -> np.ndarray:
    square = np.vstack([transform, [0.0, 0.0, 1.0]])
    return np.linalg.inv(square)[:2]


def _coverage(transform: np.ndarray, size_from: tuple[int, int], size_to: tuple[int, int]) -> float:
    """Share of a 12 x 12 grid of cell centres over the first image that the transform puts inside the second."""
    centres = (np.arange(12) + 0.5) / 12
    xs, ys = np.meshgrid(centres * size_from[0], centres * size_from[1])
    mapped = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], axis=1) @ transform.T
    inside = (mapped[:, 0] >= 0) & (mapped[:, 0] <= size_to[0]) & (mapped[:, 1] >= 0) & (mapped[:, 1] <= size_to[1])
    return float(inside.mean())


def verify_pairs(
    pairs: Sequence[tuple[str | Path, str | Path, Signature, Signature]], *, colour: bool = True, mirror: bool = False
) -> list[Verdict]:
    """Whether each pair (path a, path b, their signatures) is one picture (see the module's docstring).

    The files are read again only for the keypoints of pairs whose structure is unclear; a file
    that can no longer be read then counts as different. With ``mirror``, a pair found different
    is compared again with the second image flipped left to right, by structure and colour.
    """
    if not pairs:
        return []
    verdicts = _verify_as_they_are(pairs, colour=colour)
    if not mirror:
        return verdicts
    again = [index for index, verdict in enumerate(verdicts) if not verdict.same and not verdict.recoloured]
    if again:
        flipped = [(pairs[i][0], pairs[i][1], pairs[i][2], mirrored(pairs[i][3])) for i in again]
        structures, _ = compare_structure([pair[2] for pair in flipped], [pair[3] for pair in flipped])
        for index, (_, _, a, b), structure in zip(again, flipped, structures.tolist(), strict=True):
            if _same_structure(a, b, structure):
                agreement = chroma_agreement(a, b) if colour else None
                recoloured = agreement is not None and agreement < SAME_COLOUR
                verdicts[index] = Verdict(not recoloured, 0, structure, None, agreement, recoloured, mirrored=True)
    return verdicts


def _verify_as_they_are(
    pairs: Sequence[tuple[str | Path, str | Path, Signature, Signature]], *, colour: bool
) -> list[Verdict]:
    structures, parts = compare_structure([pair[2] for pair in pairs], [pair[3] for pair in pairs])
    verdicts = []
    for (path_a, path_b, a, b), structure, part in zip(pairs, structures.tolist(), parts.tolist(), strict=True):
        inliers = None
        same = _same_structure(a, b, structure)
        # Keypoints of a plain image are corners of its blur, which two pictures of one kind share.
        if not same and structure >= DIFFERENT_STRUCTURE and not (a.is_small or b.is_small):
            try:
                found = [_cached_keypoints(path) for path in (path_a, path_b)]
            except DecodeError:
                found = None
            if found is not None:
                inliers, shown_of_a, shown_of_b = match_keypoints(*found)
                same = inliers >= SAME_GEOMETRY_INLIERS
                # A part lies wholly inside the whole, which it shows only some of; a rotated or shifted
                # copy loses a little of each to the other.
                contained = max(shown_of_a, shown_of_b) >= CONTAINED
                partial = contained and min(shown_of_a, shown_of_b) < PARTIAL_COVERAGE
                part = (2 if shown_of_a < shown_of_b else 1) if partial else 0
        agreement = chroma_agreement(a, b) if colour else None
        recoloured = same and agreement is not None and agreement < SAME_COLOUR
        verdicts.append(Verdict(same and not recoloured, part, structure, inliers, agreement, recoloured))
    return verdicts
