"""What did the prototypes learn? Two pictures from a full SlotCon checkpoint (ours or official).

``--mode nn`` (the reference's picture): for each chosen prototype, the ``--topk`` images whose pixels
assigned to it match it best, with those pixels tinted red; one column per prototype.
    score[n, k] = sum_hw dots[n,k,h,w] (a[n,k,h,w] + 1e-6) / sum_hw (a[n,k,h,w] + 1e-6),
where dots are the cosine scores of the teacher's projected pixels to prototype k and a is the one-hot
argmax assignment: the mean similarity of the pixels k wins (the mean over all pixels if it wins none).

``--mode assign``: for a few images, the image beside its colour-coded prototype assignment map.

Example:
    python viz_slots.py --model-path output/demo/current.pth --dataset demo --data-dir demo_data \\
        --image-size 128 --sampling 8 --save-path prototypes.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.datasets import DatasetError, list_images
from eval.visualize import load_center_crops, normalize, pixel_assignment, prototype_palette
from models.weights import load_teacher
from utils.checkpoint import CheckpointError

# --dataset -> the image folder below --data-dir
IMAGE_FOLDERS = {"COCOval": "val2017", "demo": "eval/images", "folder": "."}


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, help="a full SlotCon checkpoint (ours or official)")
    p.add_argument("--student", action="store_true", help="use the student network instead of the teacher")
    p.add_argument("--dataset", default="COCOval", choices=sorted(IMAGE_FOLDERS))
    p.add_argument("--data-dir", default="./datasets/coco")
    p.add_argument("--mode", default="nn", choices=["nn", "assign"])
    p.add_argument("--topk", type=int, default=5, help="images per prototype (nn)")
    p.add_argument("--sampling", type=int, default=0, help="draw this many distinct prototypes at random (nn)")
    p.add_argument("--idxs", default="", help="comma-separated prototype indices, e.g. 3,17,42 (nn)")
    p.add_argument("--num-images", type=int, default=6, help="images to draw (assign)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sampling and of the images picked by assign")
    p.add_argument("--image-size", type=int, default=224, help="centre crop size")
    p.add_argument("--resize", type=int, default=None, help="shorter side before the crop (default size*8/7)")
    p.add_argument("--max-images", type=int, default=0, help="use only the first N images (0: all)")
    p.add_argument("--alpha", type=float, default=0.6, help="weight of the image under the red tint")
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save-path", default="viz_slots.jpg")
    return p.parse_args(argv)


@torch.no_grad()
def prototype_scores(teacher, images: np.ndarray, batch_size: int, device: torch.device) -> torch.Tensor:
    """Cosine scores of every pixel to every prototype, [N, K, h, w] on the CPU."""
    return torch.cat([teacher(normalize(images[i:i + batch_size], device)).float().cpu()
                      for i in range(0, len(images), batch_size)])


def best_images(dots: torch.Tensor, topk: int) -> torch.Tensor:
    """[K, topk] indices of the images whose pixels assigned to each prototype match it best."""
    assigned = F.one_hot(dots.argmax(dim=1), dots.shape[1]).permute(0, 3, 1, 2).float() + 1e-6
    score = (dots * assigned).sum(dim=(2, 3)) / assigned.sum(dim=(2, 3))  # [N, K]
    return score.topk(min(topk, score.shape[0]), dim=0).indices.T


def choose_prototypes(args: argparse.Namespace, num_prototypes: int) -> list[int]:
    if args.idxs:
        try:
            chosen = [int(i) for i in args.idxs.split(",") if i.strip()]
        except ValueError:
            raise SystemExit(f"--idxs {args.idxs!r}: expected comma-separated integers, e.g. 3,17,42") from None
        bad = [i for i in chosen if not 0 <= i < num_prototypes]
        if bad:
            raise SystemExit(f"--idxs: {bad} out of range; the model has {num_prototypes} prototypes")
        return chosen
    if args.sampling:
        rng = np.random.default_rng(args.seed)
        return sorted(rng.choice(num_prototypes, size=min(args.sampling, num_prototypes), replace=False).tolist())
    return list(range(num_prototypes))


def tint(image: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """alpha * pixel + (1 - alpha) * red where ``mask``; unchanged elsewhere."""
    out = image.astype(np.float32)
    out[mask] = alpha * out[mask] + (1 - alpha) * np.array([255.0, 0.0, 0.0])
    return out.astype(np.uint8)


def draw_nearest(images: np.ndarray, dots: torch.Tensor, prototypes: list[int], args: argparse.Namespace):
    import matplotlib.pyplot as plt

    top = best_images(dots, args.topk)
    assignment = pixel_assignment(dots, images.shape[1]).numpy()
    rows, cols = top.shape[1], len(prototypes)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows), squeeze=False)
    for col, k in enumerate(prototypes):
        for row, n in enumerate(top[k].tolist()):
            axes[row, col].imshow(tint(images[n], assignment[n] == k, args.alpha))
            axes[row, col].axis("off")
        axes[0, col].set_title(f"#{k}", fontsize=9)
    return fig


def draw_assignments(images: np.ndarray, dots: torch.Tensor, args: argparse.Namespace):
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(args.seed)
    picked = sorted(rng.choice(len(images), size=min(args.num_images, len(images)), replace=False).tolist())
    assignment = pixel_assignment(dots[picked], images.shape[1]).numpy()
    palette = prototype_palette(dots.shape[1])
    fig, axes = plt.subplots(len(picked), 2, figsize=(4, 2 * len(picked)), squeeze=False)
    for row, (n, labels) in enumerate(zip(picked, assignment, strict=True)):
        axes[row, 0].imshow(images[n])
        axes[row, 1].imshow(palette[labels])
        used = np.unique(labels)
        axes[row, 1].set_title(f"{len(used)} prototypes", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    return fig


def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu)")
    device = torch.device(args.device)
    try:
        teacher = load_teacher(args.model_path, student=args.student).to(device).eval()
        paths = list_images("folder", Path(args.data_dir) / IMAGE_FOLDERS[args.dataset])
    except (CheckpointError, DatasetError) as e:
        raise SystemExit(str(e)) from None
    if args.max_images:
        paths = paths[: args.max_images]
    try:
        images = load_center_crops(paths, args.image_size, args.resize)
    except OSError as e:
        raise SystemExit(str(e)) from None
    dots = prototype_scores(teacher, images, args.batch_size, device)

    import matplotlib

    matplotlib.use("Agg")
    if args.mode == "nn":
        prototypes = choose_prototypes(args, dots.shape[1])
        fig = draw_nearest(images, dots, prototypes, args)
        what = f"{len(prototypes)} prototypes x top {min(args.topk, len(images))} of {len(images)} images"
    else:
        fig = draw_assignments(images, dots, args)
        what = f"prototype assignments of {min(args.num_images, len(images))} images"
    fig.savefig(args.save_path, dpi=args.dpi, bbox_inches="tight")
    print(f"wrote {args.save_path}: {what}")


if __name__ == "__main__":
    main(sys.argv[1:])
