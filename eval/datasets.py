"""Evaluation datasets: the demo scenes, COCO-Stuff-27 (PiCIE's curated split), Pascal VOC 2012 and ADE20K.

Every dataset yields ``(image, semantic, instance)``: a uint8 RGB tensor [3, S, S] (normalised later, on
the device), a uint8 label map [S, S] with ``IGNORE_INDEX`` for unlabelled pixels, and a uint8
instance map [S, S] (0 = none) or ``None`` where the dataset has no instances.

Files are read by ``data.images`` (the rules training uses); an unreadable one stops the evaluation with
``UnreadableImageError``'s one line, as a score over a silently smaller set would not be comparable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from data.images import read_label_map, read_rgb, resize_center_crop
from data.scene_folder import SceneFolder

IGNORE_INDEX = 255
DATASETS = ("demo", "cocostuff27", "voc", "voc_aug", "ade20k")
# PiCIE / STEGO evaluate COCO-Stuff at 320; open-hummingbird-eval's VOC / ADE20K numbers are at 512 x 512.
DEFAULT_IMAGE_SIZE = {"demo": 128, "cocostuff27": 320, "voc": 512, "voc_aug": 512, "ade20k": 512}

Sample = tuple[Tensor, Tensor, Tensor | None]


class EvalDataError(ValueError):
    """A dataset that cannot be read; the message is one line meant for the user."""


def image_to_tensor(image: Image.Image) -> Tensor:
    """uint8 [3, H, W] from a PIL RGB image."""
    return torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


class DemoSegmentation(Dataset):
    """The demo scenes: 11 classes (0 = background, 1..10 = Fashion-MNIST classes) and instance maps."""

    def __init__(self, root: str | Path, split: str, image_size: int) -> None:
        self.scenes = SceneFolder(root, split)
        self.image_size = image_size
        self.class_names = ["background", *self.scenes.class_names]
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> Sample:
        image = resize_center_crop(read_rgb(self.scenes.image_paths[index]), self.image_size)
        # Label maps are resampled nearest so every pixel keeps a real id.
        semantic_path = self.scenes.semantic_paths[index]
        semantic, instance = (
            np.array(
                resize_center_crop(
                    Image.fromarray(read_label_map(path)), self.image_size, resample=Image.Resampling.NEAREST
                )
            )
            for path in (semantic_path, self.scenes.instance_paths[index])
        )
        bad = semantic[(semantic >= self.num_classes) & (semantic != IGNORE_INDEX)]
        if bad.size:  # here, where the file is known; the metrics would only say that some value is out of range
            raise EvalDataError(
                f"{semantic_path}: label value {int(bad.max())} is not a class id (0..{self.num_classes - 1}) nor "
                f"{IGNORE_INDEX} (unlabelled)"
            )
        return image_to_tensor(image), torch.from_numpy(semantic), torch.from_numpy(instance)


# ----------------------------------------------------------------------------------------------
# COCO-Stuff: 182 fine classes -> 27 coarse classes (the 12 thing + 15 stuff supercategories)
# ----------------------------------------------------------------------------------------------

# COCO thing ids 1..91 in id order with their supercategory; the 11 ids COCO never annotated
# (street sign, hat, shoe, eye glasses, plate, mirror, window, desk, door, blender, hair brush) are kept
# so that the table covers every value a label map can hold.
_THINGS: tuple[tuple[str, str], ...] = (
    ("person", "person"),
    ("bicycle", "vehicle"),
    ("car", "vehicle"),
    ("motorcycle", "vehicle"),
    ("airplane", "vehicle"),
    ("bus", "vehicle"),
    ("train", "vehicle"),
    ("truck", "vehicle"),
    ("boat", "vehicle"),
    ("traffic light", "outdoor"),
    ("fire hydrant", "outdoor"),
    ("street sign", "outdoor"),
    ("stop sign", "outdoor"),
    ("parking meter", "outdoor"),
    ("bench", "outdoor"),
    ("bird", "animal"),
    ("cat", "animal"),
    ("dog", "animal"),
    ("horse", "animal"),
    ("sheep", "animal"),
    ("cow", "animal"),
    ("elephant", "animal"),
    ("bear", "animal"),
    ("zebra", "animal"),
    ("giraffe", "animal"),
    ("hat", "accessory"),
    ("backpack", "accessory"),
    ("umbrella", "accessory"),
    ("shoe", "accessory"),
    ("eye glasses", "accessory"),
    ("handbag", "accessory"),
    ("tie", "accessory"),
    ("suitcase", "accessory"),
    ("frisbee", "sports"),
    ("skis", "sports"),
    ("snowboard", "sports"),
    ("sports ball", "sports"),
    ("kite", "sports"),
    ("baseball bat", "sports"),
    ("baseball glove", "sports"),
    ("skateboard", "sports"),
    ("surfboard", "sports"),
    ("tennis racket", "sports"),
    ("bottle", "kitchen"),
    ("plate", "kitchen"),
    ("wine glass", "kitchen"),
    ("cup", "kitchen"),
    ("fork", "kitchen"),
    ("knife", "kitchen"),
    ("spoon", "kitchen"),
    ("bowl", "kitchen"),
    ("banana", "food"),
    ("apple", "food"),
    ("sandwich", "food"),
    ("orange", "food"),
    ("broccoli", "food"),
    ("carrot", "food"),
    ("hot dog", "food"),
    ("pizza", "food"),
    ("donut", "food"),
    ("cake", "food"),
    ("chair", "furniture"),
    ("couch", "furniture"),
    ("potted plant", "furniture"),
    ("bed", "furniture"),
    ("mirror", "furniture"),
    ("dining table", "furniture"),
    ("window", "furniture"),
    ("desk", "furniture"),
    ("toilet", "furniture"),
    ("door", "furniture"),
    ("tv", "electronic"),
    ("laptop", "electronic"),
    ("mouse", "electronic"),
    ("remote", "electronic"),
    ("keyboard", "electronic"),
    ("cell phone", "electronic"),
    ("microwave", "appliance"),
    ("oven", "appliance"),
    ("toaster", "appliance"),
    ("sink", "appliance"),
    ("refrigerator", "appliance"),
    ("blender", "appliance"),
    ("book", "indoor"),
    ("clock", "indoor"),
    ("vase", "indoor"),
    ("scissors", "indoor"),
    ("teddy bear", "indoor"),
    ("hair drier", "indoor"),
    ("toothbrush", "indoor"),
    ("hair brush", "indoor"),
)

# COCO-Stuff's stuff hierarchy (indoor, then outdoor groups). Stuff ids 92..182 are the stuff names in
# alphabetical order, so the ids follow from the names.
_STUFF_GROUPS: dict[str, tuple[str, ...]] = {
    "ceiling": ("ceiling-other", "ceiling-tile"),
    "floor": ("carpet", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood"),
    "food-stuff": ("food-other", "fruit", "salad", "vegetable"),
    "furniture-stuff": (
        "cabinet",
        "counter",
        "cupboard",
        "desk-stuff",
        "door-stuff",
        "furniture-other",
        "light",
        "mirror-stuff",
        "shelf",
        "stairs",
        "table",
    ),
    "rawmaterial": ("cardboard", "metal", "paper", "plastic"),
    "textile": (
        "banner",
        "blanket",
        "cloth",
        "clothes",
        "curtain",
        "mat",
        "napkin",
        "pillow",
        "rug",
        "textile-other",
        "towel",
    ),
    "wall": ("wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood"),
    "window": ("window-blind", "window-other"),
    "building": ("bridge", "building-other", "house", "roof", "skyscraper", "tent"),
    "ground": (
        "dirt",
        "gravel",
        "ground-other",
        "mud",
        "pavement",
        "platform",
        "playingfield",
        "railroad",
        "road",
        "sand",
        "snow",
    ),
    "plant": ("branch", "bush", "flower", "grass", "leaves", "moss", "plant-other", "straw", "tree"),
    "sky": ("clouds", "sky-other"),
    "solid": ("hill", "mountain", "rock", "solid-other", "stone", "wood"),
    "structural": ("cage", "fence", "net", "railing", "structural-other"),
    "water": ("fog", "river", "sea", "water-other", "waterdrops"),
}

_THING_GROUPS = (
    "person",
    "vehicle",
    "outdoor",
    "animal",
    "accessory",
    "sports",
    "kitchen",
    "food",
    "furniture",
    "electronic",
    "appliance",
    "indoor",
)
# Coarse ids: the 12 thing supercategories (0..11), then the 15 stuff ones (12..26).
COCOSTUFF27_CLASSES: tuple[str, ...] = (*_THING_GROUPS, *_STUFF_GROUPS)
_STUFF_OF = {name: group for group, names in _STUFF_GROUPS.items() for name in names}
# Index = value in a COCO-Stuff label PNG (COCO id - 1, so 0..181); 255 = unlabelled.
COCOSTUFF_FINE_CLASSES: tuple[str, ...] = (*(name for name, _ in _THINGS), *sorted(_STUFF_OF))
COCOSTUFF_FINE_TO_COARSE: dict[int, int] = {
    fine: COCOSTUFF27_CLASSES.index(dict(_THINGS).get(name) or _STUFF_OF[name])
    for fine, name in enumerate(COCOSTUFF_FINE_CLASSES)
}


def cocostuff_coarse_lut() -> np.ndarray:
    """uint8 lookup table of 256 entries: fine label value -> coarse id; anything else -> ``IGNORE_INDEX``."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for fine, coarse in COCOSTUFF_FINE_TO_COARSE.items():
        lut[fine] = coarse
    return lut


class CocoStuff27(Dataset):
    """COCO-Stuff-27 in PiCIE's curated layout, under ``root``::

        curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse_7.txt   one image id per line
        images/{train2017,val2017}/ID.jpg
        annotations/{train2017,val2017}/ID.png                        fine COCO-Stuff ids 0..181, 255 unlabelled

    Split "train" reads train2017, "eval" val2017. Images and labels are resized (shorter side to
    ``image_size``; bilinear / nearest) and centre-cropped to a square.
    """

    split_dirs: ClassVar[dict[str, str]] = {"train": "train2017", "eval": "val2017"}
    list_name = "Coco164kFull_Stuff_Coarse_7.txt"

    def __init__(self, root: str | Path, split: str, image_size: int) -> None:
        if split not in self.split_dirs:
            raise EvalDataError(f"split must be one of {tuple(self.split_dirs)}, got {split!r}")
        self.root = Path(root)
        self.folder = self.split_dirs[split]
        self.image_size = image_size
        self.class_names = list(COCOSTUFF27_CLASSES)
        self.num_classes = len(self.class_names)
        self.lut = cocostuff_coarse_lut()
        list_file = self.root / "curated" / self.folder / self.list_name
        try:
            self.ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        except OSError:
            raise EvalDataError(f"{list_file}: cannot read the curated image list (expected PiCIE's layout)") from None
        if not self.ids:
            raise EvalDataError(f"{list_file}: lists no images")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        image = read_rgb(self.root / "images" / self.folder / f"{image_id}.jpg")
        label_path = self.root / "annotations" / self.folder / f"{image_id}.png"
        fine = read_label_map(label_path)
        if fine.shape[::-1] != image.size:
            raise EvalDataError(
                f"{label_path}: label is {fine.shape[1]}x{fine.shape[0]}, image is {image.size[0]}x{image.size[1]}"
            )
        # Mapping first is exact: nearest resampling only moves label values around.
        coarse = Image.fromarray(self.lut[fine])
        image = resize_center_crop(image, self.image_size)
        coarse = resize_center_crop(coarse, self.image_size, resample=Image.Resampling.NEAREST)
        return image_to_tensor(image), torch.from_numpy(np.array(coarse, dtype=np.uint8)), None


# ----------------------------------------------------------------------------------------------
# Pascal VOC 2012 and ADE20K, read from the user's own copy; whole images resized to a square
# ----------------------------------------------------------------------------------------------

# fmt: off
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
# fmt: on

# ADE20K SceneParsing's 150 classes (objectInfo150, first name of each), in label order 1..150.
# fmt: off
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag",
)
# fmt: on

# The lists an SBD-augmented VOC ("trainaug", 10,582 images with val removed) comes with, by their usual names.
VOC_AUG_LISTS = ("trainaug.txt", "train_aug.txt", "aug.txt")


def find_dataset_root(root: str | Path, candidates: tuple[str, ...], required: tuple[str, ...], what: str) -> Path:
    """The first of ``root / c`` (c in ``candidates``, "" = root itself) that holds every path in ``required``."""
    root = Path(root)
    for candidate in candidates:
        folder = root / candidate if candidate else root
        if all((folder / name).is_dir() for name in required):
            return folder
    expected = ", ".join(f"{name}/" for name in required)
    raise EvalDataError(f"{root}: no {what} here (expected {expected} in {' or '.join(c or '.' for c in candidates)})")


def read_id_list(path: Path) -> list[str]:
    """The non-empty lines of an image-id list (first word of each, as VOC's lists may carry a second column)."""
    try:
        return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        raise EvalDataError(f"{path}: cannot read the image list") from None


def stems(folder: Path, suffix: str) -> set[str]:
    """File names without ``suffix`` of the files in ``folder`` that end with it (one listing, not a stat per file)."""
    try:
        return {name[: -len(suffix)] for name in os.listdir(folder) if name.endswith(suffix)}
    except OSError:
        return set()


def label_lut(valid: dict[int, int]) -> np.ndarray:
    """int16 lookup of 256 entries: a label PNG value -> class id or ``IGNORE_INDEX``; -1 marks values that no
    label of the dataset can hold (a sign of the wrong files)."""
    lut = np.full(256, -1, dtype=np.int16)
    for value, class_id in valid.items():
        lut[value] = class_id
    return lut


class SquareSegmentation(Dataset):
    """Image / label-map pairs resized, whole, to ``image_size`` x ``image_size`` (bilinear / nearest), as
    open-hummingbird-eval evaluates VOC and ADE20K. Subclasses fill ``pairs``, ``lut``, ``class_names``."""

    pairs: list[tuple[Path, Path]]
    lut: np.ndarray
    class_names: list[str]

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image_path, label_path = self.pairs[index]
        image = read_rgb(image_path)
        raw = read_label_map(label_path)
        if raw.shape[::-1] != image.size:
            raise EvalDataError(
                f"{label_path}: label is {raw.shape[1]}x{raw.shape[0]}, image is {image.size[0]}x{image.size[1]}"
            )
        label = self.lut[raw]
        if (label < 0).any():
            bad = sorted(set(raw[label < 0].tolist()))[:5]
            raise EvalDataError(f"{label_path}: label values {bad} are not classes of this dataset")
        size = (self.image_size, self.image_size)
        image = image.resize(size, Image.Resampling.BILINEAR)
        label_image = Image.fromarray(label.astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
        return image_to_tensor(image), torch.from_numpy(np.array(label_image, dtype=np.uint8)), None


class PascalVOC(SquareSegmentation):
    """Pascal VOC 2012 segmentation, 21 classes (0 = background), 255 (object borders) ignored::

        VOCdevkit/VOC2012/JPEGImages/ID.jpg
        VOCdevkit/VOC2012/SegmentationClass/ID.png           palette PNGs: the pixel value is the class
        VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt

    ``root`` may be the folder holding VOCdevkit, VOCdevkit itself, or VOC2012. Split "train" reads train.txt
    (1,464 images), "eval" val.txt (1,449). With ``aug`` the train split is SBD's augmented set ("trainaug",
    10,582 images): the ids of ``VOC_AUG_LISTS`` (the first found) and train.txt, less val.txt, each labelled
    from ``SegmentationClassAug/ID.png`` when there is one, else from SegmentationClass.
    """

    def __init__(self, root: str | Path, split: str, image_size: int, aug: bool = False) -> None:
        super().__init__(image_size)
        if split not in ("train", "eval"):
            raise EvalDataError(f"split must be train or eval, got {split!r}")
        self.root = find_dataset_root(
            root, ("VOCdevkit/VOC2012", "VOC2012", ""), ("JPEGImages", "ImageSets/Segmentation"), "Pascal VOC 2012"
        )
        self.class_names = list(VOC_CLASSES)
        self.lut = label_lut({**{c: c for c in range(len(VOC_CLASSES))}, IGNORE_INDEX: IGNORE_INDEX})
        lists = self.root / "ImageSets" / "Segmentation"
        label_dirs = [self.root / "SegmentationClass"]
        if split == "eval":
            ids = read_id_list(lists / "val.txt")
        elif not aug:
            ids = read_id_list(lists / "train.txt")
        else:
            aug_list = next((lists / name for name in VOC_AUG_LISTS if (lists / name).is_file()), None)
            if aug_list is None or not (self.root / "SegmentationClassAug").is_dir():
                raise EvalDataError(
                    f"{self.root}: voc_aug needs SegmentationClassAug/ and ImageSets/Segmentation/"
                    f"{' or '.join(VOC_AUG_LISTS)}"
                )
            held_out = set(read_id_list(lists / "val.txt"))
            ids = sorted((set(read_id_list(aug_list)) | set(read_id_list(lists / "train.txt"))) - held_out)
            label_dirs.insert(0, self.root / "SegmentationClassAug")
        if not ids:
            raise EvalDataError(f"{lists}: the {split} list names no images")
        images = stems(self.root / "JPEGImages", ".jpg")
        labels = [stems(folder, ".png") for folder in label_dirs]
        self.pairs = []
        for image_id in ids:
            if image_id not in images:
                raise EvalDataError(f"{self.root / 'JPEGImages' / image_id}.jpg: listed for {split} but missing")
            folder = next((f for f, present in zip(label_dirs, labels, strict=True) if image_id in present), None)
            if folder is None:
                raise EvalDataError(f"{label_dirs[-1] / image_id}.png: listed for {split} but missing")
            self.pairs.append((self.root / "JPEGImages" / f"{image_id}.jpg", folder / f"{image_id}.png"))


class ADE20K(SquareSegmentation):
    """ADE20K SceneParsing (ADEChallengeData2016), 150 classes::

        ADEChallengeData2016/images/{training,validation}/NAME.jpg
        ADEChallengeData2016/annotations/{training,validation}/NAME.png     0 = other, 1..150 = classes

    As mmsegmentation's ``reduce_zero_label``: 0 is ignored and class v becomes v - 1. ``root`` may be the
    folder holding ADEChallengeData2016 or that folder itself. Split "train" reads training (20,210 images),
    "eval" validation (2,000).
    """

    split_dirs: ClassVar[dict[str, str]] = {"train": "training", "eval": "validation"}

    def __init__(self, root: str | Path, split: str, image_size: int) -> None:
        super().__init__(image_size)
        if split not in self.split_dirs:
            raise EvalDataError(f"split must be one of {tuple(self.split_dirs)}, got {split!r}")
        self.root = find_dataset_root(root, ("ADEChallengeData2016", ""), ("images", "annotations"), "ADE20K")
        self.class_names = list(ADE20K_CLASSES)
        self.lut = label_lut({0: IGNORE_INDEX, **{v: v - 1 for v in range(1, len(ADE20K_CLASSES) + 1)}})
        folder = self.split_dirs[split]
        image_dir, label_dir = self.root / "images" / folder, self.root / "annotations" / folder
        names = sorted(stems(image_dir, ".jpg"))
        if not names:
            raise EvalDataError(f"{image_dir}: no .jpg images (expected ADEChallengeData2016's layout)")
        labels = stems(label_dir, ".png")
        missing = [name for name in names if name not in labels]
        if missing:
            raise EvalDataError(f"{label_dir / missing[0]}.png: missing ({len(missing)} of {len(names)} labels are)")
        self.pairs = [(image_dir / f"{name}.jpg", label_dir / f"{name}.png") for name in names]


def build_dataset(name: str, root: str | Path, split: str, image_size: int | None = None) -> Dataset:
    """The evaluation dataset ``name`` (one of ``DATASETS``) at ``image_size`` (default: per dataset)."""
    if name not in DATASETS:
        raise EvalDataError(f"unknown --dataset {name!r}; choose one of {', '.join(DATASETS)}")
    size = DEFAULT_IMAGE_SIZE[name] if image_size is None else image_size
    if size <= 0:
        raise EvalDataError(f"--image-size must be positive, got {size}")
    if name == "demo":
        return DemoSegmentation(root, split, size)
    if name == "cocostuff27":
        return CocoStuff27(root, split, size)
    if name in ("voc", "voc_aug"):
        return PascalVOC(root, split, size, aug=name == "voc_aug")
    return ADE20K(root, split, size)
