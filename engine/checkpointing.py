"""Checkpointing of a training run: ``Saver`` writes ``current.pth`` and the epoch files (atomically, never a
non-finite one), ``resume_from_checkpoint`` continues a run from one, and ``stop_on_io_error`` ends a run whose
output cannot be written. The file format itself (atomic writes, safe loads) is ``utils.checkpoint``'s.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import operator
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from engine.trainer import Trainer
from utils.checkpoint import (
    EXIT_SAVE_FAILED,
    CheckpointError,
    CheckpointSaveError,
    check_state_dict,
    load_checkpoint,
    model_state_dict,
    nonfinite_tensors,
    save_atomic,
)
from utils.distributed import DistInfo
from utils.preemption import EXIT_PREEMPTED
from utils.run_lock import broadcast_text

# The epoch files a run writes; pruning touches nothing else (a user's ckpt_epoch_1_backup.pth stays).
EPOCH_FILE = re.compile(r"ckpt_epoch_(\d+)\.pth")


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

    def save(
        self, completed_epoch: int, iteration: int, keep_epoch_file: bool = False, write_current: bool = True
    ) -> None:
        """Called on every rank (rank 0 writes); a failed write stops every rank with EXIT_SAVE_FAILED."""
        error = self.attempt(completed_epoch, iteration, keep_epoch_file, write_current)
        if error:
            stop_on_io_error(self.logger, error)

    def attempt(
        self, completed_epoch: int, iteration: int, keep_epoch_file: bool = False, write_current: bool = True
    ) -> str:
        """``save``, returning the failure's one line (the same on every rank; "" if none) instead of stopping."""
        self.last_save = time.time()
        error = ""
        if self.info.is_main:
            try:
                self._write(completed_epoch, iteration, keep_epoch_file, write_current)
            except CheckpointSaveError as e:
                error = str(e)
        return broadcast_text(error)

    def _write(self, completed_epoch: int, iteration: int, keep_epoch_file: bool, write_current: bool) -> None:
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
        if write_current:
            save_atomic(checkpoint, self.current)
            self.last_good = f"{self.current} (iteration {iteration}, {completed_epoch} epochs done)"
        if keep_epoch_file:
            epoch_file = self.epoch_file(completed_epoch)
            save_atomic(checkpoint, epoch_file)
            self.logger.info("saved %s", epoch_file)
            for old in prune_epoch_files(self.output, self.args.keep_last):
                self.logger.info("removed %s (--keep-last %d)", old, self.args.keep_last)

    def epoch_file(self, epoch: int) -> Path:
        return self.output / f"ckpt_epoch_{epoch}.pth"

    def last_good_note(self) -> str:
        if not self.info.is_main:
            return "Rank 0's log names the last good checkpoint."
        if self.last_good is None:
            return "This run has written no checkpoint yet."
        return f"The last good checkpoint is {self.last_good}."

    def restore_promised_epoch_file(self, resumed: Resumed) -> None:
        """Write the newest epoch file the schedule promised if it is missing and ``resumed`` (this run's own
        ``current.pth``) is exactly that epoch's end; else say plainly that it cannot be made. Every rank calls it.

        A run killed (or stopped by a full disk) between saving ``current.pth`` and ``ckpt_epoch_E.pth`` left
        epoch E finished without its file: the file the transfer commands name.
        """
        promised = resumed.latest_promised_epoch(self.args)
        if promised is None:
            return
        missing = broadcast_text("missing" if self.info.is_main and not self.epoch_file(promised).exists() else "")
        if not missing:
            return
        at_its_end = promised == resumed.completed_epochs and resumed.iteration == promised * self.iters_per_epoch
        if not at_its_end:
            if self.info.is_main:
                self.logger.warning(
                    "%s, promised by --save-freq, is missing and cannot be made from %s (iteration %d, %d epochs "
                    "done): it is past the end of epoch %d",
                    self.epoch_file(promised),
                    resumed.path,
                    resumed.iteration,
                    resumed.completed_epochs,
                    promised,
                )
            return
        if self.info.is_main:
            self.logger.info(
                "%s is missing (the run stopped between saving %s and it): writing it from %s, which is the end of "
                "epoch %d",
                self.epoch_file(promised),
                self.current.name,
                resumed.path,
                promised,
            )
        self.save(promised, resumed.iteration, keep_epoch_file=True, write_current=False)


def prune_epoch_files(folder: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` epoch files (none with ``keep_last`` 0); the files deleted.

    Only names the run itself writes count (``EPOCH_FILE``): anything else in the folder is left alone.
    """
    if keep_last <= 0:
        return []
    numbered = []
    for path in folder.iterdir():
        match = EPOCH_FILE.fullmatch(path.name)
        if match:
            numbered.append((int(match.group(1)), path))
    old = [path for _, path in sorted(numbered)[:-keep_last]]
    for path in old:
        path.unlink(missing_ok=True)
    return old


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run continues, and what its checkpoint said."""

    path: Path
    iteration: int  # where this run continues (rescaled under --accept-data-change)
    completed_epochs: int
    saved_iteration: int  # the checkpoint's own count: metrics.jsonl lines from here on were logged after it
    saved_args: dict[str, Any] = field(default_factory=dict)

    def latest_promised_epoch(self, args: argparse.Namespace) -> int | None:
        """The newest epoch <= ``completed_epochs`` whose file a run promised: every ``--save-freq`` (the saving
        run's or this one's) and the last epoch (the saving run's ``--epochs``, or this one's)."""
        done = self.completed_epochs
        candidates = [e for e in (self.saved_args.get("epochs"), args.epochs) if isinstance(e, int) and 1 <= e <= done]
        for freq in (self.saved_args.get("save_freq"), args.save_freq):
            if isinstance(freq, int) and freq >= 1 and done >= freq:
                candidates.append(done - done % freq)
        return max(candidates, default=None)


@dataclass(frozen=True)
class Position:
    """A checkpoint's place in its own schedule."""

    iteration: int
    completed_epochs: int
    iters_per_epoch: int

    @property
    def epochs(self) -> float:
        """Progress in epochs: comparable between checkpoints of different epoch lengths."""
        into = self.iteration - self.completed_epochs * self.iters_per_epoch
        return self.completed_epochs + into / self.iters_per_epoch

    def __str__(self) -> str:
        return f"iteration {self.iteration}, {self.completed_epochs} epochs done"


def _entry(checkpoint: dict[str, Any], *keys: str) -> Any:
    """``checkpoint[k1][k2]...``; a missing one is a ``CheckpointError`` naming it."""
    value: Any = checkpoint
    for depth, key in enumerate(keys):
        if not isinstance(value, dict) or key not in value:
            raise CheckpointError(f"it has no {'/'.join(keys[: depth + 1])!r} entry")
        value = value[key]
    return value


def _whole_number(value: Any, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise CheckpointError(f"its {name} is {value!r}, not a whole number") from None


def checkpoint_position(checkpoint: dict[str, Any], default_iters_per_epoch: int | None = None) -> Position:
    """The position a checkpoint records, checked against its own schedule (``CheckpointError`` if it cannot be
    one: a negative iteration, or one outside the epoch it says is in progress, or past its last epoch).

    ``default_iters_per_epoch``: for checkpoints that predate ``scheduler.iters_per_epoch``.
    """
    iteration = _whole_number(_entry(checkpoint, "scheduler", "iteration"), "scheduler/iteration")
    completed = _whole_number(_entry(checkpoint, "epoch"), "epoch")
    scheduler = checkpoint["scheduler"]
    if "iters_per_epoch" in scheduler or default_iters_per_epoch is None:
        per_epoch = _whole_number(_entry(checkpoint, "scheduler", "iters_per_epoch"), "scheduler/iters_per_epoch")
    else:
        per_epoch = default_iters_per_epoch
    if per_epoch < 1:
        raise CheckpointError(f"its epochs are {per_epoch} iterations long")
    low, high = completed * per_epoch, (completed + 1) * per_epoch  # high: saved mid-epoch after its last step
    epochs = (checkpoint.get("args") or {}).get("epochs")
    if isinstance(epochs, int) and epochs >= 0:
        high = min(high, epochs * per_epoch)
    if completed < 0 or not low <= iteration <= high:
        schedule = f"{per_epoch} iterations per epoch" + (f", {epochs} epochs" if isinstance(epochs, int) else "")
        bounds = f": the iteration must lie in [{low}, {high}]" if 0 <= low <= high else ""  # else: epoch impossible
        raise CheckpointError(
            f"its position (iteration {iteration}, {completed} epochs done) does not fit its own schedule "
            f"({schedule}){bounds}"
        )
    return Position(iteration, completed, per_epoch)


def choose_checkpoint(resume: str, auto_resume: bool, output_dir: str) -> tuple[Path | None, str]:
    """The checkpoint a run continues from, and why (for the log; "" when there was no choice).

    ``--resume FILE`` alone: FILE. ``--auto-resume`` alone: ``OUTPUT_DIR/current.pth`` if it exists. Both (a warm
    start under a recipe, which always passes ``--auto-resume``, requeued): the newer of the two by its recorded
    position, ``current.pth`` on a tie, so a requeued run never goes back to FILE and overwrites its own progress.
    """
    own = Path(output_dir) / "current.pth"
    own = own if auto_resume and own.is_file() else None
    if not resume:
        return own, ""
    given = Path(resume)
    if own is None or given.resolve() == own.resolve():
        return given, ""
    given_at, own_at = _peek_position(given), _peek_position(own)
    if own_at.epochs >= given_at.epochs:
        return own, (
            f"--auto-resume: {own} ({own_at}) is not behind --resume {given} ({given_at}), so this run continues "
            f"its own progress from {own.name}"
        )
    return given, f"--resume {given} ({given_at}) is ahead of {own} ({own_at}), so this run continues from it"


def _peek_position(path: Path) -> Position:
    try:
        try:
            checkpoint = load_checkpoint(path, mmap=True)  # only the position is wanted: map, do not read
        except CheckpointError:
            checkpoint = load_checkpoint(path)  # a file in torch's legacy format cannot be mapped
        return checkpoint_position(checkpoint)
    except CheckpointError as e:
        message = str(e)
        raise SystemExit(
            f"cannot resume: {message if message.startswith(str(path)) else f'{path}: {message}'}"
        ) from None


def resume_from_checkpoint(
    path: str | os.PathLike, trainer: Trainer, args: argparse.Namespace, iters_per_epoch: int, logger: logging.Logger
) -> Resumed:
    """Load model, optimizer and scaler from a checkpoint written by ``Saver``; returns where to continue.

    Every problem (an unreadable or foreign file, another network, non-finite values, a position outside its own
    schedule, data of another size without ``--accept-data-change``) stops the run with one line.
    """
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as e:
        raise SystemExit(f"cannot resume: {e}") from None
    try:
        saved = checkpoint.get("args") or {}
        for key in ("arch", "dim_hidden", "dim_out", "num_prototypes", "output_stride", "head_norm"):
            if key in saved and saved[key] != getattr(args, key):
                raise CheckpointError(
                    f"it was trained with --{key.replace('_', '-')} {saved[key]}, this run has {getattr(args, key)}"
                )
        position = checkpoint_position(checkpoint, default_iters_per_epoch=iters_per_epoch)
        for key in ("optimizer", "scaler"):
            _entry(checkpoint, key)
        poisoned = nonfinite_tensors({k: checkpoint.get(k) for k in ("model", "optimizer")})
        if poisoned:
            raise CheckpointError(f"{len(poisoned)} of its tensors hold NaN or infinity (the first: {poisoned[0]})")
        weights = model_state_dict(checkpoint)
        check_state_dict(trainer.slotcon, weights)  # names the first bad key and both shapes
        trainer.slotcon.load_state_dict(weights)
        trainer.optimizer.load_state_dict(checkpoint["optimizer"])
        trainer.scaler.load_state_dict(checkpoint["scaler"])
    except (CheckpointError, KeyError, ValueError, RuntimeError, TypeError) as e:
        raise SystemExit(f"cannot resume from {path}: {str(e).splitlines()[0]}") from None
    iteration, completed, saved_iters = position.iteration, position.completed_epochs, position.iters_per_epoch
    saved_images = saved.get("num_instances", args.num_instances)
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
    return Resumed(Path(path), iteration, completed, position.iteration, dict(saved))


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
    with contextlib.suppress(OSError):  # the console may be a file on the disk that just filled up
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_SAVE_FAILED)


@dataclass(frozen=True)
class Stop:
    """Why an epoch stopped early, after a complete step; ``stop_after_saving`` saves and exits with ``code``."""

    code: int  # EXIT_PREEMPTED, EXIT_SAVE_FAILED (a writer failed) or 1 (too many unreadable images)
    message: str = ""


def stop_after_saving(
    stop: Stop, saver: Saver, completed_epochs: int, iteration: int, logger: logging.Logger
) -> NoReturn:
    """Save ``current.pth`` (on every rank: a collective), then exit as ``stop`` says, in one line."""
    error = saver.attempt(completed_epochs, iteration)
    if error:
        saved = f"the final save failed too: {error}. {saver.last_good_note()}"
    else:
        saved = f"saved {saver.current} at iteration {iteration} before stopping"
    if stop.code == EXIT_PREEMPTED:
        if error:  # the signal asked for a requeue, but a run that cannot save must not be requeued
            stop_on_io_error(logger, f"preempted, and {saved}")
        logger.info("preempted: %s; exiting with code %d", saved, EXIT_PREEMPTED)
        sys.exit(EXIT_PREEMPTED)
    if stop.code == EXIT_SAVE_FAILED:
        stop_on_io_error(logger, f"{stop.message}; {saved}")
    logger.error("%s; %s", stop.message, saved)
    raise SystemExit(f"{stop.message}; {saved}")
