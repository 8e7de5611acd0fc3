"""engine.trainer: the training step against the same operations written out, and its undo of a non-finite step
(bit for bit), on a small real SlotCon."""

import math

import pytest
import torch

from engine.trainer import StepCounts
from tests.engine_helpers import assert_bitwise_equal, everything, fixed_batch, small_trainer
from tests.faults import inject_faults


def test_a_good_step_is_forward_backward_optimizer_then_the_teacher_average(tmp_path):
    """The step against the same operations written out, with the reference's EMA formula and the next
    iteration's momentum: bit for bit."""
    trainer, _ = small_trainer(tmp_path)
    by_hand, _ = small_trainer(tmp_path)
    for iteration in range(2):
        result = trainer.step(*fixed_batch(), iteration=iteration)
        assert result.finite and result.counts == StepCounts()

        model = by_hand.slotcon
        for group in by_hand.optimizer.param_groups:
            group["lr"] = float(by_hand.lr_schedule[iteration])
        by_hand.optimizer.zero_grad()
        model(*fixed_batch())["loss"].backward()
        by_hand.optimizer.step()
        m = float(by_hand.momentum_schedule[iteration + 1])
        with torch.no_grad():
            for student, teacher in (
                (model.encoder_q, model.encoder_k),
                (model.projector_q, model.projector_k),
                (model.grouping_q, model.grouping_k),
            ):
                for q, k in zip(student.parameters(), teacher.parameters(), strict=True):
                    k.copy_(k * m + q * (1 - m))
        assert_bitwise_equal(everything(trainer), everything(by_hand))


def test_a_step_whose_update_is_not_finite_is_undone_exactly(tmp_path):
    trainer, _ = small_trainer(tmp_path)
    inject_faults(trainer, inf_lr_at=[1])
    assert trainer.step(*fixed_batch(), iteration=0).finite  # the optimizer now has momentum buffers
    before = everything(trainer)
    result = trainer.step(*fixed_batch(), iteration=1)
    assert result.loss_finite and not result.update_finite
    assert_bitwise_equal(everything(trainer), before)  # weights, optimizer, teacher, centre, BN statistics

    # Without the undo, the same fault leaves the student non-finite (and the EMA would carry it to the teacher).
    for group in trainer.optimizer.param_groups:
        group["lr"] = float("inf")
    trainer.slotcon(*fixed_batch())["loss"].backward()
    trainer.optimizer.step()
    assert not torch.isfinite(trainer.slotcon.encoder_q.conv1.weight).all()


def test_a_bad_first_step_leaves_no_optimizer_state_and_a_nan_loss_is_undone(tmp_path):
    trainer, _ = small_trainer(tmp_path)
    inject_faults(trainer, nan_loss_at=[1], inf_lr_at=[0])
    before = everything(trainer)
    first = trainer.step(*fixed_batch(), iteration=0)
    assert first.loss_finite and not first.update_finite
    assert not trainer.optimizer.state  # the buffers that step created are gone with it
    assert_bitwise_equal(everything(trainer), before)
    second = trainer.step(*fixed_batch(), iteration=1, counts=StepCounts(preempted=1, skipped_images=3))
    assert not second.loss_finite and second.counts == StepCounts(preempted=1, skipped_images=3, save_due=0)
    assert_bitwise_equal(everything(trainer), before)
    assert trainer.step(*fixed_batch(), iteration=2).finite


def test_adamw_decays_weights_only_and_follows_the_weight_decay_schedule(tmp_path):
    flags = ("--optimizer", "adamw", "--base-lr", "0.001", "--weight-decay", "0.04", "--weight-decay-end", "0.4")
    trainer, _ = small_trainer(tmp_path, *flags)
    decayed, plain = trainer.optimizer.param_groups
    names = {id(p): n for n, p in trainer.slotcon.named_parameters()}
    assert {names[id(p)] for p in plain["params"]} == {
        n for n, p in trainer.slotcon.named_parameters() if p.requires_grad and (p.ndim == 1 or n.endswith(".bias"))
    }
    assert all(p.ndim > 1 for p in decayed["params"]) and "encoder_q.conv1.weight" in {
        names[id(p)] for p in decayed["params"]
    }
    total = len(trainer.lr_schedule)  # 2 epochs of 3 iterations
    for iteration in (0, 4):
        assert trainer.step(*fixed_batch(), iteration=iteration).finite
        expected = 0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi * iteration / (total - 1))) / 2
        assert decayed["weight_decay"] == pytest.approx(expected, rel=1e-12) and plain["weight_decay"] == 0.0


def test_clipping_scales_the_global_gradient_norm_before_the_update(tmp_path):
    clipped, _ = small_trainer(tmp_path, "--optimizer", "sgd", "--clip-grad", "0.5")
    by_hand, _ = small_trainer(tmp_path, "--optimizer", "sgd")
    assert clipped.step(*fixed_batch(), iteration=0).finite

    model = by_hand.slotcon
    for group in by_hand.optimizer.param_groups:
        group["lr"] = float(by_hand.lr_schedule[0])
    model(*fixed_batch())["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = math.sqrt(sum(float(g.double().square().sum()) for g in grads))
    assert norm > 0.5  # the clipping acts
    for g in grads:
        g.mul_(0.5 / (norm + 1e-6))
    by_hand.optimizer.step()
    for (name, p), q in zip(clipped.slotcon.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
