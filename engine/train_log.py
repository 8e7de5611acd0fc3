"""What a training run writes as it goes: ``TrainLog`` (running means to the log, ``metrics.jsonl`` and
TensorBoard), the TensorBoard writer itself, and ``rewind_metrics`` for a run that continues from a checkpoint.

None of these writers raises when its disk fails: each keeps its failure, ``TrainLog.failure`` reports the first,
and the training loop stops the run on it as on a failed save (a final save first, then exit code 74).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import time
from pathlib import Path

import torch
from torch import Tensor

from engine.trainer import Trainer
from utils.atomic import describe_failure, write_text_atomic
from utils.distributed import DistInfo
from utils.logger import log_file_failure
from utils.tensorboard import CheckedSummaryWriter


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
        writer: CheckedSummaryWriter | None,
    ) -> None:
        self.logger, self.writer, self.trainer = logger, writer, trainer
        self.metrics_failure = ""
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
            if not self.metrics_failure:
                try:
                    with open(self.metrics_file, "a") as f:
                        f.write(json.dumps(record) + "\n")
                except OSError as e:  # the output directory went away or filled up: so would the next checkpoint
                    self.metrics_failure = describe_failure(str(self.metrics_file), e)
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"train/{k}", v, iteration)
            self.writer.add_scalar("train/lr", lr, iteration)
            self.writer.add_scalar("train/teacher_momentum", momentum, iteration)
            self.writer.add_scalar("train/img_per_s", imgs_per_s, iteration)
        self._reset()

    def failure(self) -> str:
        """The first writer of this process that failed (log file, ``metrics.jsonl``, TensorBoard), one line; ""."""
        writer_failure = self.writer.failure if self.writer is not None else ""
        return log_file_failure(self.logger) or self.metrics_failure or writer_failure


def make_writer(args: argparse.Namespace, info: DistInfo, first_iteration: int) -> CheckedSummaryWriter | None:
    """Rank 0's TensorBoard writer in ``OUTPUT_DIR/tensorboard`` (None with ``--no-tensorboard`` or on other ranks).

    TensorBoard hides what an earlier run logged from ``first_iteration`` on: a resume redoes those steps.
    """
    if not (args.tensorboard and info.is_main):
        return None
    return CheckedSummaryWriter(Path(args.output_dir) / "tensorboard", purge_step=first_iteration)


def rewind_metrics(metrics_file: Path, first_iteration: int) -> int:
    """Move the records of ``metrics_file`` from ``first_iteration`` on (logged after the checkpoint a run resumes
    from, by a run killed before its next save: the resume logs those iterations again) to
    ``metrics.discarded.jsonl`` beside it, so that ``metrics.jsonl`` holds every iteration once. Returns how many.

    Both files are rewritten atomically; ``OutputWriteError`` if that fails. A line that is not a JSON record (cut
    by a kill mid-append) goes too.
    """
    if not metrics_file.is_file():
        return 0
    kept, moved = [], []
    for line in metrics_file.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = record["iteration"] < first_iteration
        except (ValueError, TypeError, KeyError):
            keep = False
        (kept if keep else moved).append(line)
    if moved:
        discarded = metrics_file.with_name("metrics.discarded.jsonl")
        earlier = discarded.read_text().splitlines() if discarded.is_file() else []
        write_text_atomic(discarded, "".join(line + "\n" for line in [*earlier, *moved]))
        write_text_atomic(metrics_file, "".join(line + "\n" for line in kept))
    return len(moved)
