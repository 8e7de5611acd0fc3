"""Semantic grouping: learnable prototypes assign pixels softly and pool them into slots."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SemanticGrouping(nn.Module):
    """Prototypes s_k (``slot_embed``) and attentive pooling of a feature map x [B, D, H, W].

        dots[b,k,h,w] = <s_k/|s_k|, x[b,:,h,w]/|x[b,:,h,w]|>                     (cosine scores)
        attn[b,k,h,w] = softmax_k(dots / temp) + eps
        slot[b,k]     = sum_hw attn[b,k,h,w] x[b,:,h,w] / sum_hw attn[b,k,h,w]   (raw features pooled)

    Returns ``(slots [B, K, D], dots [B, K, H, W])``; the scores are returned before the temperature.
    The eps gives a prototype that no pixel picks near-uniform weights (its slot ~ the mean feature).
    """

    def __init__(self, num_prototypes: int, dim: int, temp: float = 0.07, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_prototypes = num_prototypes
        self.temp = temp
        self.eps = eps
        self.slot_embed = nn.Embedding(num_prototypes, dim)

    def scores(self, x: Tensor) -> Tensor:
        """Cosine similarity of every pixel of x [B, D, H, W] to every prototype: [B, K, H, W]."""
        prototypes = F.normalize(self.slot_embed.weight, dim=1)
        return torch.einsum("kd,bdhw->bkhw", prototypes, F.normalize(x, dim=1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dots = self.scores(x)
        attn = (dots / self.temp).softmax(dim=1) + self.eps
        attn = attn / attn.sum(dim=(2, 3), keepdim=True)
        slots = torch.einsum("bdhw,bkhw->bkd", x, attn)
        return slots, dots


# Upsampled score maps are large (K x H x W floats per image: 51 MB at 256 prototypes and 224 px); this caps
# the upsampled floats held at once (128 MiB).
MAX_UPSAMPLED_ELEMENTS = 1 << 25


@torch.no_grad()
def pixel_assignments(scores: Tensor, size: tuple[int, int], max_elements: int = MAX_UPSAMPLED_ELEMENTS) -> Tensor:
    """The winning prototype of every pixel at image resolution: argmax_k of the bilinearly upsampled scores.

    ``scores`` [N, K, h, w] (``SemanticGrouping.scores``) -> int64 [N, *size]. Bilinear upsampling treats each
    prototype's map on its own, so the work runs in chunks of images and, when one image's maps alone exceed
    ``max_elements``, of prototypes (a running maximum that keeps the first index on ties, as ``argmax``
    does): at most ``max_elements`` upsampled floats exist at once, whatever N and K.
    """
    num_images, num_prototypes = scores.shape[:2]
    pixels = size[0] * size[1]
    images_per_chunk = max(1, max_elements // (num_prototypes * pixels))
    prototypes_per_chunk = max(1, min(num_prototypes, max_elements // (images_per_chunk * pixels)))
    labels = torch.empty((num_images, *size), dtype=torch.long, device=scores.device)
    for start in range(0, num_images, images_per_chunk):
        part = scores[start : start + images_per_chunk].float()
        best = best_index = None
        for first in range(0, num_prototypes, prototypes_per_chunk):
            upsampled = F.interpolate(
                part[:, first : first + prototypes_per_chunk], size=size, mode="bilinear", align_corners=False
            )
            value, index = upsampled.max(dim=1)
            if best is None:
                best, best_index = value, index
            else:
                better = value > best
                best = torch.where(better, value, best)
                best_index = torch.where(better, index + first, best_index)
        labels[start : start + part.shape[0]] = best_index
    return labels
