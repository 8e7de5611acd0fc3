"""Geometry of SlotCon's two views: overlap-conditioned random resized crops, flips, and the
intersection box of the two crops expressed in each view's own normalised frame.

Decoding and cropping happen here, on the CPU workers, and produce uint8 HWC arrays; the photometric
part of the augmentation (colour jitter, grayscale, blur, solarize, normalisation) runs batched on the
training device (``data/photometric.py``). Every random draw comes from a ``random.Random`` seeded per
sample, so a sample's views depend only on (seed, epoch, position), not on which worker made them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from data.images import to_rgb

# PIL reduces JPEG decoding by at most 1/8.
_MAX_DRAFT_REDUCTION = 8


@dataclass(frozen=True)
class Box:
    """A crop in image pixels: left, top, right, bottom (right/bottom exclusive)."""

    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    def overlap_area(self, other: Box) -> float:
        w = min(self.x2, other.x2) - max(self.x1, other.x1)
        h = min(self.y2, other.y2) - max(self.y1, other.y1)
        return max(w, 0.0) * max(h, 0.0)


def _try_crop(
    rng: random.Random, width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[Box, float] | None:
    """One RandomResizedCrop draw: (box, target area) if it fits the image, else None."""
    target_area = width * height * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w = round(math.sqrt(target_area * aspect))
    h = round(math.sqrt(target_area / aspect))
    if not (0 < w <= width and 0 < h <= height):
        return None
    top = rng.randint(0, height - h)
    left = rng.randint(0, width - w)
    return Box(left, top, left + w, top + h), target_area


def _central_crop(width: int, height: int, ratio: tuple[float, float]) -> Box:
    """The fallback crop: the whole image, trimmed to the allowed aspect-ratio range."""
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return Box(left, top, left + w, top + h)


def sample_crop(
    rng: random.Random,
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> Box:
    """RandomResizedCrop's parameters: area fraction ~ U(scale), log-uniform aspect, 10 tries."""
    for _ in range(attempts):
        found = _try_crop(rng, width, height, scale, ratio)
        if found is not None:
            return found[0]
    return _central_crop(width, height, ratio)


def sample_overlapping_crop(
    rng: random.Random,
    first: Box,
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    min_overlap: float = 0.01,
    attempts: int = 10,
) -> Box:
    """A second crop whose overlap with ``first`` is >= min_overlap x its target area (10 tries).

    If no draw qualifies, an unconditioned crop is returned; it may not overlap ``first`` at all.
    """
    for _ in range(attempts):
        found = _try_crop(rng, width, height, scale, ratio)
        if found is not None and found[0].overlap_area(first) >= min_overlap * found[1]:
            return found[0]
    return sample_crop(rng, width, height, scale, ratio, attempts)


def intersection_in_frame(view: Box, other: Box) -> tuple[float, float, float, float]:
    """The intersection of ``view`` and ``other`` in ``view``'s normalised frame.

    Without overlap the box comes out inverted (x2 < x1 or y2 < y1), which the loss treats as empty.
    """
    x1, y1 = max(view.x1, other.x1), max(view.y1, other.y1)
    x2, y2 = min(view.x2, other.x2), min(view.y2, other.y2)
    return (
        (x1 - view.x1) / view.width,
        (y1 - view.y1) / view.height,
        (x2 - view.x1) / view.width,
        (y2 - view.y1) / view.height,
    )


def mirror_box(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """A normalised box after a horizontal flip of its frame."""
    x1, y1, x2, y2 = box
    return (1.0 - x2, y1, 1.0 - x1, y2)


def draft_reduction(crops: list[Box], size: int) -> int:
    """The largest power-of-two JPEG decode reduction that still leaves every crop >= size pixels."""
    smallest_side = min(min(c.width, c.height) for c in crops)
    reduction = 1
    while reduction < _MAX_DRAFT_REDUCTION and smallest_side / (2 * reduction) >= size:
        reduction *= 2
    return reduction


@dataclass
class TwoViews:
    """Both views of one image: uint8 HWC crops, normalised overlap boxes, flip flags."""

    crops: tuple[np.ndarray, np.ndarray]
    boxes: tuple[tuple[float, ...], tuple[float, ...]]
    flipped: tuple[bool, bool]


class TwoViewCrop:
    """Sample two overlapping crops of a PIL image, resize them (bicubic) and flip each with p=0.5.

    Give it the image opened lazily (``data.images.open_image``): a JPEG is then decoded at a reduced size
    (PIL ``draft``) when both crops are large enough that no detail reaching the ``size`` x ``size`` output
    is lost. Decoding and the conversion to RGB are ``data.images.to_rgb``'s (it raises
    ``UnreadableImageError`` for a file that cannot be decoded).
    """

    def __init__(self, size: int = 224, min_scale: float = 0.08, flip_prob: float = 0.5) -> None:
        self.size = size
        self.scale = (min_scale, 1.0)
        self.flip_prob = flip_prob

    def __call__(self, image: Image.Image, rng: random.Random) -> TwoViews:
        width, height = image.size
        first = sample_crop(rng, width, height, self.scale)
        second = sample_overlapping_crop(rng, first, width, height, self.scale)
        crops_in_image = (first, second)

        reduction = draft_reduction(list(crops_in_image), self.size) if image.format == "JPEG" else 1
        if reduction > 1:
            image.draft("RGB", (math.ceil(width / reduction), math.ceil(height / reduction)))
        image = to_rgb(image)
        sx, sy = image.size[0] / width, image.size[1] / height

        crops, boxes, flipped = [], [], []
        for view, other in ((first, second), (second, first)):
            box = (view.x1 * sx, view.y1 * sy, view.x2 * sx, view.y2 * sy)
            crop = image.resize((self.size, self.size), Image.Resampling.BICUBIC, box=box)
            overlap = intersection_in_frame(view, other)
            flip = rng.random() < self.flip_prob
            if flip:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                overlap = mirror_box(overlap)
            crops.append(np.array(crop))  # a writable copy, so torch can own it
            boxes.append(overlap)
            flipped.append(flip)
        return TwoViews(tuple(crops), tuple(boxes), tuple(flipped))
