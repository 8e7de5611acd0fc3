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
