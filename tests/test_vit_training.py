"""SlotCon on a ViT, trained as a user runs it: the ViT recipe's optimizer (AdamW, weight-decay schedule, clipping,
stochastic depth), killed with SIGKILL and resumed bit for bit, and the heads a ViT gets."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models import SlotCon
from models.weights import teacher_config
from tests.pretrain_helpers import TINY, logged_iterations, make_images, metrics, run, start
from utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
VIT = [
    *TINY,
    "--arch", "vit_tiny_p8", "--optimizer", "adamw", "--base-lr", "0.002", "--weight-decay", "0.04",
    "--weight-decay-end", "0.4", "--clip-grad", "3.0", "--drop-path", "0.1", "--teacher-momentum", "0.996",
    "--epochs", "2", "--save-every-minutes", "0.0001",
]  # fmt: skip


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"))


def test_a_killed_vit_run_resumes_bit_for_bit(image_dir, tmp_path):
    reference = tmp_path / "uninterrupted"
    done = run([*VIT, "--data-dir", str(image_dir), "--output-dir", str(reference), "--num-workers", "0"])
    assert done.returncode == 0, done.stderr
    out = tmp_path / "killed"
    common = [*VIT, "--data-dir", str(image_dir), "--output-dir", str(out), "--num-workers", "2", "--tensorboard"]
    proc = start(common)
    deadline = time.time() + 300
    while logged_iterations(out) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = run([*common, "--auto-resume"])
    assert resumed.returncode == 0, resumed.stderr

    expected, got = metrics(reference), metrics(out)
    assert sorted(got) == sorted(expected) == list(range(6))
    for iteration, record in expected.items():
        for key in ("loss", "loss_group", "loss_slot", "lr", "momentum"):
            assert got[iteration][key] == record[key], (iteration, key)
    final, resumed_final = load_checkpoint(reference / "current.pth"), load_checkpoint(out / "current.pth")
    for key, value in final["model"].items():
        assert torch.equal(resumed_final["model"][key], value), key
    assert final["optimizer"]["param_groups"][0]["weight_decay"] == pytest.approx(0.4)  # the schedule's end
    assert final["args"]["arch"] == "vit_tiny_p8" and final["args"]["head_norm"] == "none"


def test_a_vit_gets_plain_heads_and_every_parameter_learns():
    model = SlotCon(arch="vit_tiny_p8", dim_hidden=32, dim_out=16, num_prototypes=8, drop_path_rate=0.1)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    g = torch.Generator().manual_seed(0)
    crops = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)]
    boxes = [torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(4, 1)] * 2
    flipped = [torch.zeros(4, dtype=torch.bool)] * 2
    model(crops, boxes, flipped)["loss"].backward()
    student = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(model.get_parameter(n).grad is not None for n in student)
    # The teacher has the student's weights but no stochastic depth.
    assert model.encoder_q.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert isinstance(model.encoder_k.blocks[-1].drop_path1, torch.nn.Identity)
    checkpoint = {"args": {"arch": "vit_tiny_p8"}, "model": {f"module.{k}": v for k, v in model.state_dict().items()}}
    config = teacher_config(checkpoint)
    assert config["head_norm"] == "none" and config["output_stride"] == 8 and config["dim_hidden"] == 32


def test_drop_path_is_refused_for_a_resnet(tmp_path):
    done = subprocess.run(
        [sys.executable, "main_pretrain.py", *TINY, "--drop-path", "0.1", "--output-dir", str(tmp_path)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert done.stderr.strip() == "--drop-path 0.1: --arch resnet18 has no stochastic depth"
