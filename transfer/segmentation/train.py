"""Train an mmsegmentation 1.x model from a converted SlotCon backbone (what dist_train.sh launches per GPU).

    python transfer/segmentation/train.py CONFIG --pretrained slotcon_r50_mm.pth [--work-dir DIR]
        [--launcher pytorch] [--resume] [--cfg-options key=value ...]

Your own data (a folder of images and one of label PNGs, with a class list; see
configs/_base_/datasets/image_folder.py):

    python transfer/segmentation/train.py configs/image_folder/fcn_r50-d8_512x512_20k_image_folder.py \
        --pretrained slotcon_mm.pth --classes classes.txt --train-images imgs/train --train-labels labels/train \
        --val-images imgs/val --val-labels labels/val

A thin wrapper around mmengine's ``Runner.from_cfg`` (what mmseg's own tools/train.py does) that refuses to
start without usable pretrained weights: mmengine loads ``init_cfg`` checkpoints non-strictly and would
otherwise train from a random backbone with only a warning in the log. ``--random-init`` asks for that on
purpose (the baseline of a transfer comparison). A ResNet config's depth follows the weights (``--depth`` for a
random one); a ``VisionTransformer`` config (configs/ade20k/*vit*, configs/demo/*vit*) takes a ViT export whose
width, depth and patch size it checks. The last validation's metrics are written to ``WORK_DIR/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch

if __package__ in (None, ""):  # run by path, as the original README does: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from transfer import vit_weights
from transfer.backbone import SUPPORTED_DEPTHS, infer_depth, reference_resnet_shapes
from transfer.segmentation.mmcv_ext import install as install_mmcv_ext_stand_in
from utils.atomic import write_text_atomic

_REMOTE_PREFIXES = ("http://", "https://", "torchvision://", "open-mmlab://", "mmcls://", "pretrain://")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def load_pretrained(path: str) -> dict[str, torch.Tensor]:
    """The backbone tensors of a converted file; one-line error for anything else."""
    if path.startswith(_REMOTE_PREFIXES):
        raise SystemExit(
            f"{path}: refusing remote/supervised weights; pass a backbone converted with convert_pretrain_to_mm.py"
        )
    if not os.path.isfile(path):
        raise SystemExit(
            f"{path}: pretrained backbone not found; convert a SlotCon checkpoint with "
            "convert_pretrain_to_mm.py and pass --pretrained /path/to/it.pth"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises several types for foreign files
        raise SystemExit(f"{path}: not a loadable weights file ({str(e).strip().splitlines()[0]})") from None
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        hint = " (a full SlotCon checkpoint? convert it first)" if isinstance(obj, dict) and "model" in obj else ""
        raise SystemExit(f"{path}: has no 'state_dict' entry{hint}")
    return state


def check_pretrained(path: str, backbone) -> None:
    """One-line error unless ``path`` is a converted backbone with every tensor of the config's ``backbone`` (a
    ResNet of its ``depth``, or a ``VisionTransformer`` of its width, depth and patch size)."""
    state = load_pretrained(path)
    if backbone.type == "VisionTransformer":
        try:
            vit_weights.check_mmseg_vit(state, backbone.embed_dims, backbone.num_layers, backbone.patch_size)
        except ValueError as e:
            raise SystemExit(f"{path}: {e}") from None
        return
    depth = int(backbone.depth)
    if depth not in SUPPORTED_DEPTHS:
        raise SystemExit(f"config backbone depth {depth} is not one of {SUPPORTED_DEPTHS}")
    try:
        found = infer_depth(state)
    except ValueError:
        found = None
    if found is not None and found != depth:
        raise SystemExit(f"{path} holds a ResNet-{found} but the config builds a ResNet-{depth}: add --depth {found}")
    missing = sorted(set(reference_resnet_shapes(depth)) - set(state))
    if missing:
        raise SystemExit(f"{path}: {len(missing)} ResNet-{depth} backbone tensors missing (e.g. {missing[0]})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="mmseg 1.x config, e.g. configs/voc12aug/<name>.py")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--pretrained",
        help="backbone from convert_pretrain_to_mm.py / python -m transfer.export --to mmseg (a ResNet or a ViT, "
        "as the config builds; sets model.backbone.init_cfg)",
    )
    weights.add_argument("--random-init", action="store_true", help="train from a randomly initialised backbone")
    parser.add_argument(
        "--depth",
        type=int,
        choices=SUPPORTED_DEPTHS,
        help="ResNet depth (default: the config's); the heads' input channels follow it",
    )
    data = parser.add_argument_group("your own data (configs/_base_/datasets/image_folder.py)")
    for split in ("train", "val"):
        data.add_argument(f"--{split}-images", help=f"folder of {split} images")
        data.add_argument(f"--{split}-labels", help=f"folder of {split} label PNGs (same names, 255 = ignore)")
        data.add_argument(f"--{split}-list", help=f"file naming the {split} images to use (one per line, no suffix)")
    data.add_argument("--classes", help="class names: a file with one per line, or a comma-separated list")
    parser.add_argument("--work-dir", help="logs and checkpoints (default: work_dirs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in the work dir")
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm", "mpi"],
        default="none",
        help="'pytorch' under torchrun (dist_train.sh)",
    )
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        default={},
        help="override config entries, e.g. train_dataloader.batch_size=2",
    )
    return parser.parse_args(argv)


def stage_channels(depth: int) -> list[int]:
    """Output channels of the four ResNet stages (BasicBlock: 64..512, Bottleneck: 256..2048)."""
    width = 64 if depth < 50 else 256
    return [width * 2**i for i in range(4)]


def set_depth(cfg, depth: int) -> None:
    """Build a ResNet-``depth``: the backbone and every head's input channels (heads read stage ``in_index``)."""
    cfg.model.backbone.depth = depth
    channels = stage_channels(depth)
    for part in ("decode_head", "auxiliary_head"):
        head = cfg.model.get(part)
        if head:
            head.in_channels = channels[head.in_index]


def read_classes(spec: str) -> list[str]:
    if os.path.isfile(spec):
        names = [line.strip() for line in Path(spec).read_text().splitlines() if line.strip()]
    else:
        names = [name.strip() for name in spec.split(",") if name.strip()]
    if len(names) < 2:
        raise SystemExit(
            f"--classes {spec!r}: need a file with one class name per line or a comma-separated list "
            "of at least 2 names (background counts as a class)"
        )
    return names


def image_suffix(folder: str) -> str:
    """The most common image suffix in ``folder`` (mmseg pairs images and labels by name and suffix)."""
    suffixes = Counter(p.suffix.lower() for p in Path(folder).rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not suffixes:
        raise SystemExit(f"{folder}: no images ({', '.join(_IMAGE_SUFFIXES)})")
    suffix = suffixes.most_common(1)[0][0]
    # The case as written on disk: mmseg matches suffixes exactly.
    return next(p.suffix for p in Path(folder).rglob(f"*{suffix[1:]}") if p.suffix.lower() == suffix)


def set_own_data(cfg, args: argparse.Namespace) -> None:
    """Point the config's train/val datasets at ``--{train,val}-{images,labels,list}`` with ``--classes``."""
    given = [s for s in ("train", "val") if getattr(args, f"{s}_images") or getattr(args, f"{s}_labels")]
    if not given and not args.classes:
        return
    if not args.classes:
        raise SystemExit("--classes is needed with --train-images/--val-images")
    classes = read_classes(args.classes)
    for split in given:
        images, labels, names = (getattr(args, f"{split}_{k}") for k in ("images", "labels", "list"))
        if not images or not labels:
            raise SystemExit(f"--{split}-images and --{split}-labels go together")
        for flag, folder in ((f"--{split}-images", images), (f"--{split}-labels", labels)):
            if not os.path.isdir(folder):
                raise SystemExit(f"{folder}: no such folder ({flag})")
        if names and not os.path.isfile(names):
            raise SystemExit(f"{names}: no such file (--{split}-list)")
        loader = cfg.train_dataloader if split == "train" else cfg.val_dataloader
        dataset = loader.dataset
        if dataset.get("type") == "ConcatDataset":
            raise SystemExit(f"{args.config}: its {split} set is a concatenation; use an image_folder config")
        dataset.update(
            data_root="",
            data_prefix=dict(img_path=os.path.abspath(images), seg_map_path=os.path.abspath(labels)),
            ann_file=os.path.abspath(names) if names else "",
            img_suffix=image_suffix(images),
            seg_map_suffix=".png",
            metainfo=dict(classes=classes),
            reduce_zero_label=False,
        )
        if split == "val":
            cfg.test_dataloader = cfg.val_dataloader
    for part in ("decode_head", "auxiliary_head"):
        if cfg.model.get(part):
            cfg.model[part].num_classes = len(classes)


def build_config(args: argparse.Namespace):
    """The config with the command line applied and the pretrained weights checked (returns mmengine ``Config``)."""
    from mmengine.config import Config

    if not os.path.isfile(args.config):
        raise SystemExit(f"{args.config}: no such config file")
    cfg = Config.fromfile(args.config)
    set_own_data(cfg, args)
    cfg.merge_from_dict(args.cfg_options)
    vit = cfg.model.backbone.type == "VisionTransformer"
    if args.depth and vit:
        raise SystemExit(f"--depth {args.depth}: {args.config} builds a VisionTransformer, not a ResNet")
    if args.depth:
        set_depth(cfg, args.depth)
    if args.random_init:
        cfg.model.backbone.init_cfg = None
    elif args.pretrained:
        cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=args.pretrained)
        if not args.depth and not vit:  # a ResNet's depth follows the weights
            with contextlib.suppress(ValueError):  # not a plain ResNet: check_pretrained names what is missing
                set_depth(cfg, infer_depth(load_pretrained(args.pretrained)))
    init_cfg = cfg.model.backbone.get("init_cfg") or {}
    if not args.random_init and init_cfg.get("type") != "Pretrained":
        raise SystemExit(
            f"{args.config}: model.backbone.init_cfg is not a Pretrained checkpoint; pass --pretrained "
            "(or --random-init)"
        )
    if not args.resume and not args.random_init:  # a resumed run restores the fine-tuned backbone itself
        check_pretrained(str(init_cfg["checkpoint"]), cfg.model.backbone)
    cfg.launcher = args.launcher
    cfg.work_dir = args.work_dir or os.path.join("work_dirs", Path(args.config).stem)
    cfg.resume = args.resume
    return cfg


def save_results(runner) -> dict[str, float]:
    """The last validation's metrics (mIoU, mAcc, aAcc, in %) from the runner's message hub, to results.json."""
    timing = {"val/time", "val/data_time"}  # the loop's own timing, not a metric
    results = {
        key.removeprefix("val/"): float(value.current())
        for key, value in runner.message_hub.log_scalars.items()
        if key.startswith("val/") and key not in timing
    }
    if results and runner.rank == 0:
        write_text_atomic(os.path.join(runner.work_dir, "results.json"), json.dumps(results, indent=1) + "\n")
    return results


def main(argv: list[str] | None = None) -> None:
    try:
        from mmengine.runner import Runner
    except ImportError as e:
        raise SystemExit(
            f"train.py needs mmengine/mmsegmentation ({e}): pip install -r requirements-transfer.txt, "
            "and full mmcv==2.1.0 on GPU machines"
        ) from None
    if install_mmcv_ext_stand_in():  # mmcv-lite: mmseg imports the compiled ops its FCN/ResNet never call
        print(
            "train.py: mmcv without compiled ops (mmcv-lite): a stand-in mmcv._ext raises NotImplementedError if a "
            "model calls one; full mmcv==2.1.0 is for GPUs"
        )
    try:
        import mmseg.models  # noqa: F401  (registers the models)
    except ModuleNotFoundError as e:
        raise SystemExit(
            f"train.py needs mmsegmentation 1.2.2 ({e}): pip install -r requirements-transfer.txt"
        ) from None
    cfg = build_config(parse_args(argv))
    runner = Runner.from_cfg(cfg)
    runner.train()
    save_results(runner)


if __name__ == "__main__":
    main()
