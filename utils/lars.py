"""LARS: SGD with momentum whose step is rescaled per weight tensor by a trust ratio."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer


class LARS(Optimizer):
    """Layer-wise adaptive rate scaling, as used by SlotCon (and Barlow Twins).

    For a parameter p with gradient g:
        if p.ndim > 1:  d = g + wd p;   q = eta |p| / |d| (1 if either norm is 0);   d = q d
        if p.ndim == 1: d = g           (biases and BN affine: no weight decay, no adaptation)
        mu = momentum mu + d;   p = p - lr mu
    All tensors of a group are updated with fused ``torch._foreach_*`` ops.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 0.001,
    ) -> None:
        if lr < 0 or weight_decay < 0 or momentum < 0 or eta <= 0:
            raise ValueError("LARS needs lr, weight_decay, momentum >= 0 and eta > 0")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "eta": eta})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            updates = [p.grad for p in params]
            adapted = [i for i, p in enumerate(params) if p.ndim != 1]
            if adapted:
                weights = [params[i] for i in adapted]
                steps = torch._foreach_add([updates[i] for i in adapted], weights, alpha=group["weight_decay"])
                w_norm = torch.stack(torch._foreach_norm(weights))
                s_norm = torch.stack(torch._foreach_norm(steps))
                trust = torch.where((w_norm > 0) & (s_norm > 0), group["eta"] * w_norm / s_norm, 1.0)
                torch._foreach_mul_(steps, list(trust.unbind()))
                for i, step in zip(adapted, steps, strict=True):
                    updates[i] = step
            buffers = []
            for p in params:
                if "mu" not in self.state[p]:
                    self.state[p]["mu"] = torch.zeros_like(p)
                buffers.append(self.state[p]["mu"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, updates)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss
