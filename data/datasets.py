"""Unlabelled image datasets for pretraining, and the two-view sample they produce.

File lists are sorted (so the sample order does not depend on the filesystem) and kept as one numpy
string array, which DataLoader workers read without the copy-on-read growth of Python lists.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data.images import UnreadableImageError, open_image
from data.scene_folder import DemoDataError, SceneFolder
from data.transforms import TwoViewCrop
from utils.logger import printable

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
logger = logging.getLogger("slotcon")

# name -> glob patterns under --data-dir
LAYOUTS: dict[str, tuple[str, ...]] = {
    "COCO": ("train2017/*.jpg",),
    "COCOplus": ("train2017/*.jpg", "unlabeled2017/*.jpg"),
    "ImageNet": ("train/*/*.JPEG",),
}
DATASETS = (*LAYOUTS, "folder", "demo")


class DatasetError(ValueError):
    """A dataset that cannot be used; the message is one line that names the path and what was expected."""


def list_images(name: str, data_dir: str | Path) -> np.ndarray:
    """Sorted image paths of a dataset, as a numpy string array.

    ``folder`` takes every image below ``data_dir`` recursively, through symlinked folders too (``walk_images``);
    ``demo`` the generated demo scenes' training images (``data_dir/train/images``).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"--data-dir {root}: no such directory")
    if name == "folder":
        files = list(walk_images(root))
        expected = f"image files ({', '.join(IMAGE_EXTENSIONS)}) anywhere below {root}"
    elif name == "demo":
        try:
            files = SceneFolder(root, "train").image_paths
        except DemoDataError as e:
            raise DatasetError(f"--dataset demo --data-dir {root}: {e}") from None
    elif name in LAYOUTS:
        files = [p for pattern in LAYOUTS[name] for p in root.glob(pattern)]
        expected = " and ".join(f"{root}/{pattern}" for pattern in LAYOUTS[name])
    else:
        raise DatasetError(f"--dataset {name}: unknown; choose one of {', '.join(DATASETS)}")
    if not files:
        raise DatasetError(f"--dataset {name} --data-dir {root}: no images found; expected {expected}")
    return np.array(sorted(str(p) for p in files))


def walk_images(root: Path) -> Iterator[Path]:
    """Every image file below ``root``, following symlinked folders (a data set assembled from links is common)
    and entering each real folder once: a symlink loop, or two links to one folder, cannot repeat images."""
    seen: set[tuple[int, int]] = set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        try:
            info = os.stat(folder)
        except OSError:  # vanished or unreadable meanwhile
            subfolders[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:
            subfolders[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        subfolders.sort()  # a stable walk: which of two links to one folder names its images does not vary
        for name in names:
            path = Path(folder) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                yield path


def count_by_folder(files: Sequence[str] | np.ndarray, root: str | Path) -> dict[str, int]:
    """How many of ``files`` lie in each top-level folder of ``root`` (``.`` for files directly in it), sorted by
    name: the log line that shows a folder (or a symlinked one) left out."""
    counts: dict[str, int] = {}
    for file in files:
        parts = Path(file).relative_to(root).parts
        top = parts[0] if len(parts) > 1 else "."
        counts[top] = counts.get(top, 0) + 1
    return dict(sorted(counts.items()))


class TwoViewDataset(Dataset):
    """Yields both views of an image: uint8 HWC crops, overlap boxes, flip flags.

    Indexed by ``(index, seed)`` pairs from ``data.sampler.ResumableSampler``: the seed drives every
    random draw for that sample. An unreadable file (``data.images``: undecodable, a decompression bomb, a
    mode it refuses) is skipped, with its path logged; another image is drawn with the same seed, and the
    path is returned under ``skipped``, so the training loop can count and report it.
    """

    def __init__(self, files: Sequence[str] | np.ndarray, transform: TwoViewCrop, max_retries: int = 50) -> None:
        self.files = np.asarray(files)
        self.transform = transform
        self.max_retries = max_retries

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        rng = random.Random(seed)
        skipped: list[str] = []
        for _ in range(self.max_retries):
            path = str(self.files[index])
            try:
                with open_image(path) as image:
                    views = self.transform(image, rng)
            except UnreadableImageError as e:
                logger.warning("skipping %s", e)
                skipped.append(path)
                index = rng.randrange(len(self.files))
                continue
            return {
                "crops": [torch.from_numpy(c) for c in views.crops],
                "boxes": [torch.tensor(b, dtype=torch.float32) for b in views.boxes],
                "flipped": [torch.tensor(f) for f in views.flipped],
                "skipped": skipped,
            }
        raise DatasetError(f"{self.max_retries} images in a row could not be read, the last {printable(skipped[-1])}")


def collate_two_views(samples: list[dict]) -> dict:
    """Stack a list of samples: crops as uint8 [B, 3, H, W] in channels_last memory (HWC storage)."""
    return {
        "crops": [torch.stack([s["crops"][v] for s in samples]).permute(0, 3, 1, 2) for v in range(2)],
        "boxes": [torch.stack([s["boxes"][v] for s in samples]) for v in range(2)],
        "flipped": [torch.stack([s["flipped"][v] for s in samples]) for v in range(2)],
        "skipped": [p for s in samples for p in s["skipped"]],
    }
