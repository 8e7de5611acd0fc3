"""The colour-free evaluation sets (README, The demo data): the class-coloured scenes' layouts, items and maps, with
each item coloured as a class drawn independently of its own (``tint_class="random"``), and a greyscale copy."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import chi2_contingency

from data.demo_scenes import (
    NUM_CLASSES,
    SceneConfig,
    generate_scenes,
    load_fashion_mnist,
    render_scene,
    scene_rng,
    split_source_pools,
    tint_rng,
)

OWN, RANDOM, GREY = (
    SceneConfig(size=64),
    SceneConfig(size=64, tint_class="random"),
    SceneConfig(size=64, tint_class="random", greyscale=True),
)


@pytest.fixture(scope="module")
def fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, labels = load_fashion_mnist()
    _, eval_pool = split_source_pools(len(images), 0, 0.2)
    return images, labels, eval_pool


def _render(fashion, config: SceneConfig, index: int, labels: np.ndarray | None = None):
    images, own_labels, pool = fashion
    tints = tint_rng(0, "eval", index) if config.tint_class == "random" else None
    return render_scene(
        scene_rng(0, "eval", index), images, own_labels if labels is None else labels, pool, config, tints
    )


def test_folders_share_layouts_and_maps(tmp_path: Path) -> None:
    roots = {}
    for name, config in (("own", OWN), ("random", RANDOM), ("grey", GREY)):
        roots[name] = tmp_path / name
        generate_scenes(roots[name], config, num_train=4, num_eval=12, seed=0, workers=1)
    for split in ("train", "eval"):
        names = sorted(p.name for p in (roots["own"] / split / "images").glob("*.png"))
        records = {k: json.loads((root / split / "scenes.json").read_text()) for k, root in roots.items()}
        for k in ("random", "grey"):
            assert [(r["name"], r["source_indices"], r["labels"]) for r in records[k]] == [
                (r["name"], r["source_indices"], r["labels"]) for r in records["own"]
            ]
        assert records["random"] == records["grey"] and "tint_classes" not in records["own"][0]
        for name in names:
            for kind in ("semantic", "instance"):  # the exact same files
                own = (roots["own"] / split / kind / name).read_bytes()
                assert (roots["random"] / split / kind / name).read_bytes() == own
                assert (roots["grey"] / split / kind / name).read_bytes() == own
            own, recoloured, grey = (np.array(Image.open(roots[k] / split / "images" / name)) for k in roots)
            background = np.array(Image.open(roots["own"] / split / "instance" / name)) == 0
            assert np.array_equal(own[background], recoloured[background])  # same canvas, pixel for pixel
            luma = np.array(Image.fromarray(recoloured).convert("L"))
            assert all(np.array_equal(grey[..., c], luma) for c in range(3))  # the random set, grey


def test_tints_never_look_at_the_class(fashion) -> None:
    # Exact construction: relabelling every item (the labels array the generator reads) changes no tint class, and
    # with "own" the tint class is the label.
    _, labels, _ = fashion
    relabelled = (labels + 3) % NUM_CLASSES
    for index in range(40):
        scene, other = _render(fashion, RANDOM, index), _render(fashion, RANDOM, index, relabelled)
        assert scene.tint_classes == other.tint_classes and scene.labels != other.labels
        assert _render(fashion, OWN, index).tint_classes == scene.labels


def test_tint_classes_are_independent_of_the_class(fashion) -> None:
    table = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    for index in range(400):
        scene = _render(fashion, RANDOM, index)
        for label, tint in zip(scene.labels, scene.tint_classes, strict=True):
            table[label, tint] += 1
    assert table.sum() > 1000 and table.diagonal().sum() < 0.2 * table.sum()
    assert chi2_contingency(table).pvalue > 1e-3  # independence is not rejected (with class colours, p = 0)


def test_items_take_the_drawn_class_colour(fashion) -> None:
    # The brightest pixel of an item has the hue of its tint class (within the jitter), not of its own class.
    jitter = RANDOM.class_hue_jitter
    for index in range(30):
        scene = _render(fashion, RANDOM, index)
        for instance_id, tint in enumerate(scene.tint_classes, start=1):
            pixels = scene.image[scene.instance == instance_id].astype(np.float64)
            brightest = pixels[pixels.sum(axis=1).argmax()] / 255.0
            hue = colorsys.rgb_to_hsv(*brightest)[0]
            assert abs((hue - (tint % 5) / 5 + 0.5) % 1.0 - 0.5) * 5 <= jitter + 0.03


def test_random_tints_need_class_colours_and_their_generator(fashion) -> None:
    with pytest.raises(ValueError, match="tint_class"):
        SceneConfig(tint_class="random", class_colours=False)
    with pytest.raises(ValueError, match="tint_class"):
        SceneConfig(tint_class="pink")
    images, labels, pool = fashion
    with pytest.raises(ValueError, match="tint generator"):
        render_scene(scene_rng(0, "eval", 0), images, labels, pool, RANDOM)
