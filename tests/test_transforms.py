import io
import random

import numpy as np
import pytest
from PIL import Image

from data.transforms import Box, TwoViewCrop, draft_reduction, intersection_in_frame, sample_crop


def _coordinate_image(width: int, height: int) -> Image.Image:
    """R = x / 2, G = y / 2 (the image spans 0..510), B = 0: every pixel tells where it came from."""
    xs = np.broadcast_to(np.arange(width) // 2, (height, width))
    ys = np.broadcast_to((np.arange(height) // 2)[:, None], (height, width))
    return Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8))


def _image_point(crop: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
    """Mean (R, G) inside the normalised box of a crop: the image location the box covers, /2."""
    size = crop.shape[0]
    x1, y1, x2, y2 = (round(v * size) for v in box)
    return crop[y1:y2, x1:x2, :2].reshape(-1, 2).mean(0)


def test_both_views_boxes_cover_the_same_image_region():
    image = _coordinate_image(500, 400)
    transform = TwoViewCrop(size=64, min_scale=0.3)
    checked = 0
    for seed in range(40):
        views = transform(image, random.Random(seed))
        b1, b2 = views.boxes
        if b1[2] - b1[0] < 0.25 or b1[3] - b1[1] < 0.25 or b2[2] - b2[0] < 0.25 or b2[3] - b2[1] < 0.25:
            continue  # too small an overlap to average over
        # Flipped crops hold mirrored pixels and mirrored boxes: the box still points at the same content.
        p1, p2 = _image_point(views.crops[0], b1), _image_point(views.crops[1], b2)
        np.testing.assert_allclose(p1, p2, atol=4.0)
        checked += 1
    assert checked >= 10


def test_flip_flags_mirror_the_crop():
    image = _coordinate_image(300, 300)
    transform = TwoViewCrop(size=32, min_scale=0.5)
    seen = set()
    for seed in range(20):
        views = transform(image, random.Random(seed))
        for crop, flipped in zip(views.crops, views.flipped, strict=True):
            red = crop[16, :, 0].astype(int)
            assert (red[-1] < red[0]) == flipped
            seen.add(flipped)
    assert seen == {True, False}


def test_intersection_box_in_each_frame():
    a, b = Box(0, 0, 100, 50), Box(50, 25, 150, 125)
    assert intersection_in_frame(a, b) == (0.5, 0.5, 1.0, 1.0)
    assert intersection_in_frame(b, a) == (0.0, 0.0, 0.5, 0.25)


def test_crop_area_and_aspect_follow_the_distribution():
    rng = random.Random(0)
    areas, ratios = [], []
    for _ in range(3000):
        box = sample_crop(rng, 640, 480, (0.08, 1.0))
        areas.append(box.width * box.height / (640 * 480))
        ratios.append(box.width / box.height)
        assert 0 <= box.x1 < box.x2 <= 640 and 0 <= box.y1 < box.y2 <= 480
    assert min(areas) == pytest.approx(0.08, abs=0.01)
    assert min(ratios) >= 3 / 4 - 0.02 and max(ratios) <= 4 / 3 + 0.02
    assert np.median(np.log(ratios)) == pytest.approx(0.0, abs=0.05)


def test_draft_decoding_is_only_used_when_no_detail_is_lost():
    assert draft_reduction([Box(0, 0, 300, 300), Box(0, 0, 500, 480)], 224) == 1
    assert draft_reduction([Box(0, 0, 500, 460), Box(0, 0, 900, 900)], 224) == 2
    assert draft_reduction([Box(0, 0, 4000, 4000)] * 2, 224) == 8


def test_jpeg_views_match_full_decoding():
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (12, 16, 3)), np.ones((80, 80, 1))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, format="JPEG", quality=95)
    transform = TwoViewCrop(size=64, min_scale=0.9)
    drafted = transform(Image.open(io.BytesIO(buffer.getvalue())), random.Random(3))
    full = transform(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), random.Random(3))
    assert drafted.boxes == full.boxes
    diff = np.abs(drafted.crops[0].astype(int) - full.crops[0].astype(int))
    assert diff.mean() < 3
