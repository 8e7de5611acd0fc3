"""Throughput and memory of SlotCon pretraining, as JSON lines (one per measurement).

Modes (``--modes``, comma-separated):
  step     ``engine.trainer.Trainer.step`` (forward, backward, optimizer, finiteness check, teacher EMA) on synthetic,
           already-augmented crops, interleaved in this process with a plain library step (torchvision's ResNet or
           timm's ViT of the same arch and size, both views: 2B images, forward + backward + SGD): our step as a
           multiple of that one
  augment  the batched photometric augmentation alone (uint8 crops already on the device)
  data     the CPU input pipeline alone: JPEG decode + two crops per image in DataLoader workers
  pipeline a CPU-only run's whole input pipeline in one process: decode, crops, photometric augmentation
  e2e      ``main_pretrain.py`` itself, from JPEG files, read back from its metrics.jsonl
  check    losses of the same weights and batch on the CPU and on --device agree (fp32)
  flops    FLOPs per image of one training step (SlotCon and the library's supervised classifier), counted by
           ``torch.utils.flop_counter`` on the meta device (shapes only: no compute, any --device)

Example (the numbers in BENCHMARKS.md):
  python -m bench.benchmark --device cuda --modes step,augment,data,e2e --arch resnet50 --image-size 224 \\
      --batch-size 128 --dim-hidden 4096 --num-prototypes 256 --num-workers 14
  python -m bench.benchmark --device cpu --modes flops --arch resnet50 --image-size 224 --batch-size 128 \\
      --dim-hidden 4096 --num-prototypes 256
  python -m bench.benchmark --device cpu --modes step,flops --arch vit_small --optimizer adamw --image-size 224 \\
      --batch-size 8 --dim-hidden 2048 --num-prototypes 256       # ViT-S/16 against timm's ViT-S/16 step
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from data.datasets import TwoViewDataset, collate_two_views, list_images
from data.photometric import BatchAugment
from data.sampler import ResumableSampler
from data.transforms import TwoViewCrop
from engine.trainer import build_model, build_trainer, fill_device_defaults
from main_pretrain import fill_arch_defaults, get_args_parser
from models import SlotCon
from models.backbones import build_reference_classifier
from utils.distributed import DistInfo

ROOT = Path(__file__).resolve().parents[1]


def get_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="step,augment,data")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--optimizer", default="lars", choices=["sgd", "lars", "adamw"], help="adamw for ViTs")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dim-hidden", type=int, default=1024)
    p.add_argument("--num-prototypes", type=int, default=64)
    p.add_argument(
        "--amp-dtype",
        default="auto",
        choices=["auto", "bfloat16", "float16", "none"],
        help="auto: bfloat16 on CUDA, none on CPU",
    )
    p.add_argument("--no-channels-last", action="store_true", help="NCHW on CUDA too (CPU runs NCHW anyway)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--pack-slot-queries", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--jpeg-dir", default=None, help="folder of JPEGs (default: generated 640x480 photos)")
    p.add_argument("--num-images", type=int, default=512)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--e2e-epochs", type=int, default=1)
    p.add_argument("--output", default=None, help="append the JSON lines to this file too")
    p.add_argument(
        "--tflops",
        type=float,
        default=989.0,
        help="flops mode: sustained TFLOP/s for the implied img/s (default: H200 dense bf16 peak)",
    )
    p.add_argument(
        "--supervised-img-per-s",
        type=float,
        default=4687.0,
        help="flops mode: a measured supervised-classifier rate to convert into achieved TFLOP/s "
        "(default: torchvision resnet50, batch 256, one H200)",
    )
    return p.parse_args()


def emit(record: dict, args: argparse.Namespace) -> None:
    record = {"date": time.strftime("%Y-%m-%d"), "device": device_name(args.device), **record}
    line = json.dumps(record)
    print(line, flush=True)
    if args.output:
        with open(args.output, "a") as f:
            f.write(line + "\n")


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def config(args: argparse.Namespace) -> dict:
    return {
        "arch": args.arch,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "dim_hidden": args.dim_hidden,
        "num_prototypes": args.num_prototypes,
        "amp": amp_dtype(args),
        "channels_last": pretrain_args(args).channels_last,
        "compile": args.compile,
        "pack_slot_queries": args.pack_slot_queries,
    }


def amp_dtype(args: argparse.Namespace) -> str:
    if args.amp_dtype == "auto":
        return "bfloat16" if args.device.startswith("cuda") else "none"
    return args.amp_dtype


def pretrain_args(args: argparse.Namespace, **overrides) -> argparse.Namespace:
    """``main_pretrain.py``'s arguments for this benchmark's settings (its defaults for everything else)."""
    flags = [
        "--arch",
        args.arch,
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--dim-hidden",
        str(args.dim_hidden),
        "--num-prototypes",
        str(args.num_prototypes),
        "--optimizer",
        args.optimizer,
        "--epochs",
        "1",
        "--warmup-epoch",
        "0",
        "--device",
        args.device,
    ]
    dtype = amp_dtype(args)
    flags += ["--no-fp16"] if dtype == "none" else ["--fp16", "--amp-dtype", dtype]
    flags += ["--no-channels-last"] if args.no_channels_last else []
    flags += ["--compile"] if args.compile else []
    flags += ["--pack-slot-queries"] if args.pack_slot_queries else []
    parsed = get_args_parser().parse_args(flags)
    fill_arch_defaults(parsed)
    fill_device_defaults(parsed, DistInfo(0, 1, torch.device(args.device)))
    vars(parsed).update(overrides)
    return parsed


def synthetic_batch(args: argparse.Namespace, device: torch.device, seed: int = 0, batch: int | None = None):
    g = torch.Generator().manual_seed(seed)
    b, s = batch or args.batch_size, args.image_size
    fmt = torch.channels_last if pretrain_args(args).channels_last else torch.contiguous_format
    crops = [torch.randn(b, 3, s, s, generator=g).to(device).contiguous(memory_format=fmt) for _ in range(2)]
    corner = [torch.rand(b, 2, generator=g) * 0.4 for _ in range(2)]
    boxes = [torch.cat([c, c + 0.5], dim=1).to(device) for c in corner]
    flipped = [(torch.rand(b, generator=g) < 0.5).to(device) for _ in range(2)]
    return crops, boxes, flipped


def plain_library_step(args: argparse.Namespace, device: torch.device):
    """A supervised step of the library's classifier of the same arch (torchvision ResNet, timm ViT) on both views'
    images (2B), in our step's precision and layout."""
    torch.manual_seed(0)
    settings = pretrain_args(args)
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    net = build_reference_classifier(args.arch).to(device, memory_format=fmt)
    if args.compile:
        net.compile()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-5)
    dtype = amp_dtype(args)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")
    g = torch.Generator().manual_seed(0)
    b, s = 2 * args.batch_size, args.image_size
    images = torch.randn(b, 3, s, s, generator=g).to(device).contiguous(memory_format=fmt)
    labels = torch.randint(0, 1000, (b,), generator=g).to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=getattr(torch, dtype)) if dtype != "none" else nullcontext():
            loss = nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def timed(fn, device: torch.device) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all threads) of ``fn``; the GPU is waited for."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_step(args: argparse.Namespace, device: torch.device) -> None:
    """Our training step and a plain ResNet step, alternating (the order flips every round, so drifts in the
    machine's speed hit both); also the cost of the step's undo snapshot and finiteness check on their own.

    The ratio is the median over rounds of (our step / the plain step of the same round). On a CPU shared with
    other jobs the wall-clock times swing with their load; the CPU time this process spent is steadier, and both
    ratios are reported (on a GPU only the wall-clock one means anything).
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    rounds = args.warmup + args.steps
    trainer = build_trainer(pretrain_args(args), DistInfo(0, 1, device), iters_per_epoch=rounds)
    crops, boxes, flipped = synthetic_batch(args, device)
    plain = plain_library_step(args, device)
    results = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def ours(i: int = 0) -> None:
        results.append(trainer.step(crops, boxes, flipped, iteration=i))

    def guard() -> None:
        trainer.snapshot.take()
        trainer.snapshot.live_is_finite().item()

    times: dict[str, list[tuple[float, float]]] = {"ours": [], "plain": [], "guard": []}
    for i in range(rounds):
        order = [("ours", lambda i=i: ours(i)), ("plain", plain), ("guard", guard)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            t = timed(fn, device)
            if i >= args.warmup:
                times[name].append(t)

    def median(name: str, clock: int) -> float:
        return float(np.median([t[clock] for t in times[name]]))

    def ratios(name: str, clock: int) -> list[float]:
        return [a[clock] / b[clock] for a, b in zip(times[name], times["plain"], strict=True)]

    step = median("ours", 0)
    snapshot_bytes = sum(t.numel() * t.element_size() for t in trainer.snapshot.copies)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    last = results[-1].losses
    record = {
        "mode": "step",
        **config(args),
        "threads": torch.get_num_threads(),
        "rounds": args.steps,
        "step_s": round(step, 4),
        "img_per_s": round(args.batch_size / step, 1),
        "plain_library_step_s": round(median("plain", 0), 4),
        "step_vs_plain": round(float(np.median(ratios("ours", 0))), 3),
        "step_vs_plain_range": [round(min(ratios("ours", 0)), 3), round(max(ratios("ours", 0)), 3)],
        "undo_snapshot_and_check_s": round(median("guard", 0), 5),
        "undo_snapshot_vs_step": round(
            float(np.median([g[0] / o[0] for g, o in zip(times["guard"], times["ours"], strict=True)])), 4
        ),
        "undo_snapshot_gib": round(snapshot_bytes / 2**30, 3),
    }
    if device.type == "cpu":
        record.update(
            {
                "cpu_step_s": round(median("ours", 1), 4),
                "cpu_plain_library_step_s": round(median("plain", 1), 4),
                "cpu_step_vs_plain": round(float(np.median(ratios("ours", 1))), 3),
                "cpu_step_vs_plain_range": [round(min(ratios("ours", 1)), 3), round(max(ratios("ours", 1)), 3)],
                "cpu_undo_snapshot_vs_step": round(
                    float(np.median([g[1] / o[1] for g, o in zip(times["guard"], times["ours"], strict=True)])), 4
                ),
            }
        )
    record.update(
        {
            "nonfinite_steps": sum(not r.finite for r in results),
            "peak_memory_gib": None if memory is None else round(memory, 2),
            "loss": last["loss"].item(),
            "active_slots": round(last["active_slots"].item(), 1),
            "host_syncs_in_forward": count_host_syncs(lambda: trainer.model(crops, boxes, flipped), trainer, device),
            "host_syncs_per_step": count_host_syncs(lambda: ours(len(trainer.lr_schedule) - 1), trainer, device),
        }
    )
    emit(record, args)


def count_host_syncs(fn, trainer, device: torch.device) -> int | None:
    """How many times ``fn`` makes the host wait for the GPU."""
    if device.type != "cuda":
        return None
    synchronize(device)
    autocast = torch.autocast(device.type, dtype=trainer.amp_dtype) if trainer.amp_dtype else nullcontext()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with autocast:
                fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # Count the per-operation warnings only: the first switch to "warn" adds a one-off prototype notice.
    return sum(str(w.message).startswith("called a synchronizing CUDA operation") for w in caught)


def bench_augment(args: argparse.Namespace, device: torch.device) -> None:
    augment = BatchAugment(device, base_seed=0, compile=args.compile)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch_size, args.image_size, args.image_size, 3)
    crops = [
        torch.randint(0, 256, shape, dtype=torch.uint8, generator=g).to(device).permute(0, 3, 1, 2) for _ in range(2)
    ]
    times = []
    for i in range(args.warmup + args.steps):
        synchronize(device)
        start = time.perf_counter()
        augment.seed(i)
        augment(crops)
        synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    step = float(np.median(times))
    emit(
        {
            "mode": "augment",
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "compile": args.compile and device.type != "cpu",
            "img_per_s": round(args.batch_size / step, 1),
        },
        args,
    )


def _write_photo(path_and_seed: tuple[str, int]) -> None:
    """A 640x480 photo-like JPEG: smooth colour blobs plus sensor-like noise, ~120 KB."""
    path, seed = path_and_seed
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, (15, 20, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
    pixels = np.asarray(base, dtype=np.float32) + rng.normal(0, 12, (480, 640, 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def jpeg_folder(args: argparse.Namespace) -> Path:
    if args.jpeg_dir and Path(args.jpeg_dir).is_dir() and any(Path(args.jpeg_dir).glob("*.jpg")):
        return Path(args.jpeg_dir)
    folder = Path(args.jpeg_dir or tempfile.mkdtemp(prefix="slotcon_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder / f"{i:05d}.jpg"), i) for i in range(args.num_images)]
    with multiprocessing.Pool(os.cpu_count()) as pool:
        pool.map(_write_photo, jobs, chunksize=16)
    return folder


def two_view_loader(args: argparse.Namespace, num_workers: int, pin_memory: bool = False):
    """(sampler, loader) of decoded, cropped views of the benchmark JPEGs, as ``main_pretrain.py`` builds them."""
    files = list_images("folder", jpeg_folder(args))
    dataset = TwoViewDataset(files, TwoViewCrop(args.image_size, 0.08))
    sampler = ResumableSampler(len(files), args.batch_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=collate_two_views,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
    return sampler, loader


def bench_data(args: argparse.Namespace, device: torch.device) -> None:
    sampler, loader = two_view_loader(args, args.num_workers, pin_memory=device.type == "cuda")
    images, start = 0, None
    for epoch in range(1, 100):
        sampler.set_epoch(epoch)
        for batch in loader:
            if start is None:  # the first batch pays for starting the workers
                start = time.perf_counter()
                continue
            images += batch["crops"][0].shape[0]
        if images >= args.batch_size * max(args.steps, 2 * args.num_workers):
            break
    rate = images / (time.perf_counter() - start)
    emit(
        {
            "mode": "data",
            "image_size": args.image_size,
            "num_workers": args.num_workers,
            "img_per_s": round(rate, 1),
            "img_per_s_per_worker": round(rate / max(args.num_workers, 1), 1),
        },
        args,
    )


def bench_pipeline(args: argparse.Namespace, device: torch.device) -> None:
    """The whole input pipeline of a CPU-only run in this one process: decode, two crops and the photometric
    augmentation, with the current torch threads (compare per process with the reference's loader workers)."""
    del device
    sampler, loader = two_view_loader(args, num_workers=0)
    augment = BatchAugment(torch.device("cpu"), base_seed=0)
    times = {"decode_crop": 0.0, "photometric": 0.0}
    batches = iter(())
    for it in range(args.warmup + args.steps):
        start = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            sampler.set_epoch(it)
            batches = iter(loader)
            start, batch = time.perf_counter(), next(batches)
        loaded = time.perf_counter()
        augment.seed(it)
        augment(batch["crops"])
        if it >= args.warmup:
            times["decode_crop"] += loaded - start
            times["photometric"] += time.perf_counter() - loaded
    images = args.batch_size * args.steps
    emit(
        {
            "mode": "pipeline",
            "image_size": args.image_size,
            "threads": torch.get_num_threads(),
            "img_per_s": round(images / sum(times.values()), 1),
            **{f"{part}_img_per_s": round(images / t, 1) for part, t in times.items()},
        },
        args,
    )


def bench_e2e(args: argparse.Namespace, device: torch.device) -> None:
    folder = jpeg_folder(args)
    out = Path(tempfile.mkdtemp(prefix="slotcon_e2e_"))
    iters = len(list_images("folder", folder)) // args.batch_size
    print_freq = max(iters // 4, 1)
    cmd = [
        sys.executable,
        str(ROOT / "main_pretrain.py"),
        "--dataset",
        "folder",
        "--data-dir",
        str(folder),
        "--output-dir",
        str(out),
        "--arch",
        args.arch,
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--dim-hidden",
        str(args.dim_hidden),
        "--num-prototypes",
        str(args.num_prototypes),
        "--optimizer",
        args.optimizer,
        "--epochs",
        str(args.e2e_epochs),
        "--warmup-epoch",
        "0",
        "--num-workers",
        str(args.num_workers),
        "--print-freq",
        str(print_freq),
        "--save-every-minutes",
        "0",
        "--no-tensorboard",
        "--device",
        device.type,
    ]
    dtype = amp_dtype(args)
    cmd += ["--no-fp16"] if dtype == "none" else ["--fp16", "--amp-dtype", dtype]
    cmd += ["--compile"] if args.compile else []
    cmd += ["--pack-slot-queries"] if args.pack_slot_queries else []
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = records[1:] or records  # the first window includes start-up and cudnn autotuning
    emit(
        {
            "mode": "e2e",
            **config(args),
            "num_workers": args.num_workers,
            "windows": len(steady),
            "img_per_s": round(float(np.mean([r["img_per_s"] for r in steady])), 1),
            "peak_memory_gib": round(max(r["max_memory_gib"] for r in records), 2),
        },
        args,
    )


def check_devices(args: argparse.Namespace, device: torch.device) -> None:
    """The same weights and batch give the same losses on the CPU and on ``device`` (fp32, eval-free)."""
    results = {}
    settings = pretrain_args(args, channels_last=False, compile=False)
    for dev in (torch.device("cpu"), device):
        torch.manual_seed(0)
        model = build_model(settings, torch.device("cpu")).to(dev)  # built on the CPU: the same weights
        crops, boxes, flipped = synthetic_batch(args, dev, seed=1, batch=min(args.batch_size, 8))
        with torch.no_grad():
            out = model(crops, boxes, flipped)
        results[dev.type] = {k: out[k].item() for k in ("loss", "loss_group", "loss_slot")}
    emit({"mode": "check", **config(args), "cpu": results["cpu"], device.type: results[device.type]}, args)


def _count_flops(fn) -> int:
    """FLOPs (a multiply-add counts 2) of the matmuls and convolutions, forward and backward, that ``fn`` runs."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def _fwd_bwd(module: nn.Module, inputs: list[torch.Tensor], backward: bool):
    def run() -> None:
        with torch.set_grad_enabled(backward):
            out = module(*inputs)
            if backward:
                out.float().sum().backward()

    return run


def _record_calls(modules: dict[str, nn.Module]) -> tuple[dict[str, list], list]:
    """Forward hooks that note, per call, the inputs' shapes, which need a gradient, and the grad mode."""
    calls: dict[str, list] = {name: [] for name in modules}
    handles = []
    for name, module in modules.items():

        def hook(_module, inputs, _output, name=name) -> None:
            calls[name].append(
                (
                    [
                        torch.empty_like(x).requires_grad_(x.requires_grad) if x.is_floating_point() else x
                        for x in inputs
                    ],
                    torch.is_grad_enabled(),
                )
            )

        handles.append(module.register_forward_hook(hook))
    return calls, handles


def bench_flops(args: argparse.Namespace, device: torch.device) -> None:
    """FLOPs per image (both views) of one SlotCon step: student forward + backward, teacher forward, losses.

    Counted on the meta device (only shapes: any size runs in seconds, ``device`` is not used). The split
    replays every call of the backbones, projectors and slot predictor alone, with the same input shapes,
    the same inputs needing a gradient and the same grad mode, because the counter's own per-module
    breakdown attributes backward ops to the wrong modules. Elementwise ops, norms, softmax and ROI-align
    are not counted (FlopCounterMode counts matmuls and convolutions only). The slot contrastive logits
    grow with the batch, so the per-image count depends (slightly) on --batch-size.
    """
    del device
    meta = torch.device("meta")
    b, s = args.batch_size, args.image_size
    model: SlotCon = build_model(pretrain_args(args, channels_last=False, compile=False), meta)
    crops = [torch.empty(b, 3, s, s, device=meta) for _ in range(2)]
    boxes = [torch.empty(b, 4, device=meta) for _ in range(2)]
    flipped = [torch.empty(b, dtype=torch.bool, device=meta) for _ in range(2)]
    parts = {
        "backbones": (model.encoder_q, model.encoder_k),
        "projectors": (model.projector_q, model.projector_k),
        "predictor": (model.predictor_slot,),
    }
    calls, handles = _record_calls({f"{name}.{i}": m for name, ms in parts.items() for i, m in enumerate(ms)})
    loss = {}
    forward = _count_flops(lambda: loss.update(model(crops, boxes, flipped)))
    for handle in handles:
        handle.remove()
    backward = _count_flops(lambda: loss["loss"].backward())
    total = forward + backward
    split = {
        name: sum(
            _count_flops(_fwd_bwd(module, inputs, grad))
            for i, module in enumerate(modules)
            for inputs, grad in calls[f"{name}.{i}"]
        )
        for name, modules in parts.items()
    }
    split["rest"] = total - sum(split.values())

    torch.manual_seed(0)
    classifier = build_reference_classifier(args.arch).to(meta)
    images, labels = torch.empty(b, 3, s, s, device=meta), torch.zeros(b, dtype=torch.long, device=meta)
    supervised = _count_flops(lambda: nn.functional.cross_entropy(classifier(images), labels).backward())

    def gflops(flops: float) -> float:
        return round(flops / b / 1e9, 3)

    per_image, supervised_per_image = total / b, supervised / b
    achieved = args.supervised_img_per_s * supervised_per_image / 1e12
    emit(
        {
            "mode": "flops",
            "arch": args.arch,
            "image_size": s,
            "batch_size": b,
            "dim_hidden": args.dim_hidden,
            "num_prototypes": args.num_prototypes,
            "counted_on": "meta",
            "slotcon_gflops_per_image": gflops(total),
            "slotcon_forward_gflops": gflops(forward),
            "slotcon_backward_gflops": gflops(backward),
            "slotcon_split_gflops": {name: gflops(flops) for name, flops in split.items()},
            "supervised_gflops_per_image": gflops(supervised),
            "ratio_slotcon_to_supervised": round(per_image / supervised_per_image, 3),
            "tflops": args.tflops,
            "img_per_s_at_peak": {
                "slotcon": round(args.tflops * 1e12 / per_image, 1),
                "supervised": round(args.tflops * 1e12 / supervised_per_image, 1),
            },
            "supervised_img_per_s": args.supervised_img_per_s,
            "supervised_achieved_tflops": round(achieved, 1),
            "supervised_achieved_fraction_of_peak": round(achieved / args.tflops, 4),
            "slotcon_img_per_s_at_supervised_tflops": round(achieved * 1e12 / per_image, 1),
        },
        args,
    )


def main() -> None:
    args = get_args()
    device = torch.device(args.device)
    runners = {
        "step": bench_step,
        "augment": bench_augment,
        "data": bench_data,
        "e2e": bench_e2e,
        "check": check_devices,
        "flops": bench_flops,
        "pipeline": bench_pipeline,
    }
    for mode in args.modes.split(","):
        if mode not in runners:
            raise SystemExit(f"--modes: unknown mode {mode!r}; choose from {', '.join(runners)}")
        runners[mode](args, device)


if __name__ == "__main__":
    main()
