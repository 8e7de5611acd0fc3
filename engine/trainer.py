"""The training engine: SlotCon, its optimizer and schedules built from the command line's arguments, and
``Trainer.step``, the one code path that trains (forward, backward, optimizer, finiteness check and undo, teacher
average). ``main_pretrain.py`` drives it; ``bench.benchmark`` times it; the tests call it directly.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from models import SlotCon
from models.norm import convert_to_sync_batchnorm
from utils.distributed import DistInfo, sum_over_ranks
from utils.lars import LARS
from utils.schedules import cosine_schedule, teacher_momentum, warmup_cosine_lr


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
        drop_path_rate=args.drop_path,
        head_norm=args.head_norm,
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
        # No buffer broadcast in the forward pass: BN statistics and the centre are synchronised by the model itself
        # (the same on every rank). forward_sync_buffers replaces broadcast_buffers, which warns under torch 2.14.
        model = DistributedDataParallel(
            slotcon, device_ids=[info.device] if info.device.type == "cuda" else None, forward_sync_buffers=False
        )
    lr = scaled_lr(args)
    optimizer = build_optimizer(args, slotcon, lr)
    total = args.epochs * iters_per_epoch
    amp_dtype = (torch.float16 if args.amp_dtype == "float16" else torch.bfloat16) if args.fp16 else None
    return Trainer(
        model,
        slotcon,
        optimizer,
        scaler=torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16),
        lr_schedule=warmup_cosine_lr(lr, args.epochs, iters_per_epoch, args.warmup_epoch, args.warmup_multiplier),
        momentum_schedule=teacher_momentum(args.teacher_momentum, total),
        amp_dtype=amp_dtype,
        weight_decay_schedule=(
            None if args.weight_decay_end is None else cosine_schedule(args.weight_decay, args.weight_decay_end, total)
        ),
        clip_grad=args.clip_grad,
        seed=0 if args.seed is None else args.seed,
        rank=info.rank,
    )


def build_optimizer(args: argparse.Namespace, slotcon: SlotCon, lr: float) -> torch.optim.Optimizer:
    """``--optimizer``: LARS (the ResNet recipes: no decay or adaptation of 1-D tensors, inside LARS), SGD, or
    AdamW with DINO's two groups: weight decay on weights, none on biases and 1-D tensors (norms).

    A group with ``apply_weight_decay`` False keeps a weight decay of 0 under ``--weight-decay-end``'s schedule.
    """
    params = [p for p in slotcon.parameters() if p.requires_grad]
    if args.optimizer == "lars":
        return LARS(params, lr=lr, weight_decay=args.weight_decay, momentum=args.momentum)
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    named = [(n, p) for n, p in slotcon.named_parameters() if p.requires_grad]
    decayed = [p for n, p in named if p.ndim > 1 and not n.endswith(".bias")]
    plain = [p for n, p in named if not (p.ndim > 1 and not n.endswith(".bias"))]
    groups = [
        {"params": decayed, "weight_decay": args.weight_decay, "apply_weight_decay": True},
        {"params": plain, "weight_decay": 0.0, "apply_weight_decay": False},
    ]
    return torch.optim.AdamW(groups, lr=lr)


class StepSnapshot:
    """Copies of everything a training step changes before the teacher's average: the student's parameters, the
    optimizer's state, the model's buffers (centre, BatchNorm statistics). ``undo`` puts them back exactly.

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
    def undo(self) -> None:
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


@dataclass(frozen=True)
class StepCounts:
    """What the host knows about a step that every rank must agree on (a save and a stop are collectives): passed
    to ``Trainer.step`` per rank, returned summed over the ranks, in the step's one all-reduce."""

    preempted: int = 0  # ranks that received a preemption signal
    skipped_images: int = 0  # unreadable files met while making the batch
    save_due: int = 0  # ranks whose mid-epoch save timer ran out
    output_failed: int = 0  # ranks whose log, metrics.jsonl or TensorBoard could not be written

    def values(self) -> list[float]:
        return [float(getattr(self, f.name)) for f in fields(self)]

    @classmethod
    def from_values(cls, values: Sequence[float]) -> StepCounts:
        return cls(*(round(v) for v in values))


@dataclass
class StepResult:
    losses: dict[str, Tensor]  # the forward pass's outputs (device tensors, not synchronised)
    loss_finite: bool
    update_finite: bool
    counts: StepCounts  # the ``counts`` passed to ``step``, summed over ranks

    @property
    def finite(self) -> bool:
        return self.loss_finite and self.update_finite


class Trainer:
    """The networks, optimizer and schedules of a run, and ``step``: one training iteration, the one code path
    that trains (``bench.benchmark`` times this same step)."""

    def __init__(
        self,
        model: nn.Module,
        slotcon: SlotCon,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        lr_schedule: np.ndarray,
        momentum_schedule: np.ndarray,
        amp_dtype: torch.dtype | None,
        weight_decay_schedule: np.ndarray | None = None,
        clip_grad: float = 0.0,
        seed: int = 0,
        rank: int = 0,
    ) -> None:
        self.model = model  # what runs the forward pass: the DDP wrapper under torchrun
        self.slotcon = slotcon  # the bare model: teacher, centre, state_dict
        self.optimizer, self.scaler = optimizer, scaler
        self.lr_schedule, self.momentum_schedule = lr_schedule, momentum_schedule
        self.amp_dtype = amp_dtype
        self.weight_decay_schedule, self.clip_grad = weight_decay_schedule, clip_grad
        self.seed, self.rank = seed, rank
        self.device = slotcon.center.device
        self.snapshot = StepSnapshot(slotcon, optimizer)  # also the list of trained parameters

    def step(
        self,
        crops: list[Tensor],
        boxes: list[Tensor],
        flipped: list[Tensor],
        iteration: int,
        counts: StepCounts = StepCounts(),
    ) -> StepResult:
        """Forward, backward, optimizer step, then the teacher's average with the next iteration's momentum.

        A step whose loss, or whose update of any parameter, optimizer state tensor, centre or BatchNorm
        statistic, is not finite is undone (everything as before it; the teacher is not averaged). The finite
        flags and ``counts`` travel in one all-reduce, read with the step's one host sync.
        """
        lr = float(self.lr_schedule[iteration])  # Python floats: numpy ones would not load with weights_only
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if self.weight_decay_schedule is not None and group.get("apply_weight_decay", True):
                group["weight_decay"] = float(self.weight_decay_schedule[iteration])
        self.snapshot.take()
        # What the step draws from torch's generator (a ViT's stochastic depth) is a function of the iteration, so a
        # resumed run draws what an uninterrupted one would; each rank draws its own.
        torch.manual_seed(int(np.random.SeedSequence([self.seed, self.rank, iteration]).generate_state(1)[0]))
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with autocast:
            losses = self.model(crops, boxes, flipped)
        loss = losses["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)  # LARS' trust ratio and the clipping need the true gradients
        if self.clip_grad > 0:  # the global norm, on the device: no host sync
            torch.nn.utils.clip_grad_norm_(self.snapshot.params, self.clip_grad, foreach=True)
        self.scaler.step(self.optimizer)  # with fp16, skipped by the scaler itself on overflowing gradients
        self.scaler.update()

        flags = torch.stack([~torch.isfinite(loss.detach()), ~self.snapshot.live_is_finite()]).double()
        host = torch.tensor(counts.values(), dtype=torch.float64, pin_memory=self.device.type == "cuda")
        verdict = sum_over_ranks(torch.cat([flags, host.to(self.device, non_blocking=True)]))
        bad_loss, bad_update, *sums = verdict.tolist()  # the step's one host sync
        if bad_loss or bad_update:
            self.snapshot.undo()
        elif iteration + 1 < len(self.momentum_schedule):
            self.slotcon.update_teacher(float(self.momentum_schedule[iteration + 1]))
        return StepResult(losses, not bad_loss, not bad_update, StepCounts.from_values(sums))


class TooManyNonFiniteSteps(RuntimeError):
    """``--max-nonfinite-steps`` undone steps in a row; ``main`` adds which checkpoint to go back to."""


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

    def count_images(self, skipped: int) -> str:
        """``skipped``: unreadable files met while making this step's batch, over all ranks. Returns the message
        that stops the run once more than ``max_bad_image_fraction`` of the images read were unreadable, else ""."""
        self.images_read += self.batch_size + skipped
        self.images_skipped += skipped
        if self.images_skipped > self.max_bad_image_fraction * max(self.images_read, 1000):
            return (
                f"{self.images_skipped} of {self.images_read} images were unreadable "
                f"(> {self.max_bad_image_fraction:.1%}); check --data-dir {self.data_dir} "
                f"and the log for their paths"
            )
        return ""

    def count_step(self, result: StepResult, logger: logging.Logger) -> None:
        """Log an undone step; ``TooManyNonFiniteSteps`` after ``max_nonfinite_steps`` in a row."""
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
            raise TooManyNonFiniteSteps(
                f"{self.nonfinite_in_a_row} non-finite steps in a row at iteration {self.iteration}; stopping."
            )
