"""Linear probe on frozen dense features: a 1x1 conv on the teacher backbone's C5 map.

The probe's logits [B, C, h, w] are upsampled bilinearly to the label resolution and trained with
pixel-wise cross-entropy (ignoring unlabelled pixels) on the train split; mIoU and pixel accuracy are
measured on the eval split. Features are extracted once and cached in memory, so every epoch only
costs the 1x1 conv and the upsampling.

Each C5 channel is standardised with the train split's mean and std before the conv. That is an affine
map folded into a linear layer (the probe stays linear); it only makes the optimisation insensitive to
the feature scale, which differs wildly between a random and a trained backbone. Usage::

    python -m eval.linear_probe --checkpoint PATH|random --dataset demo --data-dir demo_data
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eval.common import EvalModel, Evaluation, SplitFeatures, run_evaluation, split_features
from eval.datasets import IGNORE_INDEX
from eval.metrics import confusion_matrix, mean_iou, per_class_iou, pixel_accuracy

DEFAULT_EPOCHS = 10
DEFAULT_LR = 1e-2


class LinearProbe(nn.Module):
    """Per-channel standardisation then a 1x1 conv; ``forward(c5, size)`` gives logits [B, C, *size]."""

    def __init__(self, mean: Tensor, std: Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))
        self.classifier = nn.Conv2d(mean.numel(), num_classes, kernel_size=1)

    def forward(self, c5: Tensor, size: tuple[int, int]) -> Tensor:
        logits = self.classifier((c5 - self.mean) / self.std)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def channel_statistics(c5: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """Mean and std of every channel of [N, C, h, w] features over N, h, w (float64 sums, chunked)."""
    total = torch.zeros(c5.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for part in c5.split(chunk):
        part = part.double()
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    count = c5.shape[0] * c5.shape[2] * c5.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    # A constant channel (e.g. dead after ReLU) would divide by zero; it carries no information anyway.
    return mean.float(), std.clamp_min(1e-6).float()


def train_linear_probe(
    train: SplitFeatures,
    device: torch.device,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = 32,
    seed: int = 0,
) -> LinearProbe:
    """Fit the probe with Adam and cross-entropy on cached train features; deterministic given ``seed``."""
    mean, std = channel_statistics(train.c5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = LinearProbe(mean, std, train.num_classes).to(device)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    shuffler = torch.Generator().manual_seed(seed)
    probe.train()
    for _ in range(epochs):
        for batch in train.batches(batch_size, device, torch.randperm(len(train), generator=shuffler)):
            logits = probe(batch.c5, tuple(batch.semantic.shape[-2:]))
            loss = F.cross_entropy(logits, batch.semantic.long(), ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return probe.eval()


@torch.no_grad()
def probe_confusion(probe: LinearProbe, features: SplitFeatures, device: torch.device, batch_size: int = 32) -> Tensor:
    """[C, C] confusion of the probe's argmax predictions on a split."""
    total = torch.zeros(features.num_classes, features.num_classes, dtype=torch.long, device=device)
    for batch in features.batches(batch_size, device):
        prediction = probe(batch.c5, tuple(batch.semantic.shape[-2:])).argmax(dim=1)
        total += confusion_matrix(batch.semantic, prediction, features.num_classes, ignore_index=IGNORE_INDEX)
    return total.cpu()


def run_linear_probe(
    train: SplitFeatures,
    evaluation: SplitFeatures,
    device: torch.device,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Train on ``train``, score on ``evaluation``: mIoU, pixel accuracy, per-class IoU."""
    if epochs < 1 or lr <= 0:
        raise ValueError(f"the probe needs --epochs >= 1 and --lr > 0, got {epochs} and {lr}")
    probe = train_linear_probe(train, device, epochs, lr, batch_size, seed)
    confusion = probe_confusion(probe, evaluation, device, batch_size)
    iou = per_class_iou(confusion)
    return {
        "miou": mean_iou(confusion),
        "pixel_accuracy": pixel_accuracy(confusion),
        "per_class_iou": [None if math.isnan(v) else float(v) for v in iou],
        "class_names": evaluation.class_names,
        "epochs": epochs,
        "lr": lr,
        "num_train_images": len(train),
        "num_eval_images": len(evaluation),
    }


def summary_row(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a result, for tables."""
    return {"linear_miou": result["miou"], "linear_acc": result["pixel_accuracy"]}


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="Adam learning rate")


def evaluate(args: argparse.Namespace, model: EvalModel, device: torch.device) -> dict[str, Any]:
    train, evaluation = (split_features(args, model, device, split) for split in ("train", "eval"))
    return run_linear_probe(train, evaluation, device, args.epochs, args.lr, args.batch_size, args.seed)


def describe(args: argparse.Namespace, result: dict[str, Any]) -> str:
    return (
        f"linear probe on C5, {args.dataset}: {result['num_train_images']} train / {result['num_eval_images']} "
        f"eval images, {args.epochs} epochs"
    )


EVALUATION = Evaluation(
    "python -m eval.linear_probe", __doc__.splitlines()[0], evaluate, summary_row, describe, add_options, clusters=False
)


def main(argv: Sequence[str] | None = None) -> int:
    return run_evaluation(EVALUATION, argv)


if __name__ == "__main__":
    sys.exit(main())
