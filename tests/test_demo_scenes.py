"""Tests for the Fashion-MNIST demo scene generator and reader (CPU, a few seconds)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.demo_scenes import (
    CLASS_NAMES,
    SceneConfig,
    generate_scenes,
    load_fashion_mnist,
    main,
    render_scene,
    scene_rng,
    split_source_pools,
)
from data.scene_folder import DemoDataError, SceneFolder

SMALL = {"config": SceneConfig(size=64), "num_train": 12, "num_eval": 6, "workers": 1}


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def fashion() -> tuple[np.ndarray, np.ndarray]:
    return load_fashion_mnist()


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "scenes"
    generate_scenes(root, seed=0, **SMALL)
    return root


def test_load_fashion_mnist(fashion: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = fashion
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.array_equal(np.bincount(labels), np.full(10, 1000))  # the test split is balanced
    assert (images > 0).any(axis=(1, 2)).all()
    assert len(CLASS_NAMES) == 10


def test_load_fashion_mnist_bad_file_names_path(tmp_path: Path) -> None:
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 5))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DemoDataError, match=r"t10k-images-idx3-ubyte\.gz"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(DemoDataError, match="file not found"):
        load_fashion_mnist(tmp_path / "missing")


def test_same_seed_identical_bytes_different_seed_differs(tmp_path: Path, demo_root: Path) -> None:
    again = tmp_path / "again"
    # Two worker processes instead of one: the output must not depend on the parallelism.
    generate_scenes(again, seed=0, **{**SMALL, "workers": 2})
    assert _all_files(again) == _all_files(demo_root)

    other = tmp_path / "other"
    generate_scenes(other, seed=1, **SMALL)
    first = SceneFolder(demo_root, "train")
    second = SceneFolder(other, "train")
    for index in range(len(first)):
        assert not np.array_equal(np.asarray(first[index][0]), np.asarray(second[index][0]))


def test_label_maps_are_consistent(demo_root: Path) -> None:
    for split in ("train", "eval"):
        scenes = SceneFolder(demo_root, split)
        for index in range(len(scenes)):
            _, semantic, instance = scenes[index]
            record = scenes.records[index]
            assert semantic.max() <= 10
            assert np.array_equal(semantic > 0, instance > 0)
            ids = np.unique(instance[instance > 0])
            # Ids are exactly 1..n in paint order, every painted item is still visible.
            assert ids.tolist() == list(range(1, len(record["labels"]) + 1))
            assert 1 <= len(ids) <= 4
            for instance_id in ids:
                classes = np.unique(semantic[instance == instance_id])
                assert classes.size == 1, f"{split} {index}: instance {instance_id} spans {classes}"


def test_instance_class_matches_source_label(demo_root: Path, fashion: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = fashion
    for split in ("train", "eval"):
        scenes = SceneFolder(demo_root, split)
        for index in range(len(scenes)):
            _, semantic, instance = scenes[index]
            record = scenes.records[index]
            assert record["labels"] == [int(labels[s]) for s in record["source_indices"]]
            for instance_id, source in enumerate(record["source_indices"], start=1):
                drawn = np.unique(semantic[instance == instance_id])
                assert drawn.tolist() == [int(labels[source]) + 1]


def test_train_and_eval_use_disjoint_items(demo_root: Path) -> None:
    train_pool, eval_pool = split_source_pools(10000, seed=0, eval_fraction=0.2)
    assert len(train_pool) == 8000 and len(eval_pool) == 2000
    assert np.intersect1d(train_pool, eval_pool).size == 0
    assert np.array_equal(np.union1d(train_pool, eval_pool), np.arange(10000))

    used = {}
    for split in ("train", "eval"):
        records = SceneFolder(demo_root, split).records
        used[split] = {s for record in records for s in record["source_indices"]}
        assert all(len(set(r["source_indices"])) == len(r["source_indices"]) for r in records)
    assert used["train"] and used["eval"]
    assert used["train"].isdisjoint(used["eval"])
    assert used["train"] <= set(train_pool.tolist())
    assert used["eval"] <= set(eval_pool.tolist())


def test_files_match_render_scene(demo_root: Path, fashion: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = fashion
    train_pool, _ = split_source_pools(len(images), seed=0, eval_fraction=0.2)
    scene = render_scene(scene_rng(0, "train", 3), images, labels, train_pool, SceneConfig(size=64))
    image, semantic, instance = SceneFolder(demo_root, "train")[3]
    assert np.array_equal(np.asarray(image), scene.image)
    assert np.array_equal(semantic, scene.semantic)
    assert np.array_equal(instance, scene.instance)


def test_single_known_item_is_drawn(fashion: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = fashion
    assert labels[0] == 9  # item 0 of the test split is an ankle boot
    config = SceneConfig(size=64, min_items=1, max_items=1)
    scene = render_scene(np.random.default_rng(123), images, labels, [0], config)
    assert scene.source_indices == [0] and scene.labels == [9]
    mask = scene.instance == 1
    assert mask.sum() > 100
    assert np.array_equal(scene.semantic, np.where(mask, 10, 0))
    # Outside the item the scene is exactly the background fill; inside, every pixel differs clearly.
    assert np.array_equal(scene.image[~mask], scene.background[~mask])
    distance = np.linalg.norm(scene.image[mask].astype(float) - scene.background[mask].astype(float), axis=1)
    assert distance.min() > 20


def test_hand_made_items_occlude_exactly() -> None:
    # Two synthetic solid squares (class 0 bright, class 3 dim): every upscaled mask is a full square.
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[0] = 255
    images[1] = 120
    labels = np.array([0, 3])
    config = SceneConfig(size=64, min_items=2, max_items=2)
    for seed in range(8):
        scene = render_scene(np.random.default_rng(seed), images, labels, [0, 1], config)
        assert len(scene.source_indices) == 2
        boxes = []
        for instance_id in (1, 2):
            mask = scene.instance == instance_id
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            boxes.append((slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)))
            # One flat colour per item (constant source intensity), so the pixels were drawn by it.
            assert np.unique(scene.image[mask], axis=0).shape[0] == 1
        # The later item is a complete square on top; the earlier one is only hidden where it lies.
        assert (scene.instance[boxes[1]] == 2).all()
        assert np.isin(scene.instance[boxes[0]], [1, 2]).all()
        for instance_id, source in enumerate(scene.source_indices, start=1):
            assert (scene.semantic[scene.instance == instance_id] == labels[source] + 1).all()


def test_reader_shapes_and_paths(demo_root: Path) -> None:
    meta = json.loads((demo_root / "meta.json").read_text())
    assert meta["counts"] == {"train": 12, "eval": 6}
    assert meta["class_names"] == list(CLASS_NAMES)
    for split, count in meta["counts"].items():
        scenes = SceneFolder(demo_root, split)
        assert len(scenes) == count == len(scenes.records)
        assert scenes.image_paths == sorted(scenes.image_paths)
        image, semantic, instance = scenes[0]
        assert image.mode == "RGB" and image.size == (64, 64)
        assert semantic.shape == instance.shape == (64, 64)
        assert semantic.dtype == instance.dtype == np.uint8


def test_reader_missing_root_error(tmp_path: Path) -> None:
    with pytest.raises(DemoDataError, match=r"python -m data\.demo_scenes --out-dir") as info:
        SceneFolder(tmp_path / "nowhere")
    assert "\n" not in str(info.value) and "nowhere" in str(info.value)
    with pytest.raises(ValueError, match="split"):
        SceneFolder(tmp_path, "test")


def test_idempotent_and_regenerates_on_change(tmp_path: Path) -> None:
    root = tmp_path / "scenes"
    first = generate_scenes(root, SceneConfig(size=48), num_train=4, num_eval=2, workers=1)
    assert first.generated
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    second = generate_scenes(root, SceneConfig(size=48), num_train=4, num_eval=2, workers=1)
    assert not second.generated
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == stamps

    third = generate_scenes(root, SceneConfig(size=48), num_train=2, num_eval=2, workers=1)
    assert third.generated
    assert len(SceneFolder(root, "train")) == 2  # stale scenes from the larger run are gone

    # A half-deleted dataset is regenerated even though meta.json still matches.
    next(iter((root / "eval" / "images").glob("*.png"))).unlink()
    assert generate_scenes(root, SceneConfig(size=48), num_train=2, num_eval=2, workers=1).generated


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(DemoDataError, match="not a demo-scenes directory"):
        generate_scenes(tmp_path, SceneConfig(size=48), num_train=1, num_eval=1, workers=1)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out-dir", str(tmp_path / "cli"), "--num-train", "2", "--num-eval", "1", "--size", "48"]
    assert main([*argv, "--workers", "1"]) == 0
    assert "wrote 2 train + 1 eval scenes" in capsys.readouterr().out
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="size must be at least 32"):
        main([*argv, "--size", "16"])
    assert Image.open(tmp_path / "cli" / "train" / "images" / "train_00000.png").size == (48, 48)
