"""Tests for dense nearest-neighbour retrieval (eval/dense_retrieval.py): patch labels, bank sampling, search, vote,
the CLI and its column in eval.report (CPU, a few seconds)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.demo_scenes import SceneConfig, generate_scenes
from eval import dense_retrieval, report
from eval.common import Batch
from eval.datasets import IGNORE_INDEX
from eval.dense_retrieval import (
    MemoryBank,
    attention_vote,
    build_memory_bank,
    exact_search,
    label_distributions,
    make_searcher,
    patch_label_counts,
    predict,
    retrieve,
    run_dense_retrieval,
    sample_patches,
)
from eval.metrics import confusion_matrix, mean_iou

TINY_MODEL = ["--arch", "resnet18", "--dim-hidden", "32", "--dim-out", "16", "--num-prototypes", "8"]


def _batches(c5: torch.Tensor, semantic: torch.Tensor, size: int) -> list[Batch]:
    return [Batch(c5[i : i + size], semantic[i : i + size], None) for i in range(0, len(c5), size)]


# ----------------------------------------------------------------------------------------------
# Patch labels and the bank
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(3, 5), (5, 3)])  # 12 x 10 pixels: 4 x 2 blocks, then a non-divisible grid
def test_patch_label_counts_match_pixel_loop(grid: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    semantic = rng.integers(0, 4, size=(2, 12, 10))
    semantic[rng.random(semantic.shape) < 0.3] = IGNORE_INDEX
    h, w = grid
    expected = np.zeros((2, h * w, 4), dtype=np.int64)
    for b, y, x in np.ndindex(*semantic.shape):
        if semantic[b, y, x] != IGNORE_INDEX:
            expected[b, (y * h // 12) * w + x * w // 10, semantic[b, y, x]] += 1
    counts = patch_label_counts(torch.from_numpy(semantic).to(torch.uint8), grid, 4)
    assert np.array_equal(counts.numpy(), expected)
    with pytest.raises(ValueError, match="label ids"):
        patch_label_counts(torch.full((1, 4, 4), 7, dtype=torch.uint8), (2, 2), 4)


def test_label_distributions_are_fractions_of_labelled_pixels() -> None:
    counts = torch.tensor([[3, 1, 0], [0, 0, 0], [0, 2, 2]])
    assert torch.allclose(label_distributions(counts), torch.tensor([[0.75, 0.25, 0.0], [0, 0, 0], [0, 0.5, 0.5]]))


def test_sample_patches_keeps_the_lowest_random_rarity_scores() -> None:
    # 6 patches, 3 classes; patch 4 has no labelled pixel. Class presence: 0 in 4 patches, 1 in 2, 2 in 1.
    counts = torch.tensor([[5, 0, 0], [3, 2, 0], [4, 0, 0], [0, 1, 3], [0, 0, 0], [2, 0, 0]])
    frequency = {0: 4, 1: 2, 2: 1}
    uniform = torch.rand(6, generator=torch.Generator().manual_seed(7), dtype=torch.float64).tolist()
    scores = []
    for j, row in enumerate(counts.tolist()):
        if any(row):
            scores.append((uniform[j] * sum(frequency[c] for c, n in enumerate(row) if n > 0), j))
    expected = sorted(j for _, j in sorted(scores)[:3])
    assert sample_patches(counts, 3, torch.Generator().manual_seed(7)).tolist() == expected
    # Asking for more than the labelled patches returns all of them, never the unlabelled one.
    assert sample_patches(counts, 6, torch.Generator().manual_seed(7)).tolist() == [0, 1, 2, 3, 5]


def _random_split(seed: int, images: int = 5, size: int = 16, grid: int = 4, dim: int = 6, classes: int = 3):
    rng = np.random.default_rng(seed)
    c5 = torch.from_numpy(rng.normal(size=(images, dim, grid, grid))).float()
    semantic = torch.from_numpy(rng.integers(0, classes, size=(images, size, size))).to(torch.uint8)
    semantic[:, :4, :4] = IGNORE_INDEX  # the first patch of every image has no labelled pixel
    return c5, semantic


def test_memory_bank_budget_seed_and_batching() -> None:
    c5, semantic = _random_split(1)
    build = lambda memory, seed, size: build_memory_bank(_batches(c5, semantic, size), 5, 3, memory, seed)  # noqa: E731
    bank = build(5 * 7 + 3, 0, 2)  # 7 patches of 16 per image
    assert bank.patches_per_image == 7 and len(bank) == 35
    assert torch.allclose(bank.labels.sum(dim=1), torch.ones(35))
    assert torch.allclose(bank.features.norm(dim=1), torch.ones(35))
    # Reproducible whatever the batch size; another seed draws other patches.
    same = build(38, 0, 3)
    assert torch.equal(bank.features, same.features) and torch.equal(bank.labels, same.labels)
    assert not torch.equal(bank.features, build(38, 1, 2).features)
    # A budget of at least every patch keeps every labelled one: 15 of 16 per image, in order.
    full = build(10_000, 0, 2)
    assert full.patches_per_image is None and len(full) == 5 * 15
    cells = F.normalize(c5.flatten(2).transpose(1, 2), dim=2)[:, 1:].reshape(-1, 6)
    assert torch.allclose(full.features, cells)
    with pytest.raises(ValueError, match="smaller than the 5 train images"):
        build(4, 0, 2)


# ----------------------------------------------------------------------------------------------
# Search and vote
# ----------------------------------------------------------------------------------------------


def test_hand_built_neighbours_and_weighted_vote() -> None:
    # Unit vectors at angles 0, 10, 30, 90 and 180 degrees; the query at 0 degrees.
    angles = np.deg2rad([0.0, 10.0, 30.0, 90.0, 180.0])
    bank = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], axis=1))
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1], [1, 0, 0]], dtype=torch.float64)
    memory = MemoryBank(bank, labels, num_images=1, patches_per_image=None)
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    similarity, indices = make_searcher(bank, k=3)(query)
    assert indices.tolist() == [[0, 1, 2]]
    assert np.allclose(similarity.numpy(), [[1.0, math.cos(angles[1]), math.cos(angles[2])]])
    for temperature in (0.02, 1.0):
        weights = np.exp(np.cos(angles[:3]) / temperature)
        weights /= weights.sum()
        expected = (
            weights[0] * np.array([1, 0, 0]) + weights[1] * np.array([0, 1, 0]) + weights[2] * np.array([0, 0.5, 0.5])
        )
        got = retrieve(memory, make_searcher(bank, k=3), query, temperature)
        assert np.allclose(got.numpy(), [expected])
    # T = 0.02: weights 0.68 / 0.32 / 0.001, class 0 wins; T = 1: 0.35 / 0.34 / 0.31, class 1 (0.34 + 0.31 / 2).
    assert retrieve(memory, make_searcher(bank, k=3), query, 0.02).argmax().item() == 0
    assert retrieve(memory, make_searcher(bank, k=3), query, 1.0).argmax().item() == 1


def test_retrieval_equals_brute_force() -> None:
    rng = np.random.default_rng(2)
    bank = F.normalize(torch.from_numpy(rng.normal(size=(300, 8))), dim=1)
    labels = label_distributions(torch.from_numpy(rng.integers(0, 3, size=(300, 5))))
    queries = F.normalize(torch.from_numpy(rng.normal(size=(40, 8))), dim=1)
    got = retrieve(MemoryBank(bank, labels.double(), 1, None), make_searcher(bank, k=7), queries, 0.1)
    b, q, y = bank.numpy(), queries.numpy(), labels.double().numpy()
    for i in range(len(q)):
        similarity = b @ q[i]
        nearest = np.argsort(-similarity)[:7]
        weights = np.exp(similarity[nearest] / 0.1) / np.exp(similarity[nearest] / 0.1).sum()
        assert np.allclose(got[i].numpy(), (weights[:, None] * y[nearest]).sum(axis=0))
    assert torch.allclose(attention_vote(torch.zeros(2, 4), torch.ones(2, 4, 3), 0.5), torch.ones(2, 3))


@pytest.mark.parametrize(("query_chunk", "bank_chunk"), [(37, 611), (1, 250), (1000, 100_000), (64, 2)])
def test_chunked_search_equals_unchunked(query_chunk: int, bank_chunk: int) -> None:
    # float64, so the blockwise products agree with the full ones well below any gap between neighbours.
    rng = np.random.default_rng(3)
    bank = torch.from_numpy(rng.normal(size=(2000, 16)))
    queries = torch.from_numpy(rng.normal(size=(150, 16)))
    values, indices = exact_search(queries, bank, 10, query_chunk, bank_chunk)
    expected_values, expected_indices = (queries @ bank.T).topk(10, dim=1)
    assert torch.equal(indices, expected_indices)
    assert torch.allclose(values, expected_values, rtol=0, atol=1e-12)
    # k beyond the bank returns the whole bank, sorted.
    small_values, small_indices = exact_search(queries[:3], bank[:4], 30, 2, 3)
    assert small_indices.shape == (3, 4) and torch.allclose(small_values, (queries[:3] @ bank[:4].T).sort(1, True)[0])


@pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss is optional and not installed")
def test_faiss_search_matches_exact_search() -> None:
    rng = np.random.default_rng(4)
    bank = F.normalize(torch.from_numpy(rng.normal(size=(500, 12))).float(), dim=1)
    queries = F.normalize(torch.from_numpy(rng.normal(size=(60, 12))).float(), dim=1)
    values, indices = make_searcher(bank, 5, "faiss")(queries)
    expected_values, expected_indices = exact_search(queries, bank, 5)
    assert torch.equal(indices, expected_indices) and torch.allclose(values, expected_values, atol=1e-5)


def test_retrieving_a_train_image_from_its_own_bank_returns_its_labels() -> None:
    rng = np.random.default_rng(5)
    c5 = torch.from_numpy(rng.normal(size=(2, 8, 4, 6))).float()
    # Vertical stripes one cell wide (8 px): bilinear upsampling keeps each cell's own class at every pixel.
    stripes = torch.tensor([0, 2, 1, 3, 2, 0]).repeat_interleave(8)
    semantic = stripes.expand(2, 32, 48).to(torch.uint8).clone()
    semantic[1] = (semantic[1] + 1) % 4
    bank = build_memory_bank(_batches(c5, semantic, 2), 2, 4, memory_size=1000)
    searcher = make_searcher(bank.features, k=1)
    # Patch level: every patch finds itself (similarity 1) and takes its own label distribution.
    queries = F.normalize(c5.flatten(2).transpose(1, 2).reshape(-1, 8), dim=1)
    similarity, indices = searcher(queries)
    assert torch.equal(indices[:, 0], torch.arange(48)) and torch.allclose(similarity, torch.ones(48, 1))
    assert torch.equal(retrieve(bank, searcher, queries, 0.02), bank.labels)
    # Pixel level: the prediction is the label map, and the whole evaluation scores 1.
    assert torch.equal(predict(bank, searcher, c5, (32, 48), 0.02), semantic.long())
    result = run_dense_retrieval(_batches(c5, semantic, 1), _batches(c5, semantic, 2), 2, 4, "abcd", k=1)
    assert result["miou"] == 1.0 and result["pixel_accuracy"] == 1.0 and result["bank_size"] == 48


def test_prediction_is_argmax_of_upsampled_votes() -> None:
    c5, semantic = _random_split(6, images=3, size=32)
    bank = build_memory_bank(_batches(c5[:2], semantic[:2], 2), 2, 3, memory_size=20, seed=3)
    searcher = make_searcher(bank.features, k=4, query_chunk=5, bank_chunk=7)
    queries = F.normalize(c5[2:].flatten(2).transpose(1, 2).reshape(-1, 6), dim=1)
    votes = retrieve(bank, searcher, queries, 0.05).view(1, 4, 4, 3).permute(0, 3, 1, 2)
    expected = F.interpolate(votes, size=(32, 32), mode="bilinear", align_corners=False).argmax(dim=1)
    assert torch.equal(predict(bank, searcher, c5[2:], (32, 32), 0.05), expected)
    result = run_dense_retrieval(
        _batches(c5[:2], semantic[:2], 1),
        _batches(c5[2:], semantic[2:], 1),
        2,
        3,
        "abc",
        4,
        0.05,
        20,
        3,
        query_chunk=5,
        bank_chunk=7,
    )
    assert result["miou"] == pytest.approx(mean_iou(confusion_matrix(semantic[2:], expected, 3)))
    assert result["patches_per_image"] == 10 and result["bank_size"] == 20


# ----------------------------------------------------------------------------------------------
# Command line and report
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("retrieval_demo") / "scenes"
    generate_scenes(root, SceneConfig(size=64), num_train=8, num_eval=4, seed=0, workers=1)
    return root


def _common(demo_dir: Path, out: Path) -> list[str]:
    return ["--dataset", "demo", "--data-dir", str(demo_dir), "--image-size", "64", "--batch-size", "4",
            "--output-json", str(out)]  # fmt: skip


def test_cli_end_to_end_and_report_column(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "retrieval.json"
    # 64 px at stride 32: 2 x 2 patches per scene; a budget of 16 keeps 2 of each scene's 4.
    argv = ["--checkpoint", "random", *TINY_MODEL, *_common(demo_dir, out), "--memory-size", "16"]
    assert dense_retrieval.main(argv) == 0
    printed = capsys.readouterr().out
    assert "retrieval_miou" in printed and "bank of 16 patches (2 patches per image of 8 train images)" in printed
    result = json.loads(out.read_text())
    assert result["num_train_images"] == 8 and result["num_eval_images"] == 4 and result["num_classes"] == 11
    assert result["k"] == 30 and result["temperature"] == 0.02 and result["image_size"] == 64
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["pixel_accuracy"] <= 1.0
    # eval.report computes the same number from the features it already extracted.
    report_out = tmp_path / "report.json"
    argv = ["--checkpoints", "random", *TINY_MODEL, *_common(demo_dir, report_out), "--epochs", "1"]
    assert report.main([*argv, "--memory-size", "16"]) == 0
    summary = json.loads(report_out.read_text())["models"]["random"]["summary"]
    assert summary["retrieval_miou"] == pytest.approx(result["miou"])
    assert "retrieval_miou" in capsys.readouterr().out


def test_cli_errors_are_one_line(
    demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["--checkpoint", "random", *TINY_MODEL, *_common(demo_dir, tmp_path / "x.json")]
    for extra, message in (
        (["--k", "0"], "--k must be positive"),
        (["--temperature", "0"], "temperature must be positive"),
        (["--memory-size", "5"], "smaller than the 8 train images"),
    ):
        assert dense_retrieval.main([*base, *extra]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real_find_spec(name))
    assert dense_retrieval.main([*base, "--search", "faiss"]) == 2
    error = capsys.readouterr().err
    assert "faiss is not installed" in error and error.count("\n") == 1
