"""Per-iteration schedules, precomputed as arrays indexed by the global iteration."""

from __future__ import annotations

import numpy as np


def warmup_cosine_lr(
    base_lr: float,
    epochs: int,
    iters_per_epoch: int,
    warmup_epochs: int,
    warmup_multiplier: float = 100.0,
    final_lr: float = 1e-6,
) -> np.ndarray:
    """The learning rate of every iteration t = 0 .. epochs * iters_per_epoch - 1.

    With W = warmup_epochs * n and T = (epochs - warmup_epochs) * n:
        t <= W: lr = base / M * ((M - 1) t / W + 1)       (linear from base/M to base)
        t >  W: lr = final + (base - final) (1 + cos(pi (t - W) / T)) / 2
    which are the values the reference's warm-up + cosine schedulers take when stepped per iteration.
    """
    total = epochs * iters_per_epoch
    warmup = warmup_epochs * iters_per_epoch
    t = np.arange(total, dtype=np.float64)
    lr = np.empty(total)
    in_warmup = t <= warmup
    if warmup > 0:
        lr[in_warmup] = base_lr / warmup_multiplier * ((warmup_multiplier - 1) * t[in_warmup] / warmup + 1)
    else:
        lr[in_warmup] = base_lr
    decay = max(total - warmup, 1)
    lr[~in_warmup] = final_lr + (base_lr - final_lr) * (1 + np.cos(np.pi * (t[~in_warmup] - warmup) / decay)) / 2
    return lr


def teacher_momentum(base_momentum: float, total_iters: int) -> np.ndarray:
    """EMA momentum of every iteration k: m(k) = 1 - (1 - m0) (cos(pi k / K) + 1) / 2, K = total_iters.

    It rises from m0 at the first iteration to 1 at the last. (The reference's K is the unfloored
    images / batch x epochs, a few iterations more than run, so it stops at 1 - 1e-9 instead of 1.)
    """
    k = np.arange(total_iters, dtype=np.float64)
    return 1 - (1 - base_momentum) * (np.cos(np.pi * k / max(total_iters - 1, 1)) + 1) / 2
