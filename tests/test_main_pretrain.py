import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "folder", "--arch", "resnet18", "--image-size", "64", "--batch-size", "8",
        "--dim-hidden", "64", "--dim-out", "32", "--num-prototypes", "16", "--no-fp16", "--device", "cpu",
        "--optimizer", "lars", "--base-lr", "0.5", "--warmup-epoch", "1", "--print-freq", "1", "--seed", "0",
        "--no-tensorboard"]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(24):
        sub = root / f"part{i % 2}"
        sub.mkdir(exist_ok=True)
        blocks = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(np.kron(blocks, np.ones((16, 16, 1), dtype=np.uint8))).save(sub / f"{i:03d}.jpg")
    return root


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main_pretrain.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, **kw)


def metrics(output: Path) -> dict[int, dict]:
    """The last logged record of every iteration (a resumed run may log an iteration twice)."""
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {r["iteration"]: r for r in records}


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


@pytest.mark.slow
def test_sigkill_then_auto_resume_reproduces_every_loss(image_dir, tmp_path):
    common = [*TINY, "--data-dir", str(image_dir), "--epochs", "2", "--save-every-minutes", "0.0001"]
    reference_dir = tmp_path / "uninterrupted"
    done = run([*common, "--output-dir", str(reference_dir), "--num-workers", "0"])
    assert done.returncode == 0, done.stderr
    expected = metrics(reference_dir)
    assert sorted(expected) == list(range(6))

    out = tmp_path / "killed"
    kill_after = random.Random().randint(1, 4)  # iterations logged before the kill
    proc = subprocess.Popen([sys.executable, "main_pretrain.py", *common, "--output-dir", str(out),
                             "--num-workers", "2"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        log = out / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= kill_after:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill ({proc.returncode})"

    resumed = run([*common, "--output-dir", str(out), "--auto-resume", "--num-workers", "2"])
    assert resumed.returncode == 0, resumed.stderr
    got = metrics(out)
    assert sorted(got) == sorted(expected), f"killed after {kill_after} iterations"
    for it, record in expected.items():
        for key in ("loss", "loss_group", "loss_slot", "lr", "momentum"):
            assert got[it][key] == pytest.approx(record[key], rel=1e-6, abs=1e-9), (it, key, kill_after)
    final_a = load_checkpoint(reference_dir / "current.pth")["model"]
    final_b = load_checkpoint(out / "current.pth")["model"]
    for key in ("module.center", "module.encoder_k.conv1.weight", "module.predictor_slot.mlp.0.weight"):
        torch.testing.assert_close(final_b[key], final_a[key], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_recipe_script_runs_with_overrides(tmp_path):
    coco = tmp_path / "coco"
    (coco / "train2017").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(np.full((64, 80, 3), i * 30, dtype=np.uint8)).save(coco / "train2017" / f"{i:012d}.jpg")
    env = {**os.environ, "PYTHON": sys.executable, "GPUS": "0", "DATA_DIR": str(coco), "OUTPUT_DIR": str(tmp_path / "out")}
    small = ["--arch", "resnet18", "--image-size", "64", "--batch-size", "8", "--dim-hidden", "32", "--epochs", "1",
             "--warmup-epoch", "0", "--num-workers", "0", "--no-fp16", "--no-tensorboard"]
    done = subprocess.run(["bash", "scripts/slotcon_coco_r50_800ep.sh", *small], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["dataset"] == "COCO" and config["optimizer"] == "lars" and config["num_prototypes"] == 256
    assert config["arch"] == "resnet18" and config["epochs"] == 1 and config["save_freq"] == 50
