"""Object discovery scores of the teacher's prototype maps against instance maps: FG-ARI and mBO.

Every pixel's segment is its winning prototype (the argmax of the bilinearly upsampled scores, as in
``unsupervised_seg``), so an image's segments are the prototypes that win some of its pixels. Against the
ground-truth instance map (0 = background, 1..n = objects):

* **FG-ARI**: the adjusted Rand index between the prototype map and the instance map over the image's
  foreground pixels only (as in the slot-attention literature: how well the segments separate the objects,
  whatever they do with the background), averaged over the images that have at least two foreground pixels.
* **mBO** (mean best overlap): for every ground-truth object, the best IoU between its mask and any of the
  image's prototype segments (over all pixels, background included), averaged over all objects of the split.

Two instances of the same class that share a prototype count as merged for FG-ARI: prototypes are semantic
clusters, not instance slots, so the score is a lower bound on how well objects are found. Usage::

    python -m eval.object_discovery --checkpoint PATH|random --dataset demo --data-dir demo_data
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eval.common import Batch, EvalModel, Evaluation, backbone_batches, base_dataset, load_split, run_evaluation
from eval.metrics import adjusted_rand_index, best_overlaps
from eval.unsupervised_seg import cluster_map


def instance_contingency(instance: Tensor, segments: Tensor, num_segments: int) -> Tensor:
    """Per image, ``N[b, i, s]`` = number of pixels of instance i (0 = background) in segment s: int64
    [B, I, S] with I = the largest instance id + 1. One ``bincount`` over the batch."""
    if instance.shape != segments.shape or instance.dim() != 3:
        raise ValueError(
            f"instance {tuple(instance.shape)} and segments {tuple(segments.shape)} must both be [B, H, W]"
        )
    instance, segments = instance.long(), segments.long()
    if segments.numel() and (segments.min() < 0 or segments.max() >= num_segments):
        raise ValueError(f"segment ids must lie in 0..{num_segments - 1}")
    if instance.numel() and instance.min() < 0:
        raise ValueError("instance ids must be non-negative")
    batch = instance.shape[0]
    num_instances = int(instance.max()) + 1 if instance.numel() else 1
    image = torch.arange(batch, device=instance.device).view(-1, 1, 1)
    key = (image * num_instances + instance) * num_segments + segments
    counts = torch.bincount(key.reshape(-1), minlength=batch * num_instances * num_segments)
    return counts.reshape(batch, num_instances, num_segments)


def image_scores(contingency: np.ndarray | Tensor) -> tuple[float, np.ndarray]:
    """(FG-ARI, best overlap of every object) of one image's [I, S] instance x segment contingency.

    Row 0 is the background: it is left out of the ARI and has no best overlap of its own, but its pixels
    count in the segments' areas. Instance ids without pixels (absent from this image) are skipped.
    """
    n = contingency.detach().cpu().numpy() if isinstance(contingency, Tensor) else np.asarray(contingency)
    objects = n[1:][n[1:].sum(axis=1) > 0]
    fg_ari = adjusted_rand_index(objects) if len(objects) else float("nan")
    overlaps = best_overlaps(n)[1:]
    return fg_ari, overlaps[np.isfinite(overlaps)]


def score_segments(batches: Iterable[tuple[Tensor, Tensor]], num_segments: int) -> dict[str, Any]:
    """FG-ARI and mBO of (instance map, segment map) batches, each [B, H, W]."""
    aris: list[float] = []
    overlaps: list[np.ndarray] = []
    for instance, segments in batches:
        for counts in instance_contingency(instance, segments, num_segments).cpu().numpy():
            fg_ari, best = image_scores(counts)
            aris.append(fg_ari)
            overlaps.append(best)
    if not aris:
        raise ValueError("no images to evaluate")
    aris_array = np.array(aris)
    defined = aris_array[np.isfinite(aris_array)]
    best_all = np.concatenate(overlaps)
    return {
        "fg_ari": float(defined.mean()) if defined.size else float("nan"),
        "mbo": float(best_all.mean()) if best_all.size else float("nan"),
        "num_images": len(aris),
        "num_images_with_fg_ari": int(defined.size),
        "num_objects": int(best_all.size),
    }


@torch.no_grad()
def run_object_discovery(model: EvalModel, batches: Iterable[Batch]) -> dict[str, Any]:
    """FG-ARI and mBO of the teacher's prototype maps over batches that carry instance maps."""

    def segment_batches():
        for batch in batches:
            if batch.instance is None:
                raise ValueError("object discovery needs instance maps; this dataset has none")
            yield batch.instance, cluster_map(model, batch.c5, tuple(batch.instance.shape[-2:]))

    return score_segments(segment_batches(), model.grouping_k.num_prototypes)


def summary_row(result: dict[str, Any]) -> dict[str, float]:
    """The two headline numbers, for tables."""
    return {"fg_ari": result["fg_ari"], "mbo": result["mbo"]}


def check_dataset(args: argparse.Namespace) -> None:
    if args.dataset != "demo":
        raise ValueError("object discovery needs instance maps: only --dataset demo has them")


def evaluate(args: argparse.Namespace, model: EvalModel, device: torch.device) -> dict[str, Any]:
    dataset = load_split(args, "eval")
    result = run_object_discovery(model, backbone_batches(model, dataset, args.batch_size, device, args.workers))
    result.update(split="eval", image_size=base_dataset(dataset).image_size)
    return result


def describe(args: argparse.Namespace, result: dict[str, Any]) -> str:
    return f"object discovery, {args.dataset} eval ({result['num_images']} images, {result['num_objects']} objects)"


EVALUATION = Evaluation(
    "python -m eval.object_discovery", __doc__.splitlines()[0], evaluate, summary_row, describe, check=check_dataset
)


def main(argv: Sequence[str] | None = None) -> int:
    return run_evaluation(EVALUATION, argv)


if __name__ == "__main__":
    sys.exit(main())
