"""Shared by the transfer tests: SlotCon checkpoints saved like our trainer's, tiny demo transfer sets, checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from models.slotcon import SlotCon


def save_slotcon_checkpoint(path: Path, arch: str, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    """Save a checkpoint the way our trainer does; return the teacher and student backbones (torchvision names).

    The teacher differs from the student in weights and BN statistics (num_batches_tracked 7), so a check of the
    values also tells which network was exported.
    """
    torch.manual_seed(seed)
    model = SlotCon(arch=arch, dim_hidden=64, dim_out=32, num_prototypes=8)
    with torch.no_grad():
        for name, tensor in model.encoder_k.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) if "running_var" in name else torch.randn_like(tensor))
            else:
                tensor.fill_(7)
    state = model.state_dict()
    torch.save(
        {"args": {"arch": arch, "batch_size": 8}, "model": {"module." + k: v for k, v in state.items()}, "epoch": 1},
        path,
    )
    return {
        net: {k[len(prefix) :]: v.clone() for k, v in state.items() if k.startswith(prefix)}
        for net, prefix in (("teacher", "encoder_k."), ("student", "encoder_q."))
    }


def torchvision_name(d2_name: str) -> str:
    """The inverse renaming, written independently of the converter: detectron2 name -> torchvision name."""
    name = d2_name.removeprefix("stem.")
    name = re.sub(r"^res(\d)", lambda m: f"layer{int(m.group(1)) - 1}", name)
    name = name.replace("shortcut.norm", "downsample.1").replace("shortcut", "downsample.0")
    return re.sub(r"conv(\d)\.norm", r"bn\1", name)


def one_line_exit(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(excinfo.value.code)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def tiny_demo_sets(root: Path, num_train: int = 8, num_eval: int = 4, size: int = 64) -> dict:
    """Demo scenes rendered by data/demo_scenes.py and their transfer sets (transfer/demo_sets.py) under ``root``."""
    from data.demo_scenes import generate_scenes
    from transfer.demo_sets import write_transfer_sets

    generate_scenes(root / "demo", num_train=num_train, num_eval=num_eval, size=size, workers=1)
    return write_transfer_sets(root / "demo", root / "sets")
