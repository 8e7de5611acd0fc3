import math

import numpy as np
import pytest

from utils.schedules import teacher_momentum, warmup_cosine_lr


def test_lr_at_first_warmup_end_and_last_iteration():
    base, epochs, n, warm = 2.0, 10, 7, 2
    lr = warmup_cosine_lr(base, epochs, n, warm, warmup_multiplier=100, final_lr=1e-6)
    assert len(lr) == epochs * n
    assert lr[0] == pytest.approx(base / 100)
    w = warm * n  # the first iteration after warm-up reaches the base lr
    assert lr[w - 1] == pytest.approx(base / 100 * (99 * (w - 1) / w + 1))
    assert lr[w] == pytest.approx(base)
    t = epochs * n - 1
    total = (epochs - warm) * n
    assert lr[t] == pytest.approx(1e-6 + (base - 1e-6) * (1 + math.cos(math.pi * (t - w) / total)) / 2)
    assert lr[t] < base * 1e-2 and all(a >= b for a, b in zip(lr[w:], lr[w + 1 :], strict=False))


def test_no_warmup_starts_at_base():
    assert warmup_cosine_lr(1.0, 3, 4, 0)[0] == pytest.approx(1.0)


def test_teacher_momentum_endpoints_and_midpoint():
    m = teacher_momentum(0.99, 101)
    assert m[0] == pytest.approx(0.99)
    assert m[50] == pytest.approx(0.995)
    assert m[-1] == pytest.approx(1.0, abs=1e-12)


def test_warmup_longer_than_the_run_is_a_truncated_ramp():
    lr = warmup_cosine_lr(1.0, epochs=2, iters_per_epoch=5, warmup_epochs=5)
    assert lr[0] == pytest.approx(0.01) and lr[-1] == pytest.approx(0.01 * (99 * 9 / 25 + 1))
    assert (np.diff(lr) > 0).all()
