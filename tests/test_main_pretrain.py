import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from main_pretrain import check_args, get_args_parser
from tests.pretrain_helpers import ROOT, TINY, make_images, metrics, run
from utils.checkpoint import load_checkpoint


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
