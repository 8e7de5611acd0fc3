"""data.scene_folder: the one reader of the demo-scene layout, for generated folders and folders made by hand."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.demo_scenes import SceneConfig, generate_scenes
from data.scene_folder import DemoDataError, SceneFolder, find_split


def _scene(split: Path, name: str, label: int) -> None:
    for kind in ("images", "semantic", "instance"):
        (split / kind).mkdir(parents=True, exist_ok=True)
    semantic = np.zeros((8, 8), np.uint8)
    semantic[2:5, 2:5] = label
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(split / "images" / f"{name}.png")
    Image.fromarray(semantic).save(split / "semantic" / f"{name}.png")
    Image.fromarray((semantic > 0).astype(np.uint8)).save(split / "instance" / f"{name}.png")


def test_a_folder_made_by_hand_reads_with_class_names_from_its_labels(tmp_path):
    _scene(tmp_path / "val", "b", 2)
    _scene(tmp_path / "val", "a", 4)
    assert find_split(tmp_path, ("eval", "val")) == "val"
    scenes = SceneFolder(tmp_path, "val")
    assert scenes.names == ["a", "b"] and scenes.records is None
    assert scenes.class_names == ["class_1", "class_2", "class_3", "class_4"]
    image, semantic, instance = scenes[1]
    assert image.size == (8, 8) and semantic.max() == 2 and instance.max() == 1
    (tmp_path / "meta.json").write_text(json.dumps({"class_names": ["w", "x", "y", "z"]}))
    assert SceneFolder(tmp_path, "val").class_names == ["w", "x", "y", "z"]


def test_missing_maps_and_missing_splits_are_one_line(tmp_path):
    _scene(tmp_path / "train", "a", 1)
    (tmp_path / "train" / "instance" / "a.png").unlink()
    with pytest.raises(DemoDataError, match=r"1 images without semantic/instance maps \(e.g. a\)"):
        SceneFolder(tmp_path, "train")
    with pytest.raises(DemoDataError, match=r"no eval/val split .* python -m data.demo_scenes --out-dir"):
        find_split(tmp_path, ("eval", "val"))


def test_a_generated_folder_is_checked_against_its_record(tmp_path):
    generate_scenes(tmp_path / "demo", SceneConfig(size=48), num_train=3, num_eval=2, workers=1)
    scenes = SceneFolder(tmp_path / "demo", "train")
    assert len(scenes) == len(scenes.records) == 3 and len(scenes.class_names) == 10
    (tmp_path / "demo" / "train" / "images" / f"{scenes.names[0]}.png").unlink()
    with pytest.raises(DemoDataError, match="expected 3 images, found 2"):
        SceneFolder(tmp_path / "demo", "train")
