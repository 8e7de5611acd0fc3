"""Tests for the object discovery scores (FG-ARI, mBO): hand-built cases, brute-force pair counting, the CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.demo_scenes import generate_scenes
from eval import object_discovery
from eval.metrics import adjusted_rand_index, best_overlaps
from eval.object_discovery import image_scores, instance_contingency, score_segments


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


def _ari_by_pair_counting(a: np.ndarray, b: np.ndarray) -> float:
    """ARI from the 2x2 pair confusion, every pair of items visited (no contingency table, no sklearn):

    same/same = s11, same in a only = s10, same in b only = s01, different in both = s00;
    ARI = 2 (s11 s00 - s10 s01) / ((s11 + s10)(s10 + s00) + (s11 + s01)(s01 + s00)).
    """
    s11 = s10 = s01 = s00 = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        same_a, same_b = a[i] == a[j], b[i] == b[j]
        s11 += same_a and same_b
        s10 += same_a and not same_b
        s01 += same_b and not same_a
        s00 += not same_a and not same_b
    denominator = (s11 + s10) * (s10 + s00) + (s11 + s01) * (s01 + s00)
    return 1.0 if denominator == 0 else 2 * (s11 * s00 - s10 * s01) / denominator


def test_ari_hand_computed() -> None:
    # [[2, 1, 0], [0, 1, 2]]: index 2, sa 6, sb 3, 15 pairs -> (2 - 1.2) / (4.5 - 1.2) = 8/33.
    a, b = np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(_contingency(a, b)) == pytest.approx(8 / 33)
    # index 1 equals its expectation sa sb / pairs = 2 * 3 / 6: exactly chance.
    assert adjusted_rand_index(_contingency(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]))) == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(6))
def test_ari_matches_brute_force_pair_counting(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    a = rng.integers(0, int(rng.integers(1, 5)), size=n)
    # Half the cases: b is a noisy relabelling of a, so the ARI is far from 0.
    b = (
        np.where(rng.random(n) < 0.8, (a * 7 + 3) % 5, rng.integers(0, 5, size=n))
        if seed % 2
        else rng.integers(0, int(rng.integers(1, 6)), size=n)
    )
    assert adjusted_rand_index(_contingency(a, b)) == pytest.approx(_ari_by_pair_counting(a, b), abs=1e-12)


def test_ari_invariances_and_edge_cases() -> None:
    a = np.array([0, 0, 1, 1, 2, 2, 2])
    relabelled = np.array([5, 5, 0, 0, 3, 3, 3])
    assert adjusted_rand_index(_contingency(a, relabelled)) == pytest.approx(1.0)
    table = _contingency(a, np.array([0, 1, 0, 1, 2, 0, 1]))
    assert adjusted_rand_index(table) == pytest.approx(adjusted_rand_index(table.T))
    assert adjusted_rand_index(np.array([[5]])) == 1.0  # one part each: identical partitions
    assert adjusted_rand_index(np.eye(4, dtype=np.int64)) == 1.0  # all singletons in both
    assert np.isnan(adjusted_rand_index(np.array([[1]])))  # one item: no pairs
    # One object split evenly over two segments: everything below chance is < 0 or 0, never 1.
    assert adjusted_rand_index(np.array([[3, 3]])) == pytest.approx(0.0)


def test_best_overlaps_hand_computed() -> None:
    # Rows: background, object 1, object 2; columns: 3 segments. Areas: rows 10, 4, 6; columns 11, 5, 4.
    n = np.array([[8, 2, 0], [3, 1, 0], [0, 2, 4]])
    expected = [8 / (10 + 11 - 8), max(3 / (4 + 11 - 3), 1 / (4 + 5 - 1)), 4 / (6 + 4 - 4)]
    assert best_overlaps(n) == pytest.approx(expected)
    assert np.isnan(best_overlaps(np.array([[2, 1], [0, 0]]))[1])  # an empty row has no overlap


def test_instance_contingency_matches_loop() -> None:
    rng = np.random.default_rng(0)
    instance = rng.integers(0, 4, size=(3, 5, 7))
    segments = rng.integers(0, 6, size=(3, 5, 7))
    expected = np.zeros((3, 4, 6), dtype=np.int64)
    for b, y, x in itertools.product(range(3), range(5), range(7)):
        expected[b, instance[b, y, x], segments[b, y, x]] += 1
    got = instance_contingency(torch.from_numpy(instance).to(torch.uint8), torch.from_numpy(segments), 6)
    np.testing.assert_array_equal(got.numpy(), expected)
    with pytest.raises(ValueError, match="segment ids"):
        instance_contingency(torch.zeros(1, 2, 2, dtype=torch.uint8), torch.full((1, 2, 2), 6), 6)


def test_scores_of_a_hand_built_image() -> None:
    """Objects found exactly but the background split in two: FG-ARI ignores the background, mBO does not."""
    instance = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 2, 2]]], dtype=torch.uint8)
    segments = torch.tensor([[[0, 3, 1, 1], [0, 3, 1, 1], [0, 3, 2, 2], [0, 3, 2, 2]]])
    result = score_segments([(instance, segments)], num_segments=4)
    assert result["fg_ari"] == pytest.approx(1.0) and result["mbo"] == pytest.approx(1.0)
    assert result["num_objects"] == 2
    # Merge both objects into one segment: ARI 0 on the foreground (a single predicted part), BO 4/8 each.
    merged = torch.where(segments == 2, 1, segments)
    result = score_segments([(instance, merged)], num_segments=4)
    assert result["fg_ari"] == pytest.approx(0.0) and result["mbo"] == pytest.approx(0.5)
    # An object segment that also takes the 8 background pixels: BO = 4 / 12 for object 1.
    spilled = torch.where(instance == 0, 1, segments)
    fg_ari, overlaps = image_scores(instance_contingency(instance, spilled, 4)[0])
    assert fg_ari == pytest.approx(1.0) and overlaps.tolist() == pytest.approx([4 / 12, 1.0])


def test_absent_instance_ids_and_images_without_objects_are_skipped() -> None:
    instance = torch.zeros(2, 3, 3, dtype=torch.uint8)
    instance[0, 0, :] = 2  # id 1 absent from image 0; image 1 has no object at all
    segments = torch.zeros(2, 3, 3, dtype=torch.long)
    result = score_segments([(instance, segments)], num_segments=2)
    assert result["num_objects"] == 1 and result["num_images_with_fg_ari"] == 1
    assert result["fg_ari"] == 1.0 and result["mbo"] == pytest.approx(3 / 9)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_scenes(root, num_train=2, num_eval=4, size=64, workers=1)
    return root


def test_cli_scores_a_random_model(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "od.json"
    argv = [
        "--checkpoint",
        "random",
        "--arch",
        "resnet18",
        "--dim-hidden",
        "32",
        "--dim-out",
        "16",
        "--num-prototypes",
        "8",
        "--data-dir",
        str(demo_dir),
        "--image-size",
        "64",
        "--batch-size",
        "3",
        "--output-json",
        str(out),
    ]
    assert object_discovery.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["num_images"] == 4 and result["num_objects"] >= 4 * 2  # 2..4 items a scene
    assert -1.0 <= result["fg_ari"] <= 1.0 and 0.0 <= result["mbo"] <= 1.0
    assert "fg_ari" in capsys.readouterr().out
