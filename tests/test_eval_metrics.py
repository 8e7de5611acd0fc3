"""Tests for the evaluations: metrics and matchings, the COCO-Stuff mapping, k-NN, and each CLI (CPU, fast)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.optimize import linear_sum_assignment

from data.demo_scenes import SceneConfig, generate_scenes
from eval import knn, linear_probe, report, unsupervised_seg
from eval.common import build_teacher
from eval.datasets import (
    COCOSTUFF27_CLASSES,
    COCOSTUFF_FINE_CLASSES,
    COCOSTUFF_FINE_TO_COARSE,
    IGNORE_INDEX,
    CocoStuff27,
    build_dataset,
)
from eval.knn import knn_classify, pool_instances
from eval.metrics import (
    UNASSIGNED,
    apply_mapping,
    confusion_matrix,
    hungarian_match,
    majority_vote_match,
    matched_scores,
    mean_iou,
    per_class_iou,
    pixel_accuracy,
    remap_confusion,
)
from eval.unsupervised_seg import cluster_map
from models.slotcon import SlotCon

TINY_MODEL = ["--arch", "resnet18", "--dim-hidden", "32", "--dim-out", "16", "--num-prototypes", "8"]


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def test_confusion_matrix_matches_double_loop() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(3, 17, 19))
    target[rng.random(target.shape) < 0.2] = IGNORE_INDEX
    prediction = rng.integers(0, 6, size=target.shape)
    expected = np.zeros((4, 6), dtype=np.int64)
    for t, p in zip(target.ravel(), prediction.ravel(), strict=True):
        if t != IGNORE_INDEX:
            expected[t, p] += 1
    got = confusion_matrix(torch.from_numpy(target), torch.from_numpy(prediction), 4, 6, IGNORE_INDEX)
    assert np.array_equal(got.numpy(), expected)
    assert got.sum() == (target != IGNORE_INDEX).sum()


def test_confusion_matrix_rejects_out_of_range_ids() -> None:
    with pytest.raises(ValueError, match="prediction ids"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 3]), 2)
    with pytest.raises(ValueError, match="target ids"):
        confusion_matrix(torch.tensor([0, 7]), torch.tensor([0, 1]), 2)


def test_iou_and_pixel_accuracy_hand_computed() -> None:
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, IGNORE_INDEX])
    prediction = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0, 2, 1])
    confusion = confusion_matrix(target, prediction, 3)
    assert confusion.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    # IoU = TP / (row + column - TP): 2/(3+3-2), 1/(2+2-1), 3/(4+4-3)
    assert np.allclose(per_class_iou(confusion), [0.5, 1 / 3, 0.6])
    assert mean_iou(confusion) == pytest.approx((0.5 + 1 / 3 + 0.6) / 3)
    assert pixel_accuracy(confusion) == pytest.approx(6 / 9)


def test_iou_skips_absent_classes_and_counts_unassigned_as_wrong() -> None:
    # Class 2 never occurs and is never predicted: undefined, left out of the mean.
    confusion = np.array([[3, 1, 0], [1, 3, 0], [0, 0, 0]])
    assert np.isnan(per_class_iou(confusion)[2])
    assert mean_iou(confusion) == pytest.approx(3 / 5)
    # An extra "unassigned" column: class 0 has 1 hit out of 2 pixels, nothing else predicted as 0.
    with_unassigned = np.array([[1, 0, 1], [0, 2, 0]])
    assert np.allclose(per_class_iou(with_unassigned), [0.5, 1.0])
    assert pixel_accuracy(with_unassigned) == pytest.approx(3 / 4)


def _brute_force_best(confusion: np.ndarray) -> float:
    """Best total overlap over every injective class -> cluster assignment (C <= K)."""
    num_classes, num_clusters = confusion.shape
    return max(
        sum(confusion[c, k] for c, k in enumerate(clusters))
        for clusters in itertools.permutations(range(num_clusters), num_classes)
    )


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 5)])
def test_hungarian_matches_brute_force_and_scipy(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    confusion = rng.integers(0, 10_000, size=shape)
    mapping = hungarian_match(confusion)
    assigned = np.flatnonzero(mapping != UNASSIGNED)
    assert len(assigned) == shape[0] and len(set(mapping[assigned].tolist())) == shape[0]  # one-to-one
    total = confusion[mapping[assigned], assigned].sum()
    assert total == _brute_force_best(confusion)
    rows, cols = linear_sum_assignment(-confusion)
    assert total == confusion[rows, cols].sum()
    assert {(int(c), int(k)) for c, k in zip(rows, cols, strict=True)} == {(int(mapping[k]), int(k)) for k in assigned}


def test_majority_vote_hand_built() -> None:
    confusion = np.array(
        [  # rows = classes, columns = clusters
            [5, 0, 2, 0, 4],
            [1, 0, 3, 0, 0],
            [0, 7, 1, 0, 5],
        ]
    )
    assert majority_vote_match(confusion).tolist() == [0, 2, 1, UNASSIGNED, 2]


def test_remap_confusion_equals_confusion_of_mapped_predictions() -> None:
    rng = np.random.default_rng(1)
    target = torch.from_numpy(rng.integers(0, 3, size=500))
    clusters = torch.from_numpy(rng.integers(0, 6, size=500))
    mapping = np.array([2, UNASSIGNED, 0, 1, UNASSIGNED, 0])
    mapped = apply_mapping(clusters, mapping)
    assert mapped.tolist() == [mapping[k] for k in clusters.tolist()]
    direct = confusion_matrix(target, torch.where(mapped < 0, 3, mapped), 3, 4)  # 3 = "unassigned"
    assert np.array_equal(remap_confusion(confusion_matrix(target, clusters, 3, 6), mapping), direct.numpy())


def test_perfect_prediction_under_permuted_clusters_scores_one() -> None:
    rng = np.random.default_rng(2)
    target = torch.from_numpy(rng.integers(0, 4, size=(2, 30, 30)))
    permutation = torch.tensor([3, 0, 2, 1])
    confusion = confusion_matrix(target, permutation[target], 4)
    for match in (hungarian_match, majority_vote_match):
        scores = matched_scores(confusion, match(confusion))
        assert scores["miou"] == pytest.approx(1.0) and scores["pixel_accuracy"] == pytest.approx(1.0)
    # Over-clustering: each class split over two clusters. Majority stays perfect; one-to-one cannot.
    split = 2 * permutation[target] + torch.from_numpy(rng.integers(0, 2, size=target.shape))
    over = confusion_matrix(target, split, 4, 8)
    assert matched_scores(over, majority_vote_match(over))["miou"] == pytest.approx(1.0)
    assert matched_scores(over, hungarian_match(over))["pixel_accuracy"] < 0.75


# ----------------------------------------------------------------------------------------------
# COCO-Stuff-27
# ----------------------------------------------------------------------------------------------


def test_cocostuff_table_shape() -> None:
    assert len(COCOSTUFF_FINE_CLASSES) == 182 and len(COCOSTUFF27_CLASSES) == 27
    assert set(COCOSTUFF_FINE_TO_COARSE) == set(range(182))
    assert set(COCOSTUFF_FINE_TO_COARSE.values()) == set(range(27))
    # Label values 0..90 are COCO things (ids 1..91), 91..181 stuff (ids 92..182); coarse 0..11 vs 12..26.
    assert all((fine < 91) == (coarse < 12) for fine, coarse in COCOSTUFF_FINE_TO_COARSE.items())


def test_cocostuff_reader_maps_fine_to_coarse_and_crops(tmp_path: Path) -> None:
    # Label values are COCO-Stuff ids - 1: person=1, bicycle=2, street sign=12, giraffe=25, carpet=101,
    # banner=92, sky-other=157, wood=182, fog=120, toaster=80; 182 is not a class, 255 is unlabelled.
    fine = np.array(
        [
            [0, 1, 91, 156, 255, 11],
            [24, 100, 181, 119, 79, 182],
            [0, 0, 156, 156, 91, 91],
            [11, 24, 100, 181, 255, 0],
        ],
        dtype=np.uint8,
    )
    named = {
        0: "person",
        1: "vehicle",
        11: "outdoor",
        24: "animal",
        79: "appliance",
        91: "textile",
        100: "floor",
        119: "water",
        156: "sky",
        181: "solid",
    }
    coarse = np.vectorize(lambda v: COCOSTUFF27_CLASSES.index(named[v]) if v in named else IGNORE_INDEX)(fine)
    for folder in ("curated/val2017", "images/val2017", "annotations/val2017"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "curated/val2017/Coco164kFull_Stuff_Coarse_7.txt").write_text("000000000042\n")
    Image.new("RGB", (6, 4), (120, 30, 200)).save(tmp_path / "images/val2017/000000000042.jpg")
    Image.fromarray(fine).save(tmp_path / "annotations/val2017/000000000042.png")

    # Shorter side already 4: no resize, the central 4 of 6 columns are kept.
    image, label, instance = CocoStuff27(tmp_path, "eval", 4)[0]
    assert instance is None and image.shape == (3, 4, 4) and image.dtype == torch.uint8
    assert np.array_equal(label.numpy(), coarse[:, 1:5])
    # Shorter side to 8: every label pixel becomes a 2x2 block (nearest), then columns 2..9 of 12 are kept.
    _, label, _ = build_dataset("cocostuff27", tmp_path, "eval", 8)[0]
    assert np.array_equal(label.numpy(), np.kron(coarse, np.ones((2, 2), dtype=coarse.dtype))[:, 2:10])

    with pytest.raises(ValueError, match="curated image list"):
        CocoStuff27(tmp_path, "train", 4)


# ----------------------------------------------------------------------------------------------
# k-NN and instance pooling
# ----------------------------------------------------------------------------------------------


def test_knn_separable_features_accuracy_one() -> None:
    rng = np.random.default_rng(3)
    centres = np.eye(5)[:3] * 4.0  # three well-separated class directions
    train_labels = np.repeat(np.arange(3), 30)
    query_labels = np.tile(np.arange(3), 10)
    train = centres[train_labels] + rng.normal(0, 0.3, size=(90, 5))
    queries = centres[query_labels] + rng.normal(0, 0.3, size=(30, 5))
    predicted = knn_classify(
        F.normalize(torch.tensor(train), dim=1),
        torch.from_numpy(train_labels),
        F.normalize(torch.tensor(queries), dim=1),
        num_classes=3,
        k=20,
    )
    assert float((predicted == torch.from_numpy(query_labels)).float().mean()) == 1.0


def test_knn_weighted_vote_hand_computed() -> None:
    train = torch.tensor([[0.9, 0.1], [0.5, 0.2], [0.45, 0.3], [-1.0, 0.0]])
    labels = torch.tensor([1, 2, 2, 0])
    query = torch.tensor([[1.0, 0.0]])  # similarities 0.9, 0.5, 0.45, -1
    # T = 0.07: e^(0.9/0.07) beats e^(0.5/0.07) + e^(0.45/0.07); T = 1: 2.46 < 1.65 + 1.57.
    assert knn_classify(train, labels, query, 3, k=3, temperature=0.07).item() == 1
    assert knn_classify(train, labels, query, 3, k=3, temperature=1.0).item() == 2


def test_pool_instances_equals_mean_of_upsampled_features() -> None:
    rng = np.random.default_rng(4)
    c5 = torch.from_numpy(rng.normal(size=(2, 6, 4, 4))).float()
    instance = torch.zeros(2, 32, 32, dtype=torch.uint8)
    semantic = torch.zeros(2, 32, 32, dtype=torch.uint8)
    instance[0, 3:20, 5:11], semantic[0, 3:20, 5:11] = 1, 7
    instance[0, 15:30, 18:31], semantic[0, 15:30, 18:31] = 2, 3
    instance[1, 0:9, 0:32], semantic[1, 0:9, 0:32] = 1, 9
    features, labels = pool_instances(c5, instance, semantic)
    upsampled = F.interpolate(c5, size=(32, 32), mode="nearest")  # each cell covers an 8x8 block
    expected = [upsampled[b][:, instance[b] == i].mean(dim=1) for b, i in ((0, 1), (0, 2), (1, 1))]
    assert torch.allclose(features, torch.stack(expected), atol=1e-5)
    assert labels.tolist() == [7, 3, 9]


# ----------------------------------------------------------------------------------------------
# Model path and CLIs
# ----------------------------------------------------------------------------------------------


def test_random_model_is_seeded_and_in_eval_mode() -> None:
    config = {"arch": "resnet18", "dim_hidden": 32, "dim_out": 16, "num_prototypes": 8}
    first, second = build_teacher("random", config, seed=5), build_teacher("random", config, seed=5)
    other = build_teacher("random", config, seed=6)
    assert not first.training and all(not m.training for m in first.modules())
    state, other_state = first.state_dict(), other.state_dict()
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in state.items())
    assert not torch.equal(state["grouping_k.slot_embed.weight"], other_state["grouping_k.slot_embed.weight"])


def test_cluster_map_matches_teacher_forward() -> None:
    model = build_teacher("random", {"arch": "resnet18", "dim_hidden": 32, "dim_out": 16, "num_prototypes": 8}, 0)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = F.interpolate(model(images), size=(48, 48), mode="bilinear", align_corners=False).argmax(dim=1)
        assert torch.equal(cluster_map(model, model.encoder_k(images), (48, 48)), expected)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval_demo") / "scenes"
    generate_scenes(root, SceneConfig(size=64), num_train=8, num_eval=4, seed=0, workers=1)
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = SlotCon("resnet18", dim_hidden=32, dim_out=16, num_prototypes=6)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save({"model": model.state_dict(), "args": {"arch": "resnet18", "teacher_temp": 0.07}}, path)
    return path


def _common(demo_dir: Path, out: Path) -> list[str]:
    return [
        "--dataset",
        "demo",
        "--data-dir",
        str(demo_dir),
        "--image-size",
        "64",
        "--batch-size",
        "4",
        "--output-json",
        str(out),
    ]


def _in_unit_interval(*values: float) -> bool:
    return all(0.0 <= v <= 1.0 for v in values)


def test_unsupervised_seg_cli(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "seg.json"
    assert unsupervised_seg.main(["--checkpoint", "random", *TINY_MODEL, *_common(demo_dir, out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_classes"] == 11 and result["num_clusters"] == 8 and result["num_images"] == 4
    for name in ("hungarian", "majority"):
        assert _in_unit_interval(result[name]["miou"], result[name]["pixel_accuracy"])
    # Many-to-one can only gain over one-to-one on the same confusion.
    assert result["majority"]["pixel_accuracy"] >= result["hungarian"]["pixel_accuracy"]
    assert "seg_hungarian_miou" in capsys.readouterr().out


def test_unsupervised_seg_cli_on_checkpoint(demo_dir: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg.json"
    assert unsupervised_seg.main(["--checkpoint", str(tiny_checkpoint), *_common(demo_dir, out)]) == 0
    assert json.loads(out.read_text())["num_clusters"] == 6  # read off the checkpoint, not the defaults


def test_linear_probe_cli(demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    assert linear_probe.main(["--checkpoint", "random", *TINY_MODEL, *_common(demo_dir, out), "--epochs", "2"]) == 0
    result = json.loads(out.read_text())
    assert _in_unit_interval(result["miou"], result["pixel_accuracy"])
    assert result["num_train_images"] == 8 and result["num_eval_images"] == 4


def test_knn_cli(demo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "knn.json"
    assert knn.main(["--checkpoint", "random", *TINY_MODEL, *_common(demo_dir, out)]) == 0
    result = json.loads(out.read_text())
    assert _in_unit_interval(result["top1"])
    assert result["num_train_instances"] >= 8 * 2 and result["num_eval_instances"] >= 4 * 2  # 2..4 items a scene


def test_report_cli(demo_dir: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    argv = ["--checkpoints", "random", str(tiny_checkpoint), *_common(demo_dir, out), "--epochs", "1"]
    assert report.main(argv) == 0
    models = json.loads(out.read_text())["models"]
    assert set(models) == {"random", "tiny.pth"}
    # The random baseline copies the checkpoint's network (6 prototypes), not SlotCon's default 256.
    assert models["random"]["unsupervised_seg"]["num_clusters"] == 6
    for results in models.values():
        summary = dict(results["summary"])
        assert set(summary) >= {
            "seg_hungarian_miou",
            "seg_majority_miou",
            "linear_miou",
            "retrieval_miou",
            "knn_top1",
            "fg_ari",
            "mbo",
        }
        assert -1.0 <= summary.pop("fg_ari") <= 1.0  # an ARI can fall below chance
        assert _in_unit_interval(*summary.values())
    table = capsys.readouterr().out
    assert "random" in table and "tiny.pth" in table


def test_cli_errors_are_one_line(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.pth"
    assert unsupervised_seg.main(["--checkpoint", str(missing), "--data-dir", str(demo_dir)]) == 2
    error = capsys.readouterr().err
    assert "no such checkpoint file" in error and error.count("\n") == 1
    assert knn.main(["--checkpoint", "random", *TINY_MODEL, "--data-dir", str(tmp_path / "nothing")]) == 2
    error = capsys.readouterr().err
    assert "no demo dataset" in error and error.count("\n") == 1
