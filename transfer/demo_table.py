"""The paper's Table 1 in miniature: fine-tune on the demo scenes from the demo checkpoint and from random weights.

    python -m transfer.demo_table [--checkpoint output/demo/current.pth]      # `make transfer-demo`

Writes the demo's transfer sets (transfer/demo_sets.py), converts the checkpoint's teacher backbone for both
libraries, then trains four models with the same data, schedule and seed, two per initialisation:

* Mask R-CNN (detectron2 with configs/Demo_R_18_FPN_SlotCon.yaml where detectron2 is installed, torchvision's
  Mask R-CNN otherwise), scored by COCO box AP and mask AP on the demo's held-out scenes;
* FCN (mmseg 1.x, configs/demo/fcn_r18-d16_128x128_demo.py), scored by mIoU over background + the classes.

and prints them side by side (also in OUT_DIR/table.md and table.json). Each run's logs are under OUT_DIR.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from data.scene_folder import DemoDataError
from transfer.backbone import load_resnet_backbone
from transfer.demo_sets import write_transfer_sets
from transfer.detection import convert_pretrain_to_d2
from transfer.segmentation import convert_pretrain_to_mm
from utils.atomic import OutputWriteError, check_writable, write_text_atomic
from utils.checkpoint import load_checkpoint
from utils.tables import format_table

REPO = Path(__file__).resolve().parents[1]

D2_CONFIG = REPO / "transfer" / "detection" / "configs" / "Demo_R_18_FPN_SlotCon.yaml"
SEG_CONFIG = REPO / "transfer" / "segmentation" / "configs" / "demo" / "fcn_r18-d16_128x128_demo.py"
INITS = ("random", "SlotCon")
# Learning rates of the demo configs for 8 images per iteration; other batch sizes scale them linearly.
DET_LR, SEG_LR = 0.02, 0.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="output/demo/current.pth", help="SlotCon checkpoint (make demo)")
    parser.add_argument("--demo-dir", help="demo scenes (default: the checkpoint's --data-dir, else demo_data)")
    parser.add_argument("--out-dir", default="output/transfer_demo")
    parser.add_argument("--num-train", type=int, default=1000, help="training scenes (the first N)")
    parser.add_argument("--num-val", type=int, default=300, help="held-out scenes scored (the first N)")
    parser.add_argument("--det-iters", type=int, default=150, help="Mask R-CNN iterations (8 images each)")
    parser.add_argument("--seg-iters", type=int, default=250, help="FCN iterations (8 images each)")
    parser.add_argument("--det-batch", type=int, default=8)
    parser.add_argument("--seg-batch", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--detector",
        choices=["auto", "detectron2", "torchvision"],
        default="auto",
        help="auto: detectron2 where it is installed",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="data loader processes per run")
    return parser.parse_args(argv)


def _run(command: list[str], log: Path, what: str, device: str) -> None:
    """Run one training in a child process, its output to ``log``; one-line error naming the log if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if device == "cpu":  # mmengine takes a GPU whenever it sees one
        env["CUDA_VISIBLE_DEVICES"] = ""
        # One compute thread unless told otherwise: on a shared 2-core machine detectron2's Mask R-CNN step took
        # 11.6 s with two threads spinning for cores, 0.83 s with one, under the same load (2026-12-02).
        env.setdefault("OMP_NUM_THREADS", "1")
    with open(log, "w") as f:
        f.write(" ".join(command) + "\n\n")
        f.flush()
        result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if result.returncode != 0:
        tail = [line for line in log.read_text().splitlines() if line.strip()][-1:]
        raise SystemExit(f"{what} failed (exit {result.returncode}): {tail[0] if tail else ''} -- see {log}")


def average_precision(results: dict, task: str) -> float:
    """AP in %; detectron2 reports NaN when a model detects nothing at all, which is an AP of 0."""
    ap = float(results[task]["AP"])
    return 0.0 if math.isnan(ap) else ap


def detectron2_run(args: argparse.Namespace, sets: dict, weights: str, out: Path) -> dict[str, float]:
    train, val = sets["splits"]["train"], sets["splits"]["val"]
    step = round(args.det_iters * 0.8)  # lr x0.1 there (none for schedules too short to have one)
    steps = f"({step},)" if 0 < step < args.det_iters else "()"
    command = [
        sys.executable,
        str(REPO / "transfer" / "detection" / "train_net.py"),
        "--config-file",
        str(D2_CONFIG),
        "--train-json",
        train["coco_json"],
        "--train-images",
        train["images"],
        "--val-json",
        val["coco_json"],
        "--val-images",
        val["images"],
        "MODEL.WEIGHTS",
        weights,
        "MODEL.DEVICE",
        args.device,
        "SEED",
        str(args.seed),
        "MODEL.RESNETS.DEPTH",
        str(args.depth),
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        "64" if args.depth < 50 else "256",  # BasicBlock: 64
        "SOLVER.IMS_PER_BATCH",
        str(args.det_batch),
        "SOLVER.BASE_LR",
        str(DET_LR * args.det_batch / 8),
        "SOLVER.MAX_ITER",
        str(args.det_iters),
        "SOLVER.STEPS",
        steps,
        "SOLVER.WARMUP_ITERS",
        str(min(50, args.det_iters // 4)),
        # precise BN statistics from as many batches as the schedule has, at most the config's 20
        "TEST.PRECISE_BN.NUM_ITER",
        str(min(20, args.det_iters)),
        "DATALOADER.NUM_WORKERS",
        str(args.workers),
        "OUTPUT_DIR",
        str(out),
    ]
    _run(command, out / "run.log", f"detectron2 Mask R-CNN ({out.name})", args.device)
    results = json.loads((out / "results.json").read_text())
    return {"box AP": average_precision(results, "bbox"), "mask AP": average_precision(results, "segm")}


def torchvision_run(args: argparse.Namespace, sets: dict, checkpoint: str | None, out: Path) -> dict[str, float]:
    train, val = sets["splits"]["train"], sets["splits"]["val"]
    command = [
        sys.executable,
        "-m",
        "transfer.detection.train_torchvision",
        "--train-json",
        train["coco_json"],
        "--train-images",
        train["images"],
        "--val-json",
        val["coco_json"],
        "--val-images",
        val["images"],
        "--iters",
        str(args.det_iters),
        "--batch-size",
        str(args.det_batch),
        "--lr",
        str(DET_LR * args.det_batch / 8),
        "--device",
        args.device,
        "--seed",
        str(args.seed),
        "--workers",
        str(args.workers),
        "--output-dir",
        str(out),
    ]
    command += ["--checkpoint", checkpoint] if checkpoint else ["--random-init", "--depth", str(args.depth)]
    _run(command, out / "run.log", f"torchvision Mask R-CNN ({out.name})", args.device)
    results = json.loads((out / "results.json").read_text())
    return {"box AP": average_precision(results, "bbox"), "mask AP": average_precision(results, "segm")}


def mmseg_run(args: argparse.Namespace, sets: dict, weights: str | None, out: Path) -> dict[str, float]:
    train, val = sets["splits"]["train"], sets["splits"]["val"]
    command = [
        sys.executable,
        str(REPO / "transfer" / "segmentation" / "train.py"),
        str(SEG_CONFIG),
        "--classes",
        str(Path(args.out_dir) / "data" / "seg" / "classes.txt"),
        "--train-images",
        train["images"],
        "--train-labels",
        train["labels"],
        "--train-list",
        train["seg_list"],
        "--val-images",
        val["images"],
        "--val-labels",
        val["labels"],
        "--val-list",
        val["seg_list"],
        "--work-dir",
        str(out),
    ]
    command += ["--pretrained", weights] if weights else ["--random-init", "--depth", str(args.depth)]
    command += [
        "--cfg-options",
        f"train_cfg.max_iters={args.seg_iters}",
        f"train_cfg.val_interval={args.seg_iters}",
        f"param_scheduler.0.end={args.seg_iters}",
        f"default_hooks.checkpoint.interval={args.seg_iters}",
        f"train_dataloader.batch_size={args.seg_batch}",
        f"optim_wrapper.optimizer.lr={SEG_LR * args.seg_batch / 8}",
        f"randomness.seed={args.seed}",
        f"train_dataloader.num_workers={args.workers}",
        f"val_dataloader.num_workers={args.workers}",
        f"test_dataloader.num_workers={args.workers}",
    ]
    if args.workers == 0:
        command += [
            "train_dataloader.persistent_workers=False",
            "val_dataloader.persistent_workers=False",
            "test_dataloader.persistent_workers=False",
        ]
    _run(command, out / "run.log", f"mmseg FCN ({out.name})", args.device)
    return {"mIoU": json.loads((out / "results.json").read_text())["mIoU"]}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.time()
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint}: no such checkpoint; run `make demo` first (or pass --checkpoint PATH)")
    _, args.depth = load_resnet_backbone(checkpoint)  # one-line error for a file that is not a SlotCon checkpoint
    if args.demo_dir is None:  # the scenes the checkpoint was pretrained on
        saved = load_checkpoint(checkpoint).get("args") or {}
        args.demo_dir = (saved.get("data_dir") if saved.get("dataset") == "demo" else None) or "demo_data"
    detector = args.detector
    if detector == "auto":
        detector = "detectron2" if importlib.util.find_spec("detectron2") else "torchvision"
    out = Path(args.out_dir)
    try:  # a read-only or full disk: now, not after 15 minutes of training
        out.mkdir(parents=True, exist_ok=True)
        check_writable(out / "table.md")
    except OSError as e:
        raise SystemExit(f"--out-dir {out}: {e.strerror}") from None
    except OutputWriteError as e:
        raise SystemExit(str(e)) from None
    try:
        sets = write_transfer_sets(args.demo_dir, out / "data", args.num_train, args.num_val)
    except DemoDataError as e:
        raise SystemExit(f"{e} (or run `make demo`)") from None
    train, val = sets["splits"]["train"], sets["splits"]["val"]
    print(
        f"demo transfer sets from {args.demo_dir}: {train['num_images']} train / {val['num_images']} val scenes, "
        f"{len(sets['thing_classes'])} classes; backbone ResNet-{args.depth} from {checkpoint}"
    )
    convert_pretrain_to_d2.main([str(checkpoint), str(out / "backbone_d2.pkl")])
    convert_pretrain_to_mm.main([str(checkpoint), str(out / "backbone_mm.pth")])

    rows: dict[str, dict[str, float]] = {init: {} for init in INITS}
    seconds: dict[str, dict[str, float]] = {}  # per run: wall clock, and CPU time of its processes

    def timed(name: str, run, *run_args) -> dict[str, float]:
        wall, cpu = time.time(), _children_cpu_seconds()
        values = run(args, sets, *run_args)
        seconds[name] = {"wall": time.time() - wall, "cpu": _children_cpu_seconds() - cpu}
        shown = ", ".join(f"{k} {v:.1f}" for k, v in values.items())
        print(f"  {shown} ({seconds[name]['wall']:.0f} s, {seconds[name]['cpu']:.0f} CPU s)", flush=True)
        return values

    for init in INITS:
        pretrained = init == "SlotCon"
        det_out, seg_out = out / f"det_{init.lower()}", out / f"seg_{init.lower()}"
        print(f"Mask R-CNN ({detector}), {init} init, {args.det_iters} iterations ...", flush=True)
        if detector == "detectron2":
            weights = str(out / "backbone_d2.pkl") if pretrained else ""
            rows[init] |= timed(det_out.name, detectron2_run, weights, det_out)
        else:
            weights = str(checkpoint) if pretrained else None
            rows[init] |= timed(det_out.name, torchvision_run, weights, det_out)
        print(f"FCN (mmseg), {init} init, {args.seg_iters} iterations ...", flush=True)
        weights = str(out / "backbone_mm.pth") if pretrained else None
        rows[init] |= timed(seg_out.name, mmseg_run, weights, seg_out)

    columns = ["box AP", "mask AP", "mIoU"]
    cells = {init: [f"{values[c]:.1f}" for c in columns] for init, values in rows.items()}
    table = format_table(cells, columns, first="init", markdown=True)
    wall = time.time() - start
    caption = (
        f"Demo transfer (ResNet-{args.depth}; Mask R-CNN {detector}, {args.det_iters} it x {args.det_batch} "
        f"img; FCN mmseg, {args.seg_iters} it x {args.seg_batch} img; {train['num_images']} train / "
        f"{val['num_images']} val scenes; seed {args.seed}; {wall / 60:.1f} min)"
    )
    record = {"rows": rows, "seconds": seconds, "wall_seconds": wall, "detector": detector, "args": vars(args)}
    try:
        write_text_atomic(out / "table.md", caption + "\n\n" + table + "\n")
        write_text_atomic(out / "table.json", json.dumps(record, indent=1) + "\n")
    except OutputWriteError as e:  # the disk filled up during the trainings
        raise SystemExit(f"{e} (the table was: {caption} {' '.join(table.split())})") from None
    print(f"\n{caption}\n\n{table}\n\n(also in {out / 'table.md'})")


if __name__ == "__main__":
    main()
