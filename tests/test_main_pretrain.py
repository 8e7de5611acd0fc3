import argparse
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from main_pretrain import (
    Saver,
    Trainer,
    build_trainer,
    check_args,
    fill_device_defaults,
    get_args_parser,
    rescale_iteration,
    restore,
)
from tests.pretrain_helpers import ROOT, TINY, make_images, metrics, run
from utils.checkpoint import load_checkpoint
from utils.distributed import DistInfo


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


@pytest.mark.slow
def test_tiny_run_writes_checkpoints_and_resumes(image_dir, tmp_path):
    out = tmp_path / "run"
    first = run([*TINY, "--data-dir", str(image_dir), "--epochs", "1", "--output-dir", str(out), "--num-workers", "0"])
    assert first.returncode == 0, first.stderr
    assert {"config.json", "log.txt", "current.pth", "ckpt_epoch_1.pth", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    checkpoint = load_checkpoint(out / "current.pth")  # weights_only=True
    assert {"args", "model", "optimizer", "scheduler", "epoch", "scaler"} <= set(checkpoint)
    assert checkpoint["epoch"] == 1 and checkpoint["scheduler"]["iteration"] == 3
    assert all(k.startswith("module.") for k in checkpoint["model"])
    assert isinstance(checkpoint["args"], dict) and checkpoint["args"]["batch_size"] == 8

    second = run(
        [
            *TINY,
            "--data-dir",
            str(image_dir),
            "--epochs",
            "2",
            "--output-dir",
            str(out),
            "--auto-resume",
            "--num-workers",
            "0",
        ]
    )
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout
    logged = metrics(out)
    assert sorted(logged) == list(range(6))  # iterations 3..5 continued after 0..2
    assert all(np.isfinite(r["loss"]) for r in logged.values())
    resumed = load_checkpoint(out / "current.pth")
    assert resumed["epoch"] == 2 and not torch.equal(
        resumed["model"]["module.center"], checkpoint["model"]["module.center"]
    )

    again = run([*TINY, "--data-dir", str(image_dir), "--epochs", "2", "--output-dir", str(out), "--auto-resume"])
    assert again.returncode == 0 and "nothing to train" in again.stdout


@pytest.mark.slow
def test_recipe_script_runs_with_overrides(tmp_path):
    coco = tmp_path / "coco"
    (coco / "train2017").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(np.full((64, 80, 3), i * 30, dtype=np.uint8)).save(coco / "train2017" / f"{i:012d}.jpg")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPUS": "0",
        "DATA_DIR": str(coco),
        "OUTPUT_DIR": str(tmp_path / "out"),
    }
    small = [
        "--arch",
        "resnet18",
        "--image-size",
        "64",
        "--batch-size",
        "8",
        "--dim-hidden",
        "32",
        "--epochs",
        "1",
        "--warmup-epoch",
        "0",
        "--num-workers",
        "0",
        "--no-fp16",
        "--no-tensorboard",
    ]
    done = subprocess.run(
        ["bash", "scripts/slotcon_coco_r50_800ep.sh", *small],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dataset"] == "COCO" and config["optimizer"] == "lars" and config["num_prototypes"] == 256
    assert config["arch"] == "resnet18" and config["epochs"] == 1 and config["save_freq"] == 50


# ---- the training step, its undo, and the saver (in process, small model)

CPU = DistInfo(0, 1, torch.device("cpu"))


def _trainer(tmp_path, *flags: str) -> tuple[Trainer, argparse.Namespace]:
    args = get_args_parser().parse_args([*TINY, "--epochs", "2", "--output-dir", str(tmp_path), *flags])
    fill_device_defaults(args, CPU)
    args.num_instances = 24
    torch.manual_seed(0)
    return build_trainer(args, CPU, iters_per_epoch=3), args


def _batch(b: int = 8, size: int = 64):
    g = torch.Generator().manual_seed(0)
    crops = [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]
    boxes = [torch.tensor([[0.1, 0.2, 0.9, 0.8]]).repeat(b, 1), torch.tensor([[0.0, 0.0, 0.7, 1.0]]).repeat(b, 1)]
    flipped = [torch.arange(b) % 2 == 0, torch.arange(b) % 3 == 0]
    return crops, boxes, flipped


def _everything(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Copies of every tensor of the model (teacher, centre, BN statistics included) and of the optimizer state."""
    state = {f"model.{k}": v.clone() for k, v in trainer.slotcon.state_dict().items()}
    for i, per_param in trainer.optimizer.state_dict()["state"].items():
        state.update({f"optimizer.{i}.{k}": v.clone() for k, v in per_param.items()})
    return state


def _assert_bitwise_equal(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_a_good_step_is_forward_backward_optimizer_then_the_teacher_average(tmp_path):
    """The step against the same operations written out, with the reference's EMA formula and the next
    iteration's momentum: bit for bit."""
    trainer, _ = _trainer(tmp_path)
    by_hand, _ = _trainer(tmp_path)
    for iteration in range(2):
        result = trainer.step(*_batch(), iteration=iteration)
        assert result.finite and result.sums == []

        model = by_hand.slotcon
        for group in by_hand.optimizer.param_groups:
            group["lr"] = float(by_hand.lr_schedule[iteration])
        by_hand.optimizer.zero_grad()
        model(*_batch())["loss"].backward()
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
        _assert_bitwise_equal(_everything(trainer), _everything(by_hand))


def test_a_step_whose_update_is_not_finite_is_undone_exactly(tmp_path):
    trainer, _ = _trainer(tmp_path, "--inject-inf-lr-at", "1")
    assert trainer.step(*_batch(), iteration=0).finite  # the optimizer now has momentum buffers
    before = _everything(trainer)
    result = trainer.step(*_batch(), iteration=1)
    assert result.loss_finite and not result.update_finite
    _assert_bitwise_equal(_everything(trainer), before)  # weights, optimizer, teacher, centre, BN statistics

    # Without the undo, the same fault leaves the student non-finite (and the EMA would carry it to the teacher).
    for group in trainer.optimizer.param_groups:
        group["lr"] = float("inf")
    trainer.slotcon(*_batch())["loss"].backward()
    trainer.optimizer.step()
    assert not torch.isfinite(trainer.slotcon.encoder_q.conv1.weight).all()


def test_a_bad_first_step_leaves_no_optimizer_state_and_a_nan_loss_is_undone(tmp_path):
    trainer, _ = _trainer(tmp_path, "--inject-inf-lr-at", "0", "--inject-nan-at", "1")
    before = _everything(trainer)
    first = trainer.step(*_batch(), iteration=0)
    assert first.loss_finite and not first.update_finite
    assert not trainer.optimizer.state  # the buffers that step created are gone with it
    _assert_bitwise_equal(_everything(trainer), before)
    second = trainer.step(*_batch(), iteration=1, host_counts=[1.0, 3.0])
    assert not second.loss_finite and second.sums == [1.0, 3.0]
    _assert_bitwise_equal(_everything(trainer), before)
    assert trainer.step(*_batch(), iteration=2).finite


def test_the_saver_never_writes_a_nonfinite_checkpoint_and_names_the_last_good_one(tmp_path, caplog):
    trainer, args = _trainer(tmp_path)
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
    trainer, args = _trainer(tmp_path)
    saver = Saver(args, CPU, trainer, 3, logging.getLogger("test_resume"), resumed_from=None)
    checkpoint = saver.checkpoint(1, 3)
    checkpoint["optimizer"]["state"] = {0: {"mu": torch.full((2,), float("inf"))}}
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(SystemExit, match=r"bad.pth: 1 of its tensors hold NaN or infinity \(the first: optimizer/"):
        restore(tmp_path / "bad.pth", trainer, args, 3, logging.getLogger("test_resume"))


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


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--save-freq", "0"], "--save-freq 0: must be an integer >= 1"),
        (["--print-freq", "-1"], "--print-freq -1: must be an integer >= 1"),
        (["--num-prototypes", "0"], "--num-prototypes 0: must be"),
        (["--dim-hidden", "0"], "--dim-hidden 0: must be"),
        (["--dim-out", "-4"], "--dim-out -4: must be"),
        (["--batch-size", "0"], "--batch-size 0: must be"),
        (["--num-workers", "-1"], "--num-workers -1: must be an integer >= 0"),
        (["--teacher-temp", "0"], "--teacher-temp 0.0: must be a finite number > 0"),
        (["--student-temp", "nan"], "--student-temp nan: must be"),
        (["--base-lr", "inf"], "--base-lr inf: must be a finite number > 0"),
        (["--base-lr", "-0.1"], "--base-lr -0.1: must be"),
        (["--base-lr", "1e300"], "overflows float32"),
        (["--teacher-momentum", "1.5"], "--teacher-momentum 1.5: must be in [0, 1]"),
        (["--max-bad-image-fraction", "2"], "--max-bad-image-fraction 2.0: must be in [0, 1]"),
        (["--min-scale", "0"], "--min-scale 0.0: must be in (0, 1]"),
        (["--save-every-minutes", "-1"], "--save-every-minutes -1.0: must be"),
        (["--seed", "-1"], "--seed -1: must be"),
        (["--device", "gpu"], "--device gpu: use cuda, cuda:N or cpu"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--eval-data", "/nonexistent/scenes"], "--eval-data /nonexistent/scenes: no such directory"),
    ],
)
def test_every_bad_flag_gets_one_line_before_any_work(flags, message, tmp_path):
    output = tmp_path / "not_created"
    args = get_args_parser().parse_args([*flags, "--output-dir", str(output)])
    with pytest.raises(SystemExit) as stopped:
        check_args(args, 1)
    assert message in str(stopped.value) and len(str(stopped.value).splitlines()) == 1
    assert not output.exists()


def test_all_bad_flags_are_reported_at_once(tmp_path):
    args = get_args_parser().parse_args(
        ["--save-freq", "0", "--dim-out", "0", "--teacher-temp", "-1", "--output-dir", str(tmp_path)]
    )
    with pytest.raises(SystemExit) as stopped:
        check_args(args, 1)
    assert [line.split()[0] for line in str(stopped.value).splitlines()] == [
        "--dim-out",
        "--save-freq",
        "--teacher-temp",
    ]
