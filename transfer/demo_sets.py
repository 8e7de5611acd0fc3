"""Transfer sets from the demo scenes: COCO-format instances (detectron2 / torchvision) and semantic labels (mmseg).

    python -m transfer.demo_sets --demo-dir demo_data --out-dir output/transfer_demo/data --num-train 400 --num-val 100

The demo folder (``python -m data.demo_scenes``, or any folder in its layout) is read by
``data.scene_folder.SceneFolder``: per split, images with their semantic and instance maps, and the class names.
Only those files are read, so a change in how the scenes are drawn changes nothing here. Written to ``--out-dir``:

* ``coco/{train,val}.json``: COCO instances whose ``file_name``s are relative to the split's ``images/``
  folder (nothing is copied). Each instance becomes polygons (outer outlines of its visible parts; an
  instance's class is the majority semantic label under it), its pixel area and its tight box.
* ``seg/{train,val}.txt`` (scene names) and ``seg/classes.txt`` ("background" + the classes): with the
  split's ``images/`` and ``semantic/`` folders, an mmseg ``BaseSegDataset`` (see
  ``segmentation/configs/_base_/datasets/image_folder.py``).
* ``sets.json``: where everything is (folders, class names, counts), for the trainers' command lines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from data.scene_folder import DemoDataError, SceneFolder, find_split
from utils.atomic import write_text_atomic

TRAIN_SPLITS = ("train",)
VAL_SPLITS = ("val", "eval", "test")
# Outlines are traced on the mask upsampled 2x: the polygon then runs along pixel edges, not through the
# centres of the boundary pixels (which loses about 0.5 px all around: mask IoU 0.91 instead of 0.99 at 128 px).
_TRACE_SCALE = 2
_MIN_PART_PIXELS = 4


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons ``[x0, y0, x1, y1, ...]`` of the outer outline of each part of a binary mask."""
    import cv2

    up = np.kron(mask.astype(np.uint8), np.ones((_TRACE_SCALE, _TRACE_SCALE), np.uint8))
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / _TRACE_SCALE
        if len(points) >= 3 and cv2.contourArea(contour) >= _MIN_PART_PIXELS * _TRACE_SCALE**2:
            polygons.append([round(float(v), 2) for v in points.ravel()])
    return polygons


def instance_annotations(semantic: np.ndarray, instance: np.ndarray) -> list[dict[str, Any]]:
    """One COCO annotation (without ids) per instance id of ``instance``; category = semantic label (1-based)."""
    annotations = []
    for instance_id in np.unique(instance):
        if instance_id == 0:
            continue
        mask = instance == instance_id
        labels = semantic[mask]
        labels = labels[labels > 0]
        if labels.size == 0:
            continue  # an instance painted on background label only: nothing to detect
        polygons = mask_polygons(mask)
        if not polygons:
            continue  # only specks left visible
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        annotations.append(
            {
                "category_id": int(np.bincount(labels).argmax()),
                "segmentation": polygons,
                "area": int(mask.sum()),
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                "iscrowd": 0,
            }
        )
    return annotations


def coco_instances(scenes: SceneFolder, limit: int | None) -> dict[str, Any]:
    """The COCO instances of the first ``limit`` scenes (all with None) of a split."""
    split, class_names = scenes.root / scenes.split, scenes.class_names
    images, annotations = [], []
    for index, name in enumerate(scenes.names[:limit]):
        image_id = index + 1
        semantic = scenes.read_map(scenes.semantic_paths[index])
        instance = scenes.read_map(scenes.instance_paths[index])
        if semantic.shape != instance.shape:
            raise DemoDataError(
                f"{split}/{{semantic,instance}}/{name}.png: shapes {semantic.shape} and {instance.shape} differ"
            )
        if semantic.max() > len(class_names):
            raise DemoDataError(
                f"{split}/semantic/{name}.png: label {semantic.max()} but only {len(class_names)} classes"
            )
        height, width = semantic.shape
        images.append({"id": image_id, "file_name": f"{name}.png", "height": height, "width": width})
        for annotation in instance_annotations(semantic, instance):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    categories = [{"id": k, "name": name, "supercategory": "object"} for k, name in enumerate(class_names, start=1)]
    return {
        "info": {"description": f"demo scenes {split}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file holds it already: a finished set is left as is (a run reading it meanwhile,
    e.g. of another seed's grid, never sees it half written) and keeps its date."""
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    write_text_atomic(path, text)


def write_transfer_sets(
    demo_dir: str | Path, out_dir: str | Path, num_train: int | None = None, num_val: int | None = None
) -> dict[str, Any]:
    """Write the COCO and mmseg sets (first ``num_train`` / ``num_val`` scenes by name); return ``sets.json``."""
    demo_dir, out_dir = Path(demo_dir), Path(out_dir)
    splits = {
        name: SceneFolder(demo_dir, find_split(demo_dir, candidates))
        for name, candidates in (("train", TRAIN_SPLITS), ("val", VAL_SPLITS))
    }
    class_names = splits["train"].class_names
    (out_dir / "coco").mkdir(parents=True, exist_ok=True)
    (out_dir / "seg").mkdir(parents=True, exist_ok=True)
    sets: dict[str, Any] = {
        "demo_dir": str(demo_dir.resolve()),
        "thing_classes": class_names,
        "seg_classes": ["background", *class_names],
        "splits": {},
    }
    for split_name, limit in (("train", num_train), ("val", num_val)):
        scenes = splits[split_name]
        split, names = scenes.root / scenes.split, scenes.names[:limit]
        coco = coco_instances(scenes, limit)
        json_file = out_dir / "coco" / f"{split_name}.json"
        write_if_changed(json_file, json.dumps(coco, separators=(",", ":")) + "\n")
        write_if_changed(out_dir / "seg" / f"{split_name}.txt", "\n".join(names) + "\n")
        sets["splits"][split_name] = {
            "images": str((split / "images").resolve()),
            "labels": str((split / "semantic").resolve()),
            "coco_json": str(json_file.resolve()),
            "seg_list": str((out_dir / "seg" / f"{split_name}.txt").resolve()),
            "num_images": len(names),
            "num_instances": len(coco["annotations"]),
        }
    write_if_changed(out_dir / "seg" / "classes.txt", "\n".join(sets["seg_classes"]) + "\n")
    write_if_changed(out_dir / "sets.json", json.dumps(sets, indent=1) + "\n")
    return sets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", default="demo_data", help="demo scenes (python -m data.demo_scenes)")
    parser.add_argument("--out-dir", default="output/transfer_demo/data")
    parser.add_argument("--num-train", type=int, default=None, help="first N training scenes (default: all)")
    parser.add_argument("--num-val", type=int, default=None, help="first N validation scenes (default: all)")
    args = parser.parse_args(argv)
    try:
        sets = write_transfer_sets(args.demo_dir, args.out_dir, args.num_train, args.num_val)
    except DemoDataError as e:
        raise SystemExit(str(e)) from None
    for name, split in sets["splits"].items():
        print(f"{name}: {split['num_images']} images, {split['num_instances']} instances -> {split['coco_json']}")
    print(f"{len(sets['thing_classes'])} classes; mmseg lists and classes.txt in {Path(args.out_dir) / 'seg'}")


if __name__ == "__main__":
    main()
