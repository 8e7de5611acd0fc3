"""models/weights.py: non-finite weights are refused with one line wherever weights are loaded: both
converters (through transfer/backbone.py), an evaluation CLI and viz_slots.py."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.demo_scenes import generate_scenes
from eval import unsupervised_seg
from models import SlotCon
from models.weights import backbone_state_dict, load_teacher, network_state_dict
from utils.checkpoint import CheckpointError, load_checkpoint
from viz_slots import main as viz_main

ROOT = Path(__file__).resolve().parents[1]
CONVERTERS = ("transfer/detection/convert_pretrain_to_d2.py", "transfer/segmentation/convert_pretrain_to_mm.py")


def _checkpoint(path: Path, poison: dict[str, float]) -> Path:
    """A tiny full checkpoint with one element of each named weight set to the given value."""
    torch.manual_seed(0)
    state = SlotCon("resnet18", dim_hidden=32, dim_out=16, num_prototypes=6).state_dict()
    for key, value in poison.items():
        state[key].view(-1)[3] = value
    torch.save({"args": {"arch": "resnet18"}, "model": {f"module.{k}": v for k, v in state.items()}}, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {
        "good": _checkpoint(root / "good.pth", {}),
        "nan_backbone": _checkpoint(root / "nan_backbone.pth", {"encoder_k.layer2.0.conv1.weight": float("nan")}),
        "inf_projector": _checkpoint(root / "inf_projector.pth", {"projector_k.mlp.0.weight": float("inf")}),
        "nan_student": _checkpoint(root / "nan_student.pth", {"encoder_q.conv1.weight": float("nan")}),
    }


def test_the_check_names_the_network_and_a_tensor(checkpoints):
    with pytest.raises(
        CheckpointError,
        match=r"1 of the teacher \(encoder_k\) network's \d+ tensors hold NaN or "
        r"Inf \(e\.g\. encoder_k\.layer2\.0\.conv1\.weight\)",
    ):
        network_state_dict(load_checkpoint(checkpoints["nan_backbone"]))
    with pytest.raises(CheckpointError, match=r"projector_k\.mlp\.0\.weight"):
        network_state_dict(load_checkpoint(checkpoints["inf_projector"]))
    # Only what is asked for is checked: the teacher of a checkpoint whose student diverged is fine, and so is
    # the backbone when only the projector is broken.
    network_state_dict(load_checkpoint(checkpoints["nan_student"]))
    backbone_state_dict(load_checkpoint(checkpoints["inf_projector"]))
    with pytest.raises(CheckpointError, match=r"student \(encoder_q\) backbone"):
        backbone_state_dict(load_checkpoint(checkpoints["nan_student"]), student=True)
    with pytest.raises(CheckpointError, match=f"^{checkpoints['inf_projector']}: "):
        load_teacher(checkpoints["inf_projector"])


@pytest.mark.parametrize("converter", CONVERTERS)
def test_converters_refuse_nonfinite_backbones_with_one_line(checkpoints, converter, tmp_path):
    out = tmp_path / ("out.pkl" if "d2" in converter else "out.pth")
    done = subprocess.run(
        [sys.executable, converter, str(checkpoints["nan_backbone"]), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and not out.exists()
    assert "hold NaN or Inf" in done.stderr and str(checkpoints["nan_backbone"]) in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr


def test_an_eval_cli_refuses_nonfinite_weights_with_one_line(checkpoints, tmp_path, capsys):
    scenes = tmp_path / "scenes"
    generate_scenes(scenes, num_train=2, num_eval=2, size=64, seed=0, workers=1)
    for name in ("nan_backbone", "inf_projector"):
        assert (
            unsupervised_seg.main(
                ["--checkpoint", str(checkpoints[name]), "--data-dir", str(scenes), "--image-size", "64"]
            )
            == 2
        )
        error = capsys.readouterr().err
        assert "hold NaN or Inf" in error and error.count("\n") == 1, error


def test_viz_refuses_nonfinite_weights_with_one_line(checkpoints, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        viz_main(
            [
                "--model_path",
                str(checkpoints["nan_backbone"]),
                "--data_dir",
                str(tmp_path),
                "--device",
                "cpu",
                "--save_path",
                str(tmp_path / "x.jpg"),
            ]
        )
    message = str(stopped.value)
    assert "hold NaN or Inf" in message and "\n" not in message and not (tmp_path / "x.jpg").exists()
