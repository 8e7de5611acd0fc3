"""SlotCon's two objectives and the geometry that feeds them.

Everything here works on fixed-shape tensors: no ``.nonzero()``, no per-sample Python loops, so a
training step never waits on the host. Where the reference selects a variable number of slots, we
pack them into a buffer of capacity ``min(K, H*W)`` per image (an image cannot have more distinct
argmax prototypes than pixels) and carry a validity mask.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align


def align_to_overlap(scores: Tensor, boxes: Tensor, flipped: Tensor) -> Tensor:
    """Resample score maps [B, K, H, W] on an H x W grid over each view's overlap box, unflipped.

    ``boxes`` [B, 4] is the intersection of the two crops in this view's normalised frame (x1, y1,
    x2, y2), already mirrored if the view was flipped; ``flipped`` [B] bool. ROI-align with
    ``aligned=True`` takes one bilinear sample per bin centre (the box is at most H x W cells), so the
    box [0, 0, 1, 1] reproduces the map exactly. Flipped samples are then mirrored back, so both views
    index the same image points. An empty or inverted box (crops that do not overlap) gives zeros.
    """
    b, _, h, w = scores.shape
    x1, y1, x2, y2 = boxes.float().unbind(dim=1)  # scaled with Python numbers: no host-to-device copy
    batch_index = torch.arange(b, device=boxes.device, dtype=torch.float32)
    rois = torch.stack([batch_index, x1 * w, y1 * h, x2 * w, y2 * h], dim=1)
    aligned = roi_align(scores.float(), rois, output_size=(h, w), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return torch.where(flipped.view(b, 1, 1, 1), aligned.flip(-1), aligned)


def group_loss(
    student_scores: Tensor, teacher_scores: Tensor, center: Tensor, student_temp: float, teacher_temp: float
) -> Tensor:
    """Pixel-level self-distillation between aligned score maps [B, K, H, W] (rows r = pixels).

    L = 1/N sum_r sum_k -softmax_k((t_r - c) / teacher_temp) * log_softmax_k(s_r / student_temp)
    """
    k = student_scores.shape[1]
    student_rows = student_scores.permute(0, 2, 3, 1).reshape(-1, k).float()
    teacher_rows = teacher_scores.permute(0, 2, 3, 1).reshape(-1, k).float()
    targets = F.softmax((teacher_rows - center) / teacher_temp, dim=1)
    return -(targets * F.log_softmax(student_rows / student_temp, dim=1)).sum(dim=1).mean()


def active_prototypes(scores: Tensor) -> Tensor:
    """[B, K] bool: prototype k is the argmax over prototypes of at least one pixel of image b."""
    b, k = scores.shape[:2]
    winners = scores.flatten(2).argmax(dim=1)
    return torch.zeros(b, k, dtype=torch.bool, device=scores.device).scatter_(1, winners, True)


def pack_active(mask: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
    """Per image, the indices of the true entries of ``mask`` [B, K] first (ascending), padded.

    Returns ``(index [B, capacity], valid [B, capacity])``; the padding points at inactive entries.
    """
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :capacity]
    return order, mask.gather(1, order)


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x [B, K, D], index [B, C] -> [B, C, D]."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _all_gather(x: Tensor) -> Tensor:
    """Concatenate x from every rank along dim 0 (no gradient); x itself without a process group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _pack_rows(valid: Tensor, multiple: int = 64) -> Tensor:
    """Indices of the valid rows first, cut to their count rounded up to ``multiple``. Reads the count, so
    this is the one place where a step waits for the device."""
    count = int(valid.sum())
    rows = min(valid.numel(), max(multiple, -(-count // multiple) * multiple))
    return torch.argsort((~valid).to(torch.uint8), stable=True)[:rows]


def slot_contrastive_loss(
    student_slots: Tensor,
    student_scores: Tensor,
    teacher_slots: Tensor,
    teacher_scores: Tensor,
    predictor: torch.nn.Module,
    temp: float = 0.2,
    pack_queries: bool = False,
) -> Tensor:
    """InfoNCE between student slots of view a and teacher slots of view b, keys from all ranks.

    Queries are the (image, prototype) pairs active in both maps (argmax of >= 1 pixel in the
    student's view-a scores and the teacher's view-b scores); keys are every teacher slot active in
    its map, over the global batch; the positive of a query is the same image's same prototype:

        L = 2 temp * mean_q CE( <normalize(pred(q)), normalize(k_j)> / temp over active keys j, pos(q) )

    The mean runs over the queries of the *global* batch (local sum / global count, times the world
    size because DDP averages over ranks), so the objective does not depend on how the batch is
    split over processes. With one process this equals the reference's per-GPU mean.

    Queries sit in a buffer of ``min(K, H*W)`` rows per image, mostly padding once the prototypes
    specialise; the predictor MLP still runs on every row (11% of a ResNet-50 step's FLOPs). With
    ``pack_queries`` the valid rows are moved first and the predictor runs on their count rounded up to 64,
    at the price of one host synchronisation. The result is the same.
    """
    b, k, dim = student_slots.shape
    capacity = min(k, student_scores.shape[2] * student_scores.shape[3])
    rank, world = _rank_and_world()

    mask_k = active_prototypes(teacher_scores)
    mask_query = active_prototypes(student_scores) & mask_k
    query_index, query_valid = pack_active(mask_query, capacity)
    key_index, key_valid = pack_active(mask_k, capacity)

    queries = _gather_rows(student_slots, query_index).reshape(b * capacity, dim)
    query_valid = query_valid.reshape(-1)
    # The positive's position in the packed key list: rank block, image block, rank among its actives.
    position_in_image = (mask_k.cumsum(dim=1) - 1).gather(1, query_index)
    image_offset = (rank * b + torch.arange(b, device=mask_k.device)) * capacity
    labels = (image_offset[:, None] + position_in_image).reshape(-1)
    if pack_queries:
        rows = _pack_rows(query_valid)
        queries, query_valid, labels = queries[rows], query_valid[rows], labels[rows]
    predicted = F.normalize(predictor(queries, query_valid), dim=1)

    keys = F.normalize(_gather_rows(teacher_slots.detach(), key_index).reshape(b * capacity, dim), dim=1)
    all_keys = _all_gather(keys.to(predicted.dtype))
    all_key_valid = _all_gather(key_valid.reshape(-1))

    logits = predicted @ all_keys.T / temp
    logits = logits.float().masked_fill(~all_key_valid[None, :], float("-inf"))
    per_query = F.cross_entropy(logits, torch.where(query_valid, labels, 0), reduction="none")
    per_query = torch.where(query_valid, per_query, 0.0)

    num_queries = query_valid.sum().to(per_query.dtype)
    if world > 1:
        num_queries = num_queries.clone()
        dist.all_reduce(num_queries)
    return per_query.sum() / num_queries.clamp(min=1) * world * (2 * temp)
