"""Faults injected into a real ``Trainer`` from outside, the way a diverging run meets them: the product has no
test-only flags. ``python -m tests.faults --nan-loss-at 3 5 --inf-lr-at 4 --bug-at 7 -- MAIN_PRETRAIN_FLAGS...`` runs
``main_pretrain.py`` with them (from the repository root, as tests/pretrain_helpers.run does).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable

import main_pretrain
from engine.trainer import Trainer
from utils.process import exit_with_code_of


def inject_faults(
    trainer: Trainer, nan_loss_at: Iterable[int] = (), inf_lr_at: Iterable[int] = (), bug_at: Iterable[int] = ()
) -> Trainer:
    """At the iterations ``inf_lr_at`` the learning rate is infinite (a finite loss whose update leaves the weights
    and the optimizer state non-finite); at ``nan_loss_at`` the forward pass returns a NaN loss; at ``bug_at`` the
    step raises a RuntimeError, as a bug would."""
    nan_loss_at, bug_at = set(nan_loss_at), set(bug_at)
    trainer.lr_schedule = trainer.lr_schedule.copy()
    for iteration in inf_lr_at:
        trainer.lr_schedule[iteration] = math.inf
    step = trainer.step

    def faulty_step(crops, boxes, flipped, iteration, *args, **kwargs):
        if iteration in bug_at:
            raise RuntimeError(f"injected bug at iteration {iteration}")
        if iteration not in nan_loss_at:
            return step(crops, boxes, flipped, iteration, *args, **kwargs)
        forward = trainer.model.forward
        trainer.model.forward = lambda *a, **k: (lambda out: {**out, "loss": out["loss"] * math.nan})(forward(*a, **k))
        try:
            return step(crops, boxes, flipped, iteration, *args, **kwargs)
        finally:
            del trainer.model.forward  # back to the class's forward

    trainer.step = faulty_step
    return trainer


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.faults")
    parser.add_argument("--nan-loss-at", type=int, nargs="*", default=[])
    parser.add_argument("--inf-lr-at", type=int, nargs="*", default=[])
    parser.add_argument("--bug-at", type=int, nargs="*", default=[])
    split = argv.index("--")
    faults = parser.parse_args(argv[:split])
    build = main_pretrain.build_trainer
    main_pretrain.build_trainer = lambda *a, **k: inject_faults(
        build(*a, **k), faults.nan_loss_at, faults.inf_lr_at, faults.bug_at
    )
    exit_with_code_of(main_pretrain.main, main_pretrain.get_args_parser().parse_args(argv[split + 1 :]))


if __name__ == "__main__":
    main(sys.argv[1:])
