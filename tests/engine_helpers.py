"""A small real trainer, built from main_pretrain.py's command line as a run builds it, and a fixed batch."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from engine.trainer import Trainer, build_trainer, fill_device_defaults
from main_pretrain import check_args, get_args_parser
from tests.pretrain_helpers import TINY
from utils.distributed import DistInfo

CPU = DistInfo(0, 1, torch.device("cpu"))


def small_trainer(tmp_path: Path, *flags: str) -> tuple[Trainer, argparse.Namespace]:
    args = get_args_parser().parse_args([*TINY, "--epochs", "2", "--output-dir", str(tmp_path), *flags])
    check_args(args, 1)
    fill_device_defaults(args, CPU)
    args.num_instances = 24
    torch.manual_seed(0)
    return build_trainer(args, CPU, iters_per_epoch=3), args


def fixed_batch(b: int = 8, size: int = 64) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    crops = [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]
    boxes = [torch.tensor([[0.1, 0.2, 0.9, 0.8]]).repeat(b, 1), torch.tensor([[0.0, 0.0, 0.7, 1.0]]).repeat(b, 1)]
    flipped = [torch.arange(b) % 2 == 0, torch.arange(b) % 3 == 0]
    return crops, boxes, flipped


def everything(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Copies of every tensor of the model (teacher, centre, BN statistics included) and of the optimizer state."""
    state = {f"model.{k}": v.clone() for k, v in trainer.slotcon.state_dict().items()}
    for i, per_param in trainer.optimizer.state_dict()["state"].items():
        state.update({f"optimizer.{i}.{k}": v.clone() for k, v in per_param.items()})
    return state


def assert_bitwise_equal(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
