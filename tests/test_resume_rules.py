"""What a resume decides, in process on a small real trainer: which checkpoint (the newer of --resume and
current.pth), whether its position is one its own schedule allows, what a bad file is told, that a missing
promised epoch file is made, and what --keep-last and metrics.jsonl keep (each test fails without its mechanism)."""

import json
import logging

import pytest
import torch

from engine.checkpointing import Saver, choose_checkpoint, prune_epoch_files, resume_from_checkpoint
from engine.train_log import rewind_metrics
from tests.engine_helpers import CPU, small_trainer
from utils.checkpoint import load_checkpoint

LOG = logging.getLogger("test_resume_rules")


def _checkpoint_at(tmp_path, name: str, completed: int, iteration: int, **changes) -> dict:
    """A real checkpoint of the small trainer at this position (3 iterations per epoch, 2 epochs)."""
    trainer, args = small_trainer(tmp_path)
    checkpoint = Saver(args, CPU, trainer, 3, LOG, resumed_from=None).checkpoint(completed, iteration)
    checkpoint.update(changes)
    torch.save(checkpoint, tmp_path / name)
    return checkpoint


def test_resume_with_auto_resume_continues_from_the_newer_of_the_two(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _checkpoint_at(tmp_path, "warm.pth", 1, 3)
    warm = str(tmp_path / "warm.pth")
    assert choose_checkpoint(warm, True, str(out)) == (tmp_path / "warm.pth", "")  # no current.pth yet
    _checkpoint_at(out, "current.pth", 1, 5)  # a requeued run's own progress, past the warm start
    path, why = choose_checkpoint(warm, True, str(out))
    assert path == out / "current.pth"
    assert "iteration 5" in why and "iteration 3" in why and "its own progress" in why
    _checkpoint_at(out, "current.pth", 0, 1)  # a stale current.pth behind the file the user names
    path, why = choose_checkpoint(warm, True, str(out))
    assert path == tmp_path / "warm.pth" and "ahead of" in why
    assert choose_checkpoint(warm, False, str(out)) == (tmp_path / "warm.pth", "")  # --resume alone: FILE
    assert choose_checkpoint("", True, str(out)) == (out / "current.pth", "")


@pytest.mark.parametrize(
    "completed, iteration, expected",
    [
        (0, -5, r"iteration -5, 0 epochs done\) does not fit its own schedule \(3 iterations per epoch, 2 epochs\)"),
        (0, 10**6, r"iteration 1000000, 0 epochs done\) does not fit its own schedule"),
        (1, 1, r"the iteration must lie in \[3, 6\]"),
        (5, 15, r"5 epochs done\) does not fit its own schedule \(3 iterations per epoch, 2 epochs\)"),
        (0, 1.5, r"its scheduler/iteration is 1.5, not a whole number"),
    ],
)
def test_a_forged_position_is_checked_against_the_checkpoints_own_schedule(tmp_path, completed, iteration, expected):
    checkpoint = _checkpoint_at(tmp_path, "forged.pth", 0, 0)
    checkpoint.update(epoch=completed, scheduler={"iteration": iteration, "iters_per_epoch": 3})
    torch.save(checkpoint, tmp_path / "forged.pth")
    trainer, args = small_trainer(tmp_path)
    with pytest.raises(SystemExit, match=expected) as stop:
        resume_from_checkpoint(tmp_path / "forged.pth", trainer, args, 3, LOG)
    assert "\n" not in str(stop.value.code) and "forged.pth" in str(stop.value.code)


def test_a_missing_entry_and_a_mismatched_tensor_are_named(tmp_path):
    checkpoint = _checkpoint_at(tmp_path, "c.pth", 1, 3)
    trainer, args = small_trainer(tmp_path)
    del checkpoint["optimizer"]
    torch.save(checkpoint, tmp_path / "no_optimizer.pth")
    with pytest.raises(SystemExit, match=r"no_optimizer.pth: it has no 'optimizer' entry$"):
        resume_from_checkpoint(tmp_path / "no_optimizer.pth", trainer, args, 3, LOG)
    checkpoint = _checkpoint_at(tmp_path, "c.pth", 1, 3)
    checkpoint["model"]["module.grouping_q.slot_embed.weight"] = torch.zeros(16, 64)  # dim_out 32 in this model
    torch.save(checkpoint, tmp_path / "wide.pth")
    with pytest.raises(SystemExit) as stop:
        resume_from_checkpoint(tmp_path / "wide.pth", trainer, args, 3, LOG)
    assert str(stop.value.code) == (
        f"cannot resume from {tmp_path / 'wide.pth'}: 'grouping_q.slot_embed.weight' has shape (16, 64) in the "
        "checkpoint but (16, 32) in the model"
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_resume_takes_weights_of_any_floating_dtype(tmp_path, dtype):
    checkpoint = _checkpoint_at(tmp_path, "c.pth", 1, 3)
    checkpoint["model"] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in checkpoint["model"].items()}
    torch.save(checkpoint, tmp_path / "cast.pth")
    trainer, args = small_trainer(tmp_path)
    resumed = resume_from_checkpoint(tmp_path / "cast.pth", trainer, args, 3, LOG)
    assert (resumed.iteration, resumed.completed_epochs) == (3, 1)
    weight = trainer.slotcon.encoder_k.conv1.weight
    assert weight.dtype == torch.float32
    assert torch.equal(weight, checkpoint["model"]["module.encoder_k.conv1.weight"].float())


def test_a_promised_epoch_file_missing_after_a_kill_is_written_on_resume(tmp_path, caplog):
    trainer, args = small_trainer(tmp_path, "--save-freq", "1")
    saver = Saver(args, CPU, trainer, 3, LOG, resumed_from=None)
    saver.save(1, 3)  # current.pth at the end of epoch 1; killed before ckpt_epoch_1.pth
    assert not saver.epoch_file(1).exists()
    resumed = resume_from_checkpoint(saver.current, trainer, args, 3, LOG)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        Saver(args, CPU, trainer, 3, LOG, resumed.path).restore_promised_epoch_file(resumed)
    assert "ckpt_epoch_1.pth is missing" in caplog.text
    assert load_checkpoint(saver.epoch_file(1))["scheduler"] == {"iteration": 3, "iters_per_epoch": 3}

    # Past that epoch's end (a mid-epoch save of epoch 2): it cannot be made, and the log says so plainly.
    saver.epoch_file(1).unlink()
    saver.save(1, 4)
    resumed = resume_from_checkpoint(saver.current, trainer, args, 3, LOG)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        Saver(args, CPU, trainer, 3, LOG, resumed.path).restore_promised_epoch_file(resumed)
    assert "ckpt_epoch_1.pth, promised by --save-freq, is missing and cannot be made" in caplog.text
    assert not saver.epoch_file(1).exists()


def test_keep_last_prunes_only_the_files_the_run_itself_writes(tmp_path):
    for name in ("ckpt_epoch_1.pth", "ckpt_epoch_2.pth", "ckpt_epoch_10.pth", "ckpt_epoch_1_backup.pth", "notes.pth"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "ckpt_epoch_x.pth").mkdir()
    removed = prune_epoch_files(tmp_path, keep_last=2)
    assert [p.name for p in removed] == ["ckpt_epoch_1.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt_epoch_10.pth",
        "ckpt_epoch_1_backup.pth",
        "ckpt_epoch_2.pth",
        "ckpt_epoch_x.pth",
        "notes.pth",
    ]


def test_records_logged_after_the_resumed_checkpoint_leave_metrics_jsonl(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"iteration": i, "loss": float(i)}) for i in (0, 1, 2, 3, 4)] + ['{"iteration": 5, "lo']
    metrics.write_text("\n".join(lines) + "\n")  # a kill after iteration 4's line, mid-way through 5's
    assert rewind_metrics(metrics, first_iteration=3) == 3
    assert [json.loads(line)["iteration"] for line in metrics.read_text().splitlines()] == [0, 1, 2]
    assert (tmp_path / "metrics.discarded.jsonl").read_text().splitlines() == lines[3:]
    assert rewind_metrics(metrics, first_iteration=3) == 0  # nothing left to move
    assert rewind_metrics(tmp_path / "absent.jsonl", 0) == 0
