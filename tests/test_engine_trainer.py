"""engine.trainer: the training step against the same operations written out, and its undo of a non-finite step
(bit for bit), on a small real SlotCon."""

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
