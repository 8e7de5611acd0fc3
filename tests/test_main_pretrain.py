import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

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
        p.name for p in out.iterdir()}
    checkpoint = load_checkpoint(out / "current.pth")  # weights_only=True
    assert {"args", "model", "optimizer", "scheduler", "epoch", "scaler"} <= set(checkpoint)
    assert checkpoint["epoch"] == 1 and checkpoint["scheduler"]["iteration"] == 3
    assert all(k.startswith("module.") for k in checkpoint["model"])
    assert isinstance(checkpoint["args"], dict) and checkpoint["args"]["batch_size"] == 8

    second = run([*TINY, "--data-dir", str(image_dir), "--epochs", "2", "--output-dir", str(out), "--auto-resume",
                  "--num-workers", "0"])
    assert second.returncode == 0, second.stderr
    assert "resumed from" in second.stdout
    logged = metrics(out)
    assert sorted(logged) == list(range(6))  # iterations 3..5 continued after 0..2
    assert all(np.isfinite(r["loss"]) for r in logged.values())
    resumed = load_checkpoint(out / "current.pth")
    assert resumed["epoch"] == 2 and not torch.equal(resumed["model"]["module.center"],
                                                     checkpoint["model"]["module.center"])

    again = run([*TINY, "--data-dir", str(image_dir), "--epochs", "2", "--output-dir", str(out), "--auto-resume"])
    assert again.returncode == 0 and "nothing to train" in again.stdout


@pytest.mark.slow
def test_recipe_script_runs_with_overrides(tmp_path):
    coco = tmp_path / "coco"
    (coco / "train2017").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(np.full((64, 80, 3), i * 30, dtype=np.uint8)).save(coco / "train2017" / f"{i:012d}.jpg")
    env = {**os.environ, "PYTHON": sys.executable, "GPUS": "0", "DATA_DIR": str(coco),
           "OUTPUT_DIR": str(tmp_path / "out")}
    small = ["--arch", "resnet18", "--image-size", "64", "--batch-size", "8", "--dim-hidden", "32", "--epochs", "1",
             "--warmup-epoch", "0", "--num-workers", "0", "--no-fp16", "--no-tensorboard"]
    done = subprocess.run(["bash", "scripts/slotcon_coco_r50_800ep.sh", *small], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dataset"] == "COCO" and config["optimizer"] == "lars" and config["num_prototypes"] == 256
    assert config["arch"] == "resnet18" and config["epochs"] == 1 and config["save_freq"] == 50
