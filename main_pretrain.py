"""SlotCon pretraining: ``python main_pretrain.py ...`` on CPU or one GPU, ``torchrun --nproc_per_node=N
main_pretrain.py ...`` for DDP. Reads top to bottom: arguments, build, train_one_epoch, save.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from data.datasets import DATASETS, DatasetError, TwoViewDataset, collate_two_views, list_images
from data.photometric import BatchAugment
from data.sampler import ResumableSampler
from data.transforms import TwoViewCrop
from eval.monitor import Monitor
from models import ARCHS, OUTPUT_STRIDES, SlotCon
from models.norm import convert_to_sync_batchnorm
from utils.checkpoint import CheckpointError, load_checkpoint, model_state_dict, save_atomic
from utils.distributed import DistInfo, all_reduce_sum, init_distributed
from utils.lars import LARS
from utils.logger import setup_logger
from utils.schedules import teacher_momentum, warmup_cosine_lr

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on SIGTERM/SIGUSR1 after saving; requeue the job to continue


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("SlotCon pretraining", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("dataset")
    g.add_argument("--dataset", default="COCO", choices=DATASETS)
    g.add_argument("--data-dir", default="./datasets/coco", help="dataset root (layout depends on --dataset)")
    g.add_argument("--image-size", type=int, default=224, help="crop size; a multiple of --output-stride")
    g.add_argument("--min-scale", type=float, default=0.08, help="smallest crop area fraction")

    g = p.add_argument_group("model")
    g.add_argument("--arch", default="resnet50", choices=ARCHS)
    g.add_argument("--output-stride", type=int, default=32, choices=OUTPUT_STRIDES,
                   help="C5 stride: 16 or 8 dilate the last stages (same weights, 2x or 4x finer maps)")
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
    g.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA, off on CPU)")
    g.add_argument("--amp-dtype", default="bfloat16", choices=["float16", "bfloat16"],
                   help="autocast dtype with --fp16; float16 adds a GradScaler as the reference does")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the backbones, projectors and (on a GPU) the photometric augmentation")
    g.add_argument("--pack-slot-queries", action="store_true",
                   help="run the slot predictor on the valid slots only: same loss, fewer FLOPs, one host sync")
    g.add_argument("--start-epoch", type=int, default=1)
    g.add_argument("--epochs", type=int, default=800)

    g = p.add_argument_group("misc")
    g.add_argument("--output-dir", default="./output")
    g.add_argument("--auto-resume", action="store_true", help="resume from OUTPUT_DIR/current.pth if it exists")
    g.add_argument("--resume", default="", help="checkpoint to resume from")
    g.add_argument("--print-freq", type=int, default=10)
    g.add_argument("--save-freq", type=int, default=50, help="keep ckpt_epoch_E.pth every this many epochs")
    g.add_argument("--save-every-minutes", type=float, default=5.0,
                   help="also refresh current.pth mid-epoch this often (0: only at epoch ends)")
    g.add_argument("--keep-last", type=int, default=0, help="keep only the newest N epoch checkpoints (0: all)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--num-workers", type=int, default=8, help="data loading processes per GPU")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--max-bad-image-fraction", type=float, default=0.01,
                   help="stop when more than this fraction of images read so far was unreadable")
    g.add_argument("--max-nonfinite-steps", type=int, default=10,
                   help="stop after this many consecutive non-finite losses")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--tb-image-freq", type=int, default=1,
                   help="log the teacher's prototype maps of 8 fixed images every N epochs (0: never)")
    g.add_argument("--eval-data", default=None, help="demo scenes root: score unsupervised segmentation online")
    g.add_argument("--eval-freq", type=int, default=5, help="with --eval-data, evaluate every N epochs")
    g.add_argument("--inject-nan-at", type=int, nargs="*", default=[], help=argparse.SUPPRESS)  # fault tests
    return p


def check_args(args: argparse.Namespace, world_size: int) -> None:
    """Reject bad flags with one line each, before any work starts."""
    if args.batch_size % world_size:
        raise SystemExit(f"--batch-size {args.batch_size} is not divisible by the {world_size} processes")
    if args.image_size % args.output_stride or args.image_size < 32:
        raise SystemExit(f"--image-size {args.image_size} must be a multiple of --output-stride {args.output_stride} "
                         "and at least 32")
    if not 0 < args.min_scale <= 1:
        raise SystemExit(f"--min-scale {args.min_scale} must be in (0, 1]")
    if args.epochs < 1 or args.warmup_epoch < 0:
        raise SystemExit("--epochs must be >= 1 and --warmup-epoch >= 0 (a warm-up longer than the run is cut short)")
    if args.resume and not Path(args.resume).is_file():
        raise SystemExit(f"--resume {args.resume}: no such file")
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


def main(args: argparse.Namespace) -> None:
    info = init_distributed(args.device)
    check_args(args, info.world_size)
    logger = setup_logger(args.output_dir, info.rank)
    device = info.device
    args.fp16 = device.type == "cuda" if args.fp16 is None else args.fp16
    args.world_size = info.world_size
    args.batch_size_per_gpu = args.batch_size // info.world_size
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
    dataset = TwoViewDataset(files, TwoViewCrop(args.image_size, args.min_scale))
    loader = DataLoader(dataset, batch_size=args.batch_size_per_gpu, sampler=sampler, drop_last=True,
                        num_workers=args.num_workers, pin_memory=device.type == "cuda",
                        collate_fn=collate_two_views, persistent_workers=args.num_workers > 0)
    augment = BatchAugment(device, seed, compile=args.compile)
    iters_per_epoch = sampler.batches_per_epoch
    total_iters = iters_per_epoch * args.epochs
    args.num_instances = len(files)

    # ---- model, optimizer, schedules
    model = SlotCon(arch=args.arch, dim_hidden=args.dim_hidden, dim_out=args.dim_out,
                    num_prototypes=args.num_prototypes, teacher_temp=args.teacher_temp,
                    student_temp=args.student_temp, center_momentum=args.center_momentum,
                    group_loss_weight=args.group_loss_weight, pack_slot_queries=args.pack_slot_queries,
                    output_stride=args.output_stride).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.compile_networks()
    if info.distributed:
        model = convert_to_sync_batchnorm(model, use_torch_sync=device.type == "cuda")
    bare_model = model
    if info.distributed:
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                        broadcast_buffers=False)
    lr = args.base_lr * args.batch_size / 256
    params = [p for p in bare_model.parameters() if p.requires_grad]
    if args.optimizer == "lars":
        optimizer = LARS(params, lr=lr, weight_decay=args.weight_decay, momentum=args.momentum)
    else:
        optimizer = torch.optim.SGD(params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    lr_schedule = warmup_cosine_lr(lr, args.epochs, iters_per_epoch, args.warmup_epoch, args.warmup_multiplier)
    momentum_schedule = teacher_momentum(args.teacher_momentum, total_iters)
    amp_dtype = torch.float16 if args.amp_dtype == "float16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=args.fp16 and amp_dtype == torch.float16)

    # ---- resume
    progress = {"iteration": (args.start_epoch - 1) * iters_per_epoch, "epoch": args.start_epoch - 1}
    resume_path = args.resume or (Path(args.output_dir) / "current.pth" if args.auto_resume else None)
    if resume_path and Path(resume_path).is_file():
        progress = restore(resume_path, bare_model, optimizer, scaler, args, logger)
    elif args.auto_resume:
        logger.info("no checkpoint in %s: starting from scratch", args.output_dir)
    if info.distributed:
        # Every rank must have read current.pth before rank 0 may overwrite it, or ranks resume out of step.
        dist.barrier()

    if info.is_main:
        logger.info("args: %s", json.dumps(vars(args), sort_keys=True))
        logger.info("%d images, %d iterations per epoch, %d in total; lr %.4g", len(files), iters_per_epoch,
                    total_iters, lr)
        (Path(args.output_dir) / "config.json").write_text(json.dumps(vars(args), indent=2, sort_keys=True))
    writer = make_writer(args, info)
    monitor = None
    if info.is_main:  # pictures need TensorBoard; the online evaluation runs without it and goes to the log
        try:
            monitor = Monitor(writer, files, args.image_size, device, args.tb_image_freq, args.eval_data,
                              args.eval_freq)
        except ValueError as e:  # --eval-data that holds no readable demo scenes
            raise SystemExit(f"--eval-data: {e}") from None
    saver = Saver(args, info, bare_model, optimizer, scaler, logger)
    preempted = PreemptionFlag()
    state = TrainState(iteration=progress["iteration"])

    start_epoch = progress["epoch"] + 1
    if start_epoch > args.epochs and info.is_main:
        logger.info("the checkpoint has finished all %d epochs: nothing to train (raise --epochs to continue, "
                    "or use a new --output-dir to start over)", args.epochs)
    for epoch in range(start_epoch, args.epochs + 1):
        start_batch = state.iteration - (epoch - 1) * iters_per_epoch
        sampler.set_epoch(epoch, start_batch=start_batch)
        stopped = train_one_epoch(model, bare_model, loader, augment, optimizer, scaler, lr_schedule,
                                  momentum_schedule, epoch, iters_per_epoch, start_batch, amp_dtype, args, info,
                                  logger, writer, saver, preempted, state)
        if stopped:
            saver.save(epoch - 1, state.iteration)
            logger.info("preempted: saved %s at iteration %d; exiting with code %d",
                        saver.current, state.iteration, EXIT_PREEMPTED)
            finish(writer)
            sys.exit(EXIT_PREEMPTED)
        saver.save(epoch, state.iteration, keep_epoch_file=epoch % args.save_freq == 0 or epoch == args.epochs)
        if monitor is not None:
            scores = monitor.on_epoch_end(bare_model, epoch, state.iteration)
            if scores:
                logger.info("eval after epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    finish(writer)
    if info.is_main:
        logger.info("training done: %d epochs, checkpoints in %s", args.epochs, args.output_dir)


class TrainState:
    """What the loop carries from step to step."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration
        self.nonfinite_in_a_row = 0
        self.images_read = 0
        self.images_skipped = 0


def train_one_epoch(model, bare_model: SlotCon, loader, augment: BatchAugment, optimizer, scaler,
                    lr_schedule: np.ndarray, momentum_schedule: np.ndarray, epoch: int, iters_per_epoch: int,
                    start_batch: int, amp_dtype: torch.dtype, args: argparse.Namespace, info: DistInfo, logger,
                    writer, saver: Saver, preempted: PreemptionFlag, state: TrainState) -> bool:
    """One epoch (from ``start_batch`` on a resume). Returns True if stopped by a preemption signal."""
    model.train()
    device = info.device
    autocast = torch.autocast(device.type, dtype=amp_dtype) if args.fp16 else nullcontext()
    meters = {k: 0.0 for k in ("loss", "loss_group", "loss_slot", "active_slots")}
    window_start, window_iters = time.time(), 0
    for batch_index, batch in enumerate(loader, start=start_batch):
        it = state.iteration
        for group in optimizer.param_groups:
            group["lr"] = float(lr_schedule[it])  # a numpy float would not load with weights_only
        augment.seed(it)
        crops = augment(batch["crops"])
        boxes = [b.to(device, non_blocking=True) for b in batch["boxes"]]
        flipped = [f.to(device, non_blocking=True) for f in batch["flipped"]]

        center_before = bare_model.center.clone()  # restored if this step turns out non-finite
        with autocast:
            out = model(crops, boxes, flipped)
        loss = out["loss"]
        if it in args.inject_nan_at:
            loss = loss * float("nan")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()

        # One small all-reduce per step: every rank must agree to skip, stop or keep going.
        nonfinite, stop_signal, skipped = all_reduce_sum(
            [float(not torch.isfinite(loss.detach()).item()), float(preempted.raised), float(len(batch["skipped"]))],
            device)
        state.images_read += args.batch_size + int(skipped)
        state.images_skipped += int(skipped)
        if batch["skipped"]:
            logger.warning("unreadable images skipped: %s", ", ".join(batch["skipped"]))
        if state.images_skipped > args.max_bad_image_fraction * max(state.images_read, 1000):
            raise SystemExit(f"{state.images_skipped} of {state.images_read} images were unreadable "
                             f"(> {args.max_bad_image_fraction:.1%}); check --data-dir {args.data_dir} "
                             f"and the log for their paths")
        if nonfinite:
            bare_model.center.copy_(center_before)
            state.nonfinite_in_a_row += 1
            logger.warning("iteration %d: non-finite loss; skipped the optimizer, EMA and centre updates (%d in a row)",
                           it, state.nonfinite_in_a_row)
            if state.nonfinite_in_a_row >= args.max_nonfinite_steps:
                raise SystemExit(f"{state.nonfinite_in_a_row} non-finite losses in a row at iteration {it}; "
                                 f"stopping. The last good checkpoint is {saver.current}")
        else:
            state.nonfinite_in_a_row = 0
            if scaler.is_enabled():
                scaler.unscale_(optimizer)  # LARS' trust ratio needs the true gradient norm
            scaler.step(optimizer)
            scaler.update()
            if it + 1 < len(momentum_schedule):
                bare_model.update_teacher(float(momentum_schedule[it + 1]))
        state.iteration += 1
        window_iters += 1

        for k in meters:
            meters[k] += out[k].detach().float()
        if (batch_index + 1) % args.print_freq == 0 or batch_index + 1 == iters_per_epoch:
            elapsed = time.time() - window_start
            values = {k: float(v) / window_iters for k, v in meters.items()}
            imgs_per_s = window_iters * args.batch_size / max(elapsed, 1e-9)
            eta = (len(lr_schedule) - state.iteration) * elapsed / window_iters
            memory_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
            logger.info("Train: [%d/%d][%d/%d] eta %s lr %.6f momentum %.6f loss %.4f (group %.4f slot %.4f) "
                        "active %.1f img/s %.1f mem %.1fG", epoch, args.epochs, batch_index + 1, iters_per_epoch,
                        datetime.timedelta(seconds=int(eta)), lr_schedule[it], momentum_schedule[it],
                        values["loss"], values["loss_group"], values["loss_slot"], values["active_slots"],
                        imgs_per_s, memory_gib)
            if info.is_main:
                record = {"iteration": it, "epoch": epoch, "lr": float(lr_schedule[it]),
                          "momentum": float(momentum_schedule[it]), "img_per_s": imgs_per_s,
                          "max_memory_gib": memory_gib, **values}
                with open(Path(args.output_dir) / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
            if writer is not None:
                for k, v in values.items():
                    writer.add_scalar(f"train/{k}", v, it)
                writer.add_scalar("train/lr", lr_schedule[it], it)
                writer.add_scalar("train/teacher_momentum", momentum_schedule[it], it)
                writer.add_scalar("train/img_per_s", imgs_per_s, it)
            meters = dict.fromkeys(meters, 0.0)
            window_start, window_iters = time.time(), 0

        if stop_signal:
            return True
        if saver.due():
            saver.save(epoch - 1, state.iteration)
    return False


class Saver:
    """Writes ``current.pth`` (atomically) at epoch ends and every ``--save-every-minutes``, and
    ``ckpt_epoch_E.pth`` every ``--save-freq`` epochs, keeping the newest ``--keep-last``."""

    def __init__(self, args, info: DistInfo, model: SlotCon, optimizer, scaler, logger) -> None:
        self.args, self.info, self.model, self.optimizer, self.scaler, self.logger = (
            args, info, model, optimizer, scaler, logger)
        self.output = Path(args.output_dir)
        self.current = self.output / "current.pth"
        self.last_save = time.time()
        if info.is_main:  # a process killed while saving leaves its temp file behind; the target is intact
            for stale in self.output.glob(".*.pth.*.tmp"):
                stale.unlink(missing_ok=True)

    def due(self) -> bool:
        minutes = self.args.save_every_minutes
        return minutes > 0 and time.time() - self.last_save >= minutes * 60

    def save(self, completed_epoch: int, iteration: int, keep_epoch_file: bool = False) -> None:
        self.last_save = time.time()
        if not self.info.is_main:
            return
        checkpoint = {
            "args": {k: v for k, v in vars(self.args).items() if k != "inject_nan_at"},
            # "module." prefix as the reference's DDP checkpoints, whatever the world size.
            "model": {f"module.{k}": v for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"iteration": iteration},
            "epoch": completed_epoch,
            "scaler": self.scaler.state_dict(),
        }
        save_atomic(checkpoint, self.current)
        if keep_epoch_file:
            epoch_file = self.output / f"ckpt_epoch_{completed_epoch}.pth"
            save_atomic(checkpoint, epoch_file)
            self.logger.info("saved %s", epoch_file)
            self._prune()

    def _prune(self) -> None:
        if self.args.keep_last <= 0:
            return
        files = sorted(self.output.glob("ckpt_epoch_*.pth"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
        for old in files[: -self.args.keep_last]:
            old.unlink(missing_ok=True)


def restore(path, model: SlotCon, optimizer, scaler, args, logger) -> dict:
    """Load model, optimizer, scaler and progress from a checkpoint written by ``Saver``."""
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as e:
        raise SystemExit(f"cannot resume: {e}") from None
    try:
        saved = checkpoint.get("args", {})
        for key in ("arch", "dim_hidden", "dim_out", "num_prototypes", "output_stride"):
            if key in saved and saved[key] != getattr(args, key):
                raise CheckpointError(f"it was trained with --{key.replace('_', '-')} {saved[key]}, "
                                      f"this run has {getattr(args, key)}")
        missing, unexpected = model.load_state_dict(model_state_dict(checkpoint), strict=False)
        if missing or unexpected:
            raise CheckpointError(f"weights do not match the model ({len(missing)} missing, "
                                  f"{len(unexpected)} unexpected keys, e.g. {(missing + unexpected)[0]})")
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        iteration = int(checkpoint["scheduler"]["iteration"])
    except (CheckpointError, KeyError, ValueError, RuntimeError) as e:
        raise SystemExit(f"cannot resume from {path}: {str(e).splitlines()[0]}") from None
    logger.info("resumed from %s: %d epochs done, continuing at iteration %d", path, checkpoint["epoch"], iteration)
    return {"iteration": iteration, "epoch": int(checkpoint["epoch"])}


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
