"""SlotCon pretraining: ``python main_pretrain.py ...`` on CPU or one GPU, ``torchrun --nproc_per_node=N
main_pretrain.py ...`` for DDP. Reads top to bottom: arguments and their checks, ``main``, ``train_one_epoch``.
The engine it drives (the model, the step, checkpoints, the log) is the ``engine`` package.
"""

from __future__ import annotations

# First, before numpy and torch take seconds to import: from here on a preemption signal (SIGTERM, SIGUSR1, Ctrl-C)
# is kept and acted on at the first step, instead of its default action killing the job unsaved (README).
from utils.preemption import EXIT_PREEMPTED, PREEMPTION, loader_worker_init  # isort: skip

if __name__ == "__main__":
    PREEMPTION.install()

import argparse
import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from data.datasets import DATASETS, DatasetError, TwoViewDataset, collate_two_views, count_by_folder, list_images
from data.photometric import BatchAugment
from data.sampler import ResumableSampler
from data.transforms import TwoViewCrop
from engine.checkpointing import (
    Saver,
    Stop,
    choose_checkpoint,
    resume_from_checkpoint,
    stop_after_saving,
    stop_on_io_error,
)
from engine.train_log import TrainLog, make_writer, rewind_metrics
from engine.trainer import (
    LoopState,
    StepCounts,
    TooManyNonFiniteSteps,
    Trainer,
    build_trainer,
    fill_device_defaults,
    scaled_lr,
)
from eval.monitor import Monitor
from models.backbones import ARCHS, backbone_spec, resolve_output_stride
from models.heads import HEAD_NORMS
from utils.atomic import OutputWriteError, write_text_atomic
from utils.checkpoint import EXIT_SAVE_FAILED
from utils.distributed import any_rank, init_distributed, parse_device, process_group_active
from utils.logger import setup_logger
from utils.process import exit_with_code_of
from utils.run_lock import RunLockError, hold_output_dir


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("SlotCon pretraining", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", default="COCO", choices=DATASETS)
    g.add_argument("--data-dir", default="./datasets/coco", help="dataset root (layout depends on --dataset)")
    g.add_argument("--image-size", type=int, default=224, help="crop size; a multiple of the output stride")
    g.add_argument("--min-scale", type=float, default=0.08, help="smallest crop area fraction")

    g = p.add_argument_group("model")
    g.add_argument("--arch", default="resnet50", choices=ARCHS)
    g.add_argument(
        "--output-stride",
        type=int,
        default=None,
        help="stride of the dense map (default: the arch's; ResNets: 32, or 16 / 8 dilating the last stages, same "
        "weights, 2x or 4x finer maps)",
    )
    g.add_argument(
        "--head-norm",
        default=None,
        choices=HEAD_NORMS,
        help="the heads' hidden blocks: bn (Linear-BN-GELU, the reference) or none (Linear-GELU); default: the "
        "arch's (bn for ResNets, none for ViTs, as DINO and SlotMIM)",
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
    g.add_argument(
        "--optimizer",
        default="sgd",
        choices=["sgd", "lars", "adamw"],
        help="lars: the ResNet recipes; adamw: the ViT recipes (no weight decay on norms and biases, as DINO)",
    )
    g.add_argument("--warmup-epoch", type=int, default=5)
    g.add_argument("--warmup-multiplier", type=int, default=100, help="warm-up starts at lr / this")
    g.add_argument("--weight-decay", type=float, default=1e-5)
    g.add_argument(
        "--weight-decay-end",
        type=float,
        default=None,
        help="cosine schedule of the weight decay from --weight-decay to this (default: constant)",
    )
    g.add_argument(
        "--clip-grad", type=float, default=0.0, help="clip the gradients' global norm to this (0: no clipping)"
    )
    g.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth of the student's ViT blocks")
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
    (
        ("weight_decay", "save_every_minutes", "clip_grad"),
        lambda v: math.isfinite(v) and v >= 0,
        "a finite number >= 0",
    ),
    (("weight_decay_end",), lambda v: v is None or (math.isfinite(v) and v >= 0), "a finite number >= 0"),
    (("drop_path",), lambda v: 0 <= v < 1, "in [0, 1)"),
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
    if args.drop_path and not backbone_spec(args.arch).drop_path:
        problems.append(f"--drop-path {args.drop_path}: --arch {args.arch} has no stochastic depth")
    try:
        stride = resolve_output_stride(args.arch, args.output_stride)
        if args.image_size % stride or args.image_size < 32:
            problems.append(
                f"--image-size {args.image_size} must be a multiple of --output-stride {stride} and at least 32"
            )
    except ValueError as e:
        problems.append(str(e))
    if math.isfinite(args.base_lr) and not scaled_lr(args) < torch.finfo(torch.float32).max:
        problems.append(f"--base-lr {args.base_lr}: the learning rate for batch {args.batch_size} overflows float32")
    if args.device is not None:
        try:
            parse_device(args.device)
        except ValueError as e:
            problems.append(str(e))
    if args.resume and not Path(args.resume).is_file():
        problems.append(f"--resume {args.resume}: no such file")
    if args.eval_data and not Path(args.eval_data).is_dir():
        problems.append(f"--eval-data {args.eval_data}: no such directory")
    return problems


def check_args(args: argparse.Namespace, world_size: int) -> None:
    """Reject bad flags with one line each, before any work starts."""
    problems = flag_problems(args, world_size)
    if problems:
        raise SystemExit("\n".join(problems))
    fill_arch_defaults(args)
    output = Path(args.output_dir)
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / f".write_test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"--output-dir {output}: not writable ({e.strerror})") from None


def fill_arch_defaults(args: argparse.Namespace) -> None:
    """The defaults that depend on ``--arch``, written into ``args`` (and so into config.json and checkpoints,
    which eval and viz read): the output stride and the heads' norm."""
    args.output_stride = resolve_output_stride(args.arch, args.output_stride)
    args.head_norm = args.head_norm or backbone_spec(args.arch).head_norm


def main(args: argparse.Namespace) -> None:
    PREEMPTION.install()  # again when main is called without the __main__ block above (tests/faults.py)
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
        worker_init_fn=loader_worker_init,
    )
    augment = BatchAugment(device, seed, compile=args.compile)
    iters_per_epoch = sampler.batches_per_epoch

    # ---- model, optimizer, schedules
    trainer = build_trainer(args, info, iters_per_epoch)

    # ---- resume
    iteration, completed_epochs = (args.start_epoch - 1) * iters_per_epoch, args.start_epoch - 1
    first_logged = iteration  # metrics.jsonl records from here on belong to what this run (re)does
    resume_path, why = choose_checkpoint(args.resume, args.auto_resume, args.output_dir)
    resumed = None
    if resume_path is not None:
        if why and info.is_main:
            logger.info("%s", why)
        resumed = resume_from_checkpoint(resume_path, trainer, args, iters_per_epoch, logger)
        iteration, completed_epochs = resumed.iteration, resumed.completed_epochs
        first_logged = min(resumed.iteration, resumed.saved_iteration)
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
        if args.dataset == "folder":
            counts = count_by_folder(files, args.data_dir)
            logger.info("images per top-level folder: %s", ", ".join(f"{name} {n}" for name, n in counts.items()))
        try:
            write_text_atomic(Path(args.output_dir) / "config.json", json.dumps(vars(args), indent=2, sort_keys=True))
            moved = rewind_metrics(Path(args.output_dir) / "metrics.jsonl", first_logged)
        except OutputWriteError as e:
            stop_on_io_error(logger, str(e))
        if moved:
            logger.info(
                "metrics.jsonl: moved %d records of iterations from %d on to metrics.discarded.jsonl (logged after "
                "the checkpoint, by a run that stopped before its next save; they are redone now)",
                moved,
                first_logged,
            )
    writer = make_writer(args, info, first_logged)
    monitor = None
    if info.is_main:  # pictures need TensorBoard; the online evaluation runs without it and goes to the log
        try:
            monitor = Monitor(
                writer, files, args.image_size, device, args.tb_image_freq, args.eval_data, args.eval_freq
            )
        except ValueError as e:  # --eval-data that holds no readable demo scenes
            raise SystemExit(f"--eval-data: {e}") from None
    saver = Saver(args, info, trainer, iters_per_epoch, logger, None if resumed is None else resumed.path)
    if run_lock is not None and run_lock.held:  # a save killed midway leaves its temp file; the target is intact
        run_lock.remove_stale(".*.pth.*.tmp")
    if resumed is not None and resumed.path.resolve() == saver.current.resolve():
        saver.restore_promised_epoch_file(resumed)
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
        try:
            stop = train_one_epoch(trainer, loader, augment, epoch, state, log, saver)
        except TooManyNonFiniteSteps as e:
            raise SystemExit(f"{e} {saver.last_good_note()}") from None
        if stop is not None:
            stop_after_saving(stop, saver, epoch - 1, state.iteration, logger)
        saver.save(epoch, state.iteration, keep_epoch_file=epoch % args.save_freq == 0 or epoch == args.epochs)
        if monitor is not None:
            scores = monitor.on_epoch_end(trainer.slotcon, epoch, state.iteration)
            if scores:
                logger.info("eval after epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if writer is not None:
            writer.flush()  # a failure in TensorBoard's own thread shows here at the latest
        # The epoch's last lines and pictures: a failure there would otherwise wait for the next step (or be lost).
        failure = log.failure()
        if any_rank(bool(failure), device):
            stop_on_io_error(logger, f"{failure or OTHER_RANK_FAILED}; {saver.last_good_note()}")
    if writer is not None:
        writer.close()
        if writer.failure:
            stop_on_io_error(logger, f"{writer.failure}; {saver.last_good_note()}")
    if process_group_active():
        dist.destroy_process_group()
    if info.is_main:
        logger.info("training done: %d epochs, checkpoints in %s", args.epochs, args.output_dir)


OTHER_RANK_FAILED = "another process could not write its log (its log.txt.rankN or the console say why)"


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
) -> Stop | None:
    """One epoch (from where a resume left off). Returns why it stopped early, if it did."""
    trainer.model.train()
    device = trainer.device
    for batch_index, batch in enumerate(readable_batches(loader, state.data_dir), start=loader.sampler.start_batch):
        augment.seed(state.iteration)
        crops = augment(batch["crops"])
        boxes = [b.to(device, non_blocking=True) for b in batch["boxes"]]
        flipped = [f.to(device, non_blocking=True) for f in batch["flipped"]]
        # Ranks must agree on stopping and saving (a save is a collective): the counts ride in the step's all-reduce.
        failure = log.failure()
        counts = StepCounts(int(PREEMPTION.raised), len(batch["skipped"]), int(saver.due()), int(bool(failure)))
        result = trainer.step(crops, boxes, flipped, state.iteration, counts)
        if batch["skipped"]:
            log.logger.warning("unreadable images skipped: %s", ", ".join(batch["skipped"]))
        too_many_unreadable = state.count_images(result.counts.skipped_images)
        state.count_step(result, log.logger)
        state.iteration += 1
        log.record(epoch, batch_index, state.iteration - 1, result.losses)
        if result.counts.output_failed:  # a full disk stays full: not a requeue (75) but 74, as a failed save
            return Stop(EXIT_SAVE_FAILED, failure or OTHER_RANK_FAILED)
        if too_many_unreadable:
            return Stop(1, too_many_unreadable)
        if result.counts.preempted:
            return Stop(EXIT_PREEMPTED)
        if result.counts.save_due:
            saver.save(epoch - 1, state.iteration)
    return None


if __name__ == "__main__":
    exit_with_code_of(main, get_args_parser().parse_args())
