"""Tests for the scene generator's appearance options (class colours, background, palette, saturation), checked against
colour facts computed independently (colorsys hues, channel spreads)."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest

from data.demo_scenes import (
    NOISE_AMPLITUDE,
    SceneConfig,
    generate_scenes,
    load_fashion_mnist,
    palette_colours,
    render_scene,
    scene_rng,
    split_source_pools,
)


@pytest.fixture(scope="module")
def fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, labels = load_fashion_mnist()
    train_pool, _ = split_source_pools(len(images), 0, 0.2)
    return images, labels, train_pool


def _scenes(fashion, config: SceneConfig, count: int = 12):
    images, labels, pool = fashion
    return [render_scene(scene_rng(0, "train", i), images, labels, pool, config) for i in range(count)]


def _hue(rgb: np.ndarray) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb, dtype=np.float64) / 255.0))[0]


@pytest.mark.parametrize("num", [1, 3, 8, 12])
def test_palette_colours_are_evenly_spaced_hues(num: int) -> None:
    colours = palette_colours(num)
    assert colours.shape == (num, 3)
    for index, colour in enumerate(colours):
        hue, saturation, value = colorsys.rgb_to_hsv(*(colour / 255.0))
        assert hue == pytest.approx(index / num, abs=1e-9)
        assert (saturation, value) == pytest.approx((0.8, 1.0))


def test_class_colours_follow_the_class(fashion) -> None:
    # Class k: hue (k mod 5) / 5 within the jitter; below class 5 the colour of HSV (hue, 0.8, 1), from class 5 that
    # colour moved towards its grey by 0.45: its chroma (max - min) over its mean is 0.45 of the full colour's
    # (a ratio the item's shading, which scales all channels alike, leaves unchanged).
    jitter = SceneConfig().class_hue_jitter
    seen: set[int] = set()
    for scene in _scenes(fashion, SceneConfig(size=64, min_items=3, max_items=4), count=30):
        for instance_id, label in enumerate(scene.labels, start=1):
            pixels = scene.image[scene.instance == instance_id].astype(np.float64)
            brightest = pixels[pixels.sum(axis=1).argmax()]
            hue = _hue(brightest)
            offset = abs((hue - (label % 5) / 5 + 0.5) % 1.0 - 0.5) * 5  # in units of the hue spacing
            assert offset <= jitter + 0.03, (label, hue)
            full = np.array(colorsys.hsv_to_rgb(hue, 0.8, 1.0))
            expected = np.ptp(full) / full.mean() * (1.0 if label < 5 else 0.45)
            assert np.ptp(brightest) / brightest.mean() == pytest.approx(expected, rel=0.08), label
            seen.add(label)
    assert seen == set(range(10))


def test_class_colours_of_one_class_differ_only_within_the_jitter(fashion) -> None:
    still = _scenes(fashion, SceneConfig(size=64, class_hue_jitter=0.0), count=20)
    for scene in still:
        for instance_id, label in enumerate(scene.labels, start=1):
            pixels = scene.image[scene.instance == instance_id].astype(np.float64)
            hue = _hue(pixels[pixels.sum(axis=1).argmax()])
            assert abs((hue - (label % 5) / 5 + 0.5) % 1.0 - 0.5) < 0.01


def test_palette_gives_each_item_of_a_scene_its_own_hue(fashion) -> None:
    hues = np.array([_hue(c) for c in palette_colours(8)])
    seen: set[int] = set()
    for scene in _scenes(fashion, SceneConfig(size=64, class_colours=False, palette=8, min_items=3, max_items=4)):
        picked = []
        for instance_id in range(1, len(scene.labels) + 1):
            pixels = scene.image[scene.instance == instance_id].astype(np.float64)
            brightest = pixels[pixels.sum(axis=1).argmax()]  # the least rounded pixel of the item
            distance = np.abs((hues - _hue(brightest) + 0.5) % 1.0 - 0.5)  # hue is circular
            assert distance.min() < 0.02, f"item hue {_hue(brightest):.3f} is none of the palette's"
            picked.append(int(distance.argmin()))
        assert len(set(picked)) == len(picked), f"two items of one scene share a hue: {picked}"
        seen.update(picked)
    assert len(seen) >= 6  # the scenes use most of the palette, not one favourite hue


def test_tint_saturation_zero_gives_grey_items(fashion) -> None:
    for config in (
        SceneConfig(size=64, tint_saturation=0.0),
        SceneConfig(size=64, class_colours=False, palette=8, tint_saturation=0.0),
        SceneConfig(size=64, class_colours=False, palette=0, tint_saturation=0.0),
    ):
        for scene in _scenes(fashion, config, count=6):
            items = scene.image[scene.instance > 0].astype(np.int64)
            assert items.size and np.all(items.max(axis=1) == items.min(axis=1))


def test_background_saturation_zero_gives_grey_background(fashion) -> None:
    def channel_spread(config: SceneConfig) -> np.ndarray:
        backgrounds = np.stack([s.background for s in _scenes(fashion, config, count=8)]).astype(np.int64)
        return backgrounds.max(axis=-1) - backgrounds.min(axis=-1)

    grey = channel_spread(SceneConfig(size=64, background_saturation=0.0, background_range=(0.0, 255.0)))
    # Only the per-channel noise (uniform in +-NOISE_AMPLITUDE, then rounded) separates the channels.
    assert grey.max() <= 2 * NOISE_AMPLITUDE + 1
    coloured = channel_spread(SceneConfig(size=64, background_saturation=1.0, background_range=(0.0, 255.0)))
    assert coloured.mean() > 4 * grey.mean()


def test_flat_background_and_colour_range(fashion) -> None:
    config = SceneConfig(
        size=64, gradient=0.0, texture_amplitude=0.0, background_range=(100.0, 120.0), background_saturation=1.0
    )
    for scene in _scenes(fashion, config, count=6):
        background = scene.background.astype(np.int64)
        spread = background.max(axis=(0, 1)) - background.min(axis=(0, 1))
        assert np.all(spread <= 2 * NOISE_AMPLITUDE + 1)  # one colour plus noise
        assert background.min() >= 100 - NOISE_AMPLITUDE - 1 and background.max() <= 120 + NOISE_AMPLITUDE + 1


def test_texture_amplitude_and_cells_shape_the_background(fashion) -> None:
    def roughness(config: SceneConfig) -> float:
        backgrounds = np.stack([s.background for s in _scenes(fashion, config, count=6)]).astype(np.float64)
        return float(np.abs(np.diff(backgrounds.mean(axis=-1), axis=2)).mean())  # neighbour differences

    smooth = roughness(SceneConfig(size=64, gradient=0.0, texture_amplitude=40.0, texture_cells=(2, 2)))
    fine = roughness(SceneConfig(size=64, gradient=0.0, texture_amplitude=40.0, texture_cells=(24, 24)))
    none = roughness(SceneConfig(size=64, gradient=0.0, texture_amplitude=0.0))
    assert none < smooth < fine


@pytest.mark.parametrize(
    "field, value",
    [
        ("palette", -1),
        ("class_hue_jitter", 0.5),
        ("tint_saturation", 1.5),
        ("background_saturation", -0.1),
        ("gradient", 2.0),
        ("texture_amplitude", -1.0),
        ("texture_cells", (5, 2)),
        ("background_range", (200.0, 100.0)),
    ],
)
def test_bad_options_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SceneConfig(size=64, **{field: value})


def test_options_are_recorded_and_reused(tmp_path: Path) -> None:
    root = tmp_path / "scenes"
    options = {"class_colours": False, "palette": 4, "texture_cells": (2, 3), "background_range": (90.0, 150.0)}
    first = generate_scenes(root, num_train=3, num_eval=2, workers=1, **options)
    assert first.generated
    params = json.loads((root / "meta.json").read_text())["params"]
    assert params["palette"] == 4 and params["texture_cells"] == [2, 3] and params["background_range"] == [90.0, 150.0]
    assert not generate_scenes(root, num_train=3, num_eval=2, workers=1, **options).generated  # same options
    assert generate_scenes(root, num_train=3, num_eval=2, workers=1, **{**options, "palette": 5}).generated
