"""Segmentation metrics and cluster-to-class matching.

Convention used throughout: a confusion matrix ``M`` has one row per ground-truth class and one column
per predicted id, ``M[c, p]`` = number of labelled pixels of class ``c`` predicted as ``p``. Predicted
ids may outnumber the classes (clusters, or an extra "unassigned" column); a column ``p >= C`` is never
correct for any class.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

UNASSIGNED = -1  # the class a cluster maps to when a matching leaves it without one


def _as_numpy(array: np.ndarray | Tensor) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)


def confusion_matrix(target: Tensor, prediction: Tensor, num_classes: int, num_predictions: int | None = None,
                     ignore_index: int | None = 255) -> Tensor:
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
    return {"miou": mean_iou(class_confusion), "pixel_accuracy": pixel_accuracy(class_confusion),
            "per_class_iou": [None if np.isnan(v) else float(v) for v in iou]}
