"""The training-free baselines (eval.baselines), each against an independent computation on a hand-built case,
and the evaluation CLIs printing their rows beside random and checkpoint rows (CPU, a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.demo_scenes import SceneConfig, generate_scenes
from data.photometric import normalize_uint8
from eval import dense_retrieval, knn, linear_probe, object_discovery, report, unsupervised_seg
from eval.baselines import BASELINES, HIST_CELL, ColourBaseline, build_baseline, colour_bins, kmeans
from eval.common import SplitFeatures
from eval.knn import run_knn
from eval.linear_probe import run_linear_probe
from eval.unsupervised_seg import cluster_map
from models.slotcon import SlotCon

RED, BLUE, GREEN = (200, 30, 40), (20, 40, 210), (30, 150, 40)  # each shade +8 stays in its 4x4x4 bin


def _canvas(size: int, fill: tuple[int, int, int]) -> np.ndarray:
    return np.tile(np.array(fill, dtype=np.uint8), (size, size, 1))


def _features(name: str, images: np.ndarray, num_prototypes: int = 2, fit: bool = True):
    """The baseline ``name`` (fitted on ``images`` when ``fit``) and its feature maps of ``images`` [N, H, W, 3]."""
    model = build_baseline(name, num_prototypes, seed=0)
    batch = normalize_uint8(torch.from_numpy(images).permute(0, 3, 1, 2))
    features = model.encoder_k(batch)
    return (model.fit(features) if fit else model), features


def test_kmeans_on_two_flat_colours_recovers_them() -> None:
    image = _canvas(32, RED)
    image[:, 16:] = BLUE
    for k in (2, 16):  # 16 clusters for two colours: 14 stay empty, each colour keeps one cluster
        model, features = _features("colour", image[None], num_prototypes=k)
        clusters = cluster_map(model, model.projector_k(features), (32, 32))[0]
        left, right = clusters[:, :16].unique(), clusters[:, 16:].unique()
        assert left.numel() == 1 and right.numel() == 1 and left != right
        centres = model.grouping_k.centres
        expected = normalize_uint8(torch.tensor([RED, BLUE], dtype=torch.uint8).view(2, 3, 1, 1)).view(2, 3)
        assert torch.allclose(centres[left], expected[0], atol=1e-5)
        assert torch.allclose(centres[right], expected[1], atol=1e-5)


def test_kmeans_ends_at_a_lloyd_fixed_point() -> None:
    # Independently (numpy): every point's nearest centre, and every centre the mean of its points.
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(c, 0.3, size=(200, 3)) for c in ((0, 0, 0), (3, 0, 0), (0, 3, 1), (2, 2, 2))])
    centres = kmeans(torch.from_numpy(points), 4, seed=1, tol=0.0).numpy()
    nearest = ((points[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
    assert sorted(np.bincount(nearest, minlength=4)) == [200, 200, 200, 200]
    for k in range(4):
        np.testing.assert_allclose(centres[k], points[nearest == k].mean(axis=0), atol=1e-9)
    again = kmeans(torch.from_numpy(points), 4, seed=1, tol=0.0).numpy()
    assert np.array_equal(centres, again)  # seeded


def test_colour_histogram_is_the_pixels_histogram() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(1, 16, 16, 3), dtype=np.uint8)
    _, features = _features("colour-hist", image, fit=False)
    assert features.shape == (1, 64, 16 // HIST_CELL, 16 // HIST_CELL)
    for i in range(4):
        for j in range(4):
            cell = image[0, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].reshape(-1, 3).astype(np.int64)
            expected, _ = np.histogramdd(cell, bins=(4, 4, 4), range=((0, 256),) * 3)
            np.testing.assert_allclose(features[0, :, i, j].numpy(), expected.ravel() / 16, atol=1e-7)
    assert torch.equal(
        colour_bins(normalize_uint8(torch.tensor([[[[255]], [[64]], [[63]]]], dtype=torch.uint8))),
        torch.tensor([[[3 * 16 + 1 * 4 + 0]]]),
    )


def _objects(colours: list, classes: list[int], size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image i: a grey canvas (class 0) with an 8x16 object of ``colours[i]`` (class ``classes[i]``), then a 16x8
    one of the next colour and class. Returns images [N, H, W, 3], semantic and instance maps [N, H, W]."""
    images, semantic, instance = [], [], []
    for index in range(len(colours)):
        image, labels, ids = _canvas(size, (128, 128, 128)), np.zeros((2, size, size), dtype=np.uint8), 0
        for ids, box in enumerate(((slice(4, 12), slice(4, 20)), (slice(16, 32), slice(20, 28))), start=1):
            which = (index + ids - 1) % len(colours)
            image[box], labels[0][box], labels[1][box] = colours[which], classes[which], ids
        images.append(image)
        semantic.append(labels[0])
        instance.append(labels[1])
    return np.stack(images), np.stack(semantic), np.stack(instance)


def _split(name: str, images: np.ndarray, semantic: np.ndarray, instance: np.ndarray) -> SplitFeatures:
    _, features = _features(name, images, fit=False)
    num_classes = int(semantic.max()) + 1
    return SplitFeatures(
        features,
        torch.from_numpy(semantic),
        torch.from_numpy(instance),
        num_classes,
        [str(c) for c in range(num_classes)],
    )


@pytest.mark.parametrize("name", BASELINES)
def test_colour_knn_classifies_objects_by_their_colour(name: str) -> None:
    # Class = colour (red 1, blue 2, green 3); the held-out objects are other shades of the same colours.
    colours, classes = [RED, BLUE, GREEN], [1, 2, 3]
    shaded = [tuple(c + 8 for c in colour) for colour in colours]
    train = _split(name, *_objects(colours * 2, classes * 2))
    evaluation = _split(name, *_objects(shaded, classes))
    result = run_knn(train, evaluation, torch.device("cpu"))
    assert result["top1"] == 1.0 and result["num_eval_instances"] == 6
    # What the k-NN sees of an object of one colour: that colour (colour), or all its pixels in one bin (colour-hist).
    inside = evaluation.c5[0, :, 1, 1] if name == "colour-hist" else evaluation.c5[0, :, 5, 5]
    r, g, b = shaded[0]
    expected = (
        np.eye(64)[(r // 64 * 4 + g // 64) * 4 + b // 64]
        if name == "colour-hist"
        else normalize_uint8(torch.tensor(shaded[0], dtype=torch.uint8).view(1, 3, 1, 1)).view(3).numpy()
    )
    np.testing.assert_allclose(inside.numpy(), expected, atol=1e-6)


def test_colour_probe_is_a_per_pixel_colour_classifier() -> None:
    # Two object colours on a grey canvas, three classes; held-out layouts differ, the colours do not.
    train = _split("colour", *_objects([RED, BLUE] * 4, [1, 2] * 4))
    evaluation = _split("colour", *_objects([BLUE, RED], [2, 1]))
    result = run_linear_probe(train, evaluation, torch.device("cpu"), epochs=30, lr=0.3, batch_size=8)
    assert result["miou"] == 1.0


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("baselines") / "scenes"
    generate_scenes(root, SceneConfig(size=64), num_train=6, num_eval=3, seed=0, workers=1)
    return root


def _common(demo_dir: Path, out: Path) -> list[str]:
    return ["--data-dir", str(demo_dir), "--image-size", "64", "--batch-size", "4", "--output-json", str(out)]


def test_report_prints_baseline_rows(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.pth"
    model = SlotCon("resnet18", dim_hidden=32, dim_out=16, num_prototypes=5)
    torch.save({"model": model.state_dict(), "args": {"arch": "resnet18", "teacher_temp": 0.07}}, checkpoint)
    out = tmp_path / "report.json"
    argv = ["--checkpoints", "random", "colour", "colour-hist", str(checkpoint), *_common(demo_dir, out)]
    assert report.main([*argv, "--epochs", "1"]) == 0
    models = json.loads(out.read_text())["models"]
    assert list(models) == ["random", "colour", "colour-hist", "tiny.pth"]
    for name in BASELINES:  # k-means with the model's prototype count, every column scored
        assert models[name]["unsupervised_seg"]["num_clusters"] == 5
        assert set(models[name]["summary"]) == set(models["tiny.pth"]["summary"])
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert [line.split()[0] for line in lines[header + 1 :]] == ["random", "colour", "colour-hist", "tiny.pth"]


def test_baseline_scores_follow_from_its_clusters(demo_dir: Path, tmp_path: Path) -> None:
    # eval.unsupervised_seg and eval.object_discovery fit the same k-means (train split, seed) as eval.report.
    args = [*_common(demo_dir, tmp_path / "x.json"), "--num-prototypes", "8"]
    assert unsupervised_seg.main(["--checkpoint", "colour", *args]) == 0
    seg = json.loads((tmp_path / "x.json").read_text())
    assert object_discovery.main(["--checkpoint", "colour", *args]) == 0
    discovery = json.loads((tmp_path / "x.json").read_text())
    assert report.main(["--checkpoints", "colour", *args, "--epochs", "1"]) == 0
    both = json.loads((tmp_path / "x.json").read_text())["models"]["colour"]
    assert both["unsupervised_seg"]["hungarian"]["miou"] == seg["hungarian"]["miou"]
    assert both["object_discovery"]["fg_ari"] == discovery["fg_ari"]


def test_bad_baseline_input_is_one_line(demo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["--checkpoints", "colour", "--data-dir", str(tmp_path / "nothing")]) == 2
    error = capsys.readouterr().err
    assert "no demo dataset" in error and error.count("\n") == 1
    assert report.main(["--checkpoints", "colour", "--data-dir", str(demo_dir), "--num-prototypes", "0"]) == 2
    error = capsys.readouterr().err
    assert "--num-prototypes must be positive" in error and error.count("\n") == 1
    assert report.main(["--checkpoints", "colour", "colour", "--data-dir", str(demo_dir)]) == 2
    assert "share a name" in capsys.readouterr().err


def test_probe_and_knn_clis_take_baselines(demo_dir: Path, tmp_path: Path) -> None:
    # The single-evaluation CLIs (the transfer table runs the probe's) and --max-train-images cutting the train split.
    out = tmp_path / "probe.json"
    argv = ["--checkpoint", "colour-hist", *_common(demo_dir, out), "--max-train-images", "2", "--epochs", "2"]
    assert linear_probe.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["num_train_images"] == 2 and result["num_eval_images"] == 3 and 0 <= result["miou"] <= 1
    assert knn.main(["--checkpoint", "colour", *_common(demo_dir, out)]) == 0
    assert json.loads(out.read_text())["top1"] > 0.5  # class colours: objects' mean colours give the class away


def test_clis_that_use_no_clusters_never_fit_the_kmeans(
    demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The probe, k-NN and dense retrieval read the features alone: a k-means fit there would be wasted work.
    def no_fit(self, train_features):
        raise AssertionError("the k-means was fitted")

    monkeypatch.setattr(ColourBaseline, "fit", no_fit)
    out = tmp_path / "x.json"
    assert linear_probe.main(["--checkpoint", "colour", *_common(demo_dir, out), "--epochs", "1"]) == 0
    assert knn.main(["--checkpoint", "colour", *_common(demo_dir, out)]) == 0
    assert dense_retrieval.main(["--checkpoint", "colour", *_common(demo_dir, out)]) == 0
    assert 0 <= json.loads(out.read_text())["miou"] <= 1
