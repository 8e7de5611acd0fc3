"""engine.checkpointing in process: the saver never writes a non-finite checkpoint, a resume refuses one, and a
resume on data of another length keeps the progress in epochs."""

import logging

import pytest
import torch

from engine.checkpointing import Saver, rescale_iteration, resume_from_checkpoint
from tests.engine_helpers import CPU, small_trainer
from utils.checkpoint import load_checkpoint


def test_the_saver_never_writes_a_nonfinite_checkpoint_and_names_the_last_good_one(tmp_path, caplog):
    trainer, args = small_trainer(tmp_path)
    logger = logging.getLogger("test_saver")
    saver = Saver(args, CPU, trainer, 3, logger, resumed_from=None)
    assert saver.last_good_note() == "This run has written no checkpoint yet."
    saver.save(0, 1)
    written = saver.current.read_bytes()
    with torch.no_grad():
        trainer.slotcon.encoder_k.conv1.weight[0, 0, 0, 0] = float("nan")
    with caplog.at_level(logging.ERROR, logger="test_saver"):
        saver.save(1, 3, keep_epoch_file=True)
    assert saver.current.read_bytes() == written and not (tmp_path / "ckpt_epoch_1.pth").exists()
    assert "not saving iteration 3" in caplog.text and "model/module.encoder_k.conv1.weight" in caplog.text
    assert saver.last_good_note() == f"The last good checkpoint is {saver.current} (iteration 1, 0 epochs done)."
    assert load_checkpoint(saver.current)["scheduler"] == {"iteration": 1, "iters_per_epoch": 3}


def test_resume_refuses_a_checkpoint_with_nonfinite_values(tmp_path):
    trainer, args = small_trainer(tmp_path)
    saver = Saver(args, CPU, trainer, 3, logging.getLogger("test_resume"), resumed_from=None)
    checkpoint = saver.checkpoint(1, 3)
    checkpoint["optimizer"]["state"] = {0: {"mu": torch.full((2,), float("inf"))}}
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(SystemExit, match=r"bad.pth: 1 of its tensors hold NaN or infinity \(the first: optimizer/"):
        resume_from_checkpoint(tmp_path / "bad.pth", trainer, args, 3, logging.getLogger("test_resume"))


@pytest.mark.parametrize(
    "iteration, done, saved, now, expected",
    [
        (3, 1, 3, 5, 5),  # at an epoch end: the new epoch starts at its beginning
        (4, 1, 3, 5, 7),  # a third into epoch 2 stays a third (5 + 5/3, rounded)
        (6, 1, 3, 5, 10),  # preempted after the last batch of epoch 2
        (7, 2, 3, 2, 5),  # the data shrank
        (7, 2, 3, 3, 7),  # same epoch length: unchanged
    ],
)
def test_rescale_iteration_keeps_the_progress_in_epochs(iteration, done, saved, now, expected):
    assert rescale_iteration(iteration, done, saved, now) == expected
