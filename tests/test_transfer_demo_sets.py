"""transfer/demo_sets.py: COCO instances and mmseg lists from demo-scene folders (hand-built and generated)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfer import demo_sets


def _write_scene(split: Path, name: str, semantic: np.ndarray, instance: np.ndarray) -> None:
    for kind in ("images", "semantic", "instance"):
        (split / kind).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*semantic.shape, 3), 90, np.uint8)).save(split / "images" / f"{name}.png")
    Image.fromarray(semantic).save(split / "semantic" / f"{name}.png")
    Image.fromarray(instance).save(split / "instance" / f"{name}.png")


def _hand_built(root: Path) -> dict[str, np.ndarray]:
    """Two objects of known extent in a 40x48 scene: a rectangle (class 2), an L shape (class 3) it occludes."""
    semantic = np.zeros((40, 48), np.uint8)
    instance = np.zeros((40, 48), np.uint8)
    instance[5:25, 4:20], semantic[5:25, 4:20] = 1, 3  # L shape: a 20x16 block ...
    instance[5:15, 12:20], semantic[5:15, 12:20] = 0, 0  # ... with its top right corner cut away
    instance[20:36, 26:44], semantic[20:36, 26:44] = 2, 2  # a 16x18 rectangle
    semantic[21, 27] = 5  # one mislabelled pixel: the majority label still wins
    _write_scene(root / "train", "train_00000", semantic, instance)
    _write_scene(root / "eval", "eval_00000", semantic, instance)
    (root / "meta.json").write_text(json.dumps({"class_names": ["a", "b", "c", "d", "e"]}))
    return {"semantic": semantic, "instance": instance}


def test_instances_have_exact_boxes_areas_classes_and_tight_polygons(tmp_path):
    from pycocotools import mask as mask_utils

    maps = _hand_built(tmp_path / "demo")
    sets = demo_sets.write_transfer_sets(tmp_path / "demo", tmp_path / "out")
    coco = json.loads(Path(sets["splits"]["val"]["coco_json"]).read_text())
    assert [c["name"] for c in coco["categories"]] == ["a", "b", "c", "d", "e"]
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5]  # semantic label k + 1 = category id
    assert coco["images"] == [{"id": 1, "file_name": "eval_00000.png", "height": 40, "width": 48}]
    by_class = {a["category_id"]: a for a in coco["annotations"]}
    assert set(by_class) == {2, 3}
    assert by_class[2]["bbox"] == [26, 20, 18, 16] and by_class[2]["area"] == 16 * 18
    assert by_class[3]["bbox"] == [4, 5, 16, 20] and by_class[3]["area"] == 20 * 16 - 10 * 8
    for annotation in coco["annotations"]:
        drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(annotation["segmentation"], 40, 48)))
        truth = maps["instance"] == (1 if annotation["category_id"] == 3 else 2)
        iou = (drawn & truth).sum() / (drawn | truth).sum()
        assert iou > 0.97, iou  # polygons along pixel edges: rasterised, they give back the mask
    assert (tmp_path / "out" / "seg" / "classes.txt").read_text().split("\n")[:2] == ["background", "a"]
    assert (tmp_path / "out" / "seg" / "train.txt").read_text() == "train_00000\n"
    assert sets["splits"]["train"]["labels"].endswith("semantic")


def test_generated_demo_scenes_become_consistent_sets(tmp_path):
    from data.demo_scenes import generate_scenes

    generate_scenes(tmp_path / "demo", num_train=6, num_eval=3, size=64, workers=1)
    sets = demo_sets.write_transfer_sets(tmp_path / "demo", tmp_path / "out", num_train=4)
    train = json.loads(Path(sets["splits"]["train"]["coco_json"]).read_text())
    assert len(train["images"]) == 4 and sets["splits"]["val"]["num_images"] == 3
    assert len(train["categories"]) == 10 and sets["seg_classes"][0] == "background"
    for image in train["images"]:  # every instance of the maps, with the class the semantic map gives it
        name = Path(image["file_name"]).stem
        instance = np.asarray(Image.open(tmp_path / "demo" / "train" / "instance" / f"{name}.png"))
        semantic = np.asarray(Image.open(tmp_path / "demo" / "train" / "semantic" / f"{name}.png"))
        annotations = [a for a in train["annotations"] if a["image_id"] == image["id"]]
        ids = [i for i in np.unique(instance) if i and (instance == i).sum() >= 4]
        assert len(annotations) == len(ids)
        assert sorted(a["category_id"] for a in annotations) == sorted(
            int(np.bincount(semantic[instance == i]).argmax()) for i in ids
        )
        assert sorted(a["area"] for a in annotations) == sorted(int((instance == i).sum()) for i in ids)


def test_bad_demo_folders_give_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        demo_sets.main(["--demo-dir", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path / "out")])
    message = str(excinfo.value.code)
    assert "\n" not in message and "python -m data.demo_scenes" in message
    _hand_built(tmp_path / "demo")
    (tmp_path / "demo" / "eval" / "instance" / "eval_00000.png").unlink()
    with pytest.raises(SystemExit) as excinfo:
        demo_sets.main(["--demo-dir", str(tmp_path / "demo"), "--out-dir", str(tmp_path / "out")])
    assert "eval" in str(excinfo.value.code) and "\n" not in str(excinfo.value.code)
