"""The demo-scene folder format, read in one place (training's ``--dataset demo``, the evaluations, the transfer
sets all read it through ``SceneFolder``)::

    ROOT/meta.json                        the generator's record (``class_names``, ``counts``, parameters)
    ROOT/SPLIT/images/NAME.png            RGB scene
    ROOT/SPLIT/semantic/NAME.png          uint8: 0 = background, k + 1 = class k
    ROOT/SPLIT/instance/NAME.png          uint8: 0 = background, 1..n = the objects
    ROOT/SPLIT/scenes.json                per scene, the sources of its objects (written by data.demo_scenes)

A folder in this layout made by hand (no ``meta.json``, or one without the generator's fields) reads too: its
class names are then ``meta.json``'s ``class_names`` or class_1..class_K from the largest label. A folder that
``data.demo_scenes`` wrote is also checked against its own record (the scene counts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data.images import UnreadableImageError, read_label_map

META_NAME = "meta.json"
KINDS = ("images", "semantic", "instance")
GENERATOR_NAME = "data.demo_scenes"


class DemoDataError(ValueError):
    """Missing or malformed demo data; the message is one line meant to be shown to the user as is."""


def make_hint(root: Path) -> str:
    return f"create it with: python -m data.demo_scenes --out-dir {root}"


def read_meta(root: str | Path) -> dict[str, Any] | None:
    """``ROOT/meta.json`` as a dict, or None if it is missing or not a JSON object."""
    try:
        meta = json.loads((Path(root) / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def find_split(root: str | Path, candidates: tuple[str, ...]) -> str:
    """The first of ``candidates`` that is a split folder of ``root`` (images/, semantic/ and instance/ in it)."""
    root = Path(root)
    for name in candidates:
        if all((root / name / kind).is_dir() for kind in KINDS):
            return name
    raise DemoDataError(
        f"{root}: no {'/'.join(candidates)} split with images/, semantic/ and instance/ folders; {make_hint(root)}"
    )


class SceneFolder:
    """One split of a demo-scene folder: ``scenes[i]`` is ``(PIL RGB image, semantic, instance)``, the two maps
    uint8 [H, W]; ``names``, ``image_paths``, ``semantic_paths``, ``instance_paths`` in sorted name order;
    ``class_names`` without background; ``records[i]`` the generator's record of scene i (None without one).
    """

    def __init__(self, root: str | Path, split: str = "train") -> None:
        self.root, self.split = Path(root), split
        folder = self.root / split
        self.meta = read_meta(self.root) or {}
        generated = self.meta.get("generator") == GENERATOR_NAME
        if not all((folder / kind).is_dir() for kind in KINDS):
            raise DemoDataError(
                f"no demo dataset at {self.root}: its {split!r} split lacks images/, semantic/ and instance/ folders; "
                f"{make_hint(self.root)}"
            )
        self.names = sorted(p.stem for p in (folder / "images").glob("*.png"))
        if not self.names:
            raise DemoDataError(f"{folder}/images: no .png scenes; {make_hint(self.root)}")
        self.image_paths = [folder / "images" / f"{n}.png" for n in self.names]
        self.semantic_paths = [folder / "semantic" / f"{n}.png" for n in self.names]
        self.instance_paths = [folder / "instance" / f"{n}.png" for n in self.names]
        missing = [
            n
            for n, s, i in zip(self.names, self.semantic_paths, self.instance_paths, strict=True)
            if not (s.is_file() and i.is_file())
        ]
        if missing:
            raise DemoDataError(f"{folder}: {len(missing)} images without semantic/instance maps (e.g. {missing[0]})")
        self.records: list[dict[str, Any]] | None = None
        if generated:
            self._check_against_record(folder)
        self.class_names = self._class_names()

    def _check_against_record(self, folder: Path) -> None:
        expected = self.meta.get("counts", {}).get(self.split)
        if expected is not None and len(self.names) != expected:
            raise DemoDataError(
                f"{folder}: expected {expected} images, found {len(self.names)}; regenerate with: "
                f"python -m data.demo_scenes --out-dir {self.root} --force"
            )
        try:
            self.records = json.loads((folder / "scenes.json").read_text())
        except (OSError, ValueError) as exc:
            raise DemoDataError(
                f"{folder / 'scenes.json'}: cannot read ({exc}); {make_hint(self.root)} --force"
            ) from None

    def _class_names(self) -> list[str]:
        names = self.meta.get("class_names")
        if isinstance(names, list) and names:
            return [str(n) for n in names]
        largest = max(int(self.read_map(path).max()) for path in self.semantic_paths[:200])
        return [f"class_{k}" for k in range(1, largest + 1)]

    def __len__(self) -> int:
        return len(self.names)

    @staticmethod
    def read_map(path: Path) -> np.ndarray:
        """A label map (uint8 [H, W]); ``DemoDataError`` naming the file if it is not one."""
        try:
            return read_label_map(path)
        except UnreadableImageError as e:
            raise DemoDataError(str(e)) from None

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray, np.ndarray]:
        path = self.image_paths[index]
        try:
            with Image.open(path) as handle:
                image = handle.convert("RGB")
        except OSError as exc:
            raise DemoDataError(f"{path}: cannot read image ({exc})") from None
        return image, self.read_map(self.semantic_paths[index]), self.read_map(self.instance_paths[index])
