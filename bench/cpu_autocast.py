"""The demo's backbone step on the CPU in float32 and in bfloat16 autocast, timed alternately in one process.

A ResNet-18 trunk at ``--output-stride 8`` (the demo's), forward + backward + SGD on ``--batch-size`` crops of
``--image-size`` px. The two precisions alternate round by round, so both see the same machine and load; the
result is bfloat16's speed-up over float32 (the number `scripts/demo.sh` relies on when it turns bfloat16 on for
CPUs that compute it natively), one JSON line per thread count::

    python bench/cpu_autocast.py --threads 1 2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.resnet import build_backbone
from utils.distributed import cpu_has_native_bfloat16


def time_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, crops: torch.Tensor, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
        loss = model(crops).float().square().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--batch-size", type=int, default=32, help="crops per step (the demo: 16 images x 2 views)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of one step per precision")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_backbone("resnet18", output_stride=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    crops = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    for threads in args.threads:
        torch.set_num_threads(threads)
        for bf16 in (False, True):  # warm-up: oneDNN picks its kernels on the first steps
            time_step(model, optimizer, crops, bf16)
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for bf16 in (False, True):
                times[bf16].append(time_step(model, optimizer, crops, bf16))
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        print(
            json.dumps(
                {
                    "threads": threads,
                    "batch_size": args.batch_size,
                    "image_size": args.image_size,
                    "float32_s_per_step": round(fp32, 4),
                    "bfloat16_s_per_step": round(bf16, 4),
                    "bfloat16_speedup": round(fp32 / bf16, 2),
                    "native_bf16": cpu_has_native_bfloat16(),
                    "cpu": platform.processor() or platform.machine(),
                    "torch": torch.__version__,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
