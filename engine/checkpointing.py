"""Checkpointing of a training run: ``Saver`` writes ``current.pth`` and the epoch files (atomically, never a
non-finite one), ``resume_from_checkpoint`` continues a run from one, and ``stop_on_io_error`` ends a run whose
output cannot be written. The file format itself (atomic writes, safe loads) is ``utils.checkpoint``'s.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

from engine.trainer import Trainer
from utils.checkpoint import (
    EXIT_SAVE_FAILED,
    CheckpointError,
    CheckpointSaveError,
    load_checkpoint,
    model_state_dict,
    nonfinite_tensors,
    save_atomic,
)
from utils.distributed import DistInfo
from utils.run_lock import broadcast_text


class Saver:
    """Writes ``current.pth`` (atomically) at epoch ends and every ``--save-every-minutes``, and
    ``ckpt_epoch_E.pth`` every ``--save-freq`` epochs, keeping the newest ``--keep-last``.

    A checkpoint that would hold a non-finite tensor is not written: the previous file stays, and the log says so.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        info: DistInfo,
        trainer: Trainer,
        iters_per_epoch: int,
        logger: logging.Logger,
        resumed_from: Path | None,
    ) -> None:
        self.args, self.info, self.trainer, self.logger = args, info, trainer, logger
        self.iters_per_epoch = iters_per_epoch
        self.output = Path(args.output_dir)
        self.current = self.output / "current.pth"
        self.last_save = time.time()
        # The newest checkpoint known to be whole and finite: the one resumed from (resume_from_checkpoint checked
        # it), then ours.
        self.last_good = None if resumed_from is None else f"{resumed_from} (the checkpoint this run resumed from)"

    def due(self) -> bool:
        minutes = self.args.save_every_minutes
        return minutes > 0 and time.time() - self.last_save >= minutes * 60

    def checkpoint(self, completed_epoch: int, iteration: int) -> dict:
        return {
            "args": dict(vars(self.args)),
            # "module." prefix as the reference's DDP checkpoints, whatever the world size.
            "model": {f"module.{k}": v for k, v in self.trainer.slotcon.state_dict().items()},
            "optimizer": self.trainer.optimizer.state_dict(),
            "scheduler": {"iteration": iteration, "iters_per_epoch": self.iters_per_epoch},
            "epoch": completed_epoch,
            "scaler": self.trainer.scaler.state_dict(),
        }

    def save(self, completed_epoch: int, iteration: int, keep_epoch_file: bool = False) -> None:
        """Called on every rank (rank 0 writes); a failed write stops every rank with EXIT_SAVE_FAILED."""
        self.last_save = time.time()
        error = ""
        if self.info.is_main:
            try:
                self._write(completed_epoch, iteration, keep_epoch_file)
            except CheckpointSaveError as e:
                error = str(e)
        error = broadcast_text(error)
        if error:
            stop_on_io_error(self.logger, error)

    def _write(self, completed_epoch: int, iteration: int, keep_epoch_file: bool) -> None:
        checkpoint = self.checkpoint(completed_epoch, iteration)
        poisoned = nonfinite_tensors(checkpoint)
        if poisoned:
            self.logger.error(
                "not saving iteration %d: %d tensors hold NaN or infinity (the first: %s); %s",
                iteration,
                len(poisoned),
                poisoned[0],
                self.last_good_note(),
            )
            return
        save_atomic(checkpoint, self.current)
        self.last_good = f"{self.current} (iteration {iteration}, {completed_epoch} epochs done)"
        if keep_epoch_file:
            epoch_file = self.output / f"ckpt_epoch_{completed_epoch}.pth"
            save_atomic(checkpoint, epoch_file)
            self.logger.info("saved %s", epoch_file)
            self._prune()

    def last_good_note(self) -> str:
        if not self.info.is_main:
            return "Rank 0's log names the last good checkpoint."
        if self.last_good is None:
            return "This run has written no checkpoint yet."
        return f"The last good checkpoint is {self.last_good}."

    def _prune(self) -> None:
        if self.args.keep_last <= 0:
            return
        files = sorted(self.output.glob("ckpt_epoch_*.pth"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        for old in files[: -self.args.keep_last]:
            old.unlink(missing_ok=True)


def resume_from_checkpoint(
    path: str | os.PathLike, trainer: Trainer, args: argparse.Namespace, iters_per_epoch: int, logger: logging.Logger
) -> tuple[int, int]:
    """Load model, optimizer and scaler from a checkpoint written by ``Saver``; returns (iteration, epochs done).

    Every problem (an unreadable or foreign file, another network, non-finite values, data of another size without
    ``--accept-data-change``) stops the run with one line.
    """
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as e:
        raise SystemExit(f"cannot resume: {e}") from None
    try:
        saved = checkpoint.get("args", {})
        for key in ("arch", "dim_hidden", "dim_out", "num_prototypes", "output_stride", "head_norm"):
            if key in saved and saved[key] != getattr(args, key):
                raise CheckpointError(
                    f"it was trained with --{key.replace('_', '-')} {saved[key]}, this run has {getattr(args, key)}"
                )
        poisoned = nonfinite_tensors({k: checkpoint.get(k) for k in ("model", "optimizer")})
        if poisoned:
            raise CheckpointError(f"{len(poisoned)} of its tensors hold NaN or infinity (the first: {poisoned[0]})")
        missing, unexpected = trainer.slotcon.load_state_dict(model_state_dict(checkpoint), strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"weights do not match the model ({len(missing)} missing, "
                f"{len(unexpected)} unexpected keys, e.g. {(missing + unexpected)[0]})"
            )
        trainer.optimizer.load_state_dict(checkpoint["optimizer"])
        trainer.scaler.load_state_dict(checkpoint["scaler"])
        iteration, completed = int(checkpoint["scheduler"]["iteration"]), int(checkpoint["epoch"])
        saved_images = saved.get("num_instances", args.num_instances)
        saved_iters = int(checkpoint["scheduler"].get("iters_per_epoch", iters_per_epoch))
    except (CheckpointError, KeyError, ValueError, RuntimeError) as e:
        raise SystemExit(f"cannot resume from {path}: {str(e).splitlines()[0]}") from None
    if (saved_images, saved_iters) != (args.num_instances, iters_per_epoch):
        change = (
            f"its epochs were {saved_iters} iterations over {saved_images} images, this run's are "
            f"{iters_per_epoch} over {args.num_instances}"
        )
        if not args.accept_data_change:
            raise SystemExit(
                f"cannot resume from {path}: {change}. Pass --accept-data-change to continue on the "
                "new data (finished epochs stay finished), or point --data-dir at the old data"
            )
        new_iteration = rescale_iteration(iteration, completed, saved_iters, iters_per_epoch)
        logger.warning(
            "%s; --accept-data-change: %d epochs stay done, iteration %d becomes %d (the same point of "
            "the epoch and of the schedules)",
            change,
            completed,
            iteration,
            new_iteration,
        )
        iteration = new_iteration
    logger.info("resumed from %s: %d epochs done, continuing at iteration %d", path, completed, iteration)
    return iteration, completed


def rescale_iteration(iteration: int, completed_epochs: int, saved_iters_per_epoch: int, iters_per_epoch: int) -> int:
    """The global iteration at the same training progress, counted in epochs, after the epoch length changed:
    finished epochs stay finished and the epoch in progress continues at the same fraction of its length (rounded
    to a whole batch). The lr and teacher-momentum schedules, functions of that progress, continue where they were.
    """
    into_epoch = iteration - completed_epochs * saved_iters_per_epoch
    return completed_epochs * iters_per_epoch + round(into_epoch * iters_per_epoch / saved_iters_per_epoch)


def stop_on_io_error(logger: logging.Logger, message: str) -> NoReturn:
    """Stop the run because its output cannot be written: one line, exit code EXIT_SAVE_FAILED (not requeued)."""
    logger.error(message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_SAVE_FAILED)
