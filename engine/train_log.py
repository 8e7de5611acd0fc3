"""What a training run writes as it goes: ``TrainLog`` (running means to the log, ``metrics.jsonl`` and
TensorBoard) and the TensorBoard writer itself."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from engine.checkpointing import stop_on_io_error
from engine.trainer import Trainer
from utils.distributed import DistInfo

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


class TrainLog:
    """Running means of the losses, written every ``--print-freq`` steps and at epoch ends to the log,
    ``metrics.jsonl`` (rank 0) and TensorBoard (when on)."""

    def __init__(
        self,
        args: argparse.Namespace,
        info: DistInfo,
        trainer: Trainer,
        iters_per_epoch: int,
        logger: logging.Logger,
        writer: SummaryWriter | None,
    ) -> None:
        self.logger, self.writer, self.trainer = logger, writer, trainer
        self.batch_size, self.epochs, self.print_freq = args.batch_size, args.epochs, args.print_freq
        self.iters_per_epoch = iters_per_epoch
        self.metrics_file = Path(args.output_dir) / "metrics.jsonl" if info.is_main else None
        self._reset()

    def _reset(self) -> None:
        self.sums = dict.fromkeys(("loss", "loss_group", "loss_slot", "active_slots"), 0.0)
        self.window_start, self.window_iters = time.time(), 0

    def record(self, epoch: int, batch_index: int, iteration: int, losses: dict[str, Tensor]) -> None:
        """Add one step's losses; write the means when a log line is due."""
        for k in self.sums:
            self.sums[k] += losses[k].detach().float()  # summed on the device: no host sync until a log line
        self.window_iters += 1
        if (batch_index + 1) % self.print_freq and batch_index + 1 != self.iters_per_epoch:
            return
        device = self.trainer.device
        lr, momentum = float(self.trainer.lr_schedule[iteration]), float(self.trainer.momentum_schedule[iteration])
        elapsed = time.time() - self.window_start
        values = {k: float(v) / self.window_iters for k, v in self.sums.items()}
        imgs_per_s = self.window_iters * self.batch_size / max(elapsed, 1e-9)
        eta = (len(self.trainer.lr_schedule) - iteration - 1) * elapsed / self.window_iters
        memory_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        self.logger.info(
            "Train: [%d/%d][%d/%d] eta %s lr %.6f momentum %.6f loss %.4f (group %.4f slot %.4f) "
            "active %.1f img/s %.1f mem %.1fG",
            epoch,
            self.epochs,
            batch_index + 1,
            self.iters_per_epoch,
            datetime.timedelta(seconds=int(eta)),
            lr,
            momentum,
            values["loss"],
            values["loss_group"],
            values["loss_slot"],
            values["active_slots"],
            imgs_per_s,
            memory_gib,
        )
        if self.metrics_file is not None:
            record = {
                "iteration": iteration,
                "epoch": epoch,
                "lr": lr,
                "momentum": momentum,
                "img_per_s": imgs_per_s,
                "max_memory_gib": memory_gib,
                **values,
            }
            try:
                with open(self.metrics_file, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:  # the output directory went away or filled up: so would the next checkpoint
                stop_on_io_error(self.logger, f"{self.metrics_file}: cannot append ({e.strerror})")
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"train/{k}", v, iteration)
            self.writer.add_scalar("train/lr", lr, iteration)
            self.writer.add_scalar("train/teacher_momentum", momentum, iteration)
            self.writer.add_scalar("train/img_per_s", imgs_per_s, iteration)
        self._reset()


def make_writer(args: argparse.Namespace, info: DistInfo) -> SummaryWriter | None:
    """Rank 0's TensorBoard writer in ``OUTPUT_DIR/tensorboard`` (None with ``--no-tensorboard`` or on other ranks)."""
    if not (args.tensorboard and info.is_main):
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(args.output_dir) / "tensorboard"))
