"""Tests for the Pascal VOC 2012 and ADE20K readers of eval/datasets.py, on tiny fixtures written in the datasets'
own layouts (CPU, about a second)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval import dense_retrieval
from eval.datasets import ADE20K, ADE20K_CLASSES, IGNORE_INDEX, VOC_CLASSES, EvalDataError, PascalVOC, build_dataset

TINY_MODEL = ["--arch", "resnet18", "--dim-hidden", "32", "--dim-out", "16", "--num-prototypes", "8"]


def _label(seed: int, values: list[int], shape: tuple[int, int] = (4, 6)) -> np.ndarray:
    return np.random.default_rng(seed).choice(values, size=shape).astype(np.uint8)


def _palette_png(label: np.ndarray, path: Path) -> None:
    # VOC's SegmentationClass PNGs are palette images: the stored index is the class, the palette only colours it.
    image = Image.fromarray(label, mode="P")
    palette = np.random.default_rng(0).integers(0, 256, size=768).astype(np.uint8)
    image.putpalette(palette.tolist())
    image.save(path)


def _write_voc(root: Path, labels: dict[str, np.ndarray], train: list[str], val: list[str]) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    for image_id, label in labels.items():
        Image.new("RGB", label.shape[::-1], (20, 140, 60)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        _palette_png(label, voc / "SegmentationClass" / f"{image_id}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text("".join(f"{i}\n" for i in train))
    (voc / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in val))
    return voc


def _nearest_to_12(label: np.ndarray) -> np.ndarray:
    """A 4 x 6 map resized whole to 12 x 12: every row repeated 3 times, every column twice."""
    return np.repeat(np.repeat(label, 3, axis=0), 2, axis=1)


VOC_VALUES = [0, 1, 7, 15, 20, IGNORE_INDEX]


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    labels = {f"2007_00000{i}": _label(i, VOC_VALUES) for i in range(4)}
    _write_voc(tmp_path, labels, train=["2007_000000", "2007_000001"], val=["2007_000002", "2007_000003"])
    return tmp_path


def test_voc_reads_palette_indices_and_keeps_ignore(voc_root: Path) -> None:
    dataset = build_dataset("voc", voc_root, "eval", 12)
    assert len(dataset) == 2 and dataset.num_classes == 21 and dataset.class_names == list(VOC_CLASSES)
    assert dataset.class_names[0] == "background" and dataset.class_names[20] == "tvmonitor"
    image, label, instance = dataset[1]
    assert instance is None and image.shape == (3, 12, 12) and image.dtype == torch.uint8
    assert np.array_equal(label.numpy(), _nearest_to_12(_label(3, VOC_VALUES)))  # values kept, 255 included
    assert (label == IGNORE_INDEX).any()
    assert len(build_dataset("voc", voc_root, "train", 12)) == 2


@pytest.mark.parametrize("where", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_data_dir_may_name_any_level(voc_root: Path, where: str) -> None:
    dataset = PascalVOC(voc_root / where if where else voc_root, "eval", 12)
    assert [p.name for p, _ in dataset.pairs] == ["2007_000002.jpg", "2007_000003.jpg"]


def test_voc_aug_train_set_prefers_segmentation_class_aug(voc_root: Path) -> None:
    voc = voc_root / "VOCdevkit" / "VOC2012"
    (voc / "SegmentationClassAug").mkdir()
    aug_label = _label(9, [0, 3, 4, IGNORE_INDEX])
    for image_id in ("2008_000100", "2007_000001"):  # an SBD-only image, and a train image relabelled
        Image.new("RGB", (6, 4)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        Image.fromarray(aug_label, mode="L").save(voc / "SegmentationClassAug" / f"{image_id}.png")
    # The list also names a val image, which must stay out of the train split.
    (voc / "ImageSets/Segmentation/train_aug.txt").write_text("2008_000100\n2007_000001\n2007_000002\n")
    dataset = build_dataset("voc_aug", voc_root, "train", 12)
    assert [(p.stem, q.parent.name) for p, q in dataset.pairs] == [
        ("2007_000000", "SegmentationClass"),
        ("2007_000001", "SegmentationClassAug"),
        ("2008_000100", "SegmentationClassAug"),
    ]
    assert np.array_equal(dataset[2][1].numpy(), _nearest_to_12(aug_label))
    assert len(build_dataset("voc", voc_root, "train", 12)) == 2  # plain voc ignores the aug set


def test_voc_wrong_layouts_are_one_line_errors(tmp_path: Path, voc_root: Path) -> None:
    with pytest.raises(EvalDataError, match="no Pascal VOC 2012 here") as error:
        PascalVOC(tmp_path / "elsewhere", "eval", 12)
    assert "\n" not in str(error.value)
    with pytest.raises(EvalDataError, match="voc_aug needs SegmentationClassAug"):
        PascalVOC(voc_root, "train", 12, aug=True)
    voc = voc_root / "VOCdevkit" / "VOC2012"
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000002\n2009_999999\n")
    with pytest.raises(EvalDataError, match=r"2009_999999\.jpg: listed for eval but missing"):
        PascalVOC(voc_root, "eval", 12)
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000002\n")
    _palette_png(np.full((4, 6), 42, dtype=np.uint8), voc / "SegmentationClass" / "2007_000002.png")
    with pytest.raises(EvalDataError, match=r"label values \[42\] are not classes"):
        PascalVOC(voc_root, "eval", 12)[0]
    (voc / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(EvalDataError, match="cannot read the image list"):
        PascalVOC(voc_root, "eval", 12)


def _write_ade(root: Path, labels: dict[str, dict[str, np.ndarray]]) -> Path:
    ade = root / "ADEChallengeData2016"
    for split, items in labels.items():
        (ade / "images" / split).mkdir(parents=True)
        (ade / "annotations" / split).mkdir(parents=True)
        for name, label in items.items():
            Image.new("RGB", label.shape[::-1], (200, 10, 10)).save(ade / "images" / split / f"{name}.jpg")
            Image.fromarray(label, mode="L").save(ade / "annotations" / split / f"{name}.png")
    return ade


ADE_VALUES = [0, 1, 2, 75, 149, 150]


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    _write_ade(tmp_path, {
        "training": {f"ADE_train_0000000{i}": _label(10 + i, ADE_VALUES) for i in (1, 2, 3)},
        "validation": {"ADE_val_00000001": _label(20, ADE_VALUES)},
    })  # fmt: skip
    return tmp_path


@pytest.mark.parametrize("where", ["", "ADEChallengeData2016"])
def test_ade20k_reduces_zero_label(ade_root: Path, where: str) -> None:
    dataset = build_dataset("ade20k", ade_root / where if where else ade_root, "eval", 12)
    assert len(dataset) == 1 and dataset.num_classes == 150 and dataset.class_names == list(ADE20K_CLASSES)
    assert dataset.class_names[0] == "wall" and dataset.class_names[149] == "flag"
    _, label, instance = dataset[0]
    raw = _nearest_to_12(_label(20, ADE_VALUES))
    # 0 ("other") is ignored; class v is stored as v - 1, so 150 -> 149 and 1 -> 0.
    expected = np.where(raw == 0, IGNORE_INDEX, raw.astype(np.int64) - 1)
    assert instance is None and np.array_equal(label.numpy(), expected)
    assert {0, 149, IGNORE_INDEX} <= set(label.unique().tolist())
    train = build_dataset("ade20k", ade_root, "train", 12)
    assert [p.stem for p, _ in train.pairs] == ["ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003"]


def test_ade20k_wrong_layouts_are_one_line_errors(tmp_path: Path, ade_root: Path) -> None:
    with pytest.raises(EvalDataError, match="no ADE20K here") as error:
        ADE20K(tmp_path / "nowhere", "eval", 12)
    assert "\n" not in str(error.value)
    ade = ade_root / "ADEChallengeData2016"
    (ade / "annotations/training/ADE_train_00000002.png").unlink()
    with pytest.raises(EvalDataError, match=r"ADE_train_00000002\.png: missing \(1 of 3 labels are\)"):
        ADE20K(ade_root, "train", 12)
    Image.fromarray(np.full((4, 6), 151, dtype=np.uint8), mode="L").save(
        ade / "annotations/validation/ADE_val_00000001.png"
    )
    with pytest.raises(EvalDataError, match=r"label values \[151\] are not classes"):
        ADE20K(ade_root, "eval", 12)[0]
    for image in (ade / "images/validation").iterdir():
        image.unlink()
    with pytest.raises(EvalDataError, match=r"no \.jpg images"):
        ADE20K(ade_root, "eval", 12)


def test_retrieval_cli_on_voc_layout_and_one_line_errors(
    voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "voc.json"
    common = ["--checkpoint", "random", *TINY_MODEL, "--image-size", "64", "--output-json", str(out)]
    assert dense_retrieval.main([*common, "--dataset", "voc", "--data-dir", str(voc_root)]) == 0
    result = json.loads(out.read_text())
    assert result["num_classes"] == 21 and result["num_train_images"] == 2 and result["num_eval_images"] == 2
    assert result["memory_size"] == dense_retrieval.PROTOCOL_MEMORY_SIZE and result["patches_per_image"] is None
    capsys.readouterr()
    for dataset, root in (("voc", tmp_path / "empty"), ("ade20k", voc_root)):
        assert dense_retrieval.main([*common, "--dataset", dataset, "--data-dir", str(root)]) == 2
        error = capsys.readouterr().err
        assert "error: " in error and error.count("\n") == 1
