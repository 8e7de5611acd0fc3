"""What did the prototypes learn? Pictures from a full SlotCon checkpoint (ours or official).

``--mode nn`` (the reference's picture): for each chosen prototype, the ``--topk`` images whose pixels
assigned to it match it best, those pixels tinted red; one column per prototype.
    score[n, k] = sum_hw dots[n,k,h,w] (a[n,k,h,w] + 1e-6) / sum_hw (a[n,k,h,w] + 1e-6),
where dots are the cosine scores of the teacher's projected pixels (at the feature map's resolution) to
prototype k and a is the one-hot argmax assignment: the mean similarity of the pixels k wins (the mean over
all pixels if it wins none). The images are streamed: one pass keeps only the best ``--topk`` of every
prototype, so memory does not grow with the number of images searched; the pictured ones are read again.

``--mode assign``: a few images, each beside its prototype map (the image showing through the prototype
colours, regions outlined in white), captioned with the prototypes that win the most pixels.

Unreadable images are skipped, each path printed to stderr. The original README's command works as written
(the original underscore spellings are aliases of ours; network sizes are read from the checkpoint):
    python viz_slots.py --data_dir datasets/coco --model_path ckpt.pth --save_path viz.jpg --topk 5 --sampling 20
On the demo data:
    python viz_slots.py --model-path output/demo/current.pth --dataset demo --data-dir demo_data \\
        --image-size 128 --dpi 64 --top-prototypes 8 --save-path prototypes.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from data.datasets import DatasetError, list_images
from data.images import UnreadableImageError, read_center_crop
from data.scene_folder import DemoDataError, SceneFolder
from eval.visualize import (
    Picture,
    assignment_overlay,
    compose_grid,
    normalize,
    prototype_palette,
    prototype_shares,
    tint,
)
from models import ARCHS
from models.grouping import pixel_assignments
from models.slotcon import SlotConTeacher
from models.weights import load_teacher
from utils.atomic import OutputWriteError, check_writable
from utils.checkpoint import CheckpointError
from utils.distributed import parse_device
from utils.logger import printable

PROG = "viz_slots.py"
# --dataset -> the image folder below --data-dir (demo: the held-out scenes); the rest are the training layouts.
IMAGE_FOLDERS = {"COCOval": "val2017", "folder": "."}
DATASETS = ("COCOval", "demo", "folder", "COCO", "COCOplus", "ImageNet")
SIZE_FLAGS = ("arch", "dim_hidden", "dim_out", "num_prototypes")


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model-path",
        "--model_path",
        default="output/slotcon_coco_r50_800ep/ckpt_epoch_800.pth",
        help="a full SlotCon checkpoint (ours or official)",
    )
    p.add_argument("--student", action="store_true", help="use the student network instead of the teacher")
    p.add_argument(
        "--dataset",
        default="COCOval",
        choices=DATASETS,
        help="COCOval: DATA_DIR/val2017; demo: DATA_DIR/eval/images; folder: every image below DATA_DIR; "
        "COCO, COCOplus, ImageNet: the pretraining layouts",
    )
    p.add_argument("--data-dir", "--data_dir", default="./datasets/coco")
    p.add_argument("--mode", default="nn", choices=["nn", "assign"])
    p.add_argument("--topk", type=int, default=5, help="images per prototype (nn)")
    p.add_argument("--sampling", type=int, default=0, help="draw this many distinct prototypes at random (nn)")
    p.add_argument("--idxs", nargs="+", default=[], help="prototype indices, as 3,17,42 or 3 17 42 (nn)")
    p.add_argument(
        "--top-prototypes",
        type=int,
        default=0,
        help="the N prototypes that win the most pixels over the searched images (nn)",
    )
    p.add_argument("--num-images", type=int, default=6, help="images to draw (assign)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sampling and of the images picked by assign")
    p.add_argument("--image-size", type=int, default=224, help="centre crop size")
    p.add_argument("--resize", type=int, default=None, help="shorter side before the crop (default size*8/7)")
    p.add_argument("--max-images", type=int, default=0, help="search only the first N images (0: all)")
    p.add_argument("--alpha", type=float, default=0.6, help="weight of the image under the red tint (nn)")
    p.add_argument("--dpi", type=int, default=100, help="each cell is 2 x 2 inches at this resolution (2*dpi pixels)")
    p.add_argument("--batch-size", "--batch_size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="image-reading processes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save-path", "--save_path", default="viz_slots.jpg")
    g = p.add_argument_group("network sizes (read from the checkpoint; when given, they must agree with it)")
    g.add_argument("--arch", default=None, choices=ARCHS)
    g.add_argument("--dim-hidden", "--dim_hidden", type=int, default=None)
    g.add_argument("--dim-out", "--dim_out", type=int, default=None)
    g.add_argument("--num-prototypes", "--num_prototypes", type=int, default=None)
    return p.parse_args(argv)


def parse_idxs(values: list[str]) -> list[int]:
    """``--idxs 3,17,42`` or ``--idxs 3 17 42`` -> [3, 17, 42]."""
    try:
        return [int(i) for value in values for i in value.split(",") if i.strip()]
    except ValueError:
        raise SystemExit(f"{PROG}: --idxs {' '.join(values)!r}: expected integers, e.g. 3,17,42") from None


def check_args(args: argparse.Namespace) -> None:
    """One line per bad flag, before any work."""
    positive = {
        "topk": args.topk,
        "num_images": args.num_images,
        "batch_size": args.batch_size,
        "dpi": args.dpi,
        "dim_hidden": args.dim_hidden,
        "dim_out": args.dim_out,
        "num_prototypes": args.num_prototypes,
    }
    for name, value in positive.items():
        if value is not None and value < 1:
            raise SystemExit(f"{PROG}: --{name.replace('_', '-')} must be at least 1, got {value}")
    for name in ("sampling", "top_prototypes", "max_images", "workers"):
        if getattr(args, name) < 0:
            raise SystemExit(f"{PROG}: --{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.image_size < 32:
        raise SystemExit(f"{PROG}: --image-size must be at least 32, got {args.image_size}")
    if args.resize is not None and args.resize < args.image_size:
        raise SystemExit(f"{PROG}: --resize {args.resize} is smaller than --image-size {args.image_size}")
    if not 0 <= args.alpha <= 1:
        raise SystemExit(f"{PROG}: --alpha must be in [0, 1], got {args.alpha}")
    if args.top_prototypes and (args.idxs or args.sampling):
        raise SystemExit(f"{PROG}: --top-prototypes chooses the prototypes itself; drop --idxs / --sampling")
    try:
        parse_device(args.device)
    except ValueError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    save = Path(args.save_path)
    if not save.parent.is_dir():
        raise SystemExit(f"{PROG}: --save-path {save}: folder {save.parent} does not exist")
    if save.suffix.lower() not in Image.registered_extensions():
        raise SystemExit(f"{PROG}: --save-path {save}: unknown picture format {save.suffix!r} (use .jpg or .png)")
    try:  # now, not after a search over every image
        check_writable(save)
    except OutputWriteError as e:
        raise SystemExit(f"{PROG}: --save-path: {e}") from None


def list_viz_images(dataset: str, data_dir: str) -> np.ndarray:
    if dataset == "demo":  # the held-out scenes
        try:
            return np.array([str(p) for p in SceneFolder(data_dir, "eval").image_paths])
        except DemoDataError as e:
            raise DatasetError(str(e)) from None
    if dataset in IMAGE_FOLDERS:
        return list_images("folder", Path(data_dir) / IMAGE_FOLDERS[dataset])
    return list_images(dataset, data_dir)


# ----------------------------------------------------------------------------------------------
# Reading images, streamed
# ----------------------------------------------------------------------------------------------


class CenterCrops(Dataset):
    """``(index, uint8 crop [S, S, 3] or None, error message)`` of each path: unreadable files are reported."""

    def __init__(self, paths: np.ndarray, size: int, resize: int) -> None:
        self.paths, self.size, self.resize = paths, size, resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str]:
        try:
            return index, read_center_crop(self.paths[index], self.size, self.resize), ""
        except UnreadableImageError as e:
            return index, None, str(e)


def _collate(samples: list[tuple[int, np.ndarray | None, str]]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    readable = [(i, crop) for i, crop, _ in samples if crop is not None]
    errors = [error for _, crop, error in samples if crop is None]
    if not readable:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint8), errors
    indices, crops = zip(*readable, strict=True)
    return np.array(indices, dtype=np.int64), np.stack(crops), errors


def crop_batches(
    paths: np.ndarray, args: argparse.Namespace, skipped: list[str]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(indices into ``paths``, uint8 crops [B, S, S, 3]) in path order; unreadable paths go to ``skipped``."""
    loader = DataLoader(
        CenterCrops(paths, args.image_size, resize_of(args)),
        batch_size=args.batch_size,
        num_workers=args.workers,
        collate_fn=_collate,
    )
    for indices, crops, errors in loader:
        for error in errors:
            print(f"{PROG}: skipping {error}", file=sys.stderr)
        skipped.extend(errors)
        if len(indices):
            yield indices, crops


def resize_of(args: argparse.Namespace) -> int:
    return args.resize or round(args.image_size * 8 / 7)


# ----------------------------------------------------------------------------------------------
# nn: the best images of every prototype
# ----------------------------------------------------------------------------------------------


def assigned_mean_scores(dots: Tensor) -> Tensor:
    """[N, K]: the mean score of the pixels each prototype wins (over all pixels if it wins none)."""
    assigned = F.one_hot(dots.argmax(dim=1), dots.shape[1]).permute(0, 3, 1, 2).float() + 1e-6
    return (dots * assigned).sum(dim=(2, 3)) / assigned.sum(dim=(2, 3))


@dataclass
class Search:
    """What one pass over the images keeps: the ``topk`` best images of every prototype, best first."""

    top_scores: Tensor  # [K, topk]
    top_images: Tensor  # [K, topk] indices into the paths
    pixel_wins: Tensor | None  # [K] pixels won at image resolution, if counted
    num_images: int


@torch.no_grad()
def search(
    teacher: SlotConTeacher,
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    topk: int,
    device: torch.device,
    count_pixels: bool = False,
) -> Search:
    """Stream ``batches``, keeping the best ``topk`` images per prototype (memory independent of their number)."""
    num_prototypes = teacher.grouping_k.num_prototypes
    top_scores = torch.empty(num_prototypes, 0)
    top_images = torch.empty(num_prototypes, 0, dtype=torch.long)
    wins = torch.zeros(num_prototypes, dtype=torch.long) if count_pixels else None
    seen = 0
    for indices, crops in batches:
        dots = teacher(normalize(crops, device)).float()
        scores = torch.cat([top_scores, assigned_mean_scores(dots).T.cpu()], dim=1)
        images = torch.cat([top_images, torch.from_numpy(indices).expand(num_prototypes, -1)], dim=1)
        best = scores.topk(min(topk, scores.shape[1]), dim=1)
        top_scores, top_images = best.values, images.gather(1, best.indices)
        if wins is not None:
            labels = pixel_assignments(dots, crops.shape[1:3])
            wins += torch.bincount(labels.reshape(-1), minlength=num_prototypes).cpu()
        seen += len(indices)
    return Search(top_scores, top_images, wins, seen)


def choose_prototypes(args: argparse.Namespace, num_prototypes: int, pixel_wins: Tensor | None = None) -> list[int]:
    """``--top-prototypes`` (most pixels won first), ``--idxs``, ``--sampling`` (seeded, distinct), or all."""
    if args.top_prototypes:
        order = sorted(range(num_prototypes), key=lambda k: (-int(pixel_wins[k]), k))
        return order[: args.top_prototypes]
    if args.idxs:
        chosen = parse_idxs(args.idxs)
        bad = [i for i in chosen if not 0 <= i < num_prototypes]
        if bad:
            raise SystemExit(f"{PROG}: --idxs: {bad} out of range; the model has {num_prototypes} prototypes")
        return chosen
    if args.sampling:
        rng = np.random.default_rng(args.seed)
        return sorted(rng.choice(num_prototypes, size=min(args.sampling, num_prototypes), replace=False).tolist())
    return list(range(num_prototypes))


def to_cell(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` resized (bilinear) to ``side`` x ``side``, or itself if it has that size."""
    if image.shape[:2] == (side, side):
        return image
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR))


@torch.no_grad()
def assignments_of(teacher: SlotConTeacher, crops: np.ndarray, device: torch.device) -> np.ndarray:
    """Winning prototype of every pixel of uint8 crops [B, S, S, 3]: [B, S, S]."""
    return pixel_assignments(teacher(normalize(crops, device)), crops.shape[1:3]).cpu().numpy()


def draw_nearest(
    teacher: SlotConTeacher,
    paths: np.ndarray,
    found: Search,
    prototypes: list[int],
    args: argparse.Namespace,
    device: torch.device,
) -> Picture:
    """Column c: prototype ``prototypes[c]``; row r: its r-th best image, the pixels it wins tinted red."""
    rows = found.top_images.shape[1]
    wanted: dict[int, list[tuple[int, int, int]]] = {}  # image -> the (row, col, prototype) cells it fills
    for col, k in enumerate(prototypes):
        for row, n in enumerate(found.top_images[k].tolist()):
            wanted.setdefault(n, []).append((row, col, k))
    cells: list[list[np.ndarray]] = [[None] * len(prototypes) for _ in range(rows)]  # type: ignore[list-item]
    order = sorted(wanted)
    for start in range(0, len(order), args.batch_size):
        chunk = order[start : start + args.batch_size]
        crops = np.stack([read_center_crop(paths[n], args.image_size, resize_of(args)) for n in chunk])
        for n, crop, labels in zip(chunk, crops, assignments_of(teacher, crops, device), strict=True):
            for row, col, k in wanted[n]:
                cells[row][col] = to_cell(tint(crop, labels == k, args.alpha), 2 * args.dpi)
    titles = [f"#{k}" for k in prototypes]
    if found.pixel_wins is not None:
        total = int(found.pixel_wins.sum())
        titles = [f"#{k}: {int(found.pixel_wins[k]) / total:.1%}" for k in prototypes]
    return compose_grid(cells, column_titles=titles, font_size=font_size(args))


def font_size(args: argparse.Namespace) -> int:
    return max(10, 2 * args.dpi // 12)


# ----------------------------------------------------------------------------------------------
# assign: images beside their prototype maps
# ----------------------------------------------------------------------------------------------


def pick_images(paths: np.ndarray, args: argparse.Namespace, skipped: list[str]) -> tuple[list[int], np.ndarray]:
    """``--num-images`` readable images drawn at random (seeded), in path order: (indices, crops)."""
    picked: dict[int, np.ndarray] = {}
    for n in np.random.default_rng(args.seed).permutation(len(paths)).tolist():
        try:
            picked[n] = read_center_crop(paths[n], args.image_size, resize_of(args))
        except UnreadableImageError as e:
            print(f"{PROG}: skipping {e}", file=sys.stderr)
            skipped.append(str(e))
            continue
        if len(picked) == args.num_images:
            break
    order = sorted(picked)
    return order, np.stack([picked[n] for n in order]) if order else np.zeros(0, dtype=np.uint8)


def draw_assignments(
    teacher: SlotConTeacher, crops: np.ndarray, args: argparse.Namespace, device: torch.device
) -> Picture:
    """Row per image: the image | its prototype map; captioned with the prototypes that win the most pixels."""
    num_prototypes = teacher.grouping_k.num_prototypes
    palette = prototype_palette(num_prototypes)
    side = 2 * args.dpi
    cells, captions = [], []
    for start in range(0, len(crops), args.batch_size):
        batch = crops[start : start + args.batch_size]
        for crop, labels in zip(batch, assignments_of(teacher, batch, device), strict=True):
            shares = prototype_shares(labels, num_prototypes)
            cells.append([to_cell(crop, side), to_cell(assignment_overlay(crop, labels, palette), side)])
            counted = f"{len(shares)} prototype{'s' if len(shares) > 1 else ''}:"
            captions.append([counted, *((tuple(palette[k]), f"#{k}: {share:.0%}") for k, share in shares[:3])])
    return compose_grid(cells, column_titles=["image", "prototypes"], row_captions=captions, font_size=font_size(args))


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    check_args(args)
    if args.idxs:
        parse_idxs(args.idxs)  # a bad list stops here, before the model loads
    device = parse_device(args.device)
    given = {name: getattr(args, name) for name in SIZE_FLAGS if getattr(args, name) is not None}
    try:
        teacher = load_teacher(args.model_path, student=args.student, expected=given).to(device).eval()
        teacher.encoder_k.check_input_size(args.image_size, args.image_size)
        paths = list_viz_images(args.dataset, args.data_dir)
    except (CheckpointError, DatasetError, ValueError) as e:
        raise SystemExit(f"{PROG}: {e}") from None
    if args.max_images:
        paths = paths[: args.max_images]
    skipped: list[str] = []
    try:
        if args.mode == "nn":
            found = search(
                teacher, crop_batches(paths, args, skipped), args.topk, device, count_pixels=bool(args.top_prototypes)
            )
            if found.num_images == 0:
                raise SystemExit(f"{PROG}: none of the {len(paths)} images in {args.data_dir} is readable")
            prototypes = choose_prototypes(args, teacher.grouping_k.num_prototypes, found.pixel_wins)
            picture = draw_nearest(teacher, paths, found, prototypes, args, device)
            what = f"{len(prototypes)} prototypes x top {found.top_images.shape[1]} of {found.num_images} images"
        else:
            _, crops = pick_images(paths, args, skipped)
            if len(crops) == 0:
                raise SystemExit(f"{PROG}: none of the {len(paths)} images in {args.data_dir} is readable")
            picture = draw_assignments(teacher, crops, args, device)
            what = f"prototype assignments of {len(crops)} images"
    except UnreadableImageError as e:  # a file that was readable a moment ago
        raise SystemExit(f"{PROG}: {e}") from None
    try:
        picture.save(args.save_path, args.dpi)
    except OutputWriteError as e:  # the disk filled up or went read-only during the search
        raise SystemExit(f"{PROG}: {e}") from None
    note = f"; skipped {len(skipped)} unreadable images (listed above)" if skipped else ""
    print(printable(f"wrote {args.save_path}: {what}{note}"))


if __name__ == "__main__":
    main(sys.argv[1:])
