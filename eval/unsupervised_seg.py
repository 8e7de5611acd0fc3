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
import torch.nn.functional as F
from torch import Tensor

from eval.common import (
    Batch,
    add_data_args,
    add_model_args,
    backbone_batches,
    base_dataset,
    build_model,
    check_args,
    format_table,
    load_split,
    model_name,
    random_config,
    resolve_device,
    run_cli,
    write_json,
)
from eval.datasets import IGNORE_INDEX
from eval.metrics import confusion_matrix, hungarian_match, majority_vote_match, matched_scores
from models.slotcon import SlotConTeacher

# Upsampled score maps are large ([K, H, W] per image); cap the floats held at once.
_MAX_UPSAMPLED_ELEMENTS = 1 << 25


@torch.no_grad()
def cluster_map(model: SlotConTeacher, c5: Tensor, size: tuple[int, int]) -> Tensor:
    """Cluster id [B, H, W] of every pixel: argmax_k of the bilinearly upsampled prototype scores."""
    scores = model.grouping_k.scores(model.projector_k(c5))
    per_image = scores.shape[1] * size[0] * size[1]
    chunk = max(1, _MAX_UPSAMPLED_ELEMENTS // per_image)
    return torch.cat([F.interpolate(part, size=size, mode="bilinear", align_corners=False).argmax(dim=1)
                      for part in scores.split(chunk)])


@torch.no_grad()
def cluster_confusion(model: SlotConTeacher, batches: Iterable[Batch], num_classes: int) -> Tensor:
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
    result: dict[str, Any] = {"num_classes": len(class_names), "class_names": list(class_names),
                              "num_clusters": confusion.shape[1],
                              "active_clusters": int((confusion.sum(dim=0) > 0).sum())}
    for name, match in (("hungarian", hungarian_match), ("majority", majority_vote_match)):
        mapping = match(confusion)
        result[name] = {**matched_scores(confusion, mapping), "mapping": mapping.tolist()}
    return result


def run_unsupervised_seg(model: SlotConTeacher, batches: Iterable[Batch], num_classes: int,
                         class_names: Sequence[str]) -> dict[str, Any]:
    """Cluster the pixels of every batch with the prototypes and score both matchings."""
    return score_clusters(cluster_confusion(model, batches, num_classes), class_names)


def summary_row(result: dict[str, Any]) -> dict[str, float]:
    """The four headline numbers of a result, for tables."""
    hungarian, majority = result["hungarian"], result["majority"]
    return {"seg_hungarian_miou": hungarian["miou"], "seg_hungarian_acc": hungarian["pixel_accuracy"],
            "seg_majority_miou": majority["miou"], "seg_majority_acc": majority["pixel_accuracy"]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.unsupervised_seg", description=__doc__.splitlines()[0])
    add_model_args(parser)
    add_data_args(parser)
    args = parser.parse_args(argv)

    def run() -> int:
        check_args(args)
        device = resolve_device(args.device)
        dataset = load_split(args, "eval")
        model = build_model(args.checkpoint, random_config(args), args.seed, device, args.student)
        source = base_dataset(dataset)
        result = run_unsupervised_seg(model, backbone_batches(model, dataset, args.batch_size, device, args.workers),
                                      source.num_classes, source.class_names)
        result.update(checkpoint=args.checkpoint, dataset=args.dataset, split="eval", num_images=len(dataset),
                      image_size=source.image_size)
        print(f"unsupervised segmentation, {args.dataset} eval ({len(dataset)} images, {result['num_classes']} "
              f"classes, {result['active_clusters']}/{result['num_clusters']} prototypes used)")
        print(format_table({model_name(args.checkpoint): summary_row(result)}, list(summary_row(result))))
        if args.output_json:
            write_json(args.output_json, result)
        return 0

    return run_cli("eval.unsupervised_seg", run)


if __name__ == "__main__":
    sys.exit(main())
