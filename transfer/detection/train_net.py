"""Fine-tune a converted SlotCon backbone with detectron2 (Mask R-CNN R50-FPN 1x on COCO, VOC, or your own set).

    python train_net.py --config-file configs/COCO_R_50_FPN_1x_SlotCon.yaml --num-gpus 8 \
        MODEL.WEIGHTS /path/to/slotcon_r50.pkl OUTPUT_DIR output/COCO_R_50_FPN_1x_slotcon

Your own COCO-format data (its categories give the class names and ROI_HEADS.NUM_CLASSES):

    python train_net.py --config-file configs/COCO_R_50_FPN_1x_SlotCon.yaml \
        --train-json train.json --train-images train/ --val-json val.json --val-images val/ \
        MODEL.WEIGHTS slotcon.pkl OUTPUT_DIR output/mine

For detectron2 0.6 (``bash install_detectron2.sh``: it is not on PyPI). Evaluation: COCO box/mask AP for
COCO-format sets (the built-in ``coco_*`` ones and ``--train-json/--val-json``), Pascal VOC AP for names
containing "voc". The final numbers are also written to ``OUTPUT_DIR/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run by path, as the original README does: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

try:
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import CfgNode, get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
    from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator, verify_results
    from detectron2.utils import comm
except ImportError as e:
    raise SystemExit(
        f"train_net.py needs detectron2 ({e}): run `bash transfer/detection/install_detectron2.sh` "
        "(detectron2 0.6 at a 2026 commit that works with today's numpy and Pillow; the 2021 v0.6 tag needs "
        "numpy<1.24 and Pillow<10)"
    ) from None

from transfer.backbone import depth_from_names
from utils.atomic import write_text_atomic

_REMOTE_PREFIXES = ("detectron2://", "http://", "https://", "catalog://", "manifold://")
# The names our own COCO-format sets are registered under.
TRAIN_SET, VAL_SET = "custom_train", "custom_val"
_D2_BLOCK_KEY = re.compile(r"^res([2-5])\.(\d+)\.")


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        if "voc" in dataset_name:
            return PascalVOCDetectionEvaluator(dataset_name)
        if "json_file" in MetadataCatalog.get(dataset_name).as_dict():  # coco_* and our own COCO-format sets
            # The tasks from the config, not from the predictions: a model that detects nothing yet still gets
            # both box and mask rows (detectron2 reports NaN for "no predictions").
            tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
            return COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)
        raise NotImplementedError(f"no evaluator for dataset {dataset_name!r}: use a COCO-format or voc_* dataset")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """detectron2's standard flags (--config-file, --num-gpus, --resume, --eval-only...) and our data flags."""
    parser = default_argument_parser()
    parser.add_argument("--train-json", help="COCO-format annotations of your own training set")
    parser.add_argument("--train-images", help="folder the training JSON's file_names are relative to")
    parser.add_argument("--val-json", help="COCO-format annotations of your own validation set")
    parser.add_argument("--val-images", help="folder the validation JSON's file_names are relative to")
    return parser.parse_args(argv)


def read_coco_categories(json_file: str, image_root: str, flag: str) -> list[str]:
    """Class names (by category id) of a COCO-format file, after checking that it and its images are there."""
    if not os.path.isfile(json_file):
        raise SystemExit(f"{json_file}: no such file ({flag}-json)")
    if not os.path.isdir(image_root):
        raise SystemExit(f"{image_root}: no such folder ({flag}-images)")
    try:
        with open(json_file) as f:
            coco = json.load(f)
        categories = sorted(coco["categories"], key=lambda c: c["id"])
        names = [str(c["name"]) for c in categories]
        file_names = [image["file_name"] for image in coco["images"]]
        if not isinstance(coco["annotations"], list):  # must exist; may be empty for a test set
            raise TypeError("'annotations' is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{json_file}: not a COCO-format instances file ({type(e).__name__}: {e})") from None
    if not names:
        raise SystemExit(f"{json_file}: has no categories")
    if not file_names:
        raise SystemExit(f"{json_file}: has no images")
    missing = [name for name in file_names if not os.path.isfile(os.path.join(image_root, name))]
    if missing:
        raise SystemExit(
            f"{image_root}: {len(missing)} of the {len(file_names)} images of {json_file} are missing "
            f"(e.g. {missing[0]})"
        )
    return names


def register_own_datasets(args: argparse.Namespace) -> list[str]:
    """Register ``--train-json/--val-json`` as COCO-format sets; return the config overrides they imply."""
    overrides: list[str] = []
    classes: dict[str, list[str]] = {}
    for split, name, key in (("train", TRAIN_SET, "DATASETS.TRAIN"), ("val", VAL_SET, "DATASETS.TEST")):
        json_file, image_root = getattr(args, f"{split}_json"), getattr(args, f"{split}_images")
        if json_file is None and image_root is None:
            continue
        if json_file is None or image_root is None:
            raise SystemExit(f"--{split}-json and --{split}-images go together")
        classes[split] = read_coco_categories(json_file, image_root, f"--{split}")
        if name not in DatasetCatalog:  # main() runs once more in-process after the checks
            register_coco_instances(name, {"thing_classes": classes[split]}, json_file, image_root)
        overrides += [key, f"('{name}',)"]
    if len(classes) == 2 and classes["train"] != classes["val"]:
        raise SystemExit(
            f"{args.train_json} and {args.val_json} have different categories: {classes['train']} vs {classes['val']}"
        )
    if classes:
        overrides += ["MODEL.ROI_HEADS.NUM_CLASSES", str(len(next(iter(classes.values()))))]
    return overrides


def load_config(args: argparse.Namespace) -> CfgNode:
    if not os.path.isfile(args.config_file):
        raise SystemExit(f"{args.config_file}: no such config file")
    cfg = get_cfg()
    try:
        cfg.merge_from_file(args.config_file)
    except (AssertionError, KeyError, ValueError, TypeError) as e:  # what yacs raises for keys and values
        raise SystemExit(f"{args.config_file}: {first_line(e)}") from None
    try:
        cfg.merge_from_list(register_own_datasets(args) + args.opts)  # the command line's own overrides win
    except (AssertionError, KeyError, ValueError, TypeError) as e:
        flags = [o for o in args.opts if o.startswith("--")]
        hint = f" ({flags[0]} is a flag: put it before the KEY VALUE pairs)" if flags else ""
        raise SystemExit(f"config overrides {' '.join(args.opts)!r}: {first_line(e)}{hint}") from None
    cfg.freeze()
    return cfg


def first_line(error: BaseException) -> str:
    text = str(error).strip().strip("'\"")
    return text.splitlines()[0] if text else type(error).__name__


def weights_depth(path: str) -> int | None:
    """The ResNet depth of a detectron2-format .pkl backbone (ours or detectron2's), None for other files."""
    if not path.endswith(".pkl"):
        return None
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)
    except Exception as e:  # pickle raises many types for foreign files
        raise SystemExit(f"{path}: not a readable .pkl ({type(e).__name__}: {e})") from None
    model = obj.get("model", obj.get("blobs")) if isinstance(obj, dict) else None
    if not isinstance(model, dict):
        raise SystemExit(f"{path}: no 'model' entry (convert a SlotCon checkpoint with convert_pretrain_to_d2.py)")
    names = [k for k in model if isinstance(k, str)]
    if "stem.conv1.weight" not in names:  # e.g. a Caffe2 pkl with its own names: let detectron2 map it
        return None
    try:
        return depth_from_names(names, _D2_BLOCK_KEY, stages=(2, 3, 4, 5), bottleneck_key="res2.0.conv3.weight")
    except ValueError as e:
        raise SystemExit(f"{path}: {e}") from None


def check_backbone(cfg: CfgNode) -> None:
    """Config and weights must describe the same ResNet: detectron2 would skip mismatched tensors with a warning."""
    resnets = cfg.MODEL.RESNETS
    depth = weights_depth(cfg.MODEL.WEIGHTS)
    if depth is not None and depth != resnets.DEPTH:
        fix = f"MODEL.RESNETS.DEPTH {depth}" + (" MODEL.RESNETS.RES2_OUT_CHANNELS 64" if depth < 50 else "")
        raise SystemExit(
            f"{cfg.MODEL.WEIGHTS} holds a ResNet-{depth} but the config builds a ResNet-{resnets.DEPTH}: add {fix}"
        )
    if resnets.DEPTH in (18, 34) and (resnets.RES2_OUT_CHANNELS != 64 or resnets.RES5_DILATION != 1):
        raise SystemExit(
            f"ResNet-{resnets.DEPTH} (BasicBlock) needs MODEL.RESNETS.RES2_OUT_CHANNELS 64 and "
            "MODEL.RESNETS.RES5_DILATION 1"
        )


def check_weights(cfg: CfgNode, resume: bool) -> None:
    """The SlotCon config's WEIGHTS is a placeholder: fail at once, not in the checkpointer after the model is built.

    ``MODEL.WEIGHTS ""`` trains from random initialisation (the baseline of a transfer comparison).
    """
    weights = cfg.MODEL.WEIGHTS
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return  # resuming reads OUTPUT_DIR's last checkpoint instead
    if weights and not weights.startswith(_REMOTE_PREFIXES) and not os.path.isfile(weights):
        raise SystemExit(
            f"MODEL.WEIGHTS {weights!r} is not a file: convert a checkpoint with "
            "convert_pretrain_to_d2.py and pass MODEL.WEIGHTS /path/to/it.pkl"
        )
    check_backbone(cfg)


def command_with(argv: list[str], num_gpus: int, extra: list[str]) -> str:
    """This command line with another --num-gpus and extra config overrides."""
    argv = list(argv)
    for i, word in enumerate(argv):
        if word == "--num-gpus" and i + 1 < len(argv):
            argv[i + 1] = str(num_gpus)
        elif word.startswith("--num-gpus="):
            argv[i] = f"--num-gpus={num_gpus}"
    return shlex.join(["python", *argv, *extra])


def check_devices(args: argparse.Namespace, cfg: CfgNode, argv: list[str]) -> None:
    """The GPUs the command asks for must exist; otherwise one line saying what to run on this machine.

    ``SOLVER.REFERENCE_WORLD_SIZE`` makes detectron2 keep the images per GPU and scale the total batch, the
    learning rate and the schedule linearly (Goyal et al.), so the suggested command is the same experiment.
    """
    available = torch.cuda.device_count()
    world = args.num_gpus * args.num_machines

    def scaled(workers: int) -> list[str]:
        keep = args.eval_only or cfg.SOLVER.REFERENCE_WORLD_SIZE or world == workers
        return [] if keep else ["SOLVER.REFERENCE_WORLD_SIZE", str(world)]

    if not cfg.MODEL.DEVICE.startswith("cuda"):
        if args.num_gpus > 1:
            raise SystemExit(
                f"train_net.py: MODEL.DEVICE {cfg.MODEL.DEVICE} runs one process; run instead: "
                f"{command_with(argv, 1, scaled(1))}"
            )
    elif available == 0:
        raise SystemExit(
            "train_net.py: this machine has no GPU; to train on its CPU (one process), run instead: "
            f"{command_with(argv, 1, ['MODEL.DEVICE', 'cpu', *scaled(1)])}"
        )
    elif args.num_gpus > available:
        raise SystemExit(
            f"train_net.py: --num-gpus {args.num_gpus} but this machine has {available}; run instead: "
            f"{command_with(argv, available, scaled(available))}"
        )


def save_results(output_dir: str, results: dict) -> None:
    """The final numbers, to ``output_dir/results.json`` (main process)."""
    if comm.is_main_process() and results:
        write_text_atomic(os.path.join(output_dir, "results.json"), json.dumps(results, indent=1) + "\n")


def main(args: argparse.Namespace) -> dict | None:
    cfg = load_config(args)
    default_setup(cfg, args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        save_results(cfg.OUTPUT_DIR, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    results = getattr(trainer, "_last_eval_results", None)  # the evaluation after the last iteration
    save_results(cfg.OUTPUT_DIR, results)
    return results


def launch_processes(main: Callable[[argparse.Namespace], object], args: argparse.Namespace) -> None:
    """``main(args)`` in ``--num-gpus`` processes per machine (one, in this process, without GPUs), as detectron2's
    ``launch`` starts them from ``--num-machines --machine-rank --dist-url``."""
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def cli(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    print("Command Line Args:", args)
    # Before launch, so that a message is not lost in worker processes.
    cfg = load_config(args)
    check_devices(args, cfg, [sys.argv[0] if sys.argv[0].endswith(".py") else "train_net.py", *argv])
    check_weights(cfg, args.resume)
    launch_processes(main, args)


if __name__ == "__main__":
    cli()
