"""SlotCon pretraining: ``python main_pretrain.py ...`` on CPU or one GPU, ``torchrun --nproc_per_node=N
main_pretrain.py ...`` for DDP. Reads top to bottom: arguments and their checks, main, build, the training step,
train_one_epoch, logging, save and resume.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import math
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from data.datasets import DATASETS, DatasetError, TwoViewDataset, collate_two_views, list_images
from data.photometric import BatchAugment
from data.sampler import ResumableSampler
from data.transforms import TwoViewCrop
from eval.monitor import Monitor
from models import ARCHS, OUTPUT_STRIDES, SlotCon
from models.norm import convert_to_sync_batchnorm
from utils.checkpoint import (
    EXIT_SAVE_FAILED,
    CheckpointError,
    CheckpointSaveError,
    load_checkpoint,
    model_state_dict,
    nonfinite_tensors,
    save_atomic,
)
from utils.distributed import DistInfo, init_distributed, sum_over_ranks
from utils.lars import LARS
from utils.logger import setup_logger
from utils.run_lock import RunLockError, broadcast_text, hold_output_dir
from utils.schedules import teacher_momentum, warmup_cosine_lr

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on SIGTERM/SIGUSR1 after saving; requeue the job to continue
FAULT_FLAGS = ("inject_nan_at", "inject_inf_lr_at")  # hidden, for the fault tests; never saved


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("SlotCon pretraining", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", default="COCO", choices=DATASETS)
    g.add_argument("--data-dir", default="./datasets/coco", help="dataset root (layout depends on --dataset)")
    g.add_argument("--image-size", type=int, default=224, help="crop size; a multiple of --output-stride")
    g.add_argument("--min-scale", type=float, default=0.08, help="smallest crop area fraction")

    g = p.add_argument_group("model")
    g.add_argument("--arch", default="resnet50", choices=ARCHS)
    g.add_argument(
        "--output-stride",
        type=int,
        default=32,
        choices=OUTPUT_STRIDES,
        help="C5 stride: 16 or 8 dilate the last stages (same weights, 2x or 4x finer maps)",
    )
    g.add_argument("--dim-hidden", type=int, default=4096)
    g.add_argument("--dim-out", type=int, default=256)
    g.add_argument("--num-prototypes", type=int, default=256)
    g.add_argument("--teacher-momentum", type=float, default=0.99)
    g.add_argument("--teacher-temp", type=float, default=0.07)
    g.add_argument("--student-temp", type=float, default=0.1)
    g.add_argument("--center-momentum", type=float, default=0.9)
    g.add_argument("--group-loss-weight", type=float, default=0.5)

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=512, help="total batch over all processes")
    g.add_argument("--base-lr", type=float, default=1.0, help="lr for a total batch of 256 (scaled linearly)")
    g.add_argument("--optimizer", default="sgd", choices=["sgd", "lars"])
    g.add_argument("--warmup-epoch", type=int, default=5)
    g.add_argument("--warmup-multiplier", type=int, default=100, help="warm-up starts at lr / this")
    g.add_argument("--weight-decay", type=float, default=1e-5)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument(
        "--fp16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision (default: on for CUDA, off on CPU)",
    )
    g.add_argument(
        "--amp-dtype",
        default="bfloat16",
        choices=["float16", "bfloat16"],
        help="autocast dtype with --fp16; float16 adds a GradScaler as the reference does",
    )
    g.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last memory format for the networks (default: on for CUDA, off on CPU)",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the backbones, projectors and (on a GPU) the photometric augmentation",
    )
    g.add_argument(
        "--pack-slot-queries",
        action="store_true",
        help="run the slot predictor on the valid slots only: same loss, fewer FLOPs, one host sync",
    )
    g.add_argument("--start-epoch", type=int, default=1)
    g.add_argument("--epochs", type=int, default=800)

    g = p.add_argument_group("misc")
    g.add_argument("--output-dir", default="./output")
    g.add_argument("--auto-resume", action="store_true", help="resume from OUTPUT_DIR/current.pth if it exists")
    g.add_argument("--resume", default="", help="checkpoint to resume from")
    g.add_argument(
        "--accept-data-change",
        action="store_true",
        help="resume although the number of images (or iterations per epoch) differs from the "
        "checkpoint's: finished epochs stay finished, the rest run on the new data",
    )
    g.add_argument("--print-freq", type=int, default=10)
    g.add_argument("--save-freq", type=int, default=50, help="keep ckpt_epoch_E.pth every this many epochs")
    g.add_argument(
        "--save-every-minutes",
        type=float,
        default=5.0,
        help="also refresh current.pth mid-epoch this often (0: only at epoch ends)",
    )
    g.add_argument("--keep-last", type=int, default=0, help="keep only the newest N epoch checkpoints (0: all)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--num-workers", type=int, default=8, help="data loading processes per GPU")
    g.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    g.add_argument(
        "--max-bad-image-fraction",
        type=float,
        default=0.01,
        help="stop when more than this fraction of images read so far was unreadable",
    )
    g.add_argument(
        "--max-nonfinite-steps",
        type=int,
        default=10,
        help="stop after this many consecutive steps with a non-finite loss or update",
    )
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument(
        "--tb-image-freq",
        type=int,
        default=1,
        help="log the teacher's prototype maps of 8 fixed images every N epochs (0: never)",
    )
    g.add_argument("--eval-data", default=None, help="demo scenes root: score unsupervised segmentation online")
    g.add_argument("--eval-freq", type=int, default=5, help="with --eval-data, evaluate every N epochs")
    # Fault injection for the tests, at these iterations: a NaN loss; an infinite learning rate (a finite loss
    # whose update leaves weights and optimizer state non-finite).
    g.add_argument("--inject-nan-at", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    g.add_argument("--inject-inf-lr-at", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    return p


# Each flag's allowed values: (flags, test, what the message says they must be).
FLAG_RULES: list[tuple[tuple[str, ...], Callable[[Any], bool], str]] = [
    (
        (
            "batch_size",
            "dim_hidden",
            "dim_out",
            "num_prototypes",
            "epochs",
            "start_epoch",
            "save_freq",
            "print_freq",
            "warmup_multiplier",
            "max_nonfinite_steps",
        ),
        lambda v: v >= 1,
        "an integer >= 1",
    ),
    (("num_workers", "warmup_epoch", "keep_last", "tb_image_freq", "eval_freq"), lambda v: v >= 0, "an integer >= 0"),
    (("base_lr", "teacher_temp", "student_temp"), lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    (("weight_decay", "save_every_minutes"), lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    (
        ("teacher_momentum", "center_momentum", "momentum", "group_loss_weight", "max_bad_image_fraction"),
        lambda v: 0 <= v <= 1,
        "in [0, 1]",
    ),
    (("min_scale",), lambda v: 0 < v <= 1, "in (0, 1]"),
    (("seed",), lambda v: v is None or 0 <= v < 2**32, "in [0, 2**32)"),
]


def flag_problems(args: argparse.Namespace, world_size: int) -> list[str]:
    """One line for every flag whose value cannot work (empty if all can)."""
    problems = [
        f"--{name.replace('_', '-')} {getattr(args, name)}: must be {expected}"
        for names, ok, expected in FLAG_RULES
        for name in names
        if not ok(getattr(args, name))
    ]
    if args.batch_size >= 1 and args.batch_size % world_size:
        problems.append(f"--batch-size {args.batch_size} is not divisible by the {world_size} processes")
    if args.image_size % args.output_stride or args.image_size < 32:
        problems.append(
            f"--image-size {args.image_size} must be a multiple of --output-stride {args.output_stride} and at least 32"
        )
    if math.isfinite(args.base_lr) and not scaled_lr(args) < torch.finfo(torch.float32).max:
        problems.append(f"--base-lr {args.base_lr}: the learning rate for batch {args.batch_size} overflows float32")
    if args.device is not None:
        problems += device_problems(args.device)
    if args.resume and not Path(args.resume).is_file():
        problems.append(f"--resume {args.resume}: no such file")
    if args.eval_data and not Path(args.eval_data).is_dir():
        problems.append(f"--eval-data {args.eval_data}: no such directory")
    return problems


def device_problems(device: str) -> list[str]:
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if match is None:
        return [f"--device {device}: use cuda, cuda:N or cpu"]
    if device.startswith("cuda") and not torch.cuda.is_available():
        return [f"--device {device}: no CUDA device is available (use --device cpu)"]
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        return [f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"]
    return []


def check_args(args: argparse.Namespace, world_size: int) -> None:
    """Reject bad flags with one line each, before any work starts."""
    problems = flag_problems(args, world_size)
    if problems:
        raise SystemExit("\n".join(problems))
    output = Path(args.output_dir)
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".write_test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"--output-dir {output}: not writable ({e.strerror})") from None


class PreemptionFlag:
    """Set by SIGTERM/SIGUSR1; the loop finishes its step, saves and exits with EXIT_PREEMPTED."""

    def __init__(self) -> None:
        self.raised = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame) -> None:
        self.raised = True

    @staticmethod
    def ignore_in_loader_worker(worker_id: int) -> None:
        """A DataLoader ``worker_init_fn``. SLURM and ``kill -- -PGID`` signal every process, loader workers
        included: a worker killed by the signal would make PyTorch raise in the main process before it saves."""
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)


def main(args: argparse.Namespace) -> None:
    preempted = PreemptionFlag()  # before any work: a SIGUSR1 during start-up must not kill the job unsaved
    check_args(args, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    info = init_distributed(args.device)
    try:  # before the log: a second run must not write into the holder's log.txt
        run_lock = hold_output_dir(args.output_dir, info.is_main)
    except RunLockError as e:
        raise SystemExit(str(e)) from None
    logging.raiseExceptions = False  # a log file on a vanished disk must not print tracebacks over the real error
    logger = setup_logger(args.output_dir, info.rank)
    if run_lock is not None and run_lock.unsupported:
        logger.warning(run_lock.unsupported)
    device = info.device
    fill_device_defaults(args, info)
    seed = 0 if args.seed is None else args.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- data
    try:
        files = list_images(args.dataset, args.data_dir)
        sampler = ResumableSampler(len(files), args.batch_size_per_gpu, info.rank, info.world_size, seed)
    except (DatasetError, ValueError) as e:
        raise SystemExit(str(e)) from None
    args.num_instances = len(files)  # what the epoch length is computed from; a resume checks it
    dataset = TwoViewDataset(files, TwoViewCrop(args.image_size, args.min_scale))
    # More loader processes than CPUs only slow a laptop down (the reference's default is 8 per GPU).
    workers = min(args.num_workers, len(os.sched_getaffinity(0)))
    if workers < args.num_workers and info.is_main:
        logger.info(
            "--num-workers %d: this process may use %d CPUs, so %d loader workers", args.num_workers, workers, workers
        )
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size_per_gpu,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_two_views,
        persistent_workers=workers > 0,
        worker_init_fn=PreemptionFlag.ignore_in_loader_worker,
    )
    augment = BatchAugment(device, seed, compile=args.compile)
    iters_per_epoch = sampler.batches_per_epoch

    # ---- model, optimizer, schedules
    trainer = build_trainer(args, info, iters_per_epoch)

    # ---- resume
    iteration, completed_epochs = (args.start_epoch - 1) * iters_per_epoch, args.start_epoch - 1
    resume_path = args.resume or (Path(args.output_dir) / "current.pth" if args.auto_resume else None)
    resumed_from = None
    if resume_path and Path(resume_path).is_file():
        iteration, completed_epochs = restore(resume_path, trainer, args, iters_per_epoch, logger)
        resumed_from = Path(resume_path)
    elif args.auto_resume:
        logger.info("no checkpoint in %s: starting from scratch", args.output_dir)
    if info.distributed:
        # Every rank must have read current.pth before rank 0 may overwrite it, or ranks resume out of step.
        dist.barrier()

    if info.is_main:
        logger.info("args: %s", json.dumps(vars(args), sort_keys=True))
        logger.info(
            "%d images, %d iterations per epoch, %d in total; lr %.4g",
            len(files),
            iters_per_epoch,
            len(trainer.lr_schedule),
            scaled_lr(args),
        )
        (Path(args.output_dir) / "config.json").write_text(json.dumps(vars(args), indent=2, sort_keys=True))
    writer = make_writer(args, info)
    monitor = None
    if info.is_main:  # pictures need TensorBoard; the online evaluation runs without it and goes to the log
        try:
            monitor = Monitor(
                writer, files, args.image_size, device, args.tb_image_freq, args.eval_data, args.eval_freq
            )
        except ValueError as e:  # --eval-data that holds no readable demo scenes
            raise SystemExit(f"--eval-data: {e}") from None
    saver = Saver(args, info, trainer, iters_per_epoch, logger, resumed_from)
    if run_lock is not None and run_lock.held:  # a save killed midway leaves its temp file; the target is intact
        run_lock.remove_stale(".*.pth.*.tmp")
    state = LoopState(iteration, args.batch_size, args.max_nonfinite_steps, args.max_bad_image_fraction, args.data_dir)
    log = TrainLog(args, info, trainer, iters_per_epoch, logger, writer)

    start_epoch = completed_epochs + 1
    if start_epoch > args.epochs and info.is_main:
        logger.info(
            "the checkpoint has finished all %d epochs: nothing to train (raise --epochs to continue, "
            "or use a new --output-dir to start over)",
            args.epochs,
        )
    for epoch in range(start_epoch, args.epochs + 1):
        sampler.set_epoch(epoch, start_batch=state.iteration - (epoch - 1) * iters_per_epoch)
        if train_one_epoch(trainer, loader, augment, epoch, state, log, saver, preempted):
            saver.save(epoch - 1, state.iteration)
            logger.info(
                "preempted: saved %s at iteration %d; exiting with code %d",
                saver.current,
                state.iteration,
                EXIT_PREEMPTED,
            )
            finish(writer)
            sys.exit(EXIT_PREEMPTED)
        saver.save(epoch, state.iteration, keep_epoch_file=epoch % args.save_freq == 0 or epoch == args.epochs)
        if monitor is not None:
            scores = monitor.on_epoch_end(trainer.slotcon, epoch, state.iteration)
            if scores:
                logger.info("eval after epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    finish(writer)
    if info.is_main:
        logger.info("training done: %d epochs, checkpoints in %s", args.epochs, args.output_dir)


def fill_device_defaults(args: argparse.Namespace, info: DistInfo) -> None:
    """The defaults that depend on the device and the process count, written into ``args`` (and config.json)."""
    args.fp16 = info.device.type == "cuda" if args.fp16 is None else args.fp16
    args.channels_last = info.device.type == "cuda" if args.channels_last is None else args.channels_last
    args.world_size = info.world_size
    args.batch_size_per_gpu = args.batch_size // info.world_size


def scaled_lr(args: argparse.Namespace) -> float:
    """The peak learning rate: ``--base-lr`` for a total batch of 256, scaled linearly."""
    return args.base_lr * args.batch_size / 256


def build_model(args: argparse.Namespace, device: torch.device) -> SlotCon:
    """The SlotCon of ``args`` on ``device`` (in its memory format, compiled with ``--compile``)."""
    model = SlotCon(
        arch=args.arch,
        dim_hidden=args.dim_hidden,
        dim_out=args.dim_out,
        num_prototypes=args.num_prototypes,
        teacher_temp=args.teacher_temp,
        student_temp=args.student_temp,
        center_momentum=args.center_momentum,
        group_loss_weight=args.group_loss_weight,
        pack_slot_queries=args.pack_slot_queries,
        output_stride=args.output_stride,
    ).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.compile_networks()
    return model


def build_trainer(args: argparse.Namespace, info: DistInfo, iters_per_epoch: int) -> Trainer:
    """Model (DDP with synchronised BatchNorm under torchrun), optimizer, GradScaler and per-iteration schedules."""
    slotcon = build_model(args, info.device)
    model: nn.Module = slotcon
    if info.distributed:
        convert_to_sync_batchnorm(slotcon, use_torch_sync=info.device.type == "cuda")
        model = DistributedDataParallel(
            slotcon, device_ids=[info.device] if info.device.type == "cuda" else None, broadcast_buffers=False
        )
    lr = scaled_lr(args)
    params = [p for p in slotcon.parameters() if p.requires_grad]
    if args.optimizer == "lars":
        optimizer = LARS(params, lr=lr, weight_decay=args.weight_decay, momentum=args.momentum)
    else:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    amp_dtype = (torch.float16 if args.amp_dtype == "float16" else torch.bfloat16) if args.fp16 else None
    return Trainer(
        model,
        slotcon,
        optimizer,
        scaler=torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16),
        lr_schedule=warmup_cosine_lr(lr, args.epochs, iters_per_epoch, args.warmup_epoch, args.warmup_multiplier),
        momentum_schedule=teacher_momentum(args.teacher_momentum, args.epochs * iters_per_epoch),
        amp_dtype=amp_dtype,
        nan_loss_at=args.inject_nan_at,
        inf_lr_at=args.inject_inf_lr_at,
    )


class StepSnapshot:
    """Copies of everything a training step changes before the teacher's average: the student's parameters, the
    optimizer's state, the model's buffers (centre, BatchNorm statistics). ``restore`` undoes a step exactly.

    The teacher needs no copy: it is averaged only once a step is known to be finite. The copies live on the
    training device and are refreshed in place with one fused copy per step.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.buffers = list(model.buffers())
        self.copies: list[Tensor] = []
        self.state_keys: list[tuple[int, str]] = []
        self.plain_state: dict[int, dict[str, object]] = {}

    def _state_tensors(self) -> tuple[list[tuple[int, str]], list[Tensor]]:
        keys, tensors = [], []
        for i, p in enumerate(self.params):
            for key, value in self.optimizer.state.get(p, {}).items():
                if isinstance(value, Tensor):
                    keys.append((i, key))
                    tensors.append(value)
        return keys, tensors

    def live(self) -> list[Tensor]:
        """Parameters, buffers and optimizer state tensors, in a fixed order."""
        return [*self.params, *self.buffers, *self._state_tensors()[1]]

    @torch.no_grad()
    def take(self) -> None:
        keys, state = self._state_tensors()
        live = [*self.params, *self.buffers, *state]
        if keys != self.state_keys or not self.copies:  # the optimizer creates its state on its first step
            self.state_keys = keys
            self.copies = [t.detach().clone() for t in live]
        else:
            torch._foreach_copy_(self.copies, live)
        self.plain_state = {
            i: {k: v for k, v in self.optimizer.state.get(p, {}).items() if not isinstance(v, Tensor)}
            for i, p in enumerate(self.params)
        }

    @torch.no_grad()
    def restore(self) -> None:
        taken = set(self.state_keys)
        for i, p in enumerate(self.params):
            state = self.optimizer.state.get(p)
            if state is None:
                continue
            for key in [k for k in state if (i, k) not in taken and k not in self.plain_state[i]]:
                del state[key]  # created by the step being undone
            state.update(self.plain_state[i])
            if not state:
                del self.optimizer.state[p]
        torch._foreach_copy_(self.live(), self.copies)

    @torch.no_grad()
    def live_is_finite(self) -> Tensor:
        """A 0-dim bool tensor, on the device, no host sync: every floating-point value of ``live()`` is finite.

        The max-norm of each tensor (fused) is finite exactly when the tensor is (a 2-norm can overflow)."""
        floats = [t for t in self.live() if t.is_floating_point() and t.numel() > 0]
        return torch.stack(torch._foreach_norm(floats, float("inf"))).isfinite().all()


@dataclass
class StepResult:
    losses: dict[str, Tensor]  # the forward pass's outputs (device tensors, not synchronised)
    loss_finite: bool
    update_finite: bool
    sums: list[float]  # the host counts passed to ``step``, summed over ranks

    @property
    def finite(self) -> bool:
        return self.loss_finite and self.update_finite


class Trainer:
    """The networks, optimizer and schedules of a run, and ``step``: one training iteration, the one code path
    that trains (``bench/benchmark.py`` times this same step)."""

    def __init__(
        self,
        model: nn.Module,
        slotcon: SlotCon,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        lr_schedule: np.ndarray,
        momentum_schedule: np.ndarray,
        amp_dtype: torch.dtype | None,
        nan_loss_at: Iterable[int] = (),
        inf_lr_at: Iterable[int] = (),
    ) -> None:
        self.model = model  # what runs the forward pass: the DDP wrapper under torchrun
        self.slotcon = slotcon  # the bare model: teacher, centre, state_dict
        self.optimizer, self.scaler = optimizer, scaler
        self.lr_schedule, self.momentum_schedule = lr_schedule, momentum_schedule
        self.amp_dtype = amp_dtype
        self.device = slotcon.center.device
        self.snapshot = StepSnapshot(slotcon, optimizer)
        self.nan_loss_at, self.inf_lr_at = set(nan_loss_at), set(inf_lr_at)

    def step(
        self,
        crops: list[Tensor],
        boxes: list[Tensor],
        flipped: list[Tensor],
        iteration: int,
        host_counts: Sequence[float] = (),
    ) -> StepResult:
        """Forward, backward, optimizer step, then the teacher's average with the next iteration's momentum.

        A step whose loss, or whose update of any parameter, optimizer state tensor, centre or BatchNorm
        statistic, is not finite is undone (everything as before it; the teacher is not averaged). The finite
        flags and ``host_counts`` travel in one all-reduce, read with the step's one host sync.
        """
        lr = math.inf if iteration in self.inf_lr_at else float(self.lr_schedule[iteration])
        for group in self.optimizer.param_groups:
            group["lr"] = lr  # a Python float: a numpy one would not load with weights_only
        self.snapshot.take()
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with autocast:
            losses = self.model(crops, boxes, flipped)
        loss = losses["loss"]
        if iteration in self.nan_loss_at:
            loss = loss * float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)  # LARS' trust ratio needs the true gradient norm
        self.scaler.step(self.optimizer)  # with fp16, skipped by the scaler itself on overflowing gradients
        self.scaler.update()

        flags = torch.stack([~torch.isfinite(loss.detach()), ~self.snapshot.live_is_finite()]).double()
        counts = torch.tensor(list(host_counts), dtype=torch.float64, pin_memory=self.device.type == "cuda")
        verdict = sum_over_ranks(torch.cat([flags, counts.to(self.device, non_blocking=True)]))
        bad_loss, bad_update, *sums = verdict.tolist()  # the step's one host sync
        if bad_loss or bad_update:
            self.snapshot.restore()
        elif iteration + 1 < len(self.momentum_schedule):
            self.slotcon.update_teacher(float(self.momentum_schedule[iteration + 1]))
        return StepResult(losses, not bad_loss, not bad_update, sums)


@dataclass
class LoopState:
    """What the loop carries from step to step besides the weights, and when it stops the run."""

    iteration: int
    batch_size: int  # over all ranks
    max_nonfinite_steps: int
    max_bad_image_fraction: float
    data_dir: str
    nonfinite_in_a_row: int = 0
    images_read: int = 0
    images_skipped: int = 0

    def count_images(self, skipped: int) -> None:
        """``skipped``: unreadable files met while making this step's batch, over all ranks."""
        self.images_read += self.batch_size + skipped
        self.images_skipped += skipped
        if self.images_skipped > self.max_bad_image_fraction * max(self.images_read, 1000):
            raise SystemExit(
                f"{self.images_skipped} of {self.images_read} images were unreadable "
                f"(> {self.max_bad_image_fraction:.1%}); check --data-dir {self.data_dir} "
                f"and the log for their paths"
            )

    def count_step(self, result: StepResult, logger, saver: Saver) -> None:
        if result.finite:
            self.nonfinite_in_a_row = 0
            return
        self.nonfinite_in_a_row += 1
        what = "loss" if not result.loss_finite else "update (the loss was finite)"
        logger.warning(
            "iteration %d: non-finite %s; the step was undone: weights, optimizer, teacher, centre "
            "and BN statistics are as before it (%d in a row)",
            self.iteration,
            what,
            self.nonfinite_in_a_row,
        )
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise SystemExit(
                f"{self.nonfinite_in_a_row} non-finite steps in a row at iteration {self.iteration}; "
                f"stopping. {saver.last_good_note()}"
            )


def readable_batches(loader: DataLoader, data_dir: str) -> Iterator[dict]:
    """The loader's batches; a sample for which nothing readable was found stops the run with one line."""
    try:
        yield from loader
    except DatasetError as e:  # from a worker, it carries the worker's traceback: keep its last line
        message = str(e).strip().splitlines()[-1].split("DatasetError: ", 1)[-1]
        raise SystemExit(f"--data-dir {data_dir}: {message}; are the files below it images?") from None


def train_one_epoch(
    trainer: Trainer,
    loader: DataLoader,
    augment: BatchAugment,
    epoch: int,
    state: LoopState,
    log: TrainLog,
    saver: Saver,
    preempted: PreemptionFlag,
) -> bool:
    """One epoch (from where a resume left off). Returns True if stopped by a preemption signal."""
    trainer.model.train()
    device = trainer.device
    for batch_index, batch in enumerate(readable_batches(loader, state.data_dir), start=loader.sampler.start_batch):
        augment.seed(state.iteration)
        crops = augment(batch["crops"])
        boxes = [b.to(device, non_blocking=True) for b in batch["boxes"]]
        flipped = [f.to(device, non_blocking=True) for f in batch["flipped"]]
        # Ranks must agree on stopping and saving (a save is a collective): the flags ride in the step's all-reduce.
        result = trainer.step(
            crops,
            boxes,
            flipped,
            state.iteration,
            host_counts=[float(preempted.raised), float(len(batch["skipped"])), float(saver.due())],
        )
        stop_signal, skipped, save_due = result.sums
        if batch["skipped"]:
            log.logger.warning("unreadable images skipped: %s", ", ".join(batch["skipped"]))
        state.count_images(int(skipped))
        state.count_step(result, log.logger, saver)
        state.iteration += 1
        log.step(epoch, batch_index, state.iteration - 1, result.losses)
        if stop_signal:
            return True
        if save_due:
            saver.save(epoch - 1, state.iteration)
    return False


class TrainLog:
    """Running means of the losses, written every ``--print-freq`` steps and at epoch ends to the log,
    ``metrics.jsonl`` (rank 0) and TensorBoard (when on)."""

    def __init__(
        self, args: argparse.Namespace, info: DistInfo, trainer: Trainer, iters_per_epoch: int, logger, writer
    ) -> None:
        self.logger, self.writer, self.trainer = logger, writer, trainer
        self.batch_size, self.epochs, self.print_freq = args.batch_size, args.epochs, args.print_freq
        self.iters_per_epoch = iters_per_epoch
        self.metrics_file = Path(args.output_dir) / "metrics.jsonl" if info.is_main else None
        self._reset()

    def _reset(self) -> None:
        self.sums = dict.fromkeys(("loss", "loss_group", "loss_slot", "active_slots"), 0.0)
        self.window_start, self.window_iters = time.time(), 0

    def step(self, epoch: int, batch_index: int, iteration: int, losses: dict[str, Tensor]) -> None:
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
        logger,
        resumed_from: Path | None,
    ) -> None:
        self.args, self.info, self.trainer, self.logger = args, info, trainer, logger
        self.iters_per_epoch = iters_per_epoch
        self.output = Path(args.output_dir)
        self.current = self.output / "current.pth"
        self.last_save = time.time()
        # The newest checkpoint known to be whole and finite: the one resumed from (checked by restore), then ours.
        self.last_good = None if resumed_from is None else f"{resumed_from} (the checkpoint this run resumed from)"

    def due(self) -> bool:
        minutes = self.args.save_every_minutes
        return minutes > 0 and time.time() - self.last_save >= minutes * 60

    def checkpoint(self, completed_epoch: int, iteration: int) -> dict:
        return {
            "args": {k: v for k, v in vars(self.args).items() if k not in FAULT_FLAGS},
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


def restore(path, trainer: Trainer, args: argparse.Namespace, iters_per_epoch: int, logger) -> tuple[int, int]:
    """Load model, optimizer and scaler from a checkpoint written by ``Saver``; returns (iteration, epochs done)."""
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as e:
        raise SystemExit(f"cannot resume: {e}") from None
    try:
        saved = checkpoint.get("args", {})
        for key in ("arch", "dim_hidden", "dim_out", "num_prototypes", "output_stride"):
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


def stop_on_io_error(logger, message: str) -> NoReturn:
    """Stop the run because its output cannot be written: one line, exit code EXIT_SAVE_FAILED (not requeued)."""
    logger.error(message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_SAVE_FAILED)


def make_writer(args, info: DistInfo):
    if not (args.tensorboard and info.is_main):
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(args.output_dir) / "tensorboard"))


def finish(writer) -> None:
    if writer is not None:
        writer.close()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(get_args_parser().parse_args())
