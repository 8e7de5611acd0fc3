"""Checkpoints from elsewhere: weights in float16, bfloat16 or float64 read by every reader (both converters, the
evaluations' and viz_slots' loader), and the messages for a file the safe loader refuses, a tensor of the wrong
shape, a missing tensor, and a label map holding a value that is no class (each test fails without its mechanism)."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from eval.datasets import DemoSegmentation, EvalDataError
from models import SlotCon
from models.weights import load_teacher
from transfer.detection import convert_pretrain_to_d2
from transfer.segmentation import convert_pretrain_to_mm
from utils.checkpoint import CheckpointError, load_checkpoint

NET = {"arch": "resnet18", "dim_hidden": 32, "dim_out": 16, "num_prototypes": 6}


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return SlotCon(**NET).state_dict()


def _save(path, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32):
    model = {f"module.{k}": v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"args": {"arch": "resnet18"}, "model": model}, path)
    return path


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_every_reader_takes_weights_of_any_floating_dtype(state, tmp_path, dtype):
    checkpoint = _save(tmp_path / "cast.pth", state, dtype)
    expected = state["encoder_k.conv1.weight"].to(dtype).float()

    convert_pretrain_to_d2.main([str(checkpoint), str(tmp_path / "d2.pkl")])
    with open(tmp_path / "d2.pkl", "rb") as f:
        d2 = pickle.load(f)["model"]
    assert d2["stem.conv1.weight"].dtype == np.float32
    np.testing.assert_array_equal(d2["stem.conv1.weight"], expected.numpy())

    convert_pretrain_to_mm.main([str(checkpoint), str(tmp_path / "mm.pth")])
    mm = torch.load(tmp_path / "mm.pth", weights_only=True)["state_dict"]
    assert mm["conv1.weight"].dtype == torch.float32 and torch.equal(mm["conv1.weight"], expected)

    teacher = load_teacher(checkpoint)  # the evaluations and viz_slots.py
    assert torch.equal(teacher.encoder_k.conv1.weight, expected)


def test_a_file_of_objects_is_refused_without_advising_the_unsafe_load(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": {}, "args": Image.new("RGB", (1, 1))}, path)  # any class outside the allow-list
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{path}: not a loadable checkpoint")
    assert "objects (PIL.Image.Image) that this project never writes" in message and "was not loaded" in message
    assert "weights_only" not in message


def test_a_wrong_shape_and_a_missing_tensor_are_named(state, tmp_path):
    wide = dict(state)
    wide["grouping_k.slot_embed.weight"] = torch.zeros(6, 20)
    with pytest.raises(CheckpointError) as refused:
        load_teacher(_save(tmp_path / "wide.pth", wide))
    assert str(refused.value) == (
        f"{tmp_path / 'wide.pth'}: 'grouping_k.slot_embed.weight' has shape (6, 20) in the checkpoint but (6, 16) "
        "in the model"
    )
    partial = {k: v for k, v in state.items() if k != "encoder_k.layer3.0.bn1.running_mean"}
    with pytest.raises(CheckpointError, match=r"the weights lack 'encoder_k.layer3.0.bn1.running_mean' \(1 of"):
        load_teacher(_save(tmp_path / "partial.pth", partial))


def test_a_label_value_that_is_no_class_names_its_file(tmp_path):
    split = tmp_path / "eval"
    for kind in ("images", "semantic", "instance"):
        (split / kind).mkdir(parents=True)
    for name, label in (("a", 1), ("b", 9)):
        semantic = np.zeros((32, 32), np.uint8)
        semantic[8:24, 8:24] = label
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(split / "images" / f"{name}.png")
        Image.fromarray(semantic).save(split / "semantic" / f"{name}.png")
        Image.fromarray((semantic > 0).astype(np.uint8)).save(split / "instance" / f"{name}.png")
    (tmp_path / "meta.json").write_text(json.dumps({"class_names": ["cat", "dog"]}))
    dataset = DemoSegmentation(tmp_path, "eval", 32)
    assert dataset.num_classes == 3
    dataset[0]
    with pytest.raises(EvalDataError) as refused:
        dataset[1]
    assert str(refused.value).startswith(f"{split / 'semantic' / 'b.png'}: label value 9 is not a class id (0..2)")
