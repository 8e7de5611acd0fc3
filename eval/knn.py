"""k-NN classification of objects from mask-pooled backbone features.

Every instance of the demo scenes becomes one feature vector: the teacher backbone's C5 map (the
representation that transfers, not the projector output, which is shaped for the prototypes) averaged
over the instance mask, then L2-normalised. The mask is brought to the feature grid by area averaging
(``adaptive_avg_pool2d``), so each C5 cell is weighted by the fraction of its image area the instance
covers; when the image side is a multiple of the grid this equals averaging nearest-upsampled features
over the mask pixels.

Eval instances are classified against train instances by cosine similarity with DINO's weighted k-NN:
the k most similar train instances vote for their class with weight exp(sim / T) (k = 20, T = 0.07).
Usage::

    python -m eval.knn --checkpoint PATH|random --dataset demo --data-dir demo_data
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from eval.common import EvalModel, Evaluation, SplitFeatures, run_evaluation, split_features

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07


def pool_instances(c5: Tensor, instance: Tensor, semantic: Tensor) -> tuple[Tensor, Tensor]:
    """Mask-averaged features [M, C] and class labels [M] of every instance in a batch.

    ``c5`` [B, C, h, w]; ``instance`` / ``semantic`` [B, H, W] (0 = no instance). An instance's class is
    the most frequent semantic id over its pixels.
    """
    features, labels = [], []
    for image_c5, image_instance, image_semantic in zip(c5, instance, semantic, strict=True):
        ids = image_instance.unique()
        ids = ids[ids != 0]
        if ids.numel() == 0:
            continue
        masks = (image_instance.unsqueeze(0) == ids.view(-1, 1, 1)).float()  # [M, H, W]
        weights = F.adaptive_avg_pool2d(masks, image_c5.shape[-2:])  # [M, h, w], fraction covered
        pooled = torch.einsum("chw,mhw->mc", image_c5, weights) / weights.sum(dim=(1, 2)).unsqueeze(1)
        features.append(pooled)
        for mask in masks.bool():
            labels.append(torch.bincount(image_semantic[mask].long()).argmax())
    if not features:
        return c5.new_zeros(0, c5.shape[1]), torch.zeros(0, dtype=torch.long, device=c5.device)
    return torch.cat(features), torch.stack(labels)


def instance_features(features: SplitFeatures, batch_size: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """L2-normalised pooled features [M, C] and labels [M] of every instance in a split."""
    if features.instance is None:
        raise ValueError("k-NN needs instance maps; this dataset has none (use --dataset demo)")
    pooled, labels = zip(
        *(pool_instances(b.c5, b.instance, b.semantic) for b in features.batches(batch_size, device)), strict=True
    )
    return F.normalize(torch.cat(pooled), dim=1), torch.cat(labels)


@torch.no_grad()
def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    query_features: Tensor,
    num_classes: int,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk: int = 1024,
) -> Tensor:
    """Predicted class of each query: sum over its k nearest train rows (by dot product) of exp(sim / T)
    per class, argmax. Features should be L2-normalised, so the dot product is the cosine similarity.
    """
    if train_features.shape[0] == 0:
        raise ValueError("k-NN needs at least one train instance")
    k = min(k, train_features.shape[0])
    predictions = []
    for queries in query_features.split(chunk):
        similarity, neighbours = (queries @ train_features.T).topk(k, dim=1)
        votes = torch.zeros(queries.shape[0], num_classes, device=queries.device, dtype=similarity.dtype)
        votes.scatter_add_(1, train_labels[neighbours], (similarity / temperature).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions) if predictions else train_labels.new_zeros(0)


def run_knn(
    train: SplitFeatures,
    evaluation: SplitFeatures,
    device: torch.device,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Top-1 accuracy of weighted k-NN on mask-pooled instance features (eval instances vs train ones)."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"k-NN needs --k >= 1 and --temperature > 0, got {k} and {temperature}")
    train_x, train_y = instance_features(train, batch_size, device)
    eval_x, eval_y = instance_features(evaluation, batch_size, device)
    if eval_x.shape[0] == 0:
        raise ValueError("the eval split has no instances")
    predicted = knn_classify(train_x, train_y, eval_x, train.num_classes, k, temperature)
    return {
        "top1": float((predicted == eval_y).float().mean()),
        "k": k,
        "temperature": temperature,
        "num_train_instances": int(train_x.shape[0]),
        "num_eval_instances": int(eval_x.shape[0]),
    }


def summary_row(result: dict[str, Any]) -> dict[str, float]:
    """The headline number of a result, for tables."""
    return {"knn_top1": result["top1"]}


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="neighbours (default 20)")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="vote temperature")


def check_dataset(args: argparse.Namespace) -> None:
    if args.dataset != "demo":
        raise ValueError("k-NN object classification needs instance maps: only --dataset demo has them")


def evaluate(args: argparse.Namespace, model: EvalModel, device: torch.device) -> dict[str, Any]:
    train, evaluation = (split_features(args, model, device, split) for split in ("train", "eval"))
    return run_knn(train, evaluation, device, args.k, args.temperature, args.batch_size)


def describe(args: argparse.Namespace, result: dict[str, Any]) -> str:
    return (
        f"k-NN (k={args.k}, T={args.temperature}) on mask-pooled C5: {result['num_train_instances']} train / "
        f"{result['num_eval_instances']} eval instances"
    )


EVALUATION = Evaluation(
    "python -m eval.knn",
    __doc__.splitlines()[0],
    evaluate,
    summary_row,
    describe,
    add_options,
    check_dataset,
    clusters=False,
)


def main(argv: Sequence[str] | None = None) -> int:
    return run_evaluation(EVALUATION, argv)


if __name__ == "__main__":
    sys.exit(main())
