"""Process-group setup: torchrun (DDP, NCCL on GPU, gloo on CPU) or a plain single process; sums over ranks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
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


def init_distributed(device: str | None) -> DistInfo:
    """Join the torchrun process group if launched by torchrun, else run as one process.

    ``device``: "cuda", "cuda:N", "cpu", or None for CUDA when available. Under torchrun each process takes
    GPU ``LOCAL_RANK``; the backend is NCCL on GPU and gloo on CPU.
    """
    want_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu)")
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


def _process_group_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_over_ranks(x: Tensor) -> Tensor:
    """The elementwise sum of ``x`` over all ranks, in place and without gradient (``x`` without a process group)."""
    if _process_group_size() > 1:
        dist.all_reduce(x)
    return x


def differentiable_sum_over_ranks(x: Tensor) -> Tensor:
    """The elementwise sum of ``x`` over all ranks as a new tensor whose gradient flows back to every rank's
    ``x`` (``x`` itself without a process group)."""
    if _process_group_size() > 1:
        return dist_fn.all_reduce(x)
    return x


def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), where bfloat16 autocast speeds up
    convolutions (1.67x the float32 step of the demo's backbone on such a CPU, BENCHMARKS.md); elsewhere it is
    emulated and may be slower than float32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's checks, private but stable
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
