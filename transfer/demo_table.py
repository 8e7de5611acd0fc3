"""The paper's Table 1 in miniature: fine-tune on the demo scenes from the demo checkpoint and from random weights.

    python -m transfer.demo_table [--checkpoint output/demo/current.pth]      # `make transfer-demo`
    python -m transfer.demo_table --checkpoint output/demo/current.pth output/demo-seed1/current.pth \
        output/demo-seed2/current.pth --seed 0 1 2 --label-fractions 1 0.2 0.05   # `make transfer-demo-seeds`

Writes the demo's transfer sets (transfer/demo_sets.py), converts each checkpoint's teacher backbone for both
libraries, then, for every seed and every fraction of the labelled train scenes, trains four models with the same
data, schedule and seed, two per initialisation:

* Mask R-CNN (detectron2 with configs/Demo_R_18_FPN_SlotCon.yaml where detectron2 is installed, torchvision's
  Mask R-CNN otherwise), scored by COCO box AP and mask AP on the demo's held-out scenes;
* FCN (mmseg 1.x, configs/demo/fcn_r18-d16_128x128_demo.py), scored by mIoU over background + the classes;

and, beside them, the training-free colour rows where they apply (segmentation): the project's linear probe
(``python -m eval.linear_probe``) on each pixel's colour (``colour``) or on 4x4-cell colour histograms
(``colour-hist``), no network, fitted on the same labelled scenes with as many steps of as many scenes as the FCN's,
scored by the same mIoU on the same held-out scenes at their own size. The i-th checkpoint is fine-tuned, and the
random initialisation trained, with the i-th seed; with several seeds a cell is the mean (min-max).

It prints the table (also in OUT_DIR/table.md, with every seed's row, and table.json). Each run's logs are under
OUT_DIR/labels<P>/seed<S>/; a run whose results are there from the same command and the same input files (hashed) is
reused, not trained again, so an interrupted grid continues where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from data.scene_folder import DemoDataError
from transfer.backbone import load_resnet_backbone
from transfer.demo_sets import write_transfer_sets
from transfer.detection import convert_pretrain_to_d2
from transfer.segmentation import convert_pretrain_to_mm
from utils.atomic import OutputWriteError, check_writable, write_text_atomic
from utils.checkpoint import load_checkpoint
from utils.tables import format_table, mean_range

REPO = Path(__file__).resolve().parents[1]

D2_CONFIG = REPO / "transfer" / "detection" / "configs" / "Demo_R_18_FPN_SlotCon.yaml"
SEG_CONFIG = REPO / "transfer" / "segmentation" / "configs" / "demo" / "fcn_r18-d16_128x128_demo.py"
INITS = ("random", "SlotCon")
# The training-free rows (eval/baselines.py), segmentation only: a probe on pixel colour has no detector.
BASELINES = ("colour", "colour-hist")
COLUMNS = ("box AP", "mask AP", "mIoU")
# Learning rates of the demo configs for 8 images per iteration; other batch sizes scale them linearly.
DET_LR, SEG_LR = 0.02, 0.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        default=["output/demo/current.pth"],
        help="SlotCon checkpoint(s): make demo's, or make demo-seeds' three (output/demo-seedS/current.pth for S > 0)",
    )
    parser.add_argument("--demo-dir", help="demo scenes (default: the checkpoint's --data-dir, else demo_data)")
    parser.add_argument("--out-dir", default="output/transfer_demo")
    parser.add_argument("--num-train", type=int, default=1000, help="labelled training scenes (the first N)")
    parser.add_argument(
        "--label-fractions",
        nargs="+",
        type=float,
        default=[1.0],
        metavar="F",
        help="fine-tune on each fraction F of the --num-train scenes (the first round(F N)), same schedule",
    )
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
    parser.add_argument(
        "--seed", nargs="+", type=int, default=[0], help="one per --checkpoint: its fine-tuning and random init's seed"
    )
    parser.add_argument("--workers", type=int, default=1, help="data loader processes per run")
    return parser.parse_args(argv)


def _fingerprint(command: list[str], result: Path) -> str:
    """The command and a digest of every file it names (weights, data lists, configs, scripts) but its ``result``,
    as one line."""
    digest = hashlib.sha256()
    for word in command:
        path = Path(word.split("=", 1)[-1])
        if path.is_file() and path.resolve() != result.resolve():
            digest.update(word.encode() + path.read_bytes())
    return f"{' '.join(command)}  # inputs sha256 {digest.hexdigest()[:16]}"


def _run(command: list[str], log: Path, what: str, device: str, result: Path) -> None:
    """Run one training in a child process, its output to ``log``; one-line error naming the log if it fails.

    When ``result`` exists and ``log`` begins with the same command and input files (``_fingerprint``), the run
    finished before: it is reused, not run again.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    key = _fingerprint(command, result)
    if result.is_file() and log.is_file() and log.read_text().split("\n", 1)[0] == key:
        print(f"  reusing the finished run in {log.parent}", flush=True)
        return
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if device == "cpu":  # mmengine takes a GPU whenever it sees one
        env["CUDA_VISIBLE_DEVICES"] = ""
        # One compute thread unless told otherwise: on a shared 2-core machine detectron2's Mask R-CNN step took
        # 11.6 s with two threads spinning for cores, 0.83 s with one, under the same load (2026-12-02).
        env.setdefault("OMP_NUM_THREADS", "1")
    result.unlink(missing_ok=True)
    with open(log, "w") as f:
        f.write(key + "\n\n")
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
    _run(command, out / "run.log", f"detectron2 Mask R-CNN ({out})", args.device, out / "results.json")
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
    _run(command, out / "run.log", f"torchvision Mask R-CNN ({out})", args.device, out / "results.json")
    results = json.loads((out / "results.json").read_text())
    return {"box AP": average_precision(results, "bbox"), "mask AP": average_precision(results, "segm")}


def mmseg_run(args: argparse.Namespace, sets: dict, weights: str | None, out: Path) -> dict[str, float]:
    train, val = sets["splits"]["train"], sets["splits"]["val"]
    command = [
        sys.executable,
        str(REPO / "transfer" / "segmentation" / "train.py"),
        str(SEG_CONFIG),
        "--classes",
        sets["classes_file"],
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
    _run(command, out / "run.log", f"mmseg FCN ({out})", args.device, out / "results.json")
    return {"mIoU": json.loads((out / "results.json").read_text())["mIoU"]}


def colour_probe_run(args: argparse.Namespace, sets: dict, baseline: str, out: Path) -> dict[str, float]:
    """The training-free row ``baseline``: eval.linear_probe on colour features, fitted on the same labelled scenes
    with the FCN's number of steps and scenes per step, mIoU on the same held-out scenes at their own size."""
    train, val = sets["splits"]["train"], sets["splits"]["val"]
    epochs = max(1, math.ceil(args.seg_iters * args.seg_batch / train["num_images"]))
    command = [
        sys.executable,
        "-m",
        "eval.linear_probe",
        "--checkpoint",
        baseline,
        "--dataset",
        "demo",
        "--data-dir",
        str(args.demo_dir),
        "--image-size",
        str(sets["image_size"]),
        "--max-train-images",
        str(train["num_images"]),
        "--max-images",
        str(val["num_images"]),
        "--epochs",
        str(epochs),
        "--batch-size",
        str(args.seg_batch),
        "--seed",
        str(args.seed),
        "--device",
        args.device,
        "--output-json",
        str(out / "results.json"),
    ]
    _run(command, out / "run.log", f"{baseline} probe ({out})", args.device, out / "results.json")
    return {"mIoU": 100 * json.loads((out / "results.json").read_text())["miou"]}


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def labels_name(fraction: float) -> str:
    """The folder of a label fraction: labels100, labels20, labels5."""
    return f"labels{100 * fraction:g}"


def spread_cell(values: list[float]) -> str:
    """One value as is; several as mean (min-max); none as '-'."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return mean_range(sum(values) / len(values), min(values), max(values))


def convert_backbones(checkpoint: Path, folder: Path) -> None:
    """``folder``/backbone_d2.pkl and backbone_mm.pth from ``checkpoint``, unless they were converted from the same
    file (its sha256 in ``folder``/converted_from.sha256): torch.save's output differs from save to save, and the
    runs that read the weights are reused only while their input files are unchanged."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    stamp, targets = folder / "converted_from.sha256", (folder / "backbone_d2.pkl", folder / "backbone_mm.pth")
    if stamp.is_file() and stamp.read_text().strip() == digest and all(t.is_file() for t in targets):
        print(f"{folder}: backbones converted from {checkpoint} before, reused")
        return
    stamp.unlink(missing_ok=True)
    convert_pretrain_to_d2.main([str(checkpoint), str(targets[0])])
    convert_pretrain_to_mm.main([str(checkpoint), str(targets[1])])
    write_text_atomic(stamp, digest + "\n")


def check_args(args: argparse.Namespace) -> list[Path]:
    """The checkpoints, after one-line refusals of impossible options."""
    checkpoints = [Path(c) for c in args.checkpoint]
    if len(args.seed) != len(checkpoints):
        raise SystemExit(
            f"--seed: give one seed per --checkpoint ({len(args.seed)} seeds for {len(checkpoints)} checkpoints)"
        )
    if len(set(args.seed)) != len(args.seed):
        raise SystemExit(f"--seed: every seed once, got {' '.join(map(str, args.seed))}")
    bad = [f for f in args.label_fractions if not 0 < f <= 1]
    if bad:
        raise SystemExit(f"--label-fractions: each must lie in (0, 1], got {bad[0]:g}")
    if args.num_train < 1 or args.num_val < 1:
        raise SystemExit(f"--num-train and --num-val must be positive, got {args.num_train} and {args.num_val}")
    for checkpoint in checkpoints:
        if not checkpoint.is_file():
            raise SystemExit(f"{checkpoint}: no such checkpoint; run `make demo` first (or pass --checkpoint PATH)")
    return checkpoints


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.time()
    checkpoints = check_args(args)
    # One-line error for a file that is not a SlotCon checkpoint; all must hold the same network.
    depths = {load_resnet_backbone(checkpoint)[1] for checkpoint in checkpoints}
    if len(depths) > 1:
        raise SystemExit(f"the checkpoints hold ResNets of different depths ({sorted(depths)}); give one network")
    args.depth = depths.pop()
    if args.demo_dir is None:  # the scenes the (first) checkpoint was pretrained on
        saved = load_checkpoint(checkpoints[0]).get("args") or {}
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
    fractions = sorted(set(args.label_fractions), reverse=True)
    all_sets: dict[float, dict] = {}
    for fraction in fractions:
        try:
            sets = write_transfer_sets(
                args.demo_dir,
                out / "data" / labels_name(fraction),
                max(1, round(fraction * args.num_train)),
                args.num_val,
            )
        except DemoDataError as e:
            raise SystemExit(f"{e} (or run `make demo`)") from None
        sets["classes_file"] = str(out / "data" / labels_name(fraction) / "seg" / "classes.txt")
        with Image.open(next(Path(sets["splits"]["val"]["images"]).glob("*.png"))) as first:
            sets["image_size"] = first.size[0]  # the FCN is scored at the scenes' own size; so are the colour rows
        all_sets[fraction] = sets
    val = all_sets[fractions[0]]["splits"]["val"]
    labelled = {f: all_sets[f]["splits"]["train"]["num_images"] for f in fractions}
    print(
        f"demo transfer sets from {args.demo_dir}: "
        + ", ".join(f"{labelled[f]} ({100 * f:g}%)" for f in fractions)
        + f" labelled train / {val['num_images']} val scenes, {len(all_sets[fractions[0]]['thing_classes'])} "
        f"classes; backbone ResNet-{args.depth}; seeds {' '.join(map(str, args.seed))}"
    )

    # values[(fraction, row)][seed] = {column: value}
    values: dict[tuple[float, str], dict[int, dict[str, float]]] = {}
    seconds: dict[str, dict[str, float]] = {}  # per run: wall clock, and CPU time of its processes

    def timed(name: str, run, run_args: argparse.Namespace, *rest) -> dict[str, float]:
        wall, cpu = time.time(), _children_cpu_seconds()
        result = run(run_args, *rest)
        seconds[name] = {"wall": time.time() - wall, "cpu": _children_cpu_seconds() - cpu}
        shown = ", ".join(f"{k} {v:.1f}" for k, v in result.items())
        print(f"  {shown} ({seconds[name]['wall']:.0f} s, {seconds[name]['cpu']:.0f} CPU s)", flush=True)
        return result

    for seed, checkpoint in zip(args.seed, checkpoints, strict=True):
        convert_backbones(checkpoint, out / f"seed{seed}")
    # Every seed at one label fraction before the next fraction: an interrupted grid has whole rows.
    for fraction in fractions:
        for seed, checkpoint in zip(args.seed, checkpoints, strict=True):
            run_args = argparse.Namespace(**{**vars(args), "seed": seed})
            weights = out / f"seed{seed}"
            sets, base = all_sets[fraction], out / labels_name(fraction) / f"seed{seed}"
            where = f"{labelled[fraction]} labelled scenes, seed {seed}"
            for init in INITS:
                pretrained = init == "SlotCon"
                det_out, seg_out = base / f"det_{init.lower()}", base / f"seg_{init.lower()}"
                row = values.setdefault((fraction, init), {}).setdefault(seed, {})
                print(f"Mask R-CNN ({detector}), {init} init, {args.det_iters} iterations, {where} ...", flush=True)
                if detector == "detectron2":
                    init_weights = str(weights / "backbone_d2.pkl") if pretrained else ""
                    row |= timed(str(det_out), detectron2_run, run_args, sets, init_weights, det_out)
                else:
                    init_weights = str(checkpoint) if pretrained else None
                    row |= timed(str(det_out), torchvision_run, run_args, sets, init_weights, det_out)
                print(f"FCN (mmseg), {init} init, {args.seg_iters} iterations, {where} ...", flush=True)
                init_weights = str(weights / "backbone_mm.pth") if pretrained else None
                row |= timed(str(seg_out), mmseg_run, run_args, sets, init_weights, seg_out)
            for baseline in BASELINES:
                print(f"{baseline}: linear probe on colour, no network, {where} ...", flush=True)
                probe_out = base / baseline
                result = timed(str(probe_out), colour_probe_run, run_args, sets, baseline, probe_out)
                values.setdefault((fraction, baseline), {})[seed] = result

    def row_name(fraction: float, row: str) -> str:
        return f"{labelled[fraction]} ({100 * fraction:g}%), {row}" + (", no network" if row in BASELINES else "")

    first = "labelled scenes, init"
    cells = {
        row_name(fraction, row): [spread_cell([v[c] for v in by_seed.values() if c in v]) for c in COLUMNS]
        for (fraction, row), by_seed in values.items()
    }
    table = format_table(cells, COLUMNS, first=first, markdown=True)
    per_seed = format_table(
        {
            f"{row_name(fraction, row)}, seed {seed}": [spread_cell([v[c]] if c in v else []) for c in COLUMNS]
            for (fraction, row), by_seed in values.items()
            for seed, v in by_seed.items()
        },
        COLUMNS,
        first=first,
        markdown=True,
    )
    wall = time.time() - start
    spread = "mean (min-max) over seeds " if len(args.seed) > 1 else "seed "
    caption = (
        f"Demo transfer (ResNet-{args.depth}; Mask R-CNN {detector}, {args.det_iters} it x {args.det_batch} img; "
        f"FCN mmseg, {args.seg_iters} it x {args.seg_batch} img; colour rows: eval.linear_probe on pixel colour / "
        f"4x4-cell colour histograms, {args.seg_iters} steps x {args.seg_batch} img, no network; {val['num_images']} "
        f"val scenes; {spread}{' '.join(map(str, args.seed))}; {wall / 60:.1f} min)"
    )
    record = {
        "rows": {row_name(f, r): {str(seed): v for seed, v in by_seed.items()} for (f, r), by_seed in values.items()},
        "seconds": seconds,
        "wall_seconds": wall,
        "detector": detector,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    try:
        write_text_atomic(out / "table.md", f"{caption}\n\n{table}\n\nPer seed:\n\n{per_seed}\n")
        write_text_atomic(out / "table.json", json.dumps(record, indent=1) + "\n")
    except OutputWriteError as e:  # the disk filled up during the trainings
        raise SystemExit(f"{e} (the table was: {caption} {' '.join(table.split())})") from None
    print(f"\n{caption}\n\n{table}\n\n(also in {out / 'table.md'}, with every seed's rows)")


if __name__ == "__main__":
    main()
