"""Unsupervised semantic segmentation with the teacher's prototypes (the paper's Table 5 protocol).

For every image the prototype scores [K, h, w] are upsampled bilinearly to the label resolution and the
argmax over prototypes is the pixel's cluster. A classes x clusters confusion is accumulated over the
split, and clusters are mapped to classes on that same split, as PiCIE and STEGO do:

* ``hungarian``: a one-to-one matching (``linear_sum_assignment``) that maximises the matched pixels.
  SlotCon has K (64-256) > C prototypes, so only C clusters get a class; pixels of the other clusters
  are reported as wrong (false negatives of their true class), as is.
* ``majority``: over-clustering; every cluster takes its most frequent class.

The demo counts background as a class (11 classes). Usage::

    python -m eval.unsupervised_seg --checkpoint PATH|random --dataset demo --data-dir demo_data
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from eval.common import Batch, EvalModel, Evaluation, backbone_batches, base_dataset, load_split, run_evaluation
from eval.datasets import IGNORE_INDEX
from eval.metrics import confusion_matrix, hungarian_match, majority_vote_match, matched_scores
from models.grouping import pixel_assignments


@torch.no_grad()
def cluster_map(model: EvalModel, c5: Tensor, size: tuple[int, int]) -> Tensor:
    """Cluster id [B, H, W] of every pixel: argmax_k of the bilinearly upsampled prototype scores."""
    return pixel_assignments(model.grouping_k.scores(model.projector_k(c5)), size)


@torch.no_grad()
def cluster_confusion(model: EvalModel, batches: Iterable[Batch], num_classes: int) -> Tensor:
    """[C, K] counts of labelled pixels of class c assigned to prototype k, over all batches."""
    num_clusters = model.grouping_k.num_prototypes
    total = None
    for batch in batches:
        clusters = cluster_map(model, batch.c5, tuple(batch.semantic.shape[-2:]))
        counts = confusion_matrix(batch.semantic, clusters, num_classes, num_clusters, IGNORE_INDEX)
        total = counts if total is None else total + counts
    if total is None:
        raise ValueError("no images to evaluate")
    return total.cpu()


def score_clusters(confusion: Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Hungarian and majority-vote mIoU / pixel accuracy of a [C, K] cluster confusion."""
    result: dict[str, Any] = {
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "num_clusters": confusion.shape[1],
        "active_clusters": int((confusion.sum(dim=0) > 0).sum()),
    }
    for name, match in (("hungarian", hungarian_match), ("majority", majority_vote_match)):
        mapping = match(confusion)
        result[name] = {**matched_scores(confusion, mapping), "mapping": mapping.tolist()}
    return result


def run_unsupervised_seg(
    model: EvalModel, batches: Iterable[Batch], num_classes: int, class_names: Sequence[str]
) -> dict[str, Any]:
    """Cluster the pixels of every batch with the prototypes and score both matchings."""
    return score_clusters(cluster_confusion(model, batches, num_classes), class_names)


def summary_row(result: dict[str, Any]) -> dict[str, float]:
    """The four headline numbers of a result, for tables."""
    hungarian, majority = result["hungarian"], result["majority"]
    return {
        "seg_hungarian_miou": hungarian["miou"],
        "seg_hungarian_acc": hungarian["pixel_accuracy"],
        "seg_majority_miou": majority["miou"],
        "seg_majority_acc": majority["pixel_accuracy"],
    }


def evaluate(args: argparse.Namespace, model: EvalModel, device: torch.device) -> dict[str, Any]:
    dataset = load_split(args, "eval")
    source = base_dataset(dataset)
    result = run_unsupervised_seg(
        model,
        backbone_batches(model, dataset, args.batch_size, device, args.workers),
        source.num_classes,
        source.class_names,
    )
    result.update(split="eval", num_images=len(dataset), image_size=source.image_size)
    return result


def describe(args: argparse.Namespace, result: dict[str, Any]) -> str:
    return (
        f"unsupervised segmentation, {args.dataset} eval ({result['num_images']} images, {result['num_classes']} "
        f"classes, {result['active_clusters']}/{result['num_clusters']} prototypes used)"
    )


EVALUATION = Evaluation("python -m eval.unsupervised_seg", __doc__.splitlines()[0], evaluate, summary_row, describe)


def main(argv: Sequence[str] | None = None) -> int:
    return run_evaluation(EVALUATION, argv)


if __name__ == "__main__":
    sys.exit(main())
