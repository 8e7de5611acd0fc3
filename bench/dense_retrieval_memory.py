"""Peak memory of eval.dense_retrieval's search at a demo-size and a VOC-size memory bank, one JSON line each.

Each measurement runs in a fresh process: it fills a bank of N random unit vectors (``--dim``) with random label
distributions (``--num-classes``), then resets the process's peak resident memory (``/proc/self/clear_refs``,
Linux) and labels ``--queries`` random queries exactly as the evaluation does (``make_searcher`` + ``retrieve``:
k-NN search and softmax vote). Reported: the bank's own size, the resident memory before the search, the peak
during it, and their difference, the memory the search itself takes. ``blockwise`` is the evaluation's exact
search (query_chunk x bank_chunk similarities at a time); ``full`` forms the whole [queries, N] similarity matrix
at once, the unchunked search, and runs only where that matrix is under ``--full-limit-gib``.

VOC size: the protocol's bank budget is 10,240,000 patches; at 512 px a stride-32 ResNet gives 16 x 16 = 256
patches per image, so the 10,582 trainaug images fill at most 2,708,992, all of which it keeps::

    python -m bench.dense_retrieval_memory --bank-sizes 10240 2708992 --dim 512 --queries 2048
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from eval.dense_retrieval import DEFAULT_BANK_CHUNK, DEFAULT_QUERY_CHUNK, MemoryBank, make_searcher, retrieve

MIB = 2**20
REPO = Path(__file__).resolve().parents[1]


def status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024 / MIB
    raise RuntimeError(f"/proc/self/status has no {field}")


def machine() -> str:
    """CPU model and core count, for the record."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    return f"{model or platform.machine()}, {os.cpu_count()} cores"


def random_bank(size: int, dim: int, num_classes: int, seed: int = 0) -> MemoryBank:
    """N unit vectors and label distributions, filled in slices so no temporary of the bank's size exists."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.empty(size, dim)
    labels = torch.empty(size, num_classes)
    for start in range(0, size, 65_536):
        part = slice(start, min(start + 65_536, size))
        features[part] = F.normalize(torch.randn(part.stop - start, dim, generator=generator), dim=1)
        labels[part] = torch.softmax(4 * torch.rand(part.stop - start, num_classes, generator=generator), dim=1)
    return MemoryBank(features, labels, num_images=0, patches_per_image=None)


def measure(args: argparse.Namespace) -> dict[str, object]:
    """One measurement, in this process."""
    torch.set_num_threads(args.threads)
    bank = random_bank(args.one, args.dim, args.num_classes)
    queries = F.normalize(torch.randn(args.queries, args.dim, generator=torch.Generator().manual_seed(1)), dim=1)
    full = args.method == "full"
    query_chunk, bank_chunk = (args.queries, args.one) if full else (args.query_chunk, args.bank_chunk)
    searcher = make_searcher(bank.features, args.k, "torch", query_chunk, bank_chunk)
    before = status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current resident size
    start = time.perf_counter()
    votes = retrieve(bank, searcher, queries, 0.02, query_chunk)
    seconds = time.perf_counter() - start
    peak = status_mib("VmHWM")
    assert votes.shape == (args.queries, args.num_classes)
    bank_mib = (bank.features.numel() + bank.labels.numel()) * 4 / MIB
    return {
        "method": args.method, "bank_size": args.one, "dim": args.dim, "num_classes": args.num_classes,
        "queries": args.queries, "k": args.k, "query_chunk": query_chunk, "bank_chunk": bank_chunk,
        "bank_mib": round(bank_mib, 1), "rss_before_mib": round(before, 1), "peak_mib": round(peak, 1),
        "search_mib": round(peak - before, 1), "block_mib": round(query_chunk * min(bank_chunk, args.one) * 4 / MIB, 1),
        "seconds": round(seconds, 2), "threads": args.threads, "torch": torch.__version__,
        "machine": machine(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank-sizes", type=int, nargs="+", default=[10_240, 2_708_992])
    parser.add_argument("--dim", type=int, default=512, help="feature width (ResNet-18/34 C5: 512, ResNet-50: 2048)")
    parser.add_argument("--num-classes", type=int, default=21, help="label classes (VOC: 21)")
    parser.add_argument("--queries", type=int, default=2048, help="query patches (8 images of 16 x 16)")
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--query-chunk", type=int, default=DEFAULT_QUERY_CHUNK)
    parser.add_argument("--bank-chunk", type=int, default=DEFAULT_BANK_CHUNK)
    parser.add_argument("--full-limit-gib", type=float, default=2.0, help="largest [queries, N] matrix to try")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="also append the JSON lines to this file")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child: this bank size
    parser.add_argument("--method", default="blockwise", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args)))
        return
    for size in args.bank_sizes:
        methods = ["blockwise"]
        if args.queries * size * 4 <= args.full_limit_gib * 2**30:
            methods.append("full")
        for method in methods:
            settings = {"dim": args.dim, "num-classes": args.num_classes, "queries": args.queries, "k": args.k,
                        "query-chunk": args.query_chunk, "bank-chunk": args.bank_chunk, "threads": args.threads,
                        "one": size, "method": method}  # fmt: skip
            command = [
                sys.executable,
                "-m",
                "bench.dense_retrieval_memory",
                *(f"--{name}={value}" for name, value in settings.items()),
            ]
            line = (
                subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
                .stdout.strip()
                .splitlines()[-1]
            )
            print(line, flush=True)
            if args.output:
                with open(args.output, "a") as out:
                    out.write(line + "\n")


if __name__ == "__main__":
    main()
