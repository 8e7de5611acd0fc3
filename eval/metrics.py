"""Segmentation metrics, cluster-to-class matching, and the spread of a table over seeds.

Convention used throughout: a confusion matrix ``M`` has one row per ground-truth class and one column
per predicted id, ``M[c, p]`` = number of labelled pixels of class ``c`` predicted as ``p``. Predicted
ids may outnumber the classes (clusters, or an extra "unassigned" column); a column ``p >= C`` is never
correct for any class.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from utils.tables import format_table, mean_range

UNASSIGNED = -1  # the class a cluster maps to when a matching leaves it without one


def _as_numpy(array: np.ndarray | Tensor) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)


def confusion_matrix(
    target: Tensor,
    prediction: Tensor,
    num_classes: int,
    num_predictions: int | None = None,
    ignore_index: int | None = 255,
) -> Tensor:
    """``M[c, p] = #{pixels i : target_i = c, prediction_i = p, target_i != ignore_index}``, int64 [C, P].

    One ``bincount`` of ``c * P + p`` over the kept pixels; runs on the inputs' device.
    ``num_predictions`` defaults to ``num_classes``. Out-of-range ids raise ``ValueError``.
    """
    num_predictions = num_classes if num_predictions is None else num_predictions
    if target.shape != prediction.shape:
        raise ValueError(f"target {tuple(target.shape)} and prediction {tuple(prediction.shape)} differ in shape")
    target = target.reshape(-1).long()
    prediction = prediction.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        target, prediction = target[keep], prediction[keep]
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"target ids must lie in 0..{num_classes - 1} (or be the ignore index {ignore_index})")
    if prediction.numel() and (prediction.min() < 0 or prediction.max() >= num_predictions):
        raise ValueError(f"prediction ids must lie in 0..{num_predictions - 1}")
    counts = torch.bincount(target * num_predictions + prediction, minlength=num_classes * num_predictions)
    return counts.reshape(num_classes, num_predictions)


def per_class_iou(confusion: np.ndarray | Tensor) -> np.ndarray:
    """IoU of every class c of a [C, P] confusion (P >= C):

        IoU_c = M[c, c] / (sum_p M[c, p] + sum_{c'} M[c', c] - M[c, c])   (TP / (TP + FN + FP))

    A class absent from the labels and never predicted has 0 / 0 = NaN (left out of the mean).
    """
    m = _as_numpy(confusion).astype(np.float64)
    num_classes = m.shape[0]
    if m.ndim != 2 or m.shape[1] < num_classes:
        raise ValueError(f"expected a [C, P] confusion with P >= C, got shape {m.shape}")
    true_positive = np.diag(m[:, :num_classes])
    union = m.sum(axis=1) + m[:, :num_classes].sum(axis=0) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / np.maximum(union, 1), np.nan)


def mean_iou(confusion: np.ndarray | Tensor) -> float:
    """mIoU = mean of ``per_class_iou`` over the classes where it is defined (NaN if none is)."""
    iou = per_class_iou(confusion)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(confusion: np.ndarray | Tensor) -> float:
    """Pixel accuracy = sum_c M[c, c] / sum M (all labelled pixels, predictions of any column)."""
    m = _as_numpy(confusion).astype(np.float64)
    total = m.sum()
    return float(np.trace(m[:, : m.shape[0]]) / total) if total > 0 else float("nan")


def hungarian_match(confusion: np.ndarray | Tensor) -> np.ndarray:
    """One-to-one cluster -> class mapping maximising the matched overlap, for a [C, K] confusion.

    Solves max_sigma sum_k M[sigma(k), k] over injective partial maps (``linear_sum_assignment`` on the
    rectangular matrix). With K > C only C clusters get a class; the others map to ``UNASSIGNED`` and
    their pixels count as wrong. Returns an int64 array of length K.
    """
    m = _as_numpy(confusion)
    class_ids, cluster_ids = linear_sum_assignment(m, maximize=True)
    mapping = np.full(m.shape[1], UNASSIGNED, dtype=np.int64)
    mapping[cluster_ids] = class_ids
    return mapping


def majority_vote_match(confusion: np.ndarray | Tensor) -> np.ndarray:
    """Many-to-one mapping for over-clustering: cluster k -> argmax_c M[c, k] (its most frequent class).

    Clusters with no pixels map to ``UNASSIGNED``. Returns an int64 array of length K.
    """
    m = _as_numpy(confusion)
    mapping = m.argmax(axis=0).astype(np.int64)
    mapping[m.sum(axis=0) == 0] = UNASSIGNED
    return mapping


def apply_mapping(clusters: Tensor, mapping: np.ndarray | Tensor) -> Tensor:
    """Class id of every pixel, ``mapping[clusters]``; ``UNASSIGNED`` (-1) where the cluster has no class."""
    lookup = torch.as_tensor(_as_numpy(mapping), dtype=torch.long, device=clusters.device)
    return lookup[clusters.long()]


def remap_confusion(confusion: np.ndarray | Tensor, mapping: np.ndarray | Tensor) -> np.ndarray:
    """The [C, C + 1] class confusion implied by a [C, K] cluster confusion and a cluster -> class map.

    Column k of the input is added to column ``mapping[k]``; unassigned clusters go to the extra last
    column, so their pixels stay in every class's row total (false negatives) but are never correct.
    """
    m = _as_numpy(confusion).astype(np.int64)
    mapping = _as_numpy(mapping).astype(np.int64)
    num_classes, num_clusters = m.shape
    if mapping.shape != (num_clusters,):
        raise ValueError(f"mapping has shape {mapping.shape}, expected ({num_clusters},)")
    if ((mapping < UNASSIGNED) | (mapping >= num_classes)).any():
        raise ValueError(f"mapping values must lie in 0..{num_classes - 1} or be {UNASSIGNED}")
    columns = np.where(mapping == UNASSIGNED, num_classes, mapping)
    out = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    np.add.at(out.T, columns, m.T)
    return out


def matched_scores(confusion: np.ndarray | Tensor, mapping: np.ndarray | Tensor) -> dict[str, float | list]:
    """mIoU, pixel accuracy and per-class IoU after mapping clusters to classes."""
    class_confusion = remap_confusion(confusion, mapping)
    iou = per_class_iou(class_confusion)
    return {
        "miou": mean_iou(class_confusion),
        "pixel_accuracy": pixel_accuracy(class_confusion),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
    }


def _pairs(counts: np.ndarray) -> np.ndarray:
    """n choose 2 of every entry (float64, so large pixel counts do not overflow)."""
    counts = counts.astype(np.float64)
    return counts * (counts - 1) / 2


def adjusted_rand_index(contingency: np.ndarray | Tensor) -> float:
    """Adjusted Rand index (Hubert & Arabie) of two partitions given by their [A, B] contingency table
    ``N[a, b]`` = number of items in part a of the first and part b of the second partition:

        index = sum_ab C(N_ab, 2),  sa = sum_a C(N_a., 2),  sb = sum_b C(N_.b, 2),  pairs = C(N, 2)
        ARI   = (index - sa sb / pairs) / ((sa + sb) / 2 - sa sb / pairs)

    1 for identical partitions, ~0 in expectation for independent ones, negative below chance. The
    denominator is 0 only when both partitions are trivial in the same way (one part each, or all
    singletons): they are then identical and the ARI is 1, as scikit-learn defines it. NaN for fewer than
    two items (no pairs to compare).
    """
    n = _as_numpy(contingency)
    total = float(n.sum())
    if total < 2:
        return float("nan")
    index = _pairs(n).sum()
    sum_a, sum_b = _pairs(n.sum(axis=1)).sum(), _pairs(n.sum(axis=0)).sum()
    expected = sum_a * sum_b / _pairs(np.array(total))
    denominator = (sum_a + sum_b) / 2 - expected
    if denominator == 0:
        return 1.0
    return float((index - expected) / denominator)


def best_overlaps(contingency: np.ndarray | Tensor) -> np.ndarray:
    """For every ground-truth segment g (row of an [G, P] contingency over *all* pixels of one image), the
    best IoU over the predicted segments p (columns):

        BO_g = max_p N[g, p] / (sum_p' N[g, p'] + sum_g' N[g', p] - N[g, p])

    Rows must cover every pixel (e.g. background included as a row) for the predicted areas to be
    right; drop the rows that are not objects afterwards. Rows with no pixels give NaN.
    """
    n = _as_numpy(contingency).astype(np.float64)
    union = n.sum(axis=1, keepdims=True) + n.sum(axis=0, keepdims=True) - n
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, n / np.maximum(union, 1), 0.0)
    best = iou.max(axis=1) if n.shape[1] else np.zeros(n.shape[0])
    return np.where(n.sum(axis=1) > 0, best, np.nan)


def seed_spread(runs: Sequence[dict[str, dict[str, float]]]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per model and column, ``(mean, min, max)`` over ``runs`` (one ``{model: {column: value}}`` table per seed).

    A model or column counts only if every run has it; NaN or None values (a score that was undefined; JSON
    writes NaN as null) are left out of that cell, which is NaN only when no run has a value.
    """
    if not runs:
        raise ValueError("no runs to summarise")
    spread: dict[str, dict[str, tuple[float, float, float]]] = {}
    for model in (m for m in runs[0] if all(m in run for run in runs)):
        columns = [c for c in runs[0][model] if all(c in run[model] for run in runs)]
        spread[model] = {}
        for column in columns:
            values = [float(v) for v in (run[model][column] for run in runs) if v is not None and math.isfinite(v)]
            spread[model][column] = (
                (sum(values) / len(values), min(values), max(values)) if values else (math.nan, math.nan, math.nan)
            )
    return spread


def format_spread(spread: dict[str, dict[str, tuple[float, float, float]]], runs: int) -> str:
    """``seed_spread`` as a text table of ``mean (min-max)`` in percent, one row per model."""
    models = list(spread)
    columns = list(dict.fromkeys(c for m in models for c in spread[m]))
    cells = {
        m: [
            mean_range(100 * mean, 100 * low, 100 * high) if math.isfinite(mean) else "-"
            for mean, low, high in (spread[m].get(c, (math.nan,) * 3) for c in columns)
        ]
        for m in models
    }
    return format_table(cells, columns, first=f"model ({runs} seeds)")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eval.metrics EVAL_JSON...``: the mean and min-max of ``eval.report`` tables over seeds."""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print(
            "usage: python -m eval.metrics EVAL_JSON [EVAL_JSON...] (eval.report --output-json files)", file=sys.stderr
        )
        return 2
    runs = []
    for path in paths:
        try:
            models = json.loads(Path(path).read_text())["models"]
            runs.append({name: result["summary"] for name, result in models.items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            print(
                f"eval.metrics: error: {path}: not an eval.report JSON file ({type(exc).__name__}: {exc})",
                file=sys.stderr,
            )
            return 2
    print(format_spread(seed_spread(runs), len(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
