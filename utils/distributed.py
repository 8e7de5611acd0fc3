"""Process-group setup: torchrun (DDP, NCCL on GPU, gloo on CPU) or a plain single process; sums over ranks."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def parse_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a device this machine has; ``ValueError`` with one line otherwise.

    The one check of a ``--device`` flag, for training, the evaluations and the pictures alike.
    """
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", name)
    if match is None:
        raise ValueError(f"--device {name}: use cuda, cuda:N or cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available (use --device cpu)")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def init_distributed(device: str | None) -> DistInfo:
    """Join the torchrun process group if launched by torchrun, else run as one process.

    ``device``: "cuda", "cuda:N", "cpu" (checked by ``parse_device``), or None for CUDA when available. Under
    torchrun each process takes GPU ``LOCAL_RANK``; the backend is NCCL on GPU and gloo on CPU.
    """
    want_cuda = torch.cuda.is_available() if device is None else parse_device(device).type == "cuda"
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(0, 1, torch.device(device or ("cuda" if want_cuda else "cpu")))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if want_cuda:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    dist.init_process_group(
        "nccl" if want_cuda else "gloo",
        store=_store_for_this_attempt(rank, world),
        rank=rank,
        world_size=world,
        **({"device_id": dev} if want_cuda else {}),
    )
    return DistInfo(rank, world, dev)


def _store_for_this_attempt(rank: int, world: int) -> dist.Store:
    """The rendezvous store, with keys private to this torchrun restart attempt.

    After ``--max-restarts`` restarts a worker, the peers' old addresses are still in torchrun's store; a
    fast new worker could read one and fail to connect to a dead process. A per-attempt prefix avoids it.
    """
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun hosts the store
    store = dist.TCPStore(
        os.environ.get("MASTER_ADDR", "127.0.0.1"),
        int(os.environ["MASTER_PORT"]),
        world,
        is_master=rank == 0 and not agent_store,
    )
    return dist.PrefixStore(f"slotcon/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def process_group_active() -> bool:
    """Whether this process is one of a running process group (torchrun), the one test every module uses."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes: (0, 1) without a process group."""
    return (dist.get_rank(), dist.get_world_size()) if process_group_active() else (0, 1)


def all_gather_cat(x: Tensor) -> Tensor:
    """``x`` of every rank concatenated along dim 0, in rank order, without gradient (``x`` itself alone)."""
    world = rank_and_world()[1]
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def sum_over_ranks(x: Tensor) -> Tensor:
    """The elementwise sum of ``x`` over all ranks, in place and without gradient (``x`` without a process group)."""
    if rank_and_world()[1] > 1:
        dist.all_reduce(x)
    return x


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (``flag`` itself without a process group). A collective."""
    return bool(sum_over_ranks(torch.tensor([float(flag)], device=device)).item())


class _SumOverRanks(torch.autograd.Function):
    """y = sum over ranks of x, the same on every rank. Every rank's loss depends on y, so the gradient of the
    total loss with respect to one rank's x is the sum over ranks of their gradients with respect to y."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def differentiable_sum_over_ranks(x: Tensor) -> Tensor:
    """The elementwise sum of ``x`` over all ranks as a new tensor whose gradient flows back to every rank's
    ``x`` (``x`` itself without a process group).

    Public collectives inside an autograd Function: ``torch.distributed.nn.functional.all_reduce``, which did the
    same, prints a FutureWarning on every call under torch 2.14."""
    if rank_and_world()[1] > 1:
        return _SumOverRanks.apply(x)
    return x


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), where bfloat16 autocast speeds up
    convolutions (1.67x the float32 step of the demo's backbone on such a CPU, BENCHMARKS.md); elsewhere it is
    emulated and may be slower than float32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's checks, private but stable
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
